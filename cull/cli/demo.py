"""`cull demo`: the default model answers a few writing prompts without and with cull, side by side.

Greedy decoding, so the run is reproducible. The "without" texts have their phrase matches
highlighted; the summary gives the hit counts and the measured cost of the processor.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from cull.resources import PACKAGE_DATA
from cull.cli.common import (add_model_options, add_output_options, check_backend, consoles, positive_int,
                             quiet_transformers)
from cull.errors import CullError, require
from cull.rules.find import find
from cull.rules import PhraseSet

SHIPPED_LIST = PACKAGE_DATA / "slop_phrases.txt"


def default_phrases() -> tuple[Path, str]:
    """(path, description) of the default phrase list: the one shipped with cull, so the demo and
    `cull scan` give the same result on every machine (how it is built: docs/demo_list.md)."""
    return SHIPPED_LIST, "cull's shipped list"


def demo_prompts() -> list[str]:
    with open(PACKAGE_DATA / "demo_prompts.json", encoding="utf-8") as f:
        return json.load(f)


def run_demo(*, model=None, phrases=None, max_new_tokens: int = 120, n_prompts: int = 3,
             json_path=None, threads: int | None = None, backend: str = "auto", console=None,
             err=None) -> dict:
    """Run the demo, print it, and return (and optionally write) the results as a dict."""
    require("rich", "hf")
    from rich.console import Console

    from cull.measure.models import load_model, resolve_model

    from cull.compile.cache import compile_rules
    from cull.decode.processor import CullLogitsProcessor
    console = console or Console()
    err = err or Console(stderr=True, log_path=False)
    prompts = demo_prompts()
    if not 1 <= n_prompts <= len(prompts):
        raise CullError(f"--prompts must be between 1 and {len(prompts)}, got {n_prompts}")
    if max_new_tokens < 1:
        raise CullError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    prompts = prompts[:n_prompts]

    phrases_path, what = default_phrases() if phrases is None else (Path(phrases), "your list")
    rules = PhraseSet.load(phrases_path, action="ban")
    err.print(f"Phrases: {len(rules)} from {what} ({phrases_path}), all hard-banned")

    say = err.log
    folder, gguf = resolve_model(model, say=say)  # may download the default model (with pip's progress)
    where = folder / gguf if gguf else folder
    from cull.measure.generate import generate_text

    t0 = time.perf_counter()
    with err.status(f"Loading the model {where.name} ...") as status:
        def say(msg):  # noqa: F811 - the spinner carries the messages from here on
            err.log(msg)
            status.update(msg)

        model_obj, tok = load_model(where, threads=threads, say=say, quiet=True)
        load_s = time.perf_counter() - t0
        say(f"Model loaded in {load_s:.1f} s. Compiling {len(rules)} phrases against its vocabulary ...")
        t1 = time.perf_counter()
        matcher = compile_rules(rules, tok, vocab_size=model_obj.config.vocab_size)
        compile_s = time.perf_counter() - t1
        proc = CullLogitsProcessor(matcher, backend=backend)
        status.update("Warming up ...")
        generate_text(model_obj, tok, prompts[0], max_new_tokens=4)
        generate_text(model_obj, tok, prompts[0], proc, max_new_tokens=4)

        rows = []
        for i, prompt in enumerate(prompts, 1):
            status.update(f"[{i}/{len(prompts)}] {prompt}")
            row = {"prompt": prompt}
            for label, p in (("without", None), ("with", proc)):
                r = generate_text(model_obj, tok, prompt, p, max_new_tokens=max_new_tokens,
                                  stream=_spinner_feed(status, f"[{i}/{len(prompts)}] {label} cull: "),
                                  time_processor=p is not None)
                row[label] = _result_row(r, find(r.text, rules))
            rows.append(row)
            status.stop()  # print between spinners, not through one
            render_prompt(row, i, len(prompts), console)
            if i < len(prompts):
                status.start()

    import torch

    results = {
        "model": str(where), "phrases": str(phrases_path), "n_phrases": len(rules),
        "max_new_tokens": max_new_tokens, "decoding": "greedy", "threads": torch.get_num_threads(),
        "backend": backend, "load_s": round(load_s, 3), "compile_s": round(compile_s, 3),
        "prompts": rows, "totals": _totals(rows),
    }
    render_summary(results, console)
    if json_path:
        try:
            Path(json_path).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            raise CullError(f"cannot write {str(json_path)!r}: {exc.strerror}") from None
        err.print(f"Results written to {json_path}")
    return results


def _spinner_feed(status, prefix: str):
    """A stream callback that shows the last few words being written in the spinner."""
    tail = [""]

    def feed(piece: str) -> None:
        tail[0] = (tail[0] + piece)[-60:]
        status.update(prefix + "..." + tail[0].replace("\n", " "))

    return feed


def _result_row(r, hits) -> dict:
    return {
        "text": r.text, "tokens": r.n_tokens, "seconds": round(r.seconds, 4),
        "tokens_per_s": round(r.tokens_per_s, 3), "processor_seconds": round(r.processor_seconds, 4),
        "hits": len(hits),
        "matches": [{"phrase": m.rule.text, "start": m.start, "end": m.end, "text": r.text[m.start:m.end]}
                    for m in hits],
    }


def _totals(rows) -> dict:
    def total(label, key):
        return sum(r[label][key] for r in rows)

    tps = {lab: total(lab, "tokens") / total(lab, "seconds") if total(lab, "seconds") else 0.0
           for lab in ("without", "with")}
    proc_s, tokens_with, seconds_with = total("with", "processor_seconds"), total("with", "tokens"), total("with", "seconds")
    speeds = [r["without"]["tokens_per_s"] for r in rows]  # same settings, different prompts
    return {
        "hits_without": total("without", "hits"), "hits_with": total("with", "hits"),
        "tokens_per_s_without": round(tps["without"], 3), "tokens_per_s_with": round(tps["with"], 3),
        # end to end: speed with the processor as a share of the speed without (noisy on a busy machine)
        "speed_ratio_pct": round(100.0 * tps["with"] / tps["without"], 2) if tps["without"] else None,
        "overhead_pct": round(100.0 * (tps["without"] / tps["with"] - 1.0), 2) if tps["with"] else None,
        # how much the speed of single runs varied: end-to-end differences below it are noise
        "run_spread_pct": (round(100.0 * (max(speeds) / min(speeds) - 1.0), 2)
                           if len(speeds) > 1 and min(speeds) > 0 else None),
        # the processor's own time, measured around each call: the steady figure
        "processor_ms_per_token": round(1000.0 * proc_s / tokens_with, 4) if tokens_with else None,
        "processor_share_pct": round(100.0 * proc_s / seconds_with, 3) if seconds_with else None,
    }


def _highlighted(text: str, matches, style: str):
    from rich.text import Text

    t = Text(text)
    for m in matches:
        t.stylize(style, m["start"], m["end"])
    return t


def _hits(n: int) -> str:
    return f"{n} hit{'s' * (n != 1)}"


def render_prompt(row: dict, i: int, n: int, console) -> None:
    """One prompt's two answers side by side, the matches highlighted."""
    from rich import box
    from rich.table import Table

    w, c = row["without"], row["with"]
    found = ", ".join(sorted({m["text"].lower() for m in w["matches"]}))
    table = Table(title=f"[{i}/{n}] {row['prompt']}", title_justify="left", title_style="bold",
                  box=box.ROUNDED, expand=True, caption=f"caught: {found}" if found else None,
                  caption_justify="left")
    table.add_column(f"without cull: {_hits(w['hits'])}", ratio=1, header_style="bold red" if w["hits"] else "bold")
    table.add_column(f"with cull: {_hits(c['hits'])}", ratio=1, header_style="bold red" if c["hits"] else "bold green")
    table.add_row(_highlighted(w["text"], w["matches"], "bold black on yellow"),
                  _highlighted(c["text"], c["matches"], "bold white on red"))
    console.print(table)
    console.print()


