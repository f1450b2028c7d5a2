"""The normalising transducer: raw text bytes -> the symbol stream the automaton reads.

Matching is defined on characters (see docs/automaton.md):
  * ASCII letters compare case-insensitively; a word with non-ASCII letters matches in lower case,
    UPPER case or Capitalised form; the typographic quotes ’ ‘ ʼ count as ' and “ ” as ";
  * every run of ASCII whitespace counts as one space;
  * the word class of a character is a function of its first UTF-8 byte (WORD, OTHER or SPACE), so it
    is known the moment the character starts, whatever tokenization split it.

The byte-level transducer lowercases ASCII, collapses whitespace and inserts the boundary symbol
BOUNDARY wherever the text moves between a word character and a non-word one.  Non-ASCII case and
the typographic quotes are handled on the phrase side (every phrase expands to its spelling
variants), so the text side needs no state beyond the class of the previous character.
"""
from __future__ import annotations

import re


OTHER, WORD, SPACE = 0, 1, 2
CLASS_NAMES = ("other", "word", "space")
CONT = 3  # a UTF-8 continuation byte keeps the class of its character

BOUNDARY = 0x0A  # "\n" never survives normalisation (whitespace becomes " "), so it is free
NUL_STANDIN = 0x09  # "\t" never survives either; stands in for NUL so numpy "S" keys keep it

_ASCII_WS = b" \t\n\r\x0b\x0c"
QUOTE_FOLD = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'}


def _lead_class(b: int) -> int:
    if b < 0x80:
        if b in _ASCII_WS:
            return SPACE
        c = chr(b)
        return WORD if (c.isalnum() or c == "_") else OTHER
    if b < 0xC0:
        return CONT
    # Lead bytes: Latin-1 punctuation (C2), spacing modifiers incl. ʼ (CA, CB), general punctuation,
    # symbols and arrows (E2) and everything above the BMP, emoji included (F0-F4) are not word
    # characters; every other script is.
    if b in (0xC2, 0xCA, 0xCB, 0xE2) or b >= 0xF0 or b in (0xC0, 0xC1):
        return OTHER
    return WORD


BYTE_CLASS = tuple(_lead_class(b) for b in range(256))


def char_class(ch: str) -> int:
    """Word class of one character (by its first UTF-8 byte, see module doc)."""
    return BYTE_CLASS[ch.encode("utf-8", "surrogatepass")[0]]


def fold_ascii(ch: str) -> str:
    return ch.lower() if "A" <= ch <= "Z" else ch


_OUT_FOLD = bytes(
    NUL_STANDIN if b == 0 else (b + 32 if 0x41 <= b <= 0x5A else b) for b in range(256)
)
_OUT_KEEP = bytes(NUL_STANDIN if b == 0 else b for b in range(256))


_WS_RUN = re.compile(rb"[ \t\n\r\x0b\x0c]+")
_WORD_EDGE = re.compile(rb"(?<=[0-9A-Za-z_])(?=[^0-9A-Za-z_])|(?<=[^0-9A-Za-z_])(?=[0-9A-Za-z_])")


def transduce(data: bytes, cls: int = OTHER, fold_case: bool = True) -> tuple[bytes, int]:
    """Feed raw bytes from class state `cls`; return (symbols, class after)."""
    if not data:
        return b"", cls
    if data.isascii() and b"\0" not in data:
        return _transduce_ascii(data, cls, fold_case)
    return transduce_plain(data, cls, fold_case)


def _transduce_ascii(data: bytes, cls: int, fold_case: bool) -> tuple[bytes, int]:
    # the same function as transduce_plain, with C-speed regexes (ASCII has no continuation bytes)
    s = _WS_RUN.sub(b" ", data.lower() if fold_case else data)
    if cls == SPACE and s[:1] == b" ":
        s = s[1:]
        if not s:
            return b"", SPACE
    s = _WORD_EDGE.sub(b"\n", s)
    first = BYTE_CLASS[s[0]]
    if (first == WORD) != (cls == WORD):
        s = b"\n" + s
    return s, BYTE_CLASS[s[-1]]


def transduce_plain(data: bytes, cls: int = OTHER, fold_case: bool = True) -> tuple[bytes, int]:
    """The transducer, one byte at a time (the definition; transduce() has a fast path)."""
    _OUT = _OUT_FOLD if fold_case else _OUT_KEEP
    out = bytearray()
    for b in data:
        c = BYTE_CLASS[b]
        if c == CONT:
            out.append(b)
            if cls == SPACE:
                cls = OTHER
        elif c == SPACE:
            if cls == SPACE:
                continue
            if cls == WORD:
                out.append(BOUNDARY)
            out.append(0x20)
            cls = SPACE
        else:
            if (c == WORD) != (cls == WORD):
                out.append(BOUNDARY)
            out.append(_OUT[b])
            cls = c
    return bytes(out), cls


def class_after_symbols(symbols: bytes, cls: int = OTHER) -> int:
    """The transducer's class state after it emitted `symbols` (normalised bytes)."""
    for s in symbols:
        if s == BOUNDARY:
            continue
        c = BYTE_CLASS[s]
        if c == CONT:
            if cls == SPACE:
                cls = OTHER
        else:
            cls = c
    return cls


QUOTE_VARIANTS = {"'": ("'", "\u2019", "\u2018", "\u02bc"), '"': ('"', "\u201c", "\u201d")}
MAX_SPELLINGS = 1024


def _word_forms(word: str) -> list[str]:
    """Lower, UPPER and Capitalised forms of a word, kept only where they map char for char."""
    forms = []
    for f in (word.lower(), word.upper(), word[:1].upper() + word[1:].lower()):
        if len(f) == len(word) and all(char_class(a) == char_class(b) for a, b in zip(f, word)):
            if f not in forms:
                forms.append(f)
    return forms or [word]


def spellings(phrase: str, ignore_case: bool = True, fold_quotes: bool = True) -> list[str]:
    """Every spelling of `phrase` that the byte-level transducer cannot fold by itself.

    ASCII case is folded by the transducer. A word with non-ASCII letters matches in lower case,
    UPPER case or Capitalised form; a quote matches its typographic forms (’ ‘ ʼ for ', “ ” for ")."""
    parts: list[list[str]] = []
    i = 0
    while i < len(phrase):
        ch = phrase[i]
        if char_class(ch) == WORD:
            j = i
            while j < len(phrase) and char_class(phrase[j]) == WORD:
                j += 1
            word = phrase[i:j]
            parts.append(_word_forms(word) if ignore_case and not word.isascii() else [word])
            i = j
        else:
            q = QUOTE_FOLD.get(ch, ch)
            parts.append(list(QUOTE_VARIANTS[q]) if fold_quotes and q in QUOTE_VARIANTS else [ch])
            i += 1
    if all(len(p) == 1 for p in parts):
        return [phrase]
    total = 1
    for p in parts:
        total *= len(p)
    if total > MAX_SPELLINGS:
        raise ValueError(f"{total} spellings (limit {MAX_SPELLINGS})")
    out = [""]
    for p in parts:
        out = [a + b for a in out for b in p]
    return out
