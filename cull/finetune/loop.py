"""The optimisation loop of one round: warm-up and cosine decay, checkpoints, and early stopping on
the validation checks (see `steps.validate` and `steps.checkpoint_score`).

Every `eval_every` steps the loop measures the held-out win rate, the held-out perplexity of clean
samples and (with `val_samples`) the phrase hits in fresh samples of the validation prompts. It
keeps the best checkpoint so far (fewest hits within the perplexity budget, then lowest held-out
p(rejected) plus spelling and mention mass, then highest win rate) and stops when the win rate
reaches `stop_win`, the mean held-out p(rejected) is at most `stop_p_rejected`, the banned mass of
the held-out spelling contexts at most `stop_spelling_mass` and that of the held-out mention
contexts at most `stop_mention_mass`, with no validation hits; when the perplexity rise passes twice
the budget at two checks in a row (one such check is often the transient of the peak learning
rate); or after `patience` checks with no better checkpoint. The best checkpoint's
weights are restored at the end of the round. With several processes (accelerate launch) the checks
are off: a stop decided on one process would leave the others waiting in their all-reduce.
"""
from __future__ import annotations

import json
import math

from cull.errors import CullError
from cull.finetune.loss import LossWeights
from cull.finetune.steps import NAT_TAG, batch_of, checkpoint_score, nat_sequences, step_loss, validate


def method_weights(cfg) -> LossWeights:
    """The loss weights a method uses: cull's own, or the UL+MLE baseline's (ungated unlikelihood
    plus maximum likelihood on clean samples; no preference, tether, KL or banned-mass term)."""
    if cfg.method == "ul-mle":
        return LossWeights(preference=0.0, unlikelihood=1.0, kl=0.0, tether=0.0, mle=max(cfg.weights.mle, 1.0),
                           gate_unlikelihood=False, retain_under_processor=False, ban=0.0)
    return cfg.weights


