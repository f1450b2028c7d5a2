"""Where the host time of one eager processor call goes (cProfile over many decode steps).

    python -m bench.eager_profile            # CUDA if available, else CPU; Qwen2 vocabulary, antislop 517
"""
from __future__ import annotations

import cProfile
import pstats
import time

import torch

import cull
from bench.common import data_dir


def main() -> int:
    from transformers import AutoTokenizer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(data_dir() / "tokenizers" / "qwen2")
    rules = cull.PhraseSet.load(data_dir() / "phrases/antislop/slop_phrase_prob_adjustments.json", action="ban")
    proc = cull.CullLogitsProcessor(rules, tok, vocab_size=151_936, inplace=True)  # the kernel, not the copy
    ids = torch.tensor([tok.encode("It was a testament to the rich tapestry of her life, and")], device=dev)
    ids = ids.repeat(1, 8)
    scores = torch.randn(1, 151_936, device=dev)
    steps = 2000

    def run():
        proc.reset()
        for k in range(16, 16 + steps // 4):
            proc(ids[:, :k], scores)

    run()
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(4):
        run()
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"{(time.perf_counter() - t) / steps * 1e6:.1f} µs per eager call ({dev})")
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
