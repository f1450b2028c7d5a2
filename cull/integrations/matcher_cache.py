"""An LRU of compiled matchers with a memory bound, for servers where every request may bring its
own phrase list: the same list is compiled once, and a stream of new lists cannot grow memory
without limit (the least recently used matchers are dropped once the bound is passed)."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

from ..compile_cache import compile_rules
from ..errors import CullError

DEFAULT_MIB = 512.0  # override with $CULL_MATCHER_CACHE_MIB


def matcher_mib(matcher) -> float:
    """Host tables plus, once built, the device copies the kernels read."""
    total = sum(v.nbytes for v in matcher.tables.values())
    for tables in matcher._device_tables.values():
        for v in tables.values():
            if hasattr(v, "element_size") and hasattr(v, "numel"):
                total += v.element_size() * v.numel()
    return total / 2**20


class MatcherCache:
    def __init__(self, vocab, device="cpu", max_mib: float | None = None):
        self.vocab = vocab
        self.device = device
        if max_mib is None:
            try:
                max_mib = float(os.environ.get("CULL_MATCHER_CACHE_MIB", DEFAULT_MIB))
            except ValueError:
                raise CullError(f"CULL_MATCHER_CACHE_MIB must be a number of MiB, got "
                                f"{os.environ['CULL_MATCHER_CACHE_MIB']!r}") from None
        self.max_mib = max_mib
        self._items: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.compiles = 0
        self.hits = 0

    def get(self, rules):
        """The compiled matcher of a PhraseSet (compiled on a miss; the disk cache still applies)."""
        key = rules.fingerprint()
        with self._lock:
            m = self._items.get(key)
            if m is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return m
        m = compile_rules(rules, self.vocab)
        tables = m.device_tables(self.device)  # built now, so that the bound counts them
        if str(self.device).startswith("cuda"):  # and the Triton kernel's lists
            from cull.kernels.triton_backend import with_lists

            with_lists(tables)
        with self._lock:
            self.compiles += 1
            self._items[key] = m
            self._items.move_to_end(key)
            self._evict()
        return m

    def mib(self) -> float:
        return sum(matcher_mib(m) for m in self._items.values())

    def _evict(self) -> None:
        while len(self._items) > 1 and self.mib() > self.max_mib:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
