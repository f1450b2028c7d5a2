"""The normalising transducer: raw text bytes -> the symbol stream the automaton reads.

Matching is defined on characters (docs/automaton.md, "What is matched"). Every code point maps on
its own to a normalised string (`fold_char`): compatibility decomposition (NFKD: fullwidth, math letters,
ligatures, composed = decomposed), full case folding, every White_Space character -> " ",
default-ignorable code points -> nothing, typographic quotes -> ' and ". Optionally, nonspacing marks
are dropped (accent-insensitive), and characters that look alike count as one (FOLD_CONFUSABLES:
Unicode's confusable prototypes, UTS #39, applied to the folded character and folded again). Each
normalised character has a class: WORD (letters, marks, digits, "_"), SPACE, or OTHER (everything
else, and the letters of scripts written without spaces).

The transducer decodes UTF-8 (invalid bytes become U+FFFD exactly as Python's errors="replace"),
emits each character's normalised string, collapses runs of spaces and inserts BOUNDARY wherever the
text moves between a word character and a non-word one. Its state is the class of the last
character and the bytes of an unfinished character (a token may end inside one), packed in one int:
`cls + 3 * pending_code`; a state < 3 has no pending bytes.
"""
from __future__ import annotations

import codecs
import re
import unicodedata
from functools import lru_cache

from cull.text.unicode_tables import has_property

OTHER, WORD, SPACE = 0, 1, 2
CLASS_NAMES = ("other", "word", "space")

BOUNDARY = 0x0A  # "\n" never survives normalisation (whitespace becomes " "), so it is free
NUL_STANDIN = 0x09  # "\t" never survives either; stands in for NUL so numpy "S" keys keep it
REPLACEMENT = "\ufffd"  # what invalid UTF-8 decodes to; never part of a phrase

FOLD_CASE, FOLD_QUOTES, FOLD_ACCENTS, FOLD_CONFUSABLES = 1, 2, 4, 8
DEFAULT_FOLD = FOLD_CASE | FOLD_QUOTES
QUOTE_FOLD = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'}


# ---- characters ----
def _nfkd_fold(s: str, fold_case: bool) -> str:
    # NFKD(casefold(NFKD(s))) until stable: Unicode's compatibility caseless match (D146) needs
    # the decomposition both before and after folding
    for _ in range(4):
        t = unicodedata.normalize("NFKD", s)
        if fold_case:
            t = unicodedata.normalize("NFKD", t.casefold())
        if t == s:
            break
        s = t
    return s


# ---- confusables (optional) ----
SKELETON_ROUNDS = 4  # prototypes of folded prototypes: "%" -> "º/₀" -> "o/0" -> "o/o" takes two


def _invisible_or_space(ch: str) -> bool:
    return has_property("ignorable", ord(ch)) or has_property("white_space", ord(ch))


@lru_cache(maxsize=2)
def _prototype_table(fold_case: bool) -> dict[str, str]:
    """Folded character -> its confusable prototype. Only characters that folding leaves alone are
    keys: the prototype is looked up after folding, so the option only ever merges what the default
    semantics already tell apart (it is coarser, never different)."""
    from cull.text.confusables import prototypes

    protos = prototypes()
    table = {src: proto for src, proto in protos.items()
             if not _invisible_or_space(src) and _nfkd_fold(src, fold_case) == src}
    if fold_case:
        # folding first means a capital's own prototype is never looked up: Cyrillic "Н" folds to
        # "н", whose prototype is the small capital "ʜ". Where a capital's prototype is ASCII and its
        # lower case's is not, the capital's counts, so capitals disguise no better than lower case
        better: dict[str, list[tuple[str, str]]] = {}
        for src, proto in protos.items():
            low = _nfkd_fold(src, True)
            if len(low) != 1 or low == src or unicodedata.normalize("NFKD", src) != src:
                continue  # only case pairs: a compatibility form's look is not its decomposition's
            theirs = _nfkd_fold(proto, True)
            if theirs.isascii() and not table.get(low, low).isascii():
                better.setdefault(low, []).append((theirs, proto))
        table.update((low, min(cands)[1]) for low, cands in better.items())
    return table


def _skeleton(folded: str, fold_case: bool) -> str:
    """Prototypes of already-folded characters, folded again, until nothing changes."""
    table = _prototype_table(fold_case)
    for _ in range(SKELETON_ROUNDS):
        out = _nfkd_fold("".join(table.get(u, u) for u in folded), fold_case)
        if out == folded:
            break
        folded = out
    return folded


