"""Spelling contexts (cull.finetune.spellings): the multi-token spellings of the phrases, placed in
retain samples, end where cull's processor bans; their loss equals one plain forward per sequence."""
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


@pytest.fixture(scope="module")
def gpt2_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(need_data("tokenizers", "gpt2"))


def _hosts(tok, texts):
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    out = []
    for i, t in enumerate(texts):
        ids = bos + tok(t, add_special_tokens=False)["input_ids"]
        out.append(RetainExample(ids, list(range(len(bos) or 1, len(ids))), prompt_index=i, start=len(bos) or 1))
    return out


PHRASE = "Once upon a time"
TEXTS = ["One day, a little girl went to the park with her mom. She saw a big red ball.",
         "Tom had a dog. The dog liked to run and jump in the sun all day long.",
         "The bird sang a song in the tree. Then it flew away to find some food."]


def test_spellings_cover_cases_and_line_starts(gpt2_tok):
    from cull.finetune.spellings import multi_token_spellings

    tok = gpt2_tok
    rules = cull.PhraseSet(["shimmering", "re:fo+", cull.Rule("tapestry", action=cull.BIAS, delta=-2.0)])
    spellings = multi_token_spellings(rules, tok)
    got = {(tok.decode(sp.ids), sp.line_start) for sp in spellings}
    assert all(text.strip().lower() == "shimmering" for text, _ in got)  # no regex or bias rule
    assert (" Shimmering", False) in got and ("Shimmering", True) in got
    assert all(text.startswith(" ") != line for text, line in got)
    assert all(len(sp.ids) >= 2 for sp in spellings)
    # a line start after a blank line is tokenized as one text: GPT-2 writes "\n", "\n", then the word
    blank = next(sp.after_blank_line for sp in spellings if sp.line_start and tok.decode(sp.ids) == "Shimmering")
    assert tok.decode(blank) == "\n\nShimmering" and blank == tok.encode("a\n\nShimmering")[1:]
    exact = cull.PhraseSet(["shimmering"], ignore_case=False)
    assert {tok.decode(sp.ids).strip() for sp in multi_token_spellings(exact, tok)} == {"shimmering"}
    # whole_words=False makes every rule a wildcard; the phrase as a word of its own still counts
    loose = cull.PhraseSet(["shimmering"], whole_words=False)
    assert {tok.decode(sp.ids) for sp in multi_token_spellings(loose, tok)} == {t for t, _ in got}


@pytest.mark.parametrize("which", ["stories", "gpt2"])
def test_contexts_end_on_the_token_the_processor_bans(which, stories, gpt2_tok):
    """Each context is a host's prefix, cut at a word start (or the reply start), then the spelling;
    at its last position the processor bans the token that completes the phrase, and nowhere before."""
    from cull.finetune.banned import attach_banned
    from cull.finetune.spellings import multi_token_spellings, reachable, spelling_hosts

    model, tok = stories
    if which == "gpt2":
        tok = gpt2_tok
    rules = cull.PhraseSet(["once upon a time", "shimmering", "traveler"])
    hosts = _hosts(tok, TEXTS)
    spellings = multi_token_spellings(rules, tok)
    todo = spelling_hosts(tok, spellings, hosts, per_spelling=3, seed=1)
    assert len(todo) == 3 * len(spellings)
    ex = [RetainExample(ids, pos, prompt_index=pi, start=st) for ids, pos, pi, st in todo]
    attach_banned(ex, rules, tok, max(len(tok), model.config.vocab_size))
    assert reachable(ex) == ex
    tails = {tuple(sp.ids) for sp in spellings} | {tuple(sp.after_blank_line) for sp in spellings if sp.line_start}
    for r in ex:
        host = hosts[r.prompt_index].ids
        left = r.ids[:r.positions[0]]
        assert tuple(r.ids[len(left):]) in tails and r.positions == list(range(len(left), len(r.ids)))
        assert left == host[:len(left)] and r.start <= len(left) <= r.start + 32
        if len(left) > r.start:  # cut at a word start: the host's next token began with a space
            before = tok.decode(host[r.start:len(left)], skip_special_tokens=True)
            assert tok.decode(host[r.start:len(left) + 1], skip_special_tokens=True)[len(before)] == " "
        assert r.ids[-1] in r.banned[-1], tok.decode(r.ids[r.start:])
        assert all(r.ids[p] not in b for p, b in zip(r.positions[:-1], r.banned[:-1]))
        assert cull.find(tok.decode(r.ids[r.start:], skip_special_tokens=True), rules)


