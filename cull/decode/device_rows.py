"""Device-side row states for the HF processor on a GPU: no host sync in an ordinary decode step.

In an ordinary step the processor finds, for every row, the row of the previous step it extends (by
a 64-bit polynomial hash of the row's tokens, so beam reordering needs no bookkeeping), then a Triton
kernel advances the states through the new token. Other calls fall back to the host (see
`DeviceRowStates`), where states are found by content.

The device state is the class of the last character only: it cannot hold the bytes of a character
split across tokens (cull/compile/pending.py), so the processor uses it only for vocabularies where no token
ends inside a character (`CompiledMatcher.pending_possible` is False) and keeps real byte-level
vocabularies on the exact host path.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import torch

_P = 1_000_003


def row_hashes(ids: np.ndarray) -> np.ndarray:
    """The kernel's 64-bit polynomial hash of each row (sum of t_j * P**j, wrapping), on the host."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    L = ids.shape[1]
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.concatenate([[1], np.full(max(L - 1, 0), _P)]).astype(np.uint64), dtype=np.uint64)
        return (ids.astype(np.uint64) * powers[:L]).sum(axis=1, dtype=np.uint64).view(np.int64)


class DeviceRowStates:
    """Row states kept on the logits' device, advanced by one fused Triton launch per ordinary step.

    An ordinary step (the batch keeps its size and its length grew by one, as in a decode loop or
    beam search) never waits for the host: each row finds the previous step's row it extends by
    hash, and a row that extends none starts a new generation (all of its tokens are prompt). Any
    other call (a length that jumped or shrank as in assisted decoding, a batch that changed size)
    syncs once: the states of the last `HISTORY_CALLS` calls come to the host, and the rows are
    resolved there by the same policy as the host path (`cull.decode.row_states`), on these hashes.
    """

    HISTORY_CALLS = 256

    def __init__(self, matcher, device, include_prompt: bool):
        self.matcher = matcher
        self.device = torch.device(device)
        self.include_prompt = include_prompt
        self.step_tables = matcher.step_tables(self.device)  # built once per matcher and device
        self.powers = torch.ones(1, dtype=torch.int64, device=self.device)
        self.host_steps = 0  # calls resolved on the host (for tests and diagnostics)
        self.reset()

    def reset(self):
        self.last_len = None
        self.batch = None
        self.prev = None  # (hash, node, class) of each row of the last call
        self.history = deque(maxlen=self.HISTORY_CALLS)  # (L, hash, node, class) per call, on the device

    def powers_for(self, n: int) -> torch.Tensor:
        """P**k for k < n (at least), growing by doubling: the host knows every length, so no sync."""
        while len(self.powers) < n:
            p = self.powers
            self.powers = torch.cat([p, p * (p[-1] * _P)])
        return self.powers

    def scope(self, L: int) -> int:
        """Where a row of length L that extends no row of the last call starts: it is a new
        generation, all of its tokens prompt (or none, with include_prompt)."""
        return 0 if self.include_prompt else L

    def is_ordinary(self, input_ids: torch.Tensor) -> bool:
        """True when this call runs on the device alone (decided from shapes, without a sync)."""
        B, L = input_ids.shape
        return self.prev is None or (L == self.last_len + 1 and B == self.batch)

    def step(self, input_ids: torch.Tensor, scores: torch.Tensor | None, tables) -> tuple:
        """An ordinary step: find every row's state from its tokens; edit `scores` in the same launch
        unless it is None. Returns the (node, class) tensors."""
        from cull.kernels.triton_backend import step_triton

        ids = input_ids.to(self.device)
        if ids.stride(1) != 1:
            ids = ids.contiguous()
        B, L = ids.shape
        fresh = self.prev is None
        new = tuple(torch.empty(B, dtype=torch.int64, device=self.device) for _ in range(3))
        prev = new if fresh else self.prev
        step_triton(scores, ids, self.powers_for(L), prev, new, self.scope(L), fresh, self.step_tables, tables,
                    apply=scores is not None)
        self._remember(B, L, new)
        return new[1], new[2]

    def step_on_host(self, input_ids: torch.Tensor) -> tuple:
        """Any other call: resolve the rows on the host from the recent calls' states (one sync).
        Returns the (node, class) tensors."""
        from cull.decode.row_states import resolve_rows, state_from

        ids = input_ids.detach().to("cpu", torch.int64).numpy()
        B, L = ids.shape
        known, last_keys = self._known_states()
        full = row_hashes(ids)
        if L == 0:
            plan = [("new", None)] * B
        else:
            pre = [(L - 1, int(h)) for h in row_hashes(ids[:, :-1])]
            plan = resolve_rows(pre, [(L, int(h)) for h in full], last_keys, known.get, ordinary=False)
        states = [state_from(self.matcher, self.include_prompt, ids[r], plan[r]) for r in range(B)]
        nodes = torch.tensor([s[0] for s in states], dtype=torch.int64).to(self.device)
        classes = torch.tensor([s[1] for s in states], dtype=torch.int64).to(self.device)
        self.host_steps += 1
        self._remember(B, L, (torch.from_numpy(full).to(self.device), nodes, classes))
        return nodes, classes

    def _remember(self, B, L, new) -> None:
        self.prev = new
        self.history.append((L, *new))
        self.batch, self.last_len = B, L

    def _known_states(self) -> tuple[dict, set]:
        """{(length, hash): (node, class)} of the recent calls, and the keys of the last call."""
        if not self.history:
            return {}, set()
        lens = [h[0] for h in self.history]
        sizes = [len(h[1]) for h in self.history]
        stacked = torch.stack([torch.cat([h[k] for h in self.history]) for k in (1, 2, 3)]).cpu().numpy()
        known = {}
        at = 0
        for n, size in zip(lens, sizes):
            for j in range(at, at + size):
                known[(n, int(stacked[0, j]))] = (int(stacked[1, j]), int(stacked[2, j]))
            at += size
        last = {(lens[-1], int(h)) for h in stacked[0, at - sizes[-1]:at]}
        return known, last
