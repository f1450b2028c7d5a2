"""Fine-tune benchmark: remove the phrases SmolLM2-135M-Instruct over-uses, and measure what it cost.

1. Sample the base model on the training prompts (processor off) and count antislop's 2,500 phrases
   and 2,000 words in the samples; the `--top` most frequent (at least 20) become the phrase list.
2. Build the on-policy data once from those samples, then train two models on it: cull's loss
   (preference + unlikelihood + KL-to-base) and the unlikelihood-only baseline.
3. Evaluate the base and both fine-tunes on the held-out prompts with the processor off: hits per
   1,000 words (sampled and greedy), perplexity on clean held-out text (the base model's hit-free
   held-out replies, and a neutral text set), KL from the base, distinct-n, over-represented n-grams.
4. With the processor on (greedy), count ban events per 1,000 tokens for the base and cull's fine-tune.

Writes bench/results/finetune-<device>-<date>.json, .md and .png.

    python bench/finetune_bench.py                 # the real run (~30 min on a 2-core CPU)
    python bench/finetune_bench.py --quick         # stories260K, "Once upon a time", seconds
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, data_dir, markdown_table, write_results  # noqa: E402


def run(args) -> dict:
    import torch

    import cull
    from cull.evaluate import BanCounter, evaluate, generate, load_prompts, perplexity, public
    from cull.finetune import FinetuneConfig, LossWeights, build_data, finetune
    from cull.finetune.train import load_model_for_finetune
    from cull.models import set_threads

    t_start = time.perf_counter()
    threads = set_threads(args.threads)
    say = lambda m: print(f"[{time.perf_counter() - t_start:7.1f}s] {m}", flush=True)  # noqa: E731
    say(f"threads: {threads}")
    base, tok, base_path = load_model_for_finetune(args.model, say=say)
    train_prompts = load_prompts(args.train_prompts) if args.train_prompts else [""]  # "": BOS only
    held_prompts = load_prompts(args.heldout_prompts) if args.heldout_prompts else [""]
    if args.max_prompts:
        train_prompts, held_prompts = train_prompts[:args.max_prompts], held_prompts[:args.max_prompts // 2 or 1]
    neutral = load_prompts(args.neutral) if args.neutral else []
    gen_kw = dict(temperature=0.8, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size)

    # 1. discover the phrases
    from dataclasses import asdict

    from cull.evaluate import Generation
    from cull.finetune import FinetuneData

    out_root = Path(args.work_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    cache = out_root / "base_samples.json"
    data_cache = out_root / "bench_data.json"
    gens = []
    if args.reuse_data and args.phrases and data_cache.is_file():
        pass  # the phrases and the data are given: no base samples needed
    elif args.reuse_data and cache.is_file():
        gens = [Generation(**g) for g in json.loads(cache.read_text())]
        say(f"reusing {len(gens)} base samples from {cache}")
    else:
        say(f"sampling the base model: {len(train_prompts)} train prompts x {args.n_train_samples}")
        gens = generate(base, tok, train_prompts, n_samples=args.n_train_samples, seed=args.seed,
                        desc="base: train samples", **gen_kw)
        cache.write_text(json.dumps([asdict(g) for g in gens]))
    if args.phrases:
        rules = cull.PhraseSet(args.phrases)
        discovered = []
    else:
        from cull.discover import candidate_rules, discover

        discovered = discover([g.text for g in gens], candidate_rules(), top=args.top, min_count=args.min_count)["known"]
        rules = cull.PhraseSet([k["phrase"] for k in discovered])
    say(f"phrases: {len(rules)}: {', '.join(r.text for r in rules)}")

    # 2. data once, two trainings
    if args.reuse_data and data_cache.is_file():
        data = FinetuneData.load(data_cache)
        say(f"reusing the training data in {data_cache}")
    else:
        data = build_data(base, tok, rules, train_prompts, gens=gens, seed=args.seed, top_k=args.top_k,
                          max_per_pair=args.max_per_pair, retain_per_gen=args.retain_per_gen, chat=None,
                          batch_size=args.gen_batch_size, max_examples=args.max_examples)
        data.save(data_cache)
    say(f"data: {data.stats['examples']} examples ({data.stats['examples_with_chosen']} with chosen), "
        f"{data.stats['retain_positions']} retain positions")
    variants = {"cull-ftpo": LossWeights(kl=args.w_kl, unlikelihood=args.w_ul),
                "unlikelihood-only": LossWeights(preference=0.0, kl=0.0)}
    if args.only_ftpo:
        variants.pop("unlikelihood-only")
    models, summaries = {}, {}
    for name, weights in variants.items():
        fresh = copy.deepcopy(base)
        cfg = FinetuneConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                             retain_batch_size=args.retain_batch_size, weights=weights, seed=args.seed,
                             checkpoint_every=0)
        say(f"training {name}: {args.steps} steps")
        s = finetune(fresh, tok, rules, train_prompts, out_root / name, cfg, data=data, base_path=base_path,
                     say=say)
        models[name] = s.pop("model")
        summaries[name] = {k: s[k] for k in ("train_s", "lr", "log")}
        say(f"{name}: trained in {s['train_s']:.0f} s")

    # 3. evaluate, processor off
    torch.manual_seed(args.seed)
    ev_kw = dict(n_samples=args.n_eval_samples, temperature=0.8, greedy=True, max_new_tokens=args.max_new_tokens,
                 seed=args.seed + 1, batch_size=args.gen_batch_size)
    say("evaluating the base model")
    res_base = evaluate(base, tok, rules, held_prompts, name="base", **ev_kw)
    base_gens = res_base["_gens"]
    clean_replies = [{"prompt": held_prompts[g.prompt_index], "text": g.text} for g in base_gens
                     if not cull.find(g.text, rules) and g.text.strip()]
    results = {"base": res_base}
    for name, m in models.items():
        say(f"evaluating {name}")
        results[name] = evaluate(m, tok, rules, held_prompts, reference_model=base, reference_gens=base_gens,
                                 name=name, **ev_kw)
    for name, m in [("base", base), *models.items()]:
        results[name]["clean_replies"] = perplexity(m, tok, clean_replies, progress=False)
        if neutral:
            results[name]["neutral"] = perplexity(m, tok, neutral, progress=False)

    # 4. processor on: ban events per 1,000 tokens (greedy)
    if not args.skip_processor_check:
        for name, m in [("base", base), ("cull-ftpo", models["cull-ftpo"])]:
            say(f"processor on: {name}")
            counter = BanCounter(cull.CullLogitsProcessor(rules, tok, vocab_size=m.config.vocab_size))
            g = generate(m, tok, held_prompts, do_sample=False, max_new_tokens=args.max_new_tokens,
                         batch_size=args.gen_batch_size, processor=counter, desc=f"{name}: processor on")
            ntok = sum(len(x.gen_ids) for x in g)
            results[name]["processor_on"] = {
                "tokens": ntok, "ban_events": counter.events,
                "ban_events_per_1k_tokens": 1000 * counter.events / max(ntok, 1),
                "banned_mass_per_1k_tokens": 1000 * counter.removed_mass / max(ntok, 1),
                "hits": sum(len(cull.find(x.text, rules)) for x in g)}

    # rows and files
    rows = []
    b = results["base"]
    for name, r in results.items():
        row = {"name": name, "hits_per_1k_words": r["sampled"]["hits_per_1k_words"],
               "hits_per_1k_words_ci_low": r["sampled"]["hits_per_1k_words_ci"][0],
               "hits_per_1k_words_ci_high": r["sampled"]["hits_per_1k_words_ci"][1],
               "hits": r["sampled"]["hits"], "generations": r["sampled"]["generations"],
               "hits_reduction_pct": 100 * (1 - r["sampled"]["hits"] / max(b["sampled"]["hits"], 1)),
               "greedy_hits": r["greedy"]["hits"],
               "greedy_hits_reduction_pct": 100 * (1 - r["greedy"]["hits"] / max(b["greedy"]["hits"], 1)),
               "clean_replies_ppl": r["clean_replies"]["perplexity"],
               "clean_replies_ppl_change_pct": 100 * (r["clean_replies"]["perplexity"] /
                                                      b["clean_replies"]["perplexity"] - 1),
               "kl_per_token": r.get("kl_per_token", 0.0), "distinct_1": r["distinct_1"],
               "distinct_2": r["distinct_2"], "train_seconds": summaries.get(name, {}).get("train_s", 0.0)}
        if "neutral" in r:
            row["neutral_ppl"] = r["neutral"]["perplexity"]
            row["neutral_ppl_change_pct"] = 100 * (r["neutral"]["perplexity"] / b["neutral"]["perplexity"] - 1)
        row["new_in_top20_ngrams"] = len(r.get("new_in_top20", []))
        if "processor_on" in r:
            row["ban_events_per_1k_tokens"] = r["processor_on"]["ban_events_per_1k_tokens"]
        rows.append(row)
    extra = {"model": str(args.model or "SmolLM2-135M-Instruct"), "phrases": [r.text for r in rules], "discovered": discovered,
             "data": data.stats, "config": {k: v for k, v in vars(args).items() if k != "func"},
             "training": summaries, "results": {k: public(v) for k, v in results.items()},
             "wall_seconds": time.perf_counter() - t_start}
    tag = "-quick" if args.quick else ""
    path = write_results("finetune", rows, out_dir=args.out_dir, extra=extra, tag=tag)
    cols = ["name", "hits", "hits_per_1k_words", "hits_reduction_pct", "greedy_hits", "clean_replies_ppl",
            "clean_replies_ppl_change_pct", "neutral_ppl_change_pct", "kl_per_token", "distinct_2",
            "new_in_top20_ngrams",
            "ban_events_per_1k_tokens"]
    md = [f"# Fine-tune benchmark ({args.model or 'SmolLM2-135M-Instruct'})\n", markdown_table(rows, cols), "",
          f"Phrases ({len(rules)}): " + ", ".join(f"`{r.text}`" for r in rules), ""]
    for name in models:
        md += [f"Top over-represented n-grams, {name} vs base:", "",
               ", ".join(f"`{o['ngram']}` ({o['count']} vs {o['ref_count']})"
                         for o in results[name].get("over_represented", [])[:20]) or "(none)", "",
               f"New entries in the top-20 most frequent 2- and 3-grams, {name} vs base: "
               + (", ".join(f"`{g}`" for g in results[name].get("new_in_top20", [])) or "(none)"), ""]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    from cull.evaluate import plot_per_phrase

    plot_per_phrase([public(r) for r in results.values()], path.with_suffix(".png"))
    say(f"wrote {path} (+ .md, .png)")
    print(markdown_table(rows, cols))
    return {"path": str(path), "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--quick", action="store_true", help="stories260K and 'Once upon a time', in seconds")
    p.add_argument("--phrases", nargs="*", default=None, help="use these phrases instead of discovering them")
    p.add_argument("--train-prompts", default="train")
    p.add_argument("--heldout-prompts", default="heldout")
    p.add_argument("--neutral", default="neutral_texts")
    p.add_argument("--max-prompts", type=int, default=0, help="use only the first N train prompts (N/2 held out)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--min-count", type=int, default=2)
    p.add_argument("--n-train-samples", type=int, default=2)
    p.add_argument("--n-eval-samples", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--gen-batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--retain-batch-size", type=int, default=4)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--max-per-pair", type=int, default=8)
    p.add_argument("--retain-per-gen", type=int, default=8)
    p.add_argument("--max-examples", type=int, default=160)
    p.add_argument("--w-kl", type=float, default=1.0, help="weight of the KL-to-base term (cull-ftpo)")
    p.add_argument("--w-ul", type=float, default=1.0, help="weight of the unlikelihood term (cull-ftpo)")
    p.add_argument("--only-ftpo", action="store_true", help="skip the unlikelihood-only baseline")
    p.add_argument("--skip-processor-check", action="store_true")
    p.add_argument("--reuse-data", action="store_true",
                   help="reuse the base samples and training data saved in --work-dir by an earlier run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work-dir", default="/tmp/cull-finetune-bench")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.quick:
        args.model = args.model or str(data_dir() / "models" / "stories260K")
        args.phrases = args.phrases or ["Once upon a time"]
        args.train_prompts = args.heldout_prompts = None
        args.neutral = None
        args.n_train_samples, args.n_eval_samples, args.max_new_tokens = 32, 32, 12
        args.steps, args.lr, args.threads = 30, 5e-3, args.threads or 1
    return run(args)


if __name__ == "__main__":
    main()
