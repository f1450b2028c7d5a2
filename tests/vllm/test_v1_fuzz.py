"""Fuzz the V1 processor's batch bookkeeping, in the style of vLLM's own
tests/v1/logits_processors/test_correctness.py: random adds, removes, swaps and one-way moves over
many steps, with vLLM's real BatchUpdate, checked every step against the plain reference."""
import random

import pytest
import torch
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

import cull
from cull.integrations.vllm import CullLogitsProcessor
from cull.kernels import apply_rules
from helpers import VOCAB, fake_vllm_config, gpt2_tokenizer

pytestmark = pytest.mark.vllm

# (phrases, bias): bias None is a ban list; several rows often share a list (n >= 2, or two users)
LISTS = [None, (("delve",), None), (("a testament to", "tapestry"), None), (("spotted spotted", "delv*"), None),
         (("a testament to", "tapestry"), -3.0), (("delve", "rich"), -1.5)]


class Req:
    def __init__(self, rng, tok):
        self.key = rng.choice(LISTS)
        self.phrases = list(self.key[0]) if self.key else None
        self.include_prompt = self.phrases is not None and rng.random() < 0.3
        self.prompt = tok.encode(rng.choice([" we", " It was a", " The rich"]))
        self.out: list[int] = []  # the list vLLM hands over and appends to
        extra = {}
        if self.key:
            extra = {"cull": {"phrases": self.phrases, "include_prompt": self.include_prompt}}
            if self.key[1] is not None:
                extra["cull"].update(mode="bias", bias=self.key[1])
        from vllm import SamplingParams

        self.params = SamplingParams(extra_args=extra)


def expected(logits, batch, tok, matchers):
    out = logits.clone()
    for i, req in enumerate(batch):
        if req.phrases is None:
            continue
        m = matchers[req.key]
        st = m.advance_many(m.initial_state(), (req.prompt if req.include_prompt else []) + req.out)
        apply_rules(out[i:i + 1], torch.tensor([st[0]]), torch.tensor([st[1]]), m.device_tables("cpu"),
                    backend="reference")
    return out


@pytest.mark.parametrize("seed", range(3))
def test_random_batch_updates_match_reference(seed):
    rng = random.Random(seed)
    tok = gpt2_tokenizer()
    matchers = {k: cull.compile_rules(cull.PhraseSet(list(k[0]), action="bias" if k[1] else "ban", bias=k[1]), tok,
                                      vocab_size=VOCAB) for k in LISTS if k}
    spell = {k: tok.encode(" " + " ".join(k[0]).replace("*", "e")) for k in matchers}
    proc = CullLogitsProcessor(fake_vllm_config(), torch.device("cpu"), False)
    batch: list[Req] = []
    acted = 0
    for step in range(60):
        removed, added, moved = [], [], []
        for i in sorted(rng.sample(range(len(batch)), k=min(len(batch), rng.randint(0, 2))), reverse=True):
            removed.append(i)
            batch[i] = None
        for _ in range(rng.randint(0, 3) if len(batch) < 12 else 0):
            req = Req(rng, tok)
            holes = [i for i, r in enumerate(batch) if r is None]
            if holes and rng.random() < 0.7:
                i = rng.choice(holes)
            elif batch and rng.random() < 0.2:  # replace a live request without removing it
                i = rng.randrange(len(batch))
            else:
                i = len(batch)
                batch.append(None)
            batch[i] = req
            added.append((i, req.params, req.prompt, req.out))
        live = [i for i, r in enumerate(batch) if r is not None]
        if len(live) >= 2 and rng.random() < 0.5:
            a, b = rng.sample(live, 2)
            batch[a], batch[b] = batch[b], batch[a]
            moved.append((a, b, MoveDirectionality.SWAP))
        while batch and batch[-1] is None:
            batch.pop()
        while None in batch:  # condense as vLLM does: the last request moves into the hole
            hole = batch.index(None)
            last = len(batch) - 1
            batch[hole] = batch.pop()
            moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            while batch and batch[-1] is None:
                batch.pop()
        proc.update_state(BatchUpdate(len(batch), removed, added, moved) if (removed or added or moved) else None)
        for req in batch:  # the tokens the last step sampled: often the next token of a phrase
            if req.phrases and rng.random() < 0.7:
                seq = spell[req.key]
                req.out.append(seq[len(req.out) % len(seq)])
            else:
                req.out.append(rng.randrange(VOCAB))
        # vLLM hands over logits[:, :org_vocab] of a padded vocabulary: a non-contiguous view
        padded = torch.randn(len(batch), VOCAB + 47)
        logits = padded[:, :VOCAB]
        want = expected(logits, batch, tok, matchers)
        orig = logits.clone()
        got = proc.apply(logits)
        assert torch.equal(got, want), f"step {step}"
        acted += int((want != orig).any(1).sum())
    assert acted > 0  # the rules did act on these runs
