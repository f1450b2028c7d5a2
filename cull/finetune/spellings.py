"""Spelling contexts: each phrase's multi-token spellings, placed in the base model's own text.

The retain objective teaches the tuned model what cull's processor would ban wherever the retain
samples give it the chance (`cull.finetune.banned`), and the phrase rows remove the tokens that are
banned in every context (`cull.finetune.phrase_rows`). Neither reaches a spelling that takes two or
more tokens, such as " Travel"+"er", " shimmer"+"ing" or " Wh"+"is"+"pers": the processor bans its
last token only after the others, and those prefixes are rare in the retain samples. When the
single-token spelling loses its mass, the model can drift to these (docs/finetune.md).

So for every multi-token spelling of each banned phrase (as written, lower case, capitalised and
title case when the phrase set ignores case; after a space and at the start of a line), a few
retain samples are cut at a word start and the spelling's tokens are appended. The appended
positions join the retain objective: the target is the base's distribution there with the processor's bans
removed, which is what the processor itself would leave. Contexts the processor could never have
produced (an earlier token of the spelling is itself banned) are dropped (`reachable`).
"""
from __future__ import annotations

import random
from typing import NamedTuple

from cull.finetune.records import RetainExample
from cull.rules.rule import BAN


class Spelling(NamedTuple):
    ids: list  # the spelling's tokens in running text (after a space, or after a line break)
    line_start: bool
    after_blank_line: list | None  # line starts: the tokens of a blank line and the spelling, as one text


def spelling_forms(phrase: str, ignore_case: bool) -> list[str]:
    """The letter-case forms of a phrase worth training: as written, and with ignore_case its lower
    case, capitalised and title-case forms."""
    forms = [phrase]
    if ignore_case:
        forms += [phrase.lower(), phrase[:1].upper() + phrase[1:].lower(), phrase.title()]
    return list(dict.fromkeys(f for f in forms if f))


def _tail_ids(tok, carrier: str, text: str) -> list[int] | None:
    """The ids `text` gets after `carrier` (so a word after a space or a line break is tokenized as it
    is in running text, whatever the tokenizer does at the start of a string); None when the carrier's
    own tokens change."""
    head = tok.encode(carrier, add_special_tokens=False)
    ids = tok.encode(carrier + text, add_special_tokens=False)
    return ids[len(head):] if ids[:len(head)] == head else None


def multi_token_spellings(rules, tok) -> list[Spelling]:
    """Every spelling of the banned literal phrases that takes two or more tokens: after a space
    (" Traveler") and at the start of a line ("Traveler"). A leading wildcard ("*ness", or every rule
    of a set with whole_words=False) still matches the phrase as a word of its own, so it counts."""
    ignore_case = rules.options.ignore_case
    out, seen = [], set()
    for rule in rules:
        if rule.action != BAN or rule.regex is not None or not rule.phrase.strip():
            continue
        for form in spelling_forms(rule.phrase.strip(), ignore_case):
            for line_start in (False, True):
                ids = _tail_ids(tok, "a\n" if line_start else "a", form if line_start else " " + form)
                if ids and len(ids) >= 2 and tuple(ids) not in seen:
                    seen.add(tuple(ids))
                    blank = _tail_ids(tok, "a", "\n\n" + form) if line_start else None
                    out.append(Spelling(ids, line_start, blank))
    return out


def _word_starts(tok, ids: list[int], lo: int, hi: int) -> list[int]:
    """Indices p in [lo, hi) whose token starts a new word (its text begins with a space)."""
    from cull.finetune.data import char_ends

    window = ids[lo - 1:min(hi, len(ids))]  # one token before lo, so the first candidate's space shows
    ends = char_ends(tok, window)
    text = tok.decode(window, skip_special_tokens=True)
    return [lo - 1 + k for k in range(1, len(window)) if ends[k - 1] < len(text) and text[ends[k - 1]] == " "]


def _reply_start(host: RetainExample) -> int | None:
    if host.start is not None:
        return host.start
    return host.positions[0] if host.positions else None


