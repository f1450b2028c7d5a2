"""Literal regex rules ban exactly what `cull.find` reports (issue 10 item 3), and mean what the regex
itself means: random literal regexes (alternations, optional parts, character sets, bounded
repeats, `\\b` at the ends) against random texts in random tokenizations."""
import itertools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cull
from cull.rules.regex_literals import literal_phrase_rules
from cull.rules import make_rule
from cull.compile.vocab import vocab_from_token_bytes

from randomized import oracle

regex = pytest.importorskip("regex")

ALPHABET = ["a", "b", "c", "A", "B", " ", ".", "'"]
TOKENS = sorted({"".join(p) for n in (1, 2) for p in itertools.product(ALPHABET, repeat=n)})
VOCAB = vocab_from_token_bytes([t.encode() for t in TOKENS] + [b""], {len(TOKENS)})
INDEX = {t: i for i, t in enumerate(TOKENS)}

_char = st.sampled_from(["a", "b", "c", "A", "B", " ", r"\.", "'"])
_word_char = st.sampled_from(["a", "b", "c", "A"])


@st.composite
def atoms(draw):
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(_char)
    if kind == 1:
        return "[" + "".join(draw(st.lists(st.sampled_from("abAB"), min_size=2, max_size=3, unique=True))) + "]"
    if kind == 2:
        alts = draw(st.lists(st.text(alphabet="abcB", min_size=1, max_size=3), min_size=2, max_size=3))
        return "(" + "|".join(alts) + ")"
    if kind == 3:
        return draw(_char.filter(lambda c: c != " ")) + "?"
    return draw(_word_char) + draw(st.sampled_from(["{1,2}", "{0,2}", "{2}"]))


@st.composite
def literal_regexes(draw):
    body = "".join(draw(st.lists(atoms(), min_size=1, max_size=4)))
    lead = draw(st.booleans())
    trail = draw(st.booleans())
    return ("\\b" if lead else "") + body + ("\\b" if trail else "")


texts = st.text(alphabet="abcAB.' ", min_size=0, max_size=24)


def tokenize(text: str, cuts: list[bool]) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = 2 if (i + 1 < len(text) and cuts[i % len(cuts)]) else 1
        out.append(text[i:i + n])
        i += n
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(pattern=literal_regexes(), text=texts, cuts=st.lists(st.booleans(), min_size=1, max_size=8))
def test_processor_bans_exactly_what_find_reports(pattern, text, cuts):
    rule_text = "re:" + pattern
    assume(literal_phrase_rules(make_rule(rule_text)) is not None)
    rules = cull.PhraseSet([rule_text])
    matcher = cull.compile_rules(rules, VOCAB, cache=False)
    state = matcher.initial_state()
    history = ""
    for tok in tokenize(text, cuts):
        banned = matcher.banned(state)
        want = oracle(history.encode(), tok.encode(), rules)
        got = banned.get(INDEX[tok])
        assert (got is not None) == (want is not None), (pattern, history, tok, got, want)
        history += tok
        state = matcher.advance(state, INDEX[tok])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(pattern=literal_regexes(), text=texts.map(lambda t: " ".join(t.split())))
def test_find_means_what_the_regex_means(pattern, text):
    """On text with single spaces, a literal regex's `find` matches exist where the regex package
    (case-insensitive, as cull's rules are) finds one."""
    rule_text = "re:" + pattern
    assume(literal_phrase_rules(make_rule(rule_text)) is not None)
    found = cull.find(text, [rule_text])
    direct = [m.span() for m in regex.finditer(pattern, text, flags=regex.IGNORECASE, overlapped=True)
              if m.end() > m.start()]
    assert bool(found) == bool(direct), (pattern, text, found, direct)
    for m in found:  # every reported span is a match of the regex there
        assert regex.compile(pattern, regex.IGNORECASE).fullmatch(text[m.start:m.end]), (pattern, text, m)


def test_issue_examples():
    """`re:colou?r` bans `watercolor` (find reports it) and COLOR is found too."""
    assert [m.span() for m in cull.find("watercolor and COLOR", ["re:colou?r"])] == [(5, 10), (15, 20)]


@pytest.mark.parametrize("pattern", [r" colou?r", r"colou?r ", r"a\*b", "a\x00b", r"(?i)color", r"(?-i:c)olor",
                                     r"\b\.x", r"colou*r", r"a.c"])
def test_not_literal_is_refused_by_the_processor_and_run_as_a_regex(pattern):
    rule = make_rule("re:" + pattern)
    assert literal_phrase_rules(rule) is None
    with pytest.raises(cull.RuleError, match="cannot be enforced by the logits processor"):
        cull.compile_rules(cull.PhraseSet(["re:" + pattern]), VOCAB, cache=False)
    cull.find("some text", ["re:" + pattern])  # still a valid rule for find / scan / backtracking
