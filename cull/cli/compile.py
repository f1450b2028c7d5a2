"""`cull compile`: compile phrases against a tokenizer and show the tables' sizes."""
from __future__ import annotations

import json
import time
from pathlib import Path

from cull.cli.common import (add_output_options, add_phrase_options, consoles, load_rules, progress_wanted,
                             quiet_transformers)

def cmd_compile(args) -> int:
    from cull.compile.cache import compile_rules
    from cull.measure.models import load_tokenizer, resolve_model

    rules = load_rules(args)
    out, err = consoles(args)
    source = args.tokenizer
    if source is None or not Path(source).expanduser().is_dir():
        folder, gguf = resolve_model(source, say=err.log)  # checks the path, downloads the default
        source = folder / gguf if gguf else folder
    quiet_transformers()
    with err.status(f"Loading the tokenizer from {source} ...") as status:
        def say(msg):
            err.log(msg)
            status.update(msg)

        tok = load_tokenizer(source, say=say)
    t0 = time.perf_counter()
    matcher = compile_rules(rules, tok, cache=not args.no_cache, progress=progress_wanted(args))
    wall = time.perf_counter() - t0
    cached = bool(matcher.meta.get("from_cache"))
    stats = matcher.stats()
    info = {"tokenizer": str(source), "vocab": matcher.n_tokens, "rules": len(rules), **stats,
            "seconds": round(wall, 4), "from_cache": cached,
            "compile_s": round(float(matcher.meta.get("compile_s", wall)), 4)}
    if args.json:
        out.print_json(json.dumps(info))
        return 0
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("tokenizer", str(source))
    t.add_row("vocabulary", f"{matcher.n_tokens:,} tokens")
    t.add_row("rules", f"{len(rules):,} ({stats['patterns']:,} patterns)")
    t.add_row("states", f"{stats['states']:,}")
    t.add_row("ranges", f"{stats['ranges']:,}")
    t.add_row("memory", f"{stats['table_mib']:.2f} MiB tables ({stats['device_mib']:.2f} MiB on the device)")
    t.add_row("compile time", f"{wall:.2f} s" + (f" (read from the cache; compiling took "
                                                   f"{info['compile_s']:.2f} s)" if cached else ""))
    out.print(t)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compile", help="compile phrases against a tokenizer and show the table sizes",
                       description="Compile phrases against a tokenizer (cached under $CULL_CACHE_DIR).")
    add_phrase_options(p, "none; give --phrases or --phrase")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="HF tokenizer/model folder or .gguf file (default: the default model's)")
    p.add_argument("--no-cache", action="store_true", help="compile afresh; neither read nor write the cache")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    add_output_options(p)
    p.set_defaults(func=cmd_compile)
