"""What returning new scores costs: one processor step with `inplace=False` (the HF default: the
scores are copied, the input left untouched) against `inplace=True`, on this machine.

Rules: the antislop phrase list (ban) on the SmolLM2 tokenizer (V = 49,152) and on Qwen2's (logits of
151,936). Rows carry a real context; every timed step advances one token, as in a decode loop.

    python -m bench.copy_cost [--quick]
"""
from __future__ import annotations

import argparse

import torch

import cull

from .common import data_dir, interleaved_medians, write_results


def step_fn(proc, ids, scores0, start: int, steps: int):
    """A closure that runs `steps` decode steps (lengths start .. start+steps-1) on fresh logits."""
    def run():
        proc.reset()
        for k in range(start, start + steps):
            proc(ids[:, :k], scores0)
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    rules = cull.PhraseSet.load(data_dir() / "phrases/antislop/slop_phrase_prob_adjustments.json", action="ban")
    setups = [("smollm2", data_dir() / "models" / "smollm2-135m-instruct", None, "SmolLM2-135M-Instruct.Q4_1.gguf"),
              ("qwen2", data_dir() / "tokenizers" / "qwen2", 151_936, None)]
    steps, reps = (8, 3) if args.quick else (32, 7)
    rows = []
    for name, folder, width, gguf in setups:
        tok = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf} if gguf else {}))
        matcher = cull.compile_rules(rules, tok, vocab_size=width)
        V = width or matcher.n_tokens
        text = "It was a testament to the rich tapestry of her life, and she would never forget it. " * 4
        base = torch.tensor([tok.encode(text)])
        for B in (1, 8):
            ids = base.repeat(B, 1)
            scores0 = torch.randn(B, V)
            fns = {mode: step_fn(cull.CullLogitsProcessor(matcher, backend="torch", device_state=False,
                                                         inplace=(mode == "inplace")), ids, scores0, 16, steps)
                   for mode in ("inplace", "copy")}
            med = interleaved_medians(fns, reps)
            inplace_us, copy_us = (1e6 * med[m] / steps for m in ("inplace", "copy"))
            clone_us = 1e6 * interleaved_medians({"c": lambda: [scores0.clone() for _ in range(steps)]}, reps)["c"] / steps
            rows.append({"name": f"{name}-B{B}", "tokenizer": name, "vocab": V, "batch": B,
                         "inplace_us": round(inplace_us, 1), "copy_us": round(copy_us, 1),
                         "clone_alone_us": round(clone_us, 1), "copy_over_inplace_ratio": round(copy_us / inplace_us, 3)})
            print(rows[-1], flush=True)
    path = write_results("copy-cost", rows, extra={"threads": 1, "steps_per_rep": steps, "reps": reps,
                                                   "rules": "antislop slop_phrase_prob_adjustments.json (ban)"})
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
