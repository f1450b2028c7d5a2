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
def test_triton_on_cuda_matches_reference(seed, dtype):
    from cull.kernels import apply_rules

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
    apply_rules(out, nodes.cuda(), classes.cuda(), matcher.device_tables("cuda"), backend="triton")
    torch.cuda.synchronize()
    assert torch.equal(out.cpu(), ref)  # on the GPU the fp32 -> bf16/fp16 cast rounds like torch


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


def test_cuda_graph_replay_equals_eager(data_dir):
    from cull.kernels import apply_rules
    from cull.kernels.triton_step import advance_triton

    proc, ids = _qwen_processor(data_dir)
    scores = torch.randn(8, 151_936, device="cuda")
    proc(ids, scores.clone())
    rows = proc._device_rows
    T = proc.matcher.device_tables(scores.device)
    nxt = ids[:, -1:].contiguous()
    start = torch.zeros(8, dtype=torch.int64, device="cuda")
    n0, c0 = rows.nodes.clone(), rows.classes.clone()
    # eager
    n1, c1, eager = n0.clone(), c0.clone(), scores.clone()
    advance_triton(nxt, start, n1, c1, rows.S)
    apply_rules(eager, n1, c1, T, backend="triton")
    # graph
    n2, c2, buf = n0.clone(), c0.clone(), scores.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        advance_triton(nxt, start, n2, c2, rows.S)
        apply_rules(buf, n2, c2, T, backend="triton")
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    n2.copy_(n0), c2.copy_(c0), buf.copy_(scores)
    with torch.cuda.graph(g):
        advance_triton(nxt, start, n2, c2, rows.S)
        apply_rules(buf, n2, c2, T, backend="triton")
    n2.copy_(n0), c2.copy_(c0), buf.copy_(scores)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(n1, n2) and torch.equal(c1, c2) and torch.equal(eager, buf)
    assert (eager == float("-inf")).any()
