"""The loss terms of `cull finetune`. Each takes logits and returns a scalar (mean over examples).

At the decision point of each hit (the context), with z the logits, r the rejected token, C the
acceptable alternatives:

- `preference_loss`: FTPO-style, on raw logit gaps d = z[c] - z[r] (equal to the log-prob gaps):
  softplus(beta * (margin - d)) per chosen c, weighted by min(1, (margin - d) / margin), clipped to 0
  once d >= margin, so a pair stops pulling once it is won by the margin (no runaway Δ);
- `unlikelihood_loss`: -log(1 - p(r)) (Welleck et al. 2019), computed stably in log space; gated
  (`gate=True`): only on rows where r still beats every chosen token (or, with none, every token);
- `tether_loss`: squared distance of every non-target logit (all but r and C) to the reference's
  logits at the same context, after removing the mean shift (softmax ignores it): the rest of the
  distribution at the hit contexts stays where it was;

and on the model's own clean samples (the retain set):

- `retain_kl`: KL(reference || model) at every clean position, over the reference's top-K tokens
  plus one bucket for the rest of the vocabulary, so only K numbers per position need storing. With
  a `banned` mask (`retain_under_processor`), the target is the reference as cull's processor leaves
  it: the banned tokens get no mass, the rest is renormalised, and the model's banned mass is in no
  bucket, so each banned logit feels a gradient equal to its probability;
- `banned_mass_loss`: -log(1 - m) per retain position, m the model's mass on the tokens the processor
  bans there: an unlikelihood on every context of the processor-on samples, not only the hit ones;
- `mle_loss`: the mean negative log-likelihood of the tokens (the UL+MLE and NAT baselines).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    preference: float = 1.0
    unlikelihood: float = 1.0
    kl: float = 30.0  # measured: 1-10 let the perplexity of clean text rise 3-4 % before the phrases were gone
    beta: float = 1.0
    margin: float = 2.0
    tether: float = 0.4
    mle: float = 0.0
    clip: bool = True  # preference: stop pulling a pair once its margin is met
    gate_unlikelihood: bool = True  # unlikelihood only while the rejected token still wins
    retain_under_processor: bool = True  # retain set sampled with the processor on; target: the base under it
    ban: float = 300.0  # unlikelihood on the banned mass at every retain position (needs the above); measured


def preference_loss(logits: torch.Tensor, rejected: torch.Tensor, chosen: torch.Tensor, chosen_mask: torch.Tensor,
                    beta: float = 1.0, margin: float = 2.0, clip: bool = False) -> torch.Tensor:
    """logits [B, V]; rejected [B]; chosen [B, C] (padded) with chosen_mask [B, C] (bool).
    Per chosen token softplus(beta * (margin - (z[c] - z[r]))), averaged over an example's chosen
    tokens and over examples; with `clip`, weighted by clamp((margin - gap) / margin, 0, 1) (no
    gradient through the weight), so a won pair adds nothing. Examples without any chosen token
    contribute nothing."""
    z = logits.float()
    zr = z.gather(-1, rejected[:, None])  # [B, 1]
    zc = z.gather(-1, chosen.clamp(min=0))  # [B, C]
    gap = zc - zr
    per = F.softplus(beta * (margin - gap))  # [B, C]
    m = chosen_mask.float()
    if clip:
        m = m * ((margin - gap.detach()) / max(margin, 1e-6)).clamp(0.0, 1.0)
    n = chosen_mask.float().sum(-1)
    per_ex = (per * m).sum(-1) / n.clamp(min=1)
    has = (n > 0).float()
    return (per_ex * has).sum() / has.sum().clamp(min=1)


def log1m_prob(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log(1 - softmax(logits)[index]) per row, without cancellation: logsumexp of the other logits
    minus logsumexp of all of them."""
    logits = logits.float()
    others = logits.scatter(-1, index[:, None], float("-inf"))
    return torch.logsumexp(others, -1) - torch.logsumexp(logits, -1)


def rejected_still_wins(logits: torch.Tensor, rejected: torch.Tensor, chosen: torch.Tensor | None = None,
                        chosen_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B] bool: the rejected logit is >= every chosen logit (rows without chosen: >= every logit)."""
    z = logits.detach().float()
    zr = z.gather(-1, rejected[:, None])[:, 0]
    best = z.max(-1).values
    if chosen is not None and chosen_mask is not None and chosen_mask.shape[-1]:
        zc = z.gather(-1, chosen.clamp(min=0)).masked_fill(~chosen_mask, float("-inf")).max(-1).values
        best = torch.where(chosen_mask.any(-1), zc, best)
    return zr >= best


def unlikelihood_loss(logits: torch.Tensor, rejected: torch.Tensor, chosen: torch.Tensor | None = None,
                      chosen_mask: torch.Tensor | None = None, gate: bool = False) -> torch.Tensor:
    """Mean over rows of -log(1 - p(rejected)); logits [B, V], rejected [B]. With `gate`, rows where
    the rejected token no longer wins (`rejected_still_wins`) add 0."""
    per = -log1m_prob(logits, rejected)
    if gate:
        per = per * rejected_still_wins(logits, rejected, chosen, chosen_mask).float()
    return per.mean()


def tether_loss(logits: torch.Tensor, ref_logits: torch.Tensor, rejected: torch.Tensor, chosen: torch.Tensor,
                chosen_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the non-target logits to the reference's, per row centred (a common
    shift of all logits changes no probability). logits, ref_logits [B, V]."""
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep.scatter_(1, rejected[:, None], False)
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None].expand_as(chosen)
    keep[rows[chosen_mask], chosen[chosen_mask]] = False
    diff = (logits.float() - ref_logits.float()) * keep
    n = keep.sum(-1, keepdim=True).clamp(min=1)
    centred = (diff - diff.sum(-1, keepdim=True) / n) * keep
    return (centred.pow(2).sum(-1) / n[:, 0]).mean()


