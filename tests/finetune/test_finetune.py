"""cull finetune: the loss terms, the data building, and the CI-scale acceptance run on stories260K."""
import copy
import json
import math
import time

import pytest
import torch

import cull
from conftest import need_data
from cull.errors import CullError
from cull.finetune.data import char_ends, hits_in, token_at_char
from cull.finetune.loss import (LossWeights, banned_mass_loss, log1m_prob, preference_loss, retain_kl,
                                unlikelihood_loss)

PHRASE = "Once upon a time"


@pytest.fixture(autouse=True)
def one_thread():
    """A 260K-parameter model runs fastest on one thread; more threads than idle cores is many times
    slower on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- loss terms on hand-built distributions ----
def test_unlikelihood_is_minus_log_one_minus_p():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05]])
    logits = probs.log()
    rejected = torch.tensor([0, 1])
    want = (-torch.log(1 - torch.tensor([0.7, 0.9]))).mean()
    assert torch.allclose(unlikelihood_loss(logits, rejected), want, atol=1e-6)


def test_log1m_prob_is_stable_near_one():
    logits = torch.tensor([[40.0, 0.0, 0.0]])  # p(0) = 1 - 2e-18: 1 - p cancels to 0 in float32
    got = log1m_prob(logits, torch.tensor([0]))
    assert torch.isfinite(got).all()
    assert abs(got.item() - (math.log(2) - 40.0)) < 1e-4


def test_preference_loss_value_and_mask():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25, 1e-9]]))
    rejected = torch.tensor([0])
    chosen = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[True, True, False]])
    diff = math.log(0.25) - math.log(0.5)
    want = -math.log(1 / (1 + math.exp(-(2.0 * (diff - 1.0)))))
    got = preference_loss(logp, rejected, chosen, mask, beta=2.0, margin=1.0)
    assert abs(got.item() - want) < 1e-5
    # an example with no chosen token contributes nothing
    none = preference_loss(logp, rejected, chosen, torch.zeros_like(mask), beta=2.0, margin=1.0)
    assert none.item() == 0.0


def test_preference_gradient_lowers_rejected():
    logits = torch.zeros(1, 5, requires_grad=True)
    preference_loss(logits, torch.tensor([0]), torch.tensor([[1, 2]]), torch.tensor([[True, True]])).backward()
    assert logits.grad[0, 0] > 0 and logits.grad[0, 1] < 0 and logits.grad[0, 2] < 0


def test_retain_kl_exact_when_top_k_is_everything_and_zero_at_base():
    torch.manual_seed(0)
    base = torch.log_softmax(torch.randn(3, 6), -1)
    model = torch.log_softmax(torch.randn(3, 6), -1)
    top_logp, top_ids = torch.topk(base, 6, -1)
    want = (base.exp() * (base - model)).sum(-1).mean()
    assert torch.allclose(retain_kl(model, top_ids, top_logp), want, atol=1e-5)
    # truncated to the top 2 plus a rest bucket: zero when the model equals the base
    top_logp2, top_ids2 = torch.topk(base, 2, -1)
    assert retain_kl(base, top_ids2, top_logp2).abs().item() < 1e-6


def _exact_kl_under_ban(base_logp, model_logp, banned):
    """KL(q || model) over the full vocabulary, q = the base with the banned tokens removed and the
    rest renormalised (the plain reference for retain_kl's banned path)."""
    q = base_logp.exp().masked_fill(banned, 0.0)
    q = q / q.sum(-1, keepdim=True)
    return torch.where(q > 0, q * (q.clamp(min=1e-30).log() - model_logp), torch.zeros_like(q)).sum(-1).mean()


def test_retain_kl_under_the_processor_matches_the_plain_reference():
    gen = torch.Generator().manual_seed(1)
    for trial in range(20):
        n, v = 4, 9
        base = torch.log_softmax(2 * torch.randn(n, v, generator=gen), -1)
        logits = (2 * torch.randn(n, v, generator=gen)).requires_grad_(True)
        banned = torch.rand(n, v, generator=gen) < 0.3
        banned[:, 0] = False  # every row keeps some allowed mass
        top_logp, top_ids = torch.topk(base, v, -1)
        got = retain_kl(logits, top_ids, top_logp, banned)
        want = _exact_kl_under_ban(base, torch.log_softmax(logits, -1), banned)
        assert torch.allclose(got, want, atol=1e-5), (trial, got, want)
        got.backward()
        # each banned logit's gradient is its probability (over the mean's n rows)
        p = torch.softmax(logits.detach(), -1)
        assert torch.allclose(logits.grad[banned], (p / n)[banned], atol=1e-6)
    # no banned token: the same as without a mask; truncated top-K: zero at the renormalised base
    base = torch.log_softmax(torch.randn(3, 7, generator=gen), -1)
    top_logp, top_ids = torch.topk(base, 3, -1)
    none = torch.zeros(3, 7, dtype=torch.bool)
    other = base + torch.randn(3, 7, generator=gen)
    assert torch.allclose(retain_kl(other, top_ids, top_logp, none), retain_kl(other, top_ids, top_logp), atol=1e-6)
    assert retain_kl(other, top_ids, top_logp) > 0.01
    banned = torch.zeros(3, 7, dtype=torch.bool)
    banned[torch.arange(3), top_ids[:, 1]] = True
    target = torch.log_softmax(base.masked_fill(banned, float("-inf")), -1)
    assert retain_kl(target.clamp(min=-80), top_ids, top_logp, banned).abs().item() < 1e-5


def test_banned_mass_loss_is_minus_log_allowed_mass():
    gen = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(5, 8, generator=gen)).requires_grad_(True)
    banned = torch.rand(5, 8, generator=gen) < 0.4
    banned[0] = True  # every token banned: nowhere to move, adds 0
    banned[1] = False
    p = torch.softmax(logits.detach(), -1)
    m = (p * banned).sum(-1)
    want = torch.where(banned.all(-1), torch.zeros(5), -torch.log1p(-m.clamp(max=1 - 1e-7))).mean()
    got = banned_mass_loss(logits, banned)
    assert torch.isfinite(got) and torch.allclose(got, want, atol=1e-5)
    got.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[banned & ~banned.all(-1, keepdim=True)] > 0).all()


