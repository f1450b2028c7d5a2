"""GPU tests, run by bench/gpu_check.sh on a lent GPU (marked `gpu`; the default run deselects them,
and on a machine without CUDA they fail loudly rather than pass)."""
import random

import pytest
import torch

import cull

from randomized import build, random_states

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def need_cuda():
    if not torch.cuda.is_available():
        pytest.fail("these tests need a CUDA GPU: run them through bench/gpu_check.sh")


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dense_always", [False, True])
def test_triton_on_cuda_matches_reference(seed, dtype, dense_always, monkeypatch):
    import cull.compile.kernel_lists
    from cull.kernels import apply_rules

    monkeypatch.setattr(cull.compile.kernel_lists, "DENSE_ALWAYS_MIN", 1 if dense_always else 10**9)

    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 80, rng.randint(1, 8), bias=seed % 2 == 1)
    B = rng.choice([1, 4, 33])
    states = random_states(matcher, len(tb), B, rng)
    base = (torch.randn(B, len(tb) + 7) * 4).to(dtype)
    nodes = torch.tensor([s[0] for s in states])
    classes = torch.tensor([s[1] for s in states])
    ref = base.clone()
    apply_rules(ref, nodes, classes, matcher.device_tables("cpu"), backend="reference")
    out = base.cuda()
    untouched = torch.full_like(out, float("nan"))  # poisoned: a stray write would show
    keep = ref == base
    apply_rules(out, nodes.cuda(), classes.cuda(), matcher.device_tables("cuda"), backend="triton")
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), ref)
    poisoned = torch.where(keep.cuda(), untouched, out)
    apply_rules(poisoned, nodes.cuda(), classes.cuda(), matcher.device_tables("cuda"), backend="triton")
    torch.cuda.synchronize()
    # positions the reference leaves alone were poisoned with NaN: a stray ban would overwrite one
    assert torch.equal(torch.isnan(poisoned.cpu()), keep)  # on the GPU the fp32 -> bf16/fp16 cast rounds like torch


def _qwen_processor(data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "qwen2")
    rules = cull.PhraseSet.load(data_dir / "phrases" / "antislop" / "slop_phrase_prob_adjustments_full_list.json",
                                action="ban", allow_symbols=True)
    proc = cull.CullLogitsProcessor(rules, tok, vocab_size=151_936, backend="triton", device_state=True)
    ids = torch.tensor([tok.encode("It was a testament to the rich tapestry of")] * 8).cuda()
    return proc, ids


def test_no_host_sync(data_dir):
    proc, ids = _qwen_processor(data_dir)
    scores = torch.randn(8, 151_936, device="cuda")
    proc(ids, scores.clone())  # first call builds tables (host work is allowed once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(1, 6):
            proc(torch.cat([ids, ids[:, :k]], 1), scores.clone())
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_device_steps_equal_host_on_real_vocab(data_dir):
    """The fused step on CUDA (state found on the device) against the host path, over decode steps
    with beam-style row reordering, on Qwen2 with the 50k list."""
    proc, ids = _qwen_processor(data_dir)
    host = cull.CullLogitsProcessor(proc.matcher, backend="torch", device_state=False)
    g = torch.Generator().manual_seed(0)
    ids = ids.cpu()
    changed = 0
    for step in range(12):
        scores = torch.randn(ids.shape[0], 151_936, generator=g)
        a = host(ids, scores.clone())
        b = proc(ids.cuda(), scores.cuda()).cpu()
        assert torch.equal(a, b), f"step {step}"
        changed += int((a == float("-inf")).sum())
        order = torch.randint(0, ids.shape[0], (ids.shape[0],), generator=g)
        nxt = torch.where(torch.rand(ids.shape[0], 1, generator=g) < 0.5,
                          scores.argmax(1, keepdim=True), torch.randint(0, 151_643, (ids.shape[0], 1), generator=g))
        ids = torch.cat([ids[order], nxt[order]], 1)
    assert changed > 0


def test_cuda_graph_replay_equals_eager(data_dir):
    from cull.kernels.triton_backend import step_triton

    proc, ids = _qwen_processor(data_dir)
    scores = torch.randn(8, 151_936, device="cuda")
    proc(ids[:, :-1], scores.clone())  # the previous step: its row states are `prev`
    rows = proc._device_rows
    T = proc.matcher.device_tables(scores.device)
    prev = tuple(x.clone() for x in rows.prev)
    pw = rows.powers_for(ids.shape[1])

    def step(buf, new):
        step_triton(buf, ids, pw, prev, new, rows.scope(ids.shape[1]), False, rows.step_tables, T)

    eager = scores.clone()
    new_e = tuple(torch.empty_like(x) for x in prev)
    step(eager, new_e)
    buf = scores.clone()
    new_g = tuple(torch.full_like(x, -7) for x in prev)  # poisoned: the graph must write them
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(buf, new_g)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step(buf, new_g)
    buf.copy_(scores)
    for x in new_g:
        x.fill_(-7)
    g.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(new_e, new_g))
    assert torch.equal(eager, buf)
    assert (eager == float("-inf")).any()
