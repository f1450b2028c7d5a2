"""The compiled automaton against the plain reference matcher, on random vocabularies and rules.

Exactness: a token is banned (or biased) after a history exactly when `cull.find` on the history
plus that token finds a match whose last character the token writes. Both directions are checked:
no miss (the guarantee) and no false ban.
"""
import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cull
from cull.compile.vocab import vocab_from_token_bytes

from randomized import build, oracle, steer as steer_tokens


def check_history(vocab, token_bytes, special, rules, matcher, history_ids):
    state = matcher.initial_state()
    text = b""
    for tid in history_ids:
        state = matcher.advance(state, tid)
        text += token_bytes[tid]
    got = matcher.banned(state)
    for tid in range(len(token_bytes)):
        want = None if tid in special else oracle(text, token_bytes[tid], rules)
        have = got.get(tid)
        assert have == want, (
            f"history={text!r} token={token_bytes[tid]!r}: automaton {have}, reference {want}; "
            f"rules={[r.text for r in rules]}"
        )


@pytest.mark.parametrize("seed", range(12))
def test_ban_sets_equal_reference(seed):
    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 60, rng.randint(1, 6), bias=seed % 3 == 0)
    for _ in range(6):
        n = rng.randint(0, 8)
        hist = [rng.randrange(len(tb)) for _ in range(n)]
        check_history(vocab, tb, special, rules, matcher, hist)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), steer=st.lists(st.integers(0, 10**6), min_size=0, max_size=10))
def test_ban_sets_equal_reference_steered(seed, steer):
    """Histories built from spellings of the phrases themselves, so deep states are reached."""
    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 40, rng.randint(1, 4), bias=seed % 2 == 0)
    phrase = rng.choice(rules.rules).phrase
    target = rng.choice([phrase, phrase.upper(), "x " + phrase, phrase + "  "])
    hist = steer_tokens(vocab, target, steer)
    check_history(vocab, tb, special, rules, matcher, hist[:-1] if hist else hist)


def test_delve_semantics():
    tb = [b" delve", b"d", b"elve", b"s", b" ", b"delved", b" Delv", b"ed", b"!", b"class", b"ass", b" ass"]
    matcher = cull.compile_rules(["delve", "ass"], vocab_from_token_bytes(tb), cache=False)
    start = matcher.initial_state()
    banned = matcher.banned(start)
    assert 0 in banned and 10 in banned and 11 in banned  # " delve", "ass", " ass"
    assert 5 not in banned and 9 not in banned  # "delved", "class"
    after_d = matcher.advance(start, 1)
    assert 2 in matcher.banned(after_d)  # "d" + "elve" ends right there: banned (end-boundary rule)
    after_delv = matcher.advance(start, 6)
    assert 7 not in matcher.banned(after_delv)  # " Delv" + "ed" = "delved": fine
    wild = cull.compile_rules(["delv*"], vocab_from_token_bytes(tb), cache=False)
    assert 5 in wild.banned(wild.initial_state())


def test_soft_bias_takes_minimum_once():
    tb = [b" rich tapestry", b" tapestry", b" rich"]
    rules = cull.PhraseSet([cull.rules.make_rule("tapestry", "bias", -2.0),
                            cull.rules.make_rule("rich tapestry", "bias", -5.0)])
    m = cull.compile_rules(rules, vocab_from_token_bytes(tb), cache=False)
    assert m.banned(m.initial_state())[0] == -5.0
    after = m.advance(m.initial_state(), 2)
    assert m.banned(after)[1] == -5.0
    assert m.banned(m.initial_state())[1] == -2.0


def test_antislop_multiplier_is_log():
    r = cull.rules.make_rule("delve", "bias", cull.rules.multiplier_to_delta(0.25))
    assert math.isclose(r.delta, math.log(0.25))
