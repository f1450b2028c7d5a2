"""Hostile inputs end with a clear one-line error within 5 s and 500 MB (issue 10, "bounded inputs").

Each case runs in a fresh subprocess, as a user would meet it: the CLI (`cull scan`, `cull generate`).
The subprocess reports the command's wall time, counted after the imports (importing torch alone
takes 3-9 s on the shared CI machine, whatever the input), and its peak RSS (VmHWM, which
includes torch; ru_maxrss is not used where VmHWM exists, as it can carry the parent's peak)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cull
from cull.errors import RuleError

from conftest import need_data

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 5.0
LIMIT_MIB = 500.0

_RUN = textwrap.dedent(r"""
    import json, resource, sys, time
    from cull.cli.main import build_parser, main
    build_parser()  # imports what every command imports (torch), before the clock starts
    t0 = time.perf_counter()
    import contextlib, io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(sys.argv[1:])
    seconds = time.perf_counter() - t0
    try:  # this process's own peak (ru_maxrss can carry the forking parent's peak over exec)
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
        peak_mib = int(hwm) / 1024
    except (OSError, IndexError):
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"rc": rc, "stderr": err.getvalue(), "seconds": seconds, "maxrss_mib": peak_mib}))
""")


def run_cli(*args, env_extra=None) -> dict:
    """`cull ARGS` in a subprocess; the time counts from after the imports."""
    env = dict(os.environ, **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", _RUN, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return json.loads(lines[-1][len("RESULT "):])


def assert_clear_error(res: dict, *words: str) -> None:
    msg = res["stderr"].strip()
    assert res["rc"] != 0, res
    assert len(msg.splitlines()) == 1, f"not one line: {msg!r}"
    for w in words:
        assert w in msg, (w, msg)
    assert res["seconds"] < LIMIT_S, res
    assert res["maxrss_mib"] < LIMIT_MIB, res


def yaml_bomb(path: Path, levels: int = 9, width: int = 9) -> Path:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"phrases: *a{levels - 1}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "doc.txt").write_text("a" * 50_000 + "\n" + "x" * 50_000 + "\n")
    return tmp_path / "doc.txt"


@pytest.mark.parametrize("rule", ["re:(a|aa)+c", "re:(x+x+)+y"])
def test_scan_catastrophic_regex(corpus, rule):
    res = run_cli("scan", "--phrase", rule, corpus)
    assert_clear_error(res, rule, "CULL_REGEX_TIMEOUT_S")


def test_scan_yaml_alias_bomb(tmp_path, corpus):
    res = run_cli("scan", "--phrases", yaml_bomb(tmp_path / "bomb.yaml"), corpus)
    assert_clear_error(res, "bomb.yaml", "alias")


def test_scan_deep_json(tmp_path, corpus):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    res = run_cli("scan", "--phrases", deep, corpus)
    assert_clear_error(res, "deep.json", "nested 200000 levels")


@pytest.mark.parametrize("name, body", [("open.json", '["' + '\\"' * 500_000),
                                        ("open.yaml", "- '" + "''" * 500_000)])
def test_scan_string_that_never_closes(tmp_path, corpus, name, body):
    """A quoted string that never ends is read in linear time (it was a rescan from every quote)."""
    (tmp_path / name).write_text(body)
    res = run_cli("scan", "--phrases", tmp_path / name, corpus)
    assert_clear_error(res, name, "malformed")


def test_scan_deep_yaml(tmp_path, corpus):
    deep = tmp_path / "deep.yaml"
    deep.write_text("phrases: " + "[" * 100_000 + "]" * 100_000 + "\n")
    res = run_cli("scan", "--phrases", deep, corpus)
    assert_clear_error(res, "deep.yaml", "nested")


def test_scan_endless_phrase_file(corpus):
    """/dev/zero as a phrase file: read up to the size limit, then refused."""
    res = run_cli("scan", "--phrases", "/dev/zero", corpus, env_extra={"CULL_MAX_RULE_FILE_MB": "32"})
    assert_clear_error(res, "/dev/zero", "32 MiB")


def test_scan_nul_phrase(corpus):
    res = run_cli("scan", "--phrase", "del\x01ve", corpus)
    assert_clear_error(res, "U+0001")


def test_generate_refuses_hostile_rules(tmp_path):
    model = need_data("models", "stories260K")
    for args, words in [
        (("--phrases", yaml_bomb(tmp_path / "bomb.yaml")), ("alias",)),
        (("--phrase", "re:(a|aa)+c"), ("cannot be enforced by the logits processor",)),
        (("--phrase", "bad\x02word"), ("U+0002",)),
    ]:
        res = run_cli("generate", "--model", model, "--prompt", "Once", "--max-new-tokens", "2", *args)
        assert_clear_error(res, *words)


# ---- the same guards in-process: each names what was wrong -------------------------------------------------


def test_regex_timeout_names_the_rule(monkeypatch):
    from cull.rules.regex_match import RegexTimeoutError

    monkeypatch.setenv("CULL_REGEX_TIMEOUT_S", "0.05")
    with pytest.raises(RegexTimeoutError, match=r"'re:\(a\|aa\)\+c'.*0.05 s"):
        cull.find("a" * 20_000, ["delve", "re:(a|aa)+c"])
    monkeypatch.setenv("CULL_REGEX_TIMEOUT_S", "soon")
    with pytest.raises(cull.CullError, match="CULL_REGEX_TIMEOUT_S"):
        cull.find("abc", ["re:a.c"])


def test_backtracking_generator_regex_runs_under_the_limit(monkeypatch):
    """The backtracking generator matches through cull.find, so a runaway regex stops there too."""
    from cull.decode import backtrack
    from cull.rules.regex_match import RegexTimeoutError

    monkeypatch.setenv("CULL_REGEX_TIMEOUT_S", "0.05")
    rules = cull.PhraseSet(["re:(x+x+)+y"])
    with pytest.raises(RegexTimeoutError):
        backtrack.find("x" * 20_000, rules)


def test_file_size_limit_is_overridable(tmp_path):
    f = tmp_path / "list.txt"
    f.write_text("delve\n" * 1000)
    with pytest.raises(RuleError, match="larger than the limit"):
        cull.PhraseSet.load(f, max_file_bytes=100)
    assert len(cull.PhraseSet.load(f, max_file_bytes=10_000)) == 1000


def test_yaml_anchor_without_alias_still_loads(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("action: ban\nphrases: &p\n  - delve\n  - tapestry\n")
    assert [r.phrase for r in cull.PhraseSet.load(f)] == ["delve", "tapestry"]


@pytest.mark.parametrize("text", ["a\x00b", "a\x1bb", "a\x7fb", "a\x9bb", "x\ud800"])
def test_control_characters_refused(text):
    with pytest.raises(RuleError, match="control character"):
        cull.PhraseSet([text])


def test_whitespace_controls_are_whitespace():
    rules = cull.PhraseSet(["a\tb", "c\x85d"])
    assert [r.phrase for r in rules] == ["a b", "c\x85d"]
