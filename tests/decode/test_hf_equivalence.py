"""cull's token-form rules against the real HF processors they replace.

`cull.token_sequence_processor(list_of_id_sequences, V)` must give exactly the scores of
`transformers.NoBadWordsLogitsProcessor(bad_words_ids)`, and `token_sequence_processor({seq: bias}, V)`
exactly those of `transformers.SequenceBiasLogitsProcessor(sequence_bias)`, wherever no two matching
sequences end in the same token. Where several do, HF sums their biases and cull applies the strongest
(minimum) one once: that documented difference has its own test.

EOS: HF's NoBadWords drops a single-token bad word equal to `eos_token_id` (it never bans EOS on its
own); `token_sequence_processor(..., eos_token_id=...)` does the same. Without `eos_token_id` cull bans
exactly what it is given. HF's own unit tests (tests/generation/test_logits_process.py,
`test_no_bad_words_dist_processor` and `test_bias_dist_processor`) are re-expressed here with HF's
expected values, including "processor should not change logits in-place".
"""
import math

import numpy as np
import pytest
import torch

import cull

transformers = pytest.importorskip("transformers")
from transformers import NoBadWordsLogitsProcessor, SequenceBiasLogitsProcessor  # noqa: E402

BACKENDS = ["torch", "reference"]
SEEDS = range(12)
# biases that are exact in bf16 and fp16, so that HF's (score + bias) in the logits dtype and cull's
# (score in fp32 + bias, rounded once) round the same exact sum
BIASES = [-8.0, -4.0, -2.5, -1.0, -0.5, -0.25, 0.5, 1.0, 2.0, 3.75]


# ---- random cases ---------------------------------------------------------------------------------


def random_sequences(rng: np.random.Generator, V: int, n: int) -> list[tuple[int, ...]]:
    """n distinct id sequences of length 1-4 over a small alphabet (so they overlap), plus sequences
    that share a prefix with, extend, or are a suffix of earlier ones."""
    alpha = rng.choice(V, size=int(rng.integers(3, 10)), replace=False).tolist()
    out: list[tuple[int, ...]] = []
    seen = set()
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        kind = rng.random()
        if out and kind < 0.2:  # same prefix, another last token
            base = out[int(rng.integers(len(out)))]
            s = base[:-1] + (int(rng.choice(alpha)),)
        elif out and kind < 0.35:  # extends an earlier sequence
            base = out[int(rng.integers(len(out)))]
            if len(base) >= 4:
                continue
            s = base + (int(rng.choice(alpha)),)
        elif out and kind < 0.5:  # a proper suffix of an earlier one (overlap at the end)
            base = out[int(rng.integers(len(out)))]
            if len(base) < 2:
                continue
            s = base[int(rng.integers(1, len(base))):]
        elif kind < 0.9:
            s = tuple(int(x) for x in rng.choice(alpha, size=int(rng.integers(1, 5))))
        else:  # an id outside the small alphabet
            s = tuple(int(x) for x in rng.integers(0, V, size=int(rng.integers(1, 5))))
        if s and s not in seen:
            seen.add(s)
            out.append(s)
    return out


def random_input_ids(rng: np.random.Generator, V: int, seqs, B: int, L: int) -> torch.Tensor:
    """Random rows, most of which end with a planted prefix of some sequence (so it matches)."""
    alpha = sorted({t for s in seqs for t in s})
    ids = np.where(rng.random((B, L)) < 0.6, rng.choice(alpha, size=(B, L)), rng.integers(0, V, size=(B, L)))
    multi = [s for s in seqs if len(s) > 1]
    for r in range(B):
        if multi and rng.random() < 0.8:
            s = multi[int(rng.integers(len(multi)))]
            k = min(len(s) - 1, L)
            # the whole prefix (the sequence completes next) or, sometimes, just its tail
            start = 0 if rng.random() < 0.8 else int(rng.integers(0, k))
            planted = s[start:k]
            if planted:
                ids[r, L - len(planted):] = planted
    return torch.as_tensor(ids, dtype=torch.long)


def matching(input_ids: torch.Tensor, seq: tuple[int, ...]) -> torch.Tensor:
    """[B] bool: the rows where `seq` completes with its last token (its prefix ends the row)."""
    B, L = input_ids.shape
    k = len(seq) - 1
    if k == 0:
        return torch.ones(B, dtype=torch.bool)
    if k > L:
        return torch.zeros(B, dtype=torch.bool)
    return (input_ids[:, L - k:] == torch.tensor(seq[:-1])).all(dim=1)


def deltas_per_cell(input_ids, rules: dict) -> dict[tuple[int, int], list[float]]:
    """{(row, token): [delta of every matching sequence that ends in token]}: a plain oracle."""
    out: dict[tuple[int, int], list[float]] = {}
    for seq, d in rules.items():
        for r in torch.nonzero(matching(input_ids, seq)).flatten().tolist():
            out.setdefault((r, seq[-1]), []).append(d)
    return out


