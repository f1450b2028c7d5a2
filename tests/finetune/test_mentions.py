"""Mention contexts (cull.finetune.mentions): prompts that name a phrase, answered with the processor
on; kept where the processor stepped in, and measured where the base wanted the phrase."""
import numpy as np
import pytest
import torch

import cull
from conftest import need_data
from cull.finetune.records import RetainExample


@pytest.fixture(scope="module")
def stories():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = need_data("models", "stories260K")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_prompts_name_each_literal_phrase_and_validation_uses_another_template():
    from cull.finetune.mentions import TEMPLATES, mention_prompts
    from cull.finetune.spellings import spelling_forms

    rules = cull.PhraseSet(["time traveler", "shimmering", "re:fo+", cull.Rule("tapestry", action=cull.BIAS, delta=-2)])
    train, val = mention_prompts(rules, 2, seed=3)
    assert len(train) == 4 and len(val) == 2  # no prompt for the regex or the bias rule
    for k, phrase in enumerate(["time traveler", "shimmering"]):
        pair, held = train[2 * k:2 * k + 2], val[k]
        assert all(phrase in p.lower() for p in pair + [held])
        forms = spelling_forms(phrase, True)
        shapes = [next(i for i, t in enumerate(TEMPLATES) if any(t.format(phrase=f) == p for f in forms))
                  for p in pair + [held]]
        assert len(set(shapes)) == 3, (pair, held)  # three different templates: validation is held out
    assert mention_prompts(rules, 2, seed=3) == (train, val)  # seeded
    exact = cull.PhraseSet(["Time Traveler"], ignore_case=False)
    assert all("Time Traveler" in p for p in sum(mention_prompts(exact, 3, seed=0), []))
    assert len(mention_prompts(rules, 9, seed=0)[0]) == 2 * (len(TEMPLATES) - 1)  # one template stays for validation


def test_nameable_phrases_and_the_prompt_bound():
    from cull.finetune import FinetuneConfig
    from cull.finetune.mentions import MAX_PROMPTS, nameable

    listed = ["time traveler", "Time Traveler", "delv*", "*ness", "tapestry"]
    assert nameable(cull.PhraseSet(listed)) == ["time traveler", "tapestry"]  # no fragments, one per casefold
    assert nameable(cull.PhraseSet(listed, ignore_case=False)) == ["time traveler", "Time Traveler", "tapestry"]
    FinetuneConfig(mention_prompts=MAX_PROMPTS).check()
    with pytest.raises(cull.CullError, match="at most 3"):
        FinetuneConfig(mention_prompts=MAX_PROMPTS + 1).check()


def test_base_banned_mass_reads_the_stored_top_k():
    from cull.finetune.banned import base_banned_mass
    from cull.finetune.mentions import with_events

    logp = np.log(np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.9, 0.05, 0.05]], dtype=np.float32))
    r = RetainExample([1, 2, 3, 4], [1, 2, 3], np.array([[5, 6, 7], [1, 2, 3], [8, 9, 4]]), logp.astype(np.float16))
    r.banned = [(6, 7), (), (11,)]  # 11 is not in the base's top K: no mass the base gave it
    assert base_banned_mass(r) == pytest.approx([0.5, 0.0, 0.0], abs=1e-3)
    quiet = RetainExample([1, 2], [1], np.array([[5, 6, 7]]), logp[:1].astype(np.float16))
    quiet.banned = [(12,)]
    assert with_events([r, quiet]) == [r]


def test_mention_contexts_on_stories(stories):
    """Replies to prompts that name "little" (a word stories260K writes everywhere), sampled with the
    processor on, never write it; the processor stepped in on every kept reply; and `mention_mass`
    equals the plain per-sequence computation."""
    from cull.finetune import FinetuneConfig
    from cull.finetune.banned import EVENT_MASS, attach_banned, base_banned_mass
    from cull.finetune.mentions import mention_contexts, mention_prompts, with_events
    from cull.finetune.steps import mention_mass
    from cull.decode.processor import CullLogitsProcessor

    model, tok = stories
    rules = cull.PhraseSet(["little"])
    cfg = FinetuneConfig(max_new_tokens=24, gen_batch_size=8, chat=False)
    train, val = mention_prompts(rules, 3, seed=0)
    proc = CullLogitsProcessor(rules, tok, vocab_size=model.config.vocab_size)
    ex = mention_contexts(model, tok, rules, (train + val) * 4, proc, cfg, top=32, seed=1)
    assert len(ex) == 16
    attach_banned(ex, rules, tok, model.config.vocab_size)
    kept = with_events(ex)
    assert kept, "stories260K should want to write the word"
    for r in kept:
        assert not cull.find(tok.decode(r.ids[r.start:], skip_special_tokens=True), rules)
        assert r.positions == list(range(r.start, len(r.ids)))
    with torch.no_grad():
        want = []
        for r in kept:
            p = torch.softmax(model(torch.tensor([r.ids])).logits[0, [q - 1 for q in r.positions]], -1)
            for k, (ban, base) in enumerate(zip(r.banned, base_banned_mass(r))):
                if base >= EVENT_MASS:
                    want.append(float(p[k, list(ban)].sum()))
        got = mention_mass(model, kept, 0, "cpu", batch_size=3)
    assert got == pytest.approx(sum(want) / len(want), abs=1e-5)
    assert got > 0.05  # the base itself: a real signal to train on


