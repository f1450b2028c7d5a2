"""Every kernel backend against the plain reference, on random shapes, dtypes, rules and histories.

Logits are random (never zeros) and compared whole, so an unwritten or wrongly indexed element
shows up as a difference."""
import random

import pytest
import torch

import cull
from cull.kernels import apply_rules
from cull.compile.vocab import vocab_from_token_bytes

from randomized import build, random_states, run_backends


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_torch_backend_matches_reference(seed, dtype):
    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 80, rng.randint(1, 8), bias=seed % 2 == 1)
    B = rng.choice([1, 3, 8])
    states = random_states(matcher, len(tb), B, rng)
    V = len(tb) + rng.choice([0, 5])  # logits may be wider than the tokenizer
    base, outs = run_backends(matcher, states, V, dtype, ["reference", "torch"], seed)
    assert torch.equal(outs["reference"], outs["torch"])
    assert not torch.isnan(outs["torch"]).any()
    # the reference really edits what banned() says, and nothing else
    for r, st in enumerate(states):
        want = matcher.banned(st)
        changed = (outs["reference"][r] != base[r]).nonzero().flatten().tolist()
        assert set(changed) <= set(want)
        for t, d in want.items():
            if d == float("-inf"):
                assert outs["reference"][r, t] == float("-inf")


def test_torch_backend_real_vocab(data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "gpt2")
    rules = cull.PhraseSet.load(data_dir / "phrases" / "antislop" / "slop_phrase_prob_adjustments.json")
    matcher = cull.compile_rules(rules, tok, cache=False)
    rng = random.Random(0)
    texts = ["It is a testament to the", "She let out a breath she didn't know she was",
             "The tapestry of", "I delved into the rich tap", "barely above a"]
    states = [matcher.advance_many(matcher.initial_state(), tok.encode(t)) for t in texts]
    states += random_states(matcher, len(tok), 4, rng)
    base, outs = run_backends(matcher, states, len(tok), torch.float32, ["reference", "torch"], 0)
    assert torch.equal(outs["reference"], outs["torch"])
    assert (outs["torch"] != base).any()


def test_unknown_backend_is_a_clear_error():
    tb = [b"a", b"b"]
    m = cull.compile_rules(["ab"], vocab_from_token_bytes(tb), cache=False)
    with pytest.raises(cull.CullError, match="unknown backend"):
        apply_rules(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                    m.device_tables("cpu"), backend="cuda-magic")


@pytest.mark.parametrize("seed", range(6))
def test_dense_always_path_matches_reference(seed, monkeypatch):
    """Force the dense always-list path (long lists) with rows of mixed classes."""
    import cull.kernels.torch_backend as tbk

    monkeypatch.setattr(tbk, "DENSE_ALWAYS", 0)
    rng = random.Random(500 + seed)
    vocab, tb, special, rules, matcher = build(rng, 80, rng.randint(2, 8), bias=False)
    states = random_states(matcher, len(tb), 6, rng)
    base, outs = run_backends(matcher, states, len(tb), torch.float32, ["reference", "torch"], seed)
    assert torch.equal(outs["reference"], outs["torch"])


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["padded", "rows", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_backends_edit_strided_views(seed, kind, dtype, monkeypatch):
    """vLLM hands over logits[:, :org_vocab] of a padded vocabulary and row subsets; HF may pass any
    view. Every backend edits such views in place, NaN/+inf on a banned token become -inf."""
    import cull.kernels.torch_backend as tbk

    from randomized import check_view_against_reference

    if seed % 2:
        monkeypatch.setattr(tbk, "DENSE_ALWAYS", 0)  # the dense always-list path too
    rng = random.Random(700 + seed)
    vocab, tb, special, rules, matcher = build(rng, 80, rng.randint(1, 8), bias=seed % 4 >= 2)
    states = random_states(matcher, len(tb), rng.choice([1, 3, 6]), rng)
    want, got = check_view_against_reference(matcher, states, len(tb), dtype, kind, "torch", seed)
    assert torch.equal(want.isnan(), got.isnan())
    assert torch.equal(want.nan_to_num(), got.nan_to_num())
    for r, st in enumerate(states):  # the poisoned bans really became -inf
        for t, d in matcher.banned(st).items():
            if d == float("-inf"):
                assert got[r, t] == float("-inf")
