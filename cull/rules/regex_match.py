"""Every regex match in cull runs here, under one time limit, with one meaning.

A regex that is a finite set of literals (`cull.rules.regex_literals`) means those strings as phrases
matched anywhere inside words (a leading or trailing ``\\b`` asks for a word boundary there), under
the same normalisation as phrases: this is what the logits processor can enforce, so `find`, `scan`,
the backtracking generator and the processor all agree. Any other regex runs on the raw text with
the `regex` package, case-insensitively when the rules ignore case.

A catastrophically backtracking regex (``(a|aa)+c``) would run for ever; each search gets
`REGEX_TIMEOUT_S` seconds (environment variable ``CULL_REGEX_TIMEOUT_S``), then fails with a
`RegexTimeoutError` that names the rule.
"""
from __future__ import annotations


from cull.errors import CullError, RuleError, require
from cull.resources import positive_setting

DEFAULT_TIMEOUT_S = 0.5


class RegexTimeoutError(CullError):
    """A regex rule ran past the time limit on some text."""


def regex_timeout_s() -> float:
    """The time limit for one regex search, in seconds."""
    return positive_setting("CULL_REGEX_TIMEOUT_S", DEFAULT_TIMEOUT_S, "seconds", CullError)


def timed_finditer(pattern: str, text: str, *, ignore_case: bool = False, rule_text: str = "",
                   timeout_s: float | None = None) -> list[tuple[int, int]]:
    """(start, end) of each non-empty match of `pattern` in `text`, under the time limit. Call this
    for any regex a user supplied (eval, discover, fine-tune data): it is the one place the limit
    is applied."""
    regex = require("regex", "hf")
    limit = regex_timeout_s() if timeout_s is None else timeout_s
    flags = (regex.IGNORECASE | regex.FULLCASE) if ignore_case else 0
    try:
        return [m.span() for m in regex.finditer(pattern, text, flags=flags, timeout=limit) if m.end() > m.start()]
    except TimeoutError:
        name = rule_text or f"re:{pattern}"
        raise RegexTimeoutError(
            f"regex rule {name!r} ran longer than {limit:g} s on a text of {len(text):,} characters "
            "(catastrophic backtracking, e.g. nested repeats like (a|aa)+ or (x+x+)+); rewrite it "
            "without nested repeats, or raise the limit with CULL_REGEX_TIMEOUT_S") from None
    except regex.error as exc:  # flags can make a valid pattern invalid
        raise RuleError(f"regex rule {rule_text or pattern!r}: {exc}") from None
