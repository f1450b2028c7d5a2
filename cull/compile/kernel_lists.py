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


def _expand(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions start..start+count-1 of every segment, concatenated."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.cumsum(counts) - counts
    return np.repeat(starts - first, counts) + np.arange(total)


def node_token_lists(ptr, lo, hi, delta, perm, sort_by_token: bool):
    """CSR lists (ptr [N+1], tokens, deltas) of each node's ranges, expanded through `perm`."""
    ptr = np.asarray(ptr, np.int64)
    lens = (np.asarray(hi, np.int64) - np.asarray(lo, np.int64))
    pos = _expand(np.asarray(lo, np.int64), lens)
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
