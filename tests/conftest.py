"""Shared test helpers: where the offline test data lives, and what to do when it is missing.

The data folder is ``$CULL_DATA_DIR`` (default ``<repo>/../shared/data``). When a file is
missing, tests skip with the reason, unless ``CULL_REQUIRE_DATA=1`` (CI), where they fail.
"""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# tests/<layer>/ mirror the package; a few test modules reuse another folder's helpers (the adversary,
# the matcher's history check), so every test folder is importable whichever file runs alone
for _folder in sorted(Path(__file__).parent.iterdir()):
    if _folder.is_dir() and _folder.name not in ("vllm", "__pycache__") and str(_folder) not in sys.path:
        sys.path.append(str(_folder))

# The vLLM tests need the real engine, which lives in its own venv (tests/vllm/run.sh makes it and
# sets CULL_VLLM_TESTS=1); the main venv does not collect them, rather than skipping them.
if os.environ.get("CULL_VLLM_TESTS") != "1":
    collect_ignore_glob = ["vllm/*"]


def data_root() -> Path:
    return Path(os.environ.get("CULL_DATA_DIR") or REPO.parent / "shared" / "data")


def need_data(*parts: str) -> Path:
    """Path of a file/folder under the data root; skip (or fail under CULL_REQUIRE_DATA=1) if absent."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        msg = (
            f"test data {path} is missing; set CULL_DATA_DIR to the shared data folder "
            f"(see shared/data/README.md)"
        )
        if os.environ.get("CULL_REQUIRE_DATA") == "1":
            pytest.fail(msg + " [CULL_REQUIRE_DATA=1 makes missing data an error]", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data root (skips/fails like ``need_data`` when it is missing)."""
    return need_data()


@pytest.fixture
def one_thread():
    """Torch on one thread: tests of many tiny ops only lose to threading (and spin on a shared
    2-core machine). Tests opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
