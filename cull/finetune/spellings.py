"""Spelling contexts: each phrase's multi-token spellings, placed in the base model's own text.

The retain objective teaches the tuned model what cull's processor would ban wherever the retain
samples give it the chance (`cull.finetune.banned`), and the phrase rows remove the tokens that are
banned in every context (`cull.finetune.phrase_rows`). Neither reaches a spelling that takes two or
more tokens, such as " Travel"+"er", " shimmer"+"ing" or " Wh"+"is"+"pers": the processor bans its
last token only after the others, and those prefixes are rare in the retain samples. When the
single-token spelling loses its mass, the model can drift to these. On SmolLM2 most of the held-out
hits left after the distilled fine-tune were such spellings (docs/finetune.md).

So for every multi-token spelling of each banned phrase (as written, lower case and capitalised
when the phrase set ignores case; after a space and at the start of a line), a few retain samples
are cut at a word start and the spelling's tokens are appended. The positions after its first token
join the retain objective: the target is the base's distribution there with the processor's bans
removed, which is what the processor itself would leave.
"""
from __future__ import annotations

import random

from cull.finetune.records import RetainExample
from cull.rules.rule import BAN


def spelling_forms(phrase: str, ignore_case: bool) -> list[str]:
    """The letter-case forms of a phrase worth training: as written, and with ignore_case its lower,
    capitalised and title forms."""
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


def multi_token_spellings(rules, tok) -> list[tuple[list[int], bool]]:
    """(token ids, at line start) of every spelling of the banned literal phrases that takes two or
    more tokens: after a space (" Traveler") and at the start of a line ("Traveler")."""
    ignore_case = rules.options.ignore_case
    out, seen = [], set()
    for rule in rules:
        if rule.action != BAN or rule.regex is not None or rule.leading_wildcard or not rule.phrase.strip():
            continue
        for form in spelling_forms(rule.phrase.strip(), ignore_case):
            for line_start in (False, True):
                ids = _tail_ids(tok, "a\n" if line_start else "a", form if line_start else " " + form)
                if ids and len(ids) >= 2 and tuple(ids) not in seen:
                    seen.add(tuple(ids))
                    out.append((ids, line_start))
    return out


def _word_starts(tok, ids: list[int], lo: int, hi: int) -> list[int]:
    """Indices p in [lo, hi) whose token starts a new word (its text begins with a space)."""
    from cull.finetune.data import char_ends

    window = ids[lo - 1:min(hi, len(ids))]  # one token before lo, so the first candidate's space shows
    ends = char_ends(tok, window)
    text = tok.decode(window, skip_special_tokens=True)
    return [lo - 1 + k for k in range(1, len(window)) if ends[k - 1] < len(text) and text[ends[k - 1]] == " "]


def spelling_hosts(tok, spellings, hosts: list[RetainExample], *, per_spelling: int = 4, max_left: int = 32,
                   seed: int = 0) -> list[tuple[list[int], list[int], int, int]]:
    """(ids, positions, prompt index, start) for `per_spelling` random hosts per spelling: the host's
    reply cut at a word start at most `max_left` tokens in, then the spelling (a line-start spelling
    after a blank line, or as the reply's first words). Positions: the spelling's tokens after its
    first."""
    rng = random.Random(seed)
    newline = _tail_ids(tok, "a", "\n\n") or []
    usable = [h for h in hosts if h.ids and (h.start or (h.positions[0] if h.positions else 0)) < len(h.ids)]
    out = []
    if not usable:
        return out
    for ids, line_start in spellings:
        for host in rng.sample(usable, min(per_spelling, len(usable))):
            start = host.start if host.start is not None else host.positions[0]
            cuts = _word_starts(tok, host.ids, start + 1, start + max_left)
            if line_start and (not cuts or rng.random() < 0.5):
                left = host.ids[:start]  # the reply starts with it
            elif cuts:
                cut = rng.choice(cuts)
                left = host.ids[:cut] + (newline if line_start else [])
            else:
                continue
            seq = left + ids
            out.append((seq, list(range(len(left) + 1, len(seq))), host.prompt_index, start))
    return out


def spelling_contexts(reference, tok, rules, hosts: list[RetainExample], *, per_spelling: int = 4,
                      max_left: int = 32, seed: int = 0, top: int = 64, batch_size: int = 16,
                      progress: bool = False) -> list[RetainExample]:
    """Retain examples for the multi-token spellings of `rules`, built on `hosts` (retain samples),
    with the reference's top-`top` log-probs at their positions. Attach the processor's banned sets
    afterwards (`cull.finetune.banned.attach_banned`)."""
    from cull.finetune.examples import reference_top

    todo = spelling_hosts(tok, multi_token_spellings(rules, tok), hosts, per_spelling=per_spelling,
                          max_left=max_left, seed=seed)
    return reference_top(reference, tok, todo, top=top, batch_size=batch_size, progress=progress,
                         desc="spelling contexts")
