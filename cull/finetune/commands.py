"""Command-line entry points for `cull eval` and `cull finetune`.

Wire them into a parser with::

    sub = parser.add_subparsers(dest="command")
    add_eval_parser(sub)        # sets func=run_eval
    add_finetune_parser(sub)    # sets func=run_finetune

`python -m cull.finetune ...` runs the fine-tune alone (what `accelerate launch -m cull.finetune`
starts on each GPU).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CullError


def _positive_int(s):
    from ..cli import _positive

    return _positive("the value")(s)


def _common(p, prompts_default: str):
    p.add_argument("--model", default=None, metavar="PATH",
                   help="HF model folder or .gguf file (default: SmolLM2-135M-Instruct, no hub needed)")
    p.add_argument("--phrases", action="append", default=[], metavar="FILE",
                   help="phrase file (.txt, .json, .yaml, antislop pairs); repeatable")
    p.add_argument("--phrase", action="append", default=[], metavar="TEXT", help="one phrase; repeatable")
    p.add_argument("--prompts", default=prompts_default, metavar="FILE",
                   help=f"prompts: .json list or {{category: [...]}}, .txt one a line, or a built-in set "
                        f"(train, heldout); default: {prompts_default}")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_const", const=True, default=None,
                      help="send prompts through the chat template (an error if the model has none)")
    chat.add_argument("--raw", dest="chat", action="store_const", const=False,
                      help="send prompts as raw text (an empty prompt is BOS only)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=128)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: the idle cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def load_phrases(args):
    from ..rules import PhraseSet

    rules = []
    for f in args.phrases:
        rules.extend(PhraseSet.load(f, action="ban"))
    if args.phrase:
        rules.extend(PhraseSet(args.phrase))
    if not rules:
        raise CullError("no phrases given: pass --phrases FILE or --phrase TEXT")
    return PhraseSet(rules)


def _load(path, threads, say):
    from .train import load_model_for_finetune

    return load_model_for_finetune(path, threads=threads, say=say)


def _say(msg):
    print(msg, file=sys.stderr, flush=True)


# ---- cull eval ----
def add_eval_parser(subparsers):
    p = subparsers.add_parser(
        "eval", help="count the phrase hits in a model's outputs, and what else changed",
        description="Sample a model on prompts (processor off unless --with-processor) and report phrase "
                    "hits per 1,000 words and per generation with bootstrap 95%% CIs, perplexity on clean "
                    "text, KL from a reference model, distinct-n and over-represented n-grams.")
    _common(p, "heldout")
    p.add_argument("--reference", default=None, metavar="PATH",
                   help="the base model: adds its hits (before), the KL from it and over-represented n-grams")
    p.add_argument("--clean-texts", default="neutral_texts", metavar="FILE",
                   help="clean text for perplexity: a .json list of strings or {prompt, text} objects "
                        "(default: cull's neutral text set); 'none' to skip")
    p.add_argument("--human-text", default="auto", metavar="FILE",
                   help="human-written English for a second perplexity: 'auto' (Debian's jargon-text package "
                        "when installed: apt-get install jargon-text), 'jargon' (the same, an error when absent), "
                        "a text or .gz file, or 'none'")
    p.add_argument("--human-tokens", type=_positive_int, default=20_000, help="tokens of human text to score")
    p.add_argument("--n-samples", type=_positive_int, default=8, help="sampled generations per prompt (default 8)")
    p.add_argument("--no-greedy", action="store_true", help="skip the one greedy generation per prompt")
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--with-processor", action="store_true",
                   help="generate with the phrases banned and count ban events (the reference runs without it)")
    p.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.json, PREFIX.md and PREFIX.png")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run_eval)
    return p


def _clean_texts(spec):
    from ..evaluate import PROMPTS_DIR

    if spec is None or str(spec).lower() == "none":
        return None
    path = Path(spec)
    if not path.exists() and (PROMPTS_DIR / f"{spec}.json").is_file():
        path = PROMPTS_DIR / f"{spec}.json"
    if not path.is_file():
        raise CullError(f"clean text file {str(spec)!r} not found; pass a .json list of strings or "
                        "{\"prompt\", \"text\"} objects, or 'none'")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list) or not all(isinstance(x, str) or isinstance(x, dict) and {"prompt", "text"} <= set(x)
                                            for x in data):
        raise CullError(f"{str(path)!r} must hold a JSON list of strings or {{\"prompt\", \"text\"}} objects")
    return data


def human_texts_for(spec, tok, min_tokens: int, say=_say):
    """The human-written texts of --human-text: None for 'none' (and for 'auto' when the package is
    not installed, with a note); a CullError naming the package when an explicit source is missing."""
    from ..human_text import INSTALL_HINT, corpus_path, human_corpus

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
    import cull

    from ..evaluate import BanCounter, evaluate, load_prompts, markdown, public

    rules = load_phrases(args)
    prompts = load_prompts(args.prompts)
    clean = _clean_texts(args.clean_texts)
    model, tok, _ = _load(args.model, args.threads, _say)
    ref = _load(args.reference, args.threads, _say)[0] if args.reference else None
    human = human_texts_for(args.human_text, tok, args.human_tokens)
    proc = BanCounter(cull.CullLogitsProcessor(rules, tok, vocab_size=model.config.vocab_size)) \
        if args.with_processor else None
    res = evaluate(model, tok, rules, prompts, n_samples=args.n_samples, temperature=args.temperature,
                   greedy=not args.no_greedy, max_new_tokens=args.max_new_tokens, seed=args.seed, processor=proc,
                   reference_model=ref, clean_texts=clean, human_texts=human, batch_size=args.batch_size,
                   chat=args.chat, progress=not args.no_progress, out=args.out, name=str(args.model or "model"))
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


# ---- cull finetune ----
def add_finetune_parser(subparsers):
    p = subparsers.add_parser(
        "finetune", help="fine-tune a model so that it stops writing the phrases",
        description="Sample the model on the prompts, turn every phrase hit into a preference example "
                    "(the token that started the phrase vs the model's own clean alternatives), and train "
                    "LoRA (or the full model) with a preference + unlikelihood + KL-to-base loss. Runs under "
                    "accelerate: `accelerate launch -m cull.finetune ...` uses every GPU.")
    _common(p, "train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (merged model, or the adapter)")
    p.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    p.add_argument("--adapter-only", action="store_true", help="save the LoRA adapter, not a merged model")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--steps", type=_positive_int, default=200, help="steps per round (early stopping may end it sooner)")
    p.add_argument("--rounds", type=_positive_int, default=1,
                   help="rounds on policy: sample the tuned model, add its residual hits and newly over-used "
                        "phrases, train again (tethered to the original base)")
    p.add_argument("--method", default="cull", choices=["cull", "ul-mle", "nat"],
                   help="cull's loss (default), or a baseline: unlikelihood+MLE (Welleck et al.), NAT negatives")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: bf16 autocast, bf16 weights saved")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 LoRA, 5e-5 full)")
    p.add_argument("--warmup", type=float, default=0.1, help="share of steps with a linear warm-up (then cosine decay)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="preference examples per step")
    p.add_argument("--retain-batch-size", type=int, default=4, help="clean sequences per step (all their positions)")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="N")
    p.add_argument("--lora-r", type=_positive_int, default=8)
    p.add_argument("--lora-alpha", type=_positive_int, default=16)
    p.add_argument("--lora-targets", default=None, metavar="NAMES", help="comma-separated Linear layer names")
    p.add_argument("--n-samples", type=_positive_int, default=4, help="samples per training prompt")
    p.add_argument("--gen-batch-size", type=_positive_int, default=16)
    p.add_argument("--max-examples", type=int, default=None, help="cap the preference examples")
    v = p.add_argument_group("early stopping")
    v.add_argument("--eval-every", type=int, default=25, metavar="N", help="validation check every N steps (0: none)")
    v.add_argument("--val-samples", type=int, default=1, help="samples per validation prompt checked for hits")
    v.add_argument("--max-ppl-rise", type=float, default=0.01, help="perplexity budget on held-out clean samples")
    g = p.add_argument_group("loss")
    g.add_argument("--w-pref", type=float, default=1.0, help="weight of the (clipped) preference term")
    g.add_argument("--w-ul", type=float, default=1.0, help="weight of the gated unlikelihood term")
    g.add_argument("--w-tether", type=float, default=0.4, help="weight of the logit tether at the hit contexts")
    g.add_argument("--w-kl", type=float, default=1.0, help="weight of the dense KL retain on clean samples")
    g.add_argument("--beta", type=float, default=1.0)
    g.add_argument("--margin", type=float, default=2.0, help="logit margin of chosen over rejected where a pair stops pulling")
    p.set_defaults(func=run_finetune)
    return p


def run_finetune(args) -> int:
    from ..evaluate import load_prompts
    from .loss import LossWeights
    from .train import FinetuneConfig, finetune

    rules = load_phrases(args)
    prompts = load_prompts(args.prompts)
    if args.adapter_only and args.full:
        raise CullError("--adapter-only goes with LoRA; a full fine-tune always saves the whole model")
    model, tok, base = _load(args.model, args.threads, _say)
    cfg = FinetuneConfig(
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, retain_batch_size=args.retain_batch_size,
        full=args.full, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_targets=tuple(args.lora_targets.split(",")) if args.lora_targets else None,
        weights=LossWeights(args.w_pref, args.w_ul, args.w_kl, args.beta, args.margin, tether=args.w_tether),
        seed=args.seed, rounds=args.rounds, method=args.method, dtype=args.dtype, warmup=args.warmup,
        eval_every=args.eval_every, val_samples=args.val_samples, max_ppl_rise=args.max_ppl_rise,
        checkpoint_every=args.checkpoint_every, adapter_only=args.adapter_only, n_samples=args.n_samples,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, gen_batch_size=args.gen_batch_size,
        chat=args.chat, max_examples=args.max_examples)
    s = finetune(model, tok, rules, prompts, args.out, cfg, resume=args.resume, progress=not args.no_progress,
                 base_path=base, say=_say)
    _say(f"Saved the {s['saved']} model to {args.out} (load it with from_pretrained); measure it with "
         f"`cull eval --model {args.out} --reference {args.model or 'smollm2'} ...`")
    return 0


def main(argv=None) -> int:
    """`python -m cull.finetune`: the fine-tune on its own (for `accelerate launch -m cull.finetune`)."""
    parser = argparse.ArgumentParser(prog="python -m cull.finetune")
    sub = parser.add_subparsers(dest="command")
    add_finetune_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["finetune", *argv] if argv[:1] != ["finetune"] else argv)
    try:
        return run_finetune(args)
    except CullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
