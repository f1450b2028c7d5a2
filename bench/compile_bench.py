"""Compile benchmark: compile time and size of a phrase list against a vocabulary, reload time from
the cache, and the torch backend's per-step cost as the phrase count grows.

    python -m bench.compile_bench            # Qwen2 vocabulary, antislop 50,046-phrase list
    python -m bench.compile_bench --quick    # small and fast (run by the tests)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch

import cull
from cull.compile import cache as compile_cache
from bench.common import data_dir, interleaved_medians, markdown_table, median_time, plot_lines, write_results
from cull.compile.cache import as_vocab
from cull.kernels import apply_rules

TEXTS = ["It is a testament to the", "She let out a breath she didn't know she was", "The rich tapestry of",
         "I delved into the", "Her voice was barely above a", "In the heart of the city, a kaleidoscope of",
         "Once upon a time, in a land far away, there lived a", "The"]


def load_phrases(n: int | None):
    path = data_dir() / "phrases" / "antislop" / "slop_phrase_prob_adjustments_full_list.json"
    pairs = json.loads(path.read_text())
    phrases = [p for p, _ in pairs]
    if n and n > len(phrases):  # synthetic extra phrases beyond the real list
        rng = random.Random(0)
        words = [p for p in phrases if " " not in p]
        while len(phrases) < n:
            phrases.append(" ".join(rng.sample(words, 2)))
    return cull.PhraseSet(phrases[:n] if n else phrases, allow_symbols=True)


def check_correct(matcher, tok, rules) -> None:
    """Before timing: every phrase of a sample is banned where it would complete."""
    rng = random.Random(0)
    for rule in rng.sample(list(rules.rules), min(50, len(rules))):
        ids = tok.encode("x " + rule.phrase, add_special_tokens=False)
        state = matcher.advance_many(matcher.initial_state(), ids[:-1])
        if ids[-1] not in matcher.banned(state):
            raise SystemExit(f"correctness check failed: {rule.phrase!r} is not banned at its last token")


def step_time_us(matcher, tok, B: int, V: int, reps: int) -> tuple[float, float]:
    """(median µs of a reset+apply step, median µs of the reset alone), interleaved."""
    states = [matcher.advance_many(matcher.initial_state(), tok.encode(TEXTS[i % len(TEXTS)])) for i in range(B)]
    nodes = torch.tensor([s[0] for s in states])
    classes = torch.tensor([s[1] for s in states])
    tables = matcher.device_tables("cpu")
    base = torch.randn(B, V)
    buf = base.clone()

    def step():
        buf.copy_(base)
        apply_rules(buf, nodes, classes, tables, backend="torch")

    t = interleaved_medians({"step": step, "none": lambda: buf.copy_(base)}, reps)
    return t["step"] * 1e6, t["none"] * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="GPT-2 vocabulary, small lists, few repetitions")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    torch.set_num_threads(1)  # the per-step ops are tiny: threads add noise, not speed

    tok_name = "gpt2" if args.quick else "qwen2"
    tok = AutoTokenizer.from_pretrained(data_dir() / "tokenizers" / tok_name)
    V = 151_936 if tok_name == "qwen2" else len(tok)
    vocab = as_vocab(tok, V)
    counts = [200, 1000] if args.quick else [1000, 10_000, None]
    reps = 20 if args.quick else 200
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CULL_CACHE_DIR"] = cache
        for n in counts:
            rules = load_phrases(n)
            compile_cache._KEYS.clear()  # cold: the vocabulary's sorted keys are built in the timing too
            t = time.perf_counter()
            matcher = cull.compile_rules(rules, vocab)
            compile_s = time.perf_counter() - t
            t = time.perf_counter()  # warm: another list against the same vocabulary (a server's case)
            cull.compile_rules(rules, vocab, cache=False)
            warm_s = time.perf_counter() - t
            check_correct(matcher, tok, rules)
            reload_s = median_time(lambda: cull.compile_rules(rules, vocab), 3 if args.quick else 5, warmup=1)
            st = matcher.stats()
            row = {"name": "cull-torch", "phrases": len(rules), "patterns": st["patterns"], "vocab": V,
                   "compile_seconds": round(compile_s, 3), "compile_warm_seconds": round(warm_s, 3),
                   "reload_seconds": round(reload_s, 4),
                   "table_mib": round(st["table_mib"], 2), "device_mib": round(st["device_mib"], 2),
                   "states": st["states"], "ranges": st["ranges"]}
            for B in (1, 8):
                step, none = step_time_us(matcher, tok, B, V, reps)
                row[f"step_b{B}_median_us"] = round(step, 1)
                row[f"logits_copy_b{B}_median_us"] = round(none, 1)
            rows.append(row)
            print(json.dumps(row))
    base = rows[0]
    for r in rows:
        for B in (1, 8):
            r[f"step_b{B}_vs_smallest"] = round(r[f"step_b{B}_median_us"] / base[f"step_b{B}_median_us"], 3)
    load = os.getloadavg()[0]
    path = write_results("compile", rows, args.out, tag="-quick" if args.quick else "",
                         extra={"command": "python -m bench.compile_bench" + (" --quick" if args.quick else ""),
                                "load_average_1min": round(load, 2), "torch_threads": 1})
    cols = ["phrases", "compile_seconds", "compile_warm_seconds", "reload_seconds", "device_mib", "states", "ranges",
            "step_b1_median_us", "step_b8_median_us", "logits_copy_b8_median_us", "step_b1_vs_smallest",
            "step_b8_vs_smallest"]
    md = markdown_table(rows, cols)
    path.with_suffix(".md").write_text(md + "\n")
    plot_lines(path.with_suffix(".png"),
               {f"B={B}": ([r["phrases"] for r in rows], [r[f"step_b{B}_median_us"] for r in rows]) for B in (1, 8)},
               "phrases", "torch backend step incl. logits reset (µs)", f"cull per-step cost vs phrase count ({tok_name}, CPU)")
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
