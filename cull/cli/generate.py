"""`cull generate`: generate text with phrases banned or biased, streamed to stdout."""
from __future__ import annotations

import sys
import time

from cull.cli.common import UsageError, add_model_options, add_phrase_options, consoles, load_rules, positive_int, quiet_transformers

def cmd_generate(args) -> int:
    from cull.decode.processor import CullLogitsProcessor
    from cull.measure.generate import generate_text
    from cull.measure.models import load_model, resolve_model

    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no prompt: pass --prompt TEXT (or pipe the prompt on stdin)")
        prompt = sys.stdin.read().rstrip("\n")
    rules = load_rules(args) if (args.phrases or args.phrase) else None
    if rules is not None and rules.regex_rules and not args.backtrack:
        from cull.rules.regex_literals import expand_regex_rules

        expand_regex_rules(rules.regex_rules)  # refuse a regex the processor cannot enforce before loading
    _, err = consoles()
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
            proc = CullLogitsProcessor(rules, tok, include_prompt=args.include_prompt,
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
    from cull.decode.backtrack import generate_backtracking
    from cull.measure.generate import build_prompt_ids

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


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text with phrases banned or biased, streamed",
                       description="Generate a reply with the phrases banned (or biased) while decoding.")
    add_model_options(p)
    add_phrase_options(p)
    p.add_argument("--prompt", default=None, help="the prompt (default: read stdin)")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--backtrack", action="store_true",
                   help="rewind and resample when a phrase completes (no half-written stubs; general regexes too)")
    p.add_argument("--max-new-tokens", type=positive_int("--max-new-tokens"), default=200, metavar="N",
                   help="new tokens at most (default: 200)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="sampling temperature (implies --sample)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="random seed (with --sample)")
    p.add_argument("--include-prompt", action="store_true",
                   help="also catch phrases that start in the prompt")
    p.set_defaults(func=cmd_generate)
