"""The Unicode rules of the default semantics, on `cull.find` (the oracle), on scan's prefilter and
through the processor on real vocabularies: every disguise of a banned phrase is caught, whatever
the tokenization; near-misses are not."""
import unicodedata

import pytest
import torch

import cull
from cull.errors import RuleError

from conftest import need_data

DISGUISES = [  # (text, phrase): each must match
    ("They d\u200belve deep", "delve"), ("d\u200delve", "delve"), ("\ufeffdelve", "delve"),
    ("de\u2060lve", "delve"), ("del\u00adve", "delve"), ("d\u200ce\ufe0flve", "delve"),
    ("a testament\u00a0to", "a testament to"), ("a\u2009testament\u202fto", "a testament to"),
    ("a testament\u3000to", "a testament to"), ("a\u2028testament \n to", "a testament to"),
    ("ｄｅｌｖｅ", "delve"), ("𝐝𝐞𝐥𝐯𝐞", "delve"), ("𝐃𝐄𝐋𝐕𝐄!", "delve"), ("ＤＥＬＶＥ", "delve"),
    ("a cafe\u0301 here", "café"), ("a café here", "cafe\u0301"), ("CAFÉ", "café"),
    ("STRASSE", "straße"), ("strasse", "straße"), ("Straße", "STRASSE"), ("the ﬁsh", "fish"),
    ("ΟΔΥΣΣΕΥΣ", "οδυσσευς"), ("οδυσσευς", "ΟΔΥΣΣΕΥΣ"),  # final sigma
    ("我说你好世界", "你好"), ("東京タワーに行く", "タワー"), ("ภาษาไทยง่าย", "ไทย"),
    ("用Python写代码", "python"), ("don\u2019t", "don't"), ("\u201cyes\u201d", '"yes"'),
]
NEAR_MISSES = [  # (text, phrase): none may match
    ("the class assistant", "ass"), ("a cafe\u0301", "cafe"), ("a café", "cafe"), ("cafés", "café"),
    ("Straßenbahn", "straße"), ("delved", "delve"), ("d\u200belved", "delve"), ("ｄｅｌｖｅｓ", "delve"),
    ("ıstanbul", "istanbul"),  # dotless ı is its own letter (non-Turkic folding)
    ("İstanbul", "istanbul"),  # İ folds to i + combining dot above, which continues the word
]


@pytest.mark.parametrize("text, phrase", DISGUISES)
def test_find_sees_through_disguises(text, phrase):
    assert cull.find(text, [phrase]), (text, phrase)


@pytest.mark.parametrize("text, phrase", NEAR_MISSES)
def test_find_near_misses(text, phrase):
    assert cull.find(text, [phrase]) == [], (text, phrase)


def test_match_offsets_are_in_the_original_text():
    text = "They d\u200belve, ｄｅｌｖｅ"
    assert [(m.start, m.end) for m in cull.find(text, ["delve"])] == [(5, 11), (13, 18)]


def test_accent_insensitive_option():
    loose = cull.PhraseSet(["cafe", "istanbul"], ignore_accents=True)
    assert len(cull.find("Un café à İstanbul", loose)) == 2
    assert cull.find("Un café à İstanbul", ["cafe", "istanbul"]) == []


def test_literal_regex_folds_characters_as_phrases_do():
    """A literal regex becomes phrases under the set's options, in find as in the compiled matcher."""
    from cull.compile.vocab import vocab_from_token_bytes

    loose = cull.PhraseSet([r"re:\bcafe\b"], ignore_accents=True)
    assert [(m.start, m.end) for m in cull.find("un café", loose)] == [(3, 7)]
    m = cull.compile_rules(loose, vocab_from_token_bytes([b"un", b" caf", "é".encode(), b"e"]), cache=False)
    state = m.advance(m.advance(m.initial_state(), 0), 1)
    assert set(m.banned(state)) == {2, 3}  # "é" and "e" both end the literal "cafe"


def test_case_sensitive_still_folds_compatibility():
    strict = cull.PhraseSet(["Delve"], ignore_case=False)
    assert cull.find("Ｄｅｌｖｅ", strict) and not cull.find("delve", strict)


def test_phrases_that_cannot_match_are_refused():
    with pytest.raises(RuleError, match="U\\+FFFD"):
        cull.PhraseSet(["del\ufffdve"])
    with pytest.raises(RuleError, match="empty once normalised"):
        cull.compile_rules(cull.PhraseSet(["\u200b\u200d"], allow_symbols=True),
                           cull.compile.vocab.vocab_from_token_bytes([b"a"]), cache=False)
    assert cull.PhraseSet(["你好"])  # a Han phrase is not "symbols only"


