"""Triton backend: one fused launch per decode step.

Grid (B, split): program (row, part) finds the row's automaton state (given, or stepped on the
device from the row's tokens: `triton_step.row_state`), then takes every split-th block of the
chain lists of that state and of the class's always-list (or, for a dense always-list, every
split-th slice of the row against its bitmask), and writes -inf (ban) or orig + delta (bias) in
place. `split` grows as the batch shrinks, so a small batch still spreads its writes over the whole
GPU. No host sync, no Python loop over rows or phrases, static shapes (the chain is unrolled to
`max_chain`): the step can be captured in a CUDA graph. Bias mode reads each node's merged list
(the whole chain, sorted by token, the strongest delta kept) and skips always-list tokens that it
holds, so every token is written exactly once from its original value. docs/automaton.md §8 has
the memory layout; bench/results/automaton-history.md the measured cost.

Runs on the CPU under TRITON_INTERPRET=1, which is how CI tests it against the reference.
"""
from __future__ import annotations

import math

import torch

from cull.compile.tables import DeviceTables, KernelLists, StepTables

try:
    import triton
    import triton.language as tl

    from cull.kernels.triton_step import row_state

    AVAILABLE = True
except ImportError:  # pragma: no cover - the dispatcher falls back to torch
    AVAILABLE = False

BLOCK = 1024          # tokens per program per iteration (8 per thread at 4 warps)
TARGET_PROGRAMS = 2048  # programs per step: several per SM on an H100/H200 (132 SMs), to hide latency
MAX_SPLIT = 128
HASH_BLOCK = 256      # tokens hashed per iteration (small: registers, so that many programs stay resident)
PREV_BLOCK = 64       # previous rows compared per iteration

if AVAILABLE:

    @triton.jit
    def _list_block(tok_ptr, s0, end, V, BLOCK: tl.constexpr):
        """Positions s0.. of a token list (those before `end`), their token ids, and which to write."""
        idx = s0 + tl.arange(0, BLOCK)
        m = idx < end
        tok = tl.load(tok_ptr + idx, mask=m, other=0).to(tl.int64)
        return idx, tok, m & (tok < V)

    @triton.jit
    def _write(base, tok, m, d, BAN: tl.constexpr, BLOCK: tl.constexpr):
        """base[tok] = -inf (BAN), else orig + d in fp32 rounded once (d == -inf bans), where m."""
        if BAN:
            tl.store(base + tok, tl.full([BLOCK], float("-inf"), tl.float32).to(base.dtype.element_ty), mask=m)
        else:
            orig = tl.load(base + tok, mask=m, other=0.0).to(tl.float32)
            val = tl.where(d == float("-inf"), float("-inf"), orig + d)
            tl.store(base + tok, val.to(base.dtype.element_ty), mask=m)

    @triton.jit
    def _apply_row(base, V, node, c, part, split, has_rng_ptr, out_next_ptr, lst_ptr_ptr, lst_tok_ptr, lst_delta_ptr,
                   alw_ptr_ptr, alw_tok_ptr, alw_delta_ptr, alw_min_ptr, alw_bits_ptr, alw_words, n_tok,
                   MAX_CHAIN: tl.constexpr, ALL_BAN: tl.constexpr, DENSE_ALW: tl.constexpr,
                   SEARCH_STEPS: tl.constexpr, BLOCK: tl.constexpr):
        first = node
        if tl.load(has_rng_ptr + node) == 0:
            first = tl.load(out_next_ptr + node).to(tl.int64)
        # chain lists: bans walk the chain (each node's own tokens); biases read the first ranged
        # node's merged list (the whole chain, sorted by token, strongest delta kept)
        cur = first
        for _k in tl.static_range(MAX_CHAIN if ALL_BAN else 1):
            if cur >= 0:
                p0 = tl.load(lst_ptr_ptr + cur)
                p1 = tl.load(lst_ptr_ptr + cur + 1)
                for s0 in range(p0 + part * BLOCK, p1, split * BLOCK):
                    idx, tok, m = _list_block(lst_tok_ptr, s0, p1, V, BLOCK)
                    if ALL_BAN:
                        _write(base, tok, m, 0.0, True, BLOCK)
                    else:  # an always-list token the chain also holds: the stronger delta
                        d = tl.minimum(tl.load(alw_min_ptr + c * n_tok + tok, mask=m, other=float("inf")),
                                       tl.load(lst_delta_ptr + idx, mask=m, other=0.0))
                        _write(base, tok, m, d, False, BLOCK)
                if ALL_BAN:
                    cur = tl.load(out_next_ptr + cur).to(tl.int64)
        if DENSE_ALW:  # the class's always-list as a bitmask: a contiguous slice of the row per program
            for t0 in range(part * BLOCK, n_tok, split * BLOCK):
                tok = t0 + tl.arange(0, BLOCK)
                m = tok < n_tok
                word = tl.load(alw_bits_ptr + c * alw_words + (tok >> 5), mask=m, other=0)
                m = m & (((word >> (tok & 31)) & 1) != 0) & (tok < V)
                _write(base, tok, m, 0.0, True, BLOCK)
        else:  # the class's always-list, sorted token ids (nearly coalesced stores)
            a0 = tl.load(alw_ptr_ptr + c)
            a1 = tl.load(alw_ptr_ptr + c + 1)
            for s0 in range(a0 + part * BLOCK, a1, split * BLOCK):
                idx, tok, m = _list_block(alw_tok_ptr, s0, a1, V, BLOCK)
                if ALL_BAN:
                    _write(base, tok, m, 0.0, True, BLOCK)
                else:
                    d = tl.load(alw_delta_ptr + idx, mask=m, other=0.0)
                    if first >= 0:  # skip tokens the merged list wrote: binary search in it
                        p0 = tl.load(lst_ptr_ptr + first)
                        p1 = tl.load(lst_ptr_ptr + first + 1)
                        lo = tl.zeros([BLOCK], tl.int64) + p0
                        hi = tl.zeros([BLOCK], tl.int64) + p1
                        for _s in tl.static_range(SEARCH_STEPS):
                            live = lo < hi
                            mid = (lo + hi) // 2
                            v = tl.load(lst_tok_ptr + mid, mask=live, other=0).to(tl.int64)
                            right = v < tok
                            lo = tl.where(live & right, mid + 1, lo)
                            hi = tl.where(live & (right == 0), mid, hi)
                        hitv = tl.load(lst_tok_ptr + lo, mask=m & (lo < p1), other=-1).to(tl.int64)
                        m = m & (hitv != tok)
                    _write(base, tok, m, d, False, BLOCK)

    @triton.jit(do_not_specialize=["L", "n_prev", "scope", "split"])
    def _step_kernel(logits_ptr, stride_row, V, nodes_ptr, cls_ptr, split,
                     tok_ptr, tok_stride, L, pow_ptr, prev_hash_ptr, prev_nodes_ptr, prev_cls_ptr, n_prev, scope,
                     new_hash_ptr, sym_ptr, sym_off_ptr, cls_after_ptr, hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix,
                     has_rng_ptr, out_next_ptr, lst_ptr_ptr, lst_tok_ptr, lst_delta_ptr,
                     alw_ptr_ptr, alw_tok_ptr, alw_delta_ptr, alw_min_ptr, alw_bits_ptr, alw_words, n_tok,
                     ADVANCE: tl.constexpr, APPLY: tl.constexpr, FRESH: tl.constexpr, TOKEN_MODE: tl.constexpr,
                     MAX_CHAIN: tl.constexpr, ALL_BAN: tl.constexpr, DENSE_ALW: tl.constexpr,
                     SEARCH_STEPS: tl.constexpr, BLOCK: tl.constexpr, HB: tl.constexpr, PB: tl.constexpr):
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
                       has_rng_ptr, out_next_ptr, lst_ptr_ptr, lst_tok_ptr, lst_delta_ptr,
                       alw_ptr_ptr, alw_tok_ptr, alw_delta_ptr, alw_min_ptr, alw_bits_ptr, alw_words, n_tok,
                       MAX_CHAIN, ALL_BAN, DENSE_ALW, SEARCH_STEPS, BLOCK)


