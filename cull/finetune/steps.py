"""One training step's loss for each method, and the validation check used for early stopping.

Methods (`FinetuneConfig.method`):

- `cull`: preference (clipped) + gated unlikelihood + tether at the hit contexts, dense KL retain;
- `ul-mle`: the Welleck et al. baseline: unlikelihood on the rejected token at the hit contexts
  (not gated) plus maximum likelihood on the model's own clean samples;
- `nat`: negative-aware training (NAT): maximum likelihood on the model's own samples, those with
  a hit prefixed by a "negative" tag and the clean ones untagged; used untagged, the model keeps
  the clean behaviour.
"""
from __future__ import annotations

import math
import random

from cull.finetune.banned import EVENT_MASS, banned_mask
from cull.finetune.loss import LossWeights, total_loss

NAT_TAG = "[Negative example: overused phrases]\n"


def pad_right(rows, pad):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def batch_of(items, size, seed, step, rank, world):
    """The step's batch, a pure function of (seed, step): sampled without replacement within an epoch."""
    if not items or size <= 0:
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


def pref_logits(model, pref, pad, device):
    """Logits at the end of each (left-padded) context, and the rejected/chosen tensors."""
    import torch

    width = max(len(e.context) for e in pref)
    ids = torch.tensor([[pad] * (width - len(e.context)) + e.context for e in pref], device=device)
    mask = torch.tensor([[0] * (width - len(e.context)) + [1] * len(e.context) for e in pref], device=device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
    rejected = torch.tensor([e.rejected for e in pref], device=device)
    c = max(1, max(len(e.chosen) for e in pref))
    chosen = torch.tensor([e.chosen + [0] * (c - len(e.chosen)) for e in pref], device=device)
    cmask = torch.tensor([[1] * len(e.chosen) + [0] * (c - len(e.chosen)) for e in pref], device=device).bool()
    return logits, rejected, chosen, cmask


def retain_logits(model, seqs, positions, pad, device):
    """Logits predicting ids[p] for every p in positions[i] of each sequence, stacked [N, V]; only
    those positions' logits are computed (`logits_to_keep`)."""
    import torch

    rids, rmask = pad_right(seqs, pad)
    keep = sorted({p - 1 for ps in positions for p in ps})
    where = {k: i for i, k in enumerate(keep)}
    rl = check_kept(model(input_ids=rids.to(device), attention_mask=rmask.to(device),
                          logits_to_keep=torch.tensor(keep, device=device)).logits, keep)
    rows = torch.tensor([i for i, ps in enumerate(positions) for _ in ps], device=device)
    cols = torch.tensor([where[p - 1] for ps in positions for p in ps], device=device)
    targets = torch.tensor([s[p] for s, ps in zip(seqs, positions) for p in ps], device=device)
    return rl[rows, cols], targets


def check_kept(logits, keep):
    """The logits of a forward given `logits_to_keep=keep`; a clear error when the model ignored it
    (older transformers), instead of positions silently read from the wrong rows."""
    from cull.errors import CullError

    if logits.shape[1] != len(keep):
        raise CullError(f"the model returned logits for {logits.shape[1]} positions, not the {len(keep)} asked for "
                        "with logits_to_keep; cull finetune needs a transformers version whose models take it "
                        "(pip install -U transformers)")
    return logits


def step_loss(model, pref, retain, pad, w: LossWeights, device, method: str = "cull", nat=None, spelling=()):
    """The loss of one batch and its parts. `spelling`: spelling contexts (cull.finetune.spellings)
    and mention contexts (cull.finetune.mentions), forwarded apart from the long retain sequences;
    they join the KL and banned-mass terms, not the MLE one (a spelling context ends on a banned
    token)."""
    import numpy as np
    import torch

    if method == "nat":
        return nat_loss(model, nat, pad, device)
    pl = rejected = chosen = cmask = ref = None
    if pref:
        pl, rejected, chosen, cmask = pref_logits(model, pref, pad, device)
        if w.tether and all(e.ref_logits is not None for e in pref):
            ref = torch.as_tensor(np.stack([np.asarray(e.ref_logits, dtype=np.float32) for e in pref]), device=device)
    rl = top_ids = top_logp = targets = banned = None
    groups = [g for g in (retain, spelling) if g]
    if groups and (w.kl or w.mle or w.ban):
        outs = [retain_logits(model, [r.ids for r in g], [r.positions for r in g], pad, device) for g in groups]
        rl = torch.cat([o[0] for o in outs])
        targets = torch.cat([o[1] if g is retain else torch.full_like(o[1], -100) for g, o in zip(groups, outs)])
        both = [r for g in groups for r in g]
        if w.kl:
            top_ids, top_logp = retain_top(both, device)
        if w.retain_under_processor:
            banned = banned_mask(both, rl.shape[0], rl.shape[1], device)
    if pl is None and rl is None:
        raise ValueError("a step needs preference examples or retain sequences")
    return total_loss(pl, rejected, chosen, cmask, rl, top_ids, top_logp, w, ref_logits=ref, retain_targets=targets,
                      banned=banned)


def nat_sequences(data, tag_ids: list[int], bos: int | None) -> list[tuple[list, int]]:
    """(ids, first scored index) for NAT: samples with a hit carry the tag after BOS, clean ones not."""
    out = []
    for ids, plen in data.negatives:
        if bos is not None and ids[:1] == [bos]:
            out.append(([bos] + tag_ids + ids[1:], plen + len(tag_ids)))
        else:
            out.append((tag_ids + ids, plen + len(tag_ids)))
    out += [(r.ids, r.positions[0]) for r in data.retain if r.positions]
    return out


def nat_loss(model, seqs, pad, device):
    from cull.finetune.loss import mle_loss

    positions = [list(range(max(start, 1), len(ids))) for ids, start in seqs]
    logits, targets = retain_logits(model, [s[0] for s in seqs], positions, pad, device)
    loss = mle_loss(logits, targets)
    return loss, {"mle": float(loss.detach())}


def validate(model, tok, examples, retain, pad, device, *, rules=None, prompts=None, n_samples: int = 0,
             max_new_tokens: int = 64, seed: int = 0, chat=None, batch_size: int = 8, spelling=(),
             mentions=()) -> dict:
    """The early-stopping signals: on held-out preference examples, the win rate (share of chosen
    tokens whose logit beats the rejected one) and the mean p(rejected); on held-out clean samples,
    the mean NLL per token and, where the examples carry banned sets (`cull.finetune.banned`), the mean
    probability of the banned tokens and the share of positions where it is >= 1% (a ban event,
    teacher-forced); on held-out spelling contexts (`cull.finetune.spellings`), the mean banned
    probability at the position that completes the spelling; on held-out mention contexts
    (`cull.finetune.mentions`), the mean banned probability where the base's was >= 1%; with `n_samples`, the phrase hits in
    that many samples per prompt.

    With banned sets, the NLL leaves out the positions where the base gave the banned tokens >= 1%:
    there the processor chose the sample's token and the tuned model is trained toward it, so its NLL
    would fall by construction and hide damage elsewhere."""
    import torch

    out = {}
    with torch.inference_mode():
        if examples:
            wins = total = 0
            p_rej = []
            for i in range(0, len(examples), batch_size):
                lg, rj, ch, cm = pref_logits(model, examples[i:i + batch_size], pad, device)
                zr = lg.gather(-1, rj[:, None])
                wins += int(((lg.gather(-1, ch) > zr) & cm).sum())
                total += int(cm.sum())
                p_rej += torch.softmax(lg.float(), -1).gather(-1, rj[:, None])[:, 0].tolist()
            out["win_rate"] = wins / total if total else float("nan")
            out["p_rejected"] = sum(p_rej) / len(p_rej)
        if retain:
            nll = n = 0.0
            mass = []
            for i in range(0, len(retain), batch_size):
                chunk = retain[i:i + batch_size]
                lg, tg = retain_logits(model, [r.ids for r in chunk], [r.positions for r in chunk], pad, device)
                per = torch.nn.functional.cross_entropy(lg.float(), tg, reduction="none")
                ban = banned_mask(chunk, lg.shape[0], lg.shape[1], device)
                if ban is not None:
                    mass += banned_prob(lg, ban).tolist()
                    per = per[_base_banned_mass(chunk, ban, device) < EVENT_MASS]
                nll += float(per.sum())
                n += len(per)
            out["nll"] = nll / n if n else float("nan")
            if mass:
                out["banned_mass"] = sum(mass) / len(mass)
                out["ban_rate"] = sum(m >= 0.01 for m in mass) / len(mass)
        if spelling:
            out["spelling_mass"] = spelling_mass(model, spelling, pad, device, batch_size)
        if mentions:
            out["mention_mass"] = mention_mass(model, mentions, pad, device, batch_size)
    if n_samples and prompts:
        from cull.measure.evaluate import generate
        from cull.rules.find import find

        gens = generate(model, tok, prompts, n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed,
                        batch_size=batch_size, chat=chat, progress=False)
        out["hits"] = sum(len(find(g.text, rules)) for g in gens)
        out["samples"] = len(gens)
    return out


def banned_prob(logits, ban):
    """The model's probability of the banned tokens (`ban`, a mask shaped like `logits`) per position."""
    import torch

    return torch.softmax(logits.float(), -1).masked_fill(~ban, 0.0).sum(-1)


def spelling_mass(model, spelling, pad, device, batch_size: int = 8) -> float:
    """Mean probability of the processor's banned tokens at the last position of each spelling
    context: how much of the spelling's completion the model still writes."""
    import torch

    last = [r.positions[-1:] for r in spelling]
    mass = []
    for i in range(0, len(spelling), batch_size):
        chunk, pos = spelling[i:i + batch_size], last[i:i + batch_size]
        lg, _ = retain_logits(model, [r.ids for r in chunk], pos, pad, device)
        ban = torch.zeros_like(lg, dtype=torch.bool)
        for k, r in enumerate(chunk):
            ban[k, list(r.banned[-1])] = True
        mass += banned_prob(lg, ban).tolist()
    return sum(mass) / len(mass) if mass else float("nan")


def mention_mass(model, mentions, pad, device, batch_size: int = 8) -> float:
    """Mean probability of the processor's banned tokens over the positions of the mention contexts
    where the base gave them at least `EVENT_MASS` (the ban events of those replies)."""
    mass = []
    for i in range(0, len(mentions), batch_size):
        chunk = mentions[i:i + batch_size]
        lg, _ = retain_logits(model, [r.ids for r in chunk], [r.positions for r in chunk], pad, device)
        ban = banned_mask(chunk, lg.shape[0], lg.shape[1], device)
        events = _base_banned_mass(chunk, ban, device) >= EVENT_MASS
        mass += banned_prob(lg, ban)[events].tolist()
    return sum(mass) / len(mass) if mass else float("nan")


def retain_top(retain, device):
    """The base's stored top-K ids [N, K] and log-probs [N, K] of the retain examples, stacked in
    `retain_logits` order."""
    import numpy as np
    import torch

    top_ids = torch.as_tensor(np.concatenate([np.asarray(r.top_ids, dtype=np.int64) for r in retain]), device=device)
    top_logp = torch.as_tensor(np.concatenate([np.asarray(r.top_logp, dtype=np.float32) for r in retain]), device=device)
    return top_ids, top_logp


def _base_banned_mass(chunk, ban, device):
    """Per retained position of `chunk`, the base's probability (from its stored top K) of the
    tokens banned there."""
    top_ids, top_logp = retain_top(chunk, device)
    return (top_logp.exp() * ban.gather(-1, top_ids)).sum(-1)


def checkpoint_score(v: dict, base_nll: float, max_ppl_rise: float) -> tuple:
    """Order of preference between validation checks (smaller is better): within the perplexity
    budget, fewest hits, then lowest held-out p(rejected) plus spelling and mention mass (each: the
    chance the model still writes a phrase where it should not), then highest win rate, then smallest perplexity
    rise; outside it, the smallest rise."""
    rise = math.exp(v.get("nll", base_nll) - base_nll) - 1 if math.isfinite(base_nll) else 0.0
    if rise > max_ppl_rise:
        return (1, rise)
    leak = v.get("p_rejected", 0.0) + v.get("spelling_mass", 0.0) + v.get("mention_mass", 0.0)
    return (0, v.get("hits", 0), round(leak, 4), -v.get("win_rate", 0.0), rise)
