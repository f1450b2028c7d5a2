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


def v2_setup():
    """A V2 processor over vLLM's real LogitsProcRequestState, and the reference's matchers."""
    tok = gpt2_tokenizer()
    matchers = {tuple(p): cull.compile_rules(cull.PhraseSet(p), tok, vocab_size=VOCAB) for p in LISTS if p}
    spell = {p: tok.encode(" " + " ".join(p)) for p in matchers}
    history = torch.zeros(MAX_REQS, MAX_LEN, dtype=torch.int32)
    prompt_len = np.zeros(MAX_REQS, np.int32)
    states = LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=MAX_REQS, vocab_size=VOCAB,
                                    all_token_ids=SimpleNamespace(gpu=history), prompt_len=SimpleNamespace(np=prompt_len),
                                    prefill_len=SimpleNamespace(np=prompt_len.copy()), total_len=SimpleNamespace(gpu=None))
    return tok, matchers, spell, history, prompt_len, CullLogitsProcessorV2(fake_vllm_config(), states)


def test_v2_processor_matches_reference():
    rng = random.Random(0)
    tok, matchers, spell, history, prompt_len, proc = v2_setup()
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


@pytest.mark.parametrize("seed", range(3))
def test_v2_speculative_rows_match_reference(seed):
    """Model Runner V2 keeps custom processors on under speculative decoding, one row per draft
    token: each row's state is its request's committed state advanced over the drafts before it.
    Random drafts, random acceptance, rows shuffled across requests, slots recycled."""
    rng = random.Random(100 + seed)
    tok, matchers, spell, history, prompt_len, proc = v2_setup()
    live: dict[int, dict] = {}
    acted = 0

    def next_token(r):
        if r["phrases"] and rng.random() < 0.7:
            seq = spell[tuple(r["phrases"])]
            return seq[rng.randrange(len(seq))]
        return rng.randrange(VOCAB)

    for step in range(40):
        for s in [s for s in live if rng.random() < 0.1 or len(live[s]["tokens"]) > MAX_LEN - 8]:
            del live[s]
        for s in range(MAX_REQS):
            if s not in live and rng.random() < 0.5:
                phrases = rng.choice(LISTS)
                inc = phrases is not None and rng.random() < 0.3
                prompt = tok.encode(rng.choice([" It was a", " we", " delve"]))
                extra = {"cull": {"phrases": phrases, "include_prompt": inc}} if phrases else {}
                proc.add_request(s, SamplingParams(extra_args=extra))
                history[s].fill_(-5)
                history[s, :len(prompt)] = torch.tensor(prompt)
                prompt_len[s] = len(prompt)
                live[s] = {"phrases": phrases, "inc": inc, "tokens": list(prompt), "plen": len(prompt)}
        if not live:
            continue
        order = rng.sample(sorted(live), len(live))
        rows = []  # (slot, local position, input token, tokens before the sampled one)
        for s in order:
            r = live[s]
            n = len(r["tokens"])
            history[s, :n - 1] = torch.tensor(r["tokens"][:n - 1])
            history[s, n - 1] = -7  # the first row's input comes from input_ids only
            r["drafts"] = [next_token(r) for _ in range(rng.randint(0, 3))]
            for j in range(len(r["drafts"]) + 1):
                ctx_tokens = r["tokens"] + r["drafts"][:j]
                rows.append((s, j, ctx_tokens[-1], ctx_tokens))
        rng.shuffle(rows)
        idx = torch.tensor([s for s, _, _, _ in rows])
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=torch.tensor(order), idx_mapping_np=np.array(order),
                            expanded_local_pos=torch.tensor([j for _, j, _, _ in rows], dtype=torch.int32),
                            input_ids=torch.tensor([t for _, _, t, _ in rows]),
                            pos=torch.tensor([len(c) - 1 for _, _, _, c in rows]),
                            seq_lens_upper_bound_np=np.array([len(live[s]["tokens"]) + len(live[s]["drafts"])
                                                              for s in order]))
        logits = torch.randn(len(rows), VOCAB)
        want = logits.clone()
        for i, (s, _, _, ctx_tokens) in enumerate(rows):
            r = live[s]
            if r["phrases"]:
                m = matchers[tuple(r["phrases"])]
                toks = ctx_tokens if r["inc"] else ctx_tokens[r["plen"]:]
                st = m.advance_many(m.initial_state(), toks)
                apply_rules(want[i:i + 1], torch.tensor([st[0]]), torch.tensor([st[1]]), m.device_tables("cpu"),
                            backend="reference")
        got = proc.apply(logits.clone(), ctx)
        assert torch.equal(got, want), f"step {step}"
        acted += int((want != logits).any(1).sum())
        for s in order:  # verification: a prefix of the drafts is accepted, then one sampled token
            r = live[s]
            r["tokens"] += r["drafts"][:rng.randint(0, len(r["drafts"]))] + [next_token(r)]
    assert acted > 0


def test_v2_failure_inside_apply_serves_rows_closed_not_raises(monkeypatch):
    """Whatever fails inside apply is logged and the request's rows are served closed (only
    special tokens stay open, so it ends with EOS); the engine never sees an exception."""
    history = torch.zeros(2, 16, dtype=torch.int32)
    plen = np.zeros(2, np.int32)
    states = SimpleNamespace(device=torch.device("cpu"), all_token_ids=SimpleNamespace(gpu=history),
                             prompt_len=SimpleNamespace(np=plen))
    proc = CullLogitsProcessorV2(fake_vllm_config(), states)
    proc.add_request(0, SamplingParams(extra_args={"cull": {"phrases": ["delve"]}}))
    monkeypatch.setattr(proc, "_catch_up", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    ctx = SimpleNamespace(idx_mapping_np=np.array([1, 0]), expanded_idx_mapping=torch.tensor([1, 0]))
    out = proc.apply(torch.zeros(2, VOCAB), ctx)
    assert torch.equal(out[0], torch.zeros(VOCAB))  # the plain request is untouched
    assert out[1, 50256] == 0 and (out[1] == float("-inf")).sum() == VOCAB - 1  # only EOS left