def _fold_char_uncached(ch: str, fold: int) -> str:
    if has_property("ignorable", ord(ch)):
        return ""
    if has_property("white_space", ord(ch)):
        return " "
    out = []
    folded = _nfkd_fold(ch, bool(fold & FOLD_CASE))
    if fold & FOLD_CONFUSABLES:
        folded = _skeleton(folded, bool(fold & FOLD_CASE))
    for u in folded:
        cp = ord(u)
        if has_property("ignorable", cp):
            continue
        if has_property("white_space", cp):
            u = " "
        elif fold & FOLD_QUOTES:
            u = QUOTE_FOLD.get(u, u)
        if fold & FOLD_ACCENTS and unicodedata.category(u) == "Mn":
            continue
        out.append(u)
    return "".join(out)


_FOLD_CACHE: dict[tuple[str, int], str] = {}
CACHE_LIMIT = 200_000  # per-character caches; far more than any vocabulary's distinct characters


def fold_char(ch: str, fold: int = DEFAULT_FOLD) -> str:
    """The normalised string of one character ("" for a default-ignorable one)."""
    key = (ch, fold)
    hit = _FOLD_CACHE.get(key)
    if hit is None:
        if len(_FOLD_CACHE) > CACHE_LIMIT:
            _FOLD_CACHE.clear()
        hit = _FOLD_CACHE[key] = _fold_char_uncached(ch, fold)
    return hit


_CLASS_CACHE: dict[str, int] = {}


def norm_class(u: str) -> int:
    """Class of one *normalised* character."""
    c = _CLASS_CACHE.get(u)
    if c is None:
        if u == " ":
            c = SPACE
        elif u == "_" or unicodedata.category(u)[0] in "LNM":
            c = OTHER if has_property("unspaced", ord(u)) else WORD
        else:
            c = OTHER
        if len(_CLASS_CACHE) > CACHE_LIMIT:
            _CLASS_CACHE.clear()
        _CLASS_CACHE[u] = c
    return c


def char_units(ch: str, fold: int = DEFAULT_FOLD) -> list[tuple[str, int]]:
    """(normalised character, class) for each character `ch` normalises to."""
    return [(u, norm_class(u)) for u in fold_char(ch, fold)]


def char_class(ch: str, fold: int = DEFAULT_FOLD) -> int | None:
    """Class of the first character `ch` normalises to (None for a default-ignorable character)."""
    s = fold_char(ch, fold)
    return norm_class(s[0]) if s else None


def is_wordlike(ch: str) -> bool:
    """A letter or digit of any script (the check that a phrase is more than punctuation)."""
    return any(unicodedata.category(u)[0] in "LN" for u in fold_char(ch))


def text_units(text: str, fold: int = DEFAULT_FOLD) -> list[tuple[str, int, int]]:
    """(normalised character, class, index of the source character) over a whole string."""
    return [(u, c, i) for i, ch in enumerate(text) for u, c in char_units(ch, fold)]


# ---- symbols ----
_SYM_CACHE: dict[tuple[str, int], tuple[tuple[int, bytes], ...]] = {}


def _char_symbols(ch: str, fold: int) -> tuple[tuple[int, bytes], ...]:
    key = (ch, fold)
    hit = _SYM_CACHE.get(key)
    if hit is None:
        hit = tuple((c, _symbol_bytes(u)) for u, c in char_units(ch, fold))
        if len(_SYM_CACHE) > CACHE_LIMIT:  # a text of every code point must not grow it without bound
            _SYM_CACHE.clear()
        _SYM_CACHE[key] = hit
    return hit


def _symbol_bytes(u: str) -> bytes:
    return bytes([NUL_STANDIN]) if u == "\0" else u.encode("utf-8", "surrogatepass")


def emit(text: str, cls: int, fold: int, out: bytearray) -> int:
    """Append the symbols of decoded `text` to `out` from class `cls`; return the class after."""
    return emit_symbols((p for ch in text for p in _char_symbols(ch, fold)), cls, out)


def emit_units(units, cls: int, out: bytearray) -> int:
    """emit() for characters already normalised: (normalised character, class) pairs."""
    return emit_symbols(((c, _symbol_bytes(u)) for u, c in units), cls, out)


def emit_symbols(pairs, cls: int, out: bytearray) -> int:
    B = BOUNDARY
    for c, sym in pairs:
        if c == SPACE:
            if cls == SPACE:
                continue
            if cls == WORD:
                out.append(B)
            out.append(0x20)
        else:
            if (c == WORD) != (cls == WORD):
                out.append(B)
            out += sym
        cls = c
    return cls


