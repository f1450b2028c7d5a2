"""The training loop of `cull finetune`: LoRA (peft) by default, or a full fine-tune, under accelerate.

    from cull.finetune import FinetuneConfig, finetune
    summary = finetune(model, tok, rules, prompts, "out/", FinetuneConfig())

The same code runs on one CPU, one GPU or several (`accelerate launch -m cull finetune ...`): the
data are built once by the main process and shared through `out/data.json`; each process takes its
own slice of every batch. Checkpoints go to `out/checkpoints/step-N` every `checkpoint_every` steps;
`resume=True` picks up from the latest one with the same data (batches are a function of the seed
and the step, so a resumed run trains on exactly the batches the interrupted one would have).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cull.errors import CullError, require
from cull.rules import as_phrase_set
from cull.finetune.data import FinetuneData, build_data
from cull.finetune.banned import attach_banned
from cull.finetune.loop import TrainingLoop
from cull.finetune.phrase_rows import PhraseRows, context_free_tokens, rows_off, rows_supported
from cull.finetune.saving import save_model
from cull.finetune.mentions import MAX_PROMPTS, add_mention_contexts, nameable, with_events
from cull.finetune.spellings import add_spelling_contexts, reachable
from cull.finetune.loss import LossWeights

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "c_attn", "c_proj", "c_fc", "query_key_value", "dense", "fc1", "fc2", "wq", "wk", "wv", "wo")
MAX_BATCH = 256


@dataclass
class FinetuneConfig:
    steps: int = 60  # per round; early stopping may end a round sooner
    lr: float | None = None  # default: 1e-3 for LoRA, 5e-5 for a full fine-tune
    batch_size: int = 8  # preference examples per step
    retain_batch_size: int = 4  # retain sequences per step (every position of each)
    full: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple | None = None
    weights: LossWeights = field(default_factory=LossWeights)
    method: str = "cull"  # or the baselines "ul-mle", "nat" (see steps.py)
    seed: int = 0
    checkpoint_every: int = 50
    adapter_only: bool = False
    dtype: str = "fp32"  # "bf16": bf16 autocast in training, bf16 weights saved
    warmup: float = 0.1  # share of a round's steps with a linear warm-up
    min_lr: float = 0.1  # the cosine decay ends at this share of the learning rate
    # early stopping (see docs/finetune.md)
    eval_every: int = 10
    val_fraction: float = 0.15  # share of the prompts held out for validation
    val_samples: int = 1  # samples per validation prompt checked for hits (0: none)
    max_ppl_rise: float = 0.01  # perplexity budget on held-out clean samples
    stop_win: float = 0.95  # stop once held-out win rate reaches this ...
    stop_p_rejected: float = 0.02  # ... and the mean held-out p(rejected) is this low, with no validation hits
    stop_spelling_mass: float = 0.05  # ... and the held-out spelling contexts' banned mass is this low
    stop_mention_mass: float = 0.05  # ... and so is the banned mass where held-out prompts name the phrases
    patience: int = 4  # checks without a better checkpoint before stopping
    # rounds on policy
    rounds: int = 1
    new_phrases: int = 10  # newly over-used phrases added per round (0: only residual hits)
    # data building
    n_samples: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 128
    gen_batch_size: int = 16
    top_k: int = 8
    max_per_pair: int = 8
    retain_per_gen: int = 0  # 0: every position of every clean sample (dense retain)
    phrase_rows: bool = True  # also train the output rows of context-free phrase tokens (cull.finetune.phrase_rows)
    spelling_contexts: int = 4  # retain contexts per multi-token spelling (cull.finetune.spellings; 0: none)
    spelling_batch_size: int = 12  # spelling contexts per step
    mention_prompts: int = 2  # prompts per phrase that name it, answered with the processor on (cull.finetune.mentions)
    mention_batch_size: int = 2  # such replies per step
    max_examples: int | None = None
    commit_prob: float = 0.5
    chat: bool | None = None

    def check(self) -> None:
        for name in ("steps", "batch_size", "n_samples", "max_new_tokens", "gen_batch_size", "lora_r", "rounds"):
            if getattr(self, name) < 1:
                raise CullError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("spelling_contexts", "spelling_batch_size", "mention_prompts", "mention_batch_size"):
            if getattr(self, name) < 0:
                raise CullError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mention_prompts > MAX_PROMPTS:
            raise CullError(f"--mention-prompts is {self.mention_prompts}; there are {MAX_PROMPTS + 1} templates and "
                            f"one per phrase is kept for validation, so use at most {MAX_PROMPTS} "
                            "(FinetuneConfig.mention_prompts)")
        for name in ("batch_size", "retain_batch_size", "gen_batch_size", "spelling_batch_size", "mention_batch_size"):
            if getattr(self, name) > MAX_BATCH:
                raise CullError(f"{name} is {getattr(self, name)}, above the bound of {MAX_BATCH}; use a smaller "
                                "batch (more steps) instead")
        if self.lr is not None and not self.lr > 0:
            raise CullError(f"the learning rate must be > 0, got {self.lr}")
        if self.method not in METHODS:
            raise CullError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.dtype not in ("fp32", "bf16"):
            raise CullError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if not 0 <= self.warmup < 1 or not 0 <= self.min_lr <= 1 or not 0 <= self.val_fraction < 1:
            raise CullError(f"warmup and val_fraction must be in [0, 1) and min_lr in [0, 1], got {self.warmup}, "
                            f"{self.val_fraction}, {self.min_lr}")


METHODS = ("cull", "ul-mle", "nat")


def lora_target_modules(model, names=None) -> list[str]:
    """The Linear layers' short names to put LoRA on: the attention and MLP projections."""
    import torch

    present = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    wanted = set(names or LORA_TARGETS)
    found = sorted(present & wanted)
    if not found:
        raise CullError(f"found none of the LoRA target layers {sorted(wanted)} in this model (its Linear layers: "
                        f"{sorted(present)}); pass --lora-targets NAME,... or use --full")
    return found


