"""cull in the real vLLM engine (V1 model runner, CPU): a banned phrase the model would write
never appears, other requests in the batch are untouched, 10,000 phrases in one request work, and
64 concurrent requests with distinct lists finish correctly with the matcher cache under its bound."""
import os
import re

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ["CULL_MATCHER_CACHE_MIB"] = "8"  # small, so that 64 distinct lists must evict

import json  # noqa: E402

import pytest  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402

from cull.integrations.vllm import CullLogitsProcessor, live_processors  # noqa: E402
from helpers import DATA, tiny_llama  # noqa: E402

pytestmark = pytest.mark.vllm
PROMPTS = ["The quick brown fox", "Hello world", "Once upon a time", "In the beginning"]


def has(text: str, phrase: str) -> bool:
    """An independent matcher: whole words, any case, any run of whitespace."""
    words = [re.escape(w) for w in phrase.split()]
    return re.search(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", text, re.IGNORECASE) is not None


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    model = tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    return LLM(model=str(model), enforce_eager=True, kv_cache_memory_bytes=64 * 2**20, dtype="float32",
               max_model_len=512, logits_processors=[CullLogitsProcessor], seed=0)


def greedy(n=24, extra=None):
    return SamplingParams(max_tokens=n, temperature=0, extra_args=extra)


def texts(outs):
    return [o.outputs[0].text for o in outs]


def phrase_from(text: str) -> str:
    words = re.findall(r"[A-Za-z]+", text)
    return " ".join(words[1:3])


def test_ban_in_engine_and_neighbours_untouched(llm):
    base = texts(llm.generate(PROMPTS, greedy()))
    phrases = [phrase_from(t) for t in base]
    assert all(has(t, p) for t, p in zip(base, phrases))  # the model really writes them
    params = [greedy(extra={"cull": {"phrases": [phrases[0]]}}), greedy(),
              greedy(extra={"cull_phrases": [phrases[2]], "cull_mode": "ban"}), greedy()]
    out = texts(llm.generate(PROMPTS, params))
    assert not has(out[0], phrases[0]) and not has(out[2], phrases[2])
    assert out[1] == base[1] and out[3] == base[3]


def test_ban_holds_under_sampling(llm):
    base = texts(llm.generate(PROMPTS[:1], greedy()))
    phrase = phrase_from(base[0])
    params = [SamplingParams(max_tokens=24, temperature=0.7, seed=s, extra_args={"cull": {"phrases": [phrase]}})
              for s in range(16)]
    assert not any(has(t, phrase) for t in texts(llm.generate(PROMPTS[:1] * 16, params)))


def test_ten_thousand_phrases_in_one_request(llm):
    base = texts(llm.generate(PROMPTS[:1], greedy()))
    phrase = phrase_from(base[0])
    full = json.loads((DATA / "phrases/antislop/slop_phrase_prob_adjustments_full_list.json").read_text())
    phrases = [p for p, _ in full[:9_999]] + [phrase]
    out = texts(llm.generate(PROMPTS[:1], greedy(extra={"cull": {"phrases": phrases}})))
    assert not any(has(out[0], p) for p in [phrase] + phrases[:200])
    with pytest.raises(Exception, match="(?i)bad.?words"):  # vLLM's own bad_words stops at 128
        llm.generate(PROMPTS[:1], SamplingParams(max_tokens=4, bad_words=[p for p, _ in full[:129]]))


def test_64_concurrent_distinct_lists(llm):
    prompts = [f"Story number {i}: the" for i in range(64)]
    base = texts(llm.generate(prompts, greedy(16)))
    phrases = [phrase_from(t) for t in base]
    lists = [[p, f"filler{i} word"] for i, p in enumerate(phrases)]  # 64 distinct lists
    proc = next(p for p in live_processors() if isinstance(p, CullLogitsProcessor))
    compiles0 = proc.engine.cache.compiles
    out = texts(llm.generate(prompts, [greedy(16, {"cull": {"phrases": lst}}) for lst in lists]))
    assert not any(has(t, p) for t, p in zip(out, phrases) if p.strip())
    cache = proc.engine.cache
    assert cache.compiles - compiles0 == 64
    one = max(matcher_mib for matcher_mib in [cache.mib() / max(len(cache), 1)])
    assert cache.mib() <= cache.max_mib + one  # the bound holds (it keeps at least the newest list)
    assert len(cache) < 64
