"""The docstring examples of cull.integrations.vllm, which `python -m pytest` in the main venv cannot
import (no vLLM there: see the root conftest.py), run here against the real engine's classes."""
import doctest

import pytest

pytestmark = pytest.mark.vllm


def test_vllm_docstring_examples():
    import cull.integrations.vllm as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
