"""The `cull` command line: demo, generate, compile, scan, bench, finetune, eval, discover."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import CullError, MissingExtraError

class UsageError(CullError):
    """A bad combination of command-line options."""


# ---- shared helpers ----
def _consoles():
    from .errors import require

    require("rich", "hf")
    from rich.console import Console

    return Console(), Console(stderr=True, log_path=False)


def _quiet_transformers() -> None:
    """Our own spinner and messages replace transformers' progress bars and warnings."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _add_phrase_options(p: argparse.ArgumentParser, required: bool = False, modes: bool = True) -> None:
    g = p.add_argument_group("phrases")
    g.add_argument("--phrases", action="append", default=[], metavar="FILE",
                   help="phrase file: .txt (one a line), .json, .yaml, antislop [phrase, multiplier] "
                        "pairs (repeatable)")
    g.add_argument("--phrase", action="append", default=[], metavar="TEXT",
                   help="one phrase, e.g. --phrase 'a testament to' or --phrase 'delv*' (repeatable)")
    if modes:
        g.add_argument("--mode", choices=("ban", "bias"), default=None,
                       help="ban (never written) or bias (made less likely); default: ban, or what the file says")
        g.add_argument("--bias", type=float, default=None, metavar="DELTA",
                       help="logit delta for --mode bias, e.g. -5 (antislop multipliers give their own)")
    g.add_argument("--allow-symbols", action="store_true", help="accept phrases without letters or digits")
    g.add_argument("--ignore-accents", action="store_true",
                   help="accent-insensitive matching: 'cafe' also matches 'café' (off by default)")


def load_rules(args, default=None):
    """A PhraseSet from --phrases files and --phrase texts (or `default()` when neither is given)."""
    from .rules import BAN, BIAS, PhraseSet

    mode = getattr(args, "mode", None)
    bias = getattr(args, "bias", None)
    if bias is not None and mode is None:
        mode = BIAS
    if mode == BAN and bias is not None:
        raise UsageError("--bias goes with --mode bias; with --mode ban the phrases are forbidden outright")
    if bias is not None and not bias < 0:
        raise UsageError(f"--bias must be negative to make phrases less likely, got {bias}")
    files, texts = args.phrases, args.phrase
    if not files and not texts:
        if default is None:
            raise UsageError("no phrases given: pass --phrases FILE or --phrase TEXT")
        files = [default()]
    rules = []
    try:
        for f in files:
            rules.extend(PhraseSet.load(f, action=mode, bias=bias, allow_symbols=args.allow_symbols))
        if texts:
            rules.extend(PhraseSet(texts, action=mode or BAN, bias=bias, allow_symbols=args.allow_symbols))
    except CullError as exc:
        if "needs a numeric delta" in str(exc):
            raise UsageError(f"{exc}; give one with --bias, e.g. --bias -5") from None
        raise
    if not rules:
        raise UsageError(f"the phrase list is empty ({', '.join(map(str, files))}); add phrases to it")
    return PhraseSet(rules, ignore_accents=getattr(args, "ignore_accents", False))


def _positive(name):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {v}")
        return v

    return parse


# ---- subcommands ----
def cmd_demo(args) -> int:
    from .demo import run_demo

    _quiet_transformers()
    out, err = _consoles()
    run_demo(model=args.model, phrases=args.phrases, max_new_tokens=args.max_new_tokens,
             n_prompts=args.prompts, json_path=args.json, threads=args.threads, backend=args.backend,
             console=out, err=err)
    return 0


