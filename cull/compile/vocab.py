"""Map every token id of a tokenizer to the exact bytes it adds to the decoded text.

Phrase banning works on bytes, not on token strings, so each id needs the bytes
it contributes: ``b"".join(vocab.token_bytes[i] for i in ids)`` is the text.

Families (detected from the fast tokenizer's decoder):

* ``"byte-level-bpe"`` (GPT-2, Qwen2, Llama-3): pieces are written in GPT-2's
  byte-to-unicode alphabet; we invert that table.
* ``"sentencepiece"`` (Llama-2, Phi-3, stories260K): ``▁`` is a space,
  ``<0xNN>`` is the single byte NN, other pieces are their UTF-8.
  ``token_bytes`` holds the *true* bytes, space included: ``tokenizer.decode``
  strips one leading space at the start of a sequence (the Strip/Metaspace
  decoder), so ``decode(ids)`` equals the joined bytes minus that one space.
* ``"token-bytes"``: whatever the caller gave ``vocab_from_token_bytes``.

Special tokens, special added tokens (``<|im_start|>``), control pieces
(``<s>``, ``</s>``, ``<unk>``, ``<|...|>``) and unused ids map to ``b""`` and
are in ``special_ids``. Added tokens marked non-special whose content is
ordinary text map to their content's UTF-8, which is the text the user added
(tokenizers would push it through the byte-level decoder and mangle non-ASCII).
Ordinary vocabulary pieces are never guessed to be control tokens: e.g. the
Phi-3 GGUF's unused ``[PAD32011]``.. pieces map to their text, as ``decode`` does.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import operator
import re
from dataclasses import dataclass

import numpy as np

from cull.errors import CullError

__all__ = ["TokenVocab", "VocabError", "vocab_from_tokenizer", "vocab_from_token_bytes"]

_FIX = (
    "Fix: build the vocabulary yourself with "
    "cull.compile.vocab.vocab_from_token_bytes(token_bytes, special_ids=..., eos_ids=...), "
    "where token_bytes[i] is the exact bytes token i adds to the text."
)
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Added tokens flagged special=False that are still markup, not text: GGUF
# conversions (Phi-3) mark </s> as "user defined", Qwen2.5 does so for <|fim_*|>.
_CONTROL = re.compile(r"<\|[^\s]*\|>|</?(?:s|unk|pad|mask|bos|eos|cls|sep)>", re.IGNORECASE)


class VocabError(CullError):
    """The tokenizer cannot be mapped to token bytes (or the given bytes are malformed)."""


@dataclass(frozen=True, repr=False)
class TokenVocab:
    """Bytes per token id. Build with ``vocab_from_tokenizer`` or ``vocab_from_token_bytes``."""

    token_bytes: tuple[bytes, ...]  # index = token id; b"" for ids that add no text
    special_ids: frozenset[int]  # every id that adds no text (specials, control, unused, padding)
    eos_ids: frozenset[int]  # EOS ids the tokenizer knows about (may be empty)
    kind: str  # "byte-level-bpe" | "sentencepiece" | "token-bytes"

    def __len__(self) -> int:
        return len(self.token_bytes)

    def fingerprint(self) -> str:
        """SHA-256 hex of token bytes + special ids; stable across runs and platforms (a cache key)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            tb = self.token_bytes
            h = hashlib.sha256(b"cull.vocab/1\0")  # a format tag (cache keys), not a module path
            h.update(np.array([len(tb)], dtype="<u8").tobytes())
            h.update(np.fromiter(map(len, tb), dtype="<u8", count=len(tb)).tobytes())
            h.update(b"".join(tb))
            h.update(np.array(sorted(self.special_ids), dtype="<u8").tobytes())
            cached = h.hexdigest()
            object.__setattr__(self, "_fingerprint", cached)  # frozen: cache outside the fields
        return cached

    def __repr__(self) -> str:
        return (
            f"TokenVocab(kind={self.kind!r}, size={len(self)}, special={len(self.special_ids)}, "
            f"eos_ids={sorted(self.eos_ids)}, fingerprint={self.fingerprint()[:12]!r})"
        )


