"""Vectorised torch backend: no Python loop over rows, phrases or ranges.

Each row's chain of ranged nodes is unrolled to the compile-time bound `max_chain`; its ranges are
expanded into (row, token, delta) triples with repeat-and-offset arithmetic (`TableArrays.range_triples`:
numpy on CPU, where tiny torch ops cost more than the work; torch on a GPU). Long always-lists are
applied densely, grouped by class: one masked fill against a [V] ban mask, a cost that does not grow
with the phrase count. On CPU, bans read each visited node's token list, which the tables keep
(`DeviceTables.chain_tokens`), so a step is one `index_fill_`/`index_put_`. Biases take the minimum
delta per (row, token) and are added once, in fp32, rounded once to the logits' dtype.
"""
from __future__ import annotations

import numpy as np
import torch

from cull.compile.tables import DeviceTables

NEG_INF = float("-inf")


def _ban_rows(logits, classes, alw_ban):
    """-inf wherever the row's class always-list bans a token (class -1: leave the row). A masked
    fill, not a minimum, so a NaN logit on a banned token becomes -inf too."""
    W = min(logits.shape[1], alw_ban.shape[1])
    if logits.device.type == "cpu":  # one fused op per row beats a [B, V] gather on a CPU
        for r, c in enumerate(classes.tolist()):
            if c >= 0:
                logits[r, :W].masked_fill_(alw_ban[c, :W], NEG_INF)
        return
    mask = alw_ban.index_select(0, classes.clamp(min=0))[:, :W] & (classes >= 0)[:, None]
    logits[:, :W].masked_fill_(mask, NEG_INF)


DENSE_ALWAYS = 0  # always-lists longer than this are applied densely: one minimum over V, whatever the phrase count


def _fill(row: torch.Tensor, tok: torch.Tensor) -> None:
    if len(tok):
        if int(tok[-1]) >= row.shape[0]:  # sorted: only a tokenizer wider than the logits gets here
            tok = tok[tok < row.shape[0]]
        row.index_fill_(0, tok, NEG_INF)


def _apply_bans_cpu(logits, nodes_host, classes_host, T: DeviceTables):
    alw = T.always_sorted
    B, V = logits.shape
    dense = [len(a) > DENSE_ALWAYS for a in alw]
    if B == 1:  # the common CPU case, kept to a handful of calls
        c = int(classes_host[0])
        row = logits[0]
        if dense[c]:
            W = min(V, T.alw_ban.shape[1])
            row[:W].masked_fill_(T.alw_ban[c, :W], NEG_INF)
        else:
            _fill(row, alw[c])
        _fill(row, T.chain_tokens(int(nodes_host[0])))
        return logits
    cls_list = classes_host.tolist()
    if any(dense[c] for c in cls_list):
        _ban_rows(logits, torch.from_numpy(np.where([dense[c] for c in cls_list], classes_host, -1)), T.alw_ban)
    toks = [T.chain_tokens(n) for n in nodes_host.tolist()]
    toks = [t if dense[c] else torch.cat([t, alw[c]]) for t, c in zip(toks, cls_list)]
    rows = torch.repeat_interleave(torch.arange(B), torch.tensor([len(t) for t in toks]))
    tok = torch.cat(toks)
    keep = tok < V
    logits.index_put_((rows[keep], tok[keep]), torch.tensor(NEG_INF, dtype=logits.dtype))
    return logits


def _host(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.int64, copy=False)
    return np.asarray(torch.as_tensor(x).cpu(), dtype=np.int64)


def apply_rules_torch(logits: torch.Tensor, nodes, classes, T: DeviceTables) -> torch.Tensor:
    dev = logits.device
    on_cpu = dev.type == "cpu"
    if on_cpu and T.all_ban:
        return _apply_bans_cpu(logits, _host(nodes), _host(classes), T)
    if on_cpu:
        rows, tok, d = T.host.range_triples(_host(nodes))
        rows, tok, d = torch.from_numpy(rows), torch.from_numpy(tok), torch.from_numpy(np.ascontiguousarray(d))
    else:
        rows, tok, d = T.dev.range_triples(torch.as_tensor(nodes, device=dev).long())
    V = logits.shape[1]
    keep = tok < V  # a tokenizer vocabulary may be wider than the logits, never the other way round
    if not bool(keep.all()):
        rows, tok, d = rows[keep], tok[keep], d[keep]
    if T.all_ban:
        _ban_rows(logits, torch.as_tensor(classes, device=dev).long(), T.alw_ban)
        if len(tok):
            logits.index_put_((rows.to(dev), tok.to(dev)), torch.tensor(NEG_INF, dtype=logits.dtype, device=dev))
        return logits
    classes_t = torch.as_tensor(classes, device=dev).long()
    rows, tok, d = rows.to(dev), tok.to(dev), d.to(dev)
    flat = rows * V + tok
    uniq, inv = torch.unique(flat, return_inverse=True)
    best = torch.full((len(uniq),), float("inf"), device=dev, dtype=torch.float32)
    best.scatter_reduce_(0, inv, d.float(), reduce="amin")
    urow, utok = uniq // V, uniq % V
    best = torch.minimum(best, T.alw_min[classes_t[urow], utok])
    orig = logits[urow, utok].float()  # 2-D indexing: any strides (vLLM hands over padded-vocab slices)
    # always-lists densely, then the range positions are rewritten from their original values
    W = min(V, T.alw_min.shape[1])
    part = logits[:, :W]
    alw = T.alw_min[classes_t, :W]
    hit = alw != float("inf")
    part.copy_(torch.where(hit, torch.where(alw == NEG_INF, NEG_INF, part.float() + alw), part.float())
               .to(logits.dtype))
    logits[urow, utok] = torch.where(best == NEG_INF, NEG_INF, orig + best).to(logits.dtype)
    return logits