# ---- data building ----
@pytest.fixture(scope="module")
def stories():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = need_data("models", "stories260K")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return path, model, tok


def test_hit_maps_to_the_token_that_wrote_its_first_character(stories):
    from cull.measure.evaluate import Generation

    _, _, tok = stories
    text = "The sun was up. Once upon a time, there was a cat."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    gen = Generation(0, [tok.bos_token_id], ids, tok.decode(ids, skip_special_tokens=True))
    [(phrase, ti)] = hits_in(gen, tok, cull.PhraseSet([PHRASE]))
    assert phrase == PHRASE
    start = gen.text.index("Once")
    assert tok.decode(ids[:ti], skip_special_tokens=True) == gen.text[:start].rstrip()
    assert tok.convert_ids_to_tokens(ids[ti]).lstrip("\u2581").startswith("On")
    ends = char_ends(tok, ids)
    assert ends[-1] == len(gen.text)
    assert token_at_char(ends, 0) == 0


def test_build_data_examples(stories):
    from cull.finetune import build_data

    _, model, tok = stories
    rules = cull.PhraseSet([PHRASE])
    data = build_data(model, tok, rules, [""], n_samples=16, max_new_tokens=10, seed=0, progress=False)
    assert data.stats["hits"] > 0 and data.preference
    for ex in data.preference:
        text = tok.decode(ex.context + [ex.rejected], skip_special_tokens=True)
        assert text.lower().endswith("once")  # the rejected token writes the phrase's first character
        assert ex.rejected not in ex.chosen and ex.chosen
        for c in ex.chosen:  # chosen alternatives start no banned phrase
            assert not tok.decode(ex.context + [c], skip_special_tokens=True).lower().endswith("once")
    # one context (BOS) and one (phrase, token) pair: down-sampled to a single example
    assert len(data.preference) == 1
    assert data.preference[0].ref_logits.shape == (model.config.vocab_size,)  # the tether's reference
    # dense retain: every generated position of every clean sample
    assert data.retain and all(len(r.top_ids) == len(r.positions) for r in data.retain)
    assert all(r.positions == list(range(1, len(r.ids))) for r in data.retain)
    assert all(not cull.find(tok.decode(r.ids, skip_special_tokens=True), rules) for r in data.retain)


def test_batched_step_loss_equals_unpadded_forwards(stories):
    """Left-padded contexts with logits_to_keep, and retain positions gathered from a padded batch,
    give the same loss as one plain forward per sequence."""
    import numpy as np

    from cull.finetune import LossWeights, PreferenceExample, RetainExample
    from cull.finetune.loss import total_loss
    from cull.finetune.steps import step_loss

    _, model, _ = stories
    v = model.config.vocab_size
    rng = np.random.default_rng(0)
    pref = [PreferenceExample([1, 5, 6, 7], 9, [3, 4], "x", ref_logits=rng.normal(size=v).astype(np.float16)),
            PreferenceExample([1, 8], 10, [11], "x", ref_logits=rng.normal(size=v).astype(np.float16))]
    ret = [RetainExample([1, 5, 6, 7, 8], [2, 4], [[1, 2], [3, 4]], [[-1.0, -2.0], [-1.0, -3.0]]),
           RetainExample([1, 9, 9], [1], [[5, 6]], [[-0.5, -2.0]])]
    w = LossWeights(mle=0.5)
    with torch.no_grad():
        got, parts = step_loss(model, pref, ret, 0, w, "cpu")
        pl = torch.stack([model(torch.tensor([e.context])).logits[0, -1] for e in pref])
        rl = torch.cat([model(torch.tensor([r.ids])).logits[0, [p - 1 for p in r.positions]] for r in ret])
        want, _ = total_loss(pl, torch.tensor([9, 10]), torch.tensor([[3, 4], [11, 0]]),
                             torch.tensor([[True, True], [True, False]]), rl,
                             torch.tensor([t for r in ret for t in r.top_ids]),
                             torch.tensor([t for r in ret for t in r.top_logp]), w,
                             ref_logits=torch.tensor(np.stack([e.ref_logits for e in pref]).astype(np.float32)),
                             retain_targets=torch.tensor([6, 8, 9]))
    assert set(parts) == {"pref", "ul", "tether", "kl", "mle"}
    assert abs(got.item() - want.item()) < 1e-4


