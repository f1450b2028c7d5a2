"""Adversarial generation over real vocabularies: a fake model steers toward spelling each banned
phrase through random tokenizations (case, split and byte tokens, extra whitespace, typographic
apostrophes). The decoded output must never contain a match, judged by an independent regex
matcher. Then benign texts are teacher-forced: none of their tokens may be banned."""
import os
import random
import re
from functools import lru_cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cull

from conftest import need_data

SLOW = os.environ.get("CULL_SLOW_EXAMPLES")
PHRASES = [
    "I hope this letter finds you well", "a testament to", "delve", "moreover", "don't", "tapestry",
    "barely above a whisper", "Once upon a time", "ass", "shivers down", "kaleidoscope of colors",
    "it's important to note", "the very fabric of", "maybe, just maybe",
]
TOKENIZERS = {
    "gpt2": ("tokenizers", "gpt2"),
    "qwen2": ("tokenizers", "qwen2"),
    "stories260K": ("models", "stories260K"),
}

# The word class, written out independently of cull.normalize: a character is a word character
# unless it is ASCII punctuation/space/control, or lies in U+0080-U+00BF, U+0280-U+02FF,
# U+2000-U+2FFF or above U+FFFF.
WORD = r"[0-9A-Za-z_\u00c0-\u027f\u0300-\u1fff\u3000-\uffff]"


def independent_regex(phrase: str) -> re.Pattern:
    parts = []
    for ch in phrase:
        if ch == " ":
            parts.append(r"[ \t\n\r\x0b\x0c]+")
        elif ch == "'":
            parts.append("['\u2019\u2018\u02bc]")
        else:
            parts.append(re.escape(ch))
    body = "".join(parts)
    if re.match(WORD, phrase[0]):
        body = f"(?<!{WORD})" + body
    if re.match(WORD, phrase[-1]):
        body = body + f"(?!{WORD})"
    return re.compile(body, re.IGNORECASE | re.ASCII)


REGEXES = [independent_regex(p) for p in PHRASES]


@lru_cache(maxsize=None)
def setup(name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(need_data(*TOKENIZERS[name]))
    proc = cull.CullLogitsProcessor(PHRASES, tok, cache=False)
    vocab = __import__("cull.compile_cache", fromlist=["as_vocab"]).as_vocab(tok)
    by_bytes = {}
    for i, b in enumerate(vocab.token_bytes):
        if b and i not in vocab.special_ids:
            by_bytes.setdefault(b, []).append(i)
    return tok, proc, vocab, by_bytes


def spelling(rnd: random.Random, phrase: str) -> str:
    out = []
    for ch in phrase:
        if ch == " ":
            out.append(rnd.choice([" ", " ", "  ", "\n", " \n "]))
        elif ch == "'":
            out.append(rnd.choice(["'", "\u2019", "\u2018", "\u02bc"]))
        else:
            out.append(ch.upper() if rnd.random() < 0.3 else ch)
    prefix = rnd.choice(["", "", "So ", "And, ", "\n", "it was "])
    suffix = rnd.choice(["", ".", " and", ", ", "!"])
    return prefix + "".join(out) + suffix


@lru_cache(maxsize=None)
def _noise(V):
    return torch.randn(4 * V, generator=torch.Generator().manual_seed(V))


def noise(V, rnd):
    k = rnd.randrange(3 * V)
    return _noise(V)[k:k + V].clone().unsqueeze(0)


def adversarial_generation(name: str, rnd: random.Random) -> tuple[str, str]:
    tok, proc, vocab, by_bytes = setup(name)
    V = len(vocab.token_bytes)
    target = spelling(rnd, rnd.choice(PHRASES)).encode()
    ids, pos = [], 0
    proc.reset()
    for _ in range(len(target) + 8):
        if pos >= len(target):
            break
        rest = target[pos:]
        cands = [i for n in range(1, min(len(rest), 24) + 1) for i in by_bytes.get(rest[:n], [])]
        scores = noise(V, rnd)
        if cands:
            weights = torch.rand(len(cands)) * 20 + 10
            scores[0, torch.tensor(cands)] += weights
        input_ids = torch.tensor([[tok.bos_token_id or 0] + ids])
        scores = proc(input_ids, scores)
        row = scores[0].numpy()
        assert not np.isnan(row).any() and np.isfinite(row).any()
        nxt = int(scores[0].argmax())
        ids.append(nxt)
        b = vocab.token_bytes[nxt]
        if rest.startswith(b) and b:
            pos += len(b)
    text = b"".join(vocab.token_bytes[i] for i in ids).decode("utf-8", "replace")
    decoded = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text, decoded


pytestmark = pytest.mark.usefixtures("one_thread")


def run_adversarial(name, rnd):
    text, decoded = adversarial_generation(name, rnd)
    for t in (text, decoded):
        for p, rx in zip(PHRASES, REGEXES):
            m = rx.search(t)
            assert m is None, f"{name}: {p!r} appears in {t!r} at {m.span()}"


EXAMPLES = int(SLOW or 340)


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_adversarial_generations_never_match(name):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(rnd=st.randoms(use_true_random=False))
    def inner(rnd):
        run_adversarial(name, rnd)

    inner()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_adversarial_generations_never_match_slow(name):
    @settings(max_examples=3000, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(rnd=st.randoms(use_true_random=False))
    def inner(rnd):
        run_adversarial(name, rnd)

    inner()


BENIGN = [
    "The class assistant passed the glass to Cassandra, who was assessing the mass.",
    "They delved into the archives, delving deeper; the delvers found more over there.",
    "More over the hill is a phrase, and moreso the moreovers; I hope this letter helps.",
    "Do not worry: a testament is a will; the tapestries were woven, once upon the shelf.",
    "She whispered barely above the noise, and the kaleidoscope had many colours.",
    "It's important to know that the very fabric was torn; maybe not.",
]


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_benign_text_is_never_banned(name):
    """Teacher-force benign texts. A token may be banned only in the documented end-boundary case: it
    writes a phrase's last character and ends right there (the text so far would match if it ended
    there), e.g. "ass" + "istant" in a small vocabulary. On the BPE vocabularies that never happens
    for these texts."""
    tok, proc, vocab, _ = setup(name)
    m = proc.matcher
    over_bans = []
    n_tokens = 0
    for text in BENIGN:
        assert not any(rx.search(text) for rx in REGEXES), text
        assert cull.find(text, PHRASES) == []
        ids = tok.encode(text, add_special_tokens=False)
        state, sofar = m.initial_state(), b""
        for k, t in enumerate(ids):
            piece = vocab.token_bytes[t]
            if t in m.banned(state):
                whole = (sofar + piece).decode("utf-8", "replace")
                assert any(mt.end == len(whole) for mt in cull.find(whole, PHRASES)), (
                    f"{name}: token {piece!r} at step {k} of benign {text!r} was banned")
                over_bans.append(whole[-20:])
            state = m.advance(state, t)
            sofar += piece
            n_tokens += 1
    if name in ("gpt2", "qwen2"):
        assert over_bans == []
    assert len(over_bans) <= n_tokens // 20, over_bans


def test_delved_is_banned_only_with_wildcard(data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data_dir / "tokenizers" / "qwen2")
    ids = tok.encode("They delved into it", add_special_tokens=False)
    for rules, expect in ((["delve"], False), (["delv*"], True)):
        m = cull.compile_rules(rules, tok, cache=False)
        state, hit = m.initial_state(), False
        for t in ids:
            hit |= t in m.banned(state)
            state = m.advance(state, t)
        assert hit == expect, rules
