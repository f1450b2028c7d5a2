"""The plain reference matcher on strings. It is the oracle the automaton is tested against, so it
shares no code with it beyond the per-character folding and classes that define the semantics
(cull.text.normalize.fold_char / norm_class): it works on Python strings, the automaton on bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cull.text.normalize import SPACE, WORD, text_units
from cull.rules.phrase_set import PhraseSet, as_phrase_set
from cull.rules.regex_literals import literal_phrase_rules
from cull.rules.regex_match import timed_finditer
from cull.rules.rule import Rule


@dataclass(frozen=True)
class Match:
    """One match of a rule: `text[start:end]` is the matched text, in the original characters.

    >>> import cull
    >>> text = "We ＤＥＬＶＥ into it."
    >>> [(m.rule.text, m.span(), text[m.start:m.end]) for m in cull.find(text, ["delve", "into"])]
    [('delve', (3, 8), 'ＤＥＬＶＥ'), ('into', (9, 13), 'into')]
    """

    rule: Rule
    start: int  # character offsets into the original text
    end: int

    def span(self) -> tuple[int, int]:
        return self.start, self.end


def _units(text: str, fold: int):
    """(normalised char, class, start, end) per normalised character; a run of spaces is one unit."""
    units = []
    for u, c, i in text_units(text, fold):
        if c == SPACE and units and units[-1][1] == SPACE:
            units[-1] = (" ", SPACE, units[-1][2], i + 1)
        else:
            units.append((u, c, i, i + 1))
    return units


def phrase_units(phrase: str, fold: int) -> list[tuple[str, int]]:
    """The phrase's normalised characters and classes, spaces collapsed and trimmed at both ends."""
    units = [(u, c) for u, c, _, _ in _units(phrase, fold)]
    while units and units[0][1] == SPACE:
        units.pop(0)
    while units and units[-1][1] == SPACE:
        units.pop()
    return units


def find(text: str, rules: "PhraseSet | Sequence[str]") -> list[Match]:
    """Every match of every rule in `text`, sorted by (start, end).

    >>> [(m.rule.phrase, m.start, m.end) for m in find("They DELVED into class", ["delv*", "ass"])]
    [('delv', 5, 9)]
    """
    rules = as_phrase_set(rules)
    fold = rules.options.fold()
    units = _units(text, fold)
    found: list[Match] = []
    for rule in rules.rules:
        if rule.regex is not None:
            found.extend(_regex_matches(text, rule, rules))
            continue
        pat = phrase_units(rule.phrase, fold)
        if not pat:
            continue
        need_start = pat[0][1] == WORD and not rule.leading_wildcard
        need_end = pat[-1][1] == WORD and not rule.trailing_wildcard
        spans = set()
        m = len(pat)
        for i in range(len(units) - m + 1):
            if any(units[i + k][:2] != pat[k] for k in range(m)):
                continue
            if need_start and i > 0 and units[i - 1][1] == WORD:
                continue
            if need_end and i + m < len(units) and units[i + m][1] == WORD:
                continue
            spans.add((units[i][2], units[i + m - 1][3]))
        found.extend(Match(rule, a, b) for a, b in spans)
    found.sort(key=lambda mt: (mt.start, mt.end, mt.rule.text))
    return found


def _regex_matches(text: str, rule: Rule, rules: PhraseSet) -> list[Match]:
    """One regex rule's matches: a literal regex (a finite set of strings) matches as those phrases
    do; any other runs under the regex time limit (cull.rules.regex_match)."""
    phrases = literal_phrase_rules(rule)
    if phrases is not None:
        # the literals carry their own \b (as wildcards), and fold characters as phrases do
        spans = {(m.start, m.end) for m in find(text, rules.with_rules(phrases))}
    else:
        spans = timed_finditer(rule.regex, text, ignore_case=rules.options.ignore_case, rule_text=rule.text)
    return [Match(rule, a, b) for a, b in sorted(set(spans))]
