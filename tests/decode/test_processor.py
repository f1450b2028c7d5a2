"""CullLogitsProcessor with real models and tokenizers, through `model.generate`.

stories260K (a real TinyStories Llama, loads in milliseconds) almost always starts "Once upon a
time": with the processor it never writes it, by greedy search, sampling or beam search, with
left-padded batches, and across several generate() calls on one processor instance. A checker
processor placed after cull asserts at every step that no row is all -inf or NaN and that special
tokens (EOS included) are never banned. The SmolLM2 test (antislop's 517 phrases) is marked slow.
"""

import numpy as np
import pytest
import torch

import cull
from cull.compile.vocab import vocab_from_tokenizer
from conftest import need_data

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

PHRASE = "Once upon a time"


@pytest.fixture(scope="module", autouse=True)
def fresh_compile_cache(tmp_path_factory):
    """Compile into a cache of this module's own, not the user's ~/.cache/cull."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CULL_CACHE_DIR", str(tmp_path_factory.mktemp("cull-cache")))
        yield


@pytest.fixture(scope="module")
def stories():
    folder = need_data("models", "stories260K")
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token  # <unk>: a special token that adds no text
    tok.padding_side = "left"
    return model, tok


@pytest.fixture(scope="module")
def gpt2():
    return AutoTokenizer.from_pretrained(need_data("tokenizers", "gpt2"))


class Checker:
    """Placed after cull: every row keeps a finite score, nothing is NaN, special tokens survive."""

    def __init__(self, special_ids, record=False):
        self.special = sorted(special_ids)
        self.calls = 0
        self.record = record
        self.steps = []  # (input_ids, scores) per call, when recording

    def __call__(self, input_ids, scores):
        self.calls += 1
        assert not torch.isnan(scores).any(), "NaN in the scores"
        assert torch.isfinite(scores).any(dim=-1).all(), "a row is all -inf"
        spec = scores[:, self.special]
        assert (spec != float("-inf")).all(), f"a special token was banned: {self.special}"
        if self.record:
            self.steps.append((input_ids.clone(), scores.clone()))
        return scores


def special_ids(tok):
    return vocab_from_tokenizer(tok).special_ids | {tok.eos_token_id, tok.bos_token_id}


def generate(model, tok, prompts, procs, **kw):
    inputs = tok(prompts, return_tensors="pt", padding=True)
    kw.setdefault("max_new_tokens", 40)
    kw.setdefault("do_sample", False)
    out = model.generate(**inputs, logits_processor=list(procs), pad_token_id=tok.pad_token_id, **kw)
    return inputs["input_ids"].shape[1], out


def texts(tok, out, start=0):
    return tok.batch_decode(out[:, start:], skip_special_tokens=True)


def hits(tok, out, start=0, rules=(PHRASE,)):
    return [bool(cull.find(t, list(rules))) for t in texts(tok, out, start)]


# ---- hard ban through generate -------------------------------------------------------------------------


def test_greedy(stories):
    model, tok = stories
    _, base = generate(model, tok, [""], [])
    assert hits(tok, base) == [True], texts(tok, base)
    check = Checker(special_ids(tok))
    _, out = generate(model, tok, [""], [cull.CullLogitsProcessor([PHRASE], tok), check])
    assert hits(tok, out) == [False], texts(tok, out)
    assert check.calls == out.shape[1] - 1 or tok.eos_token_id in out[0].tolist()


@pytest.mark.parametrize("seed", [0, 1])
def test_sampling(stories, seed):
    """10 samples per seed from BOS alone: most write the phrase without cull, none with it."""
    model, tok = stories
    n = 10
    kw = dict(do_sample=True, temperature=0.8, num_return_sequences=n, max_new_tokens=40)
    torch.manual_seed(seed)
    _, base = generate(model, tok, [""], [], **kw)
    assert sum(hits(tok, base)) >= n // 2, texts(tok, base)
    torch.manual_seed(seed)
    check = Checker(special_ids(tok))
    _, out = generate(model, tok, [""], [cull.CullLogitsProcessor([PHRASE], tok), check], **kw)
    assert not any(hits(tok, out)), [t for t, h in zip(texts(tok, out), hits(tok, out)) if h]
    assert check.calls >= 1


def test_sampling_case_and_spelling_variants(stories):
    """Several spellings banned at once; sampled text never contains any, whatever the tokenization."""
    model, tok = stories
    rules = cull.PhraseSet(["once upon a TIME", "Lily", "little girl"])
    torch.manual_seed(3)
    check = Checker(special_ids(tok))
    _, out = generate(model, tok, [""], [cull.CullLogitsProcessor(rules, tok), check],
                      do_sample=True, temperature=1.0, num_return_sequences=8, max_new_tokens=40)
    found = [cull.find(t, rules) for t in texts(tok, out)]
    assert not any(found), found


def test_beam_search(stories):
    model, tok = stories
    kw = dict(num_beams=4, num_return_sequences=4, max_new_tokens=30, early_stopping=True)
    _, base = generate(model, tok, [""], [], **kw)
    assert any(hits(tok, base)), texts(tok, base)
    check = Checker(special_ids(tok))
    _, out = generate(model, tok, [""], [cull.CullLogitsProcessor([PHRASE], tok), check], **kw)
    assert not any(hits(tok, out)), texts(tok, out)
    assert check.calls >= 1


PADDED_PROMPTS = ["", "Lily and Ben went to the big park with their mom.", "One day,", "Once upon a"]


def test_left_padded_batch(stories):
    """Prompts of different lengths, left-padded: the generated text of every row is clean; rows are
    independent (the prompt that ends "Once upon a" may go on with " time": the prompt is excluded)."""
    model, tok = stories
    start, base = generate(model, tok, PADDED_PROMPTS, [], max_new_tokens=30)
    assert tok.pad_token_id in base[:, 0].tolist()  # really padded
    assert texts(tok, base, start)[3].lstrip().startswith("time"), texts(tok, base, start)
    assert any(hits(tok, base, start)), texts(tok, base, start)

    check = Checker(special_ids(tok), record=True)
    start, out = generate(model, tok, PADDED_PROMPTS, [cull.CullLogitsProcessor([PHRASE], tok), check],
                          max_new_tokens=30)
    gen = texts(tok, out, start)
    assert not any(hits(tok, out, start)), gen
    assert gen[3].lstrip().startswith("time"), gen  # include_prompt=False: " time" is allowed here
    # at the first step nothing is banned in any row: no generated text yet
    ids0, scores0 = check.steps[0]
    assert torch.isfinite(scores0).all()

    # include_prompt=True: the padded row whose prompt ends "Once upon a" alone loses " time"
    check = Checker(special_ids(tok), record=True)
    start, out = generate(model, tok, PADDED_PROMPTS, [
        cull.CullLogitsProcessor([PHRASE], tok, include_prompt=True), check], max_new_tokens=30)
    _, scores0 = check.steps[0]
    time_id = tok(" time", add_special_tokens=False)["input_ids"][-1]
    assert tok.convert_ids_to_tokens(time_id) == "▁time"
    assert scores0[3, time_id] == float("-inf")
    assert torch.isfinite(scores0[:3]).all()
    full = texts(tok, out)
    assert not any(cull.find(t, [PHRASE]) for t in full), full


def test_include_prompt(stories):
    model, tok = stories
    # excluded (default): the model completes the prompt's phrase
    start, out = generate(model, tok, ["Once upon a"], [cull.CullLogitsProcessor([PHRASE], tok)],
                          max_new_tokens=10)
    assert texts(tok, out, start)[0].lstrip().startswith("time"), texts(tok, out)
    # included: " time" must not come right after
    check = Checker(special_ids(tok))
    start, out = generate(model, tok, ["Once upon a"], [
        cull.CullLogitsProcessor([PHRASE], tok, include_prompt=True), check], max_new_tokens=20)
    assert not texts(tok, out, start)[0].lstrip().lower().startswith("time"), texts(tok, out)
    assert not hits(tok, out)[0], texts(tok, out)  # nor anywhere in prompt + continuation


# ---- several generate() calls on one processor -------------------------------------------------------------


def _calls():
    return [
        ([""], {}),
        (["One day,", "Once upon a"], {}),
        (["Lily", "The sun was", "Ben had a"], {}),
        ([""], {"num_beams": 3}),
        (["Once upon a time, there was a", ""], {}),
        ([""], {}),
    ]


@pytest.mark.parametrize("include_prompt", [False, True])
def test_reused_processor_no_state_leak(stories, include_prompt):
    """One instance through several greedy generate() calls (new prompts, batch sizes, beams) gives
    exactly the outputs of a fresh processor per call."""
    model, tok = stories
    shared = cull.CullLogitsProcessor([PHRASE, "little girl"], tok, include_prompt=include_prompt)
    for prompts, kw in _calls():
        kw = dict(kw, max_new_tokens=20)
        _, got = generate(model, tok, prompts, [shared], **kw)
        fresh = cull.CullLogitsProcessor([PHRASE, "little girl"], tok, include_prompt=include_prompt)
        _, want = generate(model, tok, prompts, [fresh], **kw)
        assert torch.equal(got, want), (prompts, texts(tok, got), texts(tok, want))


def test_reused_processor_continuation_call(stories):
    """A second generate() whose prompt is exactly the first call's output looks, to a processor that
    only sees input_ids, like the next decode step of the first call (documented in reset()). After
    proc.reset() the reused processor behaves exactly like a fresh one."""
    model, tok = stories
    shared = cull.CullLogitsProcessor([PHRASE], tok)
    _, first = generate(model, tok, [""], [shared], max_new_tokens=3)
    assert tok.decode(first[0], skip_special_tokens=True) == "Once upon a"
    mask = torch.ones_like(first)
    shared.reset()
    got = model.generate(input_ids=first, attention_mask=mask, max_new_tokens=3, do_sample=False,
                         logits_processor=[shared])
    want = model.generate(input_ids=first, attention_mask=mask, max_new_tokens=3, do_sample=False,
                          logits_processor=[cull.CullLogitsProcessor([PHRASE], tok)])
    assert tok.decode(want[0], skip_special_tokens=True).startswith("Once upon a time")
    assert torch.equal(got, want), (tok.decode(got[0]), tok.decode(want[0]))


def test_reused_processor_partial_batch_continuation(stories):
    """One row of the new call continues the previous call's last row, another row is new. The new
    row is read with its own prompt ("Once upon a" is prompt, so " time" is allowed, as with a fresh
    processor); it used to be read with the previous call's prompt length (cull/decode/row_states.py)."""
    model, tok = stories
    shared = cull.CullLogitsProcessor([PHRASE], tok)
    _, first = generate(model, tok, [""], [shared], max_new_tokens=5)  # prompt: <s> alone
    assert texts(tok, first)[0] != "Once upon a"
    other = tok("Once upon a", return_tensors="pt")["input_ids"]
    L = first.shape[1]
    other = torch.cat([torch.full((1, L - other.shape[1]), tok.pad_token_id), other], dim=1)
    batch = torch.cat([first, other])
    mask = (batch != tok.pad_token_id).long()
    got = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=3, do_sample=False,
                         logits_processor=[shared], pad_token_id=tok.pad_token_id)
    want = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=3, do_sample=False,
                          logits_processor=[cull.CullLogitsProcessor([PHRASE], tok)], pad_token_id=tok.pad_token_id)
    assert texts(tok, want, L)[1].lstrip().startswith("time"), texts(tok, want)
    assert torch.equal(got, want), (texts(tok, got), texts(tok, want))


