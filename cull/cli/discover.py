"""`cull discover`: find the phrases a model over-uses."""
from __future__ import annotations

import json
from pathlib import Path

from cull.cli.common import (add_model_path_options, add_output_options, load_model_for, positive_int,
                             progress_wanted, seed_value, temperature_value)

DESCRIPTION = ("Sample a model on writing prompts with no processor, then list the known slop phrases it writes "
               "and the word n-grams that recur across its generations: a phrase file for --phrases.")


def add_parser(subparsers):
    p = subparsers.add_parser("discover", help="find the phrases a model over-uses",
                              description=DESCRIPTION)
    add_model_path_options(p)
    p.add_argument("--prompts", default="train", metavar="FILE", help="prompt file or built-in set (train, heldout)")
    p.add_argument("--candidates", default=None, metavar="FILE",
                   help="candidate phrase list (default: antislop's phrase and word lists from CULL_DATA_DIR, else "
                        "cull's built-in list)")
    p.add_argument("--n-samples", type=positive_int("--n-samples"), default=2, metavar="N", help="samples per prompt")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=128, metavar="N",
                   help="new tokens per sample at most")
    p.add_argument("--temperature", type=temperature_value, default=0.8, metavar="T", help="sampling temperature")
    p.add_argument("--top", type=positive_int("--top"), default=30, metavar="N", help="phrases to keep")
    p.add_argument("--min-count", type=positive_int("--min-count"), default=2, metavar="N",
                   help="fewest hits to keep a phrase")
    p.add_argument("--max-prompts", type=int, default=0, metavar="N", help="use only the first N prompts (0: all)")
    p.add_argument("--seed", type=seed_value, default=0, metavar="N",
                   help="random seed: the same seed gives the same samples")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=16, metavar="N",
                   help="generations run together")
    p.add_argument("--out", default=None, metavar="FILE.txt",
                   help="write the phrases found, one a line (default: not written)")
    p.add_argument("--json", action="store_true", help="print everything as JSON")
    add_output_options(p)
    p.set_defaults(func=run_discover)
    return p


def run_discover(args) -> int:
    from cull.measure.discover import candidate_rules, discover
    from cull.measure.evaluate import generate, load_prompts

    candidates = candidate_rules(args.candidates)
    prompts = load_prompts(args.prompts)
    if args.max_prompts:
        prompts = prompts[:args.max_prompts]
    model, tok, _ = load_model_for(args, args.model)
    gens = generate(model, tok, prompts, n_samples=args.n_samples, temperature=args.temperature,
                    max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                    desc="sampling", progress=progress_wanted(args))
    res = discover([g.text for g in gens], candidates, top=args.top, min_count=args.min_count)
    if args.out:
        Path(args.out).write_text("".join(f"{k['phrase']}\n" for k in res["known"]))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['generations']} generations, {len(candidates):,} candidate phrases")
    print("Known slop it writes (hits): " + (", ".join(f"{k['phrase']} ({k['count']})" for k in res["known"])
                                             or "none at this sample size; try more --n-samples"))
    tics = ", ".join(f"{t['ngram']} ({t['generations']})" for t in res["tics"][:15])
    print("Recurring n-grams (generations): " + (tics or "none at this sample size"))
    if args.out:
        print(f"Wrote {len(res['known'])} phrases to {args.out}")
    return 0
