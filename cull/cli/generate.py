"""`cull generate`: generate text with phrases banned or biased, streamed to stdout."""
from __future__ import annotations

import argparse
import sys
import time

from cull.cli.common import (UsageError, add_model_options, add_output_options, add_phrase_options, check_backend,
                             consoles, load_rules, positive_int, quiet_transformers, seed_value, temperature_value)

TEMPERATURE, TOP_P, SEED = 0.7, 0.9, 0

DESCRIPTION = f"""Generate a reply with the phrases banned (or biased) while decoding, streamed to stdout.

It samples (temperature {TEMPERATURE}, top-p {TOP_P}) from a fixed seed, {SEED} unless --seed says otherwise, so
the same command gives the same text; --greedy decodes greedily. At the end (on stderr) it reports how
often the phrases fired: the steps at which the model's most likely next token was banned (or biased
below another), and the steps at which banned tokens held at least 1% of the model's probability
(before temperature and top-p). With --backtrack it reports the rewinds instead."""


def cmd_generate(args) -> int:
    from cull.decode.processor import CullLogitsProcessor
    from cull.measure.generate import BanTally, generate_text
    from cull.measure.models import load_model, resolve_model

    sampling = _sampling(args)
    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt: pass --prompt TEXT (or pipe the prompt on stdin)")
        prompt = sys.stdin.read().rstrip("\n")
    rules = load_rules(args) if (args.phrases or args.phrase) else None
    if rules is not None and rules.regex_rules and not args.backtrack:
        from cull.rules.regex_literals import expand_regex_rules

        expand_regex_rules(rules.regex_rules)  # refuse a regex the processor cannot enforce before loading
    if rules is not None and not args.backtrack:
        check_backend(args.backend, "cpu")  # load_model puts the model on the CPU
    _, err = consoles(args)
    folder, gguf = resolve_model(args.model, say=err.log)
    quiet_transformers()
    with err.status("Loading the model ...") as status:
        def say(msg):
            err.log(msg)
            status.update(msg)

        model, tok = load_model(folder / gguf if gguf else folder, threads=args.threads, say=say, quiet=True)
        proc = None
        if rules is not None and not args.backtrack:
            status.update(f"Compiling {len(rules)} phrases ...")
            proc = BanTally(CullLogitsProcessor(rules, tok, include_prompt=args.include_prompt,
                                                backend=args.backend, vocab_size=model.config.vocab_size))

    def stream(piece):
        sys.stdout.write(piece)
        sys.stdout.flush()

    if args.backtrack:
        return _generate_backtracking(args, model, tok, prompt, rules, sampling, stream, err)
    r = generate_text(model, tok, prompt, proc, max_new_tokens=args.max_new_tokens, stream=stream,
                      chat=False if args.raw else None, **sampling)
    sys.stdout.write("\n")
    sys.stdout.flush()
    _note(err, f"{r.n_tokens} tokens in {r.seconds:.2f} s ({r.tokens_per_s:.1f} tok/s), {_how(sampling)}")
    if rules is not None:
        only_bans = _n_banned(rules) == len(rules)
        _note(err, f"{_what(rules)}: fired at {proc.top_changed} of {proc.steps} steps (the model's most likely "
                   f"next token was {'banned' if only_bans else 'banned or biased away'})"
                   + (f"; banned tokens held at least 1% of the probability at {proc.masked}"
                      if _n_banned(rules) else ""))
    return 0


def _note(err, text: str) -> None:
    """A line of the end report, on stderr: dim, never wrapped, silent under --quiet."""
    err.print(text, style="dim", highlight=False, soft_wrap=True, markup=False)


