"""Token lists for the GPU kernel, expanded from the compiled ranges.

The ranges are the compact form (a few bytes per phrase, whatever the vocabulary); on a GPU the
kernel wants flat lists instead: chain ranges are short (a median of 3 tokens on the 50k antislop
list) and a node can hold hundreds of them, so one vector load of token ids beats a loop over
ranges. And a class whose always-list bans a large share of the vocabulary is better written as a
dense bitmask pass (coalesced masked stores, one bit read per token) than as scattered stores.
"""
from __future__ import annotations

import numpy as np

DENSE_ALWAYS_MIN = 2048  # always-lists at least this long are applied from a bitmask


def expand_segments(starts, counts):
    """(segment id, position) of every element of the segments [start, start + count), in order.
    int64 numpy arrays (host) or torch tensors (any device)."""
    if isinstance(counts, np.ndarray):
        seg = np.repeat(np.arange(len(counts)), counts)
        first = np.cumsum(counts) - counts
        return seg, starts[seg] + np.arange(len(seg)) - first[seg]
    import torch

    seg = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    return seg, starts[seg] + torch.arange(len(seg), device=counts.device) - first[seg]


def node_token_lists(ptr, lo, hi, delta, perm, sort_by_token: bool):
    """CSR lists (ptr [N+1], tokens, deltas) of each node's ranges, expanded through `perm`."""
    ptr = np.asarray(ptr, np.int64)
    lens = (np.asarray(hi, np.int64) - np.asarray(lo, np.int64))
    _, pos = expand_segments(np.asarray(lo, np.int64), lens)
    tok = np.asarray(perm)[pos].astype(np.int32)
    dl = np.repeat(np.asarray(delta, np.float32), lens)
    per_node = np.add.reduceat(np.append(lens, 0), ptr[:-1]) if len(lens) else np.zeros(len(ptr) - 1, np.int64)
    per_node = np.where(np.diff(ptr) > 0, per_node, 0)  # reduceat repeats a value for empty segments
    out_ptr = np.concatenate([[0], np.cumsum(per_node)]).astype(np.int64)
    if sort_by_token and len(tok):
        owner = np.repeat(np.arange(len(per_node)), per_node)
        order = np.lexsort((tok, owner))
        tok, dl = tok[order], dl[order]
    return out_ptr, tok, dl


def always_bits(alw_ptr, alw_tok, n_tokens: int) -> np.ndarray:
    """[3, ceil(n/32)] int32 bitmask of each class's always-list (bit t%32 of word t//32)."""
    words = (n_tokens + 31) // 32
    bits = np.zeros((3, words * 32), dtype=bool)
    for c in range(3):
        bits[c, alw_tok[alw_ptr[c]:alw_ptr[c + 1]]] = True
    weights = np.left_shift(np.uint64(1), np.arange(32, dtype=np.uint64))
    words_u = (bits.reshape(3, words, 32) * weights).sum(axis=2, dtype=np.uint64)
    return words_u.astype(np.uint32).view(np.int32)


def search_steps(ptr) -> int:
    """Binary-search steps that cover the longest list."""
    longest = int(np.diff(ptr).max(initial=0))
    return max(1, int(longest).bit_length())


def merged_ranges(host):
    """Per ranged node: its ranges and those of its whole chain, disjoint, strongest delta kept.
    `host` holds the tables as numpy arrays (cull.compile.tables.TableArrays)."""
    from cull.compile.build import merge_sorted_ranges

    n = len(host.has_rng)
    ptr, lo, hi, dl = host.rng_ptr, host.rng_lo, host.rng_hi, host.rng_delta
    merged: dict[int, list] = {}
    out_ptr = np.zeros(n + 1, np.int64)
    out_lo, out_hi, out_d = [], [], []
    for m in range(n):
        if host.has_rng[m]:
            own = list(zip(lo[ptr[m]:ptr[m + 1]].tolist(), hi[ptr[m]:ptr[m + 1]].tolist(),
                           dl[ptr[m]:ptr[m + 1]].tolist()))
            nxt = int(host.out_next[m])  # a failure-link ancestor: merged already (breadth-first order)
            items = own + (merged[nxt] if nxt >= 0 else [])
            items.sort()
            pieces = merge_sorted_ranges([a for a, _, _ in items], [b for _, b, _ in items], [d for _, _, d in items])
            merged[m] = pieces
            out_lo.extend(a for a, _, _ in pieces)
            out_hi.extend(b for _, b, _ in pieces)
            out_d.extend(d for _, _, d in pieces)
        out_ptr[m + 1] = len(out_lo)
    return (out_ptr, np.asarray(out_lo, np.int64), np.asarray(out_hi, np.int64),
            np.asarray(out_d, np.float32))


def flat_lists(host, all_ban: bool, n_tokens: int) -> tuple:
    """(lst_ptr, lst_tok, lst_delta, alw_bits, dense_always) as numpy arrays: each node's own tokens
    (bans) or its chain's merged tokens sorted by id (biases), and the always-lists as a bitmask
    where one is long enough to pay (else a [3, 1] placeholder)."""
    if all_ban:
        ptr, tok, dl = node_token_lists(host.rng_ptr, host.rng_lo, host.rng_hi, host.rng_delta, host.perm, False)
    else:
        mp, ml, mh, md = merged_ranges(host)
        ptr, tok, dl = node_token_lists(mp, ml, mh, md, host.perm, True)
    dense = all_ban and int(np.diff(host.alw_ptr).max(initial=0)) >= DENSE_ALWAYS_MIN
    bits = always_bits(host.alw_ptr, host.alw_tok, n_tokens) if dense else np.zeros((3, 1), np.int32)
    return ptr, tok, dl, bits, dense
