"""The training loop of `cull finetune`: LoRA (peft) by default, or a full fine-tune, under accelerate.

    from cull.finetune import FinetuneConfig, finetune
    summary = finetune(model, tok, rules, prompts, "out/", FinetuneConfig(steps=200))

The same code runs on one CPU, one GPU or several (`accelerate launch -m cull.finetune ...`): the
data are built once by the main process and shared through `out/data.json`; each process takes its
own slice of every batch. Checkpoints go to `out/checkpoints/step-N` every `checkpoint_every` steps;
`resume=True` picks up from the latest one with the same data (batches are a function of the seed
and the step, so a resumed run trains on exactly the batches the interrupted one would have).
"""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CullError, require
from ..rules import as_phrase_set
from .data import FinetuneData, build_data
from .loss import LossWeights, total_loss

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "c_attn", "c_proj", "c_fc", "query_key_value", "dense", "fc1", "fc2", "wq", "wk", "wv", "wo")
MAX_BATCH = 256


@dataclass
class FinetuneConfig:
    steps: int = 200
    lr: float | None = None  # default: 1e-3 for LoRA, 5e-5 for a full fine-tune
    batch_size: int = 8  # preference examples per step
    retain_batch_size: int = 4  # retain sequences per step
    full: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_targets: tuple | None = None
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    checkpoint_every: int = 50
    adapter_only: bool = False
    # data building
    n_samples: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 128
    gen_batch_size: int = 16
    top_k: int = 8
    max_per_pair: int = 8
    retain_per_gen: int = 8
    max_examples: int | None = None
    chat: bool | None = None

    def check(self) -> None:
        for name in ("steps", "batch_size", "n_samples", "max_new_tokens", "gen_batch_size", "lora_r"):
            if getattr(self, name) < 1:
                raise CullError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("batch_size", "retain_batch_size", "gen_batch_size"):
            if getattr(self, name) > MAX_BATCH:
                raise CullError(f"{name} is {getattr(self, name)}, above the bound of {MAX_BATCH}; use a smaller "
                                "batch (more steps) instead")
        if self.lr is not None and not self.lr > 0:
            raise CullError(f"the learning rate must be > 0, got {self.lr}")


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


