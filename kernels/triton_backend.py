"""Triton backend: one fused launch per decode step.

Grid (B, SPLIT): program (row, part) takes every SPLIT-th block of the row's always-list and of
each range on its chain, and writes -inf (ban) or orig + delta (bias) in place. No host sync, no
Python loop over rows or phrases, static shapes (the chain is unrolled to `max_chain`), so the step
can be captured in a CUDA graph. Bias mode reads per-node merged ranges (disjoint, the strongest
delta over the chain and the always-list already taken) and skips always-list tokens that those
ranges cover, so every token is written exactly once from its original value.

Runs on the CPU under TRITON_INTERPRET=1, which is how CI tests it against the reference.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - the dispatcher falls back to torch
    AVAILABLE = False

BLOCK = 256
SPLIT = 8

if AVAILABLE:

    @triton.jit
    def _apply_kernel(logits_ptr, stride_row, V, nodes_ptr, cls_ptr,
                      perm_ptr, rng_ptr_ptr, rng_lo_ptr, rng_hi_ptr, rng_delta_ptr, has_rng_ptr, out_next_ptr,
                      alw_ptr_ptr, alw_tok_ptr, alw_delta_ptr, alw_min_ptr, invperm_ptr, n_tok,
                      MAX_CHAIN: tl.constexpr, ALL_BAN: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        part = tl.program_id(1)
        node = tl.load(nodes_ptr + row).to(tl.int64)
        c = tl.load(cls_ptr + row).to(tl.int64)
        base = logits_ptr + row.to(tl.int64) * stride_row
        offs = tl.arange(0, BLOCK)
        neg_inf = float("-inf")
        first = node
        if tl.load(has_rng_ptr + node) == 0:
            first = tl.load(out_next_ptr + node).to(tl.int64)
        # ranges: bans walk the chain; biases read the first ranged node's merged list
        cur = first
        for _k in tl.static_range(MAX_CHAIN if ALL_BAN else 1):
            if cur >= 0:
                r0 = tl.load(rng_ptr_ptr + cur)
                r1 = tl.load(rng_ptr_ptr + cur + 1)
                for r in range(r0, r1):
                    lo = tl.load(rng_lo_ptr + r)
                    hi = tl.load(rng_hi_ptr + r)
                    d = tl.load(rng_delta_ptr + r)
                    for p0 in range(lo + part * BLOCK, hi, SPLIT * BLOCK):
                        pos = p0 + offs
                        m = pos < hi
                        tok = tl.load(perm_ptr + pos, mask=m, other=0).to(tl.int64)
                        m = m & (tok < V)
                        if ALL_BAN:
                            tl.store(base + tok, tl.full([BLOCK], neg_inf, tl.float32).to(logits_ptr.dtype.element_ty),
                                     mask=m)
                        else:
                            amin = tl.load(alw_min_ptr + c * n_tok + tok, mask=m, other=float("inf"))
                            dd = tl.minimum(amin, d)
                            orig = tl.load(base + tok, mask=m, other=0.0).to(tl.float32)
                            val = tl.where(dd == neg_inf, neg_inf, orig + dd)
                            tl.store(base + tok, val.to(logits_ptr.dtype.element_ty), mask=m)
                if ALL_BAN:
                    cur = tl.load(out_next_ptr + cur).to(tl.int64)
        # the always-list of the row's class
        a0 = tl.load(alw_ptr_ptr + c)
        a1 = tl.load(alw_ptr_ptr + c + 1)
        for s0 in range(a0 + part * BLOCK, a1, SPLIT * BLOCK):
            idx = s0 + offs
            m = idx < a1
            tok = tl.load(alw_tok_ptr + idx, mask=m, other=0).to(tl.int64)
            m = m & (tok < V)
            if ALL_BAN:
                tl.store(base + tok, tl.full([BLOCK], neg_inf, tl.float32).to(logits_ptr.dtype.element_ty), mask=m)
            else:
                d = tl.load(alw_delta_ptr + idx, mask=m, other=0.0)
                if first >= 0:  # skip tokens the merged ranges already wrote
                    pos = tl.load(invperm_ptr + c * n_tok + tok, mask=m, other=-1)
                    r0 = tl.load(rng_ptr_ptr + first)
                    r1 = tl.load(rng_ptr_ptr + first + 1)
                    for r in range(r0, r1):
                        lo = tl.load(rng_lo_ptr + r)
                        hi = tl.load(rng_hi_ptr + r)
                        m = m & ((pos < lo) | (pos >= hi))
                orig = tl.load(base + tok, mask=m, other=0.0).to(tl.float32)
                val = tl.where(d == neg_inf, neg_inf, orig + d)
                tl.store(base + tok, val.to(logits_ptr.dtype.element_ty), mask=m)


def apply_rules_triton(logits: torch.Tensor, nodes, classes, T) -> torch.Tensor:
    if not AVAILABLE:
        from cull.errors import MissingExtraError

        raise MissingExtraError("backend='triton' needs triton. Fix: pip install 'cull-lm[triton]'")
    if logits.stride(1) != 1:
        raise ValueError("the triton backend needs logits with unit stride along the vocabulary")
    B, V = logits.shape
    dev = logits.device
    nodes = torch.as_tensor(nodes, device=dev).to(torch.int64)
    classes = torch.as_tensor(classes, device=dev).to(torch.int64)
    if T["all_ban"]:
        rng = (T["rng_ptr"], T["rng_lo"], T["rng_hi"], T["rng_delta"])
        alw_min = invperm = T["rng_delta"]  # unused in ban mode
    else:
        rng = (T["mrg_ptr"], T["mrg_lo"], T["mrg_hi"], T["mrg_delta"])
        alw_min, invperm = T["alw_min"], T["invperm"]
    _apply_kernel[(B, SPLIT)](
        logits, logits.stride(0), V, nodes, classes,
        T["perm"], *rng, T["has_rng"], T["out_next"],
        T["alw_ptr"], T["alw_tok"], T["alw_delta"], alw_min, invperm, T["n_tok"],
        MAX_CHAIN=max(int(T["max_chain"]), 1), ALL_BAN=bool(T["all_ban"]), SPLIT=SPLIT, BLOCK=BLOCK,
    )
    return logits
