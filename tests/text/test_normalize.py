"""The transducer: its ASCII fast path against its definition, the decoding of split and invalid
UTF-8 against Python's, and the character rules (folding, classes) on each Unicode disguise."""
import random

import pytest

from cull.text.normalize import (BOUNDARY, DEFAULT_FOLD, FOLD_ACCENTS, OTHER, SPACE, WORD, char_class, fold_char,
                            pack, transduce, transduce_plain, unpack)

ALPHABET = [b"a", b"Z", b"_", b"1", b" ", b"\t", b"\n", b"  ", b",", b"'", b"\x00", b"-", "é".encode(),
            "—".encode(), "’".encode(), b"\xc3", b"\xa9", b"\x80", "ж".encode(), "😀".encode(),
            "\u200b".encode(), "\u3000".encode(), "ｄ".encode(), b"\xe4\xbd", b"\xf0\x9d", b"\xff"]


@pytest.mark.parametrize("seed", range(20))
def test_fast_transducer_equals_plain(seed):
    rng = random.Random(seed)
    for _ in range(300):
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
        for cls in (OTHER, WORD, SPACE):
            for fold in (DEFAULT_FOLD, 0, DEFAULT_FOLD | FOLD_ACCENTS):
                assert transduce(data, cls, fold) == transduce_plain(data, cls, fold), (data, cls, fold)


@pytest.mark.parametrize("seed", range(10))
def test_split_anywhere_equals_whole(seed):
    """Feeding bytes in random pieces (characters split between them) gives the same symbols as
    feeding them at once; the bytes left unfinished at the end decode as Python's "replace" does."""
    rng = random.Random(seed)
    for _ in range(200):
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 10)))
        whole, end = transduce(data)
        state, out = OTHER, b""
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 4))))
        prev = 0
        for c in cuts + [len(data)]:
            sym, state = transduce(data[prev:c], state)
            out += sym
            prev = c
        assert (out, state) == (whole, end), data
        cls, pending = unpack(state)
        assert pack(cls, pending) == state
        # what is left unfinished is the tail that Python turns into one U+FFFD at the end
        if pending:
            assert data.endswith(pending) and data.decode("utf-8", "replace").endswith("\ufffd")
            assert (data + b"!").decode("utf-8", "replace") == data[:-len(pending)].decode("utf-8", "replace") + "\ufffd!"


def test_boundaries_and_whitespace():
    sym, cls = transduce(b"Hello,  World")
    B = chr(BOUNDARY).encode()
    assert sym == B + b"hello" + B + b", " + B + b"world" and cls == WORD
    assert transduce(b"  x", SPACE)[0] == B + b"x"
    for ws in "\u00a0\u2009\u202f\u3000\u2028\u0085":
        assert transduce(f"a{ws}{ws}b".encode())[0] == B + b"a" + B + b" " + B + b"b", ws


@pytest.mark.parametrize("disguise, plain", [
    ("d\u200belve", "delve"), ("d\u200delve", "delve"), ("\ufeffdelve", "delve"), ("de\u2060lve", "delve"),
    ("del\u00adve", "delve"), ("ｄｅｌｖｅ", "delve"), ("𝐝𝐞𝐥𝐯𝐞", "delve"), ("DELVE", "delve"),
    ("STRASSE", "straße"), ("ﬁsh", "fish"), ("cafe\u0301", "café"), ("ΣΟΦΟΣ", "σοφος"), ("ΣΟΦΟΣ", "σοφοσ"),
    ("don\u2019t", "don't"), ("\u201cno\u201d", '"no"'), ("a\u3000b", "a b"), ("a\u2028b", "a b"),
])
def test_disguises_normalise_alike(disguise, plain):
    assert transduce(disguise.encode()) == transduce(plain.encode())


def test_word_classes():
    assert char_class("a") == WORD and char_class("é") == WORD and char_class("ж") == WORD
    assert char_class("\u0301") == WORD  # a combining mark continues its word
    assert char_class("²") == WORD and char_class("ｄ") == WORD
    for ch in ",—’“😀\ufffd":
        assert char_class(ch) == OTHER, ch
    for ch in "\u00a0\u3000\u2028 ":
        assert char_class(ch) == SPACE, ch
    for ch in "你ひカกກកမー":  # scripts written without spaces have no word boundaries
        assert char_class(ch) == OTHER, ch
    assert char_class("\u200b") is None and fold_char("\u00ad") == ""


def test_accent_option():
    assert fold_char("é") == "e\u0301"
    assert fold_char("é", DEFAULT_FOLD | FOLD_ACCENTS) == "e"
    assert fold_char("İ") == "i\u0307"  # the default (non-Turkic) full case folding
    assert fold_char("İ", DEFAULT_FOLD | FOLD_ACCENTS) == "i"
