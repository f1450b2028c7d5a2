"""Row states under every way HF calls a processor (cull/decode/row_states.py): decode steps, beam reordering,
rows joining and leaving, first calls mid-generation, and assisted decoding (the assistant and the
main model call the same processor; the main model's calls jump ahead, then roll back to the
accepted prefix). Each call's scores are checked against the truth: the state of each row computed
from scratch over its own generated text (its scope). The device path (Triton, under
TRITON_INTERPRET=1 on the CPU) must give the same scores, and resolve only the unusual calls on
the host."""
import os
import random

import numpy as np
import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"
import triton  # noqa: E402,F401

import cull  # noqa: E402
from cull.kernels import apply_rules  # noqa: E402

from randomized import build  # noqa: E402


class Truth:
    """Expected scores: every row's state from scratch over its own tokens after its scope start."""

    def __init__(self, matcher, include_prompt):
        self.matcher = matcher
        self.include_prompt = include_prompt

    def __call__(self, ids: torch.Tensor, scopes: list[int], scores: torch.Tensor) -> torch.Tensor:
        m = self.matcher
        states = [m.advance_many(m.initial_state(), row[0 if self.include_prompt else s:].tolist())
                  for row, s in zip(ids, scopes)]
        out = scores.clone()
        apply_rules(out, torch.tensor([s[0] for s in states]), torch.tensor([s[1] for s in states]),
                    m.device_tables("cpu"), "reference")
        return out


def processors(matcher, include_prompt):
    return {
        "host": cull.CullLogitsProcessor(matcher, include_prompt=include_prompt, backend="torch", device_state=False),
        "device-triton": cull.CullLogitsProcessor(matcher, include_prompt=include_prompt, backend="triton",
                                                  device_state=True),
        "device-torch": cull.CullLogitsProcessor(matcher, include_prompt=include_prompt, backend="torch",
                                                 device_state=True),
    }


def check_call(procs, truth, ids, scopes, V, counter):
    scores = torch.randn(ids.shape[0], V)
    want = truth(ids, scopes, scores)
    for name, p in procs.items():
        before = scores.clone()
        got = p(ids, scores)
        assert torch.equal(scores, before), f"{name} changed its input"
        assert torch.equal(got, want), (name, ids.tolist(), scopes)
    counter[0] += int((want != scores).sum())


def spell_tokens(vocab, rules):
    """Tokens that spell the first phrase the vocabulary's one-character tokens can write."""
    index = {t: i for i, t in enumerate(vocab)}
    phrases = [r.phrase.lower() for r in rules.rules]
    target = next((p for p in phrases if all(ch in index for ch in p)), phrases[0])
    return [index[" "]] + [index[ch] for ch in target if ch in index]


def pick(rng, spell, k, n_tok):
    return spell[k % len(spell)] if rng.random() < 0.85 else rng.randrange(n_tok)


@pytest.mark.parametrize("seed", [0, 1] + [pytest.param(s, marks=pytest.mark.slow) for s in range(2, 8)])
@pytest.mark.parametrize("include_prompt", [False, True])
def test_assisted_decoding_pattern(seed, include_prompt):
    """B=1: the assistant proposes k tokens (calls at c .. c+k-1), the main model scores c .. c+k,
    accepts m of them and adds its own token; the next round starts at c+m+1."""
    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 50, rng.randint(1, 4), bias=seed % 2 == 1, split_chars=False)
    procs, truth = processors(matcher, include_prompt), Truth(matcher, include_prompt)
    spell = spell_tokens(vocab, rules)
    changed = [0]
    for _generation in range(2):  # a second generate() on the same processors
        prompt = [rng.randrange(len(vocab)) for _ in range(rng.randint(2, 6))]
        seq, scope = list(prompt), len(prompt)
        for _round in range(10):
            c = len(seq)
            k = rng.randint(1, 5)
            cand = seq + [pick(rng, spell, c + i, len(vocab)) for i in range(k)]
            for i in range(k):  # the assistant calls the same processor on its own rows
                check_call(procs, truth, torch.tensor([cand[:c + i]]), [scope], len(tb), changed)
            for i in range(k + 1):  # the main model scores every candidate position
                check_call(procs, truth, torch.tensor([cand[:c + i]]), [scope], len(tb), changed)
            m = rng.randint(0, k)
            seq = cand[:c + m] + [pick(rng, spell, c + m, len(vocab))]
    assert changed[0] > 0
    dev = procs["device-triton"]._device_rows
    assert 0 < dev.host_steps < 60  # the unusual calls went to the host, the +1 steps did not


