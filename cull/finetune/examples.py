"""The model-facing half of the data building: the sample's token log-probs (for decision points),
the acceptable alternatives at each context with the reference's logits there (for the tether), and
the dense retain set with the reference's top-K log-probs at every clean position."""
from __future__ import annotations

import random

from cull.decode.tokens import pad_id, pad_rows
from cull.errors import require
from cull.rules.find import find
from cull.finetune.records import PreferenceExample, RetainExample


def sample_token_logp(model, tok, gens, *, batch_size: int = 16, progress: bool = True) -> dict:
    """{id(gen): [log p(gen_ids[i] | everything before)]} under `model`."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    out = {}
    device = next(model.parameters()).device
    for b in tqdm(range(0, len(gens), batch_size), desc="token log-probs", disable=not progress, leave=False):
        chunk = gens[b:b + batch_size]
        ids, mask = pad_rows([g.prompt_ids + g.gen_ids for g in chunk], pad_id(tok))
        with torch.inference_mode():
            logits = model(ids.to(device), attention_mask=mask.to(device)).logits
            for i, g in enumerate(chunk):  # one row's log-softmax at a time: [B, T, V] in float32 is large
                n = len(g.prompt_ids)
                pos = torch.arange(n, n + len(g.gen_ids), device=device)
                logp = torch.log_softmax(logits[i, pos - 1].float(), -1)
                out[id(g)] = logp.gather(-1, ids[i, pos].to(device)[:, None])[:, 0].tolist()
    return out


def _last_logits(model, contexts, pad, device):
    import torch

    ids, mask = pad_rows(contexts, pad, side="left")
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)).logits[:, -1].float()


def find_chosen(model, tok, rules, found, *, top_k: int = 8, min_prob: float = 0.01, max_chosen: int = 4,
                lookahead: int = 6, batch_size: int = 32, progress: bool = True,
                reference=None) -> list[PreferenceExample]:
    """Preference examples for `found` = [(generation, phrase, token index, context)]: the model's top-k
    alternatives at each context, kept when a short greedy continuation after them writes no new
    match. With `reference`, its logits at each context are kept (float16) for the tether.
    Contexts and candidates are batched (left-padded)."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    special = set(getattr(tok, "all_special_ids", []) or [])
    pad = pad_id(tok)
    device = next(model.parameters()).device
    per = max(1, batch_size // max(top_k, 1))  # contexts per batch
    examples = []
    for b in tqdm(range(0, len(found), per), desc="finding alternatives", disable=not progress, leave=False):
        chunk = found[b:b + per]
        logits = _last_logits(model, [c[3] for c in chunk], pad, device)
        probs = torch.softmax(logits, -1)
        ref_logits = None
        if reference is not None:  # the same forward when the reference is the model itself (round 1)
            ref = logits if reference is model else _last_logits(reference, [c[3] for c in chunk], pad, device)
            ref_logits = ref.half().cpu().numpy()
        rows = []
        for i, (g, _, ti, _) in enumerate(chunk):
            rejected = g.gen_ids[ti]
            top = torch.topk(probs[i], min(top_k + 1, probs.shape[-1])).indices.tolist()
            rows += [(i, int(t)) for t in top if t != rejected and probs[i, t] >= min_prob and t not in special]
        ok = {}
        if rows:
            ids2, mask2 = pad_rows([chunk[i][3] + [c] for i, c in rows], pad, side="left")
            with torch.inference_mode():
                out = model.generate(ids2.to(device), attention_mask=mask2.to(device), max_new_tokens=lookahead,
                                     do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad)
            for (i, c), cont in zip(rows, out[:, ids2.shape[1]:].tolist()):
                g, _, _, context = chunk[i]
                gen = context[len(g.prompt_ids):]
                before = len(tok.decode(gen, skip_special_tokens=True))
                text = tok.decode(gen + [c] + cont, skip_special_tokens=True)
                if not any(m.end > before for m in find(text, rules)):
                    ok[(i, c)] = [t for t in cont if t != pad]
        for i, (g, phrase, ti, context) in enumerate(chunk):
            chosen = [c for j, c in rows if j == i and (j, c) in ok][:max_chosen]
            examples.append(PreferenceExample(
                context, int(g.gen_ids[ti]), chosen, phrase, float(probs[i, g.gen_ids[ti]]), g.prompt_index,
                [chosen[0]] + ok[(i, chosen[0])] if chosen else [], g.gen_ids[ti:ti + lookahead + 1],
                None if ref_logits is None else ref_logits[i]))
    return examples


def build_retain(reference, tok, gens, *, per_gen: int = 0, top: int = 64, rng: random.Random | None = None,
                 progress: bool = True, batch_size: int = 8) -> list[RetainExample]:
    """The retain set: every generated position of each (clean) generation, or `per_gen` random ones
    when per_gen > 0, with the reference's top-`top` log-probs there (int32 ids, float16 log-probs)."""
    rng = rng or random.Random(0)
    todo = []
    for g in gens:
        ids = g.prompt_ids + g.gen_ids
        pos = list(range(max(1, len(g.prompt_ids)), len(ids)))
        if per_gen > 0:
            pos = sorted(rng.sample(pos, min(per_gen, len(pos))))
        if pos:
            todo.append((ids, pos, g.prompt_index, max(1, len(g.prompt_ids))))
    return reference_top(reference, tok, todo, top=top, batch_size=batch_size, progress=progress)


def reference_top(reference, tok, todo, *, top: int = 64, batch_size: int = 8, progress: bool = True,
                  desc: str = "retain set") -> list[RetainExample]:
    """RetainExamples for (ids, positions, prompt index, start) tuples, with the reference's top-`top`
    log-probs at each position (int32 ids, float16 log-probs)."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    from cull.finetune.steps import check_kept

    out = []
    device = next(reference.parameters()).device
    for b in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = todo[b:b + batch_size]
        ids, mask = pad_rows([c[0] for c in chunk], pad_id(tok))
        keep = sorted({p - 1 for c in chunk for p in c[1]})  # only the logits needed (the output layer is costly)
        where = {k: j for j, k in enumerate(keep)}
        with torch.inference_mode():
            logits = check_kept(reference(ids.to(device), attention_mask=mask.to(device),
                                          logits_to_keep=torch.tensor(keep, device=device)).logits, keep)
        for i, (seq, positions, pi, start) in enumerate(chunk):
            sel = torch.log_softmax(logits[i, torch.tensor([where[p - 1] for p in positions], device=device)].float(), -1)
            vals, idx = torch.topk(sel, min(top, sel.shape[-1]), dim=-1)
            out.append(RetainExample(seq, positions, idx.int().cpu().numpy(), vals.half().cpu().numpy(), pi, start=start))
    return out
