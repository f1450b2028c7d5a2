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

from cull.errors import CullError
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
MAX_PROMPTS = len(TEMPLATES) - 1  # one template per phrase is kept back for validation


def nameable(rules) -> list[str]:
    """The phrases a prompt can name: the banned literal ones (not regexes, not wildcard fragments such
    as "delv" of "delv*"), each once (up to letter case when the list ignores it)."""
    seen, out = set(), []
    for r in rules:
        phrase = r.phrase.strip()
        if r.action != BAN or r.regex is not None or r.leading_wildcard or r.trailing_wildcard or not phrase:
            continue
        key = phrase.casefold() if rules.options.ignore_case else phrase
        if key not in seen:
            seen.add(key)
            out.append(phrase)
    return out


def mention_prompts(rules, per_phrase: int, seed: int) -> tuple[list[str], list[str]]:
    """(training prompts, validation prompts): `per_phrase` templates per phrase for training and one
    more, different, for validation, each with a random letter-case form of the phrase."""
    rng = random.Random(seed)
    train, val = [], []
    k = min(per_phrase, MAX_PROMPTS)
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


def add_mention_contexts(reference, tok, rules, data, cfg, vocab_size: int, *, acc, path, named=None,
                         validation: bool = True, progress: bool = False, say=print) -> None:
    """Append mention contexts to `data.mentions` and (with `validation`) `data.val_mentions`: replies to
    prompts that name the phrases of `named` (default: all of `rules`), sampled with every rule of
    `rules` banned, so that no reply holds text the processor would not let through. Sampled once, on
    the main process, and saved to `path` (a FinetuneData file) with the settings they depend on, so
    that every process trains on the same replies and a later run with the same settings (`--resume`)
    reads them back. At least `MIN_VALIDATION` validation replies are sampled; the caller attaches the
    banned sets and keeps those `with_events`, so fewer may remain."""
    from cull.decode.processor import CullLogitsProcessor

    train, val = mention_prompts(named if named is not None else rules, cfg.mention_prompts, cfg.seed)
    if not train:
        return
    key = {"rules": [r.text for r in rules], "options": repr(rules.options), "prompts": train + val,
           "validation": validation, "sampling": [cfg.seed, cfg.temperature, cfg.max_new_tokens, cfg.chat]}
    saved = _saved(path, key) if acc.is_main_process else None
    if acc.is_main_process and saved is None:
        proc = CullLogitsProcessor(rules, tok, vocab_size=vocab_size)
        top = top_width(data)
        replies = mention_contexts(reference, tok, rules, train, proc, cfg, top=top, seed=cfg.seed + 5,
                                   progress=progress)
        held = mention_contexts(reference, tok, rules, val, proc, cfg, top=top, seed=cfg.seed + 6,
                                n_samples=-(-MIN_VALIDATION // max(1, len(val))), progress=progress,
                                desc="validation replies to prompts that name them") if validation else []
        saved = _save(path, replies, held, key)
    elif acc.is_main_process:
        say(f"Mention contexts: read back from {path} (sampled with the same settings)")
    acc.wait_for_everyone()
    saved = saved or _saved(path, key)  # the other processes read what the main one wrote
    if saved is None:
        raise CullError(f"could not read the mention contexts in {path}; delete it and run again")
    data.mentions += saved.retain
    data.val_mentions += saved.val_retain
    # validation reads a prefix: mix the phrases (and a later round's) into it
    random.Random(cfg.seed).shuffle(data.val_mentions)


def _save(path, replies, held, key):
    """Save and return the contexts. FinetuneData writes the arrays first and the settings last, so a
    file cut short by a crash never matches a key."""
    from cull.finetune.records import FinetuneData

    path.unlink(missing_ok=True)
    saved = FinetuneData([], replies, {"key": key}, val_retain=held)
    saved.save(path)
    return saved


def _saved(path, key):
    """The FinetuneData saved at `path` when it was sampled with `key`, else None (absent, cut short,
    or made with other settings)."""
    from cull.finetune.records import FinetuneData

    if not path.is_file() or not path.with_suffix(".npz").is_file():
        return None
    try:
        saved = FinetuneData.load(path)
    except (OSError, ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
        return None
    if saved.stats.get("key") != key or any(len(r.top_ids) != len(r.positions) for r in saved.retain + saved.val_retain):
        return None
    return saved
