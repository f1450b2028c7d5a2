"""Kernels that apply a compiled matcher's bans and biases to a batch of logits, in place.

One dispatcher, one module per backend with the same signature, and a plain reference:

    apply_rules(logits, nodes, classes, tables, backend="auto")

`logits` is [B, V] (fp32, bf16 or fp16); `nodes`/`classes` are each row's automaton state;
`tables` is a `cull.compile.tables.DeviceTables` (CompiledMatcher.device_tables(device)), which the
kernels read and never write. On CUDA the HF processor calls `triton_backend.step_triton` instead,
which also finds the states on the device, in the same launch.
"""
from __future__ import annotations

BACKENDS = ("auto", "torch", "triton", "reference")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    from cull.kernels import triton_backend  # noqa: F401

    return triton_backend.AVAILABLE


def resolve_backend(backend: str, device) -> str:
    if backend not in BACKENDS:
        from cull.errors import CullError

        raise CullError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if getattr(device, "type", str(device)) == "cuda" and triton_available() else "torch"
    return backend


def apply_rules(logits, nodes, classes, tables, backend: str = "auto"):
    """Write -inf (ban) or add the delta (bias) to every token that would complete a match."""
    backend = resolve_backend(backend, logits.device)
    if backend == "torch":
        from cull.kernels.torch_backend import apply_rules_torch as fn
    elif backend == "triton":
        from cull.kernels.triton_backend import apply_rules_triton as fn
    else:
        from cull.kernels.reference import apply_rules_reference as fn
    if tables.pending is not None:  # rows inside a character split across tokens: cull/compile/pending.py
        return tables.pending.apply(logits, nodes, classes, fn, tables)
    return fn(logits, nodes, classes, tables)
