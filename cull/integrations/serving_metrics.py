"""What an operator sees of cull inside a serving engine: one log line per compile, and counters
exported through the process's Prometheus registry when `prometheus_client` is installed (vLLM's
`/metrics` shows them; with several processes, vLLM's PROMETHEUS_MULTIPROC_DIR collects them)."""
from __future__ import annotations

import logging

# a child of vLLM's logger, so that its handlers and format apply
log = logging.getLogger("vllm.cull")


class _Metrics:
    def __init__(self):
        self.compiles = self.evictions = self.failures = None
        self.cache_bytes = None
        try:
            from prometheus_client import Counter, Gauge
        except ImportError:
            return
        try:
            self.compiles = Counter("cull_compiles", "Phrase lists compiled by cull (cache misses)")
            self.evictions = Counter("cull_matcher_evictions", "Compiled lists dropped from cull's matcher cache")
            self.failures = Counter("cull_apply_failures", "Rows cull could not serve (failed closed)")
            self.cache_bytes = Gauge("cull_matcher_cache_bytes", "Bytes held by cull's matcher cache",
                                     multiprocess_mode="livesum")
        except ValueError:  # already registered (a second processor in this process): reuse nothing
            log.debug("cull metrics already registered in this process")

    def compiled(self, n_phrases: int, seconds: float, mib: float, source: str) -> None:
        log.info("cull compiled %d phrases (%s) in %.0f ms: %.1f MiB", n_phrases, source, seconds * 1e3, mib)
        if self.compiles is not None:
            self.compiles.inc()

    def evicted(self, n: int) -> None:
        if n and self.evictions is not None:
            self.evictions.inc(n)

    def failed(self, n_rows: int) -> None:
        if n_rows and self.failures is not None:
            self.failures.inc(n_rows)

    def cache_size(self, nbytes: float) -> None:
        if self.cache_bytes is not None:
            self.cache_bytes.set(nbytes)


METRICS = _Metrics()
