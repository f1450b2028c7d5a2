"""Per-step processor cost, side by side with the baselines, at Qwen2's vocabulary width.

Variants: `none` (the logits reset every variant also pays), `cull-torch`, `cull-triton` (CUDA),
`hf-sequence-bias` (transformers' SequenceBiasLogitsProcessor on the same phrases in token form,
which catches only those exact tokenizations) and `dense-mask` (a precomputed [B, V] bool mask
applied with masked_fill_: the simplest dense GPU approach). Each cull variant is the whole
processor call: it advances every row's state by the new token and edits the logits.

    python -m bench.kernel_bench              # CPU: B = 1, 8; 2,000 and 50,046 phrases
    python -m bench.kernel_bench --quick      # seconds; run by the tests
    python -m bench.kernel_bench --gpu        # what bench/gpu_check.sh runs
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import torch

import cull
from bench.common import data_dir, interleaved_medians, markdown_table, plot_lines, write_results

V_QWEN = 151_936


def phrase_sets(quick: bool, gpu: bool):
    words = [w for w, _ in json.loads((data_dir() / "phrases/antislop/slop_words_2025-04-07.json").read_text())]
    full = [p for p, _ in json.loads((data_dir() / "phrases/antislop/slop_phrase_prob_adjustments_full_list.json").read_text())]
    sets = {"2k": words[:200] if quick else words}
    if not quick:
        sets["50k"] = full
    if gpu:
        sets["1k"] = full[:1000]
        sets["10k"] = full[:10_000]
        rng = random.Random(0)
        single = [p for p in full if " " not in p]
        big = list(full)
        while len(big) < 500_000:
            big.append(" ".join(rng.sample(single, 2)))
        sets["500k"] = big
    return sets


def token_form(tok, phrases):
    """The phrases as HF sequence_bias keys: one exact tokenization each, with a leading space."""
    seqs = {}
    for p in phrases:
        ids = tuple(tok.encode(" " + p, add_special_tokens=False))
        if ids:
            seqs[ids] = -100.0
    return seqs


def make_steps(tok, B, steps, seed):
    """Token ids of B rows over `steps` decode steps: real text, so states are realistic."""
    text = ("It was a testament to the rich tapestry of her life, and her voice was barely above a whisper. "
            "She delved into the kaleidoscope of colors, a symphony of light. ") * 8
    ids = tok.encode(text, add_special_tokens=False)
    rng = random.Random(seed)
    rows = []
    for _ in range(B):
        s = rng.randrange(len(ids) - steps - 8)
        rows.append(ids[s:s + steps + 8])
    return torch.tensor(rows)


def time_variant(make_proc, ids, V, device, reps, steps):
    """Median seconds of one processor call, over `steps` consecutive decode steps."""
    B = ids.shape[0]
    scores0 = torch.randn(B, V, device=device)
    buf = scores0.clone()
    procs = make_proc()

    def run():
        for p in procs:
            if hasattr(p, "reset"):
                p.reset()
        for k in range(8, 8 + steps):
            buf.copy_(scores0)
            for p in procs:
                p(ids[:, :k], buf)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="CUDA: B = 1, 8, 64, 256 and phrase counts 1k..500k")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer, SequenceBiasLogitsProcessor

    device = torch.device("cuda" if args.gpu else "cpu")
    if not args.gpu:
        torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(data_dir() / "tokenizers" / "qwen2")
    V = V_QWEN
    batches = [1, 8, 64, 256] if args.gpu else ([1] if args.quick else [1, 8])
    steps = 4 if args.quick else 16
    reps = 3 if args.quick else (20 if args.gpu else 10)
    rows = []
    for set_name, phrases in phrase_sets(args.quick, args.gpu).items():
        rules = cull.PhraseSet(phrases, allow_symbols=True)
        matcher = cull.compile_rules(rules, tok, vocab_size=V)
        seqs = token_form(tok, phrases) if set_name == "2k" else None
        for B in batches:
            ids = make_steps(tok, B, steps, B).to(device)
            variants = {"none": lambda: []}
            variants["cull-torch"] = lambda: [cull.CullLogitsProcessor(matcher, backend="torch", device_state=False)]
            if args.gpu:
                variants["cull-triton"] = lambda: [cull.CullLogitsProcessor(matcher, backend="triton", device_state=True)]
            if seqs is not None:
                variants["hf-sequence-bias"] = lambda: [SequenceBiasLogitsProcessor(sequence_bias={k: v for k, v in seqs.items()})]
            mask = torch.zeros(B, V, dtype=torch.bool, device=device)
            mask[:, ::50] = True
            variants["dense-mask"] = lambda: [lambda i, s: s.masked_fill_(mask, float("-inf"))]
            check_correct(matcher, ids, V, device)
            fns = {k: time_variant(f, ids, V, device, reps, steps) for k, f in variants.items()}
            med = interleaved_medians(fns, reps, warmup=1)
            base = med["none"]
            for name, t in med.items():
                per_step_us = (t - base) / steps * 1e6 if name != "none" else t / steps * 1e6
                rows.append({"name": name, "phrases": len(phrases), "set": set_name, "batch": B, "vocab": V,
                             "median_us": round(per_step_us, 2),
                             "note": "logits reset per step" if name == "none" else "per step, minus none"})
            print(json.dumps(rows[-len(med):]))
    extra = {"command": "python -m bench.kernel_bench" + (" --gpu" if args.gpu else "") + (" --quick" if args.quick else ""),
             "load_average_1min": round(os.getloadavg()[0], 2), "steps_per_run": steps}
    path = write_results("kernel", rows, args.out, extra=extra, tag="-quick" if args.quick else "")
    md = markdown_table(rows, ["name", "set", "batch", "median_us"])
    path.with_suffix(".md").write_text(md + "\n")
    series = {}
    for r in rows:
        if r["name"] != "none" and r["set"] in ("2k", "50k"):
            key = f"{r['name']} ({r['set']})"
            series.setdefault(key, ([], []))
            series[key][0].append(r["batch"])
            series[key][1].append(r["median_us"])
    plot_lines(path.with_suffix(".png"), series, "batch size", "µs per decode step",
               f"processor cost per step, V={V} ({'GPU' if args.gpu else 'CPU'})")
    print(md)
    print(f"wrote {path}")
    return 0


def check_correct(matcher, ids, V, device):
    """Before timing: the processor's edits equal the reference backend's on these rows."""
    a = cull.CullLogitsProcessor(matcher, backend="reference", device_state=False)
    b = cull.CullLogitsProcessor(matcher, backend="torch", device_state=False)
    x = torch.randn(min(ids.shape[0], 4), V)
    if not torch.equal(a(ids[:4, :10].cpu(), x.clone()), b(ids[:4, :10].cpu(), x.clone())):
        raise SystemExit("correctness check failed: torch backend differs from the reference")


if __name__ == "__main__":
    raise SystemExit(main())