def test_unreachable_contexts_are_left_out(gpt2_tok):
    """With "testament" and "a testament to" both banned, " a testament to" passes through a banned
    token; the processor could never have written it, so its context is dropped."""
    from cull.finetune.banned import attach_banned
    from cull.finetune.spellings import multi_token_spellings, reachable, spelling_hosts

    tok = gpt2_tok
    rules = cull.PhraseSet(["testament", "a testament to"])
    hosts = _hosts(tok, TEXTS)
    ex = [RetainExample(ids, pos, prompt_index=pi, start=st)
          for ids, pos, pi, st in spelling_hosts(tok, multi_token_spellings(rules, tok), hosts, per_spelling=2)]
    attach_banned(ex, rules, tok, len(tok))
    kept = reachable(ex)
    nested = [r for r in ex if "testament to" in tok.decode(r.ids[r.positions[0]:]).lower()]
    assert nested and not any(r in kept for r in nested)
    assert kept and all("testament to" not in tok.decode(r.ids[r.positions[0]:]).lower() for r in kept)


def test_step_loss_with_spellings_equals_plain_forwards(stories):
    """Spelling contexts forwarded apart from the retain sequences give the loss of one plain forward
    per sequence; they add to the KL and banned-mass terms and not to the MLE one."""
    from cull.finetune import LossWeights
    from cull.finetune.banned import attach_banned, banned_mask
    from cull.finetune.loss import total_loss
    from cull.finetune.spellings import spelling_contexts
    from cull.finetune.steps import retain_top, spelling_mass, step_loss

    model, tok = stories
    rules = cull.PhraseSet(["once upon a time"])
    hosts = _hosts(tok, TEXTS)
    from cull.finetune.examples import build_retain
    from cull.measure.evaluate import Generation

    retain = build_retain(model, tok, [Generation(i, h.ids[:1], h.ids[1:], "") for i, h in enumerate(hosts)],
                          progress=False)
    spell = spelling_contexts(model, tok, rules, hosts, per_spelling=2, seed=0)
    with torch.no_grad():  # the stored top-K is the plain forward's, position by position
        for r in spell:
            full = torch.log_softmax(model(torch.tensor([r.ids])).logits[0, [p - 1 for p in r.positions]], -1)
            vals, idx = full.topk(r.top_ids.shape[1], -1)
            assert torch.allclose(vals, torch.tensor(r.top_logp).float(), atol=5e-3)  # float16 storage
            assert (idx[:, 0].numpy() == r.top_ids[:, 0]).all()
    attach_banned(retain + spell, rules, tok, model.config.vocab_size)
    w = LossWeights(preference=0.0, unlikelihood=0.0, tether=0.0, kl=3.0, ban=5.0, mle=0.5)
    with torch.no_grad():
        got, parts = step_loss(model, [], retain, 0, w, "cpu", spelling=spell)
        both = retain + spell
        rl = torch.cat([model(torch.tensor([r.ids])).logits[0, [p - 1 for p in r.positions]] for r in both])
        top_ids, top_logp = retain_top(both, "cpu")
        ban = banned_mask(both, rl.shape[0], rl.shape[1], "cpu")
        plain_kl_ban, _ = total_loss(None, None, None, None, rl, top_ids, top_logp,
                                     LossWeights(kl=3.0, ban=5.0, mle=0.0), banned=ban)
        n = sum(len(r.positions) for r in retain)
        mle = torch.nn.functional.cross_entropy(rl[:n], torch.tensor([r.ids[p] for r in retain for p in r.positions]))
        assert set(parts) == {"kl", "ban", "mle"}
        assert abs(got.item() - (plain_kl_ban.item() + 0.5 * mle.item())) < 1e-4
        # the validation figure: the banned probability at each context's last position
        last = torch.stack([model(torch.tensor([r.ids])).logits[0, r.positions[-1] - 1] for r in spell])
        p = torch.softmax(last, -1)
        want = sum(float(p[k, list(r.banned[-1])].sum()) for k, r in enumerate(spell)) / len(spell)
        assert spelling_mass(model, spell, 0, "cpu", batch_size=3) == pytest.approx(want, abs=1e-5)
        assert want > 0.05  # the base does complete the phrase there: a real signal to train on


def test_spelling_mass_bench_on_stories(tmp_path, stories):
    """bench/finetune_spelling_mass.py measures the base and each model on the same contexts: the
    base against itself gives the same figure, and the base does complete the phrase there."""
    import sys
    from pathlib import Path

    from cull.finetune import build_data

    model, tok = stories
    path = need_data("models", "stories260K")
    data = build_data(model, tok, cull.PhraseSet([PHRASE]), [""], n_samples=16, max_new_tokens=10, seed=0,
                      progress=False)
    data.save(tmp_path / "data.json")
    (tmp_path / "p.txt").write_text(PHRASE + "\n")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.finetune_spelling_mass import main

    row = main(["--data", str(tmp_path / "data.json"), "--phrases", str(tmp_path / "p.txt"), "--base", str(path),
                "--model", f"same={path}", "--threads", "1", "--out-dir", str(tmp_path)])
    assert row["contexts"] > 0 and row["base"] > 0.05 and row["same"] == pytest.approx(row["base"])
    assert list(tmp_path.glob("finetune-spelling-mass-*.json"))
