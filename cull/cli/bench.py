"""`cull bench`: run one of the benchmarks in bench/."""
from __future__ import annotations

import sys
from pathlib import Path

from cull.cli.common import print_error

def cmd_bench(args) -> int:
    """Run a benchmark from bench/ (a source checkout: the benchmarks are not installed)."""
    import importlib

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / f"{args.which}_bench.py").exists():
        print_error(f"cull bench needs a source checkout of cull (bench/ beside cull/), not found under {root}")
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    name = "vllm" if args.engine == "vllm" else args.which
    if args.engine == "vllm" and args.which != "e2e":
        print_error("--engine vllm goes with `cull bench e2e`")
        return 2
    mod = importlib.import_module(f"bench.{name}_bench")
    argv = (["--quick"] if args.quick else []) + (["--gpu"] if args.gpu else []) + \
        (["--out", args.out] if args.out else [])
    return int(mod.main(argv) or 0)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure compile time, per-step cost and end-to-end overhead, with plots",
                       description="Run a benchmark: correctness first, then timings; JSON, a markdown "
                                   "table and a PNG plot go to bench/results/.")
    p.add_argument("which", choices=("compile", "kernel", "e2e"), help="which benchmark")
    p.add_argument("--quick", action="store_true", help="a small, fast version")
    p.add_argument("--gpu", action="store_true", help="the CUDA version (kernel, e2e)")
    p.add_argument("--out", default=None, metavar="DIR", help="results folder (default: bench/results)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="e2e: HF generate (default) or the vLLM engine (run from a venv with vLLM)")
    p.set_defaults(func=cmd_bench)
