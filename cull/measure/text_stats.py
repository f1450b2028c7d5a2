"""Statistics of generated text for `cull eval` and `cull discover`: phrase hits with bootstrap
confidence intervals, distinct-n, looping generations, and the word n-grams a model writes in excess
of a reference.

Samples of one prompt are not independent (a prompt that elicits a phrase elicits it in most of its
samples), so every interval here resamples *prompts* (a cluster bootstrap): all samples of a drawn
prompt come along. Comparisons of two models are paired: both are measured on the same resampled
prompts."""
from __future__ import annotations

import math
import re
from collections import Counter

from cull.rules.find import find
from cull.rules import PhraseSet

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


def cluster_sums(keys, *columns):
    """Sum each column per cluster key (e.g. per prompt): (sorted keys, [array per column])."""
    import numpy as np

    order = sorted(set(keys))
    where = {k: i for i, k in enumerate(order)}
    out = []
    for col in columns:
        acc = np.zeros(len(order))
        for k, v in zip(keys, col):
            acc[where[k]] += v
        out.append(acc)
    return order, out


def _boot_index(n_clusters: int, n_boot: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))


def _interval(est, stats, level):
    import numpy as np

    stats = np.asarray(stats, dtype=float)
    stats = stats[np.isfinite(stats)]
    if not np.isfinite(est) or stats.size == 0:
        return float(est), float("nan"), float("nan")
    a = (1 - level) / 2
    return float(est), float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def clustered_ratio_ci(num, den, *, scale: float = 1.0, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of scale * sum(num) / sum(den), with num and den already summed per
    cluster and the clusters resampled (percentile bootstrap)."""
    import numpy as np

    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if num.size == 0:
        return 0.0, 0.0, 0.0
    est = scale * num.sum() / max(den.sum(), 1e-12)
    idx = _boot_index(num.size, n_boot, seed)
    return _interval(est, scale * num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12), level)


def paired_reduction_ci(num_a, den_a, num_b, den_b, *, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float, float]:
    """The relative reduction 1 - rate_a / rate_b (rate = sum(num) / sum(den)) of model a against
    reference b, with the clusters (prompts, the same for both) resampled jointly. NaN when b has
    no hits at all; resamples where b has none are dropped."""
    import numpy as np

    na, da, nb, db = (np.asarray(x, dtype=float) for x in (num_a, den_a, num_b, den_b))
    if na.size == 0 or nb.sum() == 0:
        return float("nan"), float("nan"), float("nan")

    def red(sa, sda, sb, sdb):
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1 - (sa / np.maximum(sda, 1e-12)) / (sb / np.maximum(sdb, 1e-12))

    est = float(red(na.sum(), da.sum(), nb.sum(), db.sum()))
    idx = _boot_index(na.size, n_boot, seed)
    sb = nb[idx].sum(1)
    stats = red(na[idx].sum(1), da[idx].sum(1), sb, db[idx].sum(1))[sb > 0]
    return _interval(est, stats, level)


def paired_difference_ci(a, b, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """mean(a) - mean(b) over clusters (a, b: one value per cluster, the same clusters), resampled
    jointly."""
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0:
        return 0.0, 0.0, 0.0
    idx = _boot_index(a.size, n_boot, seed)
    return _interval(float(a.mean() - b.mean()), a[idx].mean(1) - b[idx].mean(1), level)


def hits_per_generation(gens, rules: PhraseSet) -> tuple[list[int], list[int], Counter]:
    """(hits per generation, words per generation, hits per phrase)."""
    per_gen, n_words, per_phrase = [], [], Counter({r.text: 0 for r in rules})
    for g in gens:
        ms = find(g.text, rules)
        per_gen.append(len(ms))
        n_words.append(len(g.text.split()))
        per_phrase.update(m.rule.text for m in ms)
    return per_gen, n_words, per_phrase


def hit_stats(gens, rules: PhraseSet, seed: int = 0) -> dict:
    """Hits per 1,000 words and per generation, with 95% CIs from a bootstrap over prompts (all the
    samples of a prompt move together), and hits per phrase. The per-prompt sums are kept (under
    "per_prompt") so that two models can be compared prompt by prompt."""
    per_gen, n_words, per_phrase = hits_per_generation(gens, rules)
    keys = [getattr(g, "prompt_index", i) for i, g in enumerate(gens)]
    prompts, (ph, pw, pn) = cluster_sums(keys, per_gen, n_words, [1] * len(gens))
    k, lo, hi = clustered_ratio_ci(ph, pw, scale=1000.0, seed=seed)
    g, glo, ghi = clustered_ratio_ci(ph, pn, seed=seed)
    with_hit = sum(1 for h in per_gen if h)
    return {"generations": len(gens), "prompts": len(prompts), "words": int(sum(n_words)), "hits": int(sum(per_gen)),
            "hits_per_1k_words": k, "hits_per_1k_words_ci": [lo, hi],
            "hits_per_generation": g, "hits_per_generation_ci": [glo, ghi],
            "generations_with_hit": with_hit, "rate_with_hit": with_hit / max(len(gens), 1),
            "per_phrase": dict(sorted(per_phrase.items(), key=lambda kv: (-kv[1], kv[0]))),
            "per_prompt": {"prompt": [int(p) for p in prompts], "hits": ph.tolist(), "words": pw.tolist()}}


def compare_hits(stats: dict, ref_stats: dict, seed: int = 0) -> dict:
    """The reduction in hits per 1,000 words of a model against its reference, paired by prompt:
    {"reduction", "reduction_ci", "residual_ci_high"} (fractions; residual = 1 - reduction)."""
    a, b = stats["per_prompt"], ref_stats["per_prompt"]
    if a["prompt"] != b["prompt"]:
        raise ValueError("the two hit statistics were measured on different prompts; compare like with like")
    est, lo, hi = paired_reduction_ci(a["hits"], a["words"], b["hits"], b["words"], seed=seed)
    return {"reduction": est, "reduction_ci": [lo, hi], "residual": 1 - est, "residual_ci_high": 1 - lo}


# ---- looping generations ----
def loops(text: str, n: int = 4, min_repeats: int = 3) -> bool:
    """True when some word n-gram occurs at least `min_repeats` times in the text: the model is
    going round in circles (a line said over and over, a list that never ends)."""
    w = words(text)
    c = Counter(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
    return bool(c) and max(c.values()) >= min_repeats


def loop_stats(gens, ref_gens=None, *, n: int = 4, min_repeats: int = 3, seed: int = 0) -> dict:
    """The share of generations that loop (`loops`), with a prompt-clustered CI. With `ref_gens`
    (the reference on the same prompts), also the paired difference model - reference, and the
    noise floor: the same difference between two halves of the reference's own samples of each
    prompt (what chance alone gives when nothing changed)."""
    def per_prompt(gs):
        keys = [getattr(g, "prompt_index", i) for i, g in enumerate(gs)]
        return cluster_sums(keys, [float(loops(g.text, n, min_repeats)) for g in gs], [1.0] * len(gs))

    prompts, (lp, cnt) = per_prompt(gens)
    est, lo, hi = clustered_ratio_ci(lp, cnt, seed=seed)
    out = {"ngram": n, "min_repeats": min_repeats, "looping_rate": est, "looping_rate_ci": [lo, hi],
           "looping": int(lp.sum())}
    if ref_gens:
        rprompts, (rl, rc) = per_prompt(ref_gens)
        if rprompts == prompts:
            d = paired_difference_ci(lp / cnt, rl / rc, seed=seed)
            out["minus_reference"], out["minus_reference_ci"] = d[0], [d[1], d[2]]
        halves = ([], [])  # each prompt's samples split in two, by their order
        seen = Counter()
        for g in ref_gens:
            k = getattr(g, "prompt_index", 0)
            halves[seen[k] % 2].append(g)
            seen[k] += 1
        (p1, (l1, c1)), (p2, (l2, c2)) = per_prompt(halves[0]), per_prompt(halves[1])
        if p1 == p2 and len(p1):
            f = paired_difference_ci(l1 / c1, l2 / c2, seed=seed + 1)
            out["floor_reference_halves"], out["floor_reference_halves_ci"] = f[0], [f[1], f[2]]
    return out


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
