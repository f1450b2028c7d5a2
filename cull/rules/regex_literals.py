"""Regex rules in the processor: only a finite set of literals can become phrases.

A literal regex means its strings matched anywhere, inside words too, as the regex itself would
(``re:colou?r`` finds "watercolor"); a ``\\b`` at the very start or end asks for a word boundary on
that side. The strings are compared under the phrase normalisation (case, whitespace runs, quotes),
and `cull.find` uses the same expansion (see `cull.rules.regex_match`), so every tool bans and reports
the same text. A regex whose literals a phrase cannot spell exactly (whitespace at an end, a '*',
a control character, inline flags, ``\\b`` next to a non-word character) is not literal: the
processor refuses it and the other tools run it as a general regex.
"""
from __future__ import annotations

import unicodedata

from cull.errors import RuleError
from cull.text.normalize import WORD, char_class
from cull.rules.rule import MAX_PHRASE_CHARS, Rule, make_rule

MAX_EXPANSION = 256
_WS = " \t\n\r\x0b\x0c\x85\u00a0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))


def _expand(node, limit):
    """Expand a parsed regex (Python's sre parse tree) into its finite set of strings, or None."""
    import re._constants as C  # noqa: N812

    out = [""]
    for op, av in node:
        if op is C.LITERAL:
            alts = [chr(av)]
        elif op is C.SUBPATTERN:
            if av[1] or av[2]:  # scoped flags such as (?i:...) change what the literals mean
                return None
            alts = _expand(av[-1], limit)
            if alts is None:
                return None
        elif op is C.BRANCH:
            alts = []
            for branch in av[1]:
                sub = _expand(branch, limit)
                if sub is None or len(alts) + len(sub) > limit:
                    return None
                alts.extend(sub)
        elif op is C.IN and all(o is C.LITERAL for o, _ in av):
            alts = [chr(v) for _, v in av]
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT) and av[1] <= 3:
            sub = _expand(av[2], limit)
            if sub is None or sum(len(sub) ** k for k in range(av[0], av[1] + 1)) > limit:
                return None  # counted before anything is built: `(..){3}` must not build 256**3 strings
            alts = []
            for k in range(av[0], av[1] + 1):
                parts = [""]
                for _ in range(k):
                    parts = [a + b for a in parts for b in sub]
                alts.extend(parts)
        else:
            return None
        if len(out) * len(alts) > limit or len(alts) > limit:  # counted before the product is built
            return None
        out = [a + b for a in out for b in alts]
    return out


def _expand_all(items) -> list[str] | None:
    try:
        return _expand(items, MAX_EXPANSION)
    except RecursionError:  # nested too deeply to be a small literal set
        return None


def _parse(pattern: str):
    """(items, lead_boundary, trail_boundary) of a pattern without global flags, or None."""
    import re
    import re._constants as C  # noqa: N812
    import re._parser as P  # noqa: N812

    try:
        parsed = P.parse(pattern)
    except Exception:  # the regex package accepts more syntax than re; that is simply not literal
        return None
    if parsed.state.flags & ~re.UNICODE:  # (?i), (?x) ...: a global flag changes the meaning
        return None
    items = list(parsed)
    lead = bool(items) and items[0] == (C.AT, C.AT_BOUNDARY)
    trail = len(items) > int(lead) and items[-1] == (C.AT, C.AT_BOUNDARY)
    return items[int(lead):len(items) - int(trail)], lead, trail


def _spellable(word: str) -> bool:
    """True when a phrase spells exactly this string (no end whitespace, '*', control character)."""
    return (word == word.strip(_WS) and "*" not in word and len(word) <= MAX_PHRASE_CHARS
            and not any(unicodedata.category(c) in ("Cc", "Cs") and c not in _WS for c in word))


def literal_expansion(pattern: str) -> list[str] | None:
    """The non-empty strings a regex matches, if it is a small finite set of literals; else None."""
    parsed = _parse(pattern)
    if parsed is None:
        return None
    found = _expand_all(parsed[0])
    words = sorted({w for w in found if w}) if found else []
    return words or None


def literal_phrase_rules(rule: Rule) -> list[Rule] | None:
    """The phrase rules a literal regex rule means (see the module docstring), or None."""
    parsed = _parse(rule.regex)
    if parsed is None:
        return None
    items, lead, trail = parsed
    found = _expand_all(items)
    words = sorted({w for w in found if w}) if found else []
    if not words or not all(_spellable(w) for w in words):
        return None
    if (lead and not all(char_class(w[0]) == WORD for w in words)) or (
            trail and not all(char_class(w[-1]) == WORD for w in words)):
        return None  # \b next to a non-word character means something a phrase cannot say
    delta = rule.delta if rule.action != "ban" else None
    out = []
    for w in words:
        r = make_rule(w, rule.action, delta, source=rule.source, allow_symbols=True)
        out.append(Rule(r.phrase, r.action, r.delta, not lead, not trail, None, r.source))
    return out


def expand_regex_rules(rules) -> list[Rule]:
    out = []
    for r in rules:
        phrases = literal_phrase_rules(r)
        if phrases is None:
            raise RuleError(
                f"regex rule {r.text!r} ({r.source}) cannot be enforced by the logits processor: only a "
                "finite set of literals (like 're:colou?r|hue' or 're:\\bcolou?r\\b') becomes phrases, "
                "without whitespace at either end. Use the backtracking generator (`cull generate --backtrack`) "
                "or `cull scan` for general regexes, or write the phrases out"
            )
        out.extend(phrases)
    return out
