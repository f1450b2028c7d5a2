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


def banned_triples(nodes: torch.Tensor, classes: torch.Tensor, T):
    """(rows, tokens, deltas) of everything the rows' states ban or bias; duplicates possible."""
    nodes = nodes.long()
    classes = classes.long()
    B = nodes.shape[0]
    rows = torch.arange(B, device=nodes.device)
    # always-lists of each row's class
    a0 = T["alw_ptr"][classes]
    seg, pos = _expand(a0, T["alw_ptr"][classes + 1] - a0)
    out_rows, out_tok, out_d = [rows[seg]], [T["alw_tok"][pos].long()], [T["alw_delta"][pos]]
    # ranges on each row's chain
    m = torch.where(T["has_rng"][nodes], nodes, T["out_next"][nodes].long())
    chain_rows, chain_nodes = [], []
    for _ in range(T["max_chain"]):
        live = m >= 0
        chain_rows.append(rows[live])
        chain_nodes.append(m[live])
        m = torch.where(live, T["out_next"][m.clamp(min=0)].long(), m)
    if chain_nodes:
        cn = torch.cat(chain_nodes)
        cr = torch.cat(chain_rows)
        r0 = T["rng_ptr"][cn]
        seg, r = _expand(r0, T["rng_ptr"][cn + 1] - r0)
        lo = T["rng_lo"][r].long()
        seg2, p = _expand(lo, T["rng_hi"][r].long() - lo)
        out_rows.append(cr[seg][seg2])
        out_tok.append(T["perm"][p].long())
        out_d.append(T["rng_delta"][r][seg2])
    return torch.cat(out_rows), torch.cat(out_tok), torch.cat(out_d)


def apply_rules_torch(logits: torch.Tensor, nodes, classes, T) -> torch.Tensor:
    dev = logits.device
    nodes = torch.as_tensor(nodes, device=dev)
    classes = torch.as_tensor(classes, device=dev)
    rows, tok, d = banned_triples(nodes, classes, T)
    V = logits.shape[1]
    keep = tok < V  # a tokenizer vocabulary may be wider than the logits, never the other way round
    rows, tok, d = rows[keep], tok[keep], d[keep]
    if T["all_ban"]:
        logits[rows, tok] = NEG_INF
        return logits
    flat = rows * V + tok
    uniq, inv = torch.unique(flat, return_inverse=True)
    best = torch.full((len(uniq),), float("inf"), device=dev, dtype=torch.float32)
    best.scatter_reduce_(0, inv, d.float(), reduce="amin")
    view = logits.view(-1)
    vals = view[uniq].float()
    new = torch.where(best == NEG_INF, torch.full_like(vals, NEG_INF), vals + best)
    view[uniq] = new.to(logits.dtype)
    return logits