def retain_kl(logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor,
              banned: torch.Tensor | None = None) -> torch.Tensor:
    """Mean KL(base || model) per position; logits [N, V] of the model, top_ids/top_logp [N, K] of the
    base. The base mass outside its top K is one bucket, compared with the model's mass outside them.
    `banned` [N, V] bool: those tokens' base mass is removed (the rest renormalised; the base's mass
    outside its top K counts as allowed) and the model's mass on them is left out of every bucket."""
    logp = torch.log_softmax(logits.float(), -1)
    lm = logp.gather(-1, top_ids)  # [N, K]
    lb = top_logp.float()
    pb = lb.exp()
    if banned is None:
        kl_top = (pb * (lb - lm)).sum(-1)
        rest_b = (1 - pb.sum(-1)).clamp(min=1e-12)
        log_rest_m = (1 - lm.exp().sum(-1)).clamp(min=1e-12).log()
    else:
        keep = ~banned.gather(-1, top_ids)
        allowed = (pb * keep).sum(-1) + (1 - pb.sum(-1)).clamp(min=0)  # the base's mass the processor leaves
        q = torch.where(keep, pb / allowed.clamp(min=1e-12)[:, None], torch.zeros_like(pb))
        kl_top = torch.where(keep, q * (q.clamp(min=1e-30).log() - lm), torch.zeros_like(q)).sum(-1)
        rest_b = (1 - q.sum(-1)).clamp(min=1e-12)
        # the model's mass outside the top K and outside the banned tokens, as a logsumexp (1 - sums
        # would cancel when the banned tokens hold nearly all of it)
        rest = ~banned
        rest.scatter_(-1, top_ids, False)
        some = rest.any(-1)
        masked = torch.where(some[:, None], logp.masked_fill(~rest, float("-inf")), torch.zeros_like(logp))
        log_rest_m = torch.where(some, torch.logsumexp(masked, -1), torch.full_like(rest_b, -27.63))
        log_rest_m = log_rest_m.clamp(min=-27.63)  # log(1e-12), as in the plain branch
    kl_rest = rest_b * (rest_b.log() - log_rest_m)
    return (kl_top + kl_rest).mean()


def banned_mass_loss(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """Mean over positions of -log(1 - m), m the model's probability of the tokens cull's processor
    bans there (`banned` [N, V] bool); computed as logsumexp(allowed) - logsumexp(all), stably."""
    z = logits.float()
    ban = banned & ~banned.all(-1, keepdim=True)  # a row with every token banned has nowhere to move: 0
    return (torch.logsumexp(z, -1) - torch.logsumexp(z.masked_fill(ban, float("-inf")), -1)).mean()


def mle_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` [N] under logits [N, V]; targets of -100 are left out."""
    return F.cross_entropy(logits.float(), targets)


def total_loss(pref_logits, rejected, chosen, chosen_mask, retain_logits, top_ids, top_logp,
               w: LossWeights, ref_logits=None, retain_targets=None, banned=None) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the terms and each term's value (for logging)."""
    parts = {}
    anchor = pref_logits if pref_logits is not None else retain_logits
    total = anchor.new_zeros(())
    if pref_logits is not None and pref_logits.numel():
        if w.preference:
            parts["pref"] = preference_loss(pref_logits, rejected, chosen, chosen_mask, w.beta, w.margin, w.clip)
            total = total + w.preference * parts["pref"]
        if w.unlikelihood:
            parts["ul"] = unlikelihood_loss(pref_logits, rejected, chosen, chosen_mask, gate=w.gate_unlikelihood)
            total = total + w.unlikelihood * parts["ul"]
        if w.tether and ref_logits is not None:
            parts["tether"] = tether_loss(pref_logits, ref_logits, rejected, chosen, chosen_mask)
            total = total + w.tether * parts["tether"]
    if retain_logits is not None and retain_logits.numel():
        if w.kl and top_ids is not None:
            parts["kl"] = retain_kl(retain_logits, top_ids, top_logp, banned if w.retain_under_processor else None)
            total = total + w.kl * parts["kl"]
        if w.ban and w.retain_under_processor and banned is not None:
            parts["ban"] = banned_mass_loss(retain_logits, banned)
            total = total + w.ban * parts["ban"]
        if w.mle and retain_targets is not None and bool((retain_targets >= 0).any()):
            parts["mle"] = mle_loss(retain_logits, retain_targets)
            total = total + w.mle * parts["mle"]
    return total, {k: float(v.detach()) for k, v in parts.items()}