def vocab_from_token_bytes(token_bytes, special_ids=(), eos_ids=()) -> TokenVocab:
    """Wrap caller-supplied bytes per id (custom tokenizers, tests).

    Ids whose bytes are empty and all ``eos_ids`` are added to ``special_ids``.
    A special or EOS id with non-empty bytes is an error: it would hide text
    from phrase matching.

    >>> vocab = vocab_from_token_bytes([b" delve", b"d", b"elve", b"", b" the"], eos_ids=[3])
    >>> len(vocab), sorted(vocab.special_ids), vocab.kind
    (5, [3], 'token-bytes')
    >>> b"".join(vocab.token_bytes[i] for i in [4, 1, 2, 3])   # the text of a sequence of ids
    b' thedelve'
    """
    if isinstance(token_bytes, (bytes, str)) or not hasattr(token_bytes, "__iter__"):
        raise VocabError(
            f"token_bytes must be a list of bytes (one per token id), got {type(token_bytes).__name__}. {_FIX}"
        )
    tb = []
    for i, b in enumerate(token_bytes):
        if isinstance(b, (bytearray, memoryview)):
            b = bytes(b)
        elif not isinstance(b, bytes):
            hint = " (encode text with .encode('utf-8'))" if isinstance(b, str) else ""
            raise VocabError(f"token_bytes[{i}] must be bytes, got {type(b).__name__} {b!r}{hint}.")
        tb.append(b)
    special = _ids(special_ids, "special_ids", len(tb))
    eos = _ids(eos_ids, "eos_ids", len(tb))
    for name, ids in (("special_ids", special), ("eos_ids", eos)):
        bad = sorted(i for i in ids if tb[i])
        if bad:
            raise VocabError(
                f"{name} must add no text, but token {bad[0]} has bytes {tb[bad[0]]!r} "
                f"({len(bad)} such ids). Fix: set their token_bytes to b\"\" or leave them out of {name}."
            )
    return _make(tb, special | eos, eos, "token-bytes")


def vocab_from_tokenizer(tokenizer, vocab_size: int | None = None) -> TokenVocab:
    """Map a Hugging Face fast tokenizer (or a ``tokenizers.Tokenizer``) to a ``TokenVocab``.

    ``vocab_size``: the model's logits width; ids past the tokenizer's vocab map
    to ``b""`` (special). A smaller width is allowed only if it cuts off no text token.

    A byte-level BPE tokenizer built in place (GPT-2's alphabet writes a space as ``Ġ``):

    >>> from tokenizers import Tokenizer, decoders, models
    >>> tok = Tokenizer(models.BPE({"Ġdelve": 0, "d": 1, "elve": 2, "Ġthe": 3}, []))
    >>> tok.decoder = decoders.ByteLevel()
    >>> vocab = vocab_from_tokenizer(tok, vocab_size=6)
    >>> vocab.kind, vocab.token_bytes
    ('byte-level-bpe', (b' delve', b'd', b'elve', b' the', b'', b''))
    """
    backend = _backend(tokenizer)
    decoder = _state(getattr(backend, "decoder", None))
    kind, piece_to_bytes, spm_controls = _family(tokenizer, backend, decoder)

    added = _added_tokens(tokenizer, backend)
    n = max([backend.get_vocab_size(with_added_tokens=True), *(i + 1 for i in added)])
    pieces = list(map(backend.id_to_token, range(n)))
    special = set()
    if None in pieces:  # gaps in the id space
        special = {i for i, p in enumerate(pieces) if p is None}
        for i in special:
            pieces[i] = ""
    tb = piece_to_bytes(pieces)

    for i, (content, is_special) in added.items():
        if is_special or _CONTROL.fullmatch(content):
            special.add(i)
        else:
            tb[i] = content.encode("utf-8")
    special.update(_known_special_ids(tokenizer, backend, n))
    if spm_controls:  # SentencePiece control pieces that were not registered as added tokens
        special.update(i for i, p in enumerate(pieces) if p in ("<s>", "</s>", "<unk>", "<pad>"))
    eos = {i for i in _eos_ids(tokenizer) if 0 <= i < n}
    special |= eos
    for i in special:
        tb[i] = b""

    if vocab_size is not None:
        try:
            width = operator.index(vocab_size)
        except TypeError:
            raise VocabError(f"vocab_size must be an int (the model's logits width), got {vocab_size!r}.") from None
        if width < n:
            cut = [i for i in range(width, n) if tb[i]]
            if cut:
                raise VocabError(
                    f"vocab_size={width} is smaller than the tokenizer's {n} ids and would drop text "
                    f"token {cut[0]} ({tb[cut[0]]!r}). Fix: pass the model's logits width "
                    f"(model.config.vocab_size or logits.shape[-1])."
                )
            del tb[width:]
            special = {i for i in special if i < width}
            eos = {i for i in eos if i < width}
        else:
            special.update(range(n, width))
            tb.extend([b""] * (width - n))
    return _make(tb, special, eos, kind)


# --- helpers -------------------------------------------------------------------------------


def _make(tb, special, eos, kind) -> TokenVocab:
    special = set(special)
    special.update(i for i, b in enumerate(tb) if not b)
    return TokenVocab(tuple(tb), frozenset(special), frozenset(eos), kind)


def _ids(ids, name, n) -> set[int]:
    if isinstance(ids, (int, np.integer)):
        ids = (ids,)
    out = set()
    for x in ids:
        try:
            i = operator.index(x)
        except TypeError:
            raise VocabError(f"{name} must hold integer token ids, got {x!r}.") from None
        if not 0 <= i < n:
            raise VocabError(f"{name} has id {i}, outside the vocabulary of {n} tokens (ids 0..{n - 1}).")
        out.add(i)
    return out


def _backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and all(hasattr(tokenizer, a) for a in ("id_to_token", "get_added_tokens_decoder")):
        backend = tokenizer  # a bare tokenizers.Tokenizer
    if backend is None:
        raise VocabError(
            f"cull needs a fast tokenizer (backed by the `tokenizers` library), got "
            f"{type(tokenizer).__module__}.{type(tokenizer).__name__}, which has no backend_tokenizer. "
            f"Fix: load it with AutoTokenizer.from_pretrained(..., use_fast=True), or build the "
            f"vocabulary yourself with cull.compile.vocab.vocab_from_token_bytes(...)."
        )
    return backend


