"""The compiled tables as the kernels read them: frozen, typed, one `DeviceTables` per matcher and device.

`CompiledMatcher.device_tables(device)` builds a `DeviceTables`; the kernels (cull/kernels) only read
it. Parts that only some paths need are built on first use and kept: the Triton kernel's flat token
lists, the CPU path's sorted always-lists and its per-node ban lists. Nothing here refers back to
the matcher: servers that freeze the garbage collector (vLLM does) free an evicted matcher by
reference counting alone, so no lazily built part may close over it.

`TableArrays` holds the arrays (numpy on the host, or tensors on one device; layout in
docs/automaton.md §6) and reads them two ways: `banned`, the plain loop that every fast path is
tested against, and `range_triples`, the vectorised expansion the torch backend runs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from cull.compile.kernel_lists import expand_segments, flat_lists, search_steps

HASH_MUL = 2654435761  # Knuth's multiplicative hash of the goto edges: the host builds, the kernel probes
CHAIN_CACHE_ELEMS = 1 << 19  # token ids the CPU path keeps per matcher and device (4 MiB)


@dataclass(frozen=True, eq=False)
class TableArrays:
    """The arrays the kernels read: all numpy (host) or all tensors on one device."""

    perm: Any       # token ids in the three class orders; a range is perm[lo:hi]
    rng_ptr: Any    # [N+1] node m's own ranges are rng_ptr[m]:rng_ptr[m+1]
    rng_lo: Any
    rng_hi: Any
    rng_delta: Any  # -inf: a ban, else the logit delta
    has_rng: Any    # [N] whether a node has ranges of its own
    out_next: Any   # [N] the next ranged node down the failure chain (-1: none)
    alw_ptr: Any    # [4] class c's always-list is alw_ptr[c]:alw_ptr[c+1]
    alw_tok: Any
    alw_delta: Any
    max_chain: int  # the longest chain of ranged nodes a state reads (the kernels unroll to it)

    @classmethod
    def from_host(cls, arrays, max_chain: int) -> "TableArrays":
        """Views of a compiled matcher's numpy arrays (a mapping with at least these names)."""
        return cls(**{f: arrays[f] for f in ARRAY_FIELDS}, max_chain=int(max_chain))

    def to(self, device) -> "TableArrays":
        import torch

        return dataclasses.replace(self, **{f: torch.from_numpy(np.ascontiguousarray(getattr(self, f))).to(device)
                                            for f in ARRAY_FIELDS})

    def nbytes(self) -> int:
        return sum(_nbytes(getattr(self, f)) for f in ARRAY_FIELDS)

    def chain(self, node: int) -> list[int]:
        """The ranged nodes a row at `node` reads: itself if it has ranges, then down `out_next`."""
        m = node if self.has_rng[node] else int(self.out_next[node])
        out = []
        while m >= 0:
            out.append(m)
            m = int(self.out_next[m])
        return out

    def banned(self, node: int, cls: int) -> dict[int, float]:
        """{token: strongest delta} of a row at (node, class < 3): the plain reference, a loop over
        the class's always-list and the chain's ranges and tokens."""
        out: dict[int, float] = {}
        a, b = int(self.alw_ptr[cls]), int(self.alw_ptr[cls + 1])
        for t, d in zip(self.alw_tok[a:b].tolist(), self.alw_delta[a:b].tolist()):
            out[t] = min(out.get(t, math.inf), d)
        for m in self.chain(node):
            for r in range(int(self.rng_ptr[m]), int(self.rng_ptr[m + 1])):
                d = float(self.rng_delta[r])
                for t in self.perm[int(self.rng_lo[r]):int(self.rng_hi[r])].tolist():
                    out[t] = min(out.get(t, math.inf), d)
        return out

    def range_triples(self, nodes):
        """(rows, tokens, deltas) of the ranges on each row's chain, duplicates possible: vectorised,
        the chain unrolled to `max_chain`. `nodes` is int64, numpy (host tables) or a tensor."""
        if isinstance(nodes, np.ndarray):
            xp, cat, rows = np, np.concatenate, np.arange(len(nodes))
        else:
            import torch

            xp, cat, rows = torch, torch.cat, torch.arange(len(nodes), device=nodes.device)
        m = xp.where(self.has_rng[nodes], nodes, _long(self.out_next[nodes]))
        chain_rows, chain_nodes = [], []
        for _ in range(self.max_chain):
            live = m >= 0
            chain_rows.append(rows[live])
            chain_nodes.append(m[live])
            m = xp.where(live, _long(self.out_next[m.clip(0) if xp is np else m.clamp(min=0)]), m)
        if not chain_nodes:
            return rows[:0], rows[:0], self.rng_delta[:0]
        cn, cr = cat(chain_nodes), cat(chain_rows)
        r0 = self.rng_ptr[cn]
        seg, r = expand_segments(r0, self.rng_ptr[cn + 1] - r0)
        lo, hi = _long(self.rng_lo[r]), _long(self.rng_hi[r])
        seg2, p = expand_segments(lo, hi - lo)
        return cr[seg][seg2], _long(self.perm[p]), self.rng_delta[r][seg2]