def test_scan_prefilter_sees_through_disguises():
    from cull.measure.scan import prefiltered

    run = prefiltered()
    rules = cull.PhraseSet(["delve", "fish"])
    assert len(run("They ｄｅｌｖｅ and d\u200belve; ﬁsh.", rules)) == 3


def test_unicode_tables_match_regex():
    """cull/data/unicode_properties.json is what the installed `regex` computes (regenerate with
    `python -m cull.text.unicode_tables` after a `regex` upgrade changes Unicode versions)."""
    import json

    import regex  # noqa: F401

    from cull.text.unicode_tables import PATH, compute_ranges

    stored = json.loads(PATH.read_text())
    assert stored["properties"] == compute_ranges()["properties"]


# ---- through the processor, on real vocabularies ----
TOKENIZERS = {"gpt2": ("tokenizers", "gpt2"), "stories260K": ("models", "stories260K")}


def _tokenizer(name):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(need_data(*TOKENIZERS[name]))


@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_processor_bans_the_token_that_completes_a_disguise(name, backend):
    """Each disguise, tokenized by the tokenizer and as single bytes (characters split across
    tokens): after all but the last token, the last one is banned."""
    from cull.compile.cache import as_vocab

    tok = _tokenizer(name)
    vocab = as_vocab(tok)
    byte_ids = {}
    for i, b in enumerate(vocab.token_bytes):
        if len(b) == 1 and i not in vocab.special_ids:
            byte_ids.setdefault(b, i)
    phrases = sorted({p for _, p in DISGUISES})
    proc = cull.CullLogitsProcessor(phrases, tok, backend=backend, cache=False, include_prompt=True)
    V = len(vocab.token_bytes)
    checked = 0
    for text, _ in DISGUISES:
        ends = [m.end for m in cull.find(text, phrases)]
        data = text[:max(ends)].encode()  # the text up to the end of its last match
        for ids in (tok.encode(text[:max(ends)], add_special_tokens=False), [byte_ids[bytes([b])] for b in data]):
            if b"".join(vocab.token_bytes[i] for i in ids) != data:
                continue  # a SentencePiece tokenizer rewrote the text (e.g. a leading space)
            proc.reset()
            scores = proc(torch.tensor([[0] + ids[:-1]]), torch.zeros(1, V))
            assert scores[0, ids[-1]] == float("-inf"), (name, text, [vocab.token_bytes[i] for i in ids])
            checked += 1
    assert checked >= len(DISGUISES)  # at least the byte-split spelling of every disguise


def test_nfkd_of_each_disguise_is_the_plain_phrase():
    """The disguises above are what they claim to be (a check on the test data)."""
    for text, phrase in DISGUISES[10:14]:
        assert phrase in unicodedata.normalize("NFKC", text).casefold()


def test_ascii_pattern_fast_path_equals_definition():
    import random

    from cull.compile.patterns import rule_patterns
    from cull.rules import make_rule

    rng = random.Random(0)
    chars = list("abZ_1 ,'-.") + ["  "]
    for _ in range(500):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(1, 8)))
        text = rng.choice(["", "*"]) + text + rng.choice(["", "*"])
        try:
            rule = make_rule(text, allow_symbols=True)
        except cull.errors.RuleError:
            continue
        for opts in (cull.PhraseSet([]).options, cull.PhraseSet([], ignore_case=False).options):
            assert rule_patterns(rule, opts) == rule_patterns(rule, opts, fast=False), text


def test_continuation_deltas_equal_token_by_token():
    """The prefix-sharing walk over continuation tokens gives each token's own `token_delta`."""
    import random

    from cull.compile.pending import continuation_deltas, continuation_tokens, token_delta
    from randomized import build

    for seed in range(6):
        rng = random.Random(seed)
        vocab, tb, special, rules, m = build(rng, 80, rng.randint(1, 5), bias=seed % 2 == 1)
        cont = continuation_tokens(tb).tolist()
        for _ in range(30):
            st = m.initial_state()
            for _ in range(rng.randint(0, 8)):
                st = m.advance(st, rng.randrange(len(tb)))
            want = {t: d for t in cont if (d := token_delta(m, st, tb[t])) < float("inf")}
            assert continuation_deltas(m, st) == want, st
