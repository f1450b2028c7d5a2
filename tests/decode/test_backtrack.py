"""The backtracking generator on a real model (stories260K): a completed match is rewound to the token
that started it, so neither the phrase nor a stub of it stays; general regexes are enforced; the
stream only ever emits final text; a bias is applied once, then accepted."""
import re

import pytest
import torch

import cull
from cull.decode.backtrack import generate_backtracking
from conftest import need_data


@pytest.fixture(scope="module")
def stories():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = need_data("models", "stories260K")
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def plain_greedy(model, tok, n):
    ids = torch.tensor([[tok.bos_token_id]])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    return out[0, 1:].tolist()


def test_greedy_rewinds_past_the_phrase(stories):
    model, tok = stories
    base = plain_greedy(model, tok, 30)
    assert "once upon a time" in tok.decode(base).lower()  # what the model writes on its own
    pieces = []
    r = generate_backtracking(model, tok, [tok.bos_token_id], ["Once upon a time"], max_new_tokens=30,
                              do_sample=False, stream=pieces.append)
    assert not cull.find(r.text, cull.PhraseSet(["Once upon a time"]))
    assert r.backtracks >= 1 and r.events[0]["rule"] == "Once upon a time"
    assert r.token_ids[0] != base[0]  # rewound to the token that wrote "Once": no stub is left
    assert "".join(pieces) == r.text  # the stream emitted exactly the final text
    if r.backtracks == 1 and r.events[0]["token_index"] == 0:  # equals greedy with that one token forbidden
        def forbid_first(input_ids, scores):
            if input_ids.shape[1] == 1:
                scores[:, base[0]] = float("-inf")
            return scores

        out = model.generate(torch.tensor([[tok.bos_token_id]]), max_new_tokens=30, do_sample=False,
                             logits_processor=[forbid_first], pad_token_id=tok.eos_token_id)
        assert out[0, 1:].tolist() == r.token_ids


@pytest.mark.parametrize("seed", range(4))
def test_general_regex_is_enforced(stories, seed):
    model, tok = stories
    rules = cull.PhraseSet(["re:\\b(Lily|Tim|Ben)\\b", "Once upon a time"])
    r = generate_backtracking(model, tok, [tok.bos_token_id], rules, max_new_tokens=60, do_sample=True,
                              temperature=1.0, seed=seed)
    assert not re.search(r"\b(Lily|Tim|Ben)\b", r.text), r.text
    assert "once upon a time" not in r.text.lower()


def test_bias_is_applied_once_then_accepted(stories):
    model, tok = stories
    base = plain_greedy(model, tok, 20)
    r = generate_backtracking(model, tok, [tok.bos_token_id], cull.PhraseSet(["Once upon a time"], action="bias",
                              bias=-0.01), max_new_tokens=20, do_sample=False)
    assert r.backtracks == 1  # rewound once, the tiny delta did not change the choice, so it stands
    assert r.token_ids == base


def test_gives_up_with_a_clear_error(stories):
    model, tok = stories
    with pytest.raises(cull.CullError, match="gave up after 0 backtracks"):
        generate_backtracking(model, tok, [tok.bos_token_id], ["Once upon a time"], max_new_tokens=30,
                              do_sample=False, max_backtracks=0)


def test_rewound_cache_gives_the_same_logits_as_a_fresh_pass(stories):
    """After a rewind, the model continues from exactly the kept prefix (no stale cache entries)."""
    from transformers import DynamicCache

    from cull.decode.backtrack import _crop

    model, tok = stories
    ids = torch.tensor([[tok.bos_token_id] + tok.encode("Once upon a time there was", add_special_tokens=False)])
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        _crop(cache, 3)
        after = model(input_ids=ids[:, 3:4], past_key_values=cache, use_cache=True).logits[0, -1]
        fresh = model(input_ids=ids[:, :4]).logits[0, -1]
    torch.testing.assert_close(after, fresh, rtol=1e-4, atol=1e-4)
