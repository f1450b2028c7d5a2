"""The plain reference matcher on strings. It is the oracle the automaton is tested against, so it
shares no code with it beyond the character classes and folding that define the semantics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .normalize import SPACE, WORD, char_class, fold_ascii, spellings
from .rules import PhraseSet, Rule, as_phrase_set

_WS = " \t\n\r\x0b\x0c"


@dataclass(frozen=True)
class Match:
    rule: Rule
    start: int  # character offsets into the original text
    end: int

    def span(self) -> tuple[int, int]:
        return self.start, self.end


def _units(text: str, fold_case: bool):
    """(folded char, class, start, end) per character; a whitespace run is one space unit."""
    units = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _WS:
            j = i
            while j < n and text[j] in _WS:
                j += 1
            units.append((" ", SPACE, i, j))
            i = j
        else:
            units.append((fold_ascii(ch) if fold_case else ch, char_class(ch), i, i + 1))
            i += 1
    return units


def _phrase_units(spelling: str, fold_case: bool):
    return [(fold_ascii(ch) if fold_case else ch, char_class(ch)) for ch in spelling]


def find(text: str, rules: "PhraseSet | Sequence[str]") -> list[Match]:
    """Every match of every rule in `text`, sorted by (start, end).

    >>> [(m.rule.phrase, m.start, m.end) for m in find("They DELVED into class", ["delv*", "ass"])]
    [('delv', 5, 9)]
    """
    rules = as_phrase_set(rules)
    opts = rules.options
    units = _units(text, opts.ignore_case)
    found: list[Match] = []
    for rule in rules.rules:
        if rule.regex is not None:
            found.extend(_regex_matches(text, rule, opts))
            continue
        need_start = char_class(rule.phrase[0]) == WORD and not rule.leading_wildcard
        need_end = char_class(rule.phrase[-1]) == WORD and not rule.trailing_wildcard
        spans = set()
        for spelling in spellings(rule.phrase, opts.ignore_case, opts.fold_quotes):
            pat = _phrase_units(spelling, opts.ignore_case)
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


def _regex_matches(text: str, rule: Rule, opts) -> list[Match]:
    from .regex_match import regex_rule_matches  # one meaning and one time limit for every regex

    return regex_rule_matches(text, rule, opts)
