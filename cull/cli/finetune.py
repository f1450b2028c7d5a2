"""`cull finetune`: train the phrases out of a model (`accelerate launch -m cull finetune ...` on
several GPUs)."""
from __future__ import annotations

from cull.cli.common import add_sampling_options, load_model_for, load_phrases, positive_int, say, sayer
from cull.errors import CullError


def add_parser(subparsers):
    p = subparsers.add_parser(
        "finetune", help="fine-tune a model so that it stops writing the phrases",
        description="Sample the model on the prompts, turn every phrase hit into a preference example "
                    "(the token that started the phrase vs the model's own clean alternatives), sample it again "
                    "with cull's processor on, and train LoRA (or the full model) so that it prefers the clean "
                    "alternatives and, on the processor-on samples, matches the base as the processor leaves it "
                    "(banned tokens get no probability). Runs under accelerate: `accelerate launch -m cull "
                    "finetune ...` uses every GPU.")
    add_sampling_options(p, "train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (merged model, or the adapter); required")
    p.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    p.add_argument("--adapter-only", action="store_true", help="save the LoRA adapter, not a merged model")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--steps", type=positive_int("--steps"), default=60, metavar="N",
                   help="steps per round (early stopping may end it sooner)")
    p.add_argument("--rounds", type=positive_int("--rounds"), default=1, metavar="N",
                   help="rounds on policy: sample the tuned model, add its residual hits and newly over-used "
                        "phrases, train again (tethered to the original base)")
    p.add_argument("--method", default="cull", choices=["cull", "ul-mle", "nat"],
                   help="cull's loss, or a baseline: unlikelihood+MLE (Welleck et al.), NAT negatives")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: bf16 autocast, bf16 weights saved")
    p.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate (default: 1e-3 for LoRA, 5e-5 for --full)")
    p.add_argument("--warmup", type=float, default=0.1, metavar="SHARE",
                   help="share of steps with a linear warm-up (then cosine decay)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=8, metavar="N",
                   help="preference examples per step")
    p.add_argument("--retain-batch-size", type=int, default=4, metavar="N",
                   help="clean sequences per step (all their positions)")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                   help="save a checkpoint in --out every N steps, for --resume (0: none)")
    p.add_argument("--lora-r", type=positive_int("--lora-r"), default=8, metavar="R", help="LoRA rank")
    p.add_argument("--lora-alpha", type=positive_int("--lora-alpha"), default=16, metavar="A",
                   help="LoRA alpha (the update is scaled by alpha / rank)")
    p.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="comma-separated Linear layer names (default: the attention and MLP projections)")
    p.add_argument("--n-samples", type=positive_int("--n-samples"), default=4, metavar="N",
                   help="samples per training prompt")
    p.add_argument("--gen-batch-size", type=positive_int("--gen-batch-size"), default=16, metavar="N",
                   help="generations run together while sampling")
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="cap the preference examples, keeping one of every phrase (default: no cap)")
    v = p.add_argument_group("early stopping")
    v.add_argument("--eval-every", type=int, default=10, metavar="N", help="validation check every N steps (0: none)")
    v.add_argument("--val-samples", type=int, default=1, metavar="N",
                   help="samples per validation prompt checked for hits")
    v.add_argument("--max-ppl-rise", type=float, default=0.01, metavar="SHARE",
                   help="perplexity budget on held-out clean samples, as a share of the base's (0.01: 1%%)")
    g = p.add_argument_group("loss")
    g.add_argument("--w-pref", type=float, default=1.0, metavar="W", help="weight of the (clipped) preference term")
    g.add_argument("--w-ul", type=float, default=1.0, metavar="W", help="weight of the gated unlikelihood term")
    g.add_argument("--w-tether", type=float, default=0.4, metavar="W",
                   help="weight of the logit tether at the hit contexts")
    g.add_argument("--w-kl", type=float, default=30.0, metavar="W",
                   help="weight of the dense KL retain on clean samples")
    g.add_argument("--retain-target", choices=("processor", "base"), default="processor",
                   help="the retain KL's target at clean positions: the base as cull's processor leaves it (the "
                        "tokens that would complete a phrase get no mass), or the plain base (default: processor)")
    g.add_argument("--w-ban", type=float, default=None, metavar="W",
                   help="weight of the unlikelihood on the processor-banned mass at every retain position "
                        "(default: 300 with --retain-target processor; it needs that target)")
    g.add_argument("--phrase-rows", choices=("on", "off"), default="on",
                   help="also train the output rows of the tokens the processor bans in every context, so their "
                        "logits fall everywhere (LoRA only; the saved model's output layer is untied)")
    g.add_argument("--spelling-contexts", type=int, default=None, metavar="N",
                   help="retain contexts per multi-token spelling of a phrase (\" Travel\"+\"er\"), cut from the "
                        "model's own samples, where the processor's ban is trained in; 0: none (default: 4 with "
                        "--retain-target processor; it needs that target and acts with --method cull only)")
    g.add_argument("--mention-prompts", type=int, default=None, metavar="N",
                   help="prompts per phrase that name it (\"Write a short story about {phrase}.\"), answered by the "
                        "model with the processor on; the replies join the retain objective, so the model learns "
                        "not to copy a phrase from the prompt; 0: none, at most 3 (default: 2 with --retain-target "
                        "processor; it needs that target and acts with --method cull only)")
    g.add_argument("--beta", type=float, default=1.0, metavar="B",
                   help="sharpness of the preference term: softplus(beta * (margin - logit gap))")
    g.add_argument("--margin", type=float, default=2.0, metavar="M",
                   help="logit margin of chosen over rejected where a pair stops pulling")
    p.set_defaults(func=run_finetune)
    return p