# ---- special tokens and huge ban sets ----------------------------------------------------------------------


def test_eos_survives_when_almost_everything_is_banned(stories):
    """Wildcard rules that ban every token holding a common letter: EOS and the other special tokens
    survive, no row is ever all -inf or NaN, and the model still stops or writes something legal."""
    model, tok = stories
    rules = cull.PhraseSet(["*" + c + "*" for c in "abcdefghijklmnopqrstuvwxyz"])
    check = Checker(special_ids(tok), record=True)
    torch.manual_seed(0)
    _, out = generate(model, tok, ["", "Once upon a"], [cull.CullLogitsProcessor(rules, tok), check],
                      do_sample=True, num_return_sequences=2, max_new_tokens=15)
    assert check.calls >= 1
    tb = vocab_from_tokenizer(tok).token_bytes
    lettered = [t for t, b in enumerate(tb) if any(chr(c).isalpha() for c in b if c < 128)]
    assert len(lettered) > 200
    for _, scores in check.steps:  # every token that holds a letter is banned, in every row
        assert (scores[:, lettered] == float("-inf")).all()
    start = tok(["", "Once upon a"], padding=True, return_tensors="pt")["input_ids"].shape[1]
    for t in texts(tok, out, start):
        assert not cull.find(t, rules), t