def _state(component) -> dict | None:
    if component is None:
        return None
    try:
        return json.loads(component.__getstate__())
    except Exception as exc:  # e.g. a custom Python decoder, which tokenizers cannot serialise
        raise VocabError(f"cannot read the tokenizer's decoder {component!r} ({exc}). {_FIX}") from exc


def _family(tokenizer, backend, decoder):
    """Pick the piece->bytes rule from the decoder, which is what defines a token's text."""
    model = type(getattr(backend, "model", None)).__name__
    steps = [] if decoder is None else decoder["decoders"] if decoder.get("type") == "Sequence" else [decoder]
    types = [s.get("type") for s in steps]
    shown = "none" if decoder is None else ", ".join(map(str, types))
    what = f"{type(tokenizer).__name__} (model {model}, decoder {shown})"
    if decoder is None:
        raise VocabError(f"{what} has no decoder, so its tokens have no defined text. {_FIX}")
    if model in ("WordPiece", "WordLevel") or "WordPiece" in types:
        raise VocabError(
            f"unsupported tokenizer {what}: WordPiece/BERT-style tokenizers add or drop spaces "
            f"between tokens when decoding, so a token has no fixed bytes. {_FIX}"
        )
    if "ByteLevel" in types and set(types) <= {"ByteLevel", "Fuse"}:
        return "byte-level-bpe", _byte_level_pieces, False
    space = None
    for s in steps:
        if s.get("type") == "Metaspace":
            space = s.get("replacement", "\u2581")
        elif s.get("type") == "Replace" and s.get("content") == " " and "String" in s.get("pattern", {}):
            space = s["pattern"]["String"]
        elif s.get("type") == "Strip" and s.get("content") == " " and not s.get("stop"):
            pass  # the documented leading-space clean-up
        elif s.get("type") not in ("ByteFallback", "Fuse"):
            space = None
            break
    if space and model in ("BPE", "Unigram"):
        fallback = "ByteFallback" in types
        return "sentencepiece", lambda pieces: _spm_pieces(pieces, space, fallback), True
    raise VocabError(
        f"unsupported tokenizer {what}: cull knows byte-level BPE (GPT-2, Qwen2, Llama-3) and "
        f"SentencePiece-style (Llama-2, Phi-3) decoders. {_FIX}"
    )


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable char table: printable Latin-1 bytes stand for
    themselves, the other 68 bytes take consecutive code points from U+0100 in byte order."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shifted = {}, 0x100
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(shifted)
            shifted += 1
    return table


# A charmap codec built from the table encodes a whole piece in C (2x faster than
# str.translate). Chars outside the alphabet fall back to UTF-8, as tokenizers does.
_ALPHABET = _gpt2_byte_alphabet()
_FROM_ALPHABET = {c: b for b, c in _ALPHABET.items()}
_CHARMAP = codecs.charmap_build("".join(_ALPHABET[b] for b in range(256)))


def _byte_level_pieces(pieces) -> list[bytes]:
    encode, charmap = codecs.charmap_encode, _CHARMAP
    try:
        return [encode(p, "strict", charmap)[0] for p in pieces]
    except UnicodeEncodeError:
        return [_byte_level_slow(p) for p in pieces]


def _byte_level_slow(piece: str) -> bytes:  # rare: a piece outside the alphabet
    out = bytearray()
    for ch in piece:
        b = _FROM_ALPHABET.get(ch)
        out += ch.encode("utf-8") if b is None else bytes((b,))
    return bytes(out)


def _spm_pieces(pieces, space: str, byte_fallback: bool) -> list[bytes]:
    out = [p.replace(space, " ").encode("utf-8") for p in pieces]
    if byte_fallback:
        for i, p in enumerate(pieces):
            if p[:3] == "<0x" and (m := _BYTE_PIECE.fullmatch(p)):
                out[i] = bytes((int(m.group(1), 16),))
    return out


def _added_tokens(tokenizer, backend) -> dict[int, tuple[str, bool]]:
    table = getattr(tokenizer, "added_tokens_decoder", None)
    if not isinstance(table, dict):
        table = backend.get_added_tokens_decoder()
    return {int(i): (str(t.content if hasattr(t, "content") else t), bool(getattr(t, "special", False)))
            for i, t in table.items()}


def _known_special_ids(tokenizer, backend, n) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    unk = getattr(backend.model, "unk_token", None)  # the model's unk piece is never text
    if isinstance(unk, str) and backend.token_to_id(unk) is not None:
        ids.add(backend.token_to_id(unk))
    return {i for i in ids if isinstance(i, int) and 0 <= i < n}


def _eos_ids(tokenizer) -> set[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        return set()
    if isinstance(eos, int):
        return {eos}
    return {int(i) for i in eos if isinstance(i, (int, np.integer))}
