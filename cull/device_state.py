"""Device-side row states for the HF processor on a GPU: no host sync in the decode loop.

Each step the processor finds, for every row, the row of the previous step it extends (by a 64-bit
polynomial hash of the row's tokens, so beam reordering needs no bookkeeping), then a Triton kernel
advances the states through the new token. Rows that extend none (a new generation) are
recomputed from the start of their scope by the same kernel.

The device state is the class of the last character only: it cannot hold the bytes of a character
split across tokens (cull/pending.py), so the processor uses it only for vocabularies where no token
ends inside a character (`CompiledMatcher.pending_possible` is False) and keeps real byte-level
vocabularies on the exact host path.
"""
from __future__ import annotations

import numpy as np
import torch

from .normalize import BOUNDARY, transduce

_P = 1_000_003


def step_tables(matcher) -> dict:
    """Symbol strings per (class, token), the hashed goto table and failure links, as numpy arrays."""
    from cull.kernels.triton_step import HASH_MUL

    T = matcher.tables
    n_tok = matcher.n_tokens
    token_mode = matcher.mode == "tokens"
    if token_mode:
        sym = np.zeros(1, np.uint8)
        sym_off = np.zeros((3, n_tok + 1), np.int64)
        cls_after = np.zeros((3, n_tok), np.int8)
    else:
        parts, offs = [], np.zeros((3, n_tok + 1), np.int64)
        cls_after = np.zeros((3, n_tok), np.int8)
        total = 0
        for c in range(3):
            for t, raw in enumerate(matcher.token_bytes):
                s, after = transduce(raw, c, matcher.fold) if raw else (b"", c)
                parts.append(s)
                total += len(s)
                offs[c, t + 1] = total
                cls_after[c, t] = after
        sym = np.frombuffer(b"".join(parts) or bytes([BOUNDARY]), dtype=np.uint8).copy()
        sym_off = offs
    keys = T["goto_key"].astype(np.int64)
    size = 1 << max(4, int(2 * max(len(keys), 1) - 1).bit_length())
    mask = size - 1
    hkeys = np.full(size, -1, np.int64)
    hvals = np.zeros(size, np.int32)
    h0 = ((keys.astype(np.uint64) * np.uint64(HASH_MUL)) & np.uint64(mask)).astype(np.int64)
    for key, val, h in zip(keys.tolist(), T["goto_val"].tolist(), h0.tolist()):
        while hkeys[h] != -1:
            h = (h + 1) & mask
        hkeys[h] = key
        hvals[h] = val
    return {"sym": sym, "sym_off": sym_off, "cls_after": cls_after, "n_tok": n_tok, "hkeys": hkeys,
            "hvals": hvals, "hmask": mask, "fail": T["fail"].astype(np.int32), "radix": matcher.radix,
            "token_mode": token_mode}


class DeviceRowStates:
    """Per-generation row states kept on the logits' device, found by one fused Triton launch per step."""

    def __init__(self, matcher, device, include_prompt: bool):
        self.matcher = matcher
        self.device = torch.device(device)
        self.include_prompt = include_prompt
        cache = matcher.__dict__.setdefault("_step_tables", {})
        if str(self.device) not in cache:
            S = step_tables(matcher)
            cache[str(self.device)] = {k: (torch.from_numpy(v).to(self.device) if isinstance(v, np.ndarray) else v)
                                       for k, v in S.items()}
        self.S = cache[str(self.device)]
        self.powers = torch.ones(1, dtype=torch.int64, device=self.device)
        self.reset()

    def reset(self):
        self.last_len = None
        self.batch = None
        self.prev = None  # (hash, node, class) of each row of the last step

    def powers_for(self, n: int) -> torch.Tensor:
        """P**k for k < n (at least), growing by doubling: the host knows every length, so no sync."""
        while len(self.powers) < n:
            p = self.powers
            self.powers = torch.cat([p, p * (p[-1] * _P)])
        return self.powers

    def step(self, input_ids: torch.Tensor, scores: torch.Tensor | None, tables) -> tuple:
        """Find every row's state from its tokens; edit `scores` in the same launch unless it is None.
        Returns the (node, class) tensors."""
        from cull.kernels.triton_backend import step_triton

        ids = input_ids.to(self.device)
        if ids.stride(1) != 1:
            ids = ids.contiguous()
        B, L = ids.shape
        fresh = self.last_len is None or L != self.last_len + 1 or B > self.batch * 64
        if fresh:
            self.prompt_len = L
        scope = 0 if self.include_prompt else self.prompt_len
        new = tuple(torch.empty(B, dtype=torch.int64, device=self.device) for _ in range(3))
        prev = new if fresh else self.prev
        step_triton(scores, ids, self.powers_for(L), prev, new, scope, fresh, self.S, tables,
                    apply=scores is not None)
        self.prev = new
        self.last_len, self.batch = L, B
        return new[1], new[2]
