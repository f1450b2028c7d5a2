"""The plain, slow reference: a Python loop over rows, chain nodes, ranges and tokens."""
from __future__ import annotations

import math

import torch


def banned_deltas(node: int, cls: int, T) -> dict[int, float]:
    """{token: strongest delta} for one row; T holds the tables as CPU tensors or arrays."""
    out: dict[int, float] = {}
    a, b = int(T["alw_ptr"][cls]), int(T["alw_ptr"][cls + 1])
    for k in range(a, b):
        t, d = int(T["alw_tok"][k]), float(T["alw_delta"][k])
        out[t] = min(out.get(t, math.inf), d)
    m = node if bool(T["has_rng"][node]) else int(T["out_next"][node])
    while m >= 0:
        for r in range(int(T["rng_ptr"][m]), int(T["rng_ptr"][m + 1])):
            d = float(T["rng_delta"][r])
            for p in range(int(T["rng_lo"][r]), int(T["rng_hi"][r])):
                t = int(T["perm"][p])
                out[t] = min(out.get(t, math.inf), d)
        m = int(T["out_next"][m])
    return out


def apply_rules_reference(logits: torch.Tensor, nodes, classes, tables) -> torch.Tensor:
    T = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in tables.items()}
    V = logits.shape[1]
    for row, (node, cls) in enumerate(zip(torch.as_tensor(nodes).tolist(), torch.as_tensor(classes).tolist())):
        for t, d in banned_deltas(node, cls, T).items():
            if t >= V:
                continue
            if d == -math.inf:
                logits[row, t] = -math.inf
            else:  # add in fp32, round once to the logits' dtype
                logits[row, t] = (logits[row, t].float() + torch.tensor(d, dtype=torch.float32)).to(logits.dtype)
    return logits
