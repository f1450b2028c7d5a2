"""`cull eval`: the measuring stick. How often a model writes the phrases, and what else changed.

`evaluate()` samples a model on prompts (temperature 0.8, plus one greedy reply per prompt) with no
processor unless one is given, and reports:

- phrase hits per 1,000 words and per generation, with bootstrap 95% confidence intervals, and the
  hits per phrase;
- perplexity on clean held-out text (`clean_texts`: plain strings, or {"prompt", "text"} replies
  scored given their prompt);
- with a `reference_model` (the base model): the mean per-token KL(model || reference) on the
  model's own generated tokens, the reference's hits on the same prompts (the "before"), and the word
  n-grams the model writes much more often than the reference (new tics);
- distinct-1 and distinct-2.

`write_report()` writes it as JSON, a markdown table and a PNG bar plot (hits per phrase, before
and after).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import CullError, require
from .rules import as_phrase_set
# the text statistics live in text_stats; re-exported here, where `cull eval` users look for them
from .text_stats import (bootstrap_ci, distinct_n, hit_stats, new_in_top, ngram_counts,  # noqa: F401
                         over_represented, words)

PROMPTS_DIR = Path(__file__).resolve().parent / "data" / "prompts"


@dataclass
class Generation:
    prompt_index: int
    prompt_ids: list  # unpadded prompt token ids
    gen_ids: list  # generated ids up to (not including) EOS / padding
    text: str
    greedy: bool = False


# ---- prompts ----
def load_prompts(path) -> list[str]:
    """Prompts from a .json file (a list of strings, or {category: [strings]}) or a .txt file (one a line).
    A bare name such as ``train`` or ``heldout`` reads cull's built-in prompt sets."""
    p = Path(path)
    if not p.exists() and (PROMPTS_DIR / f"{path}.json").is_file():
        p = PROMPTS_DIR / f"{path}.json"
    if not p.is_file():
        raise CullError(f"prompt file {str(path)!r} not found; pass a .json list of prompts, a .txt file with "
                        f"one prompt a line, or a built-in set: {', '.join(sorted(builtin_prompt_sets()))}")
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CullError(f"prompt file {str(p)!r} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            data = [x for v in data.values() for x in v]
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise CullError(f"prompt file {str(p)!r} must hold a list of strings or {{category: [strings]}}")
        prompts = data
    else:
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise CullError(f"prompt file {str(p)!r} holds no prompts")
    return prompts


def builtin_prompt_sets() -> list[str]:
    return [f.stem for f in PROMPTS_DIR.glob("*.json")]


# ---- generation ----
def prompt_ids(tok, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of one prompt: the chat template when the tokenizer has one (chat=None) or when
    chat=True (an error if it has none); else the raw text, an empty prompt being just BOS."""
    from .generate import build_prompt_ids

    if chat and not getattr(tok, "chat_template", None):
        raise CullError("chat prompts were asked for, but this model's tokenizer has no chat template; "
                        "use raw prompts (chat=False, --raw) or a model with a chat template")
    return build_prompt_ids(tok, prompt, chat=chat)[0].tolist()


def pad_id(tok) -> int:
    for t in (tok.pad_token_id, tok.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


def _left_pad(rows: list[list[int]], pad: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def generate(model, tok, prompts: list[str], *, n_samples: int = 1, do_sample: bool = True,
             temperature: float = 0.8, max_new_tokens: int = 128, seed: int = 0, processor=None,
             batch_size: int = 16, chat: bool | None = None, progress: bool = True,
             desc: str = "generating") -> list[Generation]:
    """`n_samples` generations per prompt, batched (left-padded), seeded per batch (reproducible for
    a given batch size). Returns the generated ids and text (special tokens left out)."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    if max_new_tokens < 1 or n_samples < 1 or batch_size < 1:
        raise CullError(f"max_new_tokens, n_samples and batch_size must be at least 1, got "
                        f"{max_new_tokens}, {n_samples}, {batch_size}")
    if do_sample and not temperature > 0:
        raise CullError(f"temperature must be > 0 when sampling, got {temperature}")
    jobs = [(i, prompt_ids(tok, p, chat)) for i, p in enumerate(prompts) for _ in range(n_samples)]
    special = set(getattr(tok, "all_special_ids", []) or [])
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None \
        else tok.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos]) - {None}
    pad = pad_id(tok)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad)
    kwargs.update(dict(temperature=temperature, top_k=0, top_p=1.0) if do_sample else
                  dict(temperature=None, top_k=None, top_p=None))
    if processor is not None:
        from transformers import LogitsProcessorList

        kwargs["logits_processor"] = LogitsProcessorList(processor if isinstance(processor, list) else [processor])
    out: list[Generation] = []
    device = next(model.parameters()).device
    bar = tqdm(total=len(jobs), desc=desc, unit="gen", disable=not progress, leave=False)
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        ids, mask = _left_pad([j[1] for j in chunk], pad)
        torch.manual_seed(seed * 100_003 + b)
        with torch.inference_mode():
            res = _oom_guard(lambda: model.generate(ids.to(device), attention_mask=mask.to(device), **kwargs),
                             batch_size, "generation")
        for (pi, pids), row in zip(chunk, res[:, ids.shape[1]:].tolist()):
            gen = []
            for t in row:
                if t in eos:
                    break
                gen.append(t)
            text = tok.decode([t for t in gen if t not in special], skip_special_tokens=True)
            out.append(Generation(pi, pids, gen, text, greedy=not do_sample))
        bar.update(len(chunk))
    bar.close()
    return out


