"""What the Unicode semantics cost: compile time (wall and CPU), table size and per-step CPU time of
the 50,046-phrase antislop list on Qwen2, and (new code only) the step of a row that stopped inside
a character split across tokens.

CPU time (`time.process_time`) is reported beside wall time because the machine these numbers come
from is shared: CPU time moves far less with other processes' load.

    python -m bench.unicode_cost --label after --out /tmp/x.json
    # the code before the change, from a `git archive` copy:
    PYTHONPATH=/tmp/before python /path/to/bench/unicode_cost.py --label before --out /tmp/y.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

TEXTS = ["It is a testament to the", "She let out a breath she didn't know she was", "The rich tapestry of",
         "I delved into the", "Her voice was barely above a", "In the heart of the city, a kaleidoscope of",
         "Once upon a time, in a land far away, there lived a", "The"]


def _median_cpu_us(fn, reps: int) -> tuple[float, float]:
    """(median CPU µs, median wall µs) of fn over `reps` calls, after one warm-up call."""
    fn()
    cpu, wall = [], []
    for _ in range(reps):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu) * 1e6, statistics.median(wall) * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    import cull
    from cull.compile import cache as compile_cache
    from cull.compile.cache import as_vocab
    from cull.kernels import apply_rules

    data = Path(__import__("os").environ.get("CULL_DATA_DIR", "../shared/data"))
    tok = AutoTokenizer.from_pretrained(data / "tokenizers" / "qwen2")
    vocab = as_vocab(tok, 151_936)
    pairs = json.loads((data / "phrases" / "antislop" / "slop_phrase_prob_adjustments_full_list.json").read_text())
    rules = cull.PhraseSet([p for p, _ in pairs], allow_symbols=True)
    compile_cache._KEYS.clear()
    c0, w0 = time.process_time(), time.perf_counter()
    matcher = cull.compile_rules(rules, vocab, cache=False)
    row = {"name": f"cull-torch-{args.label}", "phrases": len(rules),
           "compile_cpu_seconds": round(time.process_time() - c0, 2),
           "compile_wall_seconds": round(time.perf_counter() - w0, 2)}
    st = matcher.stats()
    row.update(table_mib=round(st["table_mib"], 2), device_mib=round(st["device_mib"], 2), states=st["states"],
               ranges=st["ranges"], patterns=st["patterns"])
    tables = matcher.device_tables("cpu")
    V = 151_936
    for B in (1, 8):
        states = [matcher.advance_many(matcher.initial_state(), tok.encode(TEXTS[i % len(TEXTS)])) for i in range(B)]
        nodes = torch.tensor([s[0] for s in states])
        classes = torch.tensor([s[1] for s in states])
        base = torch.randn(B, V)
        buf = base.clone()

        def step():
            buf.copy_(base)
            apply_rules(buf, nodes, classes, tables, backend="torch")

        cpu, wall = _median_cpu_us(step, args.reps)
        none_cpu, _ = _median_cpu_us(lambda: buf.copy_(base), args.reps)
        row[f"step_b{B}_cpu_us"] = round(cpu, 1)
        row[f"step_b{B}_wall_us"] = round(wall, 1)
        row[f"logits_copy_b{B}_cpu_us"] = round(none_cpu, 1)
    if hasattr(cull, "pending") or Path(cull.__file__).with_name("pending.py").exists():
        # rows stopped inside a character: "I delved into the 𝐝" cut after two of its four bytes
        ids = tok.encode("I delved into the")
        byte_id = {b: i for i, b in enumerate(vocab.token_bytes) if len(b) == 1}
        states = []
        for i in range(8):
            st = matcher.advance_many(matcher.initial_state(), ids[: 2 + i % 4])
            for b in "𝐝".encode()[:2]:
                st = matcher.advance(st, byte_id[bytes([b])])
            states.append(st)
        assert all(s[1] >= 3 for s in states)
        nodes = torch.tensor([s[0] for s in states])
        classes = torch.tensor([s[1] for s in states])
        base = torch.randn(8, V)
        buf = base.clone()
        matcher.continuation.clear()
        c0, w0 = time.process_time(), time.perf_counter()
        apply_rules(buf, nodes, classes, tables, backend="torch")  # cold: continuation tokens stepped
        row["step_b8_inside_char_cold_cpu_us"] = round((time.process_time() - c0) * 1e6, 1)

        def step():
            buf.copy_(base)
            apply_rules(buf, nodes, classes, tables, backend="torch")

        cpu, wall = _median_cpu_us(step, args.reps)
        row["step_b8_inside_char_cpu_us"] = round(cpu, 1)
        row["step_b8_inside_char_wall_us"] = round(wall, 1)
    args.out.write_text(json.dumps(row) + "\n")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
