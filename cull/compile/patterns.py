"""Rules -> symbol patterns: the normalised byte strings (with boundary symbols) the automaton matches."""
from __future__ import annotations

from cull.errors import RuleError
from cull.rules.find import phrase_units
from cull.text.normalize import ASCII_CLASS, BOUNDARY, OTHER, WORD, emit_units, transduce
from cull.rules import Options, PhraseSet, Rule


def rule_patterns(rule: Rule, opts: Options, fast: bool = True) -> list[bytes]:
    """The symbol string that spells `rule`; leading/trailing BOUNDARY encode whole-word ends. (One
    pattern per rule: case, quotes and compatibility forms are folded on the text side too.)"""
    fold = opts.fold()
    # the common case, at C speed (not with confusables: there an ASCII character's class may change, "|" -> "l")
    if fast and not opts.confusables and rule.phrase.isascii() and "\0" not in rule.phrase:
        body, _ = transduce(rule.phrase.encode(), OTHER, fold)
        first, last = ASCII_CLASS[rule.phrase.encode()[0]], ASCII_CLASS[rule.phrase.encode()[-1]]
        if first == WORD and rule.leading_wildcard:
            body = body[1:]  # no leading boundary
        return [body + (bytes([BOUNDARY]) if (last == WORD and not rule.trailing_wildcard) else b"")]
    units = phrase_units(rule.phrase, fold)
    if not units:
        raise RuleError(
            f"phrase {rule.text!r} ({rule.source}) is empty once normalised (it has only invisible "
            "characters such as zero-width spaces, which matching skips); delete it")
    first, last = units[0][1], units[-1][1]
    start_cls = OTHER if (first == WORD and not rule.leading_wildcard) else first
    tail = bytes([BOUNDARY]) if (last == WORD and not rule.trailing_wildcard) else b""
    out = bytearray()
    emit_units(units, start_cls, out)
    return [bytes(out) + tail]


def compile_patterns(rules: PhraseSet, max_symbols: int) -> dict[bytes, float]:
    """All patterns of the phrase rules, each with its strongest (minimum) delta."""
    if rules.regex_rules:
        from cull.rules.regex_literals import expand_regex_rules

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
    this at admission, on its event loop. An ASCII phrase cannot fail and its symbols are bounded by
    2·len + 2 (a boundary at most between every two characters and at each end), so only the other
    phrases are normalised here; the exact count runs only where the bound does not settle it."""
    if rules.regex_rules:
        from cull.rules.regex_literals import expand_regex_rules

        extra = expand_regex_rules(rules.regex_rules)
    else:
        extra = []
    opts = rules.options
    bound = 0
    for rule in list(rules.phrase_rules) + extra:
        ph = rule.phrase
        if ph.isascii() and "\0" not in ph and not opts.confusables:  # ("%" is "o/o" with confusables)
            bound += 2 * len(ph) + 2
        else:
            bound += sum(len(p) for p in rule_patterns(rule, opts))
    if bound > max_symbols:
        compile_patterns(rules, max_symbols)