def test_finetune_command_errors(tmp_path, stories):
    from cull.cli.finetune import add_parser as add_finetune_parser

    path, _, _ = stories
    import argparse

    parser = argparse.ArgumentParser()
    add_finetune_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["finetune", "--model", str(tmp_path / "nope"), "--phrase", PHRASE, "--out",
                              str(tmp_path / "o")])
    with pytest.raises(CullError, match="not found"):
        args.func(args)
    args = parser.parse_args(["finetune", "--model", str(path), "--out", str(tmp_path / "o")])
    with pytest.raises(CullError, match="no phrases"):
        args.func(args)
    args = parser.parse_args(["finetune", "--model", str(path), "--phrase", PHRASE, "--out", str(tmp_path / "o"),
                              "--full", "--adapter-only"])
    with pytest.raises(CullError, match="adapter-only"):
        args.func(args)
    args = parser.parse_args(["finetune", "--model", str(path), "--phrase", PHRASE, "--out", str(tmp_path / "o"),
                              "--retain-target", "base", "--w-ban", "100"])
    with pytest.raises(CullError, match="--retain-target processor"):
        args.func(args)
    args = parser.parse_args(["finetune", "--model", str(path), "--phrase", PHRASE, "--out", str(tmp_path / "o"),
                              "--w-ban", "-1"])
    with pytest.raises(CullError, match="--w-ban must be >= 0"):
        args.func(args)
    args = parser.parse_args(["finetune", "--model", str(tmp_path / "nope"), "--phrase", PHRASE, "--out",
                              str(tmp_path / "o"), "--spelling-contexts", "-2"])
    with pytest.raises(CullError, match="--spelling-contexts must be >= 0"):  # before the (missing) model loads
        args.func(args)
    args = parser.parse_args(["finetune", "--model", str(tmp_path / "nope"), "--phrase", PHRASE, "--out",
                              str(tmp_path / "o"), "--spelling-contexts", "2", "--retain-target", "base"])
    with pytest.raises(CullError, match="--retain-target processor"):
        args.func(args)
    for bad, match in ((["--mention-prompts", "-1"], "--mention-prompts must be >= 0"),
                       (["--mention-prompts", "1", "--retain-target", "base"], "--mention-prompts trains"),
                       (["--mention-prompts", "4"], "--mention-prompts is 4; .* at most 3"),
                       (["--mention-prompts", "2", "--method", "ul-mle"], "--method ul-mle .* does not train"),
                       (["--spelling-contexts", "2", "--w-kl", "0", "--w-ban", "0"], "--w-kl 0 and --w-ban 0")):
        args = parser.parse_args(["finetune", "--model", str(tmp_path / "nope"), "--phrase", PHRASE, "--out",
                                  str(tmp_path / "o"), *bad])
        with pytest.raises(CullError, match=match):
            args.func(args)


def test_no_hits_is_a_clear_error(stories):
    from cull.finetune import build_data

    _, model, tok = stories
    with pytest.raises(CullError, match="elicit"):
        build_data(model, tok, cull.PhraseSet(["quantum chromodynamics"]), [""], n_samples=4, max_new_tokens=8,
                   progress=False)


def test_chat_prompts_on_a_model_without_chat_template(stories, tmp_path):
    from cull.finetune import FinetuneConfig, finetune

    _, model, tok = stories
    with pytest.raises(CullError, match="no chat template"):
        finetune(model, tok, [PHRASE], ["hi"], tmp_path, FinetuneConfig(steps=1, chat=True), progress=False)


def test_batch_size_is_bounded():
    from cull.finetune import FinetuneConfig

    with pytest.raises(CullError, match="bound"):
        FinetuneConfig(batch_size=100_000).check()


def test_missing_model_path(tmp_path):
    from cull.measure.models import load_model_with_base

    with pytest.raises(CullError, match="not found"):
        load_model_with_base(str(tmp_path / "nope"))


