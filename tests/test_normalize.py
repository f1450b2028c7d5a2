"""The transducer's fast path against its plain definition, and the character-class rules."""
import random

import pytest

from cull.normalize import BOUNDARY, OTHER, SPACE, WORD, char_class, spellings, transduce, transduce_plain

ALPHABET = [b"a", b"Z", b"_", b"1", b" ", b"\t", b"\n", b"  ", b",", b"'", b"\x00", b"-", "é".encode(),
            "—".encode(), "’".encode(), b"\xc3", b"\xa9", b"\x80", "ж".encode(), "😀".encode()]


@pytest.mark.parametrize("seed", range(20))
def test_fast_transducer_equals_plain(seed):
    rng = random.Random(seed)
    for _ in range(300):
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
        for cls in (OTHER, WORD, SPACE):
            for fold in (True, False):
                assert transduce(data, cls, fold) == transduce_plain(data, cls, fold), (data, cls, fold)


def test_boundaries_and_whitespace():
    sym, cls = transduce(b"Hello,  World")
    B = chr(BOUNDARY).encode()
    assert sym == B + b"hello" + B + b", " + B + b"world" and cls == WORD
    assert transduce(b"  x", SPACE)[0] == B + b"x"


def test_word_classes():
    assert char_class("a") == WORD and char_class("é") == WORD and char_class("ж") == WORD
    for ch in ", —’“\u00a0ʼ😀":
        assert char_class(ch) in (OTHER, SPACE), ch


def test_spellings():
    assert spellings("delve") == ["delve"]
    assert set(spellings("don't")) == {"don't", "don\u2019t", "don\u2018t", "don\u02bct"}
    assert set(spellings("élise")) == {"élise", "ÉLISE", "Élise"}
