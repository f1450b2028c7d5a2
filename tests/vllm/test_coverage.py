"""Where vLLM's own `bad_words` falls short and cull does not, with vLLM's real code: its
tokenization of the bad words (SamplingParams.update_from_tokenizer) and its V1 apply_bad_words."""
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.ops.bad_words import apply_bad_words

from cull.integrations.vllm import CullLogitsProcessor
from helpers import VOCAB, fake_vllm_config, gpt2_tokenizer

pytestmark = pytest.mark.vllm

# (banned word, the text as the model spells it, one token per piece; the last piece completes it)
CASES = [("delve", [" We", " del", "ve"]), ("delve", [" We", " Del", "ve"]), ("delve", [" WE", " DEL", "VE"]),
         ("moreover", [" It", " More", "over"]), ("a testament to", [" is", " a", " test", "ament", " to"])]


def vllm_tokenizer():
    from vllm.tokenizers.registry import get_tokenizer

    from helpers import GPT2

    return get_tokenizer(str(GPT2))


def single_tokens(tok, pieces):
    ids = [tok.encode(p) for p in pieces]
    assert all(len(i) == 1 for i in ids), dict(zip(pieces, ids))
    return [i[0] for i in ids]


@pytest.mark.parametrize("word,pieces", CASES)
def test_cull_bans_what_bad_words_misses(word, pieces):
    tok = gpt2_tokenizer()
    *hist, t = single_tokens(tok, pieces)
    sp = SamplingParams(bad_words=[word])
    sp.update_from_tokenizer(vllm_tokenizer())
    vllm_logits = torch.zeros(1, VOCAB)
    apply_bad_words(vllm_logits, {0: sp.bad_words_token_ids}, [hist])
    assert vllm_logits[0, t] == 0  # vLLM's bad_words lets the token through

    proc = CullLogitsProcessor(fake_vllm_config(), torch.device("cpu"), False)
    params = SamplingParams(extra_args={"cull": {"phrases": [word]}})
    proc.update_state(BatchUpdate(1, [], [(0, params, [], list(hist))], []))
    logits = proc.apply(torch.zeros(1, VOCAB))
    assert logits[0, t] == float("-inf"), f"cull should ban {tok.decode([t])!r} after {tok.decode(hist)!r}"


def test_bad_words_caps_at_128_and_cull_does_not():
    tok = gpt2_tokenizer()
    words = [f"word{i}" for i in range(129)]
    sp = SamplingParams(bad_words=words)
    with pytest.raises(Exception, match="(?i)bad.?words"):
        sp.update_from_tokenizer(vllm_tokenizer())
    proc = CullLogitsProcessor(fake_vllm_config(), torch.device("cpu"), False)
    params = SamplingParams(extra_args={"cull": {"phrases": [f"word{i}" for i in range(10_000)]}})
    CullLogitsProcessor.validate_params(params)
    proc.update_state(BatchUpdate(1, [], [(0, params, [], tok.encode(" word"))], []))
    logits = proc.apply(torch.zeros(1, VOCAB))
    (t99,) = single_tokens(tok, ["99"])
    assert logits[0, t99] == float("-inf")  # " word" + "99" would write "word99", one of the 10,000
