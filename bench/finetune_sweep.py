"""Fine-tune sweep: train once per setting (KL weight x rounds), evaluate each trained LoRA at
several merge scales, and draw the Pareto plot of hit reduction against perplexity cost, with CIs.

A merge scale s puts W + s * (B A) into the model instead of W + B A (s = 1 is the trained model),
so one training gives a whole curve. Every point is evaluated against the same base samples.

Writes bench/results/finetune-sweep-<device>-<date>.json, .md and .png.

    python -m bench.finetune_sweep --kl 10 30 100 --rounds 1 2 --scales 0.5 0.75 1  # SmolLM2 (long)
    python -m bench.finetune_sweep --quick                                          # stories260K, a minute
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, data_dir, markdown_table, write_results  # noqa: E402
from bench.finetune_common import add_setup_args, eval_kwargs, human, quick_defaults, row, setup, timer  # noqa: E402

COLS = ["name", "kl_weight", "rounds", "merge_scale", "hits", "hits_reduction_pct", "hits_reduction_pct_ci_low",
        "hits_reduction_pct_ci_high", "clean_replies_ppl_change_pct", "clean_replies_ppl_change_pct_ci_low",
        "clean_replies_ppl_change_pct_ci_high", "human_ppl_change_pct", "looping_pct", "pareto", "train_seconds"]


def scaled_models(base, tuned, scales):
    """Models with W + s * (W_tuned - W) for each merge scale s (the LoRA delta, once merged)."""
    import torch

    tuned_state = tuned.state_dict()
    for s in scales:
        if s == 1.0:
            yield s, tuned
            continue
        m = copy.deepcopy(base)
        with torch.no_grad():
            for name, p in m.state_dict().items():
                if name in tuned_state and p.is_floating_point():
                    p.add_(s * (tuned_state[name].to(p.dtype) - p))
        yield s, m.eval()


def pareto(rows, x="clean_replies_ppl_change_pct", y="hits_reduction_pct"):
    """Mark the rows no other row beats on both axes (lower cost, higher reduction)."""
    for r in rows:
        r["pareto"] = not any(o is not r and o.get(x, 1e9) <= r.get(x, 1e9) and o.get(y, -1e9) >= r.get(y, -1e9)
                              and (o.get(x) != r.get(x) or o.get(y) != r.get(y)) for o in rows)
    return rows


def plot(rows, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=110)
    markers = {1: "o", 2: "s", 3: "^"}
    kls = sorted({r["kl_weight"] for r in rows})
    colors = dict(zip(kls, plt.cm.viridis([i / max(1, len(kls) - 1) for i in range(len(kls))])))
    for r in rows:
        x, y = r.get("clean_replies_ppl_change_pct"), r.get("hits_reduction_pct")
        if x is None or y is None:
            continue
        xerr = [[x - r["clean_replies_ppl_change_pct_ci_low"]], [r["clean_replies_ppl_change_pct_ci_high"] - x]]
        yerr = [[y - r["hits_reduction_pct_ci_low"]], [r["hits_reduction_pct_ci_high"] - y]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers.get(r["rounds"], "D"), color=colors[r["kl_weight"]],
                    ecolor="0.75", elinewidth=1, capsize=2, markersize=7 + 3 * r["merge_scale"],
                    markeredgecolor="k" if r["pareto"] else "none")
        ax.annotate(f"{r['merge_scale']:g}", (x, y), textcoords="offset points", xytext=(6, -10), fontsize=7)
    front = sorted((r for r in rows if r["pareto"] and r.get("clean_replies_ppl_change_pct") is not None),
                   key=lambda r: r["clean_replies_ppl_change_pct"])
    if front:
        ax.plot([r["clean_replies_ppl_change_pct"] for r in front], [r["hits_reduction_pct"] for r in front], "k--",
                lw=1, label="Pareto front")
    for kl in kls:
        ax.plot([], [], "o", color=colors[kl], label=f"KL weight {kl:g}")
    for rd in sorted({r["rounds"] for r in rows}):
        ax.plot([], [], markers.get(rd, "D"), color="0.5", label=f"{rd} round{'s' if rd > 1 else ''}")
    ax.axhline(97, color="tab:red", lw=0.8, ls=":", label="target: 97% fewer hits")
    ax.axvline(1, color="tab:orange", lw=0.8, ls=":", label="target: +1% perplexity")
    ax.set_xlabel("perplexity change on the base's clean replies, % (95% CI)")
    ax.set_ylabel("hits per 1k words, reduction % (95% CI)")
    ax.set_title(title + "\n(numbers: merge scale; black edge: on the Pareto front)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def run(args) -> dict:
    from cull.measure.evaluate import evaluate
    from cull.finetune import FinetuneConfig, LossWeights, finetune

    say = timer()
    t0 = time.perf_counter()
    base, tok, base_path, rules, train_prompts, held, discovered, data = setup(args, say)
    human_texts = human(args, tok)
    ev = eval_kwargs(args)
    res_base = evaluate(base, tok, rules, held, name="base", human_texts=human_texts, **ev)
    rows = []
    for kl in args.kl:
        for rounds in args.rounds:
            name = f"kl{kl:g}-r{rounds}"
            say(f"training {name}")
            cfg = FinetuneConfig(steps=args.steps, lr=args.lr, seed=args.seed, checkpoint_every=0, rounds=rounds,
                                 weights=LossWeights(kl=kl), eval_every=args.eval_every, val_samples=args.val_samples,
                                 max_new_tokens=args.max_new_tokens, gen_batch_size=args.gen_batch_size,
                                 n_samples=args.n_train_samples)
            s = finetune(copy.deepcopy(base), tok, rules, train_prompts, Path(args.work_dir) / name, cfg,
                         data=copy.deepcopy(data), base_path=base_path, say=say, progress=False)
            for scale, m in scaled_models(base, s["model"], args.scales):
                r = evaluate(m, tok, rules, held, reference_model=base, reference_result=res_base,
                             name=f"{name}-s{scale:g}", human_texts=human_texts, **ev)
                rows.append(row(f"{name}-s{scale:g}", r, kl_weight=kl, rounds=rounds, merge_scale=scale,
                                train_seconds=s["train_s"]))
                say(f"{rows[-1]['name']}: reduction {rows[-1].get('hits_reduction_pct', float('nan')):.1f}%, "
                    f"ppl {rows[-1].get('clean_replies_ppl_change_pct', float('nan')):+.2f}%")
    pareto(rows)
    model_name = str(args.model or "SmolLM2-135M-Instruct")
    extra = {"model": model_name, "phrases": [r.text for r in rules], "discovered": discovered,
             "base": row("base", res_base), "config": {k: v for k, v in vars(args).items() if k != "func"},
             "wall_seconds": time.perf_counter() - t0}
    path = write_results("finetune-sweep", rows, out_dir=args.out_dir, extra=extra, tag="-quick" if args.quick else "")
    md = [f"# Fine-tune sweep ({model_name})\n",
          f"{len(held)} held-out prompts x {args.n_eval_samples} samples, processor off; 95% CIs bootstrap over "
          "prompts (reduction) and texts (perplexity), paired with the base.\n", markdown_table(rows, COLS)]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    plot(rows, path.with_suffix(".png"), f"cull finetune sweep, {Path(model_name).name}")
    say(f"wrote {path} (+ .md, .png)")
    print(markdown_table(rows, COLS))
    return {"path": str(path), "rows": rows}


def main(argv=None):
    from cull.finetune.train import FinetuneConfig

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_setup_args(p)
    p.add_argument("--kl", nargs="+", type=float, default=None, help="KL weights (default 10 30; --quick: 0 1)")
    p.add_argument("--rounds", nargs="+", type=int, default=None, help="rounds (default 1 2)")
    p.add_argument("--scales", nargs="+", type=float, default=None, help="merge scales (default 0.5 0.75 1; --quick: 0.5 1)")
    p.add_argument("--steps", type=int, default=FinetuneConfig.steps, help="default: cull finetune's")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=FinetuneConfig.eval_every, help="default: cull finetune's")
    p.add_argument("--val-samples", type=int, default=1)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        quick_defaults(args, data_dir)
        args.steps, args.lr, args.eval_every, args.val_samples = 12, 5e-3, 4, 16
    quick = args.quick
    args.kl = args.kl or ([0.0, 1.0] if quick else [10.0, 30.0])
    args.rounds = args.rounds or [1, 2]
    args.scales = args.scales or ([0.5, 1.0] if quick else [0.5, 0.75, 1.0])
    return run(args)


if __name__ == "__main__":
    main()
