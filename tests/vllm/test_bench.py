"""The vLLM benchmark's quick mode runs in CI, so that it cannot rot: correctness checks pass and the
JSON has bench/common.py's schema (`write_results`)."""
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm


def test_vllm_bench_quick(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench import vllm_bench

    assert vllm_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("vllm-e2e-*-quick.json")
    doc = json.loads(path.read_text())
    assert {"benchmark", "device", "git_sha", "date", "versions", "rows"} <= set(doc)
    names = [r["name"] for r in doc["rows"]]
    assert names[0] == "none" and any(n.startswith("vllm-bad-words-") for n in names)
    assert all(r["tokens_per_s"] > 0 for r in doc["rows"])
    assert (tmp_path / path.with_suffix(".md").name).is_file()


def test_vllm_serving_bench_quick(tmp_path):
    """Admission figures and two stall rows against a real server, in the results schema."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench import vllm_serving_bench

    assert vllm_serving_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("vllm-serving-*-quick.json")
    doc = json.loads(path.read_text())
    assert {"benchmark", "device", "git_sha", "date", "versions", "rows"} <= set(doc)
    rows = {r["name"]: r for r in doc["rows"]}
    assert not rows["refuse-1m-phrases"]["accepted"] and rows["accept-50k-inline"]["accepted"]
    assert rows["plain"]["max_gap_ms"] > 0 and rows["inline-20"]["output_chars"] > 0