def spelling_hosts(tok, spellings: list[Spelling], hosts: list[RetainExample], *, per_spelling: int = 4,
                   max_left: int = 32, seed: int = 0) -> list[tuple[list[int], list[int], int, int]]:
    """(ids, positions, prompt index, start) for `per_spelling` random hosts per spelling: the host's
    reply cut at a word start at most `max_left` tokens in, then the spelling (a line-start spelling
    after a blank line, or as the reply's first words). Positions: every appended token."""
    rng = random.Random(seed)
    usable = [h for h in hosts if h.ids and _reply_start(h) is not None and _reply_start(h) < len(h.ids)]
    out, word_starts = [], {}  # a host serves many spellings: decode its word starts once
    if not usable:
        return out
    for sp in spellings:
        for host in rng.sample(usable, min(per_spelling, len(usable))):
            start = _reply_start(host)
            if id(host) not in word_starts:
                word_starts[id(host)] = _word_starts(tok, host.ids, start + 1, start + max_left)
            cuts = word_starts[id(host)]
            if sp.line_start and (not cuts or not sp.after_blank_line or rng.random() < 0.5):
                left, tail = host.ids[:start], sp.ids  # the reply starts with it
            elif cuts:
                left = host.ids[:rng.choice(cuts)]
                tail = sp.after_blank_line if sp.line_start else sp.ids
            else:
                continue
            seq = left + tail
            out.append((seq, list(range(len(left), len(seq))), host.prompt_index, start))
    return out


def reachable(examples: list[RetainExample]) -> list[RetainExample]:
    """The contexts (with banned sets attached) that the processor could have let through up to their
    last token and bans there: no earlier appended token is banned at its place (with "testament"
    and "a testament to" both listed, " a testament" is never written, so " to" after it teaches
    nothing real), and the last one completes a phrase."""
    return [r for r in examples if r.banned and r.ids[r.positions[-1]] in r.banned[-1]
            and all(r.ids[p] not in b for p, b in zip(r.positions[:-1], r.banned[:-1]))]


def spelling_contexts(reference, tok, rules, hosts: list[RetainExample], *, per_spelling: int = 4,
                      max_left: int = 32, seed: int = 0, top: int = 64, batch_size: int = 16,
                      progress: bool = False) -> list[RetainExample]:
    """Retain examples for the multi-token spellings of `rules`, built on `hosts` (retain samples),
    with the reference's top-`top` log-probs at their positions. Attach the processor's banned sets
    afterwards (`cull.finetune.banned.attach_banned`) and keep the `reachable` ones."""
    from cull.finetune.examples import reference_top

    todo = spelling_hosts(tok, multi_token_spellings(rules, tok), hosts, per_spelling=per_spelling,
                          max_left=max_left, seed=seed)
    return reference_top(reference, tok, todo, top=top, batch_size=batch_size, progress=progress,
                         desc="spelling contexts")


def validation_contexts(reference, tok, rules, data, *, seed: int, batch_size: int = 16,
                        progress: bool = False) -> list[RetainExample]:
    """One spelling context per spelling for the validation figure, on the data's validation samples
    (or, with no validation split, on its training samples), with the retain set's top-K width."""
    return spelling_contexts(reference, tok, rules, data.val_retain or data.retain, per_spelling=1, seed=seed,
                             top=top_width(data), batch_size=batch_size, progress=progress)


def top_width(data) -> int:
    import numpy as np

    return np.asarray(data.retain[0].top_ids).shape[-1] if data.retain else 64  # stacks with the retain set's K


def add_spelling_contexts(reference, tok, rules, data, cfg, progress: bool = False) -> None:
    """Append the spelling contexts of `rules` to `data` (a FinetuneData): `cfg.spelling_contexts`
    per spelling on its training samples, and the `validation_contexts` (seed + 1) in a seeded random
    order (the checks read at most 512). Their banned sets come afterwards (the caller attaches them
    and keeps the `reachable` ones)."""
    train = spelling_contexts(reference, tok, rules, data.retain, per_spelling=cfg.spelling_contexts, seed=cfg.seed,
                              top=top_width(data), batch_size=cfg.gen_batch_size, progress=progress)
    val = validation_contexts(reference, tok, rules, data, seed=cfg.seed + 1, batch_size=cfg.gen_batch_size,
                              progress=progress)
    random.Random(cfg.seed).shuffle(val)
    data.spelling += train
    data.val_spelling += val