def _pad_right(rows, pad):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def _batch(items, size, seed, step, rank, world):
    """The step's batch, a pure function of (seed, step): sampled without replacement within an epoch."""
    if not items:
        return []
    per_epoch = max(1, len(items) // size) if len(items) >= size else 1
    epoch, k = divmod(step, per_epoch)
    order = list(range(len(items)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if len(items) < size:  # fewer examples than a batch: repeat them
        order = (order * (size // len(items) + 1))
        k = 0
    idx = order[k * size:(k + 1) * size]
    return [items[i] for i in idx[rank::world]]


def _step_loss(model, pref, retain, pad, w: LossWeights, device):
    """The loss of one batch. Only the logits that the loss reads are computed (`logits_to_keep`):
    the last position of each left-padded context, and the retain positions."""
    import torch

    width = max(len(e.context) for e in pref)
    ids = torch.tensor([[pad] * (width - len(e.context)) + e.context for e in pref], device=device)
    mask = torch.tensor([[0] * (width - len(e.context)) + [1] * len(e.context) for e in pref], device=device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    pref_logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
    rejected = torch.tensor([e.rejected for e in pref], device=device)
    c = max(1, max(len(e.chosen) for e in pref))
    chosen = torch.tensor([e.chosen + [0] * (c - len(e.chosen)) for e in pref], device=device)
    cmask = torch.tensor([[1] * len(e.chosen) + [0] * (c - len(e.chosen)) for e in pref], device=device).bool()
    r_logits = top_ids = top_logp = None
    if retain and w.kl:
        rids, rmask = _pad_right([r.ids for r in retain], pad)
        keep = sorted({p - 1 for r in retain for p in r.positions})
        where = {k: i for i, k in enumerate(keep)}
        rl = model(input_ids=rids.to(device), attention_mask=rmask.to(device),
                   logits_to_keep=torch.tensor(keep, device=device)).logits
        rows = torch.tensor([i for i, r in enumerate(retain) for _ in r.positions], device=device)
        cols = torch.tensor([where[p - 1] for r in retain for p in r.positions], device=device)
        r_logits = rl[rows, cols]
        top_ids = torch.tensor([t for r in retain for t in r.top_ids], device=device)
        top_logp = torch.tensor([t for r in retain for t in r.top_logp], device=device)
    return total_loss(pref_logits, rejected, chosen, cmask, r_logits, top_ids, top_logp, w)


def _latest_checkpoint(out: Path):
    cks = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def finetune(model, tok, rules, prompts, out_dir, cfg: FinetuneConfig | None = None, *, resume: bool = False,
             progress: bool = True, base_path: str | None = None, say=print, keep_checkpoints: bool = False,
             data: FinetuneData | None = None) -> dict:
    """Fine-tune `model` so that it stops writing `rules`; write the result to `out_dir`.

    The model is changed in place (LoRA layers are merged into it); use the returned "model".
    `data` skips the sampling and uses the given examples (e.g. to train a baseline on the same data).

    Returns a summary dict (also written to out_dir/finetune.json): data statistics, the loss per
    logged step, and the output paths."""
    torch = require("torch", "hf")
    require("accelerate", "hf")
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    cfg = cfg or FinetuneConfig()
    cfg.check()
    rules = as_phrase_set(rules)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator()
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
            data = build_data(model, tok, rules, prompts, n_samples=cfg.n_samples, temperature=cfg.temperature,
                              max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, top_k=cfg.top_k,
                              max_per_pair=cfg.max_per_pair, retain_per_gen=cfg.retain_per_gen,
                              batch_size=cfg.gen_batch_size, chat=cfg.chat, progress=progress,
                              max_examples=cfg.max_examples)
            data.save(data_path)
        acc.wait_for_everyone()
        data = FinetuneData.load(data_path)
    data_s = time.perf_counter() - t0
    st = data.stats
    say(f"Base samples: {st['hits']} hits in {st['generations']} generations -> {st['examples']} examples "
        f"({st['examples_with_chosen']} with acceptable alternatives), {st['retain_positions']} retain positions")

    lr = cfg.lr or (5e-5 if cfg.full else 1e-3)
    if cfg.full:
        model.requires_grad_(True)
    else:
        require("peft", "finetune")
        from peft import LoraConfig, get_peft_model

        targets = lora_target_modules(model, cfg.lora_targets)
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model, opt = acc.prepare(model, opt)
    start = 0
    ck = _latest_checkpoint(out) if resume else None
    if ck is not None:
        acc.load_state(str(ck))
        start = int(ck.name.split("-")[1])
        say(f"Resumed from {ck} (step {start} of {cfg.steps})")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    log = json.loads((out / "loss_log.json").read_text()) if ck is not None and (out / "loss_log.json").is_file() else []
    model.train()
    bar = tqdm(range(start, cfg.steps), desc="fine-tuning", disable=not progress or not acc.is_main_process,
               initial=start, total=cfg.steps)
    t1 = time.perf_counter()
    for step in bar:
        pref = _batch(data.preference, cfg.batch_size, cfg.seed, step, acc.process_index, acc.num_processes)
        retain = _batch(data.retain, cfg.retain_batch_size, cfg.seed + 1, step, acc.process_index,
                        acc.num_processes)
        try:
            loss, parts = _step_loss(model, pref, retain, pad, cfg.weights, acc.device)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            acc.clip_grad_norm_(params, 1.0)
            opt.step()
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise CullError(f"ran out of memory at step {step} with batch size {cfg.batch_size} (+ "
                                f"{cfg.retain_batch_size} retain sequences); pass --batch-size "
                                f"{max(1, cfg.batch_size // 2)} and --retain-batch-size "
                                f"{max(0, cfg.retain_batch_size // 2)}") from None
            raise
        parts["loss"] = float(loss.detach())
        bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
        if step % 10 == 0 or step == cfg.steps - 1:
            log.append({"step": step, **parts})
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            acc.save_state(str(out / "checkpoints" / f"step-{step + 1}"))
            if acc.is_main_process:
                (out / "loss_log.json").write_text(json.dumps(log))
    train_s = time.perf_counter() - t1
    acc.wait_for_everyone()
    model = acc.unwrap_model(model)
    model.eval()
    summary = {"out": str(out), "data": data.stats, "train_steps": cfg.steps, "lr": lr, "data_s": data_s,
               "train_s": train_s, "log": log, "config": {**asdict(cfg), "weights": asdict(cfg.weights)}}
    if acc.is_main_process:
        summary["saved"], model = save_model(model, tok, out, full=cfg.full, adapter_only=cfg.adapter_only,
                                             base_path=base_path)
        (out / "finetune.json").write_text(json.dumps(summary, indent=2, default=str))
        if not keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return {**summary, "model": model}


def save_model(model, tok, out: Path, *, full: bool, adapter_only: bool, base_path: str | None):
    """Write a merged model (or, with adapter_only, the LoRA adapter) that `from_pretrained` loads.
    Returns ("merged" or "adapter", the model to use from now on)."""
    if adapter_only and not full:
        if base_path:
            model.peft_config["default"].base_model_name_or_path = str(base_path)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return "adapter", model
    merged = model if full else model.merge_and_unload()
    if hasattr(merged.config, "quantization_config"):  # loaded from a GGUF: save it as a plain model
        del merged.config.quantization_config
    merged.save_pretrained(out)
    tok.save_pretrained(out)
    return "merged", merged


def load_model_for_finetune(path, threads: int | None = None, say=print):
    """(model, tokenizer, base path for an adapter's config) from a model folder or .gguf file."""
    from ..models import _converted_dir, load_model, resolve_model

    folder, gguf = resolve_model(path, say=say)
    model, tok = load_model(folder / gguf if gguf else folder, threads=threads, say=say)
    base = folder
    if gguf is not None and (_converted_dir(folder, gguf) / "model" / "config.json").is_file():
        base = _converted_dir(folder, gguf) / "model"
    return model, tok, str(Path(base).resolve())
