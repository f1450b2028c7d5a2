"""The benchmarks' --quick modes, so they cannot rot: each checks correctness, then writes JSON in
bench/common.py's schema (`write_results`), a markdown table and (for compile and kernel) a PNG plot."""
import json

import pytest

SCHEMA = {"benchmark", "device", "git_sha", "date", "versions", "rows"}


def check(path_glob, tmp_path, unit_keys):
    files = list(tmp_path.glob(path_glob))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())
    assert SCHEMA <= set(doc)
    assert doc["device"] == "cpu" and doc["rows"]
    for row in doc["rows"]:
        assert "name" in row
        assert any(k in row for k in unit_keys), row
    assert files[0].with_suffix(".md").exists()
    return doc


@pytest.mark.usefixtures("data_dir")
def test_compile_bench_quick(tmp_path):
    from bench import compile_bench

    assert compile_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = check("compile-*.json", tmp_path, ["compile_seconds"])
    assert all(r["compile_seconds"] > 0 and r["reload_seconds"] < r["compile_seconds"] for r in doc["rows"])
    assert list(tmp_path.glob("compile-*.png"))


@pytest.mark.usefixtures("data_dir")
def test_kernel_bench_quick(tmp_path):
    from bench import kernel_bench

    assert kernel_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = check("kernel-*.json", tmp_path, ["median_us"])
    assert {r["name"] for r in doc["rows"]} >= {"none", "cull-torch", "hf-sequence-bias", "dense-mask"}


@pytest.mark.usefixtures("data_dir")
def test_e2e_bench_quick(tmp_path):
    from bench import e2e_bench

    assert e2e_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = check("e2e-*.json", tmp_path, ["tokens_per_s"])
    assert {r["name"] for r in doc["rows"]} == {"none", "cull-torch"}