def run_finetune(args) -> int:
    from cull.measure.evaluate import load_prompts
    from cull.finetune.train import finetune

    rules = load_phrases(args)
    prompts = load_prompts(args.prompts)
    if args.adapter_only and args.full:
        raise CullError("--adapter-only goes with LoRA; a full fine-tune always saves the whole model")
    cfg = config_from_args(args)  # option errors before the model loads
    model, tok, base = load_model_for(args, args.model)
    s = finetune(model, tok, rules, prompts, args.out, cfg, resume=args.resume, progress=not args.no_progress,
                 base_path=base, say=sayer(args))
    say(f"Saved the {s['saved']} model to {args.out} (load it with from_pretrained); measure it with "
         f"`cull eval --model {args.out} --reference {args.model or 'smollm2'} ...`")
    return 0


def config_from_args(args):
    """The FinetuneConfig of the parsed arguments (with no options: `FinetuneConfig()`'s defaults)."""
    from cull.finetune.loss import LossWeights
    from cull.finetune.train import FinetuneConfig

    if args.w_ban is not None and not args.w_ban >= 0:
        raise CullError(f"--w-ban must be >= 0, got {args.w_ban}")
    if args.w_ban and args.retain_target != "processor":
        raise CullError("--w-ban acts on the processor's bans at the retain positions; it needs --retain-target "
                        "processor (the default)")
    ban = LossWeights().ban if args.w_ban is None else args.w_ban
    for flag in ("spelling_contexts", "mention_prompts"):
        value, name = getattr(args, flag), "--" + flag.replace("_", "-")
        if value is not None and value < 0:
            raise CullError(f"{name} must be >= 0, got {value}")
        if value and args.retain_target != "processor":
            raise CullError(f"{name} trains the processor's bans into the retain objective; it needs "
                            "--retain-target processor (the default)")
        if value and (args.method != "cull" or not (args.w_kl or ban)):
            raise CullError(f"{name} trains the processor's bans into the retain objective, which --method "
                            f"{args.method} with --w-kl {args.w_kl:g} and --w-ban {ban:g} does not train; use "
                            "--method cull with --w-kl or --w-ban above 0, or leave the flag out")
    if args.retain_target != "processor":
        w_ban, spelling, mentions = 0.0, 0, 0
    else:
        w_ban = ban
        spelling = FinetuneConfig.spelling_contexts if args.spelling_contexts is None else args.spelling_contexts
        mentions = FinetuneConfig.mention_prompts if args.mention_prompts is None else args.mention_prompts

    cfg = FinetuneConfig(
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, retain_batch_size=args.retain_batch_size,
        full=args.full, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_targets=tuple(args.lora_targets.split(",")) if args.lora_targets else None,
        weights=LossWeights(args.w_pref, args.w_ul, args.w_kl, args.beta, args.margin, tether=args.w_tether,
                            retain_under_processor=args.retain_target == "processor", ban=w_ban),
        phrase_rows=args.phrase_rows == "on", spelling_contexts=spelling, mention_prompts=mentions,
        seed=args.seed, rounds=args.rounds, method=args.method, dtype=args.dtype, warmup=args.warmup,
        eval_every=args.eval_every, val_samples=args.val_samples, max_ppl_rise=args.max_ppl_rise,
        checkpoint_every=args.checkpoint_every, adapter_only=args.adapter_only, n_samples=args.n_samples,
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, gen_batch_size=args.gen_batch_size,
        chat=args.chat, max_examples=args.max_examples)
    cfg.check()
    return cfg