@pytest.mark.parametrize("seed", [0, 1] + [pytest.param(s, marks=pytest.mark.slow) for s in range(2, 6)])
@pytest.mark.parametrize("include_prompt", [False, True])
def test_rows_join_leave_reorder(seed, include_prompt):
    """Beams reordered and duplicated, rows leaving, and new rows joining (whose whole content is
    their prompt), in calls of one common length as HF's padded batches have."""
    rng = random.Random(100 + seed)
    vocab, tb, special, rules, matcher = build(rng, 50, rng.randint(1, 4), bias=seed % 2 == 0, split_chars=False)
    procs, truth = processors(matcher, include_prompt), Truth(matcher, include_prompt)
    spell = spell_tokens(vocab, rules)
    L0 = rng.randint(1, 4)
    rows = [[rng.randrange(len(vocab)) for _ in range(L0)] for _ in range(3)]
    scopes = [L0] * 3
    changed = [0]
    for step in range(30):  # several passes over the phrase's spelling
        check_call(procs, truth, torch.tensor(rows), scopes, len(tb), changed)
        event = rng.random()
        if event < 0.3:  # beam search: rows permuted and duplicated
            order = [rng.randrange(len(rows)) for _ in rows]
            rows, scopes = [list(rows[i]) for i in order], [scopes[i] for i in order]
        elif event < 0.45 and len(rows) > 1:  # a row leaves
            j = rng.randrange(len(rows))
            rows.pop(j), scopes.pop(j)
        L = len(rows[0]) + 1
        rows = [r + [pick(rng, spell, step, len(vocab))] for r in rows]
        if rng.random() < 0.3:  # a row joins with a prompt of the batch's length
            rows.append([rng.randrange(len(vocab)) for _ in range(L)])
            scopes.append(L)
    assert changed[0] > 0


@pytest.mark.parametrize("include_prompt", [False, True])
def test_first_call_mid_generation_and_batch_rollback(include_prompt):
    """A processor first called mid-generation reads everything so far as prompt; then the whole
    batch jumps ahead by three tokens and rolls back by two, as a speculative loop would."""
    rng = random.Random(7)
    vocab, tb, special, rules, matcher = build(rng, 50, 3, bias=False, split_chars=False)
    procs, truth = processors(matcher, include_prompt), Truth(matcher, include_prompt)
    spell = spell_tokens(vocab, rules)
    rows = [[pick(rng, spell, k, len(vocab)) for k in range(9)] for _ in range(2)]
    scopes = [9, 9]
    changed = [0]
    for _ in range(8):
        check_call(procs, truth, torch.tensor(rows), scopes, len(tb), changed)
        ahead = [r + [pick(rng, spell, len(r) + i, len(vocab)) for i in range(3)] for r in rows]
        for i in range(1, 4):  # scores for three speculative positions
            check_call(procs, truth, torch.tensor([r[:len(rows[0]) + i] for r in ahead]), scopes, len(tb), changed)
        n = len(rows[0])
        rows = [r[:n + 1] + [pick(rng, spell, n + 1, len(vocab))] for r in ahead]  # accept one, add one
    assert changed[0] > 0


def test_prompt_is_scope_after_bos_only_generation():
    """The case "length grew by one" got wrong: after the first call's rows, a new call whose rows
    extend no row of the last call starts a new generation even if one of them repeats an old row."""
    rng = random.Random(3)
    vocab, tb, special, rules, matcher = build(rng, 40, 2, bias=False, split_chars=False)
    proc = cull.CullLogitsProcessor(matcher, backend="torch", device_state=False)
    truth = Truth(matcher, False)
    spell = spell_tokens(vocab, rules)
    gen = [0] + spell  # generation 1: BOS-like token 0, then spells the phrase (banned along the way)
    for k in range(1, len(gen) + 1):
        proc(torch.tensor([gen[:k]]), torch.randn(1, len(tb)))
    # generation 2: a batch of a fresh prompt and one that repeats a row generation 1 wrote
    fresh = [1] * (len(spell))
    batch = torch.tensor([fresh, gen[:len(spell)]])
    scores = torch.randn(2, len(tb))
    assert torch.equal(proc(batch, scores), truth(batch, [len(spell)] * 2, scores))


def test_cache_is_bounded():
    rng = random.Random(1)
    vocab, tb, special, rules, matcher = build(rng, 30, 2, bias=False, split_chars=False)
    proc = cull.CullLogitsProcessor(matcher, backend="torch", device_state=False)
    for _ in range(100):  # 100 calls of 64 new rows: more than the 4096 rows kept
        proc(torch.randint(0, len(vocab), (64, rng.randint(2, 6))), torch.zeros(64, len(tb)))
    assert len(proc._host_rows) == proc._host_rows.max_rows == 4096
    dev = cull.CullLogitsProcessor(matcher, backend="torch", device_state=True)
    dev(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, len(tb)))
    dev._device_rows.history = type(dev._device_rows.history)(maxlen=8)  # the real bound is 256 calls
    for L in range(2, 30):
        dev(torch.zeros(1, L, dtype=torch.long), torch.zeros(1, len(tb)))
    assert len(dev._device_rows.history) == 8


def test_row_hashes_equal_the_kernels():
    """The host's copy of the kernel's row hash (used to resolve unusual calls) is the same number."""
    from cull.decode.device_rows import row_hashes

    rng = random.Random(2)
    vocab, tb, special, rules, matcher = build(rng, 30, 2, bias=False, split_chars=False)
    dev = cull.CullLogitsProcessor(matcher, backend="triton", device_state=True)
    ids = torch.tensor([[rng.randrange(len(vocab)) for _ in range(70)] for _ in range(3)])
    dev(ids, torch.zeros(3, len(tb)))
    assert np.array_equal(dev._device_rows.prev[0].numpy(), row_hashes(ids.numpy()))
