"""Rules -> symbol patterns: the normalised byte strings (with boundary symbols) the automaton matches."""
from __future__ import annotations

from .errors import RuleError
from .normalize import BOUNDARY, MAX_SPELLINGS, OTHER, WORD, char_class, spellings, transduce
from .rules import Options, PhraseSet, Rule


def rule_patterns(rule: Rule, opts: Options) -> list[bytes]:
    """Every symbol string that spells `rule`; leading/trailing BOUNDARY encode whole-word ends."""
    chars = rule.phrase
    try:
        variants = spellings(chars, opts.ignore_case, opts.fold_quotes)
    except ValueError as exc:
        raise RuleError(
            f"phrase {rule.text!r} ({rule.source}) has too many spelling variants: {exc}. "
            "Shorten it or set fold_quotes=False"
        ) from None
    first, last = char_class(chars[0]), char_class(chars[-1])
    start_cls = OTHER if (first == WORD and not rule.leading_wildcard) else first
    tail = bytes([BOUNDARY]) if (last == WORD and not rule.trailing_wildcard) else b""
    out = []
    for v in variants:
        sym, _ = transduce(v.encode("utf-8"), start_cls, fold_case=opts.ignore_case)
        out.append(sym + tail)
    return out


def compile_patterns(rules: PhraseSet, max_symbols: int) -> dict[bytes, float]:
    """All patterns of the phrase rules, each with its strongest (minimum) delta."""
    if rules.regex_rules:
        from .regex_literals import expand_regex_rules

        extra = expand_regex_rules(rules.regex_rules)
    else:
        extra = []
    pats: dict[bytes, float] = {}
    total = 0
    for rule in list(rules.phrase_rules) + extra:
        for p in rule_patterns(rule, rules.options):
            old = pats.get(p)
            if old is None:
                total += len(p)
                if total > max_symbols:
                    raise RuleError(
                        f"the rules expand to more than {max_symbols:,} symbols (at rule {rule.text!r}, "
                        f"after {len(pats):,} patterns); compiling them would take too much memory. "
                        "Split the list, drop rarely-useful phrases, or raise max_symbols"
                    )
                pats[p] = rule.delta
            elif rule.delta < old:
                pats[p] = rule.delta
    return pats


def check_compilable(rules: PhraseSet, max_symbols: int) -> None:
    """Raise exactly what `compile_patterns` would raise, at a fraction of its cost: a server calls
    this at admission, on its event loop. An ASCII phrase's spellings are counted, not built (only
    quotes vary), and its symbols are bounded by 2·len + 2 (a boundary at most between every two
    characters and at each end); the exact work runs only where the bound does not settle it."""
    if rules.regex_rules:
        from .regex_literals import expand_regex_rules

        extra = expand_regex_rules(rules.regex_rules)
    else:
        extra = []
    opts = rules.options
    bound = 0
    for rule in list(rules.phrase_rules) + extra:
        ph = rule.phrase
        if ph.isascii():
            n = 4 ** ph.count("'") * 3 ** ph.count('"') if opts.fold_quotes else 1
            if n > MAX_SPELLINGS:
                rule_patterns(rule, opts)  # raises the full message
            bound += n * (2 * len(ph) + 2)
        else:
            bound += sum(len(p) for p in rule_patterns(rule, opts))
    if bound > max_symbols:
        compile_patterns(rules, max_symbols)