def cmd_generate(args) -> int:
    import cull

    from .generate import generate_text
    from .models import load_model, resolve_model

    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt: pass --prompt TEXT (or pipe the prompt on stdin)")
        prompt = sys.stdin.read().rstrip("\n")
    rules = load_rules(args) if (args.phrases or args.phrase) else None
    if rules is not None and rules.regex_rules and not args.backtrack:
        from .regex_literals import expand_regex_rules

        expand_regex_rules(rules.regex_rules)  # refuse a regex the processor cannot enforce before loading
    _, err = _consoles()
    folder, gguf = resolve_model(args.model, say=err.log)
    _quiet_transformers()
    with err.status("Loading the model ...") as status:
        def say(msg):
            err.log(msg)
            status.update(msg)

        model, tok = load_model(folder / gguf if gguf else folder, threads=args.threads, say=say, quiet=True)
        proc = None
        if rules is not None and not args.backtrack:
            status.update(f"Compiling {len(rules)} phrases ...")
            proc = cull.CullLogitsProcessor(rules, tok, include_prompt=args.include_prompt,
                                            backend=args.backend, vocab_size=model.config.vocab_size)

    def stream(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()

    sample = args.sample or args.temperature is not None
    if args.backtrack:
        return _generate_backtracking(args, model, tok, prompt, rules, sample, stream, err)
    r = generate_text(model, tok, prompt, proc, max_new_tokens=args.max_new_tokens, do_sample=sample,
                      temperature=1.0 if args.temperature is None else args.temperature, seed=args.seed,
                      stream=stream, chat=False if args.raw else None)
    sys.stdout.write("\n")
    sys.stdout.flush()
    what = "no phrases"
    if rules is not None:
        n_ban = sum(rule.action == "ban" for rule in rules)
        what = ", ".join(part for part in (f"{n_ban} phrase{'s' * (n_ban != 1)} banned" if n_ban else "",
                                           f"{len(rules) - n_ban} biased" if len(rules) > n_ban else "") if part)
    err.print(f"[dim]{r.n_tokens} tokens in {r.seconds:.2f} s ({r.tokens_per_s:.1f} tok/s), {what}[/]")
    return 0


def _generate_backtracking(args, model, tok, prompt, rules, sample, stream, err) -> int:
    from .backtrack import generate_backtracking
    from .generate import build_prompt_ids

    if rules is None:
        raise UsageError("--backtrack needs phrases: pass --phrases FILE or --phrase TEXT")
    if args.include_prompt:
        raise UsageError("--backtrack matches the generated text only; leave out --include-prompt")
    ids = build_prompt_ids(tok, prompt, chat=False if args.raw else None)[0].tolist()
    t0 = time.perf_counter()
    r = generate_backtracking(model, tok, ids, rules, max_new_tokens=args.max_new_tokens, do_sample=sample,
                              temperature=1.0 if args.temperature is None else args.temperature,
                              seed=args.seed or 0, stream=stream, vocab_size=model.config.vocab_size)
    sys.stdout.write("\n")
    sys.stdout.flush()
    dt = time.perf_counter() - t0
    err.print(f"[dim]{len(r.token_ids)} tokens in {dt:.2f} s, {r.backtracks} backtrack"
              f"{'s' * (r.backtracks != 1)}{': ' + ', '.join(e['text'] for e in r.events[:5]) if r.events else ''}[/]")
    return 0


def cmd_compile(args) -> int:
    import cull

    from .models import load_tokenizer, resolve_model

    rules = load_rules(args)
    out, err = _consoles()
    source = args.tokenizer
    if source is None or not Path(source).expanduser().is_dir():
        folder, gguf = resolve_model(source, say=err.log)  # checks the path, downloads the default
        source = folder / gguf if gguf else folder
    _quiet_transformers()
    with err.status(f"Loading the tokenizer from {source} ...") as status:
        def say(msg):
            err.log(msg)
            status.update(msg)

        tok = load_tokenizer(source, say=say)
    t0 = time.perf_counter()
    matcher = cull.compile_rules(rules, tok, cache=not args.no_cache, progress=True)
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


def cmd_scan(args) -> int:
    from .demo import default_phrases
    from .scan import scan_files

    rules = load_rules(args, default=lambda: default_phrases()[0])
    out, err = _consoles()
    if not args.phrases and not args.phrase:
        err.print(f"Phrases: {len(rules)} from {default_phrases()[0]} (pass --phrases FILE to choose)")
    with err.status("Scanning ...") as status:
        report = scan_files(args.files, rules, per_line=args.per_line, field_name=args.field,
                            progress=lambda p: status.update(f"Scanning {p} ..."))
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
        return 0
    from rich.table import Table

    out.print(f"{report.hits:,} hits in {report.documents:,} document{'s' * (report.documents != 1)} "
              f"({report.words:,} words, {report.files} file{'s' * (report.files != 1)}): "
              f"{report.hits_per_1k_words:.3f} per 1,000 words")
    t = Table()
    t.add_column("phrase")
    t.add_column("count", justify="right")
    t.add_column("per 1k words", justify="right")
    common = report.most_common()
    for phrase, count in common[: args.top]:
        t.add_row(phrase, f"{count:,}", f"{1000 * count / report.words:.3f}" if report.words else "-")
    if len(common) > args.top:
        t.add_row(f"... {len(common) - args.top} more (--top N)", "", "")
    t.add_row("[bold]total[/]", f"[bold]{report.hits:,}[/]", f"[bold]{report.hits_per_1k_words:.3f}[/]",
              end_section=True)
    out.print(t)
    return 0


def cmd_bench(args) -> int:
    """Run a benchmark from bench/ (a source checkout: the benchmarks are not installed)."""
    import importlib

    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / f"{args.which}_bench.py").exists():
        _error(f"cull bench needs a source checkout of cull (bench/ beside cull/), not found under {root}")
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    name = "vllm" if args.engine == "vllm" else args.which
    if args.engine == "vllm" and args.which != "e2e":
        _error("--engine vllm goes with `cull bench e2e`")
        return 2
    mod = importlib.import_module(f"bench.{name}_bench")
    argv = (["--quick"] if args.quick else []) + (["--gpu"] if args.gpu else []) + \
        (["--out", args.out] if args.out else [])
    return int(mod.main(argv) or 0)


