"""On-policy training data for `cull finetune`, built from the model's own samples and the matcher.

1. Sample the base model on the training prompts with the processor off.
2. Find every hit with `cull.find`.
3. Map the hit's first character to the token that wrote it: the context is everything before that
   token, "rejected" is that token, "chosen" is the model's own top-k alternatives there that start no
   banned phrase (checked by decoding context + alternative + a short greedy continuation and
   running the matcher on it).
4. Keep at most `max_per_pair` examples per (phrase, rejected token), and never the same context twice.
5. A retain set: positions of the base samples where no hit starts, with the base model's top-K log-probabilities
   there, for a KL-to-base term that keeps everything else as it was.
"""
from __future__ import annotations

import bisect
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CullError, require
from ..evaluate import Generation, generate
from ..find import find
from ..rules import PhraseSet


@dataclass
class PreferenceExample:
    context: list  # prompt + generated ids before the rejected token
    rejected: int
    chosen: list  # acceptable alternatives, most likely first
    phrase: str
    p_rejected: float = 0.0


@dataclass
class RetainExample:
    ids: list  # prompt + generated ids
    positions: list  # indices i: the distribution predicting ids[i] is kept close to the base
    top_ids: list = field(default_factory=list)  # [len(positions)][K] base model's top-K token ids
    top_logp: list = field(default_factory=list)  # [len(positions)][K] their base log-probs


@dataclass
class FinetuneData:
    preference: list
    retain: list
    stats: dict

    def save(self, path) -> None:
        doc = {"preference": [asdict(e) for e in self.preference], "retain": [asdict(e) for e in self.retain],
               "stats": self.stats}
        Path(path).write_text(json.dumps(doc))

    @classmethod
    def load(cls, path) -> "FinetuneData":
        doc = json.loads(Path(path).read_text())
        return cls([PreferenceExample(**e) for e in doc["preference"]], [RetainExample(**e) for e in doc["retain"]],
                   doc["stats"])


def char_ends(tok, ids: list[int]) -> list[int]:
    """ends[i] = length of the decoded text of ids[:i+1] (the same decode that produced the text)."""
    special = set(getattr(tok, "all_special_ids", []) or [])
    ends, kept = [], []
    for t in ids:
        if t not in special:
            kept.append(t)
        ends.append(len(tok.decode(kept, skip_special_tokens=True)) if kept else 0)
    return ends


def token_at_char(ends: list[int], char: int) -> int:
    """Index of the token that wrote character `char`: the first whose decoded prefix passes it."""
    i = bisect.bisect_right(ends, char)
    if i >= len(ends):
        raise CullError(f"character {char} is past the decoded text ({ends[-1] if ends else 0} characters)")
    return i


def hits_in(gen: Generation, tok, rules: PhraseSet) -> list[tuple[str, int]]:
    """(phrase, index into gen.gen_ids of the token that wrote the match's first character)."""
    ms = find(gen.text, rules)
    if not ms:
        return []
    ends = char_ends(tok, gen.gen_ids)
    if ends and ends[-1] != len(gen.text):  # incremental decode differs from the whole decode
        return [(m.rule.text, _scan_token(tok, gen.gen_ids, m.start)) for m in ms]
    return [(m.rule.text, token_at_char(ends, m.start)) for m in ms]


def _scan_token(tok, ids, char):
    for i in range(len(ids)):
        if len(tok.decode(ids[:i + 1], skip_special_tokens=True)) > char:
            return i
    return len(ids) - 1


