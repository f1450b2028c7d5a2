"""Triton kernel that advances each row's automaton state through its new tokens, on the device.

Row r steps through tokens[r, start[r]:K]: each token's symbols (per class state, with its leading
boundary), through a hashed goto table with failure links. The state never leaves the GPU.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

HASH_MUL = 2654435761  # Knuth's multiplicative hash; the host builds the table with the same one

if AVAILABLE:

    @triton.jit
    def _advance_kernel(tok_ptr, tok_stride, K, start_ptr, nodes_ptr, cls_ptr,
                        sym_ptr, sym_off_ptr, cls_after_ptr, n_tok,
                        hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix, TOKEN_MODE: tl.constexpr):
        row = tl.program_id(0)
        node = tl.load(nodes_ptr + row).to(tl.int64)
        c = tl.load(cls_ptr + row).to(tl.int64)
        k0 = tl.load(start_ptr + row)
        for k in range(k0, K):
            t = tl.load(tok_ptr + row.to(tl.int64) * tok_stride + k).to(tl.int64)
            if (t >= 0) & (t < n_tok):
                if TOKEN_MODE:
                    s0 = t * 0
                    s1 = s0 + 1
                else:
                    s0 = tl.load(sym_off_ptr + c * (n_tok + 1) + t)
                    s1 = tl.load(sym_off_ptr + c * (n_tok + 1) + t + 1)
                for i in range(s0, s1):
                    if TOKEN_MODE:
                        sym = t
                    else:
                        sym = tl.load(sym_ptr + i).to(tl.int64)
                    searching = True
                    while searching:
                        key = node * radix + sym
                        h = (key * HASH_MUL) & hmask
                        kk = tl.load(hkeys_ptr + h)
                        while (kk != key) & (kk != -1):
                            h = (h + 1) & hmask
                            kk = tl.load(hkeys_ptr + h)
                        if kk == key:
                            node = tl.load(hvals_ptr + h).to(tl.int64)
                            searching = False
                        elif node == 0:
                            searching = False
                        else:
                            node = tl.load(fail_ptr + node).to(tl.int64)
                if not TOKEN_MODE:
                    c = tl.load(cls_after_ptr + c * n_tok + t).to(tl.int64)
        tl.store(nodes_ptr + row, node)
        tl.store(cls_ptr + row, c)


def advance_triton(tokens: torch.Tensor, start: torch.Tensor, nodes: torch.Tensor, classes: torch.Tensor, S) -> None:
    """In place: nodes/classes [B] int64 advance through tokens[r, start[r]:]."""
    B, K = tokens.shape
    _advance_kernel[(B,)](
        tokens, tokens.stride(0), K, start, nodes, classes,
        S["sym"], S["sym_off"], S["cls_after"], S["n_tok"],
        S["hkeys"], S["hvals"], S["hmask"], S["fail"], S["radix"], TOKEN_MODE=S["token_mode"],
    )
