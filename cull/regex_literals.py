"""Regex rules in the processor: only a finite set of literals can become phrases."""
from __future__ import annotations

from .errors import RuleError
from .rules import Rule, make_rule

MAX_EXPANSION = 256


def _expand(node, limit):
    """Expand a parsed regex (Python's sre parse tree) into its finite set of strings, or None."""
    import re._constants as C  # noqa: N812

    out = [""]
    for op, av in node:
        if op is C.LITERAL:
            alts = [chr(av)]
        elif op is C.SUBPATTERN:
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
        if len(out) * len(alts) > limit or len(alts) > limit:
            return None
        out = [a + b for a in out for b in alts]
    return out


def literal_expansion(pattern: str) -> list[str] | None:
    """The strings a regex matches, if it is a small finite set of literals; else None."""
    import re._parser as P  # noqa: N812

    try:
        parsed = P.parse(pattern)
        found = _expand(list(parsed), MAX_EXPANSION)
    except (Exception, RecursionError):  # unparsable or nested too deeply: not a small literal set
        return None
    return sorted(set(found)) if found else None


def expand_regex_rules(rules) -> list[Rule]:
    out = []
    for r in rules:
        words = literal_expansion(r.regex)
        if words is None:
            raise RuleError(
                f"regex rule {r.text!r} ({r.source}) cannot be enforced by the logits processor: only a "
                "finite set of literals (like 're:colou?r|hue') becomes phrases. Use cull's backtracking "
                "generator or `cull scan` for general regexes, or write the phrases out"
            )
        out.extend(make_rule(w, r.action, r.delta if r.action != "ban" else None, source=r.source,
                             allow_symbols=True) for w in words if w.strip())
    return out