# ---- the transducer state ----
def pack(cls: int, pending: bytes) -> int:
    return cls + 3 * (int.from_bytes(b"\x01" + pending, "big") if pending else 0)


def unpack(state: int) -> tuple[int, bytes]:
    if state < 3:
        return state, b""
    code = state // 3
    return state % 3, code.to_bytes((code.bit_length() + 7) // 8, "big")[1:]


def state_class(state: int) -> int:
    return state % 3


_UTF8 = codecs.getincrementaldecoder("utf-8")


def decode_step(data: bytes, pending: bytes = b"") -> tuple[str, bytes]:
    """Decode `data` after the unfinished bytes `pending`, as Python's errors="replace" would; return
    the finished characters and the bytes of a character still unfinished at the end."""
    dec = _UTF8("replace")
    if pending:
        dec.setstate((pending, 0))
    text = dec.decode(data, False)
    return text, dec.getstate()[0]


_WS_RUN = re.compile(rb"[ \t\n\r\x0b\x0c]+")
_WORD_EDGE = re.compile(rb"(?<=[0-9A-Za-z_])(?=[^0-9A-Za-z_])|(?<=[^0-9A-Za-z_])(?=[0-9A-Za-z_])")
ASCII_CLASS = bytes(SPACE if b in b" \t\n\r\x0b\x0c" else (WORD if chr(b).isalnum() or b == 0x5F else OTHER)
                     for b in range(128))


def transduce(data: bytes, state: int = OTHER, fold: int = DEFAULT_FOLD) -> tuple[bytes, int]:
    """Feed raw bytes from transducer state `state`; return (symbols, state after)."""
    if not data:
        return b"", state
    if state < 3 and data.isascii() and b"\0" not in data:
        if not fold & FOLD_CONFUSABLES:
            # ASCII normalises to itself (lower-cased): no ASCII character is ignorable, decomposable or
            # a typographic quote, and its White_Space characters are exactly the ones _WS_RUN collapses
            return _transduce_ascii(data, state, bool(fold & FOLD_CASE))
        table = _ascii_fold_table(fold)
        if table is not None:  # prototypes of ASCII are ASCII ("m" -> "rn", "0" -> "o"): fold, then as above
            folded = data.decode("ascii").translate(table).encode("ascii")
            return _transduce_ascii(folded, state, False) if folded else (b"", state)
    return transduce_plain(data, state, fold)


@lru_cache(maxsize=8)
def _ascii_fold_table(fold: int) -> dict[int, str] | None:
    """str.translate table of every ASCII character's normalised string, or None if one is not ASCII."""
    table = {b: fold_char(chr(b), fold) for b in range(1, 128)}
    return table if all(s.isascii() for s in table.values()) else None


def transduce_plain(data: bytes, state: int = OTHER, fold: int = DEFAULT_FOLD) -> tuple[bytes, int]:
    """The transducer by its definition (transduce() has a fast path for plain ASCII)."""
    cls, pending = unpack(state)
    text, pending = decode_step(data, pending)
    out = bytearray()
    cls = emit(text, cls, fold, out)
    return bytes(out), pack(cls, pending)


def _transduce_ascii(data: bytes, cls: int, fold_case: bool) -> tuple[bytes, int]:
    # the same function as transduce_plain, with C-speed regexes
    s = _WS_RUN.sub(b" ", data.lower() if fold_case else data)
    if cls == SPACE and s[:1] == b" ":
        s = s[1:]
        if not s:
            return b"", SPACE
    s = _WORD_EDGE.sub(b"\n", s)
    first = ASCII_CLASS[s[0]]
    if (first == WORD) != (cls == WORD):
        s = b"\n" + s
    return s, ASCII_CLASS[s[-1]]


def symbols_class(symbols: bytes, cls: int = OTHER) -> int:
    """Class after `symbols` (normalised bytes, whole characters), from class `cls`."""
    body = symbols.replace(bytes([BOUNDARY]), b"")
    if not body:
        return cls
    last = body.decode("utf-8", "ignore")[-1:]
    if not last:
        return cls
    return OTHER if last == "\t" else norm_class(last)


def fold_flags(ignore_case: bool = True, fold_quotes: bool = True, ignore_accents: bool = False,
               confusables: bool = False) -> int:
    return (FOLD_CASE if ignore_case else 0) | (FOLD_QUOTES if fold_quotes else 0) | \
        (FOLD_ACCENTS if ignore_accents else 0) | (FOLD_CONFUSABLES if confusables else 0)
