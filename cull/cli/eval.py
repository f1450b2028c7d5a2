"""`cull eval`: count the phrase hits in a model's outputs, and measure what else changed."""
from __future__ import annotations

import json

from cull.cli.common import add_sampling_options, load_model_for, load_phrases, positive_int, say, sayer
from cull.errors import CullError


def add_parser(subparsers):
    p = subparsers.add_parser(
        "eval", help="count the phrase hits in a model's outputs, and what else changed",
        description="Sample a model on prompts (processor off unless --with-processor) and report phrase "
                    "hits per 1,000 words and per generation with bootstrap 95% CIs, perplexity on clean "
                    "text, KL from a reference model, distinct-n and over-represented n-grams.")
    add_sampling_options(p, "heldout")
    p.add_argument("--reference", default=None, metavar="PATH",
                   help="the base model: adds its hits (before), the KL from it and over-represented n-grams "
                        "(default: none)")
    p.add_argument("--reference-cache", default=None, metavar="FILE",
                   help="keep the reference's samples and measurements in this JSON file and reuse them while "
                        "the reference, prompts, phrases, texts and settings are the same (comparing several "
                        "fine-tunes with one base then measures the base once; default: none)")
    p.add_argument("--clean-texts", default="neutral_texts", metavar="FILE",
                   help="clean text for perplexity: a .json list of strings or {prompt, text} objects "
                        "(default: cull's neutral text set); 'none' to skip")
    p.add_argument("--human-text", default="auto", metavar="FILE",
                   help="human-written English for a second perplexity: 'auto' (Debian's jargon-text package "
                        "when installed: apt-get install jargon-text), 'jargon' (the same, an error when absent), "
                        "a text or .gz file, or 'none'")
    p.add_argument("--human-tokens", type=positive_int("--human-tokens"), default=20_000, metavar="N",
                   help="tokens of human text to score")
    p.add_argument("--n-samples", type=positive_int("--n-samples"), default=8, metavar="N",
                   help="sampled generations per prompt")
    p.add_argument("--no-greedy", action="store_true", help="skip the one greedy generation per prompt")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=16, metavar="N",
                   help="generations run together; more is faster and takes more memory")
    p.add_argument("--with-processor", action="store_true",
                   help="generate with the phrases banned and count ban events (the reference runs without it)")
    p.add_argument("--out", default=None, metavar="PREFIX",
                   help="write PREFIX.json, PREFIX.md and PREFIX.png (default: not written)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_eval)
    return p


def human_texts_for(spec, tok, min_tokens: int, say=say):
    """The human-written texts of --human-text: None for 'none' (and for 'auto' when the package is
    not installed, with a note); a CullError naming the package when an explicit source is missing."""
    from cull.measure.human_text import INSTALL_HINT, corpus_path, human_corpus

    if spec is None or str(spec).lower() == "none":
        return None
    if str(spec).lower() == "auto":
        try:
            corpus_path()
        except CullError:
            say(f"note: no human-written text corpus installed, so no perplexity on human text; {INSTALL_HINT}")
            return None
        spec = None
    elif str(spec).lower() == "jargon":
        spec = None
    return human_corpus(min_tokens, tokenizer=tok, path=spec)


def run_eval(args) -> int:
    from cull.decode.processor import CullLogitsProcessor
    from cull.measure.evaluate import BanCounter, evaluate, load_clean_texts, load_prompts, markdown, public

    rules = load_phrases(args)
    prompts = load_prompts(args.prompts)
    clean = load_clean_texts(args.clean_texts)
    if args.reference_cache and not args.reference:
        raise CullError("--reference-cache keeps the reference's measurements; it needs --reference")
    model, tok, _ = load_model_for(args, args.model)
    ref = load_model_for(args, args.reference)[0] if args.reference else None
    human = human_texts_for(args.human_text, tok, args.human_tokens, say=sayer(args))
    proc = BanCounter(CullLogitsProcessor(rules, tok, vocab_size=model.config.vocab_size)) \
        if args.with_processor else None
    res = evaluate(model, tok, rules, prompts, n_samples=args.n_samples, temperature=args.temperature,
                   greedy=not args.no_greedy, max_new_tokens=args.max_new_tokens, seed=args.seed, processor=proc,
                   reference_model=ref, clean_texts=clean, human_texts=human, batch_size=args.batch_size,
                   chat=args.chat, progress=not args.no_progress, out=args.out, name=str(args.model or "model"),
                   reference_cache=args.reference_cache)
    rc = res.get("reference_cache")
    if rc:
        said = {"reused": "Reused the reference's measurements in {p}",
                "absent": "Saved the reference's measurements in {p}",
                "stale": "{p} was made for other inputs (reference, prompts, phrases, texts or settings); measured "
                         "the reference again and replaced it"}[rc["status"]]
        if rc.get("save_error"):
            said = "Could not save the reference's measurements in {p}: " + rc["save_error"]
        sayer(args)(said.format(p=rc["path"]))
    pub = public(res)
    if args.json:
        print(json.dumps(pub, indent=2, default=str))
    else:
        rows = [{"name": "reference", **pub["reference"]}, pub] if "reference" in pub else [pub]
        print(markdown(rows))
        top = sorted(pub["sampled"]["per_phrase"].items(), key=lambda kv: -kv[1])[:10]
        print("Most hits: " + ", ".join(f"{p} ({c})" for p, c in top if c) if any(c for _, c in top) else "No hits.")
        if args.out:
            print(f"Wrote {args.out}.json, .md and .png")
    return 0
