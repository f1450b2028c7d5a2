"""End-to-end decode overhead: HF `generate` tokens/s with and without cull, in the same run.

CPU: the default model (SmolLM2-135M-Instruct), B = 1. GPU (`--gpu`): a random-weight model of
Qwen2-1.5B's shape, bf16, B = 1 and 64. Both variants generate exactly the same number of tokens
(min_new_tokens = max_new_tokens) and run round-robin, so machine noise hits them alike. Where that
noise is larger than the effect (a shared CPU), `processor_share_of_decode` is the precise figure:
the processor's own time (synchronised on a GPU) as a fraction of the decode time with it on.

    python -m bench.e2e_bench              # CPU, SmolLM2, antislop 517 and 50,046 lists
    python -m bench.e2e_bench --quick      # stories260K, seconds; run by the tests
    python -m bench.e2e_bench --gpu
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import cull
from bench.common import data_dir, markdown_table, write_results


class Timed:
    """Wraps a processor and adds up the wall time of its calls (synchronised on a GPU)."""

    def __init__(self, proc, device):
        self.proc, self.device, self.seconds = proc, device, 0.0

    def reset(self):
        self.proc.reset()

    def __call__(self, input_ids, scores):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = self.proc(input_ids, scores)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t
        return out


def load(args):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if args.gpu:
        cfg = AutoConfig.from_pretrained(data_dir() / "tokenizers" / "qwen2" / "qwen2-1.5b-architecture.json")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16).cuda().eval()
        tok = AutoTokenizer.from_pretrained(data_dir() / "tokenizers" / "qwen2")
        return model, tok, "qwen2-1.5b-random-bf16"
    if args.quick:
        folder = data_dir() / "models" / "stories260K"
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder), "stories260K"
    from cull.measure.models import load_model

    model, tok = load_model(None)
    return model, tok, "SmolLM2-135M-Instruct"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    model, tok, model_name = load(args)
    device = next(model.parameters()).device
    n_new = args.tokens or (16 if args.quick else 64)
    reps = args.reps or (2 if args.quick else 5)
    lists = {"517": "slop_phrase_prob_adjustments.json"}
    if not args.quick:
        lists["50k"] = "slop_phrase_prob_adjustments_full_list.json"
    batches = [1, 64] if args.gpu else [1]
    prompt = "Write a short story about a lighthouse keeper who finds a message in a bottle."
    rows = []
    for B in batches:
        enc = tok([prompt] * B, return_tensors="pt").to(device)
        for list_name, fname in lists.items():
            rules = cull.PhraseSet.load(data_dir() / "phrases" / "antislop" / fname, action="ban", allow_symbols=True)
            vocab_size = model.get_output_embeddings().weight.shape[0]
            raw = cull.CullLogitsProcessor(rules, tok, vocab_size=vocab_size)
            timed = Timed(raw, device)

            def gen(with_cull, proc=raw):
                if with_cull:
                    proc.reset()
                kw = {"logits_processor": [proc]} if with_cull else {}
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = model.generate(**enc, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id, **kw)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - t, out

            gen(False), gen(True)  # warm-up (and the compile cache)
            times = {"none": [], "cull": []}
            for _ in range(reps):
                for name in ("none", "cull"):
                    dt, out = gen(name == "cull")
                    assert out.shape[1] == enc["input_ids"].shape[1] + n_new
                    times[name].append(dt)
            med = {k: statistics.median(v) for k, v in times.items()}
            overhead = med["cull"] / med["none"] - 1
            # the processor's own time inside generate, from separate runs (its syncs perturb timing)
            timed.seconds, total = 0.0, 0.0
            for _ in range(max(1, reps // 2)):
                total += gen(True, timed)[0]
            share = timed.seconds / total
            for name in ("none", "cull"):
                rows.append({"name": name if name == "none" else ("cull-triton" if device.type == "cuda" else "cull-torch"),
                             "model": model_name, "batch": B, "phrases": len(rules), "list": list_name,
                             "new_tokens": n_new, "tokens_per_s": round(B * n_new / med[name], 2),
                             "seconds": round(med[name], 4), "overhead_vs_none": round(overhead, 4),
                             "processor_share_of_decode": round(share, 5)})
            print(json.dumps(rows[-2:]))
    extra = {"command": "python -m bench.e2e_bench" + (" --gpu" if args.gpu else "") + (" --quick" if args.quick else ""),
             "load_average_1min": round(os.getloadavg()[0], 2), "torch_threads": torch.get_num_threads(),
             "reps": reps}
    path = write_results("e2e", rows, args.out, extra=extra, tag="-quick" if args.quick else "")
    md = markdown_table(rows, ["name", "model", "batch", "list", "tokens_per_s", "overhead_vs_none",
                               "processor_share_of_decode"])
    path.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
