"""cull.compile.vocab: every token id -> the exact bytes it adds to the text.

Checked three ways: against ``tokenizer.decode`` on random multilingual texts, against
single-token decodes of the whole vocabulary, and against llama.cpp's reference token
ids (whose bytes must rebuild the reference inputs).
"""

import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cull.compile.vocab import TokenVocab, VocabError, vocab_from_token_bytes, vocab_from_tokenizer

REPO = Path(__file__).resolve().parents[2]
LLAMACPP = ("tokenizers", "llamacpp-vocab-tests")


def _data(*parts: str) -> Path:
    """Self-contained twin of conftest.need_data: skip if absent, fail under CULL_REQUIRE_DATA=1."""
    root = Path(os.environ.get("CULL_DATA_DIR") or REPO.parent / "shared" / "data")
    path = root.joinpath(*parts)
    if not path.exists():
        msg = f"test data {path} is missing; set CULL_DATA_DIR to the shared data folder"
        if os.environ.get("CULL_REQUIRE_DATA") == "1":
            pytest.fail(msg + " [CULL_REQUIRE_DATA=1 makes missing data an error]", pytrace=False)
        pytest.skip(msg)
    return path


@functools.lru_cache(maxsize=None)
def _load(name: str):
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer
    if name == "gpt2":
        return auto.from_pretrained(_data("tokenizers", "gpt2"))
    if name == "qwen2":
        return auto.from_pretrained(_data("tokenizers", "qwen2"))
    if name == "stories260K":
        # The class AutoTokenizer picks (tokenizer_config.json says LlamaTokenizer), without
        # AutoConfig's import of the Llama modelling stack (~2 s).
        return transformers.LlamaTokenizer.from_pretrained(_data("models", "stories260K"))
    if name == "phi3":
        pytest.importorskip("gguf")
        _data(*LLAMACPP, "ggml-vocab-phi-3.gguf")
        return auto.from_pretrained(_data(*LLAMACPP), gguf_file="ggml-vocab-phi-3.gguf")
    raise KeyError(name)


@functools.lru_cache(maxsize=None)
def _vocab(name: str) -> TokenVocab:
    return vocab_from_tokenizer(_load(name))


SPM = {"stories260K", "phi3"}
NAMES = ["gpt2", "qwen2", "stories260K", "phi3"]


def _expected_decode(name: str, text: str) -> str:
    # SentencePiece decoders drop the one leading space of a sequence (Strip/Metaspace); the
    # vocabulary keeps the true bytes, so the comparison applies that documented clean-up.
    return text[1:] if name in SPM and text.startswith(" ") else text


def _random_texts(n: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        "Hello", "world", "the", "cat", "sat", "don't", "I'm", "3.14", "2024", "x=y+1", "foo_bar",
        ",", ".", "!", "?", ";", ":", "...", "--", "(", ")", "[", "]", "{", "}", "'", '"', "#", "@",
        "café", "naïve", "Größe", "señor", "Ångström", "e\u0301", "ÿ", "œuvre",
        "\u2019", "\u201c", "\u201d", "it\u2019s", "\u201cquoted\u201d", "\u2014", "\u00bd", "\u00a0",
        "日本語", "中文", "你好世界", "한국어", "カタカナ", "Привет", "مرحبا", "שלום", "ελληνικά",
        "😀", "👍🏽", "🇫🇷", "👨\u200d👩\u200d👧", "🎉🎉", "\u2581", "<0x41>", "▁▁",
    ]
    seps = ["", " ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "\r\n"]
    texts = []
    for _ in range(n):
        parts = [rng.choice(seps) if rng.random() < 0.2 else ""]
        for _ in range(rng.randint(1, 12)):
            parts += [rng.choice(pieces), rng.choice(seps)]
        texts.append("".join(parts))
    return texts


TEXTS = _random_texts(300)


@pytest.mark.parametrize("name", NAMES)
def test_decode_matches_token_bytes_on_random_texts(name):
    tok, vocab = _load(name), _vocab(name)
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        joined = b"".join(vocab.token_bytes[i] for i in ids).decode("utf-8", errors="replace")
        decoded = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert decoded == _expected_decode(name, joined), (text, ids)


@pytest.mark.parametrize("name", NAMES)
def test_every_single_token_decodes_to_its_bytes(name):
    tok, vocab = _load(name), _vocab(name)
    ids = [i for i in range(len(vocab)) if i not in vocab.special_ids]
    decoded = tok.backend_tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)
    bad = [
        (i, vocab.token_bytes[i], d) for i, d in zip(ids, decoded)
        if d != _expected_decode(name, vocab.token_bytes[i].decode("utf-8", errors="replace"))
    ]
    assert not bad, bad[:10]


