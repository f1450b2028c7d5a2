"""A rule: one phrase (or regex) with its action, checked and normalised as the semantics require."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from cull.errors import RuleError
from cull.text.normalize import REPLACEMENT, fold_flags, is_wordlike

BAN = "ban"
BIAS = "bias"
MAX_PHRASE_CHARS = 256
_ASCII_WS_RUN = re.compile(r"[ \t\n\r\x0b\x0c]+")
_HAS_ASCII_WORD = re.compile(r"[0-9A-Za-z_]")


@dataclass(frozen=True)
class Rule:
    """One phrase with its action. `delta` is -inf for a ban, else the logit delta added.

    Rules are usually made by `PhraseSet` (or `make_rule`), which parses `*` wildcards and `re:`:

    >>> import cull
    >>> [(r.phrase, r.trailing_wildcard, r.delta) for r in cull.PhraseSet(["delv*"])]
    [('delv', True, -inf)]
    >>> soft = cull.Rule("tapestry", action=cull.BIAS, delta=-4.0)
    >>> [m.span() for m in cull.find("a rich tapestry", cull.PhraseSet([soft]))]
    [(7, 15)]
    """

    phrase: str
    action: str = BAN
    delta: float = -math.inf
    leading_wildcard: bool = False
    trailing_wildcard: bool = False
    regex: str | None = None
    source: str = ""

    @property
    def text(self) -> str:
        """The rule as a user would write it (wildcards and prefix included)."""
        if self.regex is not None:
            return "re:" + self.regex
        return ("*" if self.leading_wildcard else "") + self.phrase + ("*" if self.trailing_wildcard else "")


@dataclass(frozen=True)
class Options:
    """How phrases and text are compared. The defaults are the semantics of README's "What matches"
    (docs/automaton.md, "What is matched"); `PhraseSet(..., ignore_accents=True)` and the like set them.

    >>> import cull
    >>> rules = cull.PhraseSet(["cafe"], ignore_accents=True)
    >>> rules.options
    Options(whole_words=True, ignore_case=True, fold_quotes=True, ignore_accents=True, confusables=False)
    >>> [m.span() for m in cull.find("Un CAFÉ, s'il vous plaît", rules)]
    [(3, 7)]
    >>> cull.find("Un café", ["cafe"])      # by default the accent continues the word: no match
    []
    """

    whole_words: bool = True
    ignore_case: bool = True
    fold_quotes: bool = True
    ignore_accents: bool = False  # drop nonspacing marks: "cafe" matches "café"
    confusables: bool = False  # look-alikes count as one (UTS #39): Cyrillic "е" matches Latin "e"

    def key(self) -> str:
        key = (f"w{int(self.whole_words)}c{int(self.ignore_case)}q{int(self.fold_quotes)}"
               + ("a1" if self.ignore_accents else ""))
        if self.confusables:  # the data's version too: new prototypes mean a new compile
            from cull.text.confusables import data_version

            key += f"u{data_version()}"
        return key

    def fold(self) -> int:
        """The normalisation flags (cull.text.normalize.fold_flags) these options stand for."""
        return fold_flags(self.ignore_case, self.fold_quotes, self.ignore_accents, self.confusables)


def _where(source: str) -> str:
    return f" ({source})" if source else ""


def make_rule(
    item: str,
    action: str = BAN,
    delta: float | None = None,
    *,
    source: str = "",
    allow_symbols: bool = False,
    max_chars: int = MAX_PHRASE_CHARS,
) -> Rule:
    """Parse one phrase (`*` wildcards at the ends, `re:` prefix for a regex) into a validated Rule."""
    if not isinstance(item, str):
        raise RuleError(f"a rule must be a string, got {type(item).__name__} {item!r}{_where(source)}")
    if action not in (BAN, BIAS):
        raise RuleError(f"unknown action {action!r}{_where(source)}; use 'ban' or 'bias'")
    if action == BAN:
        delta = -math.inf
    else:
        if delta is None or not isinstance(delta, (int, float)) or math.isnan(delta):
            raise RuleError(f"a bias rule needs a numeric delta, got {delta!r}{_where(source)}")
        delta = float(delta)
        if delta == math.inf:
            raise RuleError(f"a bias delta cannot be +inf{_where(source)}; use a finite number")
    if item.startswith("re:"):
        return _regex_rule(item[3:], action, delta, source)
    phrase = " ".join(_ASCII_WS_RUN.split(item)).strip()  # a whitespace run counts as one space
    lead = phrase.startswith("*")
    trail = len(phrase) > 1 and phrase.endswith("*")
    core = phrase[1 if lead else 0 : len(phrase) - (1 if trail else 0)].strip()
    if not core:
        raise RuleError(
            f"empty phrase {item!r}{_where(source)}: a rule needs at least one character besides "
            "whitespace and '*'; delete the line"
        )
    if "*" in core:
        raise RuleError(
            f"phrase {item!r}{_where(source)} has a '*' inside it; '*' is a wildcard only at either "
            "end (e.g. 'delv*'). For patterns use a regex rule: 're:...'"
        )
    bad = _control_char(core)
    if bad is not None:
        raise RuleError(
            f"phrase {item!r}{_where(source)} contains the control character (or lone surrogate) U+{ord(bad):04X} at "
            f"offset {core.index(bad)}; models do not write control characters as text and tokenizers "
            "map them inconsistently, so cull does not match them. Remove it (a stray NUL or escape "
            "from the file's encoding?)"
        )
    if len(core) > max_chars:
        raise RuleError(
            f"phrase of {len(core)} characters{_where(source)} is longer than the limit of {max_chars}: "
            f"{core[:40]!r}...; shorten it or raise max_phrase_chars"
        )
    if REPLACEMENT in core:
        raise RuleError(
            f"phrase {item!r}{_where(source)} contains U+FFFD, the character invalid UTF-8 decodes to; "
            "it cannot be matched reliably. Remove it from the phrase")
    if not allow_symbols and not (_HAS_ASCII_WORD.search(core) or any(is_wordlike(c) for c in core)):
        raise RuleError(
            f"phrase {item!r}{_where(source)} has no letter or digit; a phrase of only punctuation "
            "is usually a mistake. To ban symbols such as '—' on purpose, pass allow_symbols=True "
            "(CLI: --allow-symbols)"
        )
    return Rule(core, action, delta, lead, trail, None, source)


# control characters (category Cc) that are not Unicode White_Space, and lone surrogates
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")


def _control_char(text: str) -> str | None:
    """The first control character (not whitespace) or lone surrogate in `text`, or None."""
    m = _CONTROL.search(text)
    return m.group() if m else None


def _regex_rule(pattern: str, action: str, delta: float, source: str) -> Rule:
    from cull.errors import require

    regex = require("regex", "hf")
    if not pattern:
        raise RuleError(f"empty regex{_where(source)}: write a pattern after 're:'")
    try:
        regex.compile(pattern)
    except regex.error as exc:
        raise RuleError(f"invalid regex {pattern[:80]!r}{_where(source)}: {exc}") from None
    except (RecursionError, OverflowError, MemoryError):
        raise RuleError(f"regex {pattern[:80]!r}...{_where(source)} is nested or repeated too deeply to compile; "
                        "simplify it") from None
    return Rule(pattern, action, delta, False, False, pattern, source)


def multiplier_to_delta(m, source: str = "") -> float:
    """Antislop's probability multiplier m becomes the logit delta ln(m)."""
    if isinstance(m, bool) or not isinstance(m, (int, float)) or math.isnan(m):
        raise RuleError(f"multiplier must be a number in (0, 1], got {m!r}{_where(source)}")
    if not 0 < m <= 1:
        raise RuleError(
            f"multiplier {m!r}{_where(source)} is out of range: it must be in (0, 1] "
            "(it scales the phrase's probability; 0.5 halves it). Use action 'ban' to forbid a phrase"
        )
    return math.log(m)
