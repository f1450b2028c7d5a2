"""The Q4_0 rounding simulation of bench/finetune_quant.py: the vectorised round trip against a
plain per-block reference, and the quick mode end to end on stories260K."""
import sys
from pathlib import Path

import pytest
import torch

from conftest import need_data

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.finetune_quant import BLOCK, q4_0, q4_0_reference  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(3, 32), (5, 70), (1, 7), (4, 96)])
@pytest.mark.parametrize("seed", [0, 1])
def test_q4_0_matches_the_plain_reference(shape, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.1
    w[0, :min(BLOCK, shape[1])] = 0.0  # an all-zero block keeps its zeros
    got, want = q4_0(w), q4_0_reference(w)
    assert torch.allclose(got, want, atol=1e-7)
    assert (got[0, :min(BLOCK, shape[1])] == 0).all()
    # at most 16 levels per block; the error is at most one step (half a step, except where the side
    # opposite the largest magnitude is clamped at +7 instead of +8)
    for r in range(shape[0]):
        for b in range(0, shape[1], BLOCK):
            blk = w[r, b:b + BLOCK]
            d = blk.abs().max() / 8
            assert len(set(got[r, b:b + BLOCK].tolist())) <= 16
            assert (got[r, b:b + BLOCK] - blk).abs().max() <= d + 1e-7


def test_quant_quick(tmp_path):
    """The benchmark's --quick mode runs (so it cannot rot) and its rounded base still writes the phrase."""
    need_data("models", "stories260K")
    from bench.finetune_quant import main

    out = main(["--quick", "--out-dir", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    rows = {r["name"]: r for r in out["rows"]}
    assert set(rows) == {"base-fp32", "tuned-fp32", "base-q4_0", "tuned-q4_0"}
    assert rows["base-q4_0"]["hits"] > 0 and "hits_reduction_pct" in rows["tuned-q4_0"]
    assert Path(out["path"]).with_suffix(".md").is_file()
