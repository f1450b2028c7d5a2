"""Row states found by content: a bounded cache from a row's tokens to its automaton state.

HF calls a logits processor in many ways: a decode loop (every row grew by one token), beams
reordered and duplicated, rows joining and leaving a batch, and assisted decoding or prompt lookup
(several positions of a row in a row, then a rollback to an earlier one; the assistant model may
call the same processor in between). A row's state is therefore found by its own tokens, never by
position in the batch or by "the length grew by one":

1. A row that extends a row of the previous call by one token continues it.
2. In any other call (the length jumped or shrank, or the batch changed size), a row whose tokens,
   or all of them but the last, are those of a cached row continues that row, provided every row
   of the call is recognised this way (1 or 2): a rollback moves the whole batch together.
3. Any other row starts a new generation: all of its tokens are prompt, and its scope (the text
   that is matched) starts after them, or at token 0 with ``include_prompt``.

Why not "the longest cached prefix": every prompt of a Llama-style tokenizer begins with BOS, so a
new prompt would continue the cached row ``[BOS]`` of an earlier call, and its prompt text would be
matched as if generated. Rule 2's "every row" is what tells a new generate() call (its rows are
mostly unknown) from a rollback. What stays ambiguous is a call whose every row repeats a row seen
before (a new prompt that is exactly an earlier output): it continues that output's generation,
which only bans more, never less; call `CullLogitsProcessor.reset` between unrelated generations
to avoid it.

Keys are 128-bit BLAKE2b digests of the token bytes, so a lookup is exact for practical purposes
and the cache holds no token arrays. The cache is a bounded LRU of `max_rows` rows (at least four
calls' worth).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

DEFAULT_MAX_ROWS = 4096


def resolve_rows(pre_keys, full_keys, last_keys, lookup, ordinary: bool) -> list:
    """The policy above, on opaque keys. Returns per row ("extend", state of its first L-1 tokens),
    ("same", its state) or ("new", None). `lookup(key)` gives a cached state or None."""
    out = []
    for p in pre_keys:
        st = lookup(p) if p in last_keys else None
        out.append(("extend", st) if st is not None else None)
    if ordinary:
        return [o or ("new", None) for o in out]
    for r, o in enumerate(out):
        if o is None:
            st = lookup(full_keys[r])
            if st is not None:
                out[r] = ("same", st)
            else:
                st = lookup(pre_keys[r])
                out[r] = ("extend", st) if st is not None else None
    if any(o is None for o in out):  # a new batch: rows found only in older calls are new too
        return [o if (o is not None and o[0] == "extend" and pre_keys[r] in last_keys) else ("new", None)
                for r, o in enumerate(out)]
    return out


def state_from(matcher, include_prompt: bool, row: np.ndarray, how) -> tuple[int, int]:
    kind, st = how
    if kind == "same":
        return st
    if kind == "extend":
        return matcher.advance(st, int(row[-1]))
    start = matcher.initial_state()
    return matcher.advance_many(start, row) if include_prompt else start


class RowStateCache:
    """Bounded map from row contents to automaton states for one `CompiledMatcher` (host side)."""

    def __init__(self, matcher, include_prompt: bool, max_rows: int = DEFAULT_MAX_ROWS):
        self.matcher = matcher
        self.include_prompt = include_prompt
        self.max_rows = max_rows
        self.clear()

    def clear(self) -> None:
        self._states: OrderedDict[tuple[int, bytes], tuple[int, int]] = OrderedDict()
        self.last_keys: set = set()
        self.last_shape = None

    def __len__(self) -> int:
        return len(self._states)

    def lookup(self, key):
        st = self._states.get(key)
        if st is not None:
            self._states.move_to_end(key)
        return st

    def put(self, key, state) -> None:
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.max_rows:
            self._states.popitem(last=False)

    @staticmethod
    def keys(ids: np.ndarray) -> tuple[list, list]:
        """(key of the first L-1 tokens, key of all L tokens) of each row."""
        L = ids.shape[1]
        pre, full = [], []
        for row in ids:
            buf = row.tobytes()
            h = hashlib.blake2b(buf[:-8], digest_size=16)
            pre.append((L - 1, h.digest()))
            h.update(buf[-8:])
            full.append((L, h.digest()))
        return pre, full

    def states(self, ids: np.ndarray) -> list[tuple[int, int]]:
        """States of every row of an int64 [B, L] array (one processor call)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        B, L = ids.shape
        self.max_rows = max(self.max_rows, 4 * B)
        if L == 0:
            return [state_from(self.matcher, self.include_prompt, row, ("new", None)) for row in ids]
        ordinary = self.last_shape is not None and (B, L) == (self.last_shape[0], self.last_shape[1] + 1)
        pre, full = self.keys(ids)
        plan = resolve_rows(pre, full, self.last_keys, self.lookup, ordinary)
        out = [state_from(self.matcher, self.include_prompt, ids[r], plan[r]) for r in range(B)]
        for k, st in zip(full, out):
            self.put(k, st)
        self.last_keys = set(full)
        self.last_shape = (B, L)
        return out
