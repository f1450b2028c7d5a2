"""Aho-Corasick over symbol strings: the phrase trie, failure links and per-node match deltas.

Nodes are numbered in breadth-first order (root = 0). A node is the longest suffix of the text so
far that is a prefix of some pattern; `fail[n]` is the longest proper suffix of node n that is a node.
"""
from __future__ import annotations

import math

import numpy as np


INF = math.inf


class Automaton:
    def __init__(self, patterns: dict[bytes, float]):
        prefixes = {p[:i] for p in patterns for i in range(1, len(p) + 1)}
        nodes = [b""] + sorted(sorted(prefixes), key=len)
        ids = {s: i for i, s in enumerate(nodes)}
        n = len(nodes)
        fail = [0] * n
        goto: dict[int, int] = {}
        for i in range(1, n):
            s = nodes[i]
            parent = ids[s[:-1]]
            goto[parent * 256 + s[-1]] = i
            if len(s) > 1:
                # fail(s) is at most one symbol longer than fail(parent): try those suffixes only
                for length in range(min(len(nodes[fail[parent]]) + 1, len(s) - 1), 0, -1):
                    f = ids.get(s[-length:])
                    if f is not None:
                        fail[i] = f
                        break
        term = np.full(n, INF, dtype=np.float64)
        for p, d in patterns.items():
            term[ids[p]] = min(term[ids[p]], d)
        out = term.copy()  # strongest delta of any pattern ending at this node (fail chain included)
        for i in range(1, n):
            out[i] = min(out[i], out[fail[i]])
        self.nodes = nodes
        self.ids = ids
        self.fail = fail
        self.goto = goto
        self.out = out
        self.depth = max((len(s) for s in nodes), default=0)

    def __len__(self) -> int:
        return len(self.nodes)


def output_links(fail, marked) -> np.ndarray:
    """For each node, the nearest node strictly down its failure chain that is `marked` (-1: none):
    the chain a state walks to collect what every suffix of its text contributes. Nodes must be in
    breadth-first order (fail[i] < i), as both automata number them."""
    n = len(fail)
    out = np.full(n, -1, dtype=np.int32)
    for i in range(1, n):
        f = fail[i]
        out[i] = f if marked[f] else out[f]
    return out
