"""Random vocabularies, rule sets and row states shared by the matcher, kernel and GPU tests
(no hypothesis import here: the GPU machine runs these helpers without it)."""
import codecs
import random

import numpy as np
import torch

import cull
from cull.kernels import apply_rules
from cull.compile.vocab import vocab_from_token_bytes

CHARS = ["a", "b", "c", "A", "B", " ", "  ", "\n", ",", "'", "’", "é", "É", "—", "_", "1", "ʼ", "ж", "Ж"]
# disguises and the characters they need: zero-width space, NBSP, ideographic space, fullwidth and
# math bold letters, a combining acute, ß, a ligature, Han characters
UNICODE_CHARS = ["\u200b", "\u00a0", "\u3000", "ａ", "𝐛", "\u0301", "ß", "ss", "SS", "ﬁ", "你", "好"]
WORD_CHARS = ["a", "b", "c", "é", "ж", "1"]
# look-alikes for the confusables option (UTS #39): Cyrillic and Greek letters, capitals whose lower
# case has another prototype (Н, н), digits and "|" that read as letters, "rn" for "m", "%" -> "o/o"
CONFUSABLE_CHARS = ["е", "Е", "о", "ο", "Ο", "с", "Н", "н", "h", "і", "І", "l", "0", "|", "m", "rn", "%", "β", "ꓲ", "o"]
CONFUSABLE_WORD_CHARS = ["e", "о", "l", "h", "m", "rn", "і", "0"]


def decode_ends(data: bytes) -> tuple[str, list[int]]:
    """`data` decoded as errors="replace" does, and for each character the byte offset it ends at."""
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    parts, ends = [], []
    for i in range(len(data)):
        out = dec.decode(data[i:i + 1])
        parts.append(out)
        ends += [i + 1] * len(out)
    out = dec.decode(b"", True)
    parts.append(out)
    ends += [len(data)] * len(out)
    return "".join(parts), ends


def oracle(history: bytes, token: bytes, rules) -> float | None:
    """Strongest delta of a match (in the text decoded with errors="replace") whose last character
    `token` writes, or None."""
    text, ends = decode_ends(history + token)
    best = None
    for m in cull.find(text, rules):
        if ends[m.end - 1] > len(history):
            d = np.float32(m.rule.delta).item()
            best = d if best is None else min(best, d)
    return best


def random_vocab(rng: random.Random, n: int, split_chars: bool = True, extra: tuple = ()) -> list[bytes]:
    """Random tokens; with `split_chars`, disguise characters too, and multi-byte characters cut
    between tokens (tokens that end inside a character, and tokens that start inside one)."""
    chars = CHARS + (UNICODE_CHARS if split_chars else []) + list(extra)
    toks = {c.encode() for c in chars}
    while len(toks) < n:
        raw = "".join(rng.choice(chars) for _ in range(rng.randint(1, 4))).encode()
        cuts = [i for i in range(1, len(raw)) if raw[i] & 0xC0 == 0x80]
        if split_chars and cuts and rng.random() < 0.4:
            k = rng.choice(cuts)
            toks.update((raw[:k], raw[k:]))
        else:
            toks.add(raw)
    return sorted(toks)


def random_phrase(rng: random.Random, extra: tuple = ()) -> str:
    letters = WORD_CHARS + ["ß", "你"] if rng.random() < 0.3 else WORD_CHARS
    letters = letters + list(extra)
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))]
    sep = rng.choice([" ", " ", ", ", "'", "’", " — "])
    p = sep.join(words)
    if rng.random() < 0.2:
        p = p.upper() if rng.random() < 0.5 else p.capitalize()
    if rng.random() < 0.15:
        p += "*"
    if rng.random() < 0.1:
        p = "*" + p
    return p


