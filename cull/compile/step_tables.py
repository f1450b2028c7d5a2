"""The tables that advance a row's state on the device (kernels/triton_step.py), built on the host.

Each (class, token) pair's symbol string comes from the transducer once, here, so the kernel steps
symbols only; the automaton's goto edges become an open-addressing hash (HASH_MUL, linear probing)
that the kernel probes with the same multiplier.
"""
from __future__ import annotations

import numpy as np

from cull.compile.tables import HASH_MUL, StepTables
from cull.text.normalize import BOUNDARY, transduce


def build_step_tables(matcher) -> StepTables:
    """A matcher's step tables as numpy arrays (`StepTables.to(device)` moves them)."""
    T = matcher.tables
    n_tok = matcher.n_tokens
    token_mode = matcher.mode == "tokens"
    offs = np.zeros((3, n_tok + 1), np.int64)
    cls_after = np.zeros((3, n_tok), np.int8)
    if token_mode:  # the kernel steps the token id itself
        sym = np.zeros(1, np.uint8)
    else:
        parts = []
        total = 0
        for c in range(3):
            for t, raw in enumerate(matcher.token_bytes):
                s, after = transduce(raw, c, matcher.fold) if raw else (b"", c)
                parts.append(s)
                total += len(s)
                offs[c, t + 1] = total
                cls_after[c, t] = after
        sym = np.frombuffer(b"".join(parts) or bytes([BOUNDARY]), dtype=np.uint8).copy()
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
    return StepTables(sym=sym, sym_off=offs, cls_after=cls_after, hkeys=hkeys, hvals=hvals,
                      fail=T["fail"].astype(np.int32), hmask=mask, radix=matcher.radix, n_tok=n_tok,
                      token_mode=token_mode)
