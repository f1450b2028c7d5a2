"""An evicted matcher is freed by reference counting alone: servers such as vLLM freeze the garbage
collector (gc.freeze), so a reference cycle would keep every list ever compiled in memory."""
import gc
import weakref

import pytest
import torch

import cull
from cull.integrations.matcher_cache import MatcherCache
from cull.compile.vocab import vocab_from_token_bytes

TOKENS = [t.encode() for t in ["a", "b", "c", " ", "ab", "bc", "abc", " a", " b", "ca"]]


@pytest.fixture
def no_gc():
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


@pytest.mark.parametrize("bias", [False, True])
def test_matcher_with_device_tables_is_freed_without_gc(no_gc, bias):
    from cull.kernels import apply_rules

    rules = cull.PhraseSet(["ab", "c a"], action="bias" if bias else "ban", bias=-2.0 if bias else None)
    m = cull.compile_rules(rules, vocab_from_token_bytes(TOKENS), cache=False)
    tables = m.device_tables("cpu")
    tables.kernel_lists  # the lazily built parts must not hold the matcher either
    tables.always_sorted
    m.step_tables("cpu")  # nor the device path's step tables
    logits = torch.zeros(2, len(TOKENS))
    apply_rules(logits, torch.tensor([0, 1]), torch.tensor([0, 1]), tables, backend="torch")
    ref = weakref.ref(m)
    del m, tables
    assert ref() is None, "the matcher is only reachable through a reference cycle"


def test_evicted_matchers_are_freed_without_gc(no_gc):
    cache = MatcherCache(vocab_from_token_bytes(TOKENS), "cpu", max_mib=1e-9)  # keeps one matcher
    refs = []
    for i in range(20):
        m = cache.get(cull.PhraseSet([f"a{'b' * (i % 5)}", f"c{'a' * (i // 5)}"]))
        refs.append(weakref.ref(m))
        del m
    assert len(cache) == 1
    alive = [r for r in refs if r() is not None]
    assert len(alive) == 1, f"{len(alive)} matchers alive after eviction"
