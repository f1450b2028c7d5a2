"""Token-form rules: exact token-id sequences, like HF `bad_words_ids` and `sequence_bias`.

These match the raw id sequence (prompt included), with no text normalisation, so that users can
migrate from HF's processors and get the same scores. One deliberate difference: where several
sequences end in the same token, HF sums their biases and cull takes the strongest (minimum) one.
"""
from __future__ import annotations

import math

import numpy as np

from cull.compile.automaton import Automaton, output_links
from cull.compile.matcher import CompiledMatcher
from cull.errors import RuleError


def _encode(seq, radix: int) -> bytes:
    # token ids as fixed 4-byte big-endian symbols so the byte-string automaton can hold them
    return b"".join(int(t).to_bytes(4, "big") for t in seq)


def compile_token_rules(sequences: dict[tuple[int, ...], float], vocab_size: int, *,
                        allow_empty: bool = False) -> CompiledMatcher:
    """sequences: {(id, id, ...): delta}; delta -inf bans. Returns a token-mode CompiledMatcher.
    `allow_empty`: no sequences is a matcher that changes nothing (HF's list after its EOS filter)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise RuleError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not sequences and not allow_empty:
        raise RuleError("no token sequences given")
    best: dict[tuple[int, ...], float] = {}
    for seq, d in sequences.items():
        if not seq or any((not isinstance(t, (int, np.integer))) or t < 0 or t >= vocab_size for t in seq):
            raise RuleError(f"token sequence {seq!r} must be non-empty ids in [0, {vocab_size})")
        if isinstance(d, bool) or not isinstance(d, (int, float)) or math.isnan(d) or d == math.inf:
            raise RuleError(f"the bias of {seq!r} must be a finite number or -inf, got {d!r}")
        best[tuple(int(t) for t in seq)] = min(best.get(tuple(seq), math.inf), float(d))
    # a trie over token ids: build the automaton on 4-byte symbols, then renumber to one symbol per id
    enc = {_encode(s, vocab_size): d for s, d in best.items()}
    A = Automaton(enc)
    keep = [i for i, s in enumerate(A.nodes) if len(s) % 4 == 0]
    new_id = {old: k for k, old in enumerate(keep)}
    n = len(keep)
    fail = np.zeros(n, np.int32)
    goto_key, goto_val = [], []
    ranges: dict[int, dict[int, float]] = {}
    always: dict[int, float] = {}
    for k, old in enumerate(keep):
        s = A.nodes[old]
        if k:
            # the longest proper suffix of whole ids that is a node
            for cut in range(4, len(s), 4):
                if s[cut:] in A.ids:
                    fail[k] = new_id[A.ids[s[cut:]]]
                    break
            parent = new_id[A.ids[s[:-4]]]
            goto_key.append(parent * vocab_size + int.from_bytes(s[-4:], "big"))
            goto_val.append(k)
    for seq, d in best.items():
        if len(seq) == 1:
            always[seq[0]] = min(always.get(seq[0], math.inf), d)
        else:
            m = new_id[A.ids[_encode(seq[:-1], vocab_size)]]
            r = ranges.setdefault(m, {})
            r[seq[-1]] = min(r.get(seq[-1], math.inf), d)
    rng_ptr = np.zeros(n + 1, np.int64)
    lo, delta = [], []
    for m in range(n):
        items = sorted(ranges.get(m, {}).items())
        lo.extend(t for t, _ in items)
        delta.extend(d for _, d in items)
        rng_ptr[m + 1] = rng_ptr[m] + len(items)
    has = rng_ptr[1:] > rng_ptr[:-1]
    out_next = output_links(fail, has)  # fail[k] < k: kept nodes stay in breadth-first order
    at = sorted(always.items())
    alw_tok = np.asarray([t for t, _ in at] * 3, np.int32)
    alw_delta = np.asarray([d for _, d in at] * 3, np.float32)
    tables = {
        "perm": np.arange(vocab_size, dtype=np.int32),
        "rng_ptr": rng_ptr,
        "rng_lo": np.asarray(lo, np.int32),
        "rng_hi": np.asarray(lo, np.int32) + 1,
        "rng_delta": np.asarray(delta, np.float32),
        "has_rng": has,
        "out_next": out_next,
        "alw_ptr": np.asarray([0, len(at), 2 * len(at), 3 * len(at)], np.int64),
        "alw_tok": alw_tok,
        "alw_delta": alw_delta,
        "fail": fail,
        "node_out": np.zeros(n, np.float32),
        "goto_key": np.asarray(goto_key, np.int64),
        "goto_val": np.asarray(goto_val, np.int32),
    }
    return CompiledMatcher(tables, None, mode="tokens", radix=vocab_size,
                           meta={"n_patterns": len(best), "n_tokens": vocab_size})
