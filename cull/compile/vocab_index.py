"""Per-vocabulary tables: every token's normalised symbol key, and the vocabulary sorted by key.

The key of a token is the symbol string it emits, minus a leading BOUNDARY. All tokens whose keys
start with a given string form one contiguous range of the sorted order, so "every token that
starts with the rest of this phrase" is two binary searches. The order depends on the class state
the token is fed from (a leading whitespace run vanishes after a space), so there is one order per
class. Keys are taken from the three states without an unfinished character; a row inside a
character split across tokens is handled exactly on the host (cull/compile/pending.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from cull.text.normalize import BOUNDARY, DEFAULT_FOLD, OTHER, SPACE, WORD, transduce

CLASSES = (OTHER, WORD, SPACE)


class TokenKeys:
    """keys[c][t]: key of token t fed from class c (b"" = the token adds no symbols)."""

    def __init__(self, token_bytes: Sequence[bytes], fold: int = DEFAULT_FOLD):
        n = len(token_bytes)
        keys = [[b""] * n for _ in CLASSES]
        lead = [bytearray(n) for _ in CLASSES]  # 1 where the token emits a leading BOUNDARY
        B = bytes([BOUNDARY])
        for t, raw in enumerate(token_bytes):
            if not raw:
                continue
            sym, _ = transduce(raw, OTHER, fold)
            if sym[:1] == B:  # the first character is a word character: the key is the same from every class
                for c in CLASSES:
                    keys[c][t] = sym[1:]
                    lead[c][t] = c != WORD
                continue
            if sym[:1] != b" ":  # empty, or a first character that is neither word nor space
                for c in CLASSES:
                    keys[c][t] = sym
                    lead[c][t] = c == WORD
                continue
            # the first character is a space: from SPACE it vanishes, from WORD a boundary precedes
            # it, and the rest is the same from every class (the class after a space is SPACE)
            keys[OTHER][t] = keys[WORD][t] = sym
            lead[WORD][t] = 1
            rest = sym[1:]
            if rest[:1] == B:
                rest, lead[SPACE][t] = rest[1:], 1
            keys[SPACE][t] = rest
        self.n = n
        self.fold = fold
        self.keys = keys
        self.lead = [np.frombuffer(bytes(b), dtype=np.uint8) for b in lead]
        self.max_key = max((len(k) for kc in keys for k in kc), default=0)
        self.order, self.sorted_keys = [], []
        for c in CLASSES:
            arr = as_fixed(keys[c], self.max_key)
            order = np.argsort(arr, kind="stable")
            order = order[arr[order] != b""].astype(np.int32)
            self.order.append(order)
            self.sorted_keys.append(arr[order])

    def prefix_ranges(self, c: int, queries: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi) positions in order[c] of the tokens whose key starts with each query."""
        return prefix_ranges(self.sorted_keys[c], queries, self.max_key)

    def suffix_table(self, width: int):
        """`suffix_table(self.class_strings(), width)`, kept per width: it depends on the vocabulary
        only, so a server compiling many small lists against one tokenizer builds it once."""
        cache = self.__dict__.setdefault("_suffix_tables", {})
        if width not in cache:
            cache.clear()  # one width at a time: each table holds every suffix of the vocabulary
            cache[width] = suffix_table(self.class_strings(), width)
        return cache[width]

    def class_strings(self):
        """The symbol strings tokens emit, as (string, token, mask of the first position, mask of the
        other positions): suffix i of a string occurs in token t fed from every class in the mask.
        A token fed from class c emits BOUNDARY + key when lead[c], and after a space a leading
        whitespace run vanishes (the key minus its first symbol). Built once per vocabulary."""
        if "_class_strings" not in self.__dict__:
            self._class_strings = self._build_class_strings()
        return self._class_strings

    def _build_class_strings(self):
        B = bytes([BOUNDARY])
        allm = (1 << OTHER) | (1 << WORD) | (1 << SPACE)
        keys, lead = self.keys, self.lead
        out = []
        for t in range(self.n):
            kO, kW, kS = keys[OTHER][t], keys[WORD][t], keys[SPACE][t]
            if not kO and not kW:
                continue
            m = sum(1 << c for c in CLASSES if lead[c][t])
            if kO == kW == kS:
                out.append((kO, t, allm, allm))
                if m:
                    out.append((B + kO, t, m, 0))
            elif kO == kW and kO[:1] == b" ":
                out.append((kO, t, allm ^ (1 << SPACE), allm))
                if m & (1 << WORD):
                    out.append((B + kO, t, 1 << WORD, 0))
            else:  # each class sees its own string
                for c in CLASSES:
                    if keys[c][t]:
                        out.append(((B if lead[c][t] else b"") + keys[c][t], t, 1 << c, 1 << c))
        return out


def prefix_ranges(sorted_arr: np.ndarray, queries: Sequence[bytes], width: int):
    """Vectorised [lo, hi) of the entries of a sorted "S" array that start with each query. Queries
    longer than `width` match nothing (no entry is that long)."""
    if not len(queries):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lens = np.fromiter((len(q) for q in queries), dtype=np.int64, count=len(queries))
    fits = lens <= width
    q = as_fixed([x if ok else b"" for x, ok in zip(queries, fits.tolist())], width)
    lo = np.searchsorted(sorted_arr, q, side="left")
    # q padded with 0xff sorts after every entry that starts with q and before every other larger one
    mat = q.view(np.uint8).reshape(len(q), width).copy()
    mat[np.arange(width)[None, :] >= lens[:, None]] = 0xFF
    hi = np.searchsorted(sorted_arr, mat.view(f"S{width}").ravel(), side="right")
    lo[~fits] = 0
    hi[~fits] = 0
    return lo, hi


def as_fixed(strings: Sequence[bytes], width: int) -> np.ndarray:
    """Byte strings -> numpy fixed-width "S" array (symbols are never 0, so padding is exact)."""
    return np.array(strings, dtype=f"S{max(width, 1)}")


def suffix_table(strings, width: int):
    """Sorted suffixes (cut to `width` symbols) of class_strings(), starting at every position but
    UTF-8 continuation bytes (a match starts at a character) and positions whose mask is empty. Returns (suffixes as an "S" array,
    tokens, class masks, full suffix lengths)."""
    if not strings:
        return as_fixed([], width), np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int32)
    n = len(strings)
    lens = np.fromiter((len(s[0]) for s in strings), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(s[0] for s in strings), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    owner = np.repeat(np.arange(n), lens)
    ends = (starts + lens)[owner]
    pos = np.arange(len(buf))
    first = pos == starts[owner]
    mfirst = np.fromiter((s[2] for s in strings), dtype=np.int8, count=n)
    mrest = np.fromiter((s[3] for s in strings), dtype=np.int8, count=n)
    mask = np.where(first, mfirst[owner], mrest[owner])
    keep = ((buf & 0xC0) != 0x80) & (mask != 0)
    pos, owner, ends, mask = pos[keep], owner[keep], ends[keep], mask[keep]
    mat = np.zeros((len(pos), width), dtype=np.uint8)
    for j in range(width):
        idx = pos + j
        ok = idx < ends
        if not ok.any():
            break
        mat[ok, j] = buf[idx[ok]]
    suf = mat.view(f"S{width}").ravel()
    order = np.argsort(suf, kind="stable")
    toks = np.fromiter((s[1] for s in strings), dtype=np.int32, count=n)
    return suf[order], toks[owner[order]], mask[order], (ends - pos)[order].astype(np.int32)


