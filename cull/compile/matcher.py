"""CompiledMatcher: the compiled tables, the per-row state machine, and the on-disk cache.

A row's state is (node, cls): its trie node and the transducer state (the class of its last
character, plus the bytes of a character split across tokens: cull/text/normalize.py packs both in one
int, and states >= 3 are handled by cull/compile/pending.py). Text-mode matchers step a token's bytes
through the transducer and the automaton; token-mode matchers (HF `bad_words_ids` style) step the
token id itself. The kernels read the tables through `device_tables` (cull/compile/tables.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import cached_property
from pathlib import Path

import numpy as np

from cull.compile.tables import DeviceTables, StepTables, TableArrays
from cull.errors import CullError
from cull.text.normalize import DEFAULT_FOLD, OTHER, transduce

FORMAT_VERSION = 4  # 4: no node_cls array
ARRAYS = ("perm", "rng_ptr", "rng_lo", "rng_hi", "rng_delta", "has_rng", "out_next", "alw_ptr",
          "alw_tok", "alw_delta", "fail", "node_out", "goto_key", "goto_val")


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
        self.arrays = TableArrays.from_host(self.tables, self.max_chain)  # views: what the kernels read
        self._goto = None
        self._sym_cache: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._device_tables: dict[str, DeviceTables] = {}
        self._step_tables: dict[str, StepTables] = {}

    # ---- stepping (host side) ----
    def initial_state(self) -> tuple[int, int]:
        return (0, OTHER)

    @property
    def goto(self) -> dict:
        if self._goto is None:
            self._goto = dict(zip(self.tables["goto_key"].tolist(), self.tables["goto_val"].tolist()))
            self._fail = self.tables["fail"].tolist()
        return self._goto

    def step_symbol(self, node: int, sym: int) -> int:
        """The automaton's transition: follow failure links until `sym` has an edge (or the root)."""
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
            return (self.step_symbol(node, int(token)), cls)
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
            node = self.step_symbol(node, s)
        return (node, hit[1])

    def advance_many(self, state, tokens) -> tuple[int, int]:
        for t in tokens:
            state = self.advance(state, int(t))
        return state

    # ---- the ban set of a state (plain reference; kernels/ has the fast paths) ----
    def chain(self, node: int) -> list[int]:
        return self.arrays.chain(node)

    def banned(self, state) -> dict[int, float]:
        """{token: delta} for every token that would complete a match from `state`."""
        node, cls = state
        if cls >= 3:  # inside a character split across tokens
            from cull.compile.pending import banned_from_pending

            return banned_from_pending(self, state)
        return self.arrays.banned(node, cls)

    # ---- what the kernels and the device path read ----
    def device_tables(self, device) -> DeviceTables:
        """The tables on `device` for the kernels, built once per device."""
        key = str(device)
        tables = self._device_tables.get(key)
        if tables is None:
            pending = None
            if self.mode == "text":
                from cull.compile.pending import PendingRows

                pending = PendingRows(self, device)
            tables = DeviceTables.build(self.arrays, device, n_tok=self.n_tokens, all_ban=self.all_ban,
                                        pending=pending)
            self._device_tables[key] = tables
        return tables

    def step_tables(self, device) -> StepTables:
        """What the Triton step kernel reads to advance row states on `device`, built once per device."""
        key = str(device)
        tables = self._step_tables.get(key)
        if tables is None:
            from cull.compile.step_tables import build_step_tables

            tables = self._step_tables[key] = build_step_tables(self).to(device)
        return tables

    def device_nbytes(self) -> int:
        """Bytes of the tensors built for the kernels so far, on every device (on a CPU some share
        memory with `tables`)."""
        return (sum(t.nbytes() for t in self._device_tables.values())
                + sum(t.nbytes() for t in self._step_tables.values()))

    @cached_property
    def pending_possible(self) -> bool:
        """Whether a row can stop inside a character (some token ends with an unfinished one)."""
        from cull.compile.pending import vocab_can_split_chars

        return self.mode == "text" and vocab_can_split_chars(self.token_bytes)

    @cached_property
    def continuation(self):
        """The per-state answers for rows inside a character (cull.compile.pending.ContinuationCache)."""
        from cull.compile.pending import ContinuationCache

        return ContinuationCache(self.token_bytes)

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
            "device_mib": self.arrays.nbytes() / 2**20,
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
