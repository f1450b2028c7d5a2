"""Triton backend: one fused launch per decode step.

Grid (B, split): program (row, part) finds the row's automaton state (given, or stepped on the
device from the row's tokens: `triton_step.row_state`), then takes every split-th block of the
row's always-list and of each range on its chain, and writes -inf (ban) or orig + delta (bias) in
place. `split` grows as the batch shrinks, so a small batch still spreads its writes over the whole
GPU. No host sync, no Python loop over rows or phrases, static shapes (the chain is unrolled to
`max_chain`): the step can be captured in a CUDA graph. Bias mode reads per-node merged ranges
(disjoint, the strongest delta over the chain and the always-list already taken) and skips
always-list tokens that those ranges cover, so every token is written exactly once from its
original value.

Runs on the CPU under TRITON_INTERPRET=1, which is how CI tests it against the reference.
"""
from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl

    from .triton_step import row_state

    AVAILABLE = True
except ImportError:  # pragma: no cover - the dispatcher falls back to torch
    AVAILABLE = False

BLOCK = 1024          # tokens per program per iteration (8 per thread at 4 warps)
TARGET_PROGRAMS = 1024  # enough programs in flight to fill an H100/H200 (132 SMs) several times over
MAX_SPLIT = 128
HASH_BLOCK = 512      # tokens hashed per iteration when a row's state is found on the device
PREV_BLOCK = 64       # previous rows compared per iteration

if AVAILABLE:

    @triton.jit
    def _apply_row(base, V, node, c, part, split,
                   perm_ptr, rng_ptr_ptr, rng_lo_ptr, rng_hi_ptr, rng_delta_ptr, has_rng_ptr, out_next_ptr,
                   alw_ptr_ptr, alw_tok_ptr, alw_delta_ptr, alw_min_ptr, invperm_ptr, n_tok,
                   MAX_CHAIN: tl.constexpr, ALL_BAN: tl.constexpr, BLOCK: tl.constexpr):
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
                    for p0 in range(lo + part * BLOCK, hi, split * BLOCK):
                        pos = p0 + offs
                        m = pos < hi
                        tok = tl.load(perm_ptr + pos, mask=m, other=0).to(tl.int64)
                        m = m & (tok < V)
                        if ALL_BAN:
                            tl.store(base + tok, tl.full([BLOCK], neg_inf, tl.float32).to(base.dtype.element_ty),
                                     mask=m)
                        else:
                            amin = tl.load(alw_min_ptr + c * n_tok + tok, mask=m, other=float("inf"))
                            dd = tl.minimum(amin, d)
                            orig = tl.load(base + tok, mask=m, other=0.0).to(tl.float32)
                            val = tl.where(dd == neg_inf, neg_inf, orig + dd)
                            tl.store(base + tok, val.to(base.dtype.element_ty), mask=m)
                if ALL_BAN:
                    cur = tl.load(out_next_ptr + cur).to(tl.int64)
        # the always-list of the row's class (sorted token ids, so the stores are nearly coalesced)
        a0 = tl.load(alw_ptr_ptr + c)
        a1 = tl.load(alw_ptr_ptr + c + 1)
        for s0 in range(a0 + part * BLOCK, a1, split * BLOCK):
            idx = s0 + offs
            m = idx < a1
            tok = tl.load(alw_tok_ptr + idx, mask=m, other=0).to(tl.int64)
            m = m & (tok < V)
            if ALL_BAN:
                tl.store(base + tok, tl.full([BLOCK], neg_inf, tl.float32).to(base.dtype.element_ty), mask=m)
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
                tl.store(base + tok, val.to(base.dtype.element_ty), mask=m)

    @triton.jit(do_not_specialize=["L", "n_prev", "scope", "split"])
    def _step_kernel(logits_ptr, stride_row, V, nodes_ptr, cls_ptr, split,
                     tok_ptr, tok_stride, L, pow_ptr, prev_hash_ptr, prev_nodes_ptr, prev_cls_ptr, n_prev, scope,
                     new_hash_ptr, sym_ptr, sym_off_ptr, cls_after_ptr, hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix,
                     perm_ptr, rng_ptr_ptr, rng_lo_ptr, rng_hi_ptr, rng_delta_ptr, has_rng_ptr, out_next_ptr,
                     alw_ptr_ptr, alw_tok_ptr, alw_delta_ptr, alw_min_ptr, invperm_ptr, n_tok,
                     ADVANCE: tl.constexpr, APPLY: tl.constexpr, FRESH: tl.constexpr, TOKEN_MODE: tl.constexpr,
                     MAX_CHAIN: tl.constexpr, ALL_BAN: tl.constexpr, BLOCK: tl.constexpr,
                     HB: tl.constexpr, PB: tl.constexpr):
        row = tl.program_id(0)
        part = tl.program_id(1)
        if ADVANCE:  # every program of the row finds the same state; part 0 records it
            node, c, h = row_state(tok_ptr + row.to(tl.int64) * tok_stride, L, pow_ptr, prev_hash_ptr,
                                   prev_nodes_ptr, prev_cls_ptr, n_prev, scope, sym_ptr, sym_off_ptr,
                                   cls_after_ptr, n_tok, hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix,
                                   FRESH, TOKEN_MODE, HB, PB)
            if part == 0:
                tl.store(nodes_ptr + row, node)
                tl.store(cls_ptr + row, c)
                tl.store(new_hash_ptr + row, h)
        else:
            node = tl.load(nodes_ptr + row).to(tl.int64)
            c = tl.load(cls_ptr + row).to(tl.int64)
        if APPLY:
            _apply_row(logits_ptr + row.to(tl.int64) * stride_row, V, node, c, part, split,
                       perm_ptr, rng_ptr_ptr, rng_lo_ptr, rng_hi_ptr, rng_delta_ptr, has_rng_ptr, out_next_ptr,
                       alw_ptr_ptr, alw_tok_ptr, alw_delta_ptr, alw_min_ptr, invperm_ptr, n_tok,
                       MAX_CHAIN, ALL_BAN, BLOCK)


