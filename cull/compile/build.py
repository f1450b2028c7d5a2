"""Compile rules against a vocabulary into the tables the processor reads at every decode step.

For a state s (a trie node), token t completes a phrase in one of two ways (docs/automaton.md):
  (a) t contains a whole match: this depends only on the class state before t, so it is one
      token list per class ("always" lists), found by range queries on t's sorted suffixes;
  (b) t starts with the rest of a phrase whose beginning is a suffix of the text, i.e. a node m on
      s's failure chain: every token whose key starts with that rest is one range of the sorted
      vocabulary, stored on m. At run time a state walks its chain of nodes that have ranges.
"""
from __future__ import annotations

import math
import time

import numpy as np

from cull.compile.automaton import Automaton, output_links
from cull.text.normalize import BOUNDARY, OTHER, symbols_class
from cull.compile.patterns import compile_patterns
from cull.rules import PhraseSet
from cull.compile.vocab_index import CLASSES, TokenKeys, prefix_ranges

DEFAULT_MAX_SYMBOLS = 12_000_000
_B = bytes([BOUNDARY])
SUFFIX_WIDTH = 24  # longer patterns are checked against the few long tokens directly


def _node_classes(A: Automaton) -> np.ndarray:
    """Class state after each node's symbols (root: -1, it can be in any class). A node that ends
    inside a character (where no state ever rests) gets the class of its last whole character."""
    cls = np.full(len(A), -1, dtype=np.int8)
    for i in range(1, len(A)):
        s = A.nodes[i]
        last = s[-1]
        if last == BOUNDARY or last >= 0x80:  # inherit, or look at the last whole character
            parent = A.ids[s[:-1]]
            before = OTHER if parent == 0 else int(cls[parent])
            k = len(s) - 1
            while k > 0 and s[k] & 0xC0 == 0x80:
                k -= 1
            cls[i] = before if last == BOUNDARY else symbols_class(s[k:], before)
        else:
            cls[i] = symbols_class(s[-1:])
    return cls


def _gather(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, width: int, pad: int) -> np.ndarray:
    """Rows buf[start:start+len] as a fixed-width "S" array, padded with `pad` (0 or 0xff)."""
    mat = np.full((len(starts), max(width, 1)), pad, dtype=np.uint8)
    for k in range(width):
        ok = lens > k
        if not ok.any():
            break
        mat[ok, k] = buf[starts[ok] + k]
    return mat.view(f"S{max(width, 1)}").ravel()