# ---- v2: clipping, gating, tether, decision points, storage, schedule ----
def test_preference_is_clipped_at_the_margin():
    logits = torch.tensor([[0.0, 2.5, 1.0, -1.0]], requires_grad=True)  # chosen 1 wins by 2.5, chosen 2 by 1
    loss = preference_loss(logits, torch.tensor([0]), torch.tensor([[1, 2]]), torch.tensor([[True, True]]),
                           margin=2.0, clip=True)
    loss.backward()
    assert logits.grad[0, 1] == 0  # past the margin: no more pull
    assert logits.grad[0, 2] < 0 and logits.grad[0, 0] > 0
    won = torch.tensor([[0.0, 3.0, 2.5, -1.0]])
    assert preference_loss(won, torch.tensor([0]), torch.tensor([[1, 2]]), torch.tensor([[True, True]]),
                           margin=2.0, clip=True).item() == 0.0


def test_unlikelihood_is_gated_once_the_rejected_token_stops_winning():
    logits = torch.tensor([[3.0, 1.0, 0.0], [1.0, 3.0, 0.0]])
    rejected, chosen, mask = torch.tensor([0, 0]), torch.tensor([[1], [1]]), torch.tensor([[True], [True]])
    gated = unlikelihood_loss(logits, rejected, chosen, mask, gate=True)
    first_row = -log1m_prob(logits[:1], rejected[:1])
    assert gated.item() == pytest.approx(first_row.item() / 2)  # the second row is already won
    assert unlikelihood_loss(logits, rejected).item() > gated.item()


def test_tether_ignores_targets_and_common_shifts():
    from cull.finetune.loss import tether_loss

    torch.manual_seed(0)
    ref = torch.randn(2, 10)
    rejected, chosen, mask = torch.tensor([0, 1]), torch.tensor([[2, 3], [4, 0]]), torch.tensor([[True, True], [True, False]])
    moved = ref.clone()
    moved[0, [0, 2, 3]] += 5.0  # only targets move
    moved[1] += 7.0  # a common shift: no probability changes
    moved[1, [1, 4]] -= 3.0
    assert tether_loss(moved, ref, rejected, chosen, mask).item() == pytest.approx(0.0, abs=1e-10)
    moved[0, 7] += 1.0  # a non-target logit moves
    assert tether_loss(moved, ref, rejected, chosen, mask).item() > 0.01


def test_decision_point_moves_past_function_words_and_word_pieces(stories):
    from cull.measure.evaluate import Generation
    from cull.finetune.data import decision_token, match_spans

    _, _, tok = stories
    text = "She saw a testament to love in the garden."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    gen = Generation(0, [tok.bos_token_id], ids, tok.decode(ids, skip_special_tokens=True))
    [(phrase, first, last, m)] = match_spans(gen, tok, cull.PhraseSet(["a testament to"]))
    j = decision_token(gen, tok, first, last, m)
    assert first < j <= last
    assert tok.decode(ids[:j + 1], skip_special_tokens=True).endswith("a testament")  # completes "testament"
    # rule (b): the rest of the match must be likely after the decision token; with an unlikely rest,
    # it moves to the last token
    logp = [0.0] * len(ids)
    logp[last] = -5.0
    assert decision_token(gen, tok, first, last, m, logp, commit_prob=0.5) == last