def _latest_checkpoint(out: Path):
    cks = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


class _Reference:
    """The original base model as a callable: the adapter switched off (LoRA), or a frozen copy."""

    def __init__(self, model, frozen=None):
        self.model, self.frozen = model, frozen

    def parameters(self):
        return (self.frozen or self.model).parameters()

    @property
    def generation_config(self):
        return (self.frozen or self.model).generation_config

    def __call__(self, *args, **kwargs):
        if self.frozen is not None:
            return self.frozen(*args, **kwargs)
        with self.model.disable_adapter(), rows_off(self.model):
            return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        if self.frozen is not None:
            return self.frozen.generate(*args, **kwargs)
        with self.model.disable_adapter(), rows_off(self.model):
            return self.model.generate(*args, **kwargs)


def finetune(model, tok, rules, prompts, out_dir, cfg: FinetuneConfig | None = None, *, resume: bool = False,
             progress: bool = True, base_path: str | None = None, say=print, keep_checkpoints: bool = False,
             data: FinetuneData | None = None) -> dict:
    """Fine-tune `model` so that it stops writing `rules`; write the result to `out_dir`.

    The model is changed in place (LoRA layers are merged into it); use the returned "model".
    `data` skips the sampling and uses the given examples (e.g. to train a baseline on the same data).
    With `cfg.rounds` > 1, each later round samples the tuned model, adds its residual hits and the
    phrases it newly over-uses, and trains again, tethered to the original base.

    Returns a summary dict (also written to out_dir/finetune.json): data statistics, the loss per
    logged step, the validation checks, and the output paths."""
    torch = require("torch", "hf")
    require("accelerate", "hf")
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = cfg or FinetuneConfig()
    cfg.check()
    rules = as_phrase_set(rules)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator()  # bf16 is an autocast in the loop: accelerate's state is one per process
    set_seed(cfg.seed)
    model.to(acc.device)
    model.eval()
    data_path = out / "data.json"
    t0 = time.perf_counter()
    if data is not None:  # given (e.g. the same data for a baseline)
        if acc.is_main_process:
            data.save(data_path)
    elif resume and data_path.is_file():
        data = FinetuneData.load(data_path)
        say(f"Resuming with the data in {data_path}")
    else:
        if resume:
            say(f"--resume: no {data_path} yet, starting from scratch")
            resume = False
        if acc.is_main_process:
            data = _build(model, tok, rules, prompts, cfg, progress, reference=None)
            data.save(data_path)
        acc.wait_for_everyone()
        data = FinetuneData.load(data_path)
    data_s = time.perf_counter() - t0
    st = data.stats
    say(f"Samples: {st['hits']} hits in {st['generations']} generations -> {st['examples']} examples "
        f"({st['examples_with_chosen']} with acceptable alternatives, {st.get('decision_points_moved', 0)} decision "
        f"points moved past word pieces), {st['retain_positions']} retain positions")

    vocab_size = logits_width(model)
    w = cfg.weights
    distil = cfg.method == "cull" and w.retain_under_processor and bool(w.kl or w.ban)
    spell = distil and bool(cfg.spelling_contexts and cfg.spelling_batch_size)
    mention = distil and bool(cfg.mention_prompts and cfg.mention_batch_size)
    # built here, for this run's rules (the caller's data may be shared)
    data.spelling, data.val_spelling, data.mentions, data.val_mentions = [], [], [], []
    if spell:
        add_spelling_contexts(model, tok, rules, data, cfg, progress)
    validating = acc.num_processes == 1 and bool(cfg.eval_every)
    if mention:
        add_mention_contexts(model, tok, rules, data, cfg, vocab_size, acc=acc, path=out / "mentions.json",
                             validation=validating, progress=progress, say=say)
    dropped = _attach_banned(data, rules, tok, vocab_size)  # the retain target (an option) and a validation figure
    if spell:
        say(f"Spelling contexts: {len(data.spelling)} (+ {len(data.val_spelling)} for validation) for the phrases' "
            f"multi-token spellings{f'; {dropped} the processor could not have produced were left out' if dropped else ''}")
    if mention:
        say(f"Mention contexts: {len(data.mentions)} (+ {len(data.val_mentions)} for validation) replies to prompts "
            "that name a phrase, where the processor stepped in" if nameable(rules) else "Mention contexts: none "
            "(no literal phrase to name; regexes and wildcard fragments are not named)")
    rows = None
    no_rows = "--adapter-only: a LoRA adapter cannot hold them" if cfg.adapter_only else rows_supported(model)
    if cfg.phrase_rows and cfg.method == "cull" and not cfg.full and no_rows:
        say(f"The phrase rows are not trained ({no_rows}); pass --phrase-rows off to silence this")
    elif cfg.phrase_rows and cfg.method == "cull" and not cfg.full:  # full: every row trains anyway
        ids = context_free_tokens(data.retain)
        if ids:
            rows = PhraseRows(model, ids)
            say(f"Training the output rows of {len(ids)} tokens banned in every context: "
                f"{', '.join(tok.convert_ids_to_tokens(ids[:12]))}{' ...' if len(ids) > 12 else ''}")
    lr = cfg.lr or (5e-5 if cfg.full else 1e-3)
    frozen = None
    if cfg.full:
        if cfg.rounds > 1:  # later rounds stay tethered to the original weights
            import copy

            frozen = copy.deepcopy(model).eval().requires_grad_(False)
        model.requires_grad_(True)
    else:
        require("peft", "finetune")
        from peft import LoraConfig, get_peft_model

        targets = lora_target_modules(model, cfg.lora_targets)
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
        if rows is not None:
            rows.delta.requires_grad_(True)  # peft froze every parameter it did not add
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    loop = TrainingLoop(acc, model, opt, params, tok, pad, cfg, lr, out, say, progress)
    val_prompts = [prompts[i] for i in data.stats.get("val_prompts", [])] or list(prompts)
    # validation and early stopping run with one process (a stop on one process alone would leave
    # the others waiting in their gradient all-reduce); the base is measured before a checkpoint loads
    base_val = loop.validate(data, rules, val_prompts) if validating else {}
    loop.base_nll = base_val.get("nll", float("nan"))
    say(f"Validation before training: {_fmt(base_val)}")
    start = 0
    ck = _latest_checkpoint(out) if resume else None
    if ck is not None:
        acc.load_state(str(ck))
        start = int(ck.name.split("-")[1])
        say(f"Resumed from {ck} (step {start} of {cfg.steps})")
    log = json.loads((out / "loss_log.json").read_text()) if ck is not None and (out / "loss_log.json").is_file() else []
    rounds = []
    t1 = time.perf_counter()
    for rnd in range(cfg.rounds):
        if rnd:
            unwrapped = acc.unwrap_model(model)
            reference = _Reference(unwrapped, frozen) if (frozen is not None or not cfg.full) else None
            new = _next_round_data(unwrapped, tok, rules, prompts, cfg, progress, reference, rnd, say)
            if new is None:
                break
            rules, extra = new
            if extra.stats.get("added_phrases"):
                new_rules = rules.with_rules(rules.rules[-len(extra.stats["added_phrases"]):])
                if spell:
                    add_spelling_contexts(reference, tok, new_rules, data, cfg, progress)
                if mention:
                    add_mention_contexts(reference, tok, rules, data, cfg, vocab_size, acc=acc, named=new_rules,
                                         path=out / f"mentions-round{rnd + 1}.json", validation=validating,
                                         progress=progress, say=say)
                _attach_banned(data, rules, tok, vocab_size)
            data.preference += extra.preference
            data.val_preference += extra.val_preference
            data.stats.setdefault("rounds", []).append(extra.stats)
            start = 0
        log, checks, stopped = loop.run(data, rules, val_prompts, start, log, rnd)
        rounds.append({"round": rnd + 1, "checks": checks, "stopped_at": stopped, "phrases": [r.text for r in rules]})
    train_s = time.perf_counter() - t1
    acc.wait_for_everyone()
    model = acc.unwrap_model(model)
    model.eval()
    summary = {"out": str(out), "data": data.stats, "train_steps": cfg.steps, "lr": lr, "data_s": data_s,
               "train_s": train_s, "log": log, "validation_base": base_val, "rounds": rounds,
               "phrase_rows": rows.ids.tolist() if rows is not None else [],
               "contexts": {k: len(getattr(data, k)) for k in ("spelling", "val_spelling", "mentions", "val_mentions")},
               "config": {**asdict(cfg), "weights": asdict(cfg.weights)}}
    if acc.is_main_process:
        summary["saved"], model = save_model(model, tok, out, full=cfg.full, adapter_only=cfg.adapter_only,
                                             base_path=base_path, dtype=cfg.dtype)
        (out / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
        if not keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return {**summary, "model": model}


def logits_width(model) -> int:
    """The model's logits width (the output layer's rows; multimodal configs have no vocab_size)."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.get_text_config().vocab_size)


def _attach_banned(data, rules, tok, vocab_size) -> int:
    """What cull's processor bans at each retain position (cull.finetune.banned): the retain target with
    `retain_under_processor`, and the banned mass the validation checks report. Spelling contexts the
    processor could not have produced are dropped (returns how many), and so are mention contexts
    where it never had to step in."""
    attach_banned(data.retain + data.val_retain + data.spelling + data.val_spelling + data.mentions
                  + data.val_mentions, rules, tok, vocab_size)
    data.mentions, data.val_mentions = with_events(data.mentions), with_events(data.val_mentions)
    before = len(data.spelling) + len(data.val_spelling)
    data.spelling, data.val_spelling = reachable(data.spelling), reachable(data.val_spelling)
    return before - len(data.spelling) - len(data.val_spelling)


def _fmt(v: dict) -> str:
    return ", ".join(f"{k} {x:.4g}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items()) or "(nothing to check)"


def _build(model, tok, rules, prompts, cfg, progress, reference, gens=None, with_retain=True):
    retain_processor = None
    if with_retain and cfg.weights.retain_under_processor and cfg.method == "cull":
        from cull.decode.processor import CullLogitsProcessor

        retain_processor = CullLogitsProcessor(rules, tok, vocab_size=logits_width(model))
    return build_data(model, tok, rules, prompts, n_samples=cfg.n_samples, temperature=cfg.temperature,
                      max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, top_k=cfg.top_k,
                      max_per_pair=cfg.max_per_pair, retain_per_gen=cfg.retain_per_gen,
                      batch_size=cfg.gen_batch_size, chat=cfg.chat, progress=progress,
                      max_examples=cfg.max_examples, reference=reference, commit_prob=cfg.commit_prob,
                      val_fraction=cfg.val_fraction, gens=gens, with_retain=with_retain,
                      retain_processor=retain_processor)


def _next_round_data(model, tok, rules, prompts, cfg, progress, reference, rnd, say):
    """Sample the tuned model; its residual hits and newly over-used phrases become more examples."""
    from cull.measure.discover import candidate_rules, newly_overused
    from cull.measure.evaluate import generate
    from cull.rules import PhraseSet

    model.eval()
    gens = generate(model, tok, prompts, n_samples=cfg.n_samples, temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1000 * rnd, batch_size=cfg.gen_batch_size,
                    chat=cfg.chat, progress=progress, desc=f"round {rnd + 1}: sampling the tuned model")
    base_gens = generate(reference, tok, prompts, n_samples=cfg.n_samples, temperature=cfg.temperature,
                         max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 1000 * rnd,
                         batch_size=cfg.gen_batch_size, chat=cfg.chat, progress=progress,
                         desc=f"round {rnd + 1}: sampling the base") if cfg.new_phrases else []
    added = []
    if cfg.new_phrases:
        known = {r.text.lower() for r in rules}
        added = [p for p in newly_overused([g.text for g in gens], [g.text for g in base_gens], candidate_rules())
                 if p.lower() not in known][:cfg.new_phrases]
    rules2 = rules.with_rules(list(rules) + list(PhraseSet(added))) if added else rules  # the same options
    say(f"Round {rnd + 1}: newly over-used phrases added: {', '.join(added) or 'none'}")
    try:
        extra = _build(model, tok, rules2, prompts, cfg, progress, reference=reference, gens=gens, with_retain=False)
    except CullError:
        say(f"Round {rnd + 1}: the tuned model wrote none of the phrases in its samples; stopping the rounds")
        return None
    extra.stats["added_phrases"] = added
    say(f"Round {rnd + 1}: {extra.stats['hits']} residual hits -> {len(extra.preference)} more examples")
    return rules2, extra
