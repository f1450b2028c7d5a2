"""The reports of `cull eval`: JSON, a markdown table and a bar plot of the hits per phrase."""
from __future__ import annotations

import json
import math
from pathlib import Path


def public(res: dict) -> dict:
    """The result without its private keys (what goes into JSON)."""
    return {k: (public(v) if isinstance(v, dict) else v) for k, v in res.items() if not k.startswith("_")}


def _pct(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:+.1f}%"


def _ci_pct(v, ci) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    lo, hi = ci
    return f"{_pct(v)} ({_pct(lo)}, {_pct(hi)})" if math.isfinite(lo) else _pct(v)


def _reduction(red: dict) -> str:
    r, (lo, hi) = red["reduction"], red["reduction_ci"]
    if not math.isfinite(r):
        return "-"
    return f"{100 * r:.1f}% ({100 * lo:.1f}-{100 * hi:.1f}%)" if math.isfinite(lo) else f"{100 * r:.1f}%"


def markdown(results: list[dict]) -> str:
    """One row per evaluated model: hits with prompt-clustered CIs, the reduction against the
    reference (paired by prompt), perplexity changes on clean replies and human text (paired CIs),
    the looping rate, KL and distinct-2."""
    cols = ["model", "hits/1k words (95% CI)", "gens with a hit", "reduction (95% CI)", "greedy hits",
            "ppl clean replies", "Δppl clean replies (95% CI)", "Δppl human text (95% CI)",
            "looping gens (95% CI)", "KL/token", "distinct-2"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        s = r["sampled"]
        ci = s["hits_per_1k_words_ci"]
        vs = r.get("vs_reference", {})
        red = vs.get("hits", {})
        lp = r.get("loops", {})
        ppl = r.get("clean_replies_of_reference") or r.get("clean_replies")
        row = [r.get("name", "model"), f"{s['hits_per_1k_words']:.2f} ({ci[0]:.2f}-{ci[1]:.2f})",
               f"{s['generations_with_hit']}/{s['generations']}",
               _reduction(red) if red else "-",
               str(r["greedy"]["hits"]) if "greedy" in r else "-",
               f"{ppl['perplexity']:.3f}" if ppl else "-",
               _ci_pct(vs["clean_replies"]["change"], vs["clean_replies"]["change_ci"]) if "clean_replies" in vs else "-",
               _ci_pct(vs["human"]["change"], vs["human"]["change_ci"]) if "human" in vs else "-",
               (f"{lp['looping']}/{s['generations']} ({100 * lp['looping_rate_ci'][0]:.0f}-"
                f"{100 * lp['looping_rate_ci'][1]:.0f}%)") if lp else "-",
               f"{r['kl_per_token']:.4f}" if "kl_per_token" in r else "-",
               f"{r['distinct_2']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_per_phrase(results: list[dict], path, top: int = 30):
    """Bar plot of hits per phrase for each result (e.g. base, fine-tuned); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import numpy as np

    first = results[0]["sampled"]["per_phrase"]
    phrases = [p for p, _ in sorted(first.items(), key=lambda kv: -kv[1])][:top]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(phrases) + 2), 4.5), dpi=110)
    w = 0.8 / len(results)
    x = np.arange(len(phrases))
    for i, r in enumerate(results):
        ax.bar(x + i * w, [r["sampled"]["per_phrase"].get(p, 0) for p in phrases], w, label=r.get("name"))
    ax.set_xticks(x + w * (len(results) - 1) / 2)
    ax.set_xticklabels(phrases, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("hits (sampled generations)")
    ax.set_title("phrase hits per phrase, processor off")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_report(res: dict, out) -> dict:
    """Write out.json, out.md and out.png (before = the reference's hits, after = the model's)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pub = public(res)
    base = out.with_suffix("") if out.suffix in (".json", ".md", ".png") else out
    base.with_suffix(".json").write_text(json.dumps(pub, indent=2, default=str) + "\n")
    rows = [pub]
    if "reference" in pub:
        rows = [{"name": "reference", **pub["reference"]}, pub]
    md = markdown(rows)
    loops = pub.get("vs_reference", {}).get("loops", {})
    if "floor_reference_halves" in loops:
        md += (f"\nLooping generations, model minus reference: {_ci_pct(loops['minus_reference'], loops['minus_reference_ci'])}"
               f"; noise floor (two halves of the reference's own samples): "
               f"{_ci_pct(loops['floor_reference_halves'], loops['floor_reference_halves_ci'])}.\n")
    if pub.get("processor_events"):
        e = pub["processor_events"]
        md += f"\nProcessor on: {e['ban_events']} ban events in {e['tokens']} tokens ({e['ban_events_per_1k_tokens']:.2f} per 1k).\n"
    if pub.get("over_represented"):
        md += "\nTop over-represented n-grams vs the reference:\n\n| n-gram | count | reference count |\n|---|---|---|\n"
        md += "".join(f"| {r['ngram']} | {r['count']} | {r['ref_count']} |\n" for r in pub["over_represented"])
    base.with_suffix(".md").write_text(md)
    plot_per_phrase(rows, base.with_suffix(".png"))
    return pub
