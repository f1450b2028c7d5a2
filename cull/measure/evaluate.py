"""`cull eval`: the measuring stick. How often a model writes the phrases, and what else changed.

`evaluate()` samples a model on prompts (8 samples at temperature 0.8 and one greedy reply per
prompt) with no processor unless one is given, and reports:

- phrase hits per 1,000 words and per generation with 95% confidence intervals from a bootstrap over
  prompts (a prompt's samples move together), and the hits per phrase;
- perplexity with CIs on clean text (`clean_texts`: plain strings, or {"prompt", "text"} replies
  scored given their prompt) and on human-written English (`human_texts`, e.g.
  `cull.measure.human_text.human_corpus()`);
- the share of generations that loop (a word 4-gram said three times or more);
- with a reference (the base model, always run without the processor): its hits on the same prompts
  (the "before"), the reduction paired by prompt with its CI, the perplexity change on the
  reference's own hit-free replies and on human text (paired CIs), the looping rate against the
  reference and against the noise floor between two halves of the reference's own samples, the
  mean per-token KL(model || reference), and the word n-grams the model writes much more often
  (new tics);
- distinct-1 and distinct-2.

`write_report()` writes it as JSON, a markdown table and a PNG bar plot (hits per phrase, before
and after).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from cull.resources import PROMPTS_DIR, builtin_prompt_sets, prompt_file  # noqa: F401 (PROMPTS_DIR: cull eval)
from cull.decode.tokens import eos_ids, pad_id, pad_rows
from cull.measure.generate import BanCounter, prompt_ids  # noqa: F401 (BanCounter: public here too)
from cull.errors import CullError, require
# the metrics, reports and text statistics live in their own modules; re-exported here, where
# `cull eval` users look for them
from cull.measure.eval_metrics import (mean_kl, perplexity, perplexity_change,  # noqa: F401
                           sequence_nll)
from cull.measure.eval_report import markdown, plot_per_phrase, public, write_report  # noqa: F401
from cull.rules.find import find
from cull.rules import as_phrase_set
from cull.measure.text_stats import (bootstrap_ci, compare_hits, distinct_n, hit_stats, loop_stats, loops,  # noqa: F401
                         new_in_top, ngram_counts, over_represented, words)

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
    A bare name such as ``train`` or ``heldout`` reads cull's built-in prompt sets.

    >>> load_prompts("heldout")[0]
    'Write a short story about a baker who bakes bread that grants wishes.'
    """
    p = prompt_file(path)
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


def load_clean_texts(spec) -> list | None:
    """The clean texts of `evaluate(clean_texts=...)` from a .json list of strings or {"prompt", "text"}
    objects, or a built-in set such as ``neutral_texts``; None for None or "none" (no perplexity).

    >>> texts = load_clean_texts("neutral_texts")
    >>> isinstance(texts[0], (str, dict)), load_clean_texts("none")
    (True, None)
    """
    if spec is None or str(spec).lower() == "none":
        return None
    path = prompt_file(spec)
    if not path.is_file():
        raise CullError(f"clean text file {str(spec)!r} not found; pass a .json list of strings or "
                        "{\"prompt\", \"text\"} objects, a built-in set "
                        f"({', '.join(builtin_prompt_sets())}) or 'none'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CullError(f"clean text file {str(path)!r} is not valid JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(x, str) or isinstance(x, dict) and {"prompt", "text"} <= set(x)
                                            for x in data):
        raise CullError(f"{str(path)!r} must hold a JSON list of strings or {{\"prompt\", \"text\"}} objects")
    return data


# ---- generation ----
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
    if do_sample and not 0 < temperature < float("inf"):
        raise CullError(f"temperature must be above 0 and finite when sampling, got {temperature}")
    jobs = [(i, prompt_ids(tok, p, chat)) for i, p in enumerate(prompts) for _ in range(n_samples)]
    special = set(getattr(tok, "all_special_ids", []) or [])
    eos = set(eos_ids(tok, model))
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
        ids, mask = pad_rows([j[1] for j in chunk], pad, side="left")
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


