"""Rows that stop inside a character: the exact path for a UTF-8 character split across tokens.

Byte-level BPE and SentencePiece byte fallback split multi-byte characters across tokens. A
character's normalised form (and so its class) is known only when its last byte arrives, so the
transducer keeps the unfinished bytes in its state (cull/text/normalize.py) and the compiled tables,
built for the three states without them, do not describe such a row. What the next token does
from there splits in two:

* a token that does not start with a UTF-8 continuation byte ends the character unfinished: the
  text decodes it to U+FFFD (Python's errors="replace"), a non-word character that no phrase may
  contain, so the row behaves exactly as from the state (root, OTHER) and the tables answer;
* a token that starts with a continuation byte (64 on a byte-fallback vocabulary, 99 on GPT-2's
  and 180 on Qwen2's byte-level BPE) may finish the character: each is stepped exactly on the host,
  through the transducer and the automaton, and the kernel's answer for these tokens is undone.

The answer per state is cached (`ContinuationCache`, held by the matcher), so a decode step pays
this only when a row is inside a character.
"""
from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from functools import cached_property

import numpy as np
import torch

from cull.text.normalize import BOUNDARY, OTHER, decode_step, transduce

CACHE_STATES = 4096


def vocab_can_split_chars(token_bytes) -> bool:
    """Whether some token ends with an unfinished UTF-8 character."""
    return any(raw and raw[-1] >= 0x80 and decode_step(raw)[1] for raw in token_bytes)


def continuation_tokens(token_bytes) -> np.ndarray:
    """Ids of the tokens whose first byte is a UTF-8 continuation byte."""
    return np.asarray([t for t, raw in enumerate(token_bytes) if raw and raw[0] & 0xC0 == 0x80], np.int64)


class ContinuationCache:
    """A matcher's continuation tokens and its answers per state, each bounded to CACHE_STATES
    entries. It refers to the token bytes, never to the matcher (which holds it)."""

    def __init__(self, token_bytes):
        self.token_bytes = token_bytes
        self.symbols: OrderedDict = OrderedDict()  # transducer state -> sorted [(symbols, token)]
        self.deltas: OrderedDict = OrderedDict()   # (node, transducer state) -> {token: delta}

    @cached_property
    def ids(self) -> np.ndarray:
        return continuation_tokens(self.token_bytes)

    def clear(self) -> None:
        self.symbols.clear()
        self.deltas.clear()


def token_delta(matcher, state, raw: bytes) -> float:
    """Strongest delta of a match whose last character `raw` writes, fed from `state` (inf: none).
    A match completed by a leading boundary ended in earlier text; the end of the text after the
    token (an unfinished character there decodes to U+FFFD) is a boundary."""
    node, code = state
    syms, _ = transduce(raw, code, matcher.fold)
    if not syms:
        return math.inf
    out = matcher.tables["node_out"]
    best = math.inf
    for k, s in enumerate(syms):
        node = matcher.step_symbol(node, s)
        if k or s != BOUNDARY:
            best = min(best, float(out[node]))
    return min(best, float(out[matcher.step_symbol(node, BOUNDARY)]))


def _symbols_from(matcher, code: int) -> list[tuple[bytes, int]]:
    """(symbols, token) of every continuation token fed from transducer state `code`, sorted by
    symbols so that shared prefixes are stepped once. Independent of the node: cached per code."""
    cont = matcher.continuation
    cache = cont.symbols
    hit = cache.get(code)
    if hit is None:
        tb, fold = matcher.token_bytes, matcher.fold
        hit = sorted((transduce(tb[t], code, fold)[0], t) for t in cont.ids.tolist())
        cache[code] = hit
        if len(cache) > CACHE_STATES:
            cache.popitem(last=False)
    return hit


def continuation_deltas(matcher, state) -> dict[int, float]:
    """{continuation token: delta} for the continuation tokens that `state` bans or biases: each
    token's `token_delta`, with the automaton walked once per shared symbol prefix."""
    cache = matcher.continuation.deltas
    key = (int(state[0]), int(state[1]))
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
        return hit
    out_tab = matcher.tables["node_out"]
    step = matcher.step_symbol
    out: dict[int, float] = {}
    prev = b""
    nodes, bests = [key[0]], [math.inf]  # automaton node and best delta after each prefix of `prev`
    for syms, t in _symbols_from(matcher, key[1]):
        if not syms:
            continue
        common = 0
        limit = min(len(prev), len(syms))
        while common < limit and prev[common] == syms[common]:
            common += 1
        del nodes[common + 1:], bests[common + 1:]
        for k in range(common, len(syms)):
            n = step(nodes[k], syms[k])
            b = bests[k]
            if k or syms[k] != BOUNDARY:
                b = min(b, float(out_tab[n]))
            nodes.append(n)
            bests.append(b)
        prev = syms
        d = min(bests[len(syms)], float(out_tab[step(nodes[len(syms)], BOUNDARY)]))
        if d < math.inf:
            out[t] = d
    cache[key] = out
    if len(cache) > CACHE_STATES:
        cache.popitem(last=False)
    return out


def banned_from_pending(matcher, state) -> dict[int, float]:
    """The host reference's ban set (CompiledMatcher.banned) of a state inside a character."""
    base = matcher.banned((0, OTHER))
    for t in matcher.continuation.ids.tolist():
        base.pop(t, None)
    base.update(continuation_deltas(matcher, state))
    return base


class PendingRows:
    """The kernels' wrapper (kernels.apply_rules): rows inside a character are applied as from
    (root, OTHER), then their continuation tokens are restored and set exactly."""

    def __init__(self, matcher, device):
        self._matcher = weakref.ref(matcher)  # the matcher holds this object: no reference cycle
        self.cont = torch.from_numpy(matcher.continuation.ids).to(device)

    def apply(self, logits, nodes, classes, fn, tables):
        cls_list = classes.tolist()  # a few rows: faster than any vectorised check (about 1 µs)
        if max(cls_list, default=0) < 3:  # the common step: no row inside a character
            return fn(logits, nodes, classes, tables)
        cls_host = np.asarray(cls_list, dtype=np.int64)
        rows = np.flatnonzero(cls_host >= 3)
        matcher = self._matcher()
        node_host = _host(nodes)
        states = [(int(node_host[r]), int(cls_host[r])) for r in rows]
        node2, cls2 = node_host.astype(np.int64).copy(), cls_host.astype(np.int64).copy()
        node2[rows], cls2[rows] = 0, OTHER
        if isinstance(classes, torch.Tensor):
            node2 = torch.from_numpy(node2).to(nodes.device)
            cls2 = torch.from_numpy(cls2).to(classes.device)
        V = logits.shape[1]
        cont = self.cont[self.cont < V]
        r = torch.from_numpy(rows).to(logits.device)
        saved = logits[r[:, None], cont[None, :]].clone()
        fn(logits, node2, cls2, tables)
        logits[r[:, None], cont[None, :]] = saved
        for row, st in zip(rows.tolist(), states):
            deltas = {t: d for t, d in continuation_deltas(matcher, st).items() if t < V}
            if not deltas:
                continue
            ids = torch.tensor(list(deltas), dtype=torch.int64, device=logits.device)
            d = torch.tensor(list(deltas.values()), dtype=torch.float32, device=logits.device)
            old = logits[row, ids].float()
            logits[row, ids] = torch.where(d == -math.inf, d, old + d).to(logits.dtype)
        return logits


def _host(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().numpy() if x.device.type == "cpu" else x.detach().cpu().numpy()
    return np.asarray(x)
