"""Shared benchmark plumbing: the results schema, timing, markdown tables and plots."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from cull.resources import data_dir  # noqa: F401 (the benchmarks read the library's data folder)

RESULTS = Path(__file__).resolve().parent / "results"


def git_sha() -> str:
    if os.environ.get("CULL_GIT_SHA"):  # set by bench/gpu_check.sh: the device machine's copy has no .git
        return os.environ["CULL_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "transformers", "triton"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    import cull

    out["cull"] = cull.__version__
    return out


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def median_time(fn, reps: int, warmup: int = 3) -> float:
    """Median wall seconds of fn() over reps runs (CPU timing; GPU code syncs inside fn)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved_medians(fns: dict, reps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each function, run round-robin so that machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def write_results(benchmark: str, rows: list[dict], out_dir: Path | None = None, extra: dict | None = None,
                  tag: str = "") -> Path:
    dev = device_name()
    date = _dt.date.today().isoformat()
    doc = {"benchmark": benchmark, "device": dev, "git_sha": git_sha(), "date": date,
           "versions": versions(), "rows": rows, **(extra or {})}
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = "cpu" if dev == "cpu" else dev.lower().replace(" ", "-")
    path = out_dir / f"{benchmark}-{slug}-{date}{tag}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:,.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_lines(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
               logx: bool = True) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    if logx:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ticks = sorted({x for xs, _ in series.values() for x in xs})
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
