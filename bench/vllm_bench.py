"""End-to-end decode throughput in the real vLLM engine (CPU, V1 model runner), in one run:

* `none`: requests without cull settings (the processor is loaded and does nothing);
* `cull-K`: the first K antislop phrases per request, banned by cull;
* `vllm-bad-words-K`: the same K phrases through vLLM's own `bad_words`: K is the most it accepts
  (it caps at 128 token sequences, and tokenizes most words twice, with and without a space);
* `cull-50k`: the 50,046-phrase antislop list;
* `cull-64-distinct`: 64 concurrent requests, each with its own 20-phrase list (compiles, cache size).

The model is a random-weight Llama of SmolLM2-135M's shape with Qwen2's tokenizer (V = 151,936),
greedy, a fixed number of tokens (ignore_eos). Variants run round-robin, so machine noise hits them
alike. Before timing, each cull output is checked for the banned phrases.

    .venv-vllm/bin/python -m bench.vllm_bench
    .venv-vllm/bin/python -m bench.vllm_bench --quick
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import data_dir, markdown_table, write_results  # noqa: E402


def make_model(folder: Path, quick: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_dir = data_dir() / "tokenizers" / "qwen2"
    shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2) if quick else \
        dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3)  # SmolLM2-135M's shape
    cfg = LlamaConfig(vocab_size=151_936, max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=151643, eos_token_id=151643, **shape)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / f).exists():
            shutil.copy(tok_dir / f, folder / f)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    from vllm import LLM, SamplingParams

    import cull
    from cull.integrations.vllm import CullLogitsProcessor, live_processors

    B, n_new, reps = (4, 8, 1) if args.quick else (8, 64, args.reps or 3)
    anti = data_dir() / "phrases" / "antislop"
    p517 = [p for p, _ in json.loads((anti / "slop_phrase_prob_adjustments.json").read_text())]
    full = [p for p, _ in json.loads((anti / "slop_phrase_prob_adjustments_full_list.json").read_text())]
    work = Path(tempfile.mkdtemp(prefix="cull-vllm-bench-"))
    model = make_model(work / "model", args.quick)
    llm = LLM(model=str(model), enforce_eager=True, kv_cache_memory_bytes=256 * 2**20, dtype="float32",
              max_model_len=512, logits_processors=[CullLogitsProcessor], seed=0)
    prompts = [f"Write a short story about a lighthouse keeper, number {i}." for i in range(B)]
    k = most_bad_words(p517, llm.get_tokenizer())
    p128 = p517[:k]

    def params(**kw):
        return SamplingParams(max_tokens=n_new, min_tokens=n_new, temperature=0, ignore_eos=True, **kw)

    variants = {"none": params(), f"cull-{k}": params(extra_args={"cull": {"phrases": p128}}),
                f"vllm-bad-words-{k}": params(bad_words=p128)}
    if not args.quick:
        variants["cull-50k"] = params(extra_args={"cull": {"phrases": full}})
    rules = {f"cull-{k}": cull.PhraseSet(p128), "cull-50k": cull.PhraseSet(full) if not args.quick else None}

    def run(p):
        t = time.perf_counter()
        outs = llm.generate(prompts, p, use_tqdm=False)
        return time.perf_counter() - t, [o.outputs[0].text for o in outs]

    for name, p in variants.items():  # warm-up (and compile), then correctness
        _, texts = run(p)
        if name.startswith("cull"):
            hits = [m for t in texts for m in cull.find(t, rules[name])]
            if hits:
                raise SystemExit(f"correctness check failed: {name} wrote {hits[0]}")
    times = {k: [] for k in variants}
    for _ in range(reps):
        for name, p in variants.items():
            times[name].append(run(p)[0])
    rows = []
    base = statistics.median(times["none"])
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"name": name, "batch": B, "new_tokens": n_new, "tokens_per_s": round(B * n_new / med, 2),
                     "seconds": round(med, 4), "overhead_vs_none": round(med / base - 1, 4)})
    rows.append(distinct_lists_row(llm, params, live_processors, CullLogitsProcessor, full, 64 if not args.quick else 8))
    extra = {"command": "python -m bench.vllm_bench" + (" --quick" if args.quick else ""), "reps": reps,
             "model": "random Llama, SmolLM2-135M shape" if not args.quick else "tiny random Llama",
             "tokenizer": "qwen2", "load_average_1min": round(os.getloadavg()[0], 2)}
    path = write_results("vllm-e2e", rows, args.out, extra=extra, tag="-quick" if args.quick else "")
    md = markdown_table(rows, ["name", "batch", "tokens_per_s", "overhead_vs_none", "compiles", "cache_mib"])
    path.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def most_bad_words(phrases, tokenizer) -> int:
    """The longest prefix of `phrases` that vLLM's bad_words accepts."""
    from vllm import SamplingParams

    lo, hi = 1, min(len(phrases), 128)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            SamplingParams(bad_words=phrases[:mid]).update_from_tokenizer(tokenizer)
            lo = mid
        except Exception:
            hi = mid - 1
    return lo


def distinct_lists_row(llm, params, live_processors, cls, full, n) -> dict:
    """n concurrent requests, each with its own 20-phrase list: all correct, cache under its bound."""
    import cull

    proc = next(p for p in live_processors() if isinstance(p, cls))
    cache = proc.engine.cache
    c0 = cache.compiles
    lists = [full[1000 + 20 * i: 1000 + 20 * (i + 1)] for i in range(n)]
    prompts = [f"Describe a city at night, take {i}." for i in range(n)]
    t = time.perf_counter()
    outs = llm.generate(prompts, [params(extra_args={"cull": {"phrases": lst}}) for lst in lists], use_tqdm=False)
    dt = time.perf_counter() - t
    bad = [i for i, (o, lst) in enumerate(zip(outs, lists)) if cull.find(o.outputs[0].text, cull.PhraseSet(lst))]
    if bad:
        raise SystemExit(f"correctness check failed: requests {bad} wrote a banned phrase")
    n_tok = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"name": "cull-64-distinct" if n == 64 else f"cull-{n}-distinct", "batch": n, "new_tokens": n_tok // n,
            "tokens_per_s": round(n_tok / dt, 2), "seconds": round(dt, 4), "compiles": cache.compiles - c0,
            "cache_mib": round(cache.mib(), 2), "cache_bound_mib": cache.max_mib, "cached_lists": len(cache)}


if __name__ == "__main__":
    raise SystemExit(main())