def find_chosen(model, tok, rules, found, *, top_k: int = 8, min_prob: float = 0.01, max_chosen: int = 4,
                lookahead: int = 6, batch_size: int = 32, progress: bool = True) -> list[PreferenceExample]:
    """Preference examples for `found` = [(generation, phrase, token index, context)]: the model's top-k
    alternatives at each context, kept when a short greedy continuation after them writes no new
    match. Contexts and candidates are batched (left-padded)."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    from ..evaluate import _left_pad, pad_id

    special = set(getattr(tok, "all_special_ids", []) or [])
    pad = pad_id(tok)
    device = next(model.parameters()).device
    per = max(1, batch_size // max(top_k, 1))  # contexts per batch
    examples = []
    for b in tqdm(range(0, len(found), per), desc="finding alternatives", disable=not progress, leave=False):
        chunk = found[b:b + per]
        ids, mask = _left_pad([c[3] for c in chunk], pad)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            probs = torch.softmax(model(ids.to(device), attention_mask=mask.to(device),
                                        position_ids=pos.to(device)).logits[:, -1].float(), -1)
        rows = []
        for i, (g, _, ti, _) in enumerate(chunk):
            rejected = g.gen_ids[ti]
            top = torch.topk(probs[i], min(top_k + 1, probs.shape[-1])).indices.tolist()
            rows += [(i, int(t)) for t in top if t != rejected and probs[i, t] >= min_prob and t not in special]
        ok = set()
        if rows:
            ids2, mask2 = _left_pad([chunk[i][3] + [c] for i, c in rows], pad)
            with torch.inference_mode():
                out = model.generate(ids2.to(device), attention_mask=mask2.to(device), max_new_tokens=lookahead,
                                     do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad)
            for (i, c), cont in zip(rows, out[:, ids2.shape[1]:].tolist()):
                g, _, _, context = chunk[i]
                gen = context[len(g.prompt_ids):]
                before = len(tok.decode(gen, skip_special_tokens=True))
                text = tok.decode(gen + [c] + cont, skip_special_tokens=True)
                if not any(m.end > before for m in find(text, rules)):
                    ok.add((i, c))
        for i, (g, phrase, ti, context) in enumerate(chunk):
            chosen = [c for j, c in rows if j == i and (j, c) in ok][:max_chosen]
            examples.append(PreferenceExample(context, int(g.gen_ids[ti]), chosen, phrase,
                                              float(probs[i, g.gen_ids[ti]])))
    return examples


def build_data(model, tok, rules: PhraseSet, prompts: list[str], *, n_samples: int = 4, temperature: float = 0.8,
               max_new_tokens: int = 128, seed: int = 0, top_k: int = 8, min_prob: float = 0.01,
               max_chosen: int = 4, max_per_pair: int = 8, lookahead: int = 6, retain_per_gen: int = 8,
               retain_top: int = 64, batch_size: int = 16, chat: bool | None = None, progress: bool = True,
               gens: list[Generation] | None = None, max_examples: int | None = None) -> FinetuneData:
    """Sample the base model and turn its hits into preference examples and its clean text into a
    retain set (see the module docstring). Raises a CullError when there are no hits."""
    if gens is None:
        gens = generate(model, tok, prompts, n_samples=n_samples, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, chat=chat,
                        progress=progress, desc="sampling the base model")
    rng = random.Random(seed)
    found, per_pair, seen = [], Counter(), set()
    hit_counts = Counter()
    for g in gens:
        for phrase, ti in hits_in(g, tok, rules):
            hit_counts[phrase] += 1
            context = g.prompt_ids + g.gen_ids[:ti]
            key = (phrase, g.gen_ids[ti])
            if tuple(context) in seen or per_pair[key] >= max_per_pair:
                continue
            seen.add(tuple(context))
            per_pair[key] += 1
            found.append((g, phrase, ti, context))
    if not found:
        raise CullError(
            f"none of the {len(rules)} phrases appeared in {len(gens)} samples of the base model "
            f"({sum(len(g.gen_ids) for g in gens)} tokens), so there is nothing to train away. Use prompts "
            "that elicit them (e.g. the kind of writing where the model says them), more samples "
            "(--n-samples), longer generations (--max-new-tokens), or check the list with `cull eval`")
    if max_examples and len(found) > max_examples:  # keep every phrase, then fill up at random
        rng.shuffle(found)
        first = {}
        for f in found:
            first.setdefault(f[1], f)
        rest = [f for f in found if first[f[1]] is not f]
        found = list(first.values()) + rest[:max(0, max_examples - len(first))]
    examples = find_chosen(model, tok, rules, found, top_k=top_k, min_prob=min_prob, max_chosen=max_chosen,
                           lookahead=lookahead, batch_size=batch_size * 2, progress=progress)
    retain = build_retain(model, gens, rules, tok, per_gen=retain_per_gen, top=retain_top, rng=rng,
                          progress=progress)
    stats = {"generations": len(gens), "hits": sum(hit_counts.values()), "hits_per_phrase": dict(hit_counts),
             "examples": len(examples), "examples_with_chosen": sum(1 for e in examples if e.chosen),
             "pairs": {f"{p} | {tok.convert_ids_to_tokens(t)}": c for (p, t), c in per_pair.items()},
             "retain_positions": sum(len(r.positions) for r in retain)}
    return FinetuneData(examples, retain, stats)


def build_retain(model, gens: list[Generation], rules, tok, *, per_gen: int, top: int, rng: random.Random,
                 progress: bool = True, batch_size: int = 16) -> list[RetainExample]:
    """Up to `per_gen` random positions per generation, other than those where a hit starts, with
    the base model's top-`top` log-probs there."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    from ..evaluate import _right_pad, pad_id

    todo = []
    for g in gens if per_gen > 0 else []:
        skip = {len(g.prompt_ids) + ti for _, ti in hits_in(g, tok, rules)}
        ids = g.prompt_ids + g.gen_ids
        gen_pos = [p for p in range(len(g.prompt_ids), len(ids)) if p not in skip]
        if gen_pos:
            todo.append((ids, sorted(rng.sample(gen_pos, min(per_gen, len(gen_pos))))))
    out = []
    device = next(model.parameters()).device
    for b in tqdm(range(0, len(todo), batch_size), desc="retain set", disable=not progress, leave=False):
        chunk = todo[b:b + batch_size]
        ids, mask = _right_pad([c[0] for c in chunk], pad_id(tok))
        with torch.inference_mode():
            logits = model(ids.to(device), attention_mask=mask.to(device)).logits
        for i, (seq, positions) in enumerate(chunk):
            sel = torch.log_softmax(logits[i, torch.tensor(positions, device=device) - 1].float(), -1)
            vals, idx = torch.topk(sel, min(top, sel.shape[-1]), dim=-1)
            out.append(RetainExample(seq, positions, idx.tolist(), vals.tolist()))
    return out
