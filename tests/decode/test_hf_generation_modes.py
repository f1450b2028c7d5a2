"""cull inside HF's real generation modes on stories260K, under an adversary: assisted decoding with
an assistant model (which calls the same processor on its own rows), prompt lookup (whose
candidates copy the prompt, which holds the phrases), beam search, and `output_logits=True`
(which must return the model's raw logits, without cull's -inf).

The adversary is a logits processor placed before cull that pushes every token continuing a banned
phrase (whatever the case) to the top, so greedy decoding writes the phrase unless cull stops it.
Each test first shows that the adversary alone does write a phrase. The check is `cull.find` on
the generated text."""
import pytest
import torch

import cull

from conftest import need_data

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

PHRASES = ["Once upon a time", "little girl", "very happy"]
PROMPTS = ["", "One day, a little", "Once upon a time, there was a little girl. She was very happy"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stories():
    folder = need_data("models", "stories260K")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assistant = AutoModelForCausalLM.from_pretrained(folder).eval()  # a second copy
    return model, assistant, tok


class Adversary:
    """Boosts each token whose text continues a banned phrase from the row's current text."""

    def __init__(self, tok, prompt_len: int):
        self.tok = tok
        self.prompt_len = prompt_len
        self.pieces = [p.replace("\u2581", " ") if not p.startswith("<") else ""
                       for p in tok.convert_ids_to_tokens(list(range(len(tok))))]
        self.targets = [p.lower() for p in PHRASES]

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for r, row in enumerate(input_ids.tolist()):
            text = self.tok.decode(row[self.prompt_len:], skip_special_tokens=True).lower()
            for target in self.targets:
                if text.endswith(target):  # written: end the word so that it counts
                    for t, piece in enumerate(self.pieces):
                        if piece[:1] in (" ", ".", ","):
                            scores[r, t] += 50.0
                    continue
                for k in range(len(target) - 1, -1, -1):  # the longest written start of the phrase
                    if text.endswith(target[:k]) and (k or not text[-1:].isalnum()):
                        rest = target[k:]
                        for t, piece in enumerate(self.pieces):
                            p = piece.lower()
                            if p.strip() and (rest.startswith(p.lstrip()) if k == 0 else rest.startswith(p)):
                                scores[r, t] += 50.0
                        break
        return scores


def run(model, tok, prompt, procs, **kw):
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), logits_processor=procs,
                         max_new_tokens=24, pad_token_id=0, **kw)
    seqs = out.sequences if hasattr(out, "sequences") else out
    texts = [tok.decode(s[ids.shape[1]:], skip_special_tokens=True) for s in seqs]
    return ids.shape[1], out, texts


def leaks(texts):
    return [(t, [m.rule.phrase for m in cull.find(t, PHRASES)]) for t in texts if cull.find(t, PHRASES)]


MODES = {
    "assistant_model": lambda m, a: {"assistant_model": a, "do_sample": False},
    "assistant_model_sampling": lambda m, a: {"assistant_model": a, "do_sample": True, "top_k": 0},
    "prompt_lookup": lambda m, a: {"prompt_lookup_num_tokens": 3, "do_sample": False},
    "beam_search": lambda m, a: {"num_beams": 3, "num_return_sequences": 3, "do_sample": False},
    "greedy": lambda m, a: {"do_sample": False},
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("prompt", PROMPTS)
def test_no_phrase_under_the_adversary(stories, mode, prompt):
    model, assistant, tok = stories
    kw = MODES[mode](model, assistant)
    n_prompt = len(tok(prompt)["input_ids"])
    torch.manual_seed(0)
    _, _, free = run(model, tok, prompt, [Adversary(tok, n_prompt)], **kw)
    assert leaks(free), f"the adversary alone wrote no phrase ({mode}): {free}"
    for seed in range(2 if kw.get("do_sample") else 1):
        torch.manual_seed(seed)
        proc = cull.CullLogitsProcessor(PHRASES, tok)
        _, _, texts = run(model, tok, prompt, [Adversary(tok, n_prompt), proc], **kw)
        assert not leaks(texts), (mode, prompt, leaks(texts))


def test_reused_processor_across_modes(stories):
    """One processor through assisted, prompt-lookup, beam and greedy calls in turn."""
    model, assistant, tok = stories
    proc = cull.CullLogitsProcessor(PHRASES, tok)
    for prompt in PROMPTS:
        n_prompt = len(tok(prompt)["input_ids"])
        for mode, make in MODES.items():
            torch.manual_seed(1)
            _, _, texts = run(model, tok, prompt, [Adversary(tok, n_prompt), proc], **make(model, assistant))
            assert not leaks(texts), (mode, prompt, leaks(texts))


@pytest.mark.parametrize("mode", ["greedy", "beam_search", "assistant_model"])
def test_output_logits_are_raw(stories, mode):
    """`output_logits=True` returns the model's logits untouched; `output_scores` shows cull's bans."""
    model, assistant, tok = stories
    kw = MODES[mode](model, assistant)
    proc = cull.CullLogitsProcessor(PHRASES, tok)
    _, out, texts = run(model, tok, "", [Adversary(tok, 1), proc], output_logits=True, output_scores=True,
                        return_dict_in_generate=True, **kw)
    assert not leaks(texts)
    assert all(torch.isfinite(x).all() for x in out.logits), "cull's -inf leaked into the raw logits"
    assert any(torch.isneginf(x).any() for x in out.scores), "cull banned nothing: the test proves nothing"


def test_continuous_batching_api_passes_no_row_history(stories):
    """transformers' continuous batching (generate_batch) builds its processors from the
    GenerationConfig and calls them with the last token of each request (a 1-D tensor), so a
    text processor cannot run there; cull says so instead of guessing."""
    model, _, tok = stories
    assert hasattr(model, "generate_batch")
    proc = cull.CullLogitsProcessor(PHRASES, tok)
    with pytest.raises(cull.CullError, match=r"expected input_ids \[B, L\]"):
        proc(torch.tensor([5, 6]), torch.zeros(2, len(tok)))