def _oom_guard(fn, batch_size: int, what: str):
    try:
        return fn()
    except RuntimeError as exc:
        if "out of memory" in str(exc).lower():
            raise CullError(f"ran out of memory during {what} at batch size {batch_size}; pass a smaller "
                            f"batch size (--batch-size {max(1, batch_size // 2)})") from None
        raise


class BanCounter:
    """Wraps a logits processor and counts its interventions: a ban event is a row-step where the
    tokens it set to -inf held at least `threshold` of the model's probability."""

    def __init__(self, processor, threshold: float = 0.01):
        self.processor, self.threshold = processor, threshold
        self.events, self.removed_mass, self.row_steps = 0, 0.0, 0

    def __call__(self, input_ids, scores):
        import torch

        p = torch.softmax(scores.float(), -1)
        was = torch.isinf(scores)
        scores = self.processor(input_ids, scores)
        removed = (p * (torch.isinf(scores) & ~was)).sum(-1)
        self.events += int((removed >= self.threshold).sum())
        self.removed_mass += float(removed.sum())
        self.row_steps += scores.shape[0]
        return scores


def _batches(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _right_pad(rows, pad):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def perplexity(model, tok, texts, *, batch_size: int = 8, chat: bool | None = None, progress: bool = True) -> dict:
    """exp(mean NLL per token). A plain string is scored whole (after BOS); a {"prompt", "text"} item
    scores the text's tokens given the prompt."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    seqs = []  # (ids, index where scoring starts)
    for t in texts:
        if isinstance(t, dict):
            p = prompt_ids(tok, t["prompt"], chat)
            seqs.append((p + tok(t["text"], add_special_tokens=False)["input_ids"], len(p)))
        else:
            ids = tok(t, add_special_tokens=True)["input_ids"]
            if not ids or ids[0] != tok.bos_token_id and tok.bos_token_id is not None:
                ids = [tok.bos_token_id] + ids
            seqs.append((ids, 1))
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    for chunk in tqdm(list(_batches(seqs, batch_size)), desc="perplexity", disable=not progress, leave=False):
        ids, mask = _right_pad([s[0] for s in chunk], pad_id(tok))
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for i, (s, start) in enumerate(chunk):
            pos = torch.arange(max(start, 1), len(s), device=device)
            nll -= logp[i, pos - 1, ids[i, pos].to(device)].sum().item()
            count += len(pos)
    return {"perplexity": math.exp(nll / count) if count else float("nan"), "tokens": count}


def mean_kl(model, reference, gens: list[Generation], *, pad: int = 0, batch_size: int = 4,
            progress: bool = True) -> float:
    """Mean over generated tokens of KL(model || reference) at each position."""
    torch = require("torch", "hf")
    from tqdm.auto import tqdm

    total, count = 0.0, 0
    gens = [g for g in gens if g.gen_ids]
    device = next(model.parameters()).device
    for chunk in tqdm(list(_batches(gens, batch_size)), desc="KL", disable=not progress, leave=False):
        ids, mask = _right_pad([g.prompt_ids + g.gen_ids for g in chunk], pad)
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            lp = torch.log_softmax(model(ids, attention_mask=mask).logits.float(), -1)
            lq = torch.log_softmax(reference(ids, attention_mask=mask).logits.float(), -1)
            for i, g in enumerate(chunk):
                a, b = len(g.prompt_ids) - 1, len(g.prompt_ids) + len(g.gen_ids) - 1
                p, q = lp[i, a:b], lq[i, a:b]
                total += (p.exp() * (p - q)).sum().item()
                count += b - a
    return total / count if count else float("nan")


def evaluate(model, tokenizer, rules, prompts: list[str], n_samples: int = 4, temperature: float = 0.8,
             greedy: bool = True, max_new_tokens: int = 128, seed: int = 0, processor=None,
             reference_model=None, clean_texts=None, *, reference_gens=None, batch_size: int = 16,
             chat: bool | None = None, progress: bool = True, out=None, name: str = "model") -> dict:
    """Evaluate `model` on `prompts`; see the module docstring. Returns a JSON-ready dict; with `out`
    (a path prefix) also writes out.json, out.md and out.png. The generations are kept under the
    private key "_gens" (used to reuse the reference's samples); it is not written."""
    rules = as_phrase_set(rules)
    model.eval()
    res = {"name": name, "phrases": len(rules), "prompts": len(prompts), "n_samples": n_samples,
           "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
           "processor": processor is not None}

    def run(m, tag):
        gens = generate(m, tokenizer, prompts, n_samples=n_samples, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=seed, processor=processor, batch_size=batch_size,
                        chat=chat, progress=progress, desc=f"{tag}: sampling")
        if greedy:
            gens += generate(m, tokenizer, prompts, do_sample=False, max_new_tokens=max_new_tokens, seed=seed,
                             processor=processor, batch_size=batch_size, chat=chat, progress=progress,
                             desc=f"{tag}: greedy")
        return gens

    gens = run(model, name)
    sampled = [g for g in gens if not g.greedy]
    res["sampled"] = hit_stats(sampled, rules, seed)
    if greedy:
        res["greedy"] = hit_stats([g for g in gens if g.greedy], rules, seed)
    texts = [g.text for g in sampled]
    res["distinct_1"], res["distinct_2"] = distinct_n(texts, 1), distinct_n(texts, 2)
    res["mean_tokens"] = sum(len(g.gen_ids) for g in sampled) / max(len(sampled), 1)
    if clean_texts:
        res["clean"] = perplexity(model, tokenizer, clean_texts, chat=chat, progress=progress)
    if reference_model is not None or reference_gens is not None:
        if reference_gens is None:
            reference_gens = run(reference_model, "reference")
        ref_sampled = [g for g in reference_gens if not g.greedy]
        ref = {"sampled": hit_stats(ref_sampled, rules, seed),
               "distinct_1": distinct_n([g.text for g in ref_sampled], 1),
               "distinct_2": distinct_n([g.text for g in ref_sampled], 2)}
        if greedy and any(g.greedy for g in reference_gens):
            ref["greedy"] = hit_stats([g for g in reference_gens if g.greedy], rules, seed)
        if clean_texts and reference_model is not None:
            ref["clean"] = perplexity(reference_model, tokenizer, clean_texts, chat=chat, progress=progress)
        res["reference"] = ref
        res["over_represented"] = over_represented(texts, [g.text for g in ref_sampled])
        res["new_in_top20"] = new_in_top(texts, [g.text for g in ref_sampled])
        if reference_model is not None and reference_model is not model:
            res["kl_per_token"] = mean_kl(model, reference_model, sampled, pad=pad_id(tokenizer),
                                          progress=progress)
        res["_ref_gens"] = reference_gens
    res["samples"] = [{"prompt": prompts[g.prompt_index], "text": g.text, "greedy": g.greedy} for g in gens[:200]]
    res["_gens"] = gens
    if out is not None:
        write_report(res, out)
    return res


# ---- reports ----
def public(res: dict) -> dict:
    """The result without its private keys (what goes into JSON)."""
    return {k: (public(v) if isinstance(v, dict) else v) for k, v in res.items() if not k.startswith("_")}


def markdown(results: list[dict]) -> str:
    """One row per evaluated model: hits (with CIs), perplexity, KL, distinct-n."""
    cols = ["model", "hits/1k words (95% CI)", "hits/gen (95% CI)", "gens with a hit", "greedy hits/1k",
            "clean ppl", "KL/token", "distinct-1", "distinct-2"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        s = r["sampled"]
        ci = s["hits_per_1k_words_ci"]
        gci = s["hits_per_generation_ci"]
        row = [r.get("name", "model"), f"{s['hits_per_1k_words']:.2f} ({ci[0]:.2f}-{ci[1]:.2f})",
               f"{s['hits_per_generation']:.3f} ({gci[0]:.3f}-{gci[1]:.3f})",
               f"{s['generations_with_hit']}/{s['generations']}",
               f"{r['greedy']['hits_per_1k_words']:.2f}" if "greedy" in r else "-",
               f"{r['clean']['perplexity']:.3f}" if "clean" in r else "-",
               f"{r['kl_per_token']:.4f}" if "kl_per_token" in r else "-",
               f"{r['distinct_1']:.3f}", f"{r['distinct_2']:.3f}"]
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
    if pub.get("over_represented"):
        md += "\nTop over-represented n-grams vs the reference:\n\n| n-gram | count | reference count |\n|---|---|---|\n"
        md += "".join(f"| {r['ngram']} | {r['count']} | {r['ref_count']} |\n" for r in pub["over_represented"])
    base.with_suffix(".md").write_text(md)
    plot_per_phrase(rows, base.with_suffix(".png"))
    return pub



# ---- the `cull eval` command (its parser lives with `cull finetune`'s in cull/finetune/commands.py) ----
def add_eval_parser(subparsers):
    """Add `eval` to an argparse subparsers object (sets func=run_eval)."""
    from .finetune.commands import add_eval_parser as add

    return add(subparsers)


def run_eval(args) -> int:
    from .finetune.commands import run_eval as run

    return run(args)
