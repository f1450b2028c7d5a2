"""cull eval: the metrics on hand-made inputs, and evaluate() end to end on stories260K."""
import argparse
import json
import math

import pytest

import cull
from conftest import need_data
from cull.errors import CullError
from cull.measure.evaluate import (Generation, bootstrap_ci, distinct_n, evaluate, hit_stats, load_clean_texts,
                           load_prompts, over_represented)

PHRASE = "Once upon a time"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def stories():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = need_data("models", "stories260K")
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_bootstrap_ci_brackets_the_estimate_and_shrinks_with_n():
    rng = __import__("random").Random(0)
    small = [rng.random() < 0.3 for _ in range(50)]
    big = [rng.random() < 0.3 for _ in range(2000)]
    est, lo, hi = bootstrap_ci(small)
    assert lo <= est <= hi and abs(est - sum(small) / 50) < 1e-12
    est2, lo2, hi2 = bootstrap_ci(big)
    assert hi2 - lo2 < hi - lo
    assert lo2 < 0.3 < hi2
    # ratio of sums: 1000 * hits / words
    est3, lo3, hi3 = bootstrap_ci([1, 0, 2], [10, 10, 20], scale=1000.0)
    assert est3 == pytest.approx(75.0) and lo3 <= est3 <= hi3
    assert bootstrap_ci([]) == (0.0, 0.0, 0.0)
    assert bootstrap_ci([2, 2, 2]) == (2.0, 2.0, 2.0)  # no spread, no interval


def test_hit_stats_counts_per_phrase():
    rules = cull.PhraseSet(["a testament to", "delve"])
    gens = [Generation(0, [], [], "It is a testament to hard work. We delve and DELVE.", False),
            Generation(0, [], [], "Nothing here at all.", False)]
    s = hit_stats(gens, rules)
    assert s["hits"] == 3 and s["generations_with_hit"] == 1
    assert s["per_phrase"] == {"delve": 2, "a testament to": 1}
    assert s["hits_per_generation"] == pytest.approx(1.5)
    assert s["hits_per_1k_words"] == pytest.approx(1000 * 3 / 15)  # 11 + 4 whitespace-separated words


def test_distinct_and_over_represented():
    assert distinct_n(["a b a b"], 1) == pytest.approx(0.5)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    model = ["the tapestry of life"] * 5 + ["a cat sat"]
    ref = ["a cat sat"] * 5
    top = over_represented(model, ref, ns=(2,))
    assert top[0]["ngram"] in {"the tapestry", "tapestry of", "of life"} and top[0]["ref_count"] == 0
    assert all(r["ngram"] != "a cat" for r in top)