def case(seed: int, n_seqs=None):
    rng = np.random.default_rng(seed)
    V = int(rng.integers(50, 501))
    B = int(rng.integers(1, 9))
    L = int(rng.integers(1, 13))
    seqs = random_sequences(rng, V, n_seqs or int(rng.integers(4, 30)))
    ids = random_input_ids(rng, V, seqs, B, L)
    scores = torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3
    return rng, V, seqs, ids, scores


def cull_scores(rules, V, backend, input_ids, scores):
    proc = cull.token_sequence_processor(rules, V, backend=backend)
    out = proc(input_ids, scores.clone())
    assert out.dtype == scores.dtype and out.shape == scores.shape
    return out


def assert_same(a: torch.Tensor, b: torch.Tensor, what=""):
    assert a.dtype == b.dtype
    if not torch.equal(a, b):
        bad = torch.nonzero(a != b)[:5].tolist()
        pytest.fail(f"{what}: scores differ at (row, token) {bad}: cull {[a[r, t].item() for r, t in bad]} "
                    f"vs HF {[b[r, t].item() for r, t in bad]}")


# ---- bans: NoBadWordsLogitsProcessor ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_bans_equal_no_bad_words(seed, backend):
    _, V, seqs, ids, scores = case(seed)
    hf = NoBadWordsLogitsProcessor([list(s) for s in seqs], eos_token_id=None)
    expected = hf(ids, scores.clone())
    got = cull_scores([list(s) for s in seqs], V, backend, ids, scores)
    assert_same(got, expected, f"seed {seed}")
    # the case really exercises multi-token matches, not just single-token bans
    multi_hits = sum(matching(ids, s).sum().item() for s in seqs if len(s) > 1)
    assert multi_hits >= 1 or ids.shape[0] == 1