def build(rng: random.Random, n_vocab: int, n_rules: int, bias: bool, split_chars: bool = True,
          confusables: bool = False):
    """vocab: the tokens as strings (surrogateescape for split characters); token_bytes: their bytes.
    With `confusables`, the rules use that option and the tokens and phrases its look-alikes."""
    raw = random_vocab(rng, n_vocab, split_chars, tuple(CONFUSABLE_CHARS) if confusables else ())
    vocab = [t.decode("utf-8", "surrogateescape") for t in raw]
    token_bytes = raw + [b"", b""]  # two special tokens
    special = {len(vocab), len(vocab) + 1}
    items = []
    for _ in range(n_rules):
        p = random_phrase(rng, tuple(CONFUSABLE_WORD_CHARS) if confusables else ())
        if bias and rng.random() < 0.6:
            items.append(cull.rules.make_rule(p, "bias", rng.choice([-1.0, -2.5, -4.0, 0.5])))
        else:
            items.append(cull.rules.make_rule(p))
    rules = cull.PhraseSet(items, confusables=confusables)
    matcher = cull.compile_rules(rules, vocab_from_token_bytes(token_bytes, special), cache=False)
    return vocab, token_bytes, special, rules, matcher


def steer(vocab: list[str], target: str, choices) -> list[int]:
    """Token ids that spell `target` (skipping what no token spells), taking at each position the
    `choices`' next value modulo the tokens that fit there: a hypothesis-drawn tokenisation."""
    index = {t: i for i, t in enumerate(vocab)}
    hist, pos = [], 0
    for k in choices:
        if pos >= len(target):
            break
        cands = [target[pos:pos + n] for n in (1, 2, 3, 4) if target[pos:pos + n] in index]
        if not cands:
            pos += 1
            continue
        piece = cands[k % len(cands)]
        hist.append(index[piece])
        pos += len(piece)
    return hist


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




def strided_view(B: int, V: int, dtype, kind: str, seed: int):
    """A [B, V] logits view laid out as engines hand it over, plus the storage it lives in:
    `padded` (vLLM's logits[:, :org_vocab] of a padded vocabulary), `rows` (every other row of a
    bigger batch), `transposed` (vocabulary axis not unit-stride), `contiguous`."""
    g = torch.Generator().manual_seed(seed)
    if kind == "padded":
        store = (torch.randn(B, V + 47, generator=g) * 4).to(dtype)
        return store, store[:, :V]
    if kind == "rows":
        store = (torch.randn(2 * B, V, generator=g) * 4).to(dtype)
        return store, store[1::2]
    if kind == "transposed":
        store = (torch.randn(V, B, generator=g) * 4).to(dtype)
        return store, store.t()
    store = (torch.randn(B, V, generator=g) * 4).to(dtype)
    return store, store


def poison_banned(view, matcher, states, rng) -> None:
    """Put NaN and +inf on some tokens each row bans: a ban must win over any input value."""
    for r, st in enumerate(states):
        banned = [t for t, d in matcher.banned(st).items() if d == float("-inf") and t < view.shape[1]]
        for t in rng.sample(banned, min(3, len(banned))):
            view[r, t] = rng.choice([float("nan"), float("inf")])


def check_view_against_reference(matcher, states, V, dtype, kind, backend, seed):
    """Apply `backend` to a strided view with poisoned banned logits; compare with the reference on
    a contiguous copy, and check the storage outside the view is untouched."""
    rng = random.Random(seed)
    store, view = strided_view(len(states), V, dtype, kind, seed)
    poison_banned(view, matcher, states, rng)
    before = store.clone()
    want = view.clone().contiguous()
    nodes = torch.tensor([s[0] for s in states])
    classes = torch.tensor([s[1] for s in states])
    tables = matcher.device_tables("cpu")
    apply_rules(want, nodes, classes, tables, backend="reference")
    apply_rules(view, nodes, classes, tables, backend=backend)
    outside = torch.ones_like(store, dtype=torch.bool)
    if kind == "padded":
        outside[:, :V] = False
    elif kind == "rows":
        outside[1::2] = False
    else:
        outside[:] = False
    assert torch.equal(store[outside], before[outside]), "wrote outside the view"
    return want, view.clone()
