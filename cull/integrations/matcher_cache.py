"""An LRU of compiled matchers with a memory bound, for servers where every request may bring its
own phrase list: the same list is compiled once, and a stream of new lists cannot grow memory
without limit (the least recently used matchers are dropped once the bound is passed; nothing
else refers to them, so reference counting frees them at once, garbage collector frozen or not)."""
from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict

from cull.compile.cache import compile_rules
from cull.errors import CullError
from cull.integrations.serving_metrics import METRICS

DEFAULT_MIB = 512.0  # override with $CULL_MATCHER_CACHE_MIB
PERSIST_MIN_PHRASES = 1000  # inline lists this large go to the disk cache too (see `get`)


def matcher_mib(matcher) -> float:
    """Host tables plus, once built, the device copies the kernels read."""
    return (sum(v.nbytes for v in matcher.tables.values()) + matcher.device_nbytes()) / 2**20


class MatcherCache:
    def __init__(self, vocab, device="cpu", max_mib: float | None = None):
        self.vocab = vocab
        self.device = device
        if max_mib is None:
            raw = os.environ.get("CULL_MATCHER_CACHE_MIB", "")
            try:
                max_mib = float(raw) if raw else DEFAULT_MIB
            except ValueError:
                max_mib = math.nan
            if not math.isfinite(max_mib) or max_mib < 0:
                raise CullError(f"CULL_MATCHER_CACHE_MIB must be a number of MiB (>= 0), got {raw!r}")
        self.max_mib = max_mib
        self._items: OrderedDict[str, tuple[object, float]] = OrderedDict()  # key -> (matcher, MiB)
        self._mib = 0.0
        self._lock = threading.Lock()
        self.compiles = 0
        self.hits = 0
        self.evictions = 0

    def get(self, rules, *, persist: bool | None = None, source: str = "inline"):
        """The compiled matcher of a PhraseSet (compiled on a miss). `persist`: whether a compile
        goes to the disk cache; by default only lists of PERSIST_MIN_PHRASES or more do. A small
        inline list recompiles in a fraction of a second from the vocabulary's cached keys, and
        writing every one-off list to disk would churn the bounded cache; a large one costs
        seconds, which a restart should not pay again."""
        key = rules.fingerprint()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit[0]
        if persist is None:
            persist = len(rules) >= PERSIST_MIN_PHRASES
        t0 = time.perf_counter()
        m = compile_rules(rules, self.vocab, cache=persist)
        tables = m.device_tables(self.device)  # built now, so that the bound counts them
        if str(self.device).startswith("cuda"):  # and the Triton kernel's lists
            tables.kernel_lists  # a cached property: reading it builds the lists
        mib = matcher_mib(m)
        if not m.meta.get("from_cache"):
            METRICS.compiled(len(rules), time.perf_counter() - t0, mib, source)
        with self._lock:
            self.compiles += 1
            old = self._items.pop(key, None)
            if old is not None:
                self._mib -= old[1]
            self._items[key] = (m, mib)
            self._mib += mib
            self._evict()
            METRICS.cache_size(self._mib * 2**20)
        return m

    def mib(self) -> float:
        return self._mib

    def _evict(self) -> None:
        n = 0
        while len(self._items) > 1 and self._mib > self.max_mib:
            _, (_, mib) = self._items.popitem(last=False)
            self._mib -= mib
            n += 1
        self.evictions += n
        METRICS.evicted(n)

    def __len__(self) -> int:
        return len(self._items)
