"""Held-out spelling mass: how much of a phrase's multi-token spelling (" Travel"+"er") a model still
completes, on spelling contexts built from the validation samples of a saved `cull finetune` data
set (`cull.finetune.spellings`, one per spelling). The figure is the mean probability of the tokens
cull's processor bans at the spelling's last position; the base is always measured. Writes
bench/results/finetune-spelling-mass-<device>-<date>.json.

    python -m bench.finetune_spelling_mass --data ft/data.json --phrases phrases.txt --model tuned=ft/ --threads 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_results  # noqa: E402


def main(argv=None):
    import torch

    from cull.finetune import FinetuneData
    from cull.finetune.banned import attach_banned
    from cull.finetune.spellings import reachable, validation_contexts
    from cull.finetune.steps import spelling_mass
    from cull.finetune.train import logits_width
    from cull.measure.models import load_model
    from cull.rules import PhraseSet

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a data set saved by cull finetune (OUT/data.json)")
    p.add_argument("--phrases", required=True, help="the phrase file it was built for")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a model to measure; repeatable")
    p.add_argument("--base", default=None, help="the base model (default: SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    models = [("base", args.base)] + [tuple(m.split("=", 1)) for m in args.model]
    if any(len(m) != 2 for m in models):
        raise SystemExit("--model takes NAME=PATH")
    rules = PhraseSet.load(args.phrases)
    data = FinetuneData.load(args.data)
    base, tok = load_model(args.base, threads=args.threads)
    ctx = validation_contexts(base, tok, rules, data, seed=args.seed)  # what cull finetune validates on
    attach_banned(ctx, rules, tok, logits_width(base))
    ctx = reachable(ctx)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    row = {"contexts": len(ctx)}
    for name, path in models:
        model = base if name == "base" else load_model(path, threads=args.threads)[0]
        with torch.inference_mode():
            row[name] = spelling_mass(model.eval(), ctx, pad, "cpu", batch_size=16)
        print(f"{name}: spelling mass {row[name]:.4f}", flush=True)
    path = write_results("finetune-spelling-mass", [row], out_dir=args.out_dir,
                         extra={"phrases": len(rules), "models": dict(models), "data": str(args.data),
                                "command": "python -m bench.finetune_spelling_mass " + " ".join(argv or sys.argv[1:])})
    print(f"wrote {path}")
    return row


if __name__ == "__main__":
    main()
