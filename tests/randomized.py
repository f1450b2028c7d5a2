"""Random vocabularies, rule sets and row states shared by the matcher, kernel and GPU tests
(no hypothesis import here: the GPU machine runs these helpers without it)."""
import random

import numpy as np
import torch

import cull
from cull.kernels import apply_rules
from cull.vocab import vocab_from_token_bytes

CHARS = ["a", "b", "c", "A", "B", " ", "  ", "\n", ",", "'", "’", "é", "É", "—", "_", "1", "ʼ", "ж", "Ж"]
WORD_CHARS = ["a", "b", "c", "é", "ж", "1"]


def oracle(history: str, token: str, rules) -> float | None:
    """Strongest delta of a match whose last character `token` writes, or None."""
    best = None
    for m in cull.find(history + token, rules):
        if m.end > len(history):
            d = np.float32(m.rule.delta).item()
            best = d if best is None else min(best, d)
    return best


def random_vocab(rng: random.Random, n: int) -> list[str]:
    toks = set(CHARS)
    while len(toks) < n:
        toks.add("".join(rng.choice(CHARS) for _ in range(rng.randint(1, 4))))
    return sorted(toks)


def random_phrase(rng: random.Random) -> str:
    words = ["".join(rng.choice(WORD_CHARS) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
    sep = rng.choice([" ", " ", ", ", "'", "’", " — "])
    p = sep.join(words)
    if rng.random() < 0.2:
        p = p.upper() if rng.random() < 0.5 else p.capitalize()
    if rng.random() < 0.15:
        p += "*"
    if rng.random() < 0.1:
        p = "*" + p
    return p


def build(rng: random.Random, n_vocab: int, n_rules: int, bias: bool):
    vocab = random_vocab(rng, n_vocab)
    token_bytes = [t.encode() for t in vocab] + [b"", b""]  # two special tokens
    special = {len(vocab), len(vocab) + 1}
    items = []
    for _ in range(n_rules):
        p = random_phrase(rng)
        if bias and rng.random() < 0.6:
            items.append(cull.rules.make_rule(p, "bias", rng.choice([-1.0, -2.5, -4.0, 0.5])))
        else:
            items.append(cull.rules.make_rule(p))
    rules = cull.PhraseSet(items)
    matcher = cull.compile_rules(rules, vocab_from_token_bytes(token_bytes, special), cache=False)
    return vocab, token_bytes, special, rules, matcher


def random_states(matcher, n_tokens, B, rng):
    states = []
    for _ in range(B):
        st = matcher.initial_state()
        for _ in range(rng.randint(0, 12)):
            st = matcher.advance(st, rng.randrange(n_tokens))
        states.append(st)
    return states


def run_backends(matcher, states, V, dtype, backends, seed):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(len(states), V, generator=g) * 4).to(dtype)
    nodes = torch.tensor([s[0] for s in states])
    classes = torch.tensor([s[1] for s in states])
    tables = matcher.device_tables("cpu")
    outs = {}
    for b in backends:
        x = base.clone()
        apply_rules(x, nodes, classes, tables, backend=b)
        outs[b] = x
    return base, outs