def test_load_prompts_builtin_and_errors(tmp_path):
    train, held = load_prompts("train"), load_prompts("heldout")
    assert len(train) >= 50 and len(held) >= 25 and not set(train) & set(held)
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert load_prompts(tmp_path / "p.txt") == ["one", "two"]
    with pytest.raises(CullError, match="not found"):
        load_prompts(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(CullError, match="list of strings"):
        load_prompts(tmp_path / "bad.json")


def test_load_clean_texts_builtin_and_errors(tmp_path):
    assert load_clean_texts(None) is None and load_clean_texts("None") is None
    assert len(load_clean_texts("neutral_texts")) >= 10
    (tmp_path / "pairs.json").write_text('[{"prompt": "Hi", "text": "Hello."}, "plain"]')
    assert load_clean_texts(tmp_path / "pairs.json") == [{"prompt": "Hi", "text": "Hello."}, "plain"]
    with pytest.raises(CullError, match="not found.*neutral_texts"):
        load_clean_texts(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("[")
    with pytest.raises(CullError, match="not valid JSON"):
        load_clean_texts(tmp_path / "broken.json")
    (tmp_path / "bad.json").write_text('[{"text": "no prompt"}]')
    with pytest.raises(CullError, match="list of strings"):
        load_clean_texts(tmp_path / "bad.json")


def test_evaluate_end_to_end(stories, tmp_path):
    _, model, tok = stories
    res = evaluate(model, tok, [PHRASE], [""], n_samples=24, max_new_tokens=10, seed=3, batch_size=24,
                   clean_texts=["One day, a little girl named Lily went to the park."], progress=False,
                   out=tmp_path / "ev", reference_gens=None)
    s = res["sampled"]
    assert s["generations"] == 24 and res["greedy"]["generations"] == 1
    assert s["rate_with_hit"] > 0.5  # stories260K nearly always starts this way
    lo, hi = s["hits_per_1k_words_ci"]
    assert lo <= s["hits_per_1k_words"] <= hi
    assert 1.0 < res["clean"]["perplexity"] < 50 and math.isfinite(res["clean"]["perplexity"])
    assert 0 < res["distinct_1"] <= 1
    doc = json.loads((tmp_path / "ev.json").read_text())
    assert "_gens" not in doc and doc["sampled"]["per_phrase"][PHRASE] == s["hits"]
    assert (tmp_path / "ev.md").read_text().startswith("| model")
    assert (tmp_path / "ev.png").stat().st_size > 1000
    # seeded: the same call gives the same texts
    again = evaluate(model, tok, [PHRASE], [""], n_samples=24, max_new_tokens=10, seed=3, batch_size=24,
                     greedy=False, progress=False)
    assert [g.text for g in again["_gens"]] == [g.text for g in res["_gens"] if not g.greedy]


def test_processor_on_and_kl_against_itself_is_zero(stories):
    from cull.measure.evaluate import BanCounter, mean_kl

    _, model, tok = stories
    counter = BanCounter(cull.CullLogitsProcessor([PHRASE], tok))
    res = evaluate(model, tok, [PHRASE], [""], n_samples=16, max_new_tokens=10, batch_size=16, greedy=False,
                   processor=counter, progress=False)
    assert res["sampled"]["hits"] == 0 and counter.events > 0
    assert abs(mean_kl(model, model, res["_gens"])) < 1e-6


def test_eval_command(stories, tmp_path, capsys):
    from cull.cli.eval import add_parser as add_eval_parser

    path, _, _ = stories
    (tmp_path / "p.json").write_text('[""]')
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--model", str(path), "--phrase", PHRASE, "--prompts", str(tmp_path / "p.json"),
                              "--n-samples", "8", "--max-new-tokens", "8", "--no-progress", "--clean-texts", "none",
                              "--out", str(tmp_path / "r"), "--threads", "1", "--human-text", "none"])
    assert args.func(args) == 0
    assert "hits/1k words" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["sampled"]["generations"] == 8
    # with a reference, the processor on and human text from a file
    words = " ".join(["the little dog ran to the park and played with a ball"] * 4)
    (tmp_path / "human.txt").write_text(f"   {words}.\n\n" * 30)
    args = parser.parse_args(["eval", "--model", str(path), "--reference", str(path), "--phrase", PHRASE,
                              "--prompts", str(tmp_path / "p.json"), "--n-samples", "8", "--max-new-tokens", "8",
                              "--no-progress", "--clean-texts", "none", "--with-processor", "--threads", "1",
                              "--human-text", str(tmp_path / "human.txt"), "--human-tokens", "200",
                              "--out", str(tmp_path / "r2")])
    assert args.func(args) == 0
    doc = json.loads((tmp_path / "r2.json").read_text())
    assert doc["reference"]["sampled"]["hits"] > 0 and doc["sampled"]["hits"] == 0
    assert doc["vs_reference"]["human"]["change"] == pytest.approx(0.0, abs=1e-9)  # the same model
    assert doc["processor_events"]["ban_events"] > 0
    args = parser.parse_args(["eval", "--model", str(path), "--phrase", PHRASE, "--prompts", str(tmp_path / "p.json"),
                              "--chat", "--clean-texts", "none"])
    with pytest.raises(CullError, match="no chat template"):
        args.func(args)
    args = parser.parse_args(["eval", "--model", str(tmp_path / "nope"), "--phrase", PHRASE])
    with pytest.raises(CullError, match="not found"):
        args.func(args)


# ---- v2: prompt-clustered CIs, paired comparisons, loops, human text ----
def _gens(spec):
    """spec: [(prompt index, text)]"""
    return [Generation(p, [], [], t, False) for p, t in spec]


def test_clustered_ci_is_wider_than_per_generation_when_one_prompt_holds_the_hits():
    from cull.measure.text_stats import bootstrap_ci

    rules = cull.PhraseSet(["delve"])
    spec = [(0, "we delve deep into it now")] * 8 + [(p, "plain words with nothing in them") for p in range(1, 9)
                                                     for _ in range(8)]
    gens = _gens(spec)
    s = hit_stats(gens, rules)
    naive = bootstrap_ci([1] * 8 + [0] * 64, [6] * 8 + [6] * 64, scale=1000.0)
    lo, hi = s["hits_per_1k_words_ci"]
    assert s["prompts"] == 9 and lo <= s["hits_per_1k_words"] <= hi
    assert hi - lo > 1.5 * (naive[2] - naive[1])  # one prompt: the clusters, not the 72 samples, are the units


