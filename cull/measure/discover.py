"""`cull discover`: find the phrases a model over-uses, from its own samples.

Sample the model on writing prompts with no processor, then count:

* **known slop** — every candidate phrase (antislop's 2,500 phrases and 2,000 words when the data
  folder has them, else cull's built-in list, or `--candidates FILE`) that the samples contain,
  by `cull.find`'s semantics;
* **tics** — word 2- to 4-grams that recur across many different generations (a phrase a model
  writes once per story, in most stories, is a tic even if nobody listed it).

The output is a phrase file ready for `--phrases` (`cull finetune`, `cull eval`, `cull generate`).
"""
from __future__ import annotations

import json
from collections import Counter

from cull.resources import PACKAGE_DATA, data_dir
from cull.errors import CullError
from cull.rules import PhraseSet

STOP = set("the a an and or of to in on at for with was is it he she they i you we his her their my your "
           "that this as by from be had have has were are but not so".split())


def candidate_rules(path=None) -> PhraseSet:
    """The candidate list: a given file, else antislop's phrase and word lists, else cull's built-in list."""
    if path:
        return PhraseSet.load(path, action="ban", allow_symbols=True)
    data = data_dir()
    rules = []
    for name in ("slop_phrases_2025-04-07.json", "slop_words_2025-04-07.json"):
        f = data / "phrases" / "antislop" / name
        if f.is_file():
            for item in json.loads(f.read_text()):
                try:
                    rules.extend(PhraseSet([item[0] if isinstance(item, list) else item]))
                except CullError:
                    pass  # a candidate cull cannot express is skipped, not fatal
    if rules:
        return PhraseSet(rules)
    return PhraseSet.load(PACKAGE_DATA / "slop_phrases.txt")


def count_candidates(texts: list[str], candidates: PhraseSet) -> Counter:
    from cull.measure.scan import prefiltered

    match = prefiltered()
    counts = Counter()
    for t in texts:
        counts.update(m.rule.text for m in match(t, candidates))
    return counts


def recurring_ngrams(texts: list[str], ns=(2, 3, 4), min_docs: int = 3) -> list[tuple[str, int]]:
    """Word n-grams found in at least `min_docs` different texts, most widespread first; n-grams made
    only of function words, and those inside a longer reported n-gram as often, are left out."""
    from cull.measure.text_stats import words

    docs = Counter()
    for t in texts:
        w = words(t)
        grams = {" ".join(w[i:i + n]) for n in ns for i in range(len(w) - n + 1)}
        docs.update(g for g in grams if not all(x in STOP for x in g.split()))
    found = sorted(((g, c) for g, c in docs.items() if c >= min_docs), key=lambda gc: (-gc[1], -gc[0].count(" "), gc[0]))
    keep = []
    for g, c in found:
        if any(f" {g} " in f" {k} " and c <= kc for k, kc in keep):
            continue
        keep.append((g, c))
    return keep


def discover(texts: list[str], candidates: PhraseSet, *, top: int = 30, min_count: int = 2) -> dict:
    counts = count_candidates(texts, candidates)
    known = [(p, c) for p, c in counts.most_common() if c >= min_count][:top]
    return {"generations": len(texts), "known": [{"phrase": p, "count": c} for p, c in known],
            "tics": [{"ngram": g, "generations": c} for g, c in recurring_ngrams(texts)[:top]]}


def newly_overused(texts: list[str], base_texts: list[str], candidates: PhraseSet, *, min_count: int = 3,
                   ratio: float = 2.0) -> list[str]:
    """Known-slop candidates a tuned model writes at least `min_count` times and more than `ratio`
    times as often as the base did on the same prompts (add-one smoothed): the substitutes that
    take over once the listed phrases are gone. Most over-used first."""
    tuned, base = count_candidates(texts, candidates), count_candidates(base_texts, candidates)
    scale = max(len(base_texts), 1) / max(len(texts), 1)
    rows = [(p, c) for p, c in tuned.items() if c >= min_count and (c * scale + 1) / (base.get(p, 0) + 1) > ratio]
    return [p for p, _ in sorted(rows, key=lambda pc: (-pc[1], pc[0]))]
