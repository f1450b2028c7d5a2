"""On-policy training data for `cull finetune`, built from the model's own samples and the matcher.

1. Sample the model on the training prompts with the processor off.
2. Find every hit with `cull.find`.
3. Pick the **decision point** of each hit: the first token of the match that tells the phrase apart,
   not a generic word piece. It is the first token that (a) completes a word of the phrase that is
   not a function word and (b) after which the sample's own continuation through the end of the
   match had probability >= `commit_prob` under the model, or else the match's last token. So
   " un"+"forgiving" rejects "forgiving", not " un"; "a testament to" rejects " testament", not " a".
4. The context is everything before that token, "rejected" is that token, "chosen" is the model's
   own top-k alternatives there that start no banned phrase (checked by decoding context +
   alternative + a short greedy continuation and running the matcher on it). The reference model's
   full logits at the context are kept for the tether.
5. Keep at most `max_per_pair` examples per (phrase, rejected token), and never the same context twice.
6. A retain set: every generated position of the hit-free samples (or, with the retain target
   "processor", of samples drawn with cull's processor on), with the reference's top-K
   log-probabilities there (dense retain).
7. A validation split: the examples and clean samples of a held-out share of the prompts.

Stored as `data.json` (token ids, statistics) plus `data.npz` (the reference's logits and top-K
tables; numpy, no pickle).
"""
from __future__ import annotations

import bisect
import random
import re
from collections import Counter

from cull.errors import CullError
from cull.finetune.records import FinetuneData, PreferenceExample, RetainExample  # noqa: F401
from cull.measure.evaluate import Generation, generate
from cull.rules.find import find
from cull.rules import PhraseSet

# function words: a decision point never rests on one of these alone
FUNCTION_WORDS = set("the a an and or of to in on at for with was is it he she they i you we his her their my your "
                     "that this as by from be had have has were are but not so its our".split())
_WORD = re.compile(r"[\w']+")


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


def _char_ends_consistent(tok, gen: Generation) -> list[int] | None:
    ends = char_ends(tok, gen.gen_ids)
    return ends if not ends or ends[-1] == len(gen.text) else None


def hits_in(gen: Generation, tok, rules: PhraseSet) -> list[tuple[str, int]]:
    """(phrase, index into gen.gen_ids of the token that wrote the match's first character)."""
    return [(phrase, first) for phrase, first, _, _ in match_spans(gen, tok, rules)]


def match_spans(gen: Generation, tok, rules: PhraseSet) -> list[tuple[str, int, int, object]]:
    """(phrase, first token index, last token index, match) of every hit in a generation."""
    ms = find(gen.text, rules)
    if not ms:
        return []
    ends = _char_ends_consistent(tok, gen)
    out = []
    for m in ms:
        if ends is None:  # incremental decode differs from the whole decode: scan
            first, last = _scan_token(tok, gen.gen_ids, m.start), _scan_token(tok, gen.gen_ids, m.end - 1)
        else:
            first, last = token_at_char(ends, m.start), token_at_char(ends, m.end - 1)
        out.append((m.rule.text, first, last, m))
    return out


def _scan_token(tok, ids, char):
    for i in range(len(ids)):
        if len(tok.decode(ids[:i + 1], skip_special_tokens=True)) > char:
            return i
    return len(ids) - 1


def decision_token(gen: Generation, tok, first: int, last: int, match, token_logp=None,
                   commit_prob: float = 0.5) -> int:
    """The token of a match to reject: see the module docstring (step 3). `token_logp[i]` is the
    model's log-probability of gen.gen_ids[i] in the sample (None: rule (b) is not checked)."""
    import math

    ends = _char_ends_consistent(tok, gen)
    if ends is None:
        return first
    text = gen.text
    for j in range(first, last + 1):
        end = ends[j]
        if j == last or end >= match.end:
            return j
        span = text[match.start:end]
        words_done = _WORD.findall(span)
        if words_done and end < len(text) and (text[end].isalnum() or text[end] in "_'"):
            words_done = words_done[:-1]  # the last word goes on in the next token
        if not any(w.lower() not in FUNCTION_WORDS for w in words_done):
            continue
        if token_logp is None or sum(token_logp[j + 1:last + 1]) >= math.log(commit_prob):
            return j
    return last


def split_prompts(n_prompts: int, val_fraction: float, seed: int) -> set[int]:
    """The prompt indices held out for validation (none when there are fewer than 4 prompts)."""
    if n_prompts < 4 or val_fraction <= 0:
        return set()
    k = max(1, round(n_prompts * val_fraction))
    return set(random.Random(seed + 17).sample(range(n_prompts), k))