def _llamacpp_cases(stem: str) -> list[tuple[str, list[int]]]:
    """llama.cpp test format: inputs separated by a __ggml_vocab_test__ line, one id line each."""
    inp = _data(*LLAMACPP, stem + ".inp").read_text(encoding="utf-8")
    out = _data(*LLAMACPP, stem + ".out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    assert texts[-1] == ""
    texts = texts[:-1]
    lines = out.split("\n")[: len(texts)]
    assert len(lines) == len(texts) > 40
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.mark.parametrize(
    "name, stem",
    [("gpt2", "ggml-vocab-gpt-2.gguf"), ("qwen2", "ggml-vocab-qwen2.gguf"), ("phi3", "ggml-vocab-phi-3.gguf")],
)
def test_llamacpp_reference_ids_rebuild_inputs(name, stem):
    vocab = _vocab(name)
    for text, ids in _llamacpp_cases(stem):
        got = b"".join(vocab.token_bytes[i] for i in ids)
        # llama.cpp's SentencePiece ("llama") tokenizer prepends one space to non-empty input.
        want = (" " + text if name in SPM and text else text).encode("utf-8")
        assert got == want, (text, ids)


@pytest.mark.parametrize("name", NAMES)
def test_special_ids_are_empty_and_eos_known(name):
    tok, vocab = _load(name), _vocab(name)
    assert len(vocab) == len(tok)
    expected_special = set(tok.all_special_ids) | {
        i for i, t in tok.added_tokens_decoder.items() if t.special
    }
    assert expected_special <= vocab.special_ids
    assert all(vocab.token_bytes[i] == b"" for i in vocab.special_ids)
    assert all(vocab.token_bytes[i] for i in range(len(vocab)) if i not in vocab.special_ids)
    assert tok.eos_token_id in vocab.eos_ids and vocab.eos_ids <= vocab.special_ids
    assert vocab.kind == ("sentencepiece" if name in SPM else "byte-level-bpe")


def test_known_tokens():
    assert _vocab("gpt2").token_bytes[15496] == b"Hello" and _vocab("gpt2").token_bytes[995] == b" world"
    assert _vocab("qwen2").token_bytes[9707] == b"Hello" and _vocab("qwen2").token_bytes[1879] == b" world"
    qwen = _load("qwen2")
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert _vocab("qwen2").token_bytes[qwen.convert_tokens_to_ids(t)] == b""
    phi = _vocab("phi3")
    assert phi.token_bytes[13] == b"\n" and phi.token_bytes[259] == b"  " and phi.token_bytes[29871] == b" "
    # GGUF marks </s> as a user-defined (non-special) token; it is still a control piece.
    assert phi.token_bytes[2] == b"" and 2 in phi.special_ids
    assert 32007 in phi.special_ids  # <|end|>
    stories = _vocab("stories260K")
    assert stories.token_bytes[3] == b"\x00" and stories.token_bytes[258] == b"\xff"


def test_vocab_size_pads_to_model_width():
    width = json.loads(_data("tokenizers", "qwen2", "qwen2-1.5b-architecture.json").read_text())["vocab_size"]
    vocab = vocab_from_tokenizer(_load("qwen2"), vocab_size=width)
    assert len(vocab) == width == 151936
    assert set(range(len(_load("qwen2")), width)) <= vocab.special_ids
    assert vocab.token_bytes[: len(_vocab("qwen2"))] == _vocab("qwen2").token_bytes
    assert vocab.fingerprint() != _vocab("qwen2").fingerprint()


def test_vocab_size_too_small():
    gpt2 = _load("gpt2")
    assert len(vocab_from_tokenizer(gpt2, vocab_size=50256)) == 50256  # only cuts <|endoftext|>
    with pytest.raises(VocabError, match="would drop text token"):
        vocab_from_tokenizer(gpt2, vocab_size=50000)
    with pytest.raises(VocabError, match="vocab_size must be an int"):
        vocab_from_tokenizer(gpt2, vocab_size="50257")


def test_added_tokens():
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(_data("tokenizers", "gpt2", "tokenizer.json")))
    tok.add_tokens(["café crème", "<|my_marker|>"])
    tok.add_special_tokens(["<extra>"])
    vocab = vocab_from_tokenizer(tok)
    ids = {t: tok.token_to_id(t) for t in ("café crème", "<|my_marker|>", "<extra>")}
    # Non-special added text keeps its UTF-8 (the ByteLevel decoder would mangle the é).
    assert vocab.token_bytes[ids["café crème"]] == "café crème".encode("utf-8")
    assert ids["café crème"] not in vocab.special_ids
    assert vocab.token_bytes[ids["<|my_marker|>"]] == b"" and ids["<|my_marker|>"] in vocab.special_ids
    assert vocab.token_bytes[ids["<extra>"]] == b"" and ids["<extra>"] in vocab.special_ids