# ---- bias: exact deltas on hand-built input_ids ------------------------------------------------------------


def _grid_scores(V, seed):
    """Scores on a 1/16 grid in [-8, 8]: adding -5 is exact, so (new - old) == -5 exactly."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 129, (1, V), generator=g).float() / 16


def _oracle_completing(tok, text: str, rules) -> set[int]:
    """Tokens whose text completes a match of `rules` after `text` (the last char is in the token)."""
    tb = vocab_from_tokenizer(tok).token_bytes
    out = set()
    for t, b in enumerate(tb):
        if not b:
            continue
        piece = b.decode("utf-8", errors="replace")
        if any(m.end > len(text) for m in cull.find(text + piece, rules)):
            out.add(t)
    return out


@pytest.mark.parametrize("include_prompt", [True, False])
def test_bias_rule_exact_delta(stories, include_prompt):
    model, tok = stories
    rules = cull.PhraseSet([PHRASE], action="bias", bias=-5.0)
    proc = cull.CullLogitsProcessor(rules, tok, include_prompt=include_prompt)
    V = model.config.vocab_size
    ids = tok("Once upon a")["input_ids"]  # [<s>, ▁Once, ▁upon, ▁a]
    time_id = tok.convert_tokens_to_ids("▁time")
    if include_prompt:
        steps = [len(ids)]  # one call: the whole text is prompt
    else:
        steps = range(1, len(ids) + 1)  # prompt = <s>; then one token per step, like generate()
    for n in steps:
        inp = torch.tensor([ids[:n]])
        scores = _grid_scores(V, n)
        new = proc(inp, scores.clone())
        text = (tok.decode(ids[:n], skip_special_tokens=True) if include_prompt or n > 1 else "")
        want = _oracle_completing(tok, " " + text if text else "", rules) if n == len(ids) else set()
        changed = set(torch.nonzero(new[0] != scores[0]).flatten().tolist())
        assert changed == want, (n, sorted(changed), sorted(want))
        for t in changed:
            assert (new[0, t] - scores[0, t]).item() == -5.0
    assert time_id in changed


def test_bias_takes_strongest_delta_once(stories):
    """Two bias rules that complete with the same token: the strongest delta, once (not the sum)."""
    model, tok = stories
    rules = cull.PhraseSet([
        cull.rules.make_rule(PHRASE, "bias", -5.0),
        cull.rules.make_rule("a time", "bias", -2.0),
        cull.rules.make_rule("upon a time", "bias", -3.0),
    ])
    proc = cull.CullLogitsProcessor(rules, tok, include_prompt=True)
    ids = torch.tensor([tok("Once upon a")["input_ids"]])
    scores = _grid_scores(model.config.vocab_size, 0)
    new = proc(ids, scores.clone())
    t = tok.convert_tokens_to_ids("▁time")
    assert (new[0, t] - scores[0, t]).item() == -5.0
    ids = torch.tensor([tok("There was a")["input_ids"]])  # only "a time" can complete
    new = proc(ids, scores.clone())
    assert (new[0, t] - scores[0, t]).item() == -2.0


# ---- backends: reference == torch, bit for bit ---------------------------------------------------------------


def _gpt2_rules():
    mk = cull.rules.make_rule
    return cull.PhraseSet([
        mk("delve", "ban"), mk("tapestry", "bias", -1.3), mk("a testament to", "bias", -2.7),
        mk("I hope this letter finds you well", "ban"), mk("delv*", "bias", -0.77),
        mk("*ness", "bias", -3.1), mk("it's", "bias", -0.1), mk("barely above a whisper", "ban"),
        mk("kaleidoscope of colors", "bias", -5.5), mk("the", "bias", 0.3),
    ])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_equals_torch_backend(gpt2, dtype):
    rules = _gpt2_rules()
    matcher = cull.compile_rules(rules, gpt2)
    V = len(gpt2)
    rng = np.random.default_rng(7)
    phrase_ids = [gpt2(" " + r.phrase)["input_ids"] for r in rules] + [
        gpt2(r.phrase.upper())["input_ids"] for r in rules] + [gpt2("It is a tapestry of")["input_ids"]]
    touched = 0
    for trial in range(6):
        B, L = int(rng.integers(1, 9)), int(rng.integers(1, 12))
        ids = rng.integers(0, V, size=(B, L))
        for r in range(B):  # plant a phrase's beginning at the end of most rows
            if rng.random() < 0.85:
                p = phrase_ids[int(rng.integers(len(phrase_ids)))]
                k = min(L, max(1, len(p) - int(rng.integers(0, 3))))
                ids[r, L - k:] = p[:k]
        ids = torch.as_tensor(ids)
        logits = (torch.randn(B, V, generator=torch.Generator().manual_seed(trial)) * 4).to(dtype)
        outs = {}
        for backend in ("torch", "reference"):
            proc = cull.CullLogitsProcessor(matcher, include_prompt=True, backend=backend)
            outs[backend] = proc(ids, logits.clone())
        a, b = outs["torch"], outs["reference"]
        assert a.dtype == b.dtype == dtype
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        assert same.all(), f"trial {trial}: differ at {torch.nonzero(~same)[:5].tolist()}"
        assert not torch.isnan(a).any()
        touched += int((a != logits).sum())
    assert touched > 100  # the states really ban and bias something


# ---- SmolLM2 with antislop's 517 phrases (slow) --------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_antislop_517():
    folder = need_data("models", "smollm2-135m-instruct")
    path = need_data("phrases", "antislop", "slop_phrase_prob_adjustments.json")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf).eval()
    rules = cull.PhraseSet.load(path, action="ban")
    assert len(rules) >= 500
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    asks = [
        "Write a short story about a lighthouse keeper who finds a mysterious letter.",
        "Write a poem about the night sky and the stars.",
        "Write a short fantasy story about a young wizard's first spell.",
    ]
    prompts = [tok.apply_chat_template([{"role": "user", "content": a}], tokenize=False, add_generation_prompt=True)
               for a in asks]
    inputs = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    start = inputs["input_ids"].shape[1]
    kw = dict(max_new_tokens=80, do_sample=True, temperature=0.9, num_return_sequences=2,
              pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    base = model.generate(**inputs, **kw)
    base_hits = [cull.find(t, rules) for t in tok.batch_decode(base[:, start:], skip_special_tokens=True)]
    assert sum(map(len, base_hits)) >= 1, "SmolLM2 wrote no antislop phrase at all without the processor"
    check = Checker(special_ids(tok))
    torch.manual_seed(0)
    out = model.generate(**inputs, logits_processor=[cull.CullLogitsProcessor(rules, tok), check], **kw)
    found = [cull.find(t, rules) for t in tok.batch_decode(out[:, start:], skip_special_tokens=True)]
    assert not any(found), [[(m.rule.text, m.start) for m in f] for f in found if f]
    assert check.calls >= 1