def build_data(model, tok, rules: PhraseSet, prompts: list[str], *, n_samples: int = 4, temperature: float = 0.8,
               max_new_tokens: int = 128, seed: int = 0, top_k: int = 8, min_prob: float = 0.01,
               max_chosen: int = 4, max_per_pair: int = 8, lookahead: int = 6, retain_per_gen: int = 0,
               retain_top: int = 64, batch_size: int = 16, chat: bool | None = None, progress: bool = True,
               gens: list[Generation] | None = None, max_examples: int | None = None, reference=None,
               commit_prob: float = 0.5, val_fraction: float = 0.15, keep_tether: bool = True,
               with_retain: bool = True, retain_processor=None) -> FinetuneData:
    """Sample `model` and turn its hits into preference examples and its clean text into a retain
    set (see the module docstring). `reference` (default: `model`) gives the tether logits and the
    retain distributions: later rounds sample the tuned model but stay tied to the original base.
    `retain_per_gen` > 0 keeps that many random positions per clean sample instead of all of them;
    `with_retain=False` builds no retain set (later rounds keep the first one). With
    `retain_processor` (cull's processor for `rules`), the retain set is a second batch of samples of
    the reference with that processor on, instead of the hit-free samples: every context where the
    processor had to step in is then in it (`cull.finetune.banned`). Raises a CullError when there
    are no hits."""
    from cull.finetune.examples import build_retain, find_chosen, sample_token_logp

    reference = model if reference is None else reference
    if gens is None:
        gens = generate(model, tok, prompts, n_samples=n_samples, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, chat=chat,
                        progress=progress, desc="sampling")
    rng = random.Random(seed)
    spans = {id(g): match_spans(g, tok, rules) for g in gens}
    hit_gens = [g for g in gens if spans[id(g)]]
    logps = sample_token_logp(model, tok, hit_gens, batch_size=batch_size, progress=progress)
    found, per_pair, seen, hit_counts = [], Counter(), set(), Counter()
    moved = 0
    for g in hit_gens:
        for phrase, first, last, m in spans[id(g)]:
            hit_counts[phrase] += 1
            ti = decision_token(g, tok, first, last, m, logps[id(g)], commit_prob)
            moved += ti != first
            context = g.prompt_ids + g.gen_ids[:ti]
            key = (phrase, g.gen_ids[ti])
            if tuple(context) in seen or per_pair[key] >= max_per_pair:
                continue
            seen.add(tuple(context))
            per_pair[key] += 1
            found.append((g, phrase, ti, context))
    if not found:
        raise CullError(
            f"none of the {len(rules)} phrases appeared in {len(gens)} samples of the model "
            f"({sum(len(g.gen_ids) for g in gens)} tokens), so there is nothing to train away. Use prompts "
            "that elicit them (e.g. the kind of writing where the model says them), more samples "
            "(--n-samples), longer generations (--max-new-tokens), or check the list with `cull eval`")
    if max_examples and len(found) > max_examples:  # keep every phrase, then fill up at random
        rng.shuffle(found)
        first_of = {}
        for f in found:
            first_of.setdefault(f[1], f)
        rest = [f for f in found if first_of[f[1]] is not f]
        found = list(first_of.values()) + rest[:max(0, max_examples - len(first_of))]
    examples = find_chosen(model, tok, rules, found, top_k=top_k, min_prob=min_prob, max_chosen=max_chosen,
                           lookahead=lookahead, batch_size=batch_size * 2, progress=progress,
                           reference=reference if keep_tether else None)
    if not with_retain:
        clean = []
    elif retain_processor is not None:
        clean = [g for g in generate(reference, tok, prompts, n_samples=n_samples, temperature=temperature,
                                     max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, chat=chat,
                                     processor=retain_processor, progress=progress,
                                     desc="sampling with the processor on") if g.gen_ids]
    else:
        clean = [g for g in gens if not spans[id(g)] and g.gen_ids]
    retain = build_retain(reference, tok, clean, per_gen=retain_per_gen, top=retain_top, rng=rng, progress=progress,
                          batch_size=max(1, batch_size // 2))
    val = split_prompts(len(prompts), val_fraction, seed)
    if val and all(e.prompt_index in val for e in examples):  # few prompts: keep every example for training
        val = set()
    stats = {"generations": len(gens), "hits": sum(hit_counts.values()), "hits_per_phrase": dict(hit_counts),
             "examples": len(examples), "examples_with_chosen": sum(1 for e in examples if e.chosen),
             "decision_points_moved": moved,
             "pairs": {f"{p} | {tok.convert_ids_to_tokens(t)}": c for (p, t), c in per_pair.items()},
             "retain_positions": sum(len(r.positions) for r in retain), "val_prompts": sorted(val)}
    negatives = [[g.prompt_ids + g.gen_ids, len(g.prompt_ids)] for g in hit_gens]
    return FinetuneData([e for e in examples if e.prompt_index not in val], [r for r in retain if r.prompt_index not in val],
                        stats, negatives, [e for e in examples if e.prompt_index in val],
                        [r for r in retain if r.prompt_index in val])