def _sampling(args) -> dict:
    """generate_text's sampling arguments; an error for a sampling option given with --greedy."""
    if args.greedy:
        given = [name for name, value in (("--temperature", args.temperature), ("--top-p", args.top_p),
                                          ("--seed", args.seed)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} goes with sampling; leave out --greedy, or leave out {given[0]}")
        return {"do_sample": False}
    temperature = TEMPERATURE if args.temperature is None else args.temperature
    if not temperature > 0:
        raise UsageError(f"--temperature must be above 0, got {temperature}; for greedy decoding use --greedy")
    return {"do_sample": True, "temperature": temperature, "top_p": TOP_P if args.top_p is None else args.top_p,
            "seed": SEED if args.seed is None else args.seed}


def _how(sampling: dict) -> str:
    if not sampling["do_sample"]:
        return "greedy"
    top_p = f", top-p {sampling['top_p']:g}" if sampling["top_p"] < 1 else ""
    return (f"sampled at temperature {sampling['temperature']:g}{top_p}, seed {sampling['seed']} "
            f"(--seed N for another reply)")


def _n_banned(rules) -> int:
    return sum(rule.action == "ban" for rule in rules)


def _what(rules) -> str:
    n_ban = _n_banned(rules)
    n_bias = len(rules) - n_ban
    if n_ban and n_bias:
        return f"{n_ban} phrase{'s' * (n_ban != 1)} banned, {n_bias} biased"
    n = n_ban or n_bias
    return f"{n} phrase{'s' * (n != 1)} {'banned' if n_ban else 'biased'}"


def _generate_backtracking(args, model, tok, prompt, rules, sampling, stream, err) -> int:
    from cull.decode.backtrack import generate_backtracking
    from cull.measure.generate import build_prompt_ids

    if rules is None:
        raise UsageError("--backtrack needs phrases: pass --phrases FILE or --phrase TEXT")
    if args.include_prompt:
        raise UsageError("--backtrack matches the generated text only; leave out --include-prompt")
    ids = build_prompt_ids(tok, prompt, chat=False if args.raw else None)[0].tolist()
    t0 = time.perf_counter()
    r = generate_backtracking(model, tok, ids, rules, max_new_tokens=args.max_new_tokens,
                              do_sample=sampling["do_sample"], temperature=sampling.get("temperature", 1.0),
                              top_p=sampling.get("top_p"), seed=sampling.get("seed", 0), stream=stream,
                              vocab_size=model.config.vocab_size)
    sys.stdout.write("\n")
    sys.stdout.flush()
    dt = time.perf_counter() - t0
    n = len(r.token_ids)
    _note(err, f"{n} tokens in {dt:.2f} s ({n / dt if dt > 0 else 0.0:.1f} tok/s), {_how(sampling)}")
    shown = ": " + ", ".join(repr(e["text"]) for e in r.events[:5]) if r.events else ""
    _note(err, f"{_what(rules)}: {r.backtracks} backtrack{'s' * (r.backtracks != 1)}{shown}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text with phrases banned or biased, streamed",
                       description=DESCRIPTION)
    add_model_options(p)
    add_phrase_options(p, "none, so nothing is banned")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="the prompt (default: read stdin)")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--backtrack", action="store_true",
                   help="rewind and resample when a phrase completes (no half-written stubs; general regexes too)")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=200, metavar="N",
                   help="new tokens at most")
    s = p.add_argument_group("decoding")
    s.add_argument("--greedy", action="store_true", help="greedy decoding: always the most likely token")
    s.add_argument("--temperature", type=temperature_value, default=None, metavar="T",
                   help=f"sampling temperature (default: {TEMPERATURE})")
    s.add_argument("--top-p", type=_top_p, default=None, metavar="P",
                   help=f"sample from the smallest set of tokens holding P of the probability; 1 for all "
                        f"(default: {TOP_P})")
    s.add_argument("--seed", type=seed_value, default=None, metavar="N",
                   help=f"random seed: the same seed gives the same text (default: {SEED})")
    p.add_argument("--include-prompt", action="store_true",
                   help="also catch phrases that start in the prompt")
    add_output_options(p)
    p.set_defaults(func=cmd_generate)


def _top_p(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--top-p must be a number, got {s!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"--top-p must be above 0 and at most 1, got {v:g}")
    return v
