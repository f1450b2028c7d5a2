"""What the commands share: option groups, rule loading, argument types, consoles and errors."""
from __future__ import annotations

import argparse
import math
import os
import sys

from cull.errors import CullError


class UsageError(CullError):
    """A bad combination of command-line options."""


def consoles(args=None):
    """(stdout, stderr) rich consoles. Results go to stdout; stderr carries messages and spinners,
    without spinners under --no-progress and silent under --quiet."""
    from cull.errors import require

    require("rich", "hf")
    from rich.console import Console

    quiet = bool(getattr(args, "quiet", False))
    err_class = Console if progress_wanted(args) else _console_without_spinners()
    return Console(), err_class(stderr=True, log_path=False, quiet=quiet)


def _console_without_spinners():
    from rich.console import Console

    class NoSpinner:
        def update(self, *args, **kwargs):
            pass

        start = stop = update

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class ConsoleWithoutSpinners(Console):
        def status(self, *args, **kwargs):
            return NoSpinner()

    return ConsoleWithoutSpinners


def progress_wanted(args) -> bool:
    return not (getattr(args, "quiet", False) or getattr(args, "no_progress", False))


def add_output_options(p: argparse.ArgumentParser, bars: bool = True) -> None:
    """--quiet, and --no-progress for the commands that show spinners or progress bars."""
    g = p.add_argument_group("output")
    if bars:
        g.add_argument("--no-progress", action="store_true",
                       help="no spinners or progress bars (transformers' included); messages still print")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print the results only: no progress, messages or warnings (errors still print)")


def quiet_transformers(warnings: bool = True) -> None:
    """Hide transformers' progress bars (our spinners and --no-progress replace them) and, with
    `warnings`, its warnings too."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    if warnings:
        hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def sayer(args):
    """A `say(msg)` for messages on stderr, silent under --quiet."""
    if getattr(args, "quiet", False):
        return lambda msg: None
    return say


def check_backend(backend: str, device) -> None:
    """Refuse a kernel backend that cannot run where the model runs, saying what to use instead."""
    on_gpu = getattr(device, "type", str(device)) == "cuda"
    if backend != "triton" or on_gpu or os.environ.get("TRITON_INTERPRET") == "1":
        return
    raise UsageError("--backend triton runs on a CUDA GPU, and this command runs the model on the CPU; "
                     "use --backend torch (or auto, which picks torch on the CPU)")


def add_phrase_options(p: argparse.ArgumentParser, when_none: str, modes: bool = True) -> None:
    """--phrases, --phrase and the matching options; `when_none` says what happens without phrases."""
    g = p.add_argument_group("phrases")
    g.add_argument("--phrases", action="append", default=[], metavar="FILE",
                   help="phrase file: .txt (one a line), .json, .yaml, antislop [phrase, multiplier] "
                        f"pairs; repeatable (default: {when_none})")
    g.add_argument("--phrase", action="append", default=[], metavar="TEXT",
                   help="one phrase, e.g. --phrase 'a testament to' or --phrase 'delv*'; repeatable, and adds "
                        "to --phrases (default: none)")
    if modes:
        g.add_argument("--mode", choices=("ban", "bias"), default=None,
                       help="ban (never written) or bias (made less likely); default: ban, or what the file says")
        g.add_argument("--bias", type=float, default=None, metavar="DELTA",
                       help="logit delta for --mode bias, e.g. -5 (default: the file's own, as antislop's "
                            "multipliers give)")
    g.add_argument("--allow-symbols", action="store_true", help="accept phrases without letters or digits")
    g.add_argument("--ignore-accents", action="store_true",
                   help="accent-insensitive matching: 'cafe' also matches 'café' (off by default)")
    g.add_argument("--confusables", action="store_true",
                   help="look-alike characters count as one (Unicode UTS #39): Cyrillic 'е' matches Latin 'e' "
                        "(off by default; needs pip install 'cull-lm[confusables]')")


def load_rules(args, default=None, action=None):
    """A PhraseSet from --phrases files and --phrase texts (or `default()` when neither is given);
    `action` overrides --mode and the files' own actions."""
    from cull.rules import BAN, BIAS, PhraseSet

    mode = action or getattr(args, "mode", None)
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
    rules, symbols = [], getattr(args, "allow_symbols", False)
    try:
        for f in files:
            rules.extend(PhraseSet.load(f, action=mode, bias=bias, allow_symbols=symbols))
        if texts:
            rules.extend(PhraseSet(texts, action=mode or BAN, bias=bias, allow_symbols=symbols))
    except CullError as exc:
        if "needs a numeric delta" in str(exc):
            raise UsageError(f"{exc}; give one with --bias, e.g. --bias -5") from None
        raise
    if not rules:
        raise UsageError(f"the phrase list is empty ({', '.join(map(str, files))}); add phrases to it")
    return PhraseSet(rules, ignore_accents=getattr(args, "ignore_accents", False),
                     confusables=getattr(args, "confusables", False))


