"""Vectorised torch backend: no Python loop over rows, phrases or ranges.

Each row's chain of ranged nodes is unrolled to the compile-time bound `max_chain`; the ranges and
the always-lists are expanded into (row, token, delta) triples with repeat_interleave. Bans are one
index_put_; biases take the minimum delta per (row, token) before they are added once.
"""
from __future__ import annotations

import torch

NEG_INF = float("-inf")


def _expand(starts: torch.Tensor, counts: torch.Tensor):
    """For segments [start, start+count): (segment id, position) of every element."""
    seg = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    pos = starts[seg] + torch.arange(len(seg), device=counts.device) - first[seg]
    return seg, pos


def range_triples(nodes: torch.Tensor, T):
    """(rows, tokens, deltas) of the ranges on each row's chain; duplicates possible."""
    B = nodes.shape[0]
    rows = torch.arange(B, device=nodes.device)
    m = torch.where(T["has_rng"][nodes], nodes, T["out_next"][nodes].long())
    chain_rows, chain_nodes = [], []
    for _ in range(T["max_chain"]):
        live = m >= 0
        chain_rows.append(rows[live])
        chain_nodes.append(m[live])
        m = torch.where(live, T["out_next"][m.clamp(min=0)].long(), m)
    if not chain_nodes:
        empty = torch.zeros(0, dtype=torch.long, device=nodes.device)
        return empty, empty, torch.zeros(0, dtype=torch.float32, device=nodes.device)
    cn = torch.cat(chain_nodes)
    cr = torch.cat(chain_rows)
    r0 = T["rng_ptr"][cn]
    seg, r = _expand(r0, T["rng_ptr"][cn + 1] - r0)
    lo = T["rng_lo"][r].long()
    seg2, p = _expand(lo, T["rng_hi"][r].long() - lo)
    return cr[seg][seg2], T["perm"][p].long(), T["rng_delta"][r][seg2]


def apply_rules_torch(logits: torch.Tensor, nodes, classes, T) -> torch.Tensor:
    dev = logits.device
    nodes = torch.as_tensor(nodes, device=dev).long()
    classes = torch.as_tensor(classes, device=dev).long()
    V = logits.shape[1]
    W = min(V, T["alw_ban"].shape[1])  # the tokenizer may be narrower than the logits
    rows, tok, d = range_triples(nodes, T)
    keep = tok < V
    rows, tok, d = rows[keep], tok[keep], d[keep]
    if T["all_ban"]:
        # the always-lists as one dense masked_fill: its cost does not grow with the phrase count
        logits[:, :W].masked_fill_(T["alw_ban"][classes, :W], NEG_INF)
        logits[rows, tok] = NEG_INF
        return logits
    flat = rows * V + tok
    uniq, inv = torch.unique(flat, return_inverse=True)
    best = torch.full((len(uniq),), float("inf"), device=dev, dtype=torch.float32)
    best.scatter_reduce_(0, inv, d.float(), reduce="amin")
    urow, utok = uniq // V, uniq % V
    best = torch.minimum(best, T["alw_min"][classes[urow], utok])
    view = logits.view(-1)
    orig = view[uniq].float()
    # always-lists: dense, then the range positions are rewritten from their original values
    part = logits[:, :W]
    alw = T["alw_min"][classes, :W]
    hit = torch.isfinite(alw) | (alw == NEG_INF)
    part.copy_(torch.where(hit, torch.where(alw == NEG_INF, NEG_INF, part.float() + alw), part.float())
               .to(logits.dtype))
    view[uniq] = torch.where(best == NEG_INF, NEG_INF, orig + best).to(logits.dtype)
    return logits