def _measure(model, tok, rules, prompts, gens, *, seed, chat, progress, clean_texts, human_texts,
             own_clean_replies, batch_size) -> dict:
    """Everything that needs only one model: hit statistics, loops, distinct-n, perplexities."""
    sampled = [g for g in gens if not g.greedy]
    res = {"sampled": hit_stats(sampled, rules, seed)}
    if any(g.greedy for g in gens):
        res["greedy"] = hit_stats([g for g in gens if g.greedy], rules, seed)
    texts = [g.text for g in sampled]
    res["distinct_1"], res["distinct_2"] = distinct_n(texts, 1), distinct_n(texts, 2)
    res["mean_tokens"] = sum(len(g.gen_ids) for g in sampled) / max(len(sampled), 1)
    res["loops"] = loop_stats(sampled, seed=seed)
    res["_clean_replies"] = [{"prompt": prompts[g.prompt_index], "text": g.text} for g in sampled
                             if g.text.strip() and not find(g.text, rules)]
    ppl = dict(batch_size=max(1, batch_size // 2), chat=chat, progress=progress, seed=seed)
    if model is not None:
        if clean_texts:
            res["clean"] = perplexity(model, tok, clean_texts, **ppl)
        if human_texts:
            res["human"] = perplexity(model, tok, human_texts, **ppl)
        if own_clean_replies and res["_clean_replies"]:
            res["clean_replies"] = perplexity(model, tok, res["_clean_replies"], **ppl)
    return res


def evaluate(model, tokenizer, rules, prompts: list[str], n_samples: int = 8, temperature: float = 0.8,
             greedy: bool = True, max_new_tokens: int = 128, seed: int = 0, processor=None,
             reference_model=None, clean_texts=None, *, reference_gens=None, reference_result=None,
             human_texts=None, batch_size: int = 16, chat: bool | None = None, progress: bool = True,
             out=None, name: str = "model", reference_cache=None) -> dict:
    """Evaluate `model` on `prompts`; see the module docstring. Returns a JSON-ready dict; with `out`
    (a path prefix) also writes out.json, out.md and out.png.

    The reference (the base model) is always measured as it is, without `processor`: with a
    processor, "before" is the base model's own rate. Pass `reference_result` (an earlier
    `evaluate()` of the reference on the same prompts and settings) to reuse its samples and
    perplexities, e.g. when comparing many fine-tunes with one base, or `reference_cache` (a JSON
    file path, `cull.measure.reference_cache`) to keep it on disk between runs. The generations are
    kept under the private key "_gens"; private keys are not written."""
    rules = as_phrase_set(rules)
    model.eval()
    res = {"name": name, "phrases": len(rules), "prompts": len(prompts), "n_samples": n_samples,
           "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
           "processor": processor is not None}

    def run(m, tag, proc):
        gens = generate(m, tokenizer, prompts, n_samples=n_samples, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=seed, processor=proc, batch_size=batch_size,
                        chat=chat, progress=progress, desc=f"{tag}: sampling")
        if greedy:
            gens += generate(m, tokenizer, prompts, do_sample=False, max_new_tokens=max_new_tokens, seed=seed,
                             processor=proc, batch_size=batch_size, chat=chat, progress=progress,
                             desc=f"{tag}: greedy")
        return gens

    have_ref = reference_model is not None or reference_gens is not None or reference_result is not None
    common = dict(seed=seed, chat=chat, progress=progress, clean_texts=clean_texts, human_texts=human_texts,
                  batch_size=batch_size)
    gens = run(model, name, processor)
    res.update(_measure(model, tokenizer, rules, prompts, gens, own_clean_replies=not have_ref, **common))
    counter = processor if isinstance(processor, BanCounter) else None
    if counter is not None:
        ntok = sum(len(g.gen_ids) for g in gens)
        res["processor_events"] = {"ban_events": counter.events, "tokens": ntok,
                                   "ban_events_per_1k_tokens": 1000 * counter.events / max(ntok, 1),
                                   "banned_mass_per_1k_tokens": 1000 * counter.removed_mass / max(ntok, 1)}
    if have_ref:
        ref, key = reference_result, None
        if ref is None and reference_cache is not None and reference_model is not None and reference_gens is None:
            from cull.measure import reference_cache as cache

            settings = dict(n_samples=n_samples, temperature=temperature, greedy=greedy,
                            max_new_tokens=max_new_tokens, seed=seed, chat=chat, batch_size=batch_size)
            key = cache.cache_key(reference_model, tokenizer, rules, prompts, settings, clean_texts, human_texts)
            ref, status = cache.load(reference_cache, key)
            if ref is not None:
                try:
                    ref["_gens"] = [Generation(**g) for g in ref["_gens"]]
                except TypeError:  # written by another version of Generation
                    ref, status = None, "stale"
            res["reference_cache"] = {"path": str(reference_cache), "status": status}
        if ref is None:
            ref_gens = reference_gens if reference_gens is not None else run(reference_model, "reference", None)
            ref = {"_gens": ref_gens, **_measure(reference_model, tokenizer, rules, prompts, ref_gens,
                                                 own_clean_replies=True, **common)}
            if key is not None:
                res["reference_cache"]["save_error"] = cache.save(reference_cache, key, ref)
        ref_gens = ref["_gens"]
        ref_sampled = [g for g in ref_gens if not g.greedy]
        sampled = [g for g in gens if not g.greedy]
        res["reference"] = {k: ref[k] for k in ("sampled", "greedy", "distinct_1", "distinct_2", "loops", "clean",
                                                "human", "clean_replies") if k in ref}
        vs = {"hits": compare_hits(res["sampled"], ref["sampled"], seed),
              "loops": loop_stats(sampled, ref_sampled, seed=seed)}
        if "greedy" in res and "greedy" in ref:
            vs["greedy_hits"] = compare_hits(res["greedy"], ref["greedy"], seed)
        for key in ("clean", "human"):
            if key in res and key in ref:
                vs[key] = perplexity_change(res[key], ref[key], seed=seed)
        if ref.get("_clean_replies") and "clean_replies" in ref:
            res["clean_replies_of_reference"] = perplexity(model, tokenizer, ref["_clean_replies"],
                                                           batch_size=max(1, batch_size // 2), chat=chat,
                                                           progress=progress, seed=seed)
            vs["clean_replies"] = perplexity_change(res["clean_replies_of_reference"], ref["clean_replies"], seed=seed)
        res["vs_reference"] = vs
        res["over_represented"] = over_represented([g.text for g in sampled], [g.text for g in ref_sampled])
        if reference_model is not None and reference_model is not model:
            res["kl_per_token"] = mean_kl(model, reference_model, sampled, pad=pad_id(tokenizer), progress=progress)
        res["_ref_gens"] = ref_gens
        res["_reference_result"] = ref
    res["samples"] = [{"prompt": prompts[g.prompt_index], "text": g.text, "greedy": g.greedy} for g in gens[:200]]
    res["_gens"] = gens
    if out is not None:
        write_report(res, out)
    return res