def lr_factor(step: int, steps: int, warmup: float, min_lr: float) -> float:
    """Linear warm-up over the first `warmup` share of the steps, then cosine decay to `min_lr`."""
    w = int(round(warmup * steps))
    if step < w:
        return (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


class EarlyStop:
    """The checkpoint choice and the stop rule of one round, fed one validation check at a time."""

    def __init__(self, cfg, base_nll: float):
        self.cfg, self.base_nll = cfg, base_nll
        self.best, self.stale, self.over = None, 0, 0  # best score; checks since it; checks in a row too hot

    def observe(self, v: dict) -> tuple[bool, str | None]:
        """(whether `v` is the best check so far, why to stop now or None)."""
        cfg = self.cfg
        score = checkpoint_score(v, self.base_nll, cfg.max_ppl_rise)
        self.over = self.over + 1 if v.get("ppl_rise", 0) > 2 * cfg.max_ppl_rise else 0
        is_best = self.best is None or score < self.best
        self.best, self.stale = (score, 0) if is_best else (self.best, self.stale + 1)
        if (v.get("win_rate", 0) >= cfg.stop_win and v.get("p_rejected", 0) <= cfg.stop_p_rejected
                and v.get("spelling_mass", 0) <= cfg.stop_spelling_mass
                and v.get("mention_mass", 0) <= cfg.stop_mention_mass and v.get("hits", 0) == 0 and score[0] == 0):
            return is_best, "every held-out target is met"
        if self.over >= 2:
            return is_best, f"the perplexity rise passed {2 * cfg.max_ppl_rise:.1%} at two checks in a row"
        if self.stale >= cfg.patience:
            return is_best, f"no better checkpoint in {self.stale} checks"
        return is_best, None


class TrainingLoop:
    def __init__(self, acc, model, opt, params, tok, pad, cfg, lr, out, say, progress):
        self.acc, self.model, self.opt, self.params = acc, model, opt, params
        self.tok, self.pad, self.cfg, self.lr, self.out, self.say, self.progress = tok, pad, cfg, lr, out, say, progress
        self.base_nll = float("nan")

    def validate(self, data, rules, val_prompts) -> dict:
        cfg = self.cfg
        examples = data.val_preference or data.preference
        retain = data.val_retain or data.retain[:max(1, len(data.retain) // 8)]
        m = self.model
        was = m.training
        m.eval()
        spelling = data.val_spelling[:512]  # one per spelling, in a seeded random order
        v = validate(m, self.tok, [e for e in examples if e.chosen][:64], retain[:32], self.pad, self.acc.device,
                     rules=rules, prompts=val_prompts, n_samples=cfg.val_samples,
                     max_new_tokens=min(cfg.max_new_tokens, 64), seed=cfg.seed + 7, chat=cfg.chat,
                     batch_size=min(cfg.gen_batch_size, 16), spelling=spelling, mentions=data.val_mentions[:64])
        if was:
            m.train()
        if math.isfinite(self.base_nll) and "nll" in v:
            v["ppl_rise"] = math.exp(v["nll"] - self.base_nll) - 1
        return v

    def _trainable_state(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def _restore(self, state):
        import torch

        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in state:
                    p.copy_(state[n])

    def run(self, data, rules, val_prompts, start, log, rnd):
        import torch
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.acc

        weights = method_weights(cfg)
        nat = None
        if cfg.method == "nat":
            tag = self.tok(NAT_TAG, add_special_tokens=False)["input_ids"]
            nat = nat_sequences(data, tag, self.tok.bos_token_id)
        checks, best_state, stopped, stop = [], None, None, EarlyStop(cfg, self.base_nll)
        self.model.train()
        bar = tqdm(range(start, cfg.steps), desc=f"fine-tuning (round {rnd + 1})",
                   disable=not self.progress or not acc.is_main_process, initial=start, total=cfg.steps)
        for step in bar:
            for g in self.opt.param_groups:
                g["lr"] = self.lr * lr_factor(step, cfg.steps, cfg.warmup, cfg.min_lr)
            seed = cfg.seed + 7919 * rnd
            pref = batch_of(data.preference, cfg.batch_size, seed, step, acc.process_index, acc.num_processes)
            retain = batch_of(data.retain, cfg.retain_batch_size, seed + 1, step, acc.process_index,
                              acc.num_processes)
            spelling = batch_of(data.spelling, cfg.spelling_batch_size, seed + 3, step, acc.process_index,
                                acc.num_processes)
            mentions = batch_of(data.mentions, cfg.mention_batch_size, seed + 4, step, acc.process_index,
                                acc.num_processes)
            nat_batch = batch_of(nat, cfg.batch_size, seed + 2, step, acc.process_index, acc.num_processes) \
                if nat is not None else None
            try:
                with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
                    loss, parts = step_loss(self.model, pref, retain, self.pad, weights, acc.device,
                                            method=cfg.method, nat=nat_batch,
                                            spelling=spelling + mentions)
                self.opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                acc.clip_grad_norm_(self.params, 1.0)
                self.opt.step()
            except RuntimeError as exc:
                if "out of memory" in str(exc).lower():
                    raise CullError(f"ran out of memory at step {step} with batch size {cfg.batch_size} (+ "
                                    f"{cfg.retain_batch_size} retain sequences, {cfg.spelling_batch_size} "
                                    f"spelling contexts and {cfg.mention_batch_size} mention contexts); pass --batch-size "
                                    f"{max(1, cfg.batch_size // 2)} and --retain-batch-size "
                                    f"{max(0, cfg.retain_batch_size // 2)}, or fewer contexts (--spelling-contexts, "
                                    "--mention-prompts; 0 turns them off)") from None
                raise
            parts["loss"] = float(loss.detach())
            bar.set_postfix({k: f"{v:.3f}" for k, v in parts.items()})
            if step % 10 == 0 or step == cfg.steps - 1:
                log.append({"round": rnd + 1, "step": step, "lr": self.opt.param_groups[0]["lr"], **parts})
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                acc.save_state(str(self.out / "checkpoints" / f"step-{step + 1}"))
                if acc.is_main_process:
                    (self.out / "loss_log.json").write_text(json.dumps(log))
            if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps) and acc.num_processes == 1:
                v = {"step": step + 1, **self.validate(data, rules, val_prompts)}
                checks.append(v)
                self.say(f"Validation at step {step + 1}: {json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in v.items()})}")
                is_best, why = stop.observe(v)
                if is_best:
                    best_state, v["best"] = self._trainable_state(), True
                if why:
                    stopped = step + 1
                    self.say(f"Early stop at step {step + 1}: {why}")
                    break
        bar.close()
        if best_state is not None and acc.num_processes == 1:
            self._restore(best_state)
            self.say(f"Kept the checkpoint of step {[c['step'] for c in checks if c.get('best')][-1]}")
        return log, checks, stopped
