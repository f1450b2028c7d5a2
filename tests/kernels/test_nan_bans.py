"""A banned token is -inf whatever its input logit was, NaN included (docs/automaton.md, "One step"): otherwise
greedy argmax picks the NaN and writes the banned phrase. Every backend, range bans (a phrase under
way) and always-list bans (a wildcard rule), the always-lists written scattered or dense."""
import os
import random

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"
import triton  # noqa: E402,F401

import cull  # noqa: E402
from cull.kernels import apply_rules  # noqa: E402

from randomized import build, random_states  # noqa: E402


def banned_sets(matcher, states):
    return [{t for t, d in matcher.banned(st).items() if d == float("-inf")} for st in states]

@pytest.mark.parametrize("backend", ["torch", "reference", "triton"])
@pytest.mark.parametrize("dense_always", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_nan_on_banned_token_becomes_minus_inf(backend, dense_always, seed, monkeypatch):
    import cull.compile.kernel_lists

    monkeypatch.setattr(cull.compile.kernel_lists, "DENSE_ALWAYS_MIN", 1 if dense_always else 10**9)
    rng = random.Random(seed)
    vocab, toks, special, rules, matcher = build(rng, 60, rng.randint(2, 5), bias=False)
    # a wildcard rule that bans many tokens from every state (the always-lists)
    matcher = cull.compile_rules(cull.PhraseSet([r.text for r in rules] + ["*a*"]),
                                 cull.compile.vocab.vocab_from_token_bytes(toks, special), cache=False)
    states = random_states(matcher, len(toks), 4, rng)
    banned = banned_sets(matcher, states)
    assert any(banned)
    logits = torch.randn(4, len(toks))
    for r, ban in enumerate(banned):
        for t in ban:
            logits[r, t] = float("nan")
    nodes = torch.tensor([s[0] for s in states])
    classes = torch.tensor([s[1] for s in states])
    out = logits.clone()
    apply_rules(out, nodes, classes, matcher.device_tables("cpu"), backend)
    for r, ban in enumerate(banned):
        for t in ban:
            assert out[r, t] == float("-inf"), (backend, r, t, out[r, t])
    assert not torch.isnan(out).any()

@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_nan_on_banned_token_through_the_processor(backend):
    """The same through CullLogitsProcessor with a real tokenizer: greedy argmax never picks it."""
    tok = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(
        os.path.join(os.environ.get("CULL_DATA_DIR", "../shared/data"), "tokenizers", "gpt2"))
    proc = cull.CullLogitsProcessor(["delve", "*zz*"], tok, backend=backend, device_state=False, cache=False)
    ids = torch.tensor([[tok.eos_token_id]])
    scores = torch.zeros(1, len(tok))
    delve = tok(" delve")["input_ids"]
    zz = tok.convert_tokens_to_ids("zz")
    scores[0, delve[0]] = float("nan")
    scores[0, zz] = float("nan")
    out = proc(ids, scores)
    if len(delve) == 1:
        assert out[0, delve[0]] == float("-inf")
    assert out[0, zz] == float("-inf")
    assert int(out.argmax()) != zz
