"""Per-step processor cost, side by side with the baselines, at Qwen2's vocabulary width.

Variants: `none` (the logits reset every variant also pays), `cull-torch`, `cull-triton` (CUDA),
`hf-sequence-bias` (transformers' SequenceBiasLogitsProcessor on the same phrases in token form,
which catches only those exact tokenizations) and `dense-mask` (a precomputed [B, V] bool mask
applied with masked_fill_: the simplest dense GPU approach). Each cull variant is the whole
processor call: it advances every row's state by the new token and edits the logits.

    python -m bench.kernel_bench              # CPU: B = 1, 8; 2,000 and 50,046 phrases
    python -m bench.kernel_bench --quick      # seconds; run by the tests
    python -m bench.kernel_bench --gpu        # what bench/gpu_check.sh runs

On a GPU each variant is timed twice. `mode=eager`: the processor called as HF calls it, host
overhead included (host clock around the steps, synchronised once, minus `none`). `mode=graph`:
the step's device work alone, as a decode loop captured in a CUDA graph runs it (the step captured
20 times in one graph, replays timed with CUDA events); for cull-triton that is the one fused
launch that finds every row's state from its tokens and edits the logits.
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
        if args.gpu:
            rows.append(device_memory_row(matcher, set_name, len(phrases)))
            print(json.dumps(rows[-1]))
        for B in batches:
            ids = make_steps(tok, B, steps, B).to(device)
            variants = {"none": lambda: []}
            variants["cull-torch"] = lambda: [cull.CullLogitsProcessor(matcher, backend="torch", device_state=False, inplace=True)]
            if args.gpu:
                variants["cull-triton"] = lambda: [cull.CullLogitsProcessor(matcher, backend="triton", device_state=True,
                                                                                 inplace=True)]
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
            for r in rows[-len(med):]:
                r["mode"] = "eager"
            print(json.dumps(rows[-len(med):]))
            if args.gpu:
                hf = SequenceBiasLogitsProcessor(sequence_bias=dict(seqs)) if seqs is not None else None
                rows += graph_rows(matcher, ids, V, hf, set_name, len(phrases))
                print(json.dumps(rows[-4:]))
    extra = {"command": "python -m bench.kernel_bench" + (" --gpu" if args.gpu else "") + (" --quick" if args.quick else ""),
             "load_average_1min": round(os.getloadavg()[0], 2), "steps_per_run": steps}
    path = write_results("kernel", rows, args.out, extra=extra, tag="-quick" if args.quick else "")
    cols = ["name", "mode", "dtype", "set", "batch", "median_us", "mib"] if args.gpu else ["name", "set", "batch", "median_us"]
    md = markdown_table(rows, cols)
    path.with_suffix(".md").write_text(md + "\n")
    plot_rows(path, rows, V, args.gpu)
    print(md)
    print(f"wrote {path}")
    return 0


def plot_rows(path, rows, V, gpu):
    """Cost per step against batch size (one line per variant); on a GPU also against phrase count."""
    mode = "graph" if gpu else "eager"
    series = {}
    for r in rows:
        if r["name"] != "none" and r["set"] in ("2k", "50k") and r.get("mode", "eager") == mode \
                and r.get("dtype", "float32") == "float32":
            key = f"{r['name']} ({r['set']})"
            series.setdefault(key, ([], []))
            series[key][0].append(r["batch"])
            series[key][1].append(r["median_us"])
    where = "GPU, CUDA graph, fp32 logits" if gpu else "CPU"
    plot_lines(path.with_suffix(".png"), series, "batch size", "µs per decode step",
               f"processor cost per step, V={V} ({where})")
    if gpu:
        by_count = {}
        for r in rows:
            if r["name"] == "cull-triton" and r.get("mode") == "graph" and r.get("dtype") == "float32":
                key = f"B={r['batch']}"
                by_count.setdefault(key, ([], []))
                by_count[key][0].append(r["phrases"])
                by_count[key][1].append(r["median_us"])
        for xs, ys in by_count.values():  # sets are timed in dict order; plot in phrase order
            order = sorted(range(len(xs)), key=xs.__getitem__)
            xs[:], ys[:] = [xs[i] for i in order], [ys[i] for i in order]
        plot_lines(path.with_name(path.stem + "-phrases.png"), by_count, "phrases", "µs per decode step",
                   f"cull-triton per step vs phrases (CUDA graph, fp32, V={V})")


def device_memory_row(matcher, set_name, n_phrases) -> dict:
    """GPU memory the compiled list takes: the kernels' tables and the on-device stepping tables."""
    from cull.decode.device_rows import DeviceRowStates

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    matcher.device_tables("cuda").kernel_lists  # a cached property: reading it builds the Triton lists
    DeviceRowStates(matcher, "cuda", include_prompt=False)
    torch.cuda.synchronize()
    mib = (torch.cuda.memory_allocated() - before) / 2**20
    return {"name": "cull-tables", "set": set_name, "phrases": n_phrases, "mib": round(mib, 2),
            "states": int(len(matcher.tables["fail"])), "note": "torch.cuda.memory_allocated delta"}


