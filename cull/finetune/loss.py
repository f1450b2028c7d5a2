"""The loss terms of `cull finetune`. Each takes logits and returns a scalar (mean over examples).

- `preference_loss`: FTPO-style preference on the final token: each acceptable alternative's
  log-prob should beat the rejected token's by `margin`; -logsigmoid(beta * (diff - margin)),
  averaged over the chosen tokens of an example (and so over examples).
- `unlikelihood_loss`: -log(1 - p(rejected)) (Welleck et al. 2019), computed stably in log space.
- `retain_kl`: KL(base || model) at clean positions, over the base model's top-K tokens plus one
  bucket for the rest of the vocabulary, so only K numbers per position need storing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    preference: float = 1.0
    unlikelihood: float = 1.0
    kl: float = 1.0
    beta: float = 1.0
    margin: float = 2.0


def preference_loss(logits: torch.Tensor, rejected: torch.Tensor, chosen: torch.Tensor, chosen_mask: torch.Tensor,
                    beta: float = 1.0, margin: float = 2.0) -> torch.Tensor:
    """logits [B, V]; rejected [B]; chosen [B, C] (padded) with chosen_mask [B, C] (bool).
    Examples without any chosen token contribute nothing."""
    logp = torch.log_softmax(logits.float(), -1)
    lr = logp.gather(-1, rejected[:, None])  # [B, 1]
    lc = logp.gather(-1, chosen.clamp(min=0))  # [B, C]
    per = -F.logsigmoid(beta * (lc - lr - margin))  # [B, C]
    m = chosen_mask.float()
    n = m.sum(-1)
    per_ex = (per * m).sum(-1) / n.clamp(min=1)
    has = (n > 0).float()
    return (per_ex * has).sum() / has.sum().clamp(min=1)


def log1m_prob(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log(1 - softmax(logits)[index]) per row, without cancellation: logsumexp of the other logits
    minus logsumexp of all of them."""
    logits = logits.float()
    others = logits.scatter(-1, index[:, None], float("-inf"))
    return torch.logsumexp(others, -1) - torch.logsumexp(logits, -1)


def unlikelihood_loss(logits: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(rejected)) over rows; logits [B, V], rejected [B]."""
    return (-log1m_prob(logits, rejected)).mean()


def retain_kl(logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor) -> torch.Tensor:
    """Mean KL(base || model) per position; logits [N, V] of the model, top_ids/top_logp [N, K] of the
    base. The base mass outside its top K is one bucket, compared with the model's mass outside them."""
    logp = torch.log_softmax(logits.float(), -1)
    lm = logp.gather(-1, top_ids)  # [N, K]
    lb = top_logp.float()
    pb = lb.exp()
    kl_top = (pb * (lb - lm)).sum(-1)
    rest_b = (1 - pb.sum(-1)).clamp(min=1e-12)
    rest_m = (1 - lm.exp().sum(-1)).clamp(min=1e-12)
    kl_rest = rest_b * (rest_b.log() - rest_m.log())
    return (kl_top + kl_rest).mean()


def total_loss(pref_logits, rejected, chosen, chosen_mask, retain_logits, top_ids, top_logp,
               w: LossWeights) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the three terms and each term's value (for logging)."""
    parts = {}
    total = pref_logits.new_zeros(())
    if w.preference:
        parts["pref"] = preference_loss(pref_logits, rejected, chosen, chosen_mask, w.beta, w.margin)
        total = total + w.preference * parts["pref"]
    if w.unlikelihood:
        parts["ul"] = unlikelihood_loss(pref_logits, rejected)
        total = total + w.unlikelihood * parts["ul"]
    if w.kl and retain_logits is not None and retain_logits.numel():
        parts["kl"] = retain_kl(retain_logits, top_ids, top_logp)
        total = total + w.kl * parts["kl"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