ARRAY_FIELDS = tuple(f.name for f in dataclasses.fields(TableArrays) if f.name != "max_chain")


@dataclass(frozen=True, eq=False)
class KernelLists:
    """The Triton kernel's flat token lists (cull/compile/kernel_lists.py), on the tables' device."""

    lst_ptr: Any        # [N+1] node m's list is lst_ptr[m]:lst_ptr[m+1]
    lst_tok: Any        # bans: each node's own tokens; biases: its chain's, merged, sorted by id
    lst_delta: Any
    alw_bits: Any       # [3, alw_words] int32 always-list bitmask (dense_always), else a placeholder
    dense_always: bool
    search_steps: int   # binary-search steps that cover the longest list

    @property
    def alw_words(self) -> int:
        return int(self.alw_bits.shape[1])

    def nbytes(self) -> int:
        return sum(_nbytes(x) for x in (self.lst_ptr, self.lst_tok, self.lst_delta, self.alw_bits))


@dataclass(frozen=True, eq=False)
class StepTables:
    """What the Triton step kernel reads to advance a row's state on the device (kernels/triton_step.py)."""

    sym: Any         # uint8 symbol strings of every (class, token), concatenated
    sym_off: Any     # [3, n_tok+1] int64: the symbols of token t after class c are sym[sym_off[c, t]:sym_off[c, t+1]]
    cls_after: Any   # [3, n_tok] int8: the class after the token
    hkeys: Any       # open-addressing hash (HASH_MUL, linear probing) of the goto edges, key node*radix+symbol; -1 empty
    hvals: Any
    fail: Any        # [N] failure links
    hmask: int
    radix: int
    n_tok: int
    token_mode: bool

    def to(self, device) -> "StepTables":
        import torch

        return dataclasses.replace(self, **{f: torch.from_numpy(getattr(self, f)).to(device)
                                            for f in ("sym", "sym_off", "cls_after", "hkeys", "hvals", "fail")})

    def nbytes(self) -> int:
        return sum(_nbytes(x) for x in (self.sym, self.sym_off, self.cls_after, self.hkeys, self.hvals, self.fail))