def cuda_graph_us(fn, steps: int = 20, reps: int = 30) -> float:
    """Median µs per call of `fn`, captured `steps` times in one CUDA graph, replays timed by events."""
    import statistics

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(steps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000 / steps)
    return statistics.median(times)


def graph_rows(matcher, ids, V, hf, set_name, n_phrases):
    """Device time per step in a CUDA graph: cull-triton (fp32 and bf16 logits), dense-mask, HF."""
    from cull.kernels.triton_backend import step_triton

    B = ids.shape[0]
    proc = cull.CullLogitsProcessor(matcher, backend="triton", device_state=True, inplace=True)
    T = matcher.device_tables(ids.device)
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(B, V, device=ids.device).to(dtype)
        proc.reset()
        proc(ids[:, :-1], logits.clone())  # the previous step: rows are found, then advance one token
        rows_ = proc._device_rows
        prev = tuple(x.clone() for x in rows_.prev)
        new = tuple(torch.empty_like(x) for x in prev)
        pw = rows_.powers_for(ids.shape[1])
        want = logits.clone()
        proc(ids, want)  # eager processor call, the reference for the graph's result
        got = logits.clone()
        scope = rows_.scope(ids.shape[1])
        step_triton(got, ids, pw, prev, new, scope, False, rows_.step_tables, T)
        if not torch.equal(got, want):
            raise SystemExit("correctness check failed: the graph-mode step differs from the processor call")
        variants = {"cull-triton": lambda: step_triton(logits, ids, pw, prev, new, scope, False,
                                                       rows_.step_tables, T)}
        mask = torch.rand(B, V, device=ids.device) < 0.05
        variants["dense-mask"] = lambda: logits.masked_fill_(mask, float("-inf"))
        if hf is not None and dtype == torch.float32:
            variants["hf-sequence-bias"] = lambda: hf(ids, logits)
        for name, fn in variants.items():
            us = cuda_graph_us(fn)
            out.append({"name": name, "mode": "graph", "dtype": str(dtype).replace("torch.", ""),
                        "phrases": n_phrases, "set": set_name, "batch": B, "vocab": V, "context": ids.shape[1],
                        "median_us": round(us, 2), "note": "device time per step, CUDA graph replay"})
    return out


def check_correct(matcher, ids, V, device):
    """Before timing: the processor's edits equal the reference backend's on these rows."""
    a = cull.CullLogitsProcessor(matcher, backend="reference", device_state=False)
    b = cull.CullLogitsProcessor(matcher, backend="torch", device_state=False)
    x = torch.randn(min(ids.shape[0], 4), V)
    if not torch.equal(a(ids[:4, :10].cpu(), x.clone()), b(ids[:4, :10].cpu(), x.clone())):
        raise SystemExit("correctness check failed: torch backend differs from the reference")


if __name__ == "__main__":
    raise SystemExit(main())
