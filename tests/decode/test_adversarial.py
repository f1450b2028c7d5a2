"""Adversarial generation over real vocabularies: a fake model steers toward spelling each banned
phrase through random tokenizations (case, split and byte tokens, extra whitespace, typographic
apostrophes) and Unicode disguises (zero-width and other default-ignorable characters, every kind
of space, fullwidth and math-bold letters, decomposed accents, ß as SS, a Chinese phrase inside
running text). The decoded output must never contain a match, judged by an independent matcher
(the `regex` package's Unicode properties and `unicodedata`, no cull code). Then benign texts in
several languages are teacher-forced in their own and in random tokenizations: a token may be
banned only in the documented end-of-word case."""
import os
import random
import unicodedata
from functools import lru_cache

import numpy as np
import pytest
import regex
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cull

from conftest import need_data
from randomized import oracle

SLOW = os.environ.get("CULL_SLOW_EXAMPLES")
PHRASES = [
    "I hope this letter finds you well", "a testament to", "delve", "moreover", "don't", "tapestry",
    "barely above a whisper", "Once upon a time", "ass", "shivers down", "kaleidoscope of colors",
    "it's important to note", "the very fabric of", "maybe, just maybe", "café", "straße", "你好",
]
TOKENIZERS = {
    "gpt2": ("tokenizers", "gpt2"),
    "qwen2": ("tokenizers", "qwen2"),
    "phi3": ("tokenizers", "llamacpp-vocab-tests", "ggml-vocab-phi-3.gguf"),
    "stories260K": ("models", "stories260K"),
}

# ---- the independent judge: the semantics written out with `regex` and `unicodedata` ----
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_WHITE = regex.compile(r"\p{White_Space}+")
_UNSPACED = r"\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}\p{scx=Myanmar}"
WORD = rf"[[\p{{L}}\p{{N}}\p{{M}}_]--[{_UNSPACED}]]"
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})


def judge_normalise(text: str) -> str:
    t = _IGNORABLE.sub("", text)
    for _ in range(2):  # compatibility caseless: NFKD(casefold(NFKD(x)))
        t = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", t).casefold())
    return _WHITE.sub(" ", _IGNORABLE.sub("", t)).translate(_QUOTES)


def independent_regex(phrase: str) -> regex.Pattern:
    p = judge_normalise(phrase).strip(" ")
    body = regex.escape(p)
    if regex.match(WORD, p[0], flags=regex.V1):
        body = f"(?<!{WORD})" + body
    if regex.match(WORD, p[-1], flags=regex.V1):
        body = body + f"(?!{WORD})"
    return regex.compile(body, regex.V1)


REGEXES = [independent_regex(p) for p in PHRASES]


def judge(text: str):
    """(phrase, span in the normalised text) of the first match, or None."""
    norm = judge_normalise(text)
    for p, rx in zip(PHRASES, REGEXES):
        m = rx.search(norm)
        if m:
            return p, m.span()
    return None


def setup(name, confusables=False):
    return _setup(name, confusables)  # one cache entry whether or not the option is passed


@lru_cache(maxsize=None)
def _setup(name, confusables):
    from transformers import AutoTokenizer

    where = TOKENIZERS[name]
    if where[-1].endswith(".gguf"):
        tok = AutoTokenizer.from_pretrained(need_data(*where[:-1]), gguf_file=need_data(*where).name)
    else:
        tok = AutoTokenizer.from_pretrained(need_data(*where))
    proc = cull.CullLogitsProcessor(cull.PhraseSet(PHRASES, confusables=confusables), tok, cache=False)
    vocab = __import__("cull.compile.cache", fromlist=["as_vocab"]).as_vocab(tok)
    by_bytes = {}
    for i, b in enumerate(vocab.token_bytes):
        if b and i not in vocab.special_ids:
            by_bytes.setdefault(b, []).append(i)
    return tok, proc, vocab, by_bytes


IGNORABLES = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u00ad", "\ufe0f"]
SPACES = [" ", " ", "  ", "\n", " \n ", "\u00a0", "\u2009", "\u202f", "\u3000", "\u2028"]


def disguise_char(rnd: random.Random, ch: str) -> str:
    c = ch.upper() if rnd.random() < 0.3 else ch
    style = rnd.random() if len(c) == 1 else 1.0  # "ß".upper() is "SS"
    if "a" <= c.lower() <= "z" and style < 0.15:  # fullwidth
        c = chr(ord(c) + 0xFEE0)
    elif "a" <= c <= "z" and style < 0.3:  # mathematical bold
        c = chr(0x1D41A + ord(c) - ord("a"))
    elif "A" <= c <= "Z" and style < 0.3:
        c = chr(0x1D400 + ord(c) - ord("A"))
    elif style < 0.5:
        c = unicodedata.normalize("NFD", c)  # é -> e + U+0301; plain letters unchanged
    if rnd.random() < 0.12:
        c = rnd.choice(IGNORABLES) + c
    return c


def spelling(rnd: random.Random, phrase: str) -> str:
    if "ß" in phrase and rnd.random() < 0.5:
        phrase = phrase.replace("ß", rnd.choice(["ss", "SS"]))
    out = []
    for ch in phrase:
        if ch == " ":
            out.append(rnd.choice(SPACES))
        elif ch == "'":
            out.append(rnd.choice(["'", "\u2019", "\u2018", "\u02bc"]))
        else:
            out.append(disguise_char(rnd, ch))
    if any("\u4e00" <= ch <= "\u9fff" for ch in phrase):  # inside running Chinese text
        return rnd.choice(["", "我说", "他们"]) + "".join(out) + rnd.choice(["", "世界", "。"])
    prefix = rnd.choice(["", "", "So ", "And, ", "\n", "it was ", "\u00a0", "\ufeff"])
    suffix = rnd.choice(["", ".", " and", ", ", "!", "\u200b", "\u3000"])
    return prefix + "".join(out) + suffix


