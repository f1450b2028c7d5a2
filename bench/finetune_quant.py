"""Does a fine-tune's reduction survive 4-bit rounding? A simulation of llama.cpp's Q4_0.

Every Linear weight (and the embeddings) of the base and of the fine-tuned model is rounded the way
Q4_0 stores it: blocks of 32 along the input dimension, one scale per block (d = the block's
signed value of largest magnitude / -8), values round(x / d) clamped to [-8, 7]. Both rounded
models are then evaluated like the benchmark does, the tuned one against the rounded base. This is
a simulation in torch, not llama.cpp's file format; K-quants (Q4_K_M) keep more precision.

    python -m bench.finetune_quant --model FT_DIR --phrase-file phrases.txt   # against SmolLM2 (--base BASE)
    python -m bench.finetune_quant --quick                                    # stories260K, seconds
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, data_dir, markdown_table, write_results  # noqa: E402
from bench.finetune_common import row, timer  # noqa: E402

BLOCK = 32


def q4_0(w):
    """Q4_0 round trip of a 2-D weight [out, in] (in padded to a multiple of 32): the dequantised values."""
    import torch

    out_f, in_f = w.shape
    pad = (-in_f) % BLOCK
    x = torch.nn.functional.pad(w.float(), (0, pad)).reshape(out_f, -1, BLOCK)
    idx = x.abs().argmax(-1, keepdim=True)
    d = x.gather(-1, idx) / -8.0
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = (x * inv).round().clamp(-8, 7)
    return (q * d).reshape(out_f, -1)[:, :in_f].to(w.dtype)


def q4_0_reference(w):
    """The same, one block at a time in plain Python (the oracle for `q4_0`)."""
    import torch

    out = torch.empty_like(w, dtype=torch.float32)
    for r in range(w.shape[0]):
        for b in range(0, w.shape[1], BLOCK):
            blk = [float(v) for v in w[r, b:b + BLOCK]]
            m = max(blk, key=abs)
            d = m / -8.0
            for i, v in enumerate(blk):
                q = 0.0 if d == 0 else max(-8.0, min(7.0, float(round(v / d))))
                out[r, b + i] = q * d
    return out.to(w.dtype)


def quantized(model):
    """A copy of `model` with every 2-D weight (Linear layers, embeddings) Q4_0-rounded."""
    import torch

    m = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.copy_(q4_0(p))
    return m.eval()


def run(args) -> dict:
    import cull
    from cull.measure.evaluate import evaluate, load_prompts
    from cull.measure.models import load_model_with_base
    from cull.measure.models import set_threads

    say = timer()
    t0 = time.perf_counter()
    set_threads(args.threads)
    base, tok, _ = load_model_with_base(args.base, say=say)
    tuned = load_model_with_base(args.model, say=say)[0]
    rules = cull.PhraseSet(args.phrases)
    prompts = load_prompts(args.prompts) if args.prompts else [""]
    ev = dict(n_samples=args.n_samples, max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
              progress=False)
    rows = []
    for tag, b, t in (("fp32", base, tuned), ("q4_0", quantized(base), quantized(tuned))):
        rb = evaluate(b, tok, rules, prompts, name=f"base-{tag}", **ev)
        rt = evaluate(t, tok, rules, prompts, reference_model=b, reference_result=rb, name=f"tuned-{tag}", **ev)
        rows += [row(f"base-{tag}", rb), row(f"tuned-{tag}", rt)]
        say(f"{tag}: base {rows[-2]['hits']} hits, tuned {rows[-1]['hits']} hits")
    extra = {"model": str(args.model), "base": str(args.base), "phrases": args.phrases,
             "config": {k: v for k, v in vars(args).items() if k != "func"}, "wall_seconds": time.perf_counter() - t0}
    path = write_results("finetune-q4", rows, out_dir=args.out_dir, extra=extra, tag="-quick" if args.quick else "")
    cols = ["name", "hits", "generations", "hits_per_1k_words", "hits_reduction_pct", "hits_reduction_pct_ci_low",
            "clean_replies_ppl_change_pct", "clean_replies_ppl_change_pct_ci_high"]
    path.with_suffix(".md").write_text("# Fine-tune under simulated Q4_0 rounding\n\n" + markdown_table(rows, cols) + "\n")
    print(markdown_table(rows, cols))
    return {"path": str(path), "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="the fine-tuned model folder")
    p.add_argument("--base", default=None, help="the base model (default: SmolLM2)")
    p.add_argument("--phrases", nargs="*", default=None)
    p.add_argument("--phrase-file", default=None, help="a phrase file (what `cull discover --out` wrote)")
    p.add_argument("--prompts", default="heldout")
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="fine-tune stories260K for 20 steps, then compare")
    p.add_argument("--work-dir", default="/tmp/cull-finetune-q4")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cull.finetune import FinetuneConfig, finetune

        args.base = str(data_dir() / "models" / "stories260K")
        args.phrases, args.prompts, args.threads = ["Once upon a time"], None, args.threads or 1
        args.n_samples, args.max_new_tokens, args.model = 32, 12, str(Path(args.work_dir) / "tuned")
        import torch

        torch.set_num_threads(args.threads)
        finetune(AutoModelForCausalLM.from_pretrained(args.base), AutoTokenizer.from_pretrained(args.base),
                 args.phrases, [""], args.model, FinetuneConfig(steps=20, lr=5e-3, n_samples=32, max_new_tokens=16,
                                                                checkpoint_every=0, eval_every=10, val_samples=16),
                 progress=False, say=lambda m: None)
    if args.phrase_file:
        import cull

        args.phrases = (args.phrases or []) + [r.text for r in cull.PhraseSet.load(args.phrase_file)]
    if not args.model or not args.phrases:
        p.error("--model and --phrases are needed (or --quick)")
    return run(args)


if __name__ == "__main__":
    main()
