"""Shared parts of the fine-tune benchmark and sweep: the setup (model, prompts, phrases, data),
the evaluation of one model against the base, and the flat result row."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path


def add_setup_args(p):
    p.add_argument("--model", default=None, help="model folder or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--quick", action="store_true", help="stories260K and 'Once upon a time', in seconds")
    p.add_argument("--phrases", nargs="*", default=None, help="use these phrases instead of discovering them")
    p.add_argument("--phrase-file", default=None,
                   help="a phrase file (what `cull discover --out` wrote); adds to --phrases")
    p.add_argument("--data", default=None,
                   help="training data saved by `cull finetune` (RUN/data.json) instead of building it; needs the "
                        "phrases it was built for (--phrases or --phrase-file)")
    p.add_argument("--train-prompts", default="train")
    p.add_argument("--heldout-prompts", default="heldout")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--min-count", type=int, default=2)
    p.add_argument("--n-train-samples", type=int, default=4)
    p.add_argument("--n-eval-samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--gen-batch-size", type=int, default=32)
    p.add_argument("--human-tokens", type=int, default=20_000, help="tokens of human-written text (jargon-text)")
    p.add_argument("--no-human-text", action="store_true", help="skip the perplexity on human-written text")
    p.add_argument("--reuse-data", action="store_true",
                   help="reuse the base samples and training data saved in --work-dir by an earlier run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work-dir", default="/tmp/cull-finetune-bench")


def quick_defaults(args, data_dir):
    """--quick: stories260K, "Once upon a time", the empty prompt, short generations."""
    args.model = args.model or str(data_dir() / "models" / "stories260K")
    if not args.phrase_file:
        args.phrases = args.phrases or ["Once upon a time"]
    args.train_prompts = args.heldout_prompts = None
    args.no_human_text = True
    args.n_train_samples, args.n_eval_samples, args.max_new_tokens = 64, 64, 12
    args.threads = args.threads or 1


def setup(args, say):
    """(base, tok, base_path, rules, train prompts, held-out prompts, discovered, data)."""
    import cull
    from cull.measure.evaluate import load_prompts
    from cull.finetune import FinetuneData, build_data
    from cull.measure.models import load_model_with_base
    from cull.measure.models import set_threads

    say(f"threads: {set_threads(args.threads)}")
    base, tok, base_path = load_model_with_base(args.model, say=say)
    train_prompts = load_prompts(args.train_prompts) if args.train_prompts else [""]  # "": BOS only
    held_prompts = load_prompts(args.heldout_prompts) if args.heldout_prompts else [""]
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    rules = None
    if args.phrase_file:  # the file's own actions and matching options
        rules = cull.PhraseSet.load(args.phrase_file)
        if args.phrases:
            rules = rules.with_rules(list(rules) + list(cull.PhraseSet(args.phrases)))
    elif args.phrases:
        rules = cull.PhraseSet(args.phrases)
    if args.data and rules is None:
        raise SystemExit("--data needs the phrases its examples were built for: --phrases or --phrase-file")
    gens, discovered = None, []
    if not args.data:
        gens = _base_samples(base, tok, train_prompts, work / "base_samples.json", args, say)
    if rules is None:
        from cull.measure.discover import candidate_rules, discover

        discovered = discover([g.text for g in gens], candidate_rules(), top=args.top, min_count=args.min_count)["known"]
        rules = cull.PhraseSet([k["phrase"] for k in discovered])
    say(f"phrases: {len(rules)}: {', '.join(r.text for r in rules)}")
    data_cache = work / "bench_data.json"
    if args.data:
        data = FinetuneData.load(Path(args.data))
        unknown = set(data.stats.get("hits_per_phrase", {})) - {r.text for r in rules}
        if unknown:
            raise SystemExit(f"{args.data} was built for other phrases ({', '.join(sorted(unknown)[:5])} ...); pass "
                             "the phrase list it was built with")
        used = [e.prompt_index for e in data.preference + data.val_preference + data.retain + data.val_retain]
        if max(used + list(data.stats.get("val_prompts", [])), default=-1) >= len(train_prompts):
            raise SystemExit(f"{args.data} was built on more prompts than the {len(train_prompts)} of "
                             f"--train-prompts {args.train_prompts}; pass the prompts it was built on")
        say(f"training data from {args.data}")
    elif args.reuse_data and data_cache.is_file():
        data = FinetuneData.load(data_cache)
        say(f"reusing the training data in {data_cache}")
    else:
        # the retain set `cull finetune` builds by default: samples of the base with the processor on
        proc = cull.CullLogitsProcessor(rules, tok, vocab_size=base.get_output_embeddings().weight.shape[0])
        data = build_data(base, tok, rules, train_prompts, gens=gens, seed=args.seed, batch_size=args.gen_batch_size,
                          retain_processor=proc)
        data.save(data_cache)
    say(f"data: {data.stats['examples']} examples ({data.stats['examples_with_chosen']} with chosen, "
        f"{data.stats['decision_points_moved']} decision points moved), {data.stats['retain_positions']} retain positions")
    return base, tok, base_path, rules, train_prompts, held_prompts, discovered, data


def _base_samples(base, tok, prompts, cache, args, say):
    from cull.measure.evaluate import Generation, generate

    if args.reuse_data and cache.is_file():
        gens = [Generation(**g) for g in json.loads(cache.read_text())]
        say(f"reusing {len(gens)} base samples from {cache}")
        return gens
    say(f"sampling the base model: {len(prompts)} train prompts x {args.n_train_samples}")
    gens = generate(base, tok, prompts, n_samples=args.n_train_samples, seed=args.seed, temperature=0.8,
                    max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size, desc="base: train samples")
    cache.write_text(json.dumps([asdict(g) for g in gens]))
    return gens


def eval_kwargs(args):
    return dict(n_samples=args.n_eval_samples, temperature=0.8, greedy=True, max_new_tokens=args.max_new_tokens,
                seed=args.seed + 1, batch_size=args.gen_batch_size, progress=False)


def human(args, tok):
    if args.no_human_text:
        return None
    from cull.measure.human_text import human_corpus

    return human_corpus(args.human_tokens, tokenizer=tok)


def row(name: str, r: dict, **extra) -> dict:
    """A flat result row (percentages; CIs as _ci_low/_ci_high)."""
    s, vs = r["sampled"], r.get("vs_reference", {})
    out = {"name": name, "hits": s["hits"], "generations": s["generations"], "prompts": s["prompts"],
           "hits_per_1k_words": s["hits_per_1k_words"], "hits_per_1k_words_ci_low": s["hits_per_1k_words_ci"][0],
           "hits_per_1k_words_ci_high": s["hits_per_1k_words_ci"][1],
           "greedy_hits": r["greedy"]["hits"] if "greedy" in r else None,
           "looping_pct": 100 * r["loops"]["looping_rate"], "looping_pct_ci_low": 100 * r["loops"]["looping_rate_ci"][0],
           "looping_pct_ci_high": 100 * r["loops"]["looping_rate_ci"][1], "distinct_2": r["distinct_2"]}
    if "hits" in vs:
        h = vs["hits"]
        out.update(hits_reduction_pct=100 * h["reduction"], hits_reduction_pct_ci_low=100 * h["reduction_ci"][0],
                   hits_reduction_pct_ci_high=100 * h["reduction_ci"][1], residual_pct_ci_high=100 * h["residual_ci_high"])
    for key, label in (("clean_replies", "clean_replies_ppl_change_pct"), ("human", "human_ppl_change_pct")):
        if key in vs:
            out[label] = 100 * vs[key]["change"]
            out[label + "_ci_low"], out[label + "_ci_high"] = (100 * x for x in vs[key]["change_ci"])
    if "loops" in vs and "minus_reference" in vs["loops"]:
        lp = vs["loops"]
        out["looping_minus_base_pct"] = 100 * lp["minus_reference"]
        out["looping_minus_base_pct_ci_high"] = 100 * lp["minus_reference_ci"][1]
        if "floor_reference_halves_ci" in lp:
            out["looping_floor_pct_ci"] = [100 * x for x in lp["floor_reference_halves_ci"]]
    if "kl_per_token" in r:
        out["kl_per_token"] = r["kl_per_token"]
    out.update(extra)
    return out


def timer():
    t0 = time.perf_counter()
    return lambda m: print(f"[{time.perf_counter() - t0:7.1f}s] {m}", flush=True)