def positive_int(name):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, got {v}")
        return v

    return parse


MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer


def seed_value(s: str) -> int:
    """A --seed: a whole number from 0 to 2**63 - 1."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be a whole number, got {s!r}") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seed must be between 0 and {MAX_SEED}, got {s[:30]}")
    return v


def temperature_value(s: str) -> float:
    """A --temperature: a finite number above 0 (greedy decoding has its own flag)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--temperature must be a number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"--temperature must be above 0 and finite, got {s} (greedy decoding: "
                                         "--greedy where the command has it)")
    return v


def add_model_path_options(p: argparse.ArgumentParser) -> None:
    """--model and --threads: which model, on how many CPU threads."""
    p.add_argument("--model", default=None, metavar="PATH",
                   help="HF model folder or .gguf file (default: SmolLM2-135M-Instruct, no hub needed)")
    p.add_argument("--threads", type=positive_int("--threads"), default=None, metavar="N",
                   help="CPU threads for torch (default: the idle cores)")


def add_model_options(p: argparse.ArgumentParser) -> None:
    add_model_path_options(p)
    p.add_argument("--backend", choices=("auto", "torch", "triton", "reference"), default="auto",
                   help="the processor's kernels: torch (CPU or GPU), triton (CUDA GPU only), reference (slow, "
                        "for checks), or auto (triton on a GPU, torch otherwise)")


def print_error(msg: str) -> None:
    red = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    line = " ".join(str(msg).split())  # one line, whatever the message held
    sys.stderr.write(f"\033[31merror: {line}\033[0m\n" if red else f"error: {line}\n")
    sys.stderr.flush()


def add_sampling_options(p, prompts_default: str):
    add_model_path_options(p)
    p.add_argument("--phrases", action="append", default=[], metavar="FILE",
                   help="phrase file (.txt, .json, .yaml, antislop pairs); repeatable (required, or --phrase); "
                        "every phrase counts as a ban here, a bias in the file is not read")
    p.add_argument("--phrase", action="append", default=[], metavar="TEXT",
                   help="one phrase; repeatable, and adds to --phrases (default: none)")
    p.add_argument("--prompts", default=prompts_default, metavar="FILE",
                   help=f"prompts: .json list or {{category: [...]}}, .txt one a line, or a built-in set "
                        f"(train, heldout); default: {prompts_default}")
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_const", const=True, default=None,
                      help="send prompts through the chat template (an error if the model has none; "
                           "default: the template when the model has one)")
    chat.add_argument("--raw", dest="chat", action="store_const", const=False,
                      help="send prompts as raw text (an empty prompt is BOS only)")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=128, metavar="N",
                   help="new tokens per generation at most")
    p.add_argument("--temperature", type=temperature_value, default=0.8, metavar="T", help="sampling temperature")
    p.add_argument("--seed", type=seed_value, default=0, metavar="N",
                   help="random seed: the same seed gives the same samples")
    add_output_options(p)


def load_phrases(args):
    """The phrases of `cull eval` and `cull finetune`: --phrases and --phrase, all as bans."""
    from cull.rules import BAN

    return load_rules(args, action=BAN)


def load_model_for(args, path):
    """A model, its tokenizer and the base path (messages to stderr), for finetune, eval and discover."""
    from cull.measure.models import load_model_with_base

    return load_model_with_base(path, threads=args.threads, say=sayer(args), quiet=not progress_wanted(args))


def say(msg) -> None:
    print(msg, file=sys.stderr, flush=True)
