"""`cull finetune`'s merged output is a model vLLM serves: a short fine-tune of the tiny Llama writes
a merged model (with its phrase rows folded into the output layer, untied when the base was tied),
the real engine (CPU) loads it and generates, and its greedy tokens are the ones HF's own generate
gives for the same weights."""
import os
import re
from collections import Counter

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402

from helpers import tiny_llama  # noqa: E402

pytestmark = pytest.mark.vllm
PROMPTS = ["The quick brown fox", "Hello world", "Once upon a time", "In the beginning", "She said", "We went"]


def frequent_word(texts) -> str:
    """The word (3+ letters) in the most generations: a phrase the random model really writes."""
    seen = Counter(w for t in texts for w in {w.lower() for w in re.findall(r"[A-Za-z]{3,}", t)})
    return seen.most_common(1)[0][0]


def test_merged_model_loads_and_generates_in_vllm(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    import cull
    from cull.finetune import FinetuneConfig, finetune
    from cull.measure.evaluate import generate

    base_dir = tiny_llama(tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    samples = generate(model, tok, PROMPTS, n_samples=4, max_new_tokens=24, chat=False, progress=False, seed=0)
    phrase = frequent_word(g.text for g in samples)
    cfg = FinetuneConfig(steps=3, n_samples=4, max_new_tokens=24, batch_size=2, retain_batch_size=1, chat=False,
                         eval_every=0, val_samples=0)
    out = tmp_path / "tuned"
    summary = finetune(model, tok, cull.PhraseSet([phrase]), PROMPTS, out, cfg, progress=False,
                       base_path=str(base_dir), say=lambda m: None)
    assert summary["saved"] == "merged"
    # the word's tokens got trainable output rows (the default); a tied model comes back untied
    rows = summary["phrase_rows"]
    assert rows, "the word should be banned in every context and get output rows"
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()

    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert tuned.config.tie_word_embeddings is False
    head = tuned.get_output_embeddings().weight
    base_head = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).get_output_embeddings().weight
    others = [i for i in range(50) if i not in rows]
    assert not torch.equal(head[rows], base_head[rows]) and torch.equal(head[others], base_head[others])
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    hf = tuned.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)[0, ids.shape[1]:]

    llm = LLM(model=str(out), enforce_eager=True, kv_cache_memory_bytes=64 * 2**20, dtype="float32",
              max_model_len=256, seed=0)
    got = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=12, temperature=0))[0].outputs[0]
    assert len(got.token_ids) == 12
    assert list(got.token_ids) == hf.tolist()
