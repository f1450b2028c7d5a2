"""Device-side row states (Triton, under TRITON_INTERPRET=1 on the CPU) against the host path:
random batches, beam-style row reordering, new generations, prompt scope on and off."""
import os
import random

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"
import triton  # noqa: E402,F401

import cull  # noqa: E402

from randomized import build  # noqa: E402


def drive(proc_host, proc_dev, steps, B, n_tok, V, rng, reorder, spell=()):
    """Random tokens, half of them spelling `spell` (token ids) so that deep states are reached."""
    prompt = torch.tensor([[rng.randrange(n_tok) for _ in range(rng.randint(1, 5))]] * B)
    ids = prompt
    changed = 0
    for _ in range(steps):
        scores = torch.randn(ids.shape[0], V)
        a = proc_host(ids, scores.clone())
        b = proc_dev(ids, scores.clone())
        assert torch.equal(a, b)
        changed += int((a != scores).sum())
        k = ids.shape[1]
        nxt = torch.tensor([[spell[k % len(spell)] if spell and (r == 0 or rng.random() < 0.7)
                             else rng.randrange(n_tok)] for r in range(ids.shape[0])])
        if reorder:  # like beam search: rows are permuted and duplicated
            ids = ids[torch.tensor([rng.randrange(ids.shape[0]) for _ in range(ids.shape[0])])]
        ids = torch.cat([ids, nxt], 1)
    return changed


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("include_prompt", [False, True])
@pytest.mark.parametrize("backend", ["triton", "torch"])  # one fused launch; or states found, torch applies
def test_device_states_equal_host(seed, include_prompt, backend):
    rng = random.Random(seed)
    vocab, tb, special, rules, matcher = build(rng, 50, rng.randint(1, 5), bias=seed % 2 == 1, split_chars=False)
    assert not matcher.pending_possible
    host = cull.CullLogitsProcessor(matcher, include_prompt=include_prompt, backend="torch", device_state=False)
    dev = cull.CullLogitsProcessor(matcher, include_prompt=include_prompt, backend=backend, device_state=True)
    index = {t: i for i, t in enumerate(vocab)}
    spell = [index[" "]] + [index[ch] for ch in rules.rules[0].phrase if ch in index]
    changed = 0
    for call in range(2):  # a second generate() on the same instances
        changed += drive(host, dev, 2 * len(spell) + 2, rng.choice([1, 3, 4]), len(tb), len(tb), rng,
                         reorder=seed % 3 == 0, spell=spell)
    assert changed > 0  # the rules did act on these runs


def test_device_states_token_mode():
    rng = random.Random(5)
    seqs = {(1, 2, 3): float("-inf"), (2, 2): -2.0, (4,): float("-inf")}
    host = cull.token_sequence_processor(seqs, 10, backend="torch")
    host.device_state = False
    dev = cull.token_sequence_processor(seqs, 10, backend="triton")
    dev.device_state = True
    assert drive(host, dev, 12, 3, 10, 10, rng, reorder=True) > 0


def test_device_states_long_prompt_in_scope():
    """A prompt longer than the kernel's hash block, matched from its start (include_prompt)."""
    rng = random.Random(11)
    vocab, tb, special, rules, matcher = build(rng, 50, 3, bias=False, split_chars=False)
    host = cull.CullLogitsProcessor(matcher, include_prompt=True, backend="torch", device_state=False)
    dev = cull.CullLogitsProcessor(matcher, include_prompt=True, backend="triton", device_state=True)
    ids = torch.tensor([[rng.randrange(len(tb)) for _ in range(300)] for _ in range(2)])
    for _ in range(3):
        scores = torch.randn(2, len(tb))
        assert torch.equal(host(ids, scores.clone()), dev(ids, scores.clone()))
        ids = torch.cat([ids, torch.tensor([[rng.randrange(len(tb))], [rng.randrange(len(tb))]])], 1)


def test_split_characters_keep_the_host_path():
    """A vocabulary with tokens that end inside a character: the device state cannot hold the
    unfinished bytes, so device_state=True falls back to the exact host path (same scores)."""
    rng = random.Random(3)
    vocab, tb, special, rules, matcher = build(rng, 60, 3, bias=False, split_chars=True)
    assert matcher.pending_possible
    host = cull.CullLogitsProcessor(matcher, backend="torch", device_state=False)
    dev = cull.CullLogitsProcessor(matcher, backend="triton", device_state=True)
    assert not dev._use_device_state(torch.zeros(1, len(tb)))
    index = {t: i for i, t in enumerate(vocab)}
    spell = [index[" "]] + [index[ch] for ch in rules.rules[0].phrase if ch in index]
    assert drive(host, dev, 12, 3, len(tb), len(tb), rng, reorder=True, spell=spell) > 0