def test_paired_reduction():
    from cull.measure.text_stats import compare_hits

    rules = cull.PhraseSet(["delve"])
    ref = hit_stats(_gens([(p, "we delve here and delve there") for p in range(10)]), rules)
    same = compare_hits(ref, ref)
    assert same["reduction"] == pytest.approx(0.0) and same["reduction_ci"] == [pytest.approx(0.0)] * 2
    clean = hit_stats(_gens([(p, "we go here and go there") for p in range(10)]), rules)
    gone = compare_hits(clean, ref)
    assert gone["reduction"] == 1.0 and gone["residual_ci_high"] == pytest.approx(0.0)
    half = hit_stats(_gens([(p, "we delve here and go there") for p in range(10)]), rules)
    assert compare_hits(half, ref)["reduction"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different prompts"):
        compare_hits(hit_stats(_gens([(99, "x")]), rules), ref)


def test_loops_and_the_noise_floor():
    from cull.measure.text_stats import loop_stats, loops

    assert loops("I am here now. I am here now. I am here now.")
    assert not loops("The cat sat on the mat and looked at the bird in the tree.")
    ref = _gens([(p, t) for p in range(6) for t in ("a b c d a b c d a b c d", "one two three four five")])
    model = _gens([(p, "one two three four five") for p in range(6) for _ in range(2)])
    s = loop_stats(model, ref)
    assert s["looping_rate"] == 0.0 and s["minus_reference"] == pytest.approx(-0.5)
    # each prompt's first sample loops and its second does not: the halves differ by exactly 1
    assert s["floor_reference_halves"] == pytest.approx(1.0)


def test_perplexity_ci_and_paired_change(stories):
    from cull.measure.evaluate import perplexity, perplexity_change

    _, model, tok = stories
    texts = ["One day, a little girl named Lily went to the park.", "Tom liked to play with his red ball.",
             "The sun was warm and the sky was blue."]
    p = perplexity(model, tok, texts, progress=False)
    lo, hi = p["perplexity_ci"]
    assert lo <= p["perplexity"] <= hi and p["texts"] == 3
    same = perplexity_change(p, p)
    assert same["change"] == pytest.approx(0.0) and same["change_ci"] == [pytest.approx(0.0)] * 2


def test_human_text_reads_prose_and_names_the_package(tmp_path, monkeypatch):
    from cull.measure.human_text import human_corpus, prose_paragraphs

    words = " ".join(f"word{i}" for i in range(40))
    text = (f"   A {{hacker}} is a person who enjoys {words}.\n   Second line of it.\n\n"
            "   │ table │ row │\n\n   :headword: n.\n\n   short one.\n")
    paras = prose_paragraphs(text)
    assert len(paras) == 1 and paras[0].startswith("A hacker is") and "Second line of it." in paras[0]
    f = tmp_path / "prose.txt"
    f.write_text((text + "\n\n") * 40)
    got = human_corpus(500, path=f)
    assert got and all(p == paras[0] for p in got)
    with pytest.raises(CullError, match="fewer than"):
        human_corpus(10 ** 7, path=f)
    with pytest.raises(CullError, match="jargon-text"):
        human_corpus(100, path=tmp_path / "missing.txt")


def test_reference_is_measured_without_the_processor(stories):
    from cull.measure.evaluate import BanCounter

    _, model, tok = stories
    counter = BanCounter(cull.CullLogitsProcessor([PHRASE], tok))
    res = evaluate(model, tok, [PHRASE], [""], n_samples=16, max_new_tokens=10, batch_size=16, greedy=False,
                   processor=counter, reference_model=model, progress=False)
    assert res["sampled"]["hits"] == 0 and res["reference"]["sampled"]["hits"] > 0  # "before" is the real rate
    assert res["vs_reference"]["hits"]["reduction"] == 1.0
    assert res["processor_events"]["ban_events"] == counter.events > 0


def test_reference_cache_reuses_the_same_measurements_and_only_those(stories, tmp_path):
    """A second run with the same inputs reuses the cached reference and reports exactly what a fresh
    run does; another phrase list, one changed row of the reference's weights, or another chat
    template measure it again; a broken file is a clear error."""
    import copy

    import torch

    from cull.measure.evaluate import public

    _, model, tok = stories
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        tuned.lm_head.weight.mul_(0.9)  # a different model to compare with the base
    cache = tmp_path / "new" / "dir" / "ref.json"  # folders made as needed
    kw = dict(n_samples=8, max_new_tokens=10, batch_size=8, reference_model=model, progress=False,
              clean_texts=["One day, a cat sat on the mat."], human_texts=["The dog ran to the park."])
    first = evaluate(tuned, tok, [PHRASE], [""], reference_cache=cache, **kw)
    again = evaluate(tuned, tok, [PHRASE], [""], reference_cache=cache, **kw)
    fresh = evaluate(tuned, tok, [PHRASE], [""], **kw)
    assert first["reference_cache"]["status"] == "absent" and first["reference_cache"]["save_error"] is None
    assert again["reference_cache"]["status"] == "reused"
    assert {k: v for k, v in public(again).items() if k != "reference_cache"} == public(fresh)
    assert again["reference"]["sampled"]["hits"] > 0
    assert evaluate(tuned, tok, ["a little"], [""], reference_cache=cache, **kw)["reference_cache"]["status"] == "stale"
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.model.embed_tokens.weight[7] += 1e-3  # one row of a large tensor
    kw["reference_model"] = moved
    assert evaluate(tuned, tok, ["a little"], [""], reference_cache=cache, **kw)["reference_cache"]["status"] == "stale"
    assert evaluate(tuned, tok, ["a little"], [""], reference_cache=cache, **kw)["reference_cache"]["status"] == "reused"
    templated = copy.deepcopy(tok)
    templated.chat_template = "{% for m in messages %}Q: {{ m['content'] }}\nA:{% endfor %}"
    got = evaluate(tuned, templated, ["a little"], [""], reference_cache=cache, **kw)
    assert got["reference_cache"]["status"] == "stale"
    cache.write_text("{not json")
    with pytest.raises(CullError, match="delete it"):
        evaluate(tuned, tok, ["a little"], [""], reference_cache=cache, **kw)
