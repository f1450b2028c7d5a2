"""Fine-tune benchmark: remove the phrases a model over-uses, with cull and the baselines, and
measure what it cost, all in one run and one table.

1. Sample the base model on the training prompts (processor off); the `--top` antislop phrases and
   words it writes most (at least `--min-count` times) become the phrase list (`cull discover`'s way).
2. Build the on-policy data once, then train each method on it: `cull` (the defaults of `cull
   finetune`), `ul-mle` (unlikelihood + MLE, Welleck et al.), `nat` (negative-tagged samples) and
   `dpo` (TRL's DPOTrainer on (clean, slop) pairs; needs the `trl` extra).
3. Evaluate the base and every model on the held-out prompts, processor off: hits per 1,000 words
   with prompt-clustered CIs, the reduction paired by prompt, perplexity change on the base's own
   hit-free replies and on human-written text (Debian's jargon-text), looping generations against
   the base and its own noise floor, KL from the base.
4. With the processor on, ban events per 1,000 tokens for the base and cull's model.

Writes bench/results/finetune-<device>-<date>.json, .md and .png.

    python bench/finetune_bench.py                 # SmolLM2-135M-Instruct (see docs/finetune.md for the time)
    python bench/finetune_bench.py --quick         # stories260K, "Once upon a time", about a minute
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, data_dir, markdown_table, write_results  # noqa: E402
from bench.finetune_common import (add_setup_args, eval_kwargs, human, quick_defaults, row, setup,  # noqa: E402
                                   timer)

METHODS = ("cull", "ul-mle", "nat", "dpo")
COLS = ["name", "hits", "hits_per_1k_words", "hits_reduction_pct", "hits_reduction_pct_ci_low", "residual_pct_ci_high",
        "greedy_hits", "clean_replies_ppl_change_pct", "clean_replies_ppl_change_pct_ci_high", "human_ppl_change_pct",
        "human_ppl_change_pct_ci_high", "looping_pct", "looping_minus_base_pct_ci_high", "kl_per_token",
        "train_seconds", "ban_events_per_1k_tokens"]


def train_method(name, base, tok, rules, prompts, data, base_path, args, say):
    from cull.finetune import FinetuneConfig, finetune
    from cull.finetune.loss import LossWeights

    fresh = copy.deepcopy(base)
    out = Path(args.work_dir) / name
    if name == "dpo":
        from cull.finetune.baselines import train_dpo

        model, s = train_dpo(fresh, tok, data, out, steps=args.steps, lr=args.dpo_lr, batch_size=args.batch_size,
                             seed=args.seed, say=say)
        return model, s["train_s"]
    cfg = FinetuneConfig(steps=args.steps, lr=args.lr, method=name, seed=args.seed, checkpoint_every=0,
                         weights=LossWeights(kl=args.w_kl),
                         eval_every=args.eval_every, val_samples=args.val_samples, gen_batch_size=args.gen_batch_size,
                         max_new_tokens=args.max_new_tokens)
    s = finetune(fresh, tok, rules, prompts, out, cfg, data=data, base_path=base_path, say=say, progress=False)
    return s["model"], s["train_s"]


def processor_events(m, tok, rules, prompts, args):
    import cull
    from cull.measure.evaluate import BanCounter, generate

    counter = BanCounter(cull.CullLogitsProcessor(rules, tok, vocab_size=m.config.vocab_size))
    g = generate(m, tok, prompts, do_sample=False, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                 processor=counter, progress=False)
    return 1000 * counter.events / max(sum(len(x.gen_ids) for x in g), 1)


def run(args) -> dict:
    from cull.measure.evaluate import evaluate, plot_per_phrase, public

    say = timer()
    t0 = time.perf_counter()
    base, tok, base_path, rules, train_prompts, held, discovered, data = setup(args, say)
    human_texts = human(args, tok)
    ev = eval_kwargs(args)
    say("evaluating the base model")
    res_base = evaluate(base, tok, rules, held, name="base", human_texts=human_texts, **ev)
    ref = {**res_base, "_gens": res_base["_gens"]}
    results, seconds = {"base": res_base}, {}
    methods = [m for m in args.methods if m != "dpo" or _have_trl(say)]
    for name in methods:
        say(f"training {name}")
        model, seconds[name] = train_method(name, base, tok, rules, train_prompts, data, base_path, args, say)
        say(f"evaluating {name}")
        results[name] = evaluate(model, tok, rules, held, reference_model=base, reference_result=ref, name=name,
                                 human_texts=human_texts, **ev)
        if name == "cull" and not args.skip_processor_check:
            results[name]["_ban_events"] = processor_events(model, tok, rules, held, args)
    if not args.skip_processor_check and "cull" in results:
        results["base"]["_ban_events"] = processor_events(base, tok, rules, held, args)
    rows = []
    for name, r in results.items():
        extra = {"train_seconds": seconds.get(name, 0.0)}
        if "_ban_events" in r:
            extra["ban_events_per_1k_tokens"] = r["_ban_events"]
        if name == "base" and "clean_replies" in r:
            extra["clean_replies_ppl"] = r["clean_replies"]["perplexity"]
        rows.append(row(name, r, **extra))
    extra = {"model": str(args.model or "SmolLM2-135M-Instruct"), "phrases": [r.text for r in rules],
             "discovered": discovered, "data": data.stats, "config": {k: v for k, v in vars(args).items() if k != "func"},
             "results": {k: public(v) for k, v in results.items()}, "wall_seconds": time.perf_counter() - t0}
    path = write_results("finetune", rows, out_dir=args.out_dir, extra=extra, tag="-quick" if args.quick else "")
    md = [f"# Fine-tune benchmark ({extra['model']})\n",
          f"{len(held)} held-out prompts x {args.n_eval_samples} samples (T=0.8) + greedy, processor off; CIs are "
          "95% bootstrap over prompts (paired with the base); perplexity changes are paired over texts.\n",
          markdown_table(rows, COLS), "", f"Phrases ({len(rules)}): " + ", ".join(f"`{r.text}`" for r in rules), ""]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot_per_phrase([public(r) for r in results.values()], path.with_suffix(".png"))
    say(f"wrote {path} (+ .md, .png)")
    print(markdown_table(rows, COLS))
    return {"path": str(path), "rows": rows}


def _have_trl(say) -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        say("skipping dpo: TRL is not installed (pip install 'cull-lm[trl]')")
        return False
    return True


def main(argv=None):
    from cull.finetune.loss import LossWeights
    from cull.finetune.train import FinetuneConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_args(p)
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    p.add_argument("--steps", type=int, default=FinetuneConfig.steps, help="default: cull finetune's")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--w-kl", type=float, default=LossWeights.kl, help="cull's KL weight (default: cull finetune's)")
    p.add_argument("--dpo-lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=FinetuneConfig.eval_every, help="default: cull finetune's")
    p.add_argument("--val-samples", type=int, default=1)
    p.add_argument("--skip-processor-check", action="store_true")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        quick_defaults(args, data_dir)
        # stories260K's phrase is 81% of its samples: a loose tether (see tests/finetune)
        args.steps, args.lr, args.dpo_lr, args.eval_every, args.val_samples, args.w_kl = 30, 5e-3, 5e-3, 10, 16, 1.0
    return run(args)


if __name__ == "__main__":
    main()
