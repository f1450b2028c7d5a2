"""CompiledMatcher: the compiled tables, the per-row state machine, and the on-disk cache.

A row's state is (node, cls): its trie node and the transducer state (the class of its last
character, plus the bytes of a character split across tokens: cull/text/normalize.py packs both in one
int, and states >= 3 are handled by cull/compile/pending.py). Text-mode matchers step a token's bytes
through the transducer and the automaton; token-mode matchers (HF `bad_words_ids` style) step the
token id itself.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
from pathlib import Path

import numpy as np

from cull.errors import CullError
from cull.text.normalize import DEFAULT_FOLD, OTHER, transduce

FORMAT_VERSION = 3
ARRAYS = ("perm", "rng_ptr", "rng_lo", "rng_hi", "rng_delta", "has_rng", "out_next", "alw_ptr",
          "alw_tok", "alw_delta", "fail", "node_cls", "node_out", "goto_key", "goto_val")


class CompiledMatcher:
    """Tables for one (rules, vocabulary) pair. Build with `cull.compile_rules`.

    A state is (trie node, transducer state); `advance` feeds it a token, `banned` lists what it bans:

    >>> import cull
    >>> from cull.compile.vocab import vocab_from_token_bytes
    >>> vocab = vocab_from_token_bytes([b" delve", b" d", b"elve", b" the"])
    >>> m = cull.compile_rules(["delve"], vocab, cache=False)
    >>> state = m.advance_many(m.initial_state(), [3, 1])     # the text " the d"
    >>> m.banned(state)                                       # " delve" writes it whole, "elve" finishes it
    {0: -inf, 2: -inf}
    """

    def __init__(self, tables: dict, token_bytes, *, mode: str = "text", fold: int = DEFAULT_FOLD,
                 radix: int = 256, meta: dict | None = None):
        self.tables = {k: tables[k] for k in ARRAYS}
        self.token_bytes = token_bytes
        self.mode = mode
        self.fold = fold
        self.radix = radix
        self.meta = dict(meta or {})
        self.n_tokens = len(token_bytes) if token_bytes is not None else int(self.meta.get("n_tokens", 0))
        if "max_chain" in self.meta:  # stored in the cache, so a reload does no work
            self.max_chain, self.all_ban = int(self.meta["max_chain"]), bool(self.meta["all_ban"])
        else:
            self.max_chain = _max_chain(self.tables["has_rng"], self.tables["out_next"])
            self.all_ban = bool(np.all(self.tables["rng_delta"] == -np.inf)
                                and np.all(self.tables["alw_delta"] == -np.inf))
        self._goto = None
        self._sym_cache: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._device_tables = {}

    # ---- stepping (host side) ----
    def initial_state(self) -> tuple[int, int]:
        return (0, OTHER)

    @property
    def goto(self) -> dict:
        if self._goto is None:
            self._goto = dict(zip(self.tables["goto_key"].tolist(), self.tables["goto_val"].tolist()))
            self._fail = self.tables["fail"].tolist()
        return self._goto

    def _step(self, node: int, sym: int) -> int:
        goto, fail, radix = self.goto, self._fail, self.radix
        while True:
            child = goto.get(node * radix + sym)
            if child is not None:
                return child
            if node == 0:
                return 0
            node = fail[node]

    def advance(self, state: tuple[int, int], token: int) -> tuple[int, int]:
        node, cls = state
        if self.mode == "tokens":
            return (self._step(node, int(token)), cls)
        if token < 0 or token >= self.n_tokens:
            return state
        key = (int(token), cls)
        hit = self._sym_cache.get(key)
        if hit is None:
            raw = self.token_bytes[token]
            hit = transduce(raw, cls, self.fold) if raw else (b"", cls)
            if len(self._sym_cache) < 65_536:  # bounded: a server holds hundreds of matchers
                self._sym_cache[key] = hit
        for s in hit[0]:
            node = self._step(node, s)
        return (node, hit[1])

    def advance_many(self, state, tokens) -> tuple[int, int]:
        for t in tokens:
            state = self.advance(state, int(t))
        return state

    # ---- the ban set of a state (plain reference; kernels/ has the fast paths) ----
    def chain(self, node: int) -> list[int]:
        has, nxt = self.tables["has_rng"], self.tables["out_next"]
        m = node if has[node] else int(nxt[node])
        out = []
        while m >= 0:
            out.append(m)
            m = int(nxt[m])
        return out

    def banned(self, state) -> dict[int, float]:
        """{token: delta} for every token that would complete a match from `state`."""
        node, cls = state
        if cls >= 3:  # inside a character split across tokens
            from cull.compile.pending import banned_from_pending

            return banned_from_pending(self, state)
        T = self.tables
        out: dict[int, float] = {}
        a, b = int(T["alw_ptr"][cls]), int(T["alw_ptr"][cls + 1])
        for t, d in zip(T["alw_tok"][a:b].tolist(), T["alw_delta"][a:b].tolist()):
            out[t] = min(out.get(t, math.inf), d)
        for m in self.chain(node):
            for r in range(int(T["rng_ptr"][m]), int(T["rng_ptr"][m + 1])):
                d = float(T["rng_delta"][r])
                for t in T["perm"][T["rng_lo"][r]:T["rng_hi"][r]].tolist():
                    out[t] = min(out.get(t, math.inf), d)
        return out

    # ---- device copies for the kernels ----
    def device_tables(self, device):
        import torch

        key = str(device)
        if key not in self._device_tables:
            T = self.tables
            self._device_tables[key] = {
                k: torch.from_numpy(np.ascontiguousarray(T[k])).to(device)
                for k in ("perm", "rng_ptr", "rng_lo", "rng_hi", "rng_delta", "has_rng", "out_next",
                          "alw_ptr", "alw_tok", "alw_delta")
            }
            alw_min = torch.full((3, self.n_tokens), float("inf"))
            for c in range(3):
                a, b = int(T["alw_ptr"][c]), int(T["alw_ptr"][c + 1])
                alw_min[c, torch.from_numpy(T["alw_tok"][a:b].astype(np.int64))] = torch.from_numpy(T["alw_delta"][a:b])
            self._device_tables[key]["alw_min"] = alw_min.to(device)  # dense copies for the torch backend
            self._device_tables[key]["alw_ban"] = (alw_min == -float("inf")).to(device)
            self._device_tables[key]["n_tok"] = self.n_tokens
            self._device_tables[key]["max_alw"] = self._max_always()
            # the Triton kernel's flat lists, built on first use (seconds for a large bias list). A
            # partial over the tables, never a closure over self: a cycle would keep an evicted
            # matcher alive in servers that freeze the garbage collector (vLLM does)
            self._device_tables[key]["kernel_lists"] = functools.partial(
                _kernel_lists, T, self.all_ban, self.n_tokens, device)
            np_tables = {k: T[k] for k in ("perm", "rng_ptr", "rng_lo", "rng_hi", "rng_delta", "has_rng", "out_next")}
            np_tables["max_chain"] = self.max_chain
            self._device_tables[key]["alw_t"] = [  # sorted always-lists per class, for the CPU path
                torch.from_numpy(np.sort(T["alw_tok"][T["alw_ptr"][c]:T["alw_ptr"][c + 1]]).astype(np.int64))
                for c in range(3)]
            self._device_tables[key]["np"] = np_tables
            self._device_tables[key]["max_chain"] = self.max_chain
            self._device_tables[key]["all_ban"] = self.all_ban
            if self.mode == "text":
                from cull.compile.pending import PendingRows

                self._device_tables[key]["pending"] = PendingRows(self, device)
        return self._device_tables[key]

    @property
    def pending_possible(self) -> bool:
        """Whether a row can stop inside a character (some token ends with an unfinished one)."""
        if "_pending_possible" not in self.__dict__:
            from cull.compile.pending import vocab_can_split_chars

            self._pending_possible = self.mode == "text" and vocab_can_split_chars(self.token_bytes)
        return self._pending_possible

    def _max_always(self) -> int:
        """Length of the longest per-class always-list."""
        return int(np.diff(self.tables["alw_ptr"]).max(initial=0))

    def _class_offsets(self) -> np.ndarray:
        """Start of each class order inside `perm` (text mode: three orders; token mode: one)."""
        T = self.tables
        if self.mode == "tokens":
            return np.array([0, len(T["perm"]), len(T["perm"]), len(T["perm"])])
        return np.asarray(self.meta["perm_off"])

    def merged_ranges(self):
        """Per ranged node: its ranges and those of its whole chain, disjoint, strongest delta kept."""
        return merged_ranges(self.tables)

    # ---- statistics and persistence ----
    def stats(self) -> dict:
        T = self.tables
        return {
            "mode": self.mode,
            "patterns": int(self.meta.get("n_patterns", 0)),
            "states": int(len(T["fail"])),
            "ranges": int(len(T["rng_lo"])),
            "always_tokens": [int(T["alw_ptr"][c + 1] - T["alw_ptr"][c]) for c in range(len(T["alw_ptr"]) - 1)],
            "max_chain": self.max_chain,
            "table_mib": sum(v.nbytes for v in T.values()) / 2**20,
            "device_mib": sum(T[k].nbytes for k in ("perm", "rng_ptr", "rng_lo", "rng_hi", "rng_delta",
                                                     "has_rng", "out_next", "alw_ptr", "alw_tok", "alw_delta")) / 2**20,
        }

    def save(self, path) -> None:
        meta = json.dumps({**self.meta, "mode": self.mode, "fold": self.fold, "radix": self.radix,
                           "format": FORMAT_VERSION, "max_chain": self.max_chain, "all_ban": self.all_ban})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}-{threading.get_ident()}.tmp.npz")
        np.savez(tmp, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **self.tables)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path, token_bytes) -> "CompiledMatcher":
        try:
            with np.load(path, allow_pickle=False) as z:  # never pickle
                meta = json.loads(bytes(z["meta"]).decode())
                if meta.get("format") != FORMAT_VERSION:
                    raise CullError(f"{path}: compiled with format {meta.get('format')}, expected {FORMAT_VERSION}")
                missing = {"mode", "fold", "radix", "max_chain", "all_ban"} - set(meta)
                if meta.get("mode") == "text":
                    missing |= {"perm_off"} - set(meta)
                if missing:
                    raise CullError(f"{path}: the cached tables lack {sorted(missing)}")
                tables = {k: z[k] for k in ARRAYS}
        except CullError:
            raise
        except Exception as exc:  # BadZipFile, EOFError, zlib errors...: whatever a damaged file raises
            raise CullError(f"cannot read compiled tables {str(path)!r}: {exc}. Delete the file to recompile") from None
        return cls(tables, token_bytes, mode=meta["mode"], fold=meta["fold"], radix=meta["radix"],
                   meta=meta)


def merged_ranges(T):
    """Per ranged node: its ranges and those of its whole chain, disjoint, strongest delta kept."""
    from cull.compile.build import merge_sorted_ranges

    n = len(T["has_rng"])
    ptr, lo, hi, dl = T["rng_ptr"], T["rng_lo"], T["rng_hi"], T["rng_delta"]
    merged: dict[int, list] = {}
    out_ptr = np.zeros(n + 1, np.int64)
    out_lo, out_hi, out_d = [], [], []
    for m in range(n):
        if T["has_rng"][m]:
            own = list(zip(lo[ptr[m]:ptr[m + 1]].tolist(), hi[ptr[m]:ptr[m + 1]].tolist(),
                           dl[ptr[m]:ptr[m + 1]].tolist()))
            nxt = int(T["out_next"][m])
            items = own + (merged[nxt] if nxt >= 0 else [])
            items.sort()
            pieces = merge_sorted_ranges([a for a, _, _ in items], [b for _, b, _ in items], [d for _, _, d in items])
            merged[m] = pieces
            out_lo.extend(a for a, _, _ in pieces)
            out_hi.extend(b for _, b, _ in pieces)
            out_d.extend(d for _, _, d in pieces)
        out_ptr[m + 1] = len(out_lo)
    return (out_ptr, np.asarray(out_lo, np.int64), np.asarray(out_hi, np.int64),
            np.asarray(out_d, np.float32))


def _kernel_lists(T, all_ban: bool, n_tokens: int, device) -> dict:
    """Flat token lists for the Triton kernel (see cull/compile/kernel_lists.py): each node's own tokens
    (bans) or its chain's merged tokens sorted by id (biases), and dense always-bitmasks."""
    import torch

    from cull.compile.kernel_lists import DENSE_ALWAYS_MIN, always_bits, node_token_lists, search_steps

    if all_ban:
        ptr, tok, dl = node_token_lists(T["rng_ptr"], T["rng_lo"], T["rng_hi"], T["rng_delta"], T["perm"], False)
    else:
        mp, ml, mh, md = merged_ranges(T)
        ptr, tok, dl = node_token_lists(mp, ml, mh, md, T["perm"], True)
    dense = all_ban and int(np.diff(T["alw_ptr"]).max(initial=0)) >= DENSE_ALWAYS_MIN
    bits = always_bits(T["alw_ptr"], T["alw_tok"], n_tokens) if dense else np.zeros((3, 1), np.int32)
    out = {"lst_ptr": ptr, "lst_tok": tok, "lst_delta": dl, "alw_bits": bits}
    out = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in out.items()}
    out.update(dense_always=dense, alw_words=int(bits.shape[1]), search_steps=search_steps(ptr))
    return out


def _max_chain(has, nxt) -> int:
    """Longest chain of ranged nodes any state walks (the kernels unroll to this)."""
    n = len(has)
    nxt_l = nxt.tolist()
    has_l = has.tolist()
    best = 0
    chain_len = np.zeros(n, dtype=np.int32)  # ranged nodes on the chain strictly after i's own
    for i in range(1, n):
        j = nxt_l[i]
        chain_len[i] = 0 if j < 0 else 1 + chain_len[j]
        best = max(best, chain_len[i] + (1 if has_l[i] else 0))
    return int(best)


def cache_key(*parts: str) -> str:
    return hashlib.sha256(("\0".join(parts) + f"\0v{FORMAT_VERSION}").encode()).hexdigest()[:32]