def split_for(B: int, T) -> int:
    """Programs per row: enough to fill the GPU at small B, never more than the longest list needs."""
    work = max(int(T.get("max_alw", 0)), 1)
    return max(1, min(MAX_SPLIT, math.ceil(TARGET_PROGRAMS / max(B, 1)), math.ceil(work / BLOCK)))


def _require():
    if not AVAILABLE:
        from cull.errors import MissingExtraError

        raise MissingExtraError("backend='triton' needs triton. Fix: pip install 'cull-lm[triton]'")


def _table_args(T):
    if T["all_ban"]:
        rng = (T["rng_ptr"], T["rng_lo"], T["rng_hi"], T["rng_delta"])
        alw_min = invperm = T["rng_delta"]  # unused in ban mode
    else:
        rng = (T["mrg_ptr"], T["mrg_lo"], T["mrg_hi"], T["mrg_delta"])
        alw_min, invperm = T["alw_min"], T["invperm"]
    return (T["perm"], *rng, T["has_rng"], T["out_next"], T["alw_ptr"], T["alw_tok"], T["alw_delta"],
            alw_min, invperm, T["n_tok"])


def _launch(logits, nodes, classes, T, step=None, apply=True):
    B = nodes.shape[0]
    split = split_for(B, T) if apply else 1
    if step is None:  # states given: the advance arguments are unused
        dummy = nodes
        adv = (dummy, 0, 1, dummy, dummy, dummy, dummy, 0, 0, dummy, dummy, dummy, dummy, dummy, dummy, 0,
               dummy, 1)
        flags = dict(ADVANCE=False, FRESH=True, TOKEN_MODE=False)
    else:
        ids, pw, prev, new_hash, scope, fresh, S = step
        adv = (ids, ids.stride(0), ids.shape[1], pw, prev[0], prev[1], prev[2], prev[0].shape[0], scope, new_hash,
               S["sym"], S["sym_off"], S["cls_after"], S["hkeys"], S["hvals"], S["hmask"], S["fail"], S["radix"])
        flags = dict(ADVANCE=True, FRESH=bool(fresh), TOKEN_MODE=S["token_mode"])
    stride = logits.stride(0) if apply else 0
    V = logits.shape[1] if apply else 0
    _step_kernel[(B, split)](
        logits if apply else nodes, stride, V, nodes, classes, split, *adv, *_table_args(T),
        APPLY=apply, MAX_CHAIN=max(int(T["max_chain"]), 1), ALL_BAN=bool(T["all_ban"]), BLOCK=BLOCK,
        HB=HASH_BLOCK, PB=PREV_BLOCK, **flags,
    )


def apply_rules_triton(logits: torch.Tensor, nodes, classes, T) -> torch.Tensor:
    """Edit the logits for rows whose (node, class) states are given."""
    _require()
    if logits.stride(1) != 1:
        raise ValueError("the triton backend needs logits with unit stride along the vocabulary")
    dev = logits.device
    nodes = torch.as_tensor(nodes, device=dev).to(torch.int64)
    classes = torch.as_tensor(classes, device=dev).to(torch.int64)
    _launch(logits, nodes, classes, T)
    return logits


def step_triton(logits, ids, pw, prev, new, scope: int, fresh: bool, S, T, apply: bool = True) -> None:
    """One decode step on the device: find every row's state from its tokens `ids` [B, L] and the
    previous step's (hash, node, class) `prev`, write the new ones into `new`, and (if `apply`) edit
    the logits. `pw` holds the hash's powers (at least L of them)."""
    _require()
    if apply and logits.stride(1) != 1:
        raise ValueError("the triton backend needs logits with unit stride along the vocabulary")
    new_hash, new_nodes, new_cls = new
    _launch(logits, new_nodes, new_cls, T, step=(ids, pw, prev, new_hash, scope, fresh, S), apply=apply)