@dataclass(frozen=True, eq=False)
class DeviceTables:
    """A matcher's tables on one device. Kernels read it and never write to it."""

    device: Any        # torch.device
    n_tok: int         # tokens the tables cover (the tokenizer's vocabulary)
    all_ban: bool      # no rule biases: the kernels only write -inf
    host: TableArrays  # numpy: the CPU paths and the reference read these
    dev: TableArrays   # the same arrays on `device`
    alw_min: Any       # [3, n_tok] float32: each class's always-list delta per token (inf: none)
    alw_ban: Any       # [3, n_tok] bool: alw_min == -inf
    pending: Any = None  # text mode: rows stopped inside a character (cull.compile.pending.PendingRows)

    @classmethod
    def build(cls, host: TableArrays, device, *, n_tok: int, all_ban: bool, pending=None) -> "DeviceTables":
        import torch

        alw_min = torch.full((3, n_tok), math.inf)
        for c in range(3):
            a, b = int(host.alw_ptr[c]), int(host.alw_ptr[c + 1])
            alw_min[c, torch.from_numpy(host.alw_tok[a:b].astype(np.int64))] = torch.from_numpy(host.alw_delta[a:b])
        return cls(device=torch.device(device), n_tok=n_tok, all_ban=all_ban, host=host, dev=host.to(device),
                   alw_min=alw_min.to(device), alw_ban=(alw_min == -math.inf).to(device), pending=pending)

    @property
    def max_chain(self) -> int:
        return self.host.max_chain

    @cached_property
    def max_always(self) -> int:
        """Length of the longest per-class always-list."""
        return int(np.diff(self.host.alw_ptr).max(initial=0))

    @cached_property
    def kernel_lists(self) -> KernelLists:
        """Built on first use: seconds for a large bias list, and only the Triton kernel reads them."""
        import torch

        ptr, tok, dl, bits, dense = flat_lists(self.host, self.all_ban, self.n_tok)
        put = [torch.from_numpy(np.ascontiguousarray(x)).to(self.device) for x in (ptr, tok, dl, bits)]
        return KernelLists(*put, dense_always=bool(dense), search_steps=search_steps(ptr))

    @cached_property
    def always_sorted(self) -> tuple:
        """Each class's always-list as sorted int64 token ids on the CPU (the CPU path's scattered writes)."""
        import torch

        h = self.host
        return tuple(torch.from_numpy(np.sort(h.alw_tok[h.alw_ptr[c]:h.alw_ptr[c + 1]]).astype(np.int64))
                     for c in range(3))

    @cached_property
    def _chain_memo(self) -> "TokenMemo":
        return TokenMemo(CHAIN_CACHE_ELEMS)

    def chain_tokens(self, node: int):
        """The sorted token ids that the chain of `node` holds (a CPU tensor; for bans, where the
        delta is always -inf). Kept per node: on a CPU every op costs microseconds, so a visited
        state's list is computed once."""
        hit = self._chain_memo.get(node)
        if hit is None:
            import torch

            _, tok, _ = self.host.range_triples(np.asarray([node], dtype=np.int64))
            hit = self._chain_memo.put(node, torch.from_numpy(np.unique(tok)))
        return hit

    def nbytes(self) -> int:
        """Bytes of the tensors built so far (device copies and lazily built parts; the host arrays
        are the matcher's own)."""
        total = self.dev.nbytes() + _nbytes(self.alw_min) + _nbytes(self.alw_ban)
        if "kernel_lists" in self.__dict__:
            total += self.kernel_lists.nbytes()
        if "always_sorted" in self.__dict__:
            total += sum(_nbytes(x) for x in self.always_sorted)
        return total


class TokenMemo:
    """A per-node memo of token lists, bounded in total token ids: a server keeps hundreds of
    matchers alive. Emptied whole when full (cheap, and a decode revisits few states)."""

    def __init__(self, max_elems: int):
        self.max_elems = max_elems
        self.lists: dict = {}
        self.elems = 0

    def get(self, key):
        return self.lists.get(key)

    def put(self, key, tokens):
        if self.elems + len(tokens) > self.max_elems:
            self.lists.clear()
            self.elems = 0
        self.lists[key] = tokens
        self.elems += len(tokens)
        return tokens


def _long(x):
    return x.astype(np.int64) if isinstance(x, np.ndarray) else x.long()


def _nbytes(x) -> int:
    if hasattr(x, "element_size"):
        return x.element_size() * x.numel()
    return int(getattr(x, "nbytes", 0))
