"""Statistics of generated text for `cull eval` and `cull discover`: phrase hits with bootstrap
confidence intervals, distinct-n, and the word n-grams a model writes in excess of a reference."""
from __future__ import annotations

import math
import re
from collections import Counter

from .find import find
from .rules import PhraseSet

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def bootstrap_ci(num, den=None, *, n_boot: int = 2000, seed: int = 0, scale: float = 1.0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of scale*sum(num)/sum(den) (or the mean of num) with a percentile
    bootstrap over items."""
    import numpy as np

    num = np.asarray(num, dtype=float)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=float)
    if num.size == 0:
        return 0.0, 0.0, 0.0
    est = scale * num.sum() / max(den.sum(), 1e-12)
    idx = np.random.default_rng(seed).integers(0, num.size, size=(n_boot, num.size))
    stats = scale * num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
    a = (1 - level) / 2
    return float(est), float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def hit_stats(gens, rules: PhraseSet, seed: int = 0) -> dict:
    """Hits per 1,000 words and per generation (with 95% CIs), and hits per phrase."""
    per_gen, n_words, per_phrase = [], [], Counter({r.text: 0 for r in rules})
    for g in gens:
        ms = find(g.text, rules)
        per_gen.append(len(ms))
        n_words.append(len(g.text.split()))
        per_phrase.update(m.rule.text for m in ms)
    k, lo, hi = bootstrap_ci(per_gen, n_words, scale=1000.0, seed=seed)
    g, glo, ghi = bootstrap_ci(per_gen, seed=seed)
    with_hit = sum(1 for h in per_gen if h)
    return {"generations": len(gens), "words": int(sum(n_words)), "hits": int(sum(per_gen)),
            "hits_per_1k_words": k, "hits_per_1k_words_ci": [lo, hi],
            "hits_per_generation": g, "hits_per_generation_ci": [glo, ghi],
            "generations_with_hit": with_hit, "rate_with_hit": with_hit / max(len(gens), 1),
            "per_phrase": dict(sorted(per_phrase.items(), key=lambda kv: (-kv[1], kv[0])))}


def distinct_n(texts: list[str], n: int) -> float:
    grams, total = set(), 0
    for t in texts:
        w = words(t)
        for i in range(len(w) - n + 1):
            grams.add(tuple(w[i:i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def ngram_counts(texts: list[str], n: int) -> Counter:
    c = Counter()
    for t in texts:
        w = words(t)
        c.update(" ".join(w[i:i + n]) for i in range(len(w) - n + 1))
    return c


def over_represented(texts: list[str], ref_texts: list[str], ns=(1, 2, 3), top: int = 20,
                     min_count: int = 3) -> list[dict]:
    """The n-grams the model writes most in excess of the reference: ranked by count times the
    add-one-smoothed log ratio of their rates."""
    rows = []
    for n in ns:
        a, b = ngram_counts(texts, n), ngram_counts(ref_texts, n)
        ta, tb = max(sum(a.values()), 1), max(sum(b.values()), 1)
        for g, c in a.items():
            if c < min_count:
                continue
            ratio = ((c + 1) / ta) / ((b.get(g, 0) + 1) / tb)
            if ratio > 1:
                rows.append({"ngram": g, "n": n, "count": c, "ref_count": b.get(g, 0), "ratio": ratio,
                             "score": c * math.log(ratio)})
    rows.sort(key=lambda r: -r["score"])
    return rows[:top]


def new_in_top(texts: list[str], ref_texts: list[str], ns=(2, 3), top: int = 20) -> list[str]:
    """The n-grams among the model's `top` most frequent (per n) that are not among the reference's."""
    new = []
    for n in ns:
        ref = {g for g, _ in ngram_counts(ref_texts, n).most_common(top)}
        new += [g for g, _ in ngram_counts(texts, n).most_common(top) if g not in ref]
    return new
