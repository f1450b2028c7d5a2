"""Bad input gives a clear error: the right exception type, and a message that says what was wrong
and how to fix it (the contract of cull/errors.py). Also the two resource guards: a huge phrase list is
compiled in bounded memory or refused quickly, and a tampered compile cache is never unpickled.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cull
from cull.errors import CullError, RuleError
from conftest import need_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt2():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(need_data("tokenizers", "gpt2"))


def _write(tmp_path, name, content) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


# ---- single phrases ---------------------------------------------------------------------------


@pytest.mark.parametrize("item", ["", "   ", " \t\n ", "*", "**", " * "])
def test_empty_or_whitespace_phrase(item):
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet([item])
    msg = str(exc.value)
    assert "empty phrase" in msg
    assert "item 0" in msg  # where it is
    assert "delete" in msg  # how to fix it


@pytest.mark.parametrize("item", ["!!!", "—", "...", "?!", "* — *"])
def test_punctuation_only_phrase_needs_allow_symbols(item):
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet([item])
    msg = str(exc.value)
    assert "no letter or digit" in msg
    assert "allow_symbols=True" in msg  # names the fix


def test_allow_symbols_accepts_em_dash():
    rules = cull.PhraseSet(["—"], allow_symbols=True)
    assert [r.phrase for r in rules] == ["—"]
    assert [(m.start, m.end) for m in cull.find("a — b", rules)] == [(2, 3)]
    assert cull.find("a - b", rules) == []


def test_phrase_longer_than_limit():
    cull.PhraseSet(["a" * 256])  # exactly at the limit is fine
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet(["a" * 257])
    msg = str(exc.value)
    assert "257" in msg and "256" in msg and "limit" in msg
    assert "max_phrase_chars" in msg  # how to raise it
    cull.PhraseSet(["a" * 257], max_phrase_chars=300)  # ... and raising it works


@pytest.mark.parametrize("item", ["del*ve", "a * b", "*x*y*"])
def test_star_inside_phrase(item):
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet([item])
    msg = str(exc.value)
    assert "'*' inside" in msg
    assert "wildcard only at either end" in msg
    assert "re:" in msg  # points at regex rules for patterns


def test_bias_rule_without_delta():
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet(["tapestry"], action="bias")
    assert "needs a numeric delta" in str(exc.value) and "None" in str(exc.value)
    with pytest.raises(RuleError, match="numeric delta"):
        cull.PhraseSet(["tapestry"], action="bias", bias=float("nan"))
    with pytest.raises(RuleError, match=r"\+inf"):
        cull.PhraseSet(["tapestry"], action="bias", bias=float("inf"))


def test_bias_rule_without_delta_in_files(tmp_path):
    p = _write(tmp_path, "r.json", json.dumps([{"phrase": "tapestry", "action": "bias"}]))
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet.load(p)
    assert "numeric delta" in str(exc.value) and "item 1" in str(exc.value)


def test_unknown_action():
    with pytest.raises(RuleError, match="unknown action 'block'.*'ban' or 'bias'"):
        cull.PhraseSet(["x"], action="block")


def test_single_string_instead_of_list():
    with pytest.raises(RuleError, match="wrap it"):
        cull.PhraseSet("delve")


# ---- rule files --------------------------------------------------------------------------------


def test_malformed_json_names_the_line(tmp_path):
    p = _write(tmp_path, "bad.json", '[\n  "delve",\n  "tapestry"\n  "testament"\n]\n')
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet.load(p)
    msg = str(exc.value)
    assert "malformed JSON" in msg
    assert "line 4" in msg
    assert str(p) in msg


def test_malformed_yaml_names_the_line(tmp_path):
    p = _write(tmp_path, "bad.yaml", "phrases:\n  - delve\n  - tapestry\n  - [unclosed\n")
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet.load(p)
    msg = str(exc.value)
    assert "malformed YAML" in msg
    assert "line " in msg
    line = int(msg.split("line ")[1].split(",")[0])
    assert 4 <= line <= 5  # the error is on (or right after) the unclosed flow list
    assert str(p) in msg


def test_yaml_bad_indentation_names_the_line(tmp_path):
    p = _write(tmp_path, "bad.yml", "phrases:\n  - delve\n - tapestry\n")
    with pytest.raises(RuleError, match=r"line 3, column \d+: malformed YAML"):
        cull.PhraseSet.load(p)


@pytest.mark.parametrize("m", [0, 0.0, -0.5, 1.5, 1.0001, 7.5])
def test_antislop_multiplier_out_of_range(tmp_path, m):
    p = _write(tmp_path, "slop.json", json.dumps([["delve", 0.5], ["tapestry", m]]))
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet.load(p)
    msg = str(exc.value)
    assert "multiplier" in msg and "(0, 1]" in msg
    assert "item 2" in msg  # which entry
    assert repr(m) in msg  # what we got


def test_antislop_multiplier_in_range_gives_log_delta(tmp_path):
    import math

    p = _write(tmp_path, "slop.json", json.dumps([["delve", 0.5], ["tapestry", 1]]))
    rules = cull.PhraseSet.load(p)
    assert [r.delta for r in rules] == [math.log(0.5), 0.0]
    banned = cull.PhraseSet.load(p, action="ban")
    assert all(r.delta == -math.inf for r in banned)


def test_non_utf8_txt_names_the_line(tmp_path):
    p = _write(tmp_path, "bad.txt", b"delve\ntapestry\n# comment\ncaf\xe9 au lait\n")
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet.load(p)
    msg = str(exc.value)
    assert "line 4" in msg
    assert "0xe9" in msg and "UTF-8" in msg


def test_txt_bad_delta_names_the_line(tmp_path):
    p = _write(tmp_path, "r.txt", "delve\ntapestry\tvery\n")
    with pytest.raises(RuleError, match=r"line 2: .*logit delta.*'very'"):
        cull.PhraseSet.load(p)


def test_txt_bad_phrase_names_the_line(tmp_path):
    p = _write(tmp_path, "r.txt", "delve\n\nta*pestry\n")
    with pytest.raises(RuleError, match=r"line 3.*'\*' inside"):
        cull.PhraseSet.load(p)


@pytest.mark.parametrize("name", ["rules.csv", "rules.toml", "rules.pkl"])
def test_unknown_file_extension(tmp_path, name):
    p = _write(tmp_path, name, "delve\n")
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet.load(p)
    msg = str(exc.value)
    assert "unknown phrase file type" in msg
    assert Path(name).suffix in msg
    assert ".txt" in msg and ".json" in msg and ".yaml" in msg  # the accepted ones


def test_missing_file(tmp_path):
    p = tmp_path / "nope.json"
    with pytest.raises(RuleError) as exc:
        cull.PhraseSet.load(p)
    msg = str(exc.value)
    assert "does not exist" in msg and "nope.json" in msg


def test_json_wrong_shape(tmp_path):
    p = _write(tmp_path, "r.json", json.dumps({"words": ["delve"]}))
    with pytest.raises(RuleError, match="'phrases' list"):
        cull.PhraseSet.load(p)
    p = _write(tmp_path, "r2.json", json.dumps([["delve", 0.5, 3]]))
    with pytest.raises(RuleError, match=r"item 1: expected \[phrase, multiplier\]"):
        cull.PhraseSet.load(p)


# ---- tokenizers ---------------------------------------------------------------------------------


def test_wordpiece_tokenizer_cannot_be_mapped():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from cull.compile.vocab import VocabError

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "world": 4, "##s": 5, "del": 6, "##ve": 7}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    assert tok.decode(tok("hello worlds")["input_ids"]) == "hello worlds"  # a working tokenizer
    with pytest.raises(VocabError) as exc:
        cull.CullLogitsProcessor(["delve"], tok)
    msg = str(exc.value)
    assert isinstance(exc.value, CullError)
    assert "WordPiece" in msg and "unsupported tokenizer" in msg
    assert "vocab_from_token_bytes" in msg  # the way out


def test_slow_tokenizer_object_is_refused():
    from cull.compile.vocab import VocabError

    class NotATokenizer:
        pass

    with pytest.raises(VocabError, match="fast tokenizer"):
        cull.CullLogitsProcessor(["delve"], NotATokenizer())


def test_processor_without_tokenizer():
    with pytest.raises(CullError, match="needs the model's tokenizer"):
        cull.CullLogitsProcessor(["delve"])


def test_unknown_backend():
    with pytest.raises(CullError, match="unknown backend 'cuda'.*torch"):
        cull.CullLogitsProcessor(["delve"], _small_vocab(), backend="cuda", cache=False)


# ---- regex rules in the processor ---------------------------------------------------------------


def test_general_regex_rejected_by_processor(gpt2):
    rules = cull.PhraseSet(["re:not [^.!?]{3,60} but"])  # a valid rule: scan/eval/backtracking use it
    assert cull.find("It's not just a tool, but a way of life.", rules)
    with pytest.raises(RuleError) as exc:
        cull.CullLogitsProcessor(rules, gpt2, cache=False)
    msg = str(exc.value)
    assert "not [^.!?]{3,60} but" in msg  # which rule
    assert "cannot be enforced by the logits processor" in msg  # what is wrong
    assert "backtracking generator" in msg and "scan" in msg  # what to use instead


def test_invalid_regex():
    with pytest.raises(RuleError, match="invalid regex"):
        cull.PhraseSet(["re:colo(u?r"])
    with pytest.raises(RuleError, match="empty regex"):
        cull.PhraseSet(["re:"])


def _banned_after(proc, tok, prefix: str, nxt: str) -> bool:
    """Is the single token `nxt` banned right after the text `prefix` (prompt included)?"""
    import torch

    ids = tok(nxt)["input_ids"]
    assert len(ids) == 1, (nxt, tok.convert_ids_to_tokens(ids))
    prompt = tok(prefix)["input_ids"] if prefix else []
    proc.reset()
    scores = proc(torch.tensor([[tok.eos_token_id] + prompt]), torch.zeros(1, len(tok)))  # eos adds no text
    return bool(scores[0, ids[0]] == float("-inf"))


def test_literal_regex_bans_both_spellings(gpt2):
    """A literal regex means its strings anywhere, as the regex itself (and `cull.find`) would."""
    proc = cull.CullLogitsProcessor(["re:colou?r"], gpt2, include_prompt=True, cache=False)
    assert _banned_after(proc, gpt2, "I like the", " color")
    assert _banned_after(proc, gpt2, "I like the", " colour")
    assert _banned_after(proc, gpt2, "What COL", "OUR")  # split spelling, upper case
    assert _banned_after(proc, gpt2, "Col", "our")
    assert _banned_after(proc, gpt2, "Col", "or")
    assert _banned_after(proc, gpt2, "water", "color")  # inside a word, as find reports it
    assert [m.start for m in cull.find("watercolor", ["re:colou?r"])] == [5]
    assert not _banned_after(proc, gpt2, "I like the", " col")


def test_literal_regex_word_boundaries(gpt2):
    """`\b` at an end of a literal regex asks for a whole word on that side."""
    proc = cull.CullLogitsProcessor([r"re:\bcolou?r\b"], gpt2, include_prompt=True, cache=False)
    assert _banned_after(proc, gpt2, "Col", "our")
    assert not _banned_after(proc, gpt2, "The", " colours")
    assert not _banned_after(proc, gpt2, "I like the", " colors")
    assert not _banned_after(proc, gpt2, "water", "color")  # not a whole word
    assert not _banned_after(proc, gpt2, "water", "colour")
    assert cull.find("watercolor colours", [r"re:\bcolou?r\b"]) == []
    assert [m.span() for m in cull.find("a COLOUR.", [r"re:\bcolou?r\b"])] == [(2, 8)]


# ---- resource guards ------------------------------------------------------------------------------

_MILLION = textwrap.dedent(
    r"""
    import json, os, random, resource, signal, sys, time
    import cull
    from tokenizers import Tokenizer
    budget = float(sys.argv[2])
    tok = Tokenizer.from_file(sys.argv[1])
    r = random.Random(0)
    words = [f"w{i:x}" for i in range(20000)]
    phrases = set()
    while len(phrases) < 1_000_000:
        phrases.add(f"{r.choice(words)} {r.choice(words)} {r.choice(words)}")
    phrases = list(phrases)

    def report(out):
        out["seconds"] = time.perf_counter() - t0
        out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out), flush=True)

    def on_alarm(*_):
        report({"outcome": "timeout"})
        os._exit(0)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    t0 = time.perf_counter()
    try:
        m = cull.compile_rules(phrases, tok, cache=False)
        out = {"outcome": "compiled", "states": m.stats()["states"]}
    except cull.RuleError as exc:
        out = {"outcome": "refused", "message": str(exc)}
    signal.setitimer(signal.ITIMER_REAL, 0)
    report(out)
    """
)


def test_million_phrases_bounded_time_and_memory(tmp_path):
    """1,000,000 distinct 3-word phrases: `compile_rules` compiles them in bounded memory, or refuses
    them with a message that names the limit; either way quickly (well under 30 s: the budget is 20 s). Runs in a fresh
    process, so that the peak memory (ru_maxrss) is its own; a timer stops it at the budget."""
    tok_json = need_data("tokenizers", "gpt2", "tokenizer.json")
    env = dict(os.environ, CULL_CACHE_DIR=str(tmp_path))
    budget_s = 20.0  # "well under 30 s"
    try:  # generating the phrases and importing cull take a few seconds on top of the budget
        proc = subprocess.run([sys.executable, "-c", _MILLION, str(tok_json), str(budget_s)], capture_output=True,
                              text=True, env=env, timeout=budget_s + 60, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"compile_rules on 1M phrases did not stop within {budget_s + 60:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    assert res["maxrss_mib"] < 3 * 1024, f"peak memory {res['maxrss_mib']:.0f} MiB: {res}"
    assert res["outcome"] != "timeout", (
        f"compile_rules on 1M phrases neither compiled nor refused them within {budget_s:.0f} s "
        f"(peak {res['maxrss_mib']:.0f} MiB)")
    if res["outcome"] == "refused":
        msg = res["message"]
        assert "max_symbols" in msg or "limit" in msg, msg
        assert "Split the list" in msg or "raise" in msg, msg  # how to fix it
    assert res["seconds"] < budget_s, f"took {res['seconds']:.1f} s: {res}"


# ---- the compile cache never unpickles ----------------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file (open(path, 'w')): proof that a pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _poison(path: Path, key: str, marker: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert key in arrays, sorted(arrays)
    arrays[key] = np.array([_Payload(marker), 1], dtype=object)
    path.unlink()
    with open(path, "wb") as f:  # np.savez(path) would append a second .npz suffix to a str path
        np.savez(f, **arrays)


def test_poison_payload_is_live(tmp_path):
    """Sanity check of the test itself: loading the poisoned file WITH pickle creates the marker."""
    f = tmp_path / "x.npz"
    np.savez(f, meta=np.zeros(1, np.uint8))
    marker = tmp_path / "ran"
    _poison(f, "meta", marker)
    with np.load(f, allow_pickle=True) as z:
        z["meta"]
    assert marker.exists()


def _small_vocab():
    """256 single bytes, a few words and one special token: compiles in milliseconds."""
    from cull.compile.vocab import vocab_from_token_bytes

    words = [b" delve", b" tapestry", b" of", b" rich", b"It", b" was", b" a"]
    tb = [bytes([i]) for i in range(256)] + words + [b""]
    return vocab_from_token_bytes(tb, special_ids=[len(tb) - 1], eos_ids=[len(tb) - 1])


def _tid(vocab, piece: bytes) -> int:
    return vocab.token_bytes.index(piece)


@pytest.mark.parametrize("key", ["meta", "perm", "rng_delta"])
def test_cache_never_unpickles(tmp_path, monkeypatch, key):
    import torch

    from cull.compile.matcher import CompiledMatcher

    vocab = _small_vocab()
    cache = tmp_path / "cache"
    monkeypatch.setenv("CULL_CACHE_DIR", str(cache))
    rules = ["tapestry of", "delve"]
    first = cull.compile_rules(rules, vocab)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1, files
    marker = tmp_path / "pickle-ran"
    _poison(files[0], key, marker)

    with pytest.raises(CullError, match="cannot read compiled tables"):
        CompiledMatcher.load(files[0], vocab.token_bytes)
    assert not marker.exists()

    again = cull.compile_rules(rules, vocab)  # must recompile (or raise CullError), never unpickle
    assert not marker.exists()
    for k, v in first.tables.items():
        assert np.array_equal(v, again.tables[k]), k
    # the poisoned file was replaced by a clean one that loads without pickle
    with np.load(files[0], allow_pickle=False) as z:
        for k in z.files:
            z[k]
    # and the processor built from the recompiled tables works
    proc = cull.CullLogitsProcessor(again, include_prompt=True)
    scores = proc(torch.tensor([[len(vocab) - 1]]), torch.zeros(1, len(vocab)))
    assert scores[0, _tid(vocab, b" delve")] == float("-inf")
    assert scores[0, _tid(vocab, b" tapestry")] == 0
    assert not marker.exists()


def test_stale_cache_from_an_older_version(tmp_path, monkeypatch):
    """A cache file written by an earlier cull (same FORMAT_VERSION, but without the `perm_off` entry
    in its meta that bias tables now read) must be recompiled, or refused with a CullError; it must not
    crash the first decode step with a KeyError."""
    import torch

    vocab = _small_vocab()
    cache = tmp_path / "cache"
    monkeypatch.setenv("CULL_CACHE_DIR", str(cache))
    rules = cull.PhraseSet(["tapestry"], action="bias", bias=-2.0)
    fresh = cull.compile_rules(rules, vocab)
    [path] = list(cache.glob("*.npz"))
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    assert "perm_off" in meta
    del meta["perm_off"]  # what the cache of the previous release holds
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)

    ids = torch.tensor([[_tid(vocab, b"It"), _tid(vocab, b" was"), _tid(vocab, b" a"), _tid(vocab, b" rich")]])
    want = cull.CullLogitsProcessor(fresh, include_prompt=True)(ids, torch.zeros(1, len(vocab)))
    assert want[0, _tid(vocab, b" tapestry")] == -2.0
    try:
        proc = cull.CullLogitsProcessor(rules, vocab, include_prompt=True)
        got = proc(ids, torch.zeros(1, len(vocab)))
    except CullError:
        return  # refusing the stale file with a clear error is fine
    assert torch.equal(got, want)
