"""Mention contexts: replies to prompts that name a banned phrase, sampled with cull's processor on.

A prompt that names a phrase ("Write a dialogue between a shopkeeper and a time traveler") invites
the model to copy it into the reply, often many times ("Time Traveler: ..."). Copying from the
prompt is a mechanism of its own (attention to the prompt, not the word's prior), and a training
set whose prompts never name a banned phrase gives the fine-tune no such context: the phrase rows
and the retain objective lower the word where the model comes up with it, not where it repeats it.

So for each banned literal phrase, a few prompts built from fixed templates (one per kind of
writing in cull's training prompts: story, letter, description, dialogue) name it, the base
answers them with the processor on, and every position of those replies joins the retain objective
as the spelling contexts do: the target is the base as the processor leaves it, with the banned
mass pushed down. Only replies where the processor had to step in (the base gave the banned tokens
at least `EVENT_MASS` somewhere) are kept. A template no training prompt of that phrase uses gives
the validation figure, `mention_mass`: the tuned model's banned probability where the base's was at
least `EVENT_MASS`.
"""
from __future__ import annotations

import random

from cull.finetune.banned import EVENT_MASS, base_banned_mass
from cull.finetune.spellings import spelling_forms, top_width
from cull.rules.rule import BAN

TEMPLATES = (
    "Write a short story about {phrase}.",
    'Write a letter to a friend that mentions "{phrase}".',
    "Describe {phrase} in a few sentences.",
    'Write a dialogue between two characters who talk about "{phrase}".',
)
MIN_VALIDATION = 16  # validation replies, however short the list


def nameable(rules) -> list[str]:
    """The phrases a prompt can name: the banned literal ones (not regexes)."""
    return [r.phrase.strip() for r in rules if r.action == BAN and r.regex is None and r.phrase.strip()]


def mention_prompts(rules, per_phrase: int, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, validation prompts): `per_phrase` templates per phrase for training and one
    more, different, for validation, each with a random letter-case form of the phrase."""
    rng = random.Random(seed)
    train, val = [], []
    k = min(per_phrase, len(TEMPLATES) - 1)
    for phrase in nameable(rules):
        forms = spelling_forms(phrase, rules.options.ignore_case)
        order = rng.sample(range(len(TEMPLATES)), len(TEMPLATES))
        train += [TEMPLATES[t].format(phrase=rng.choice(forms)) for t in order[:k]]
        val.append(TEMPLATES[order[k]].format(phrase=rng.choice(forms)))
    return train, val


def with_events(examples) -> list:
    """The examples (banned sets attached) where the processor had to step in at least once."""
    return [r for r in examples if r.banned and max(base_banned_mass(r)) >= EVENT_MASS]


def mention_contexts(reference, tok, rules, prompts: list[str], processor, cfg, *, top: int, seed: int,
                     n_samples: int = 1, progress: bool = False,
                     desc: str = "replies to prompts that name the phrases") -> list:
    """Retain examples: `n_samples` replies of `reference` per prompt, sampled with `processor` on, with the
    reference's top-`top` log-probs at every generated position. Attach the banned sets afterwards
    and keep those `with_events`."""
    from cull.finetune.examples import build_retain
    from cull.measure.evaluate import generate

    if not prompts:
        return []
    gens = generate(reference, tok, prompts, n_samples=n_samples, temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens, seed=seed, batch_size=cfg.gen_batch_size, chat=cfg.chat,
                    processor=processor, progress=progress, desc=desc)
    return build_retain(reference, tok, [g for g in gens if g.gen_ids], top=top, progress=progress,
                        batch_size=max(1, cfg.gen_batch_size // 2))


def add_mention_contexts(reference, tok, rules, data, cfg, vocab_size: int, progress: bool = False) -> None:
    """Append the mention contexts of `rules` to `data.mentions` and `data.val_mentions` (at least
    `MIN_VALIDATION` replies; banned sets come afterwards, and the caller keeps those `with_events`)."""
    from cull.decode.processor import CullLogitsProcessor

    train, val = mention_prompts(rules, cfg.mention_prompts, cfg.seed)
    proc = CullLogitsProcessor(rules, tok, vocab_size=vocab_size)
    top = top_width(data)
    data.mentions += mention_contexts(reference, tok, rules, train, proc, cfg, top=top, seed=cfg.seed + 5,
                                      progress=progress)
    data.val_mentions += mention_contexts(reference, tok, rules, val, proc, cfg, top=top, seed=cfg.seed + 6,
                                          n_samples=-(-MIN_VALIDATION // max(1, len(val))), progress=progress,
                                          desc="validation replies to prompts that name them")