# ---- the parser ----
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cull", description="Take unwanted words and phrases out of what LLMs write.",
        epilog="Run `cull demo` to see it at work. Errors exit with status 2; --debug shows tracebacks.")
    parser.add_argument("--version", action="version", version=f"cull {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def model_options(p):
        p.add_argument("--model", default=None, metavar="PATH",
                       help="HF model folder or .gguf file (default: SmolLM2-135M-Instruct, no hub needed)")
        p.add_argument("--threads", type=_positive("--threads"), default=None, metavar="N",
                       help="CPU threads for torch (default: the idle cores)")
        p.add_argument("--backend", choices=("auto", "torch", "triton", "reference"), default="auto",
                       help="processor kernel backend (default: auto)")

    p = sub.add_parser("demo", help="show a model's output without and with cull, side by side",
                       description="Answer a few writing prompts twice, without and with antislop's "
                                   "517-phrase list hard-banned, and compare.")
    model_options(p)
    p.add_argument("--phrases", default=None, metavar="FILE", help="phrase file (default: antislop's 517)")
    p.add_argument("--max-new-tokens", type=_positive("--max-new-tokens"), default=120, metavar="N",
                   help="new tokens per answer (default: 120)")
    p.add_argument("--prompts", type=_positive("--prompts"), default=3, metavar="N", help="how many prompts (1-6)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="generate text with phrases banned or biased, streamed",
                       description="Generate a reply with the phrases banned (or biased) while decoding.")
    model_options(p)
    _add_phrase_options(p)
    p.add_argument("--prompt", default=None, help="the prompt (default: read stdin)")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--backtrack", action="store_true",
                   help="rewind and resample when a phrase completes (no half-written stubs; general regexes too)")
    p.add_argument("--max-new-tokens", type=_positive("--max-new-tokens"), default=200, metavar="N",
                   help="new tokens at most (default: 200)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="sampling temperature (implies --sample)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (with --sample)")
    p.add_argument("--include-prompt", action="store_true",
                   help="also catch phrases that start in the prompt")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("compile", help="compile phrases against a tokenizer and show the table sizes",
                       description="Compile phrases against a tokenizer (cached under $CULL_CACHE_DIR).")
    _add_phrase_options(p)
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="HF tokenizer/model folder or .gguf file (default: the default model's)")
    p.add_argument("--no-cache", action="store_true", help="compile afresh; neither read nor write the cache")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("scan", help="count phrase matches in .txt and .jsonl files",
                       description="Count phrase matches in .txt files (one document each, or per line) "
                                   "and .jsonl files (one document per line).")
    p.add_argument("files", nargs="+", metavar="FILE", help=".txt/.md/.jsonl files or folders")
    _add_phrase_options(p, modes=False)
    p.add_argument("--per-line", action="store_true", help="each line of a .txt file is a document")
    p.add_argument("--field", default="text", metavar="NAME", help="the JSONL field holding the text (default: text)")
    p.add_argument("--top", type=_positive("--top"), default=30, metavar="N", help="phrases to list (default: 30)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_scan)

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

    from .discover import add_discover_parser
    from .finetune.commands import add_eval_parser, add_finetune_parser

    add_finetune_parser(sub)
    add_eval_parser(sub)
    add_discover_parser(sub)
    return parser


def _error(msg: str) -> None:
    red = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    line = " ".join(str(msg).split())  # one line, whatever the message held
    sys.stderr.write(f"\033[31merror: {line}\033[0m\n" if red else f"error: {line}\n")
    sys.stderr.flush()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except (CullError, MissingExtraError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        msg = str(exc)
        if isinstance(exc, OSError) and exc.filename:
            msg = f"{exc.strerror}: {exc.filename}"
        _error(msg)
        return 2
    except BrokenPipeError:  # `cull ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