def test_finetune_reports_and_trains_mention_contexts(tmp_path, stories):
    """With the defaults the run builds mention contexts, reports their validation figure and lowers it."""
    import copy

    from cull.finetune import FinetuneConfig, LossWeights, finetune

    model, tok = stories
    cfg = FinetuneConfig(steps=12, lr=1e-2, n_samples=16, max_new_tokens=16, checkpoint_every=0, eval_every=12,
                         val_samples=0, spelling_contexts=0, mention_prompts=3, chat=False,
                         weights=LossWeights(kl=1.0))
    said = []
    s = finetune(copy.deepcopy(model), tok, ["little"], ["", "One day", "Tom", "The sun"], tmp_path, cfg,
                 progress=False, say=said.append)
    assert any(m.startswith("Mention contexts: ") and not m.startswith("Mention contexts: 0 ") for m in said), said
    before, after = s["validation_base"]["mention_mass"], s["rounds"][0]["checks"][-1]["mention_mass"]
    assert after < 0.5 * before, (before, after)
    off = FinetuneConfig(**{**cfg.__dict__, "mention_prompts": 0})
    s = finetune(copy.deepcopy(model), tok, ["little"], [""], tmp_path / "off", off, progress=False,
                 say=said.append)
    assert "mention_mass" not in s["validation_base"]


def test_added_contexts_ban_every_rule_and_are_sampled_once(tmp_path, stories):
    """Round 2 names only the new phrases, but its replies are sampled with every rule banned (text the
    processor-on decoder could not write would teach the wrong target); the replies are saved, and a
    resumed run (or another process) reads them back instead of sampling again."""
    from types import SimpleNamespace

    from cull.finetune import FinetuneConfig
    from cull.finetune.mentions import add_mention_contexts
    from cull.finetune.records import FinetuneData

    model, tok = stories
    rules = cull.PhraseSet(["little", "big"])
    cfg = FinetuneConfig(max_new_tokens=24, gen_batch_size=8, chat=False, mention_prompts=3)
    acc = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)
    data = FinetuneData([], [], {})
    add_mention_contexts(model, tok, rules, data, cfg, model.config.vocab_size, acc=acc, path=tmp_path / "m.json",
                         named=rules.with_rules([rules.rules[1]]))
    assert len(data.mentions) == 3 and len(data.val_mentions) == 16
    texts = [tok.decode(r.ids[r.start:], skip_special_tokens=True) for r in data.mentions + data.val_mentions]
    assert all("big" in tok.decode(r.ids[:r.start]).lower() and "little" not in tok.decode(r.ids[:r.start])
               for r in data.mentions)
    assert not any(cull.find(t, rules) for t in texts)
    said = []
    again = FinetuneData([], [], {})
    add_mention_contexts(None, tok, rules, again, cfg, model.config.vocab_size, acc=acc, path=tmp_path / "m.json",
                         named=rules.with_rules([rules.rules[1]]), say=said.append)  # no model: it must not sample
    assert [r.ids for r in again.mentions + again.val_mentions] == [r.ids for r in data.mentions + data.val_mentions]
    assert said and "read back" in said[0]
    # other settings, or a file a crash cut short: sampled again, never read
    fewer = FinetuneConfig(**{**cfg.__dict__, "mention_prompts": 1})
    other = FinetuneData([], [], {})
    add_mention_contexts(model, tok, rules, other, fewer, model.config.vocab_size, acc=acc, path=tmp_path / "m.json",
                         named=rules.with_rules([rules.rules[1]]))
    assert len(other.mentions) == 1
    (tmp_path / "m.npz").unlink()
    with pytest.raises(AttributeError):  # it tries to sample with the missing model
        add_mention_contexts(None, tok, rules, FinetuneData([], [], {}), fewer, model.config.vocab_size, acc=acc,
                             path=tmp_path / "m.json", named=rules.with_rules([rules.rules[1]]))
    quiet = FinetuneData([], [], {})
    add_mention_contexts(model, tok, rules, quiet, cfg, model.config.vocab_size, acc=acc, path=tmp_path / "q.json",
                         validation=False)
    assert len(quiet.mentions) == 6 and quiet.val_mentions == []
