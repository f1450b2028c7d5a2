"""Triton device functions that find a row's automaton state on the GPU, inlined into the fused step
kernel (`triton_backend.py`).

A row is recognised across steps by a 64-bit polynomial hash of its tokens, compared with the hashes
of the previous step's rows: beam search may reorder and duplicate rows, and this needs no
bookkeeping and no host sync. A row that extends a previous row advances that row's state by its
new token; any other row is recomputed from the start of its scope. Each token's symbols (per class
state, leading boundary included) step through an open-addressing hash of the goto edges with
failure links.
"""
from __future__ import annotations

from cull.compile.tables import HASH_MUL  # the host builds the goto hash with the same multiplier

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

if AVAILABLE:
    _HASH_MUL = tl.constexpr(HASH_MUL)  # jitted code may only read constexpr globals

    @triton.jit
    def goto_symbol(node, sym, hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix):
        """The automaton's transition: follow failure links until `sym` has an edge (or the root)."""
        searching = node >= 0  # a tensor flag, so the loop-carried types stay fixed when compiled
        while searching:
            key = node * radix + sym
            h = (key * _HASH_MUL) & hmask
            kk = tl.load(hkeys_ptr + h)
            while (kk != key) & (kk != -1):
                h = (h + 1) & hmask
                kk = tl.load(hkeys_ptr + h)
            found = kk == key
            at_root = node == 0
            child = tl.load(hvals_ptr + h).to(tl.int64)
            up = tl.load(fail_ptr + node).to(tl.int64)
            node = tl.where(found, child, tl.where(at_root, node, up))
            searching = (found == 0) & (at_root == 0)
        return node

    @triton.jit
    def advance_tokens(tok_row, k0, k1, node, c, sym_ptr, sym_off_ptr, cls_after_ptr, n_tok,
                       hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix, TOKEN_MODE: tl.constexpr):
        """(node, class) after tokens tok_row[k0:k1]; ids outside the vocabulary add nothing."""
        for k in range(k0, k1):
            t = tl.load(tok_row + k).to(tl.int64)
            if (t >= 0) & (t < n_tok):
                if TOKEN_MODE:
                    node = goto_symbol(node, t, hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix)
                else:
                    s0 = tl.load(sym_off_ptr + c * (n_tok + 1) + t)
                    s1 = tl.load(sym_off_ptr + c * (n_tok + 1) + t + 1)
                    for i in range(s0, s1):
                        sym = tl.load(sym_ptr + i).to(tl.int64)
                        node = goto_symbol(node, sym, hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix)
                    c = tl.load(cls_after_ptr + c * n_tok + t).to(tl.int64)
        return node, c

    @triton.jit
    def row_state(tok_row, L, pow_ptr, prev_hash_ptr, prev_nodes_ptr, prev_cls_ptr, n_prev, scope,
                  sym_ptr, sym_off_ptr, cls_after_ptr, n_tok, hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix,
                  FRESH: tl.constexpr, TOKEN_MODE: tl.constexpr, HB: tl.constexpr, PB: tl.constexpr):
        """(node, class, hash) of a row of L tokens. The hash covers all L tokens (the next step
        matches against it); the row's state comes from the previous row whose hash equals that of
        its first L-1 tokens, else from tokens[scope:]."""
        acc = tl.zeros([HB], dtype=tl.int64)
        for j0 in range(0, L - 1, HB):
            j = j0 + tl.arange(0, HB)
            m = j < L - 1
            t = tl.load(tok_row + j, mask=m, other=0).to(tl.int64)
            p = tl.load(pow_ptr + j, mask=m, other=0)
            acc += t * p
        prefix = tl.sum(acc, axis=0)
        last = tl.load(tok_row + L - 1).to(tl.int64)
        full = prefix + last * tl.load(pow_ptr + L - 1)
        node = prefix * 0
        c = prefix * 0
        start = prefix * 0 + scope
        if not FRESH:
            best = prefix * 0 + n_prev
            for j0 in range(0, n_prev, PB):
                j = j0 + tl.arange(0, PB)
                m = j < n_prev
                hp = tl.load(prev_hash_ptr + j, mask=m, other=0)
                cand = tl.where(m & (hp == prefix), j.to(tl.int64), n_prev)
                best = tl.minimum(best, tl.min(cand, axis=0))
            if best < n_prev:
                node = tl.load(prev_nodes_ptr + best).to(tl.int64)
                c = tl.load(prev_cls_ptr + best).to(tl.int64)
                start = prefix * 0 + (L - 1)
        node, c = advance_tokens(tok_row, start, L, node, c, sym_ptr, sym_off_ptr, cls_after_ptr, n_tok,
                                 hkeys_ptr, hvals_ptr, hmask, fail_ptr, radix, TOKEN_MODE)
        return node, c, full