def test_sample_token_logp_equals_unpadded_forwards(stories):
    from cull.measure.evaluate import Generation
    from cull.finetune.examples import sample_token_logp

    _, model, tok = stories
    gens = [Generation(0, [1], [300, 301, 302, 50], "x"), Generation(0, [1, 40, 41], [7, 8], "y")]
    got = sample_token_logp(model, tok, gens, batch_size=2, progress=False)
    for g in gens:
        ids = torch.tensor([g.prompt_ids + g.gen_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)
        n = len(g.prompt_ids)
        want = [lp[n + i - 1, t].item() for i, t in enumerate(g.gen_ids)]
        assert got[id(g)] == pytest.approx(want, abs=1e-4)


def test_data_round_trip_keeps_arrays(tmp_path):
    import numpy as np

    from cull.finetune import FinetuneData, PreferenceExample, RetainExample

    d = FinetuneData([PreferenceExample([1, 2], 3, [4], "p", 0.5, 0, [4, 5], [3, 6], np.arange(6, dtype=np.float16))],
                     [RetainExample([1, 2, 3], [1, 2], np.array([[1, 2], [3, 4]], dtype=np.int32),
                                    np.array([[-0.5, -1.0], [-0.2, -2.0]], dtype=np.float16), 0)],
                     {"hits": 1}, [[[1, 2, 3], 1]])
    d.save(tmp_path / "data.json")
    assert (tmp_path / "data.npz").is_file()
    back = FinetuneData.load(tmp_path / "data.json")
    assert back.preference[0].ref_logits.tolist() == list(range(6)) and back.preference[0].chosen_continuation == [4, 5]
    assert back.retain[0].top_ids.tolist() == [[1, 2], [3, 4]] and back.negatives == [[[1, 2, 3], 1]]


def test_stop_rule_waits_out_one_perplexity_transient():
    from cull.finetune import FinetuneConfig
    from cull.finetune.loop import EarlyStop

    cfg = FinetuneConfig()
    done = {"win_rate": 1.0, "p_rejected": 0.003, "spelling_mass": 0.02, "mention_mass": 0.03, "hits": 0, "nll": 1.0}
    assert EarlyStop(cfg, 1.0).observe(done) == (True, "every held-out target is met")
    for key, value in (("mention_mass", 0.2), ("spelling_mass", 0.2), ("hits", 1), ("nll", 1.02)):
        v = {**done, key: value}  # one target open (a perplexity rise outside the budget is one too)
        assert EarlyStop(cfg, 1.0).observe(v) == (True, None), key
    hot = {**done, "mention_mass": 0.2, "nll": 1.04, "ppl_rise": 0.04}
    calm = {**done, "mention_mass": 0.1, "nll": 1.005, "ppl_rise": 0.005}
    stop = EarlyStop(cfg, 1.0)
    assert stop.observe(hot) == (True, None)  # the transient of the peak learning rate
    assert stop.observe(calm) == (True, None)  # back within the budget: the count starts again
    assert stop.observe(hot) == (False, None)
    best, why = stop.observe(hot)
    assert not best and "two checks in a row" in why
    stop = EarlyStop(cfg, 1.0)
    stop.observe(calm)
    worse = {**calm, "mention_mass": 0.15}
    assert [stop.observe(worse)[1] for _ in range(cfg.patience)][-1] == f"no better checkpoint in {cfg.patience} checks"


def test_schedule_and_checkpoint_choice():
    from cull.finetune.steps import checkpoint_score
    from cull.finetune.loop import lr_factor

    f = [lr_factor(s, 100, 0.1, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(f[10:], f[11:]))
    base = 1.0
    fewer_hits = checkpoint_score({"nll": 1.005, "hits": 0, "win_rate": 0.8}, base, 0.01)
    more_hits = checkpoint_score({"nll": 1.0, "hits": 2, "win_rate": 0.99}, base, 0.01)
    over_budget = checkpoint_score({"nll": 1.1, "hits": 0, "win_rate": 1.0}, base, 0.01)
    assert fewer_hits < more_hits < over_budget


def test_newly_overused():
    from cull.measure.discover import newly_overused

    cands = cull.PhraseSet(["a reflection of", "tapestry"])
    tuned = ["it was a reflection of her"] * 5 + ["a tapestry"]
    base = ["a tapestry of light"] * 6
    assert newly_overused(tuned, base, cands) == ["a reflection of"]


# ---- acceptance: fine-tune "Once upon a time" away on stories260K ----
def _rate(model, tok, n=64, seed=1234):
    from cull.measure.evaluate import generate, hit_stats

    gens = generate(model, tok, [""], n_samples=n, temperature=0.8, max_new_tokens=10, seed=seed,
                    batch_size=n, progress=False)
    return hit_stats(gens, cull.PhraseSet([PHRASE]))["rate_with_hit"]


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_finetune_removes_once_upon_a_time(tmp_path, full):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cull.finetune import FinetuneConfig, finetune
    from cull.measure.evaluate import perplexity

    t0 = time.perf_counter()
    path = need_data("models", "stories260K")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    torch.manual_seed(0)
    before = _rate(model, tok)
    clean = ["One day, a little girl named Lily went to the park. She saw a big dog.",
             "Tom liked to play with his red ball. He threw it high in the sky."]
    ppl_before = perplexity(model, tok, clean, progress=False)["perplexity"]
    # stories260K writes the phrase in 81% of its samples: removing it must move the whole distribution,
    # which the default KL weight (30, measured on SmolLM2) resists; this tiny model needs a loose tether
    cfg = FinetuneConfig(steps=30, lr=5e-3 if not full else 1e-3, full=full, n_samples=64,
                         max_new_tokens=16, checkpoint_every=0, weights=LossWeights(kl=1.0))
    finetune(model, tok, [PHRASE], [""], tmp_path, cfg, progress=False, say=lambda m: None)
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # the saved, merged model
    after = _rate(tuned, tok)
    ppl_after = perplexity(tuned, tok, clean, progress=False)["perplexity"]
    assert before >= 0.6, f"the base model should write the phrase often, wrote it in {before:.0%}"
    assert after <= 0.1 * before, f"phrase rate {before:.0%} -> {after:.0%}: less than a 90% cut"
    assert ppl_after < 1.5 * ppl_before, f"clean perplexity {ppl_before:.3f} -> {ppl_after:.3f}"
    summary = json.loads((tmp_path / "finetune.json").read_text())
    assert summary["saved"] == "merged" and summary["data"]["hits"] > 0
    assert time.perf_counter() - t0 < 120


def test_resume_and_adapter_only(tmp_path, stories):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cull.finetune import FinetuneConfig, finetune

    path = need_data("models", "stories260K")
    tok = AutoTokenizer.from_pretrained(path)
    cfg = FinetuneConfig(steps=10, lr=3e-3, n_samples=16, max_new_tokens=10, checkpoint_every=4, adapter_only=True)
    model = AutoModelForCausalLM.from_pretrained(path)
    finetune(model, tok, [PHRASE], [""], tmp_path, cfg, progress=False, base_path=str(path), say=lambda m: None)
    first = json.loads((tmp_path / "finetune.json").read_text())
    assert first["saved"] == "adapter" and (tmp_path / "adapter_config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # transformers loads the adapter through peft
    assert any("lora" in n for n, _ in loaded.named_parameters())

    # an interrupted run: stop after 8 steps (checkpoint at 4 and 8 is kept), then resume to 10
    out2 = tmp_path / "resumed"
    cfg8 = FinetuneConfig(**{**cfg.__dict__, "steps": 9, "checkpoint_every": 4})
    finetune(AutoModelForCausalLM.from_pretrained(path), tok, [PHRASE], [""], out2, cfg8, progress=False,
             say=lambda m: None, keep_checkpoints=True)
    assert (out2 / "checkpoints" / "step-8").is_dir()
    interrupted = json.loads((out2 / "finetune.json").read_text())["validation_base"]
    msgs = []
    finetune(AutoModelForCausalLM.from_pretrained(path), tok, [PHRASE], [""], out2, cfg, resume=True,
             progress=False, say=msgs.append)
    assert any("step 8" in m for m in msgs)
    resumed = json.loads((out2 / "finetune.json").read_text())
    assert resumed["log"][-1]["step"] == 9
    for key in ("nll", "p_rejected", "win_rate"):  # the base, measured before the checkpoint loads
        assert resumed["validation_base"][key] == pytest.approx(interrupted[key], rel=1e-5), key


@pytest.mark.parametrize("method", ["ul-mle", "nat", "dpo", "cull-bf16", "cull-2-rounds"])
def test_baselines_and_options_run_on_stories(tmp_path, method):
    """Each baseline and option trains on stories260K and cuts the phrase rate at least in half."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cull.finetune import FinetuneConfig, build_data, finetune

    path = need_data("models", "stories260K")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    before = _rate(model, tok)
    if method == "dpo":
        from cull.finetune.baselines import dpo_pairs, train_dpo

        data = build_data(model, tok, cull.PhraseSet([PHRASE]), [""], n_samples=64, max_new_tokens=16, progress=False)
        assert dpo_pairs(data, tok)
        tuned, _ = train_dpo(model, tok, data, tmp_path, steps=20, lr=5e-3, batch_size=4, say=lambda m: None)
        tuned = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    else:
        kw = {"ul-mle": dict(method="ul-mle"), "nat": dict(method="nat"), "cull-bf16": dict(dtype="bf16"),
              "cull-2-rounds": dict(rounds=2, steps=3, lr=1e-3, eval_every=0)}[method]
        cfg = FinetuneConfig(**{**dict(steps=20, lr=5e-3, n_samples=64, max_new_tokens=16, checkpoint_every=0,
                                       eval_every=10, val_samples=16), **kw})
        s = finetune(model, tok, [PHRASE], [""], tmp_path, cfg, progress=False, say=lambda m: None)
        tuned = AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="auto").eval()
        if method == "cull-bf16":
            assert tuned.dtype == torch.bfloat16
            tuned = tuned.float()
        if method == "cull-2-rounds":
            assert len(s["rounds"]) == 2 and s["data"]["rounds"][0]["hits"] > 0  # round 2 trained on residual hits
    after = _rate(tuned, tok)
    assert after <= 0.5 * before, f"{method}: phrase rate {before:.0%} -> {after:.0%}"


def test_bench_quick(tmp_path):
    """The benchmark's --quick mode (stories260K) runs, so the benchmark cannot rot."""
    import sys
    from pathlib import Path

    need_data("models", "stories260K")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.finetune_bench import main

    out = main(["--quick", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path / "work"),
                "--skip-processor-check", "--methods", "cull", "nat"])
    rows = {r["name"]: r for r in out["rows"]}
    assert rows["base"]["hits"] > 0 and rows["cull"]["hits_reduction_pct"] >= 90
    assert "clean_replies_ppl_change_pct_ci_high" in rows["cull"] and "nat" in rows
    assert Path(out["path"]).with_suffix(".md").is_file()
    saved = tmp_path / "work" / "bench_data.json"
    with pytest.raises(SystemExit, match="built for other phrases"):  # --data with the wrong phrase list
        main(["--quick", "--data", str(saved), "--phrases", "The end", "--work-dir", str(tmp_path / "w2")])


def test_sweep_quick(tmp_path):
    """The sweep's --quick mode trains per setting, evaluates each merge scale and draws the plot."""
    import sys
    from pathlib import Path

    need_data("models", "stories260K")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.finetune_sweep import main

    out = main(["--quick", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path / "work"), "--kl", "1",
                "--rounds", "1", "--scales", "0.5", "1"])
    rows = {r["merge_scale"]: r for r in out["rows"]}
    assert set(rows) == {0.5, 1.0} and any(r["pareto"] for r in rows.values())
    assert rows[1.0]["hits"] <= rows[0.5]["hits"]  # the full update removes at least as much as half of it
    assert Path(out["path"]).with_suffix(".png").stat().st_size > 5000


@pytest.mark.slow
def test_smollm2_finetune_runs_and_loads(tmp_path):
    """The real model: a short fine-tune on a few prompts writes a merged model that loads."""
    from transformers import AutoModelForCausalLM

    from cull.measure.evaluate import load_prompts
    from cull.finetune import FinetuneConfig, finetune
    from cull.measure.models import load_model_with_base

    need_data("models", "smollm2-135m-instruct")
    model, tok, base = load_model_with_base(None, say=lambda m: None)
    prompts = load_prompts("train")[30:34]  # descriptions: "vibrant", "testament" and friends
    rules = cull.PhraseSet(["vibrant", "a testament to", "tapestry", "whisper*", "symphony"])
    cfg = FinetuneConfig(steps=4, n_samples=2, max_new_tokens=64, batch_size=2, retain_batch_size=1)
    finetune(model, tok, rules, prompts, tmp_path, cfg, progress=False, base_path=base, say=lambda m: None)
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert tuned.config.vocab_size == model.config.vocab_size


def test_ban_events_bench_on_stories(tmp_path):
    """bench/finetune_ban_events.py counts ban events for both models and writes its JSON: the same
    model twice gives the same count (greedy), hence a fall of 0."""
    import sys
    from pathlib import Path

    path = need_data("models", "stories260K")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.finetune_ban_events import main

    (tmp_path / "p.txt").write_text(PHRASE + "\n")
    (tmp_path / "prompts.json").write_text('["", "Once"]')
    row = main(["--model", str(path), "--base", str(path), "--phrases", str(tmp_path / "p.txt"), "--prompts",
                str(tmp_path / "prompts.json"), "--max-new-tokens", "12", "--threads", "1", "--out-dir", str(tmp_path)])
    assert row["base_ban_events_per_1k_tokens"] > 0  # the base reaches for the phrase from an empty prompt
    assert row["tuned_ban_events_per_1k_tokens"] == row["base_ban_events_per_1k_tokens"] and row["fall_pct"] == 0
    assert list(tmp_path.glob("finetune-ban-events-*.json"))


def test_banned_sets_follow_the_processor_position_by_position(stories):
    """At each retain position the set is what the processor bans for the token there: a clean
    sample's own tokens are never in it; in a text with the phrase, the token that completes it is."""
    from cull.finetune.banned import attach_banned, banned_mask
    from cull.finetune.records import RetainExample

    _, model, tok = stories
    rules = cull.PhraseSet([PHRASE])
    bos = [tok.bos_token_id]
    clean = bos + tok("One day, a little girl went to the park. Once more she ran.", add_special_tokens=False)["input_ids"]
    hit = bos + tok("The sun was up. Once upon a time, there was a cat.", add_special_tokens=False)["input_ids"]
    ex = [RetainExample(ids, list(range(1, len(ids)))) for ids in (clean, hit)]
    v = model.config.vocab_size
    n = attach_banned(ex, rules, tok, v)
    assert n > 0 and all(len(r.banned) == len(r.positions) for r in ex)
    assert all(ids[p] not in b for p, b in zip(ex[0].positions, ex[0].banned) for ids in [clean])
    completing = [p for p, b in zip(ex[1].positions, ex[1].banned) if hit[p] in b]
    assert len(completing) == 1
    text = tok.decode(hit[1:completing[0] + 1], skip_special_tokens=True)
    assert text.lower().endswith("time") and not cull.find(tok.decode(hit[1:completing[0]]), rules)
    # sampled positions (retain_per_gen): the processor still steps through every token from the start
    some = [1, 5, completing[0]]
    sparse = [RetainExample(hit, some, start=1)]
    attach_banned(sparse, rules, tok, v)
    assert sparse[0].banned == [ex[1].banned[ex[1].positions.index(p)] for p in some]
    # the mask rows follow retain_logits' order (example by example, position by position)
    mask = banned_mask(ex, sum(len(r.positions) for r in ex), v, "cpu")
    k = len(ex[0].positions) + ex[1].positions.index(completing[0])
    assert mask[k, hit[completing[0]]] and mask.sum() == sum(len(b) for r in ex for b in r.banned)


def test_retain_set_sampled_with_the_processor_on(stories):
    """With a retain processor, every sample of the base with the processor on joins the retain set
    (none has a hit, so none is dropped), while the preference examples still come from the samples
    with it off; where a sample reached "Once upon a", the banned set there holds " time"."""
    from cull.finetune import build_data
    from cull.finetune.banned import attach_banned

    _, model, tok = stories
    rules = cull.PhraseSet([PHRASE])
    proc = cull.CullLogitsProcessor(rules, tok, vocab_size=model.config.vocab_size)
    plain = build_data(model, tok, rules, [""], n_samples=16, max_new_tokens=10, seed=0, progress=False)
    data = build_data(model, tok, rules, [""], n_samples=16, max_new_tokens=10, seed=0, progress=False,
                      retain_processor=proc)
    assert [e.context for e in data.preference] == [e.context for e in plain.preference]
    assert len(plain.retain) < 16 and len(data.retain) == 16  # the base writes the phrase in most samples
    assert all(not cull.find(tok.decode(r.ids, skip_special_tokens=True), rules) for r in data.retain)
    attach_banned(data.retain, rules, tok, model.config.vocab_size)
    assert all(r.ids[p] not in b for r in data.retain for p, b in zip(r.positions, r.banned))
    time = tok.convert_tokens_to_ids("\u2581time")
    reached = [r for r in data.retain if tok.decode(r.ids[1:4]) == "Once upon a"]
    assert len(reached) >= 4 and all(r.banned[3] == (time,) for r in reached)


def test_phrase_rows_fold_into_an_untied_output_layer(tmp_path, stories):
    """The row delta changes the logits of its tokens only; merged and saved, the model loads with a
    plain from_pretrained and gives the same logits, its input embeddings untouched."""
    import copy

    from transformers import AutoModelForCausalLM

    from cull.finetune.phrase_rows import PhraseRows, find_rows, rows_off

    _, model, _ = stories
    m = copy.deepcopy(model)
    ids = torch.randint(0, m.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = m(ids).logits
    rows = PhraseRows(m, [3, 40, 41])
    assert find_rows(m) is rows and any(p is rows.delta for p in m.parameters())
    with torch.no_grad():
        rows.delta.normal_(generator=torch.Generator().manual_seed(1))
        hooked = m(ids).logits
        with rows_off(m):
            assert torch.equal(m(ids).logits, plain)
    others = torch.ones(m.config.vocab_size, dtype=torch.bool)
    others[[3, 40, 41]] = False
    assert torch.equal(hooked[..., others], plain[..., others]) and not torch.allclose(hooked[..., 40], plain[..., 40])
    embed = m.get_input_embeddings().weight.detach().clone()
    rows.merge_into(m)
    assert find_rows(m) is None and not any("cull_row_delta" in n for n, _ in m.named_parameters())
    m.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.tie_word_embeddings is False
    assert torch.equal(loaded.get_input_embeddings().weight, embed)
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, hooked, atol=1e-5)


def test_finetune_with_phrase_rows_trains_and_saves_them(tmp_path, stories):
    """A word the processor bans in every context gets trainable rows; the saved model is the tuned one."""
    from transformers import AutoModelForCausalLM

    from cull.finetune import FinetuneConfig, finetune

    _, model, tok = stories
    cfg = FinetuneConfig(steps=6, lr=5e-3, n_samples=16, max_new_tokens=16, checkpoint_every=0, eval_every=0,
                         phrase_rows=True, weights=LossWeights(retain_under_processor=True, ban=10.0))
    said = []
    s = finetune(copy.deepcopy(model), tok, ["little"], [""], tmp_path, cfg, progress=False, say=said.append)
    assert any("output rows of" in m for m in said), said
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    little = tok.convert_tokens_to_ids("\u2581little")
    ids = torch.tensor([[tok.bos_token_id] + tok("Once upon a time there was a", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        p_base = torch.softmax(model(ids).logits[0, -1], -1)[little]
        p_tuned = torch.softmax(tuned(ids).logits[0, -1], -1)[little]
        assert torch.allclose(tuned(ids).logits, s["model"](ids).logits, atol=1e-5)
    assert p_tuned < 0.5 * p_base, (float(p_base), float(p_tuned))


def test_resume_restores_the_phrase_rows(tmp_path, stories):
    """Resuming from the step-3 checkpoint of a 6-step run retrains steps 3-5 and ends on the same
    weights, phrase rows included (they are saved and restored with the LoRA weights)."""
    from transformers import AutoModelForCausalLM

    from cull.finetune import FinetuneConfig, finetune

    _, model, tok = stories
    cfg = FinetuneConfig(steps=6, lr=5e-3, n_samples=16, max_new_tokens=16, checkpoint_every=3, eval_every=0)
    s = finetune(copy.deepcopy(model), tok, ["little"], [""], tmp_path, cfg, progress=False, say=lambda m: None,
                 keep_checkpoints=True)
    assert s["phrase_rows"] and (tmp_path / "checkpoints" / "step-3").is_dir()
    ids = torch.tensor([[tok.bos_token_id] + tok("Once upon a time there was a", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        first = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(ids).logits
    msgs = []
    finetune(copy.deepcopy(model), tok, ["little"], [""], tmp_path, cfg, resume=True, progress=False, say=msgs.append)
    assert any("step 3" in m for m in msgs), msgs
    with torch.no_grad():
        again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(ids).logits
    assert torch.allclose(first, again, atol=1e-4), (first - again).abs().max()