def _chain_ranges(A, K, patterns, node_cls):
    """Case (b), vectorised over every (pattern, split): the rest of the pattern after the split is
    looked up in the sorted keys of the class the split node ends in."""
    pats = list(patterns)
    lens = np.fromiter((len(p) for p in pats), dtype=np.int64, count=len(pats))
    buf = np.frombuffer(b"".join(pats), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    ends = starts + lens
    owner = np.repeat(np.arange(len(pats)), lens)
    ids = A.ids
    path = np.fromiter((ids[p[:i]] for p in pats for i in range(1, len(p) + 1)), dtype=np.int32, count=len(buf))
    j = np.arange(len(buf))
    split = j - starts[owner]  # the node is the pattern's first `split` symbols
    ok = split >= 1
    ok[ok] &= buf[j[ok] - 1] != BOUNDARY  # a state never rests right after a boundary symbol
    ok &= (buf & 0xC0) != 0x80  # nor inside a character (rows inside a raw one are in cull/compile/pending.py)
    j, own = j[ok], owner[ok]
    node = path[j - 1]
    rest0 = j + (buf[j] == BOUNDARY)
    rest_len = ends[own] - rest0
    ends_b = buf[ends[own] - 1] == BOUNDARY
    lo_len = rest_len - ends_b
    keep = (lo_len > 0) & (rest_len <= K.max_key + 1)
    node, rest0, rest_len, lo_len, own = node[keep], rest0[keep], rest_len[keep], lo_len[keep], own[keep]
    classes = node_cls[node]
    deltas = np.fromiter(patterns.values(), dtype=np.float64, count=len(pats))[own]
    lo = np.zeros(len(node), np.int64)
    hi = np.zeros(len(node), np.int64)
    W = K.max_key + 1  # a rest may be a whole key plus the final boundary
    for c in CLASSES:
        sel = np.flatnonzero((classes == c) & (rest_len <= W))
        if not len(sel):
            continue
        sk = K.sorted_keys[c]
        lo[sel] = np.searchsorted(sk, _gather(buf, rest0[sel], lo_len[sel], W, 0), side="left")
        hi[sel] = np.searchsorted(sk, _gather(buf, rest0[sel], rest_len[sel], W, 0xFF), side="right")
    keep = hi > lo
    return node[keep], lo[keep], hi[keep], deltas[keep], classes[keep]


def _merge_ranges(nodes, lo, hi, deltas):
    """Per node: sorted, disjoint ranges; where ranges overlap the stronger (smaller) delta wins."""
    order = np.lexsort((lo, nodes))
    nodes, lo, hi, deltas = nodes[order], lo[order], hi[order], deltas[order]
    same = nodes[1:] == nodes[:-1]
    # only nodes whose ranges touch or overlap need the slow merge
    clash = same & (lo[1:] <= np.maximum.accumulate(hi)[:-1])
    if not clash.any():
        return nodes, lo, hi, deltas
    bad = np.unique(nodes[1:][clash])
    slow = np.isin(nodes, bad)
    out_n, out_lo, out_hi, out_d = [nodes[~slow]], [lo[~slow]], [hi[~slow]], [deltas[~slow]]
    idx = np.flatnonzero(slow)
    starts = np.flatnonzero(np.r_[True, nodes[idx][1:] != nodes[idx][:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(idx)]):
        sel = idx[a:b]
        pieces = merge_sorted_ranges(lo[sel].tolist(), hi[sel].tolist(), deltas[sel].tolist())
        out_n.append(np.full(len(pieces), nodes[sel[0]], np.int32))
        out_lo.append(np.asarray([x[0] for x in pieces], np.int64))
        out_hi.append(np.asarray([x[1] for x in pieces], np.int64))
        out_d.append(np.asarray([x[2] for x in pieces], np.float64))
    nodes, lo, hi, deltas = (np.concatenate(x) for x in (out_n, out_lo, out_hi, out_d))
    order = np.lexsort((lo, nodes))
    return nodes[order], lo[order], hi[order], deltas[order]


def merge_sorted_ranges(lo, hi, d):
    if len(lo) == 1:
        return [(lo[0], hi[0], d[0])]
    if all(x == -math.inf for x in d):  # bans only: a plain union
        out = []
        for a, b in zip(lo, hi):
            if out and a <= out[-1][1]:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return [(a, b, -math.inf) for a, b in out]
    cuts = sorted(set(lo) | set(hi))
    out = []
    for a, b in zip(cuts, cuts[1:]):
        best = min((dd for l, h, dd in zip(lo, hi, d) if l <= a and b <= h), default=None)
        if best is None:
            continue
        if out and out[-1][1] == a and out[-1][2] == best:
            out[-1][1] = b
        else:
            out.append([a, b, best])
    return [tuple(x) for x in out]


def _always(K: TokenKeys, patterns, n_tokens):
    """Case (a): per class, the strongest delta of any whole match inside each token."""
    best = np.full((3, n_tokens), np.inf)
    if not patterns:
        return best
    width = SUFFIX_WIDTH  # one width for every list, so the vocabulary's suffix table is built once
    suf, toks, masks, lens = K.suffix_table(width)
    short = [(p, d) for p, d in patterns.items() if len(p) < width]
    qlo = [p[:-1] if p[-1] == BOUNDARY else p for p, _ in short]
    _, hi = prefix_ranges(suf, [p for p, _ in short], width)
    lo, _ = prefix_ranges(suf, qlo, width)
    counts = np.maximum(hi - lo, 0)
    if counts.sum():
        idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        d = np.repeat(np.asarray([d for _, d in short]), counts)
        for c in CLASSES:
            sel = (masks[idx] >> c) & 1 == 1
            np.minimum.at(best[c], toks[idx[sel]], d[sel])
    long_pats = [(p, d) for p, d in patterns.items() if len(p) >= width]
    if long_pats:
        long_strings = [s for s in K.class_strings() if len(s[0]) >= width]
        for s, t, mfirst, mrest in long_strings:
            for p, d in long_pats:
                body = p[:-1] if p[-1] == BOUNDARY else p
                for start in _occurrences(s, body):
                    after = s[start + len(body): start + len(body) + 1]
                    if p[-1] == BOUNDARY and after not in (b"", _B):
                        continue
                    mask = mfirst if start == 0 else mrest
                    for c in CLASSES:
                        if (mask >> c) & 1:
                            best[c, t] = min(best[c, t], d)
    return best


def _occurrences(s: bytes, sub: bytes):
    i = s.find(sub)
    while i != -1:
        if s[i] & 0xC0 != 0x80:
            yield i
        i = s.find(sub, i + 1)


def build_tables(rules: PhraseSet, token_bytes, special_ids=(), keys: TokenKeys | None = None,
                 max_symbols: int = DEFAULT_MAX_SYMBOLS, progress=None) -> dict:
    """Compile everything into plain numpy arrays (the on-disk and on-device format)."""
    timings = {}
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    say("normalising phrases")
    patterns = compile_patterns(rules, max_symbols)
    timings["patterns_s"] = time.perf_counter() - t0
    say(f"building the automaton over {len(patterns):,} patterns")
    A = Automaton(patterns)
    node_cls = _node_classes(A)
    timings["automaton_s"] = time.perf_counter() - t0
    if keys is None:
        say(f"sorting {len(token_bytes):,} token keys")
        keys = TokenKeys(token_bytes, rules.options.fold())
    timings["token_keys_s"] = time.perf_counter() - t0
    say("finding chain ranges")
    nodes, lo, hi, deltas, classes = _chain_ranges(A, keys, patterns, node_cls)
    offsets = np.cumsum([0] + [len(keys.order[c]) for c in CLASSES])
    lo = lo + offsets[classes]
    hi = hi + offsets[classes]
    nodes, lo, hi, deltas = _merge_ranges(nodes, lo, hi, deltas)
    timings["ranges_s"] = time.perf_counter() - t0
    say("finding tokens that hold whole phrases")
    best = _always(keys, patterns, len(token_bytes))
    for t in special_ids:
        if t < best.shape[1]:
            best[:, t] = np.inf
    timings["always_s"] = time.perf_counter() - t0
    n = len(A)
    rng_ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(rng_ptr, nodes.astype(np.int64) + 1, 1)
    rng_ptr = np.cumsum(rng_ptr)
    has = rng_ptr[1:] > rng_ptr[:-1]
    fail = np.asarray(A.fail, dtype=np.int32)
    out_next = output_links(fail, has)
    alw_tok, alw_delta, alw_ptr = [], [], [0]
    for c in CLASSES:
        t = np.flatnonzero(np.isfinite(best[c]) | (best[c] == -np.inf))
        alw_tok.append(t.astype(np.int32))
        alw_delta.append(best[c, t].astype(np.float32))
        alw_ptr.append(alw_ptr[-1] + len(t))
    goto_key = np.fromiter(A.goto.keys(), dtype=np.int64, count=len(A.goto))
    goto_val = np.fromiter(A.goto.values(), dtype=np.int32, count=len(A.goto))
    timings["total_s"] = time.perf_counter() - t0
    return {
        "perm": np.concatenate(keys.order).astype(np.int32),
        "perm_off": offsets.astype(np.int64),
        "rng_ptr": rng_ptr,
        "rng_lo": lo.astype(np.int32),
        "rng_hi": hi.astype(np.int32),
        "rng_delta": deltas.astype(np.float32),
        "has_rng": has,
        "out_next": out_next,
        "alw_ptr": np.asarray(alw_ptr, dtype=np.int64),
        "alw_tok": np.concatenate(alw_tok),
        "alw_delta": np.concatenate(alw_delta),
        "fail": fail,
        "node_out": A.out.astype(np.float32),
        "goto_key": goto_key,
        "goto_val": goto_val,
        "n_patterns": np.int64(len(patterns)),
        "depth": np.int64(A.depth),
        "timings": timings,
    }
