"""The Triton kernel against the reference, on the CPU under TRITON_INTERPRET=1: random shapes,
dtypes, rule sets (bans, biases, both) and token histories; logits random, compared whole."""
import importlib
import os
import random

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"
import triton  # noqa: E402,F401  (the test extra installs it; CI must run these tests, not skip them)

import cull.kernels.triton_backend as tb  # noqa: E402

from randomized import build, random_states, run_backends  # noqa: E402

if not tb.AVAILABLE:
    pytest.fail("triton imports but the backend did not load")
tb = importlib.reload(tb)  # make sure the kernel was built in interpreter mode


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dense_always", [False, True])
def test_triton_matches_reference(seed, dtype, dense_always, monkeypatch):
    """Both ways of writing the always-lists: scattered token ids, and the bitmask pass (which the
    real 50k list takes; forced here by lowering the threshold)."""
    import cull.compile.kernel_lists

    monkeypatch.setattr(cull.compile.kernel_lists, "DENSE_ALWAYS_MIN", 1 if dense_always else 10**9)
    rng = random.Random(1000 + seed)
    vocab, toks, special, rules, matcher = build(rng, 70, rng.randint(1, 7), bias=seed % 2 == 1)
    B = rng.choice([1, 2, 5])
    states = random_states(matcher, len(toks), B, rng)
    V = len(toks) + rng.choice([0, 3])
    base, outs = run_backends(matcher, states, V, dtype, ["reference", "triton"], seed)
    assert_same(outs["reference"], outs["triton"], base)


def assert_same(ref, out, base):
    """Bans bit for bit; biases to one rounding step of the dtype (the interpreter's fp32 -> bf16/fp16
    cast does not round to nearest-even as the GPU does); untouched logits exactly."""
    ninf = float("-inf")
    assert torch.equal(ref == ninf, out == ninf)
    untouched = ref == base
    assert torch.equal(out[untouched], base[untouched])
    eps = torch.finfo(ref.dtype).eps
    torch.testing.assert_close(out, ref, rtol=eps, atol=0)


def test_triton_large_lists_split_across_programs():
    """Always-lists and ranges longer than BLOCK * SPLIT, so every program has work."""
    rng = random.Random(7)
    tbytes = [bytes([97 + rng.randrange(3)]) * rng.randint(1, 3) + b"x" * k for k in range(3000)]
    tbytes = list(dict.fromkeys(tbytes))
    from cull.compile.vocab import vocab_from_token_bytes

    m = cull_compile(["x"], vocab_from_token_bytes(tbytes))
    states = [m.initial_state(), m.advance(m.initial_state(), 0)]
    base, outs = run_backends(m, states, len(tbytes), torch.float32, ["reference", "triton"], 3)
    assert torch.equal(outs["reference"], outs["triton"])


def test_always_bitmask_layout():
    import numpy as np

    from cull.compile.kernel_lists import always_bits

    rng = np.random.default_rng(0)
    toks = [np.sort(rng.choice(100, size=k, replace=False)) for k in (0, 7, 60)]
    ptr = np.cumsum([0] + [len(t) for t in toks])
    bits = always_bits(ptr, np.concatenate(toks), 100).astype(np.int64) & 0xFFFFFFFF
    for c in range(3):
        got = [t for t in range(100) if (bits[c, t // 32] >> (t % 32)) & 1]
        assert got == toks[c].tolist()


def cull_compile(rules, vocab):
    import cull

    return cull.compile_rules(rules, vocab, cache=False)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["padded", "rows", "transposed"])
def test_triton_edits_strided_views(seed, kind):
    from randomized import check_view_against_reference

    rng = random.Random(900 + seed)
    vocab, toks, special, rules, matcher = build(rng, 70, rng.randint(1, 6), bias=seed % 2 == 1)
    states = random_states(matcher, len(toks), rng.choice([1, 3]), rng)
    want, got = check_view_against_reference(matcher, states, len(toks), torch.float32, kind, "triton", seed)
    assert torch.equal(want == float("-inf"), got == float("-inf"))
    assert torch.equal(want.isnan(), got.isnan())
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=0, atol=0)


def test_triton_on_disguises_split_into_bytes(data_dir):
    """A real SentencePiece vocabulary (stories260K, byte fallback): rows that spelled Unicode
    disguises byte by byte, many of them stopped inside a character, give the reference's bans."""
    from transformers import LlamaTokenizer

    from cull.compile.cache import as_vocab

    tok = LlamaTokenizer.from_pretrained(data_dir / "models" / "stories260K")
    vocab = as_vocab(tok)
    byte_id = {b: i for i, b in enumerate(vocab.token_bytes) if len(b) == 1 and i not in vocab.special_ids}
    m = cull_compile(["delve", "a testament to", "café", "你好", "straße"], vocab)
    texts = ["d\u200belve", "ｄｅｌｖｅ", "𝐝𝐞𝐥𝐯𝐞", "a testament\u3000to", "cafe\u0301", "我说你好", "STRASSE"]
    states = []
    for text in texts:
        st = m.initial_state()
        for b in text.encode():
            st = m.advance(st, byte_id[bytes([b])])
            states.append(st)
    assert sum(s[1] >= 3 for s in states) >= 10  # rows inside a character
    base, outs = run_backends(m, states, len(vocab.token_bytes), torch.float32, ["reference", "triton"], 5)
    assert torch.equal(outs["reference"], outs["triton"])
    assert (outs["reference"] == float("-inf")).any()


@pytest.mark.parametrize("bias", [False, True])
def test_kernels_only_read_the_tables(bias):
    """Every backend leaves the device tables as it found them (lazily built parts aside), and the
    tables refuse assignment."""
    import dataclasses

    import numpy as np

    rng = random.Random(40 + bias)
    vocab, toks, special, rules, matcher = build(rng, 70, 5, bias=bias)
    T = matcher.device_tables("cpu")
    T.kernel_lists, T.always_sorted  # built first: they are the tables' own, once
    states = random_states(matcher, len(toks), 4, rng)

    def snapshot():
        parts = [T.dev, T.host, T.kernel_lists]
        out = [getattr(p, f.name) for p in parts for f in dataclasses.fields(p)]
        out += [T.alw_min, T.alw_ban, *T.always_sorted]
        return [x.clone() if isinstance(x, torch.Tensor) else np.copy(x) if isinstance(x, np.ndarray) else x
                for x in out]

    before = snapshot()
    run_backends(matcher, states, len(toks), torch.float32, ["reference", "torch", "triton"], 1)
    after = snapshot()
    for a, b in zip(before, after):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        elif isinstance(a, np.ndarray):
            assert np.array_equal(a, b)
        else:
            assert a == b
    with pytest.raises(dataclasses.FrozenInstanceError):
        T.all_ban = not T.all_ban
