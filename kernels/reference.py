"""The plain, slow reference: a Python loop over rows, then over each row's ban set as the plain loop
of `TableArrays.banned` finds it (always-list, chain nodes, ranges, tokens)."""
from __future__ import annotations

import math

import torch

from cull.compile.tables import DeviceTables


def apply_rules_reference(logits: torch.Tensor, nodes, classes, tables: DeviceTables) -> torch.Tensor:
    V = logits.shape[1]
    for row, (node, cls) in enumerate(zip(torch.as_tensor(nodes).tolist(), torch.as_tensor(classes).tolist())):
        for t, d in tables.host.banned(node, cls).items():
            if t >= V:
                continue
            if d == -math.inf:
                logits[row, t] = -math.inf
            else:  # add in fp32, round once to the logits' dtype
                logits[row, t] = (logits[row, t].float() + torch.tensor(d, dtype=torch.float32)).to(logits.dtype)
    return logits