def render_summary(results: dict, console) -> None:
    """Hits per prompt, speeds, and the processor's measured overhead."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    tot = results["totals"]
    summary = Table(title="Summary", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    summary.add_column("prompt", no_wrap=True)
    for col in ("hits without", "hits with", "tok/s without", "tok/s with"):
        summary.add_column(col, justify="right")
    for row in results["prompts"]:
        summary.add_row(_short(row["prompt"]), str(row["without"]["hits"]), str(row["with"]["hits"]),
                        f"{row['without']['tokens_per_s']:.1f}", f"{row['with']['tokens_per_s']:.1f}")
    summary.add_row(Text("total", style="bold"), str(tot["hits_without"]), str(tot["hits_with"]),
                    f"{tot['tokens_per_s_without']:.1f}", f"{tot['tokens_per_s_with']:.1f}", end_section=True)
    console.print(summary)
    threads = results["threads"]
    console.print(
        f"{results['n_phrases']} phrases hard-banned: {_hits(tot['hits_without'])} without cull, "
        f"{_hits(tot['hits_with'])} with it.")
    console.print(
        f"Overhead: the processor took [bold]{tot['processor_ms_per_token']:.2f} ms per token, "
        f"{tot['processor_share_pct']:.2f}%[/] of decoding time.")
    ratio, spread = tot["speed_ratio_pct"], tot["run_spread_pct"]
    if spread is None:
        noise = "; end-to-end speed moves with the machine's load"
    elif abs(100.0 - ratio) < spread:
        noise = f"; single runs varied by {spread:.0f}%, so the difference is within the noise"
    else:
        noise = ""
    console.print(
        f"End to end: {tot['tokens_per_s_with']:.1f} tok/s with cull vs {tot['tokens_per_s_without']:.1f} "
        f"without, {ratio:.1f}% of the speed ({threads} CPU thread{'s' * (threads != 1)}{noise}).")


def _short(s: str, n: int = 32) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def cmd_demo(args) -> int:
    check_backend(args.backend, "cpu")  # load_model puts the model on the CPU
    quiet_transformers()
    out, err = consoles(args)
    run_demo(model=args.model, phrases=args.phrases, max_new_tokens=args.max_new_tokens,
             n_prompts=args.prompts, json_path=args.json, threads=args.threads, backend=args.backend,
             console=out, err=err)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="show a model's output without and with cull, side by side",
                       description="Answer a few writing prompts twice, without and with cull's shipped "
                                   "list of over-used LLM phrases hard-banned, and compare.")
    add_model_options(p)
    p.add_argument("--phrases", default=None, metavar="FILE", help="phrase file (default: cull's shipped list)")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=120, metavar="N",
                   help="new tokens per answer (default: 120)")
    p.add_argument("--prompts", type=positive_int("--prompts"), default=3, metavar="N", help="how many prompts (1-6)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON (default: not written)")
    add_output_options(p)
    p.set_defaults(func=cmd_demo)
