"""What a new phrase list costs the *other* users of a vLLM server, and what admission costs.

Part 1, admission (cull's own work at `validate_params`, on the API server's event loop):
refusing a 1,000,000-phrase request, refusing an exploding regex, accepting a 50,046-phrase
inline list (first time and again).

Part 2, stalls: the real OpenAI server (engine in its own process, as deployed), random-weight
SmolLM2-shaped model with Qwen2's tokenizer (V = 151,936). Four plain requests stream 300 tokens
each; while they stream, one request arrives with the 50,046-phrase antislop list: inline (its
first time, then again) or as a server-side list (`CULL_LISTS_DIR`, compiled at engine start).
The figure is the longest gap between two tokens of the streaming requests while that request
is admitted and served, against their median gap. `/health` latency is sampled meanwhile.

    .venv-vllm/bin/python -m bench.vllm_serving_bench [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import data_dir, markdown_table, write_results  # noqa: E402

FULL = "slop_phrase_prob_adjustments_full_list.json"


def admission_rows() -> list[dict]:
    import cull
    from cull.errors import CullError
    from cull.integrations import request_settings as rs

    rows = []

    def timed(name, extra, expect_error):
        rs._PARSED.clear()
        t0 = time.perf_counter()
        try:
            rs.parse_settings(extra)
            ok = True
        except CullError:
            ok = False
        dt = time.perf_counter() - t0
        assert ok != expect_error, name
        rows.append({"name": name, "part": "admission", "seconds": round(dt, 4), "accepted": ok})

    million = [f"phrase number {i}" for i in range(1_000_000)]
    timed("refuse-1m-phrases", {"cull": {"phrases": million}}, True)
    timed("refuse-exploding-regex", {"cull_phrases": ["re:([abcdefghijklmnop][abcdefghijklmnop]){3}"]}, True)
    phrases = [p for p, _ in json.loads((data_dir() / "phrases" / "antislop" / FULL).read_text())]
    timed("accept-50k-inline", {"cull": {"phrases": phrases}}, False)
    t0 = time.perf_counter()
    rs.parse_settings({"cull": {"phrases": phrases}})
    rows.append({"name": "accept-50k-inline-again", "part": "admission", "seconds": round(time.perf_counter() - t0, 4),
                 "accepted": True})
    del cull
    return rows


def make_model(folder: Path, quick: bool) -> Path:
    from bench.vllm_bench import make_model as mk

    return mk(folder, quick)


def start_server(model: Path, port: int, env: dict, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
         "--port", str(port), "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024",
         "--kv-cache-memory-bytes", str(256 * 2**20), "--served-model-name", "m",
         "--logits-processors", "cull.integrations.vllm:CullLogitsProcessor"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(1)
    proc.kill()
    raise RuntimeError("server did not start: " + log.read_text()[-3000:])


def stall_row(client, port, name, xargs, n_streams=4, tokens=300) -> dict:
    stamps = [[] for _ in range(n_streams)]

    def stream(i):
        for ch in client.completions.create(model="m", prompt=f"Story {i}:", max_tokens=tokens, temperature=0,
                                            stream=True, extra_body={"ignore_eos": True}):
            if ch.choices and ch.choices[0].text:
                stamps[i].append(time.perf_counter())

    health = []
    done = threading.Event()

    def probe():
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30).read()
            except OSError:
                pass
            health.append(time.perf_counter() - t0)
            time.sleep(0.05)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(n_streams)] + [threading.Thread(target=probe)]
    for t in threads:
        t.start()
    while min(len(s) for s in stamps) < 20:  # streaming steadily
        time.sleep(0.01)
    t_send = time.perf_counter()
    out = client.completions.create(model="m", prompt="Write about the sea.", max_tokens=8, temperature=0,
                                    extra_body={"vllm_xargs": xargs})
    t_done = time.perf_counter()
    for t in threads[:-1]:
        t.join()
    done.set()
    threads[-1].join()
    gaps_in = [b - a for s in stamps for a, b in zip(s, s[1:]) if b >= t_send and a <= t_done + 0.5]
    gaps_before = [b - a for s in stamps for a, b in zip(s, s[1:]) if b < t_send]
    return {"name": name, "part": "stall", "max_gap_ms": round(1e3 * max(gaps_in, default=0), 1),
            "median_gap_ms": round(1e3 * statistics.median(gaps_before), 1),
            "request_s": round(t_done - t_send, 3), "health_max_ms": round(1e3 * max(health), 1),
            "output_chars": len(out.choices[0].text)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="admission figures and one small stall run only")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    import openai

    rows = admission_rows()
    root = Path(tempfile.mkdtemp(prefix="cull-serving-"))
    try:
        model = make_model(root / "model", quick=True)
        lists = root / "lists"
        lists.mkdir()
        shutil.copy(data_dir() / "phrases" / "antislop" / FULL, lists / "antislop50k.json")
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CULL_CACHE_DIR": str(root / "cache"), "CULL_LISTS_DIR": str(root / "lists")}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    proc = start_server(model, port, env, root / "server.log")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        phrases = [p for p, _ in json.loads((data_dir() / "phrases" / "antislop" / FULL).read_text())]
        variants = [("plain", None), ("inline-20", {"cull_phrases": phrases[:20]})]
        if not args.quick:
            variants += [("inline-50k-first", {"cull": json.dumps({"phrases": phrases})}),
                         ("inline-50k-again", {"cull": json.dumps({"phrases": phrases})}),
                         ("server-list-50k", {"cull_list": "antislop50k"})]
        for name, xargs in variants:
            rows.append(stall_row(client, port, name, xargs))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    path = write_results("vllm-serving", rows, args.out, tag="-quick" if args.quick else "")
    md = markdown_table(rows, ["name", "part", "seconds", "max_gap_ms", "median_gap_ms", "request_s", "health_max_ms"])
    path.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
