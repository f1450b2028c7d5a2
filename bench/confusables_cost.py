"""What the confusables option (UTS #39 prototypes) costs and what it over-matches.

Cost: cold compile (CPU and wall seconds) and table size of the antislop list
slop_phrase_prob_adjustments.json (517 phrases) against the Qwen2 vocabulary, without and with the
option, and the one-time load of the prototype table.

Over-matching: the Jargon File (human-written prose, Debian's jargon-text package) scanned with the
antislop lists as bans, without and with the option: paragraphs with a match, matches, and the
distinct words of the text that match a list on their own, plus examples of what only the option
matches. Nothing in the Jargon File is disguised, so every extra match is an over-match.

    nice -n 5 python -m bench.confusables_cost
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from collections import Counter

import cull
from cull.measure.human_text import corpus_path
from cull.measure.scan import prefiltered

from .common import data_dir, write_results

COMPILE_LIST = "slop_phrase_prob_adjustments.json"
SCAN_LISTS = ["slop_phrase_prob_adjustments.json", "slop_words_2025-04-07.json", "slop_phrases_2025-04-07.json"]
WORD = re.compile(r"[A-Za-z0-9]+")


def load(name: str, confusables: bool) -> cull.PhraseSet:
    return cull.PhraseSet.load(data_dir() / "phrases" / "antislop" / name, action="ban", allow_symbols=True,
                               confusables=confusables)


def compile_row(confusables: bool) -> dict:
    from transformers import AutoTokenizer

    from cull.compile import cache as compile_cache
    from cull.compile.cache import as_vocab

    tok = AutoTokenizer.from_pretrained(data_dir() / "tokenizers" / "qwen2")
    vocab = as_vocab(tok, 151_936)
    rules = load(COMPILE_LIST, confusables)
    compile_cache._KEYS.clear()  # cold: the vocabulary's token keys are built again
    c0, w0 = time.process_time(), time.perf_counter()
    matcher = cull.compile_rules(rules, vocab, cache=False)
    row = {"name": f"compile-{'confusables' if confusables else 'default'}", "list": COMPILE_LIST,
           "phrases": len(rules), "vocab": len(vocab.token_bytes),
           "compile_cpu_seconds": round(time.process_time() - c0, 2),
           "compile_wall_seconds": round(time.perf_counter() - w0, 2)}
    st = matcher.stats()
    row.update(table_mib=round(st["table_mib"], 3), device_mib=round(st["device_mib"], 3), states=st["states"],
               ranges=st["ranges"], patterns=st["patterns"])
    return row


def paragraphs() -> list[str]:
    text = gzip.open(corpus_path(), "rt", encoding="utf-8").read()
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def scan_row(name: str, paras: list[str], words: list[str]) -> dict:
    find = prefiltered()
    row = {"name": f"jargon-{name}", "list": name, "paragraphs": len(paras), "distinct_words": len(words)}
    extra: Counter = Counter()
    for confusables in (False, True):
        rules = load(name, confusables)
        tag = "confusables" if confusables else "default"
        hits = [find(p, rules) for p in paras]
        row[f"{tag}_paragraphs_matched"] = sum(1 for h in hits if h)
        row[f"{tag}_matches"] = sum(len(h) for h in hits)
        matched_words = [w for w in words if find(w, rules)]
        row[f"{tag}_words_matched"] = len(matched_words)
        if confusables:
            only = sorted(set(matched_words) - set(row.pop("_default_words")))
            row["words_matched_only_with_confusables"] = len(only)
            row["examples_words_only_with_confusables"] = only[:40]
            for p, h, h0 in zip(paras, hits, row.pop("_default_hits")):
                spans0 = {(m.start, m.end, m.rule.text) for m in h0}
                for m in h:
                    if (m.start, m.end, m.rule.text) not in spans0:
                        extra[f"{p[m.start:m.end]!r} ~ {m.rule.text!r}"] += 1
        else:
            row["_default_words"] = matched_words
            row["_default_hits"] = hits
    row["matches_only_with_confusables"] = sum(extra.values())
    row["examples_matches_only_with_confusables"] = [f"{k} x{n}" for k, n in extra.most_common(25)]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.parse_args(argv)
    from cull.text.confusables import data_version, prototypes
    from cull.text.normalize import fold_char, fold_flags

    c0 = time.process_time()
    prototypes()
    fold_char("\u0435", fold_flags(confusables=True))  # the prototype table of the default fold
    load_cpu = round(time.process_time() - c0, 3)
    rows = [compile_row(False), compile_row(True)]
    for r in rows:
        print(json.dumps(r), flush=True)
    paras = paragraphs()
    words = sorted({w.lower() for p in paras for w in WORD.findall(p)})
    for name in SCAN_LISTS:
        rows.append(scan_row(name, paras, words))
        print(json.dumps(rows[-1]), flush=True)
    path = write_results("confusables-cost", rows, extra={
        "command": "nice -n 5 python -m bench.confusables_cost",
        "confusables_data_version": data_version(), "prototype_table_load_cpu_seconds": load_cpu,
        "corpus": str(corpus_path())})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