@lru_cache(maxsize=None)
def _noise(V):
    return torch.randn(4 * V, generator=torch.Generator().manual_seed(V))


def noise(V, rnd):
    k = rnd.randrange(3 * V)
    return _noise(V)[k:k + V].clone().unsqueeze(0)


def adversarial_generation(name: str, rnd: random.Random, spell=spelling, confusables=False) -> tuple[str, str]:
    tok, proc, vocab, by_bytes = setup(name, confusables)
    V = len(vocab.token_bytes)
    target = spell(rnd, rnd.choice(PHRASES)).encode()
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
        hit = judge(t)
        assert hit is None, f"{name}: {hit[0]!r} appears in {t!r} (normalised: {judge_normalise(t)!r})"


EXAMPLES = int(SLOW or 250)  # x 4 tokenizers: 1,000 generations


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
    @settings(max_examples=2500, deadline=None,  # x 4 tokenizers: 10,000 generations
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
    # de, fr, ru, el, tr, ja, zh, code, URLs
    "Die Straßenbahn fuhr über die Brücke; Grüße aus München, schöne Straßen und ein Kaffeehaus.",
    "Nous étions à la cafétéria\u00a0; l\u2019été dernier, où était-elle\u202f? Déjà vu, naïveté, cœur.",
    "Москва — столица России; мы говорили о погоде, ёлках и зиме. Класс!",
    "Ο Σωκράτης ήταν ΣΟΦΟΣ· η θάλασσα είναι γαλάζια, και οι ΚΑΦΕΤΕΡΙΕΣ γεμάτες.",
    "İstanbul\u2019da ılık bir gün; IĞDIR ve çiçekler, şeker ve ağaç. Kafeler açık.",
    "彼は東京で小説を書いた。カタカナとひらがなの文章です。コーヒーを飲みます。",
    "我们今天去公园散步，天气很好。你们好吗？世界很大。",
    "def delve_into(x):\n    return x.tapestry_count + classify(ass_ert)  # moreover_flag\n",
    "See https://example.com/delved/tapestries?q=moreovers&ref=class#assistant or mailto:cafes@x.org.",
]


def random_tokenization(vocab, by_bytes, data: bytes, rnd: random.Random) -> list[int]:
    """`data` as a random sequence of vocabulary tokens (byte tokens split its characters)."""
    ids, pos = [], 0
    while pos < len(data):
        cands = [i for n in range(1, min(len(data) - pos, 24) + 1) for i in by_bytes.get(data[pos:pos + n], [])]
        assert cands, data[pos:]
        t = rnd.choice(cands)
        ids.append(t)
        pos += len(vocab.token_bytes[t])
    return ids


def teacher_force(name, ids, text, confusables=False):
    """Over-bans of benign `ids`: every banned token must be the end-of-word case (a match in the
    text so far that ends in that token, decoded with errors="replace"). The processor (torch
    backend) is checked against the host reference (`CompiledMatcher.banned`) at every step."""
    tok, proc, vocab, _ = setup(name, confusables)
    rules = cull.PhraseSet(PHRASES, confusables=confusables)
    m = proc.matcher
    V = len(vocab.token_bytes)
    over, state, sofar = [], m.initial_state(), b""
    proc.reset()
    for k, t in enumerate(ids):
        piece = vocab.token_bytes[t]
        scores = proc(torch.tensor([[tok.bos_token_id or 0] + ids[:k]]), torch.zeros(1, V))
        banned = set(torch.nonzero(scores[0] == float("-inf")).flatten().tolist())
        assert banned == set(m.banned(state)), f"{name}: torch backend != reference after {sofar!r}"
        if t in banned:
            assert oracle(sofar, piece, rules) is not None, (
                f"{name}: token {piece!r} at step {k} of benign {text!r} was banned")
            over.append((sofar + piece).decode("utf-8", "replace")[-20:])
        state = m.advance(state, t)
        sofar += piece
    return over


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_benign_text_is_never_banned(name):
    """Teacher-force benign texts in several languages, in the tokenizer's own tokenization and in
    two random ones. A token may be banned only in the documented end-of-word case: it writes a
    phrase's last character and ends right there (or inside the next character), e.g. "café" +
    "téria" or "ass" + "istant" in a small vocabulary."""
    tok, proc, vocab, by_bytes = setup(name)
    rnd = random.Random(0)
    over_bans, n_tokens, own_bans, n_own = [], 0, 0, 0
    for text in BENIGN:
        assert judge(text) is None, text
        assert cull.find(text, PHRASES) == []
        data = text.encode()
        own = tok.encode(text, add_special_tokens=False)
        assert b"".join(vocab.token_bytes[i] for i in own).decode("utf-8", "replace").strip() == text.strip()
        for ids in (own, random_tokenization(vocab, by_bytes, data, rnd),
                    random_tokenization(vocab, by_bytes, data, rnd)):
            over = teacher_force(name, ids, text)
            over_bans += over
            n_tokens += len(ids)
            if ids is own:
                own_bans += len(over)
                n_own += len(ids)
    print(f"\n{name}: end-of-word bans: {own_bans} of {n_own} tokens in the tokenizer's own tokenization, "
          f"{len(over_bans)} of {n_tokens} in all three: {over_bans}")
    assert len(over_bans) <= n_tokens // 50, over_bans


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
