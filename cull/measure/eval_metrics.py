"""What a fine-tune cost, for `cull eval`: perplexity on clean text (with bootstrap CIs, and the
paired change against a reference model) and the per-token KL from the reference."""
from __future__ import annotations

import math

from cull.decode.tokens import batches, pad_id, pad_rows
from cull.errors import require


def _scored_sequences(tok, texts, chat):
    """(ids, index where scoring starts) per text: a plain string is scored whole after BOS; a
    {"prompt", "text"} item scores the text's tokens given the prompt."""
    from cull.measure.generate import prompt_ids

    seqs = []
    for t in texts:
        if isinstance(t, dict):
            p = prompt_ids(tok, t["prompt"], chat)
            seqs.append((p + tok(t["text"], add_special_tokens=False)["input_ids"], len(p)))
        else:
            ids = tok(t, add_special_tokens=True)["input_ids"]
            if not ids or ids[0] != tok.bos_token_id and tok.bos_token_id is not None:
                ids = [tok.bos_token_id] + ids
            seqs.append((ids, 1))
    return seqs


def sequence_nll(model, tok, texts, *, batch_size: int = 8, chat: bool | None = None, progress: bool = True,
                 max_tokens: int = 1024) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood (nats) and scored-token count of each text (see `perplexity`).
    Sequences are cut to their first `max_tokens` tokens."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm


    seqs = [(ids[:max_tokens], start) for ids, start in _scored_sequences(tok, texts, chat)]
    nll, count = [], []
    device = next(model.parameters()).device
    for chunk in tqdm(list(batches(seqs, batch_size)), desc="perplexity", disable=not progress, leave=False):
        ids, mask = pad_rows([s[0] for s in chunk], pad_id(tok))
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for i, (s, start) in enumerate(chunk):
            pos = torch.arange(max(start, 1), len(s), device=device)
            nll.append(-logp[i, pos - 1, ids[i, pos].to(device)].sum().item())
            count.append(len(pos))
    return nll, count


def perplexity(model, tok, texts, *, batch_size: int = 8, chat: bool | None = None, progress: bool = True,
               seed: int = 0) -> dict:
    """exp(mean NLL per token), with a 95% bootstrap CI over the texts. A plain string is scored whole
    (after BOS); a {"prompt", "text"} item scores the text's tokens given the prompt. The per-text
    sums are kept under "_nll" and "_tokens" for paired comparisons."""
    from cull.measure.text_stats import clustered_ratio_ci

    nll, count = sequence_nll(model, tok, texts, batch_size=batch_size, chat=chat, progress=progress)
    total = sum(count)
    if not total:
        return {"perplexity": float("nan"), "perplexity_ci": [float("nan")] * 2, "tokens": 0, "texts": len(texts)}
    _, lo, hi = clustered_ratio_ci(nll, count, seed=seed)
    return {"perplexity": math.exp(sum(nll) / total), "perplexity_ci": [math.exp(lo), math.exp(hi)],
            "tokens": total, "texts": len(texts), "_nll": nll, "_tokens": count}


def perplexity_change(ppl: dict, ref_ppl: dict, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """The relative change ppl / ref_ppl - 1 of two `perplexity` results on the same texts, with a
    paired bootstrap over the texts: {"change", "change_ci"} (fractions: 0.01 is +1%)."""
    import numpy as np

    a, b, n = (np.asarray(x, dtype=float) for x in (ppl["_nll"], ref_ppl["_nll"], ppl["_tokens"]))
    if list(ppl["_tokens"]) != list(ref_ppl["_tokens"]):
        raise ValueError("the two perplexities were measured on different texts; compare like with like")
    if n.sum() == 0:
        return {"change": float("nan"), "change_ci": [float("nan")] * 2}
    est = math.exp((a.sum() - b.sum()) / n.sum()) - 1
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    stats = np.exp((a[idx].sum(1) - b[idx].sum(1)) / np.maximum(n[idx].sum(1), 1)) - 1
    q = (1 - level) / 2
    return {"change": est, "change_ci": [float(np.quantile(stats, q)), float(np.quantile(stats, 1 - q))]}


def mean_kl(model, reference, gens, *, pad: int = 0, batch_size: int = 4, progress: bool = True) -> float:
    """Mean over generated tokens of KL(model || reference) at each position."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    gens = [g for g in gens if g.gen_ids]
    device = next(model.parameters()).device
    for chunk in tqdm(list(batches(gens, batch_size)), desc="KL", disable=not progress, leave=False):
        ids, mask = pad_rows([g.prompt_ids + g.gen_ids for g in chunk], pad)
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            lp = torch.log_softmax(model(ids, attention_mask=mask).logits.float(), -1)
            lq = torch.log_softmax(reference(ids, attention_mask=mask).logits.float(), -1)
            for i, g in enumerate(chunk):
                a, b = len(g.prompt_ids) - 1, len(g.prompt_ids) + len(g.gen_ids) - 1
                p, q = lp[i, a:b], lq[i, a:b]
                total += (p.exp() * (p - q)).sum().item()
                count += b - a
    return total / count if count else float("nan")