def split_for(B: int, T: DeviceTables) -> int:
    """Programs per row: enough to fill the GPU at small B, never more than the longest list needs."""
    work = T.n_tok if T.kernel_lists.dense_always else max(T.max_always, 1)
    return max(1, min(MAX_SPLIT, math.ceil(TARGET_PROGRAMS / max(B, 1)), math.ceil(work / BLOCK)))


def _require():
    if not AVAILABLE:
        from cull.errors import MissingExtraError

        raise MissingExtraError("backend='triton' needs triton. Fix: pip install 'cull-lm[triton]'")


def _table_args(T: DeviceTables, L: KernelLists):
    alw_min = T.alw_min if not T.all_ban else L.lst_delta  # unused in ban mode
    D = T.dev
    return (D.has_rng, D.out_next, L.lst_ptr, L.lst_tok, L.lst_delta, D.alw_ptr, D.alw_tok, D.alw_delta, alw_min,
            L.alw_bits, L.alw_words, T.n_tok)


def _launch(logits, nodes, classes, T: DeviceTables, step=None, apply=True):
    _require()
    if apply and logits.shape[1] > 1 and logits.stride(1) != 1:
        # the kernel walks a row with unit stride; any row stride is fine (a padded-vocabulary
        # slice needs no copy), a strided vocabulary axis goes through a contiguous copy
        dense = logits.contiguous()
        _launch(dense, nodes, classes, T, step, apply)
        logits.copy_(dense)
        return
    L = T.kernel_lists  # built on first use
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
               S.sym, S.sym_off, S.cls_after, S.hkeys, S.hvals, S.hmask, S.fail, S.radix)
        flags = dict(ADVANCE=True, FRESH=bool(fresh), TOKEN_MODE=S.token_mode)
    stride = logits.stride(0) if apply else 0
    V = logits.shape[1] if apply else 0
    _step_kernel[(B, split)](
        logits if apply else nodes, stride, V, nodes, classes, split, *adv, *_table_args(T, L),
        APPLY=apply, MAX_CHAIN=max(T.max_chain, 1), ALL_BAN=T.all_ban,
        DENSE_ALW=L.dense_always, SEARCH_STEPS=L.search_steps, BLOCK=BLOCK,
        HB=HASH_BLOCK, PB=PREV_BLOCK, **flags,
    )


def apply_rules_triton(logits: torch.Tensor, nodes, classes, T: DeviceTables) -> torch.Tensor:
    """Edit the logits for rows whose (node, class) states are given."""
    dev = logits.device
    nodes = torch.as_tensor(nodes, device=dev).to(torch.int64)
    classes = torch.as_tensor(classes, device=dev).to(torch.int64)
    _launch(logits, nodes, classes, T)
    return logits


def step_triton(logits, ids, pw, prev, new, scope: int, fresh: bool, S: StepTables, T: DeviceTables,
                apply: bool = True) -> None:
    """One decode step on the device: find every row's state from its tokens `ids` [B, L] and the
    previous step's (hash, node, class) `prev`, write the new ones into `new`, and (if `apply`) edit
    the logits. `pw` holds the hash's powers (at least L of them)."""
    new_hash, new_nodes, new_cls = new
    _launch(logits, new_nodes, new_cls, T, step=(ids, pw, prev, new_hash, scope, fresh, S), apply=apply)