def test_random_cases_have_many_matches():
    """Guard for the generators above: most rows complete at least one multi-token sequence."""
    rows = hits = 0
    for seed in SEEDS:
        _, _, seqs, ids, _ = case(seed)
        m = torch.zeros(ids.shape[0], dtype=torch.bool)
        for s in seqs:
            if len(s) > 1:
                m |= matching(ids, s)
        rows += ids.shape[0]
        hits += int(m.sum())
    assert hits >= 0.6 * rows, (hits, rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bans_equal_no_bad_words_dtypes(backend, dtype):
    for seed in range(100, 104):
        _, V, seqs, ids, scores = case(seed)
        scores = scores.to(dtype)
        expected = NoBadWordsLogitsProcessor([list(s) for s in seqs])(ids, scores.clone())
        assert_same(cull_scores([list(s) for s in seqs], V, backend, ids, scores), expected, f"{dtype} seed {seed}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_eos_filter_is_hf_only(backend):
    """HF drops the single-token bad word [eos] (but keeps multi-token ones that end in EOS);
    `eos_token_id=` does the same, and without it cull bans [eos] as asked."""
    V, eos = 60, 7
    bad = [[eos], [3], [3, eos], [5, 6, eos], [eos, 4]]
    ids = torch.tensor([[1, 2, 3], [9, 5, 6], [0, 0, eos], [4, 4, 4]])
    scores = torch.randn(4, V)
    expected = NoBadWordsLogitsProcessor(bad, eos_token_id=eos)(ids, scores.clone())
    assert torch.isfinite(expected[:, eos]).tolist() == [False, False, True, True]
    got = cull.token_sequence_processor(bad, V, backend=backend, eos_token_id=eos)(ids, scores)
    assert_same(got, expected)
    got = cull.token_sequence_processor(bad, V, backend=backend, eos_token_id=[eos, 50])(ids, scores)
    assert_same(got, expected)
    assert torch.isinf(cull_scores(bad, V, backend, ids, scores)[:, eos]).all()


# HF's test_no_bad_words_dist_processor / test_bias_dist_processor: the same inputs, HF's expected values
HF_IDS = [[0, 1, 3, 1], [0, 1, 0, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hf_no_bad_words_case(backend):
    ids = torch.tensor(HF_IDS)
    scores = torch.ones(2, 5) / 5  # HF's uniform logits
    original = scores.clone()
    proc = cull.token_sequence_processor([[1], [4], [1, 0], [0, 1, 2], [1, 3, 1, 3]], 5, backend=backend,
                                         eos_token_id=4)
    filtered = proc(ids, scores)
    assert torch.isinf(filtered).tolist() == [[True, True, False, True, False], [True, True, True, False, False]]
    assert not torch.all(scores == filtered)  # "processor should not change logits in-place"
    assert torch.equal(scores, original)
    # HF's edge case: the only bad word is EOS, so nothing changes
    edge = cull.token_sequence_processor([[4]], 5, backend=backend, eos_token_id=4)
    torch.testing.assert_close(edge(ids, scores), scores, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hf_sequence_bias_case(backend):
    ids = torch.tensor(HF_IDS)
    bias = {(1,): 100.0, (4,): 100.0, (1, 0): -100.0, (0, 1, 2): -100.0, (1, 3, 1, 3): -100.0,
            (1, 3, 1, 3, 1, 3): -100.0}  # the same termination twice, as HF's test has it
    scores = torch.zeros(2, 5)
    filtered = cull.token_sequence_processor(bias, 5, backend=backend)(ids, scores)
    assert filtered.tolist() == [[-100.0, 100.0, 0.0, -100.0, 100.0], [-100.0, 100.0, -100.0, 0.0, 100.0]]
    assert not torch.all(scores == filtered)
    assert torch.equal(scores, torch.zeros(2, 5))
    # and HF's own processor agrees on this case
    assert torch.equal(SequenceBiasLogitsProcessor(sequence_bias={k: v for k, v in bias.items()})(ids, scores), filtered)


def test_inplace_option_edits_the_input():
    ids = torch.tensor(HF_IDS)
    scores = torch.ones(2, 5)
    proc = cull.token_sequence_processor([[1]], 5, backend="torch", inplace=True)
    out = proc(ids, scores)
    assert out is scores and torch.isinf(scores[:, 1]).all()
    with pytest.raises(cull.CullError, match="inplace"):
        cull.CullLogitsProcessor(proc.matcher, inplace="yes")


def test_narrower_logits_are_refused():
    proc = cull.token_sequence_processor([[1, 2]], 50, backend="torch")
    with pytest.raises(cull.CullError, match="compiled for a vocabulary of 50"):
        proc(torch.tensor([[1]]), torch.zeros(1, 49))
    assert proc(torch.tensor([[1]]), torch.zeros(1, 64)).shape == (1, 64)  # a padded lm head is fine


def test_eos_token_id_bad_type():
    with pytest.raises(cull.CullError, match="eos_token_id"):
        cull.token_sequence_processor([[1]], 5, eos_token_id="</s>")


# ---- biases: SequenceBiasLogitsProcessor ---------------------------------------------------------------


def distinct_last_tokens(seqs):
    out, last = [], set()
    for s in seqs:
        if s[-1] not in last:
            last.add(s[-1])
            out.append(s)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_biases_equal_sequence_bias_when_last_tokens_differ(seed, backend):
    """No two sequences end in the same token, so HF's sum and cull's minimum agree everywhere."""
    rng, V, seqs, _, scores = case(seed, n_seqs=40)
    seqs = distinct_last_tokens(seqs)
    B, L = scores.shape[0], int(rng.integers(1, 13))
    ids = random_input_ids(rng, V, seqs, B, L)
    rules = {s: float(rng.choice(BIASES)) for s in seqs}
    hf = SequenceBiasLogitsProcessor([[list(s), d] for s, d in rules.items()])
    expected = hf(ids, scores.clone())
    assert_same(cull_scores(rules, V, backend, ids, scores), expected, f"seed {seed}")
    assert sum(len(v) for (r, t), v in deltas_per_cell(ids, rules).items()) >= 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_biases_random_sets(seed, backend):
    """Any random set (shared last tokens, overlaps, some -inf): cull equals HF at every (row, token)
    where at most one finite-bias sequence matches (or a ban does), and the per-cell minimum everywhere."""
    rng, V, seqs, ids, scores = case(seed)
    rules = {s: (-math.inf if rng.random() < 0.15 else float(rng.choice(BIASES))) for s in seqs}
    hf = SequenceBiasLogitsProcessor([[list(s), d] for s, d in rules.items()])
    expected = hf(ids, scores.clone())
    got = cull_scores(rules, V, backend, ids, scores)
    cells = deltas_per_cell(ids, rules)
    want = scores.clone()
    for (r, t), ds in cells.items():
        want[r, t] = scores[r, t] + min(ds)
    assert_same(got, want, f"seed {seed} (oracle: minimum per cell)")
    same = torch.ones_like(scores, dtype=torch.bool)
    for (r, t), ds in cells.items():
        if len(ds) > 1 and -math.inf not in ds:
            same[r, t] = False
    assert_same(got[same], expected[same], f"seed {seed} (HF where no two finite biases meet)")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_biases_equal_sequence_bias_dtypes(backend, dtype):
    for seed in range(200, 204):
        rng, V, seqs, ids, scores = case(seed)
        seqs = distinct_last_tokens(seqs)
        ids = random_input_ids(rng, V, seqs, ids.shape[0], ids.shape[1])
        rules = {s: float(rng.choice(BIASES)) for s in seqs}
        scores = scores.to(dtype)
        expected = SequenceBiasLogitsProcessor([[list(s), d] for s, d in rules.items()])(ids, scores.clone())
        assert_same(cull_scores(rules, V, backend, ids, scores), expected, f"{dtype} seed {seed}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_loop_equal_step_by_step(backend):
    """One processor instance through a whole decode loop (its incremental row cache is used): equal
    to HF at every step, for bans and for biases with distinct last tokens."""
    for seed in range(300, 304):
        rng, V, seqs, ids, _ = case(seed)
        seqs = distinct_last_tokens(seqs)
        bias = {s: float(rng.choice(BIASES)) for s in seqs}
        procs = [
            (NoBadWordsLogitsProcessor([list(s) for s in seqs]), cull.token_sequence_processor(
                [list(s) for s in seqs], V, backend=backend)),
            (SequenceBiasLogitsProcessor([[list(s), d] for s, d in bias.items()]),
             cull.token_sequence_processor(bias, V, backend=backend)),
        ]
        nxt = {}  # continuation tokens, so that sequences keep completing
        for s in seqs:
            for i in range(len(s) - 1):
                nxt.setdefault(s[i], []).append(s[i + 1])
        for step in range(12):
            scores = torch.randn(ids.shape[0], V)
            for hf, cp in procs:
                assert_same(cp(ids, scores.clone()), hf(ids, scores.clone()), f"seed {seed} step {step}")
            col = [int(rng.choice(nxt[int(t)])) if int(t) in nxt and rng.random() < 0.7 else int(rng.integers(V))
                   for t in ids[:, -1]]
            ids = torch.cat([ids, torch.tensor(col)[:, None]], dim=1)


# ---- the documented difference -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_documented_difference_sum_vs_min(backend):
    """(3, 4, 9) and its suffix (4, 9) both complete with token 9 after [.., 3, 4]: HF adds -1.5 and
    -2.0 (-3.5); cull applies the strongest, -2.0, once. Where only one matches, they agree."""
    V = 20
    rules = {(3, 4, 9): -1.5, (4, 9): -2.0, (9,): 0.0, (5, 6): -1.0}
    rules.pop((9,))
    ids = torch.tensor([[1, 3, 4],    # both match: HF -3.5, cull -2.0
                        [1, 2, 4],    # only (4, 9): both -2.0
                        [1, 3, 5],    # (5, 6): both -1.0 on token 6
                        [0, 0, 0]])   # nothing
    scores = torch.zeros(4, V)
    hf = SequenceBiasLogitsProcessor([[list(s), d] for s, d in rules.items()])(ids, scores.clone())
    got = cull_scores(rules, V, backend, ids, scores)
    assert hf[0, 9].item() == -3.5
    assert got[0, 9].item() == -2.0
    assert got[1, 9].item() == hf[1, 9].item() == -2.0
    assert got[2, 6].item() == hf[2, 6].item() == -1.0
    assert torch.equal(got[1:], hf[1:])
    mask = torch.ones_like(got, dtype=torch.bool)
    mask[0, 9] = False
    assert torch.equal(got[mask], hf[mask])

    # a single-token bias and a longer sequence on the same token: HF sums, cull takes the minimum
    rules = {(9,): -1.0, (4, 9): -2.0}
    hf = SequenceBiasLogitsProcessor([[list(s), d] for s, d in rules.items()])(ids, scores.clone())
    got = cull_scores(rules, V, backend, ids, scores)
    assert hf[:, 9].tolist() == [-3.0, -3.0, -1.0, -1.0]
    assert got[:, 9].tolist() == [-2.0, -2.0, -1.0, -1.0]

    # with a ban among them both are -inf: the difference only concerns finite biases
    rules = {(3, 4, 9): -1.5, (4, 9): -math.inf}
    hf = SequenceBiasLogitsProcessor([[list(s), d] for s, d in rules.items()])(ids, scores.clone())
    assert_same(cull_scores(rules, V, backend, ids, scores), hf)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_sequences_in_ban_list(backend):
    bad = [[2, 3], [2, 3], [3]]
    ids = torch.tensor([[5, 2], [2, 2]])
    scores = torch.randn(2, 10)
    assert_same(cull_scores(bad, 10, backend, ids, scores), NoBadWordsLogitsProcessor(bad)(ids, scores.clone()))


def test_token_rules_bad_input():
    with pytest.raises(cull.RuleError, match=r"in \[0, 10\)"):
        cull.token_sequence_processor([[3, 10]], 10)
    with pytest.raises(cull.RuleError, match="non-empty"):
        cull.token_sequence_processor([[]], 10)
    with pytest.raises(cull.RuleError, match="finite number or -inf"):
        cull.token_sequence_processor({(3,): float("inf")}, 10)
    with pytest.raises(cull.RuleError, match="no token sequences"):
        cull.token_sequence_processor([], 10)
