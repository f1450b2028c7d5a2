"""Ban events with the processor on, before and after a fine-tune: how often the base and the tuned
model still reach for a banned phrase when cull's processor is there to stop them.

A ban event is a decoding step at which the tokens the processor set to -inf held at least 1% of
the model's probability (`cull.measure.evaluate.BanCounter`). Greedy decoding on the held-out
prompts. Writes
bench/results/finetune-ban-events-<device>-<date>.json.

    python -m bench.finetune_ban_events --model ft/ --phrases phrases.txt --threads 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_results  # noqa: E402
from bench.finetune_bench import processor_events  # noqa: E402


def main(argv=None):
    from cull.measure.evaluate import load_prompts
    from cull.measure.models import load_model
    from cull.rules import PhraseSet
    from cull.rules.files import read_rule_file

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="the fine-tuned model folder")
    p.add_argument("--base", default=None, help="the base model (default: SmolLM2-135M-Instruct)")
    p.add_argument("--phrases", required=True, help="the phrase file the model was tuned on")
    p.add_argument("--prompts", default="heldout")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--gen-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    rules = PhraseSet(read_rule_file(args.phrases, None, None))
    prompts = load_prompts(args.prompts)
    rates = {}
    for name, path in (("base", args.base), ("tuned", args.model)):
        model, tok = load_model(path, threads=args.threads)
        rates[name] = processor_events(model, tok, rules, prompts, args)
        print(f"{name}: {rates[name]:.2f} ban events per 1,000 tokens", flush=True)
    fall = 1 - rates["tuned"] / rates["base"] if rates["base"] else float("nan")
    print(f"fall: {100 * fall:.1f}%")
    row = {"base_ban_events_per_1k_tokens": rates["base"], "tuned_ban_events_per_1k_tokens": rates["tuned"],
           "fall_pct": 100 * fall}
    path = write_results("finetune-ban-events", [row], out_dir=args.out_dir,
                         extra={"model": args.model, "base": args.base or "SmolLM2-135M-Instruct", "phrases": len(rules),
                                "prompts": len(prompts), "decoding": f"greedy, {args.max_new_tokens} new tokens",
                                "command": "python -m bench.finetune_ban_events " + " ".join(argv or sys.argv[1:])})
    print(f"wrote {path}")
    return row


if __name__ == "__main__":
    main()
