"""The Model Runner V2 processor against vLLM's real V2 classes (LogitsProcRequestState,
LogitsContext) on CPU: request slots recycled through a free list, rows reordered every step,
tokens read from the runner's all_token_ids. (The V2 runner itself needs Triton, which the CPU
engine does not have, so the classes are driven directly.)"""
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsContext, LogitsProcRequestState

import cull
from cull.integrations.vllm import CullLogitsProcessorV2
from cull.kernels import apply_rules
from helpers import VOCAB, fake_vllm_config, gpt2_tokenizer

pytestmark = pytest.mark.vllm
LISTS = [None, ["delve"], ["a testament to", "tapestry"]]
MAX_REQS, MAX_LEN = 6, 96


def test_v2_processor_matches_reference():
    rng = random.Random(0)
    tok = gpt2_tokenizer()
    matchers = {tuple(p): cull.compile_rules(cull.PhraseSet(p), tok, vocab_size=VOCAB) for p in LISTS if p}
    spell = {p: tok.encode(" " + " ".join(p)) for p in matchers}
    history = torch.zeros(MAX_REQS, MAX_LEN, dtype=torch.int32)
    prompt_len = np.zeros(MAX_REQS, np.int32)
    states = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=MAX_REQS, vocab_size=VOCAB,
                                    all_token_ids=SimpleNamespace(gpu=history), prompt_len=SimpleNamespace(np=prompt_len),
                                    prefill_len=SimpleNamespace(np=prompt_len.copy()), total_len=SimpleNamespace(gpu=None))
    proc = CullLogitsProcessorV2(fake_vllm_config(), states)
    live: dict[int, dict] = {}
    acted = 0
    for step in range(50):
        for s in [s for s in live if rng.random() < 0.1]:  # finished requests free their slots
            del live[s]
        for s in range(MAX_REQS):
            if s not in live and rng.random() < 0.5:
                phrases = rng.choice(LISTS)
                inc = phrases is not None and rng.random() < 0.3
                prompt = tok.encode(rng.choice([" It was a", " we", " delve"]))
                extra = {"cull": {"phrases": phrases, "include_prompt": inc}} if phrases else {}
                assert proc.add_request(s, SamplingParams(extra_args=extra)) == (phrases is not None)
                history[s].fill_(-5)  # the previous occupant's tokens must not leak
                history[s, :len(prompt)] = torch.tensor(prompt)
                prompt_len[s] = len(prompt)
                live[s] = {"phrases": phrases, "inc": inc, "tokens": list(prompt), "plen": len(prompt)}
        if not live:
            continue
        order = rng.sample(sorted(live), len(live))  # rows are reordered every step
        for s in order:  # this step's input token: committed before, or only in input_ids
            r = live[s]
            if r["phrases"] and rng.random() < 0.7:
                seq = spell[tuple(r["phrases"])]
                t = seq[(len(r["tokens"]) - r["plen"]) % len(seq)]
            else:
                t = rng.randrange(VOCAB)
            if len(r["tokens"]) > r["plen"] or rng.random() < 0.5:
                r["tokens"].append(t)
        lens = np.array([len(live[s]["tokens"]) for s in order])
        for s in order:
            n = len(live[s]["tokens"])
            history[s, :n - 1] = torch.tensor(live[s]["tokens"][:n - 1])
            history[s, n - 1] = -7  # poisoned: the sampled position comes from input_ids
        idx = torch.tensor(order)
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(order),
                            expanded_local_pos=torch.zeros(len(order), dtype=torch.int32),
                            input_ids=torch.tensor([live[s]["tokens"][-1] for s in order]),
                            pos=torch.tensor(lens - 1), seq_lens_upper_bound_np=lens)
        logits = torch.randn(len(order), VOCAB)
        want = logits.clone()
        for i, s in enumerate(order):
            r = live[s]
            if r["phrases"]:
                m = matchers[tuple(r["phrases"])]
                toks = r["tokens"] if r["inc"] else r["tokens"][r["plen"]:]
                st = m.advance_many(m.initial_state(), toks)
                apply_rules(want[i:i + 1], torch.tensor([st[0]]), torch.tensor([st[1]]), m.device_tables("cpu"),
                            backend="reference")
        got = proc.apply(logits.clone(), ctx)
        assert torch.equal(got, want), f"step {step}"
        acted += int((want != logits).any(1).sum())
    assert acted > 0


def test_v2_rejects_speculative_rows():
    proc = CullLogitsProcessorV2(fake_vllm_config(), SimpleNamespace(all_token_ids=None, prompt_len=None))
    proc.add_request(0, SamplingParams(extra_args={"cull": {"phrases": ["delve"]}}))
    ctx = SimpleNamespace(idx_mapping_np=np.array([0]))
    with pytest.raises(cull.CullError, match="speculative decoding"):
        proc.apply(torch.zeros(3, VOCAB), ctx)