def test_bare_tokenizers_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    bare = tokenizers.Tokenizer.from_file(str(_data("tokenizers", "gpt2", "tokenizer.json")))
    vocab = vocab_from_tokenizer(bare)
    assert vocab.token_bytes == _vocab("gpt2").token_bytes
    assert vocab.special_ids == _vocab("gpt2").special_ids and vocab.eos_ids == frozenset()


def test_fingerprint_stable_and_distinct():
    fps = {name: _vocab(name).fingerprint() for name in NAMES}
    assert len(set(fps.values())) == len(NAMES)
    assert vocab_from_tokenizer(_load("stories260K")).fingerprint() == fps["stories260K"]


def test_fingerprint_pinned():
    # The serialisation is part of the contract (cache keys): pin it.
    small = vocab_from_token_bytes([b"", b"a", b"bc", b"\xff"], special_ids=[0], eos_ids=[0])
    assert small.fingerprint() == vocab_from_token_bytes([b"", b"a", b"bc", b"\xff"]).fingerprint()
    assert small.fingerprint() == "c57b74d69bed3a503e6f7a4d48e2eb317ccfb71d8e41c6039ebdf225bb3ae671"
    assert small.fingerprint() != vocab_from_token_bytes([b"", b"a", b"b", b"c\xff"]).fingerprint()
    assert small.fingerprint() != vocab_from_token_bytes([b"", b"a", b"bc", b"\xff", b""]).fingerprint()


def _wordpiece():
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "world": 4, "##s": 5}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    return tok


def test_unsupported_tokenizers_raise_helpful_errors():
    transformers = pytest.importorskip("transformers")
    bare = _wordpiece()
    with pytest.raises(VocabError, match="WordPiece") as err:
        vocab_from_tokenizer(bare)
    assert "vocab_from_token_bytes" in str(err.value)
    wrapped = transformers.PreTrainedTokenizerFast(tokenizer_object=bare, unk_token="[UNK]")
    with pytest.raises(VocabError, match="PreTrainedTokenizerFast|TokenizersBackend") as err:
        vocab_from_tokenizer(wrapped)
    assert "WordPiece" in str(err.value) and "vocab_from_token_bytes" in str(err.value)
    with pytest.raises(VocabError, match="no backend_tokenizer.*use_fast=True"):
        vocab_from_tokenizer(object())
    bare.decoder = None
    with pytest.raises(ValueError, match="no decoder"):
        vocab_from_tokenizer(bare)


def test_vocab_from_token_bytes():
    v = vocab_from_token_bytes([b"<s>"[:0], b"a", bytearray(b"b"), b""], eos_ids=[0])
    assert v.token_bytes == (b"", b"a", b"b", b"") and v.kind == "token-bytes"
    assert v.special_ids == {0, 3} and v.eos_ids == {0} and len(v) == 4
    assert "size=4" in repr(v) and len(repr(vocab_from_token_bytes([b"x"] * 100_000))) < 200
    with pytest.raises(VocabError, match=r"token_bytes\[1\] must be bytes.*encode"):
        vocab_from_token_bytes([b"a", "b"])
    with pytest.raises(VocabError, match="list of bytes"):
        vocab_from_token_bytes(b"abc")
    with pytest.raises(VocabError, match="special_ids must add no text"):
        vocab_from_token_bytes([b"a", b"b"], special_ids=[1])
    with pytest.raises(VocabError, match="outside the vocabulary"):
        vocab_from_token_bytes([b"a", b""], eos_ids=[2])
    with pytest.raises(VocabError, match="integer token ids"):
        vocab_from_token_bytes([b"a", b""], special_ids=["1"])


def test_module_imports_no_heavy_dependencies():
    # Import cull.compile.vocab without running cull/__init__.py (which pulls in torch for the processor).
    code = (
        "import sys, types; pkg = types.ModuleType('cull'); pkg.__path__ = ['cull']; sys.modules['cull'] = pkg; "
        "import cull.compile.vocab; print(sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
