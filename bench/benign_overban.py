"""How many tokens of benign English text the end-of-word rule bans (README, docs/automaton.md §1).

A token that writes a phrase's last character and ends right there is banned, because the next token
might start with a boundary. On benign text (no match anywhere) that bans the tokenizer's own split of
a longer word whose first part spells a phrase: " Hell"+"enic" with "hell" banned. This script
teacher-forces benign English prose through each tokenizer with the antislop lists as bans, counts
the banned tokens, and fails if any banned token is not such an end-of-word case.

Benign text: English prose from the installed packages' METADATA descriptions and the standard
library's docstrings (paragraphs of plain sentences), keeping only paragraphs with no match of any
rule, until ~8,000 GPT-2 tokens.

    python -m bench.benign_overban
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re

import cull
from cull.measure.scan import prefiltered

from .common import data_dir, write_results

# the 50,046-phrase list is left out: it holds so many everyday phrases that no paragraph of the
# sources below is free of a match
LISTS = ["slop_words_2025-04-07.json", "slop_phrases_2025-04-07.json", "slop_phrase_prob_adjustments.json"]
PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,.;:'()\-]{60,}[.]$")


def prose_sources():
    """Texts in a fixed order: package descriptions, then stdlib module and function docstrings."""
    import ast
    import sysconfig
    from pathlib import Path

    for dist in sorted(md.distributions(), key=lambda d: d.metadata.get("Name", "")):
        yield dist.metadata.get_payload() or dist.metadata.get("Description") or ""
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                yield ast.get_docstring(node) or ""


def benign_paragraphs(rules, target_words: int) -> list[str]:
    find = prefiltered()
    out, words, seen = [], 0, set()
    for text in prose_sources():
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if not PROSE.match(para) or para in seen:
                continue
            seen.add(para)
            if find(para, rules):
                continue
            out.append(para)
            words += len(para.split())
            if words >= target_words:
                return out
    return out


def stress_rules(paras) -> "cull.PhraseSet":
    """Every word of 3-6 letters in the 50,046-phrase list that the benign text never uses as a whole
    word: short everyday words ("hell", "die", "the"...) whose spelling starts longer benign words,
    where the end-of-word rule can over-ban a tokenizer's split ("Hell"+"enic")."""
    import json

    used = {w.lower() for p in paras for w in re.findall(r"[A-Za-z]+", p)}
    pairs = json.loads((data_dir() / "phrases" / "antislop" / "slop_phrase_prob_adjustments_full_list.json").read_text())
    words = sorted({w.lower() for phrase, _ in pairs for w in re.findall(r"[A-Za-z]+", phrase)
                    if 3 <= len(w) <= 6} - used)
    return cull.PhraseSet(words)


def count_overbans(name, tok, rules, paras) -> dict:
    matcher = cull.compile_rules(rules, tok)
    tb = matcher.token_bytes
    n_tokens, examples, banned = 0, [], 0
    for para in paras:
        ids = tok.encode(para, add_special_tokens=False)
        state, sofar = matcher.initial_state(), b""
        for k, t in enumerate(ids):
            piece = tb[t]
            if t in matcher.banned(state):
                whole = (sofar + piece).decode("utf-8", "replace")
                if not any(m.end == len(whole) for m in cull.find(whole, rules)):
                    raise SystemExit(f"{name}: {piece!r} banned in benign text and not an end-of-word case: "
                                     f"{whole[-60:]!r}")
                banned += 1
                if len(examples) < 15:  # the text up to the banned token | the token the text had next
                    nxt = tb[ids[k + 1]].decode("utf-8", "replace") if k + 1 < len(ids) else ""
                    examples.append(whole[-20:] + "|" + nxt)
            state = matcher.advance(state, t)
            sofar += piece
            n_tokens += 1
    return {"benign_tokens": n_tokens, "banned_tokens": banned,
            "banned_per_1k_tokens": round(1000 * banned / n_tokens, 3), "examples_text_up_to_ban": examples}


def tokenizers():
    from transformers import AutoTokenizer

    d = data_dir()
    yield "gpt2", AutoTokenizer.from_pretrained(d / "tokenizers" / "gpt2")
    yield "qwen2", AutoTokenizer.from_pretrained(d / "tokenizers" / "qwen2")
    yield "phi-3", AutoTokenizer.from_pretrained(d / "tokenizers" / "llamacpp-vocab-tests",
                                                 gguf_file="ggml-vocab-phi-3.gguf")
    yield "stories260K", AutoTokenizer.from_pretrained(d / "models" / "stories260K")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--words", type=int, default=6000, help="benign words to collect (~8,000 GPT-2 tokens)")
    args = ap.parse_args(argv)
    items = []
    for name in LISTS:
        items += list(cull.PhraseSet.load(data_dir() / "phrases" / "antislop" / name, action="ban", allow_symbols=True))
    rules = cull.PhraseSet(items)
    paras = benign_paragraphs(rules, args.words)
    if not paras:
        raise SystemExit("no benign paragraph found: every candidate holds a match")
    stress = stress_rules(paras)
    find = prefiltered()
    if any(find(p, stress) for p in paras):
        raise SystemExit("a stress word occurs in the benign text")
    rows = []
    for name, tok in tokenizers():
        sets = [("antislop", rules)] + ([("stress", stress)] if name != "stories260K" else [])
        for set_name, rs in sets:  # (stress on a 512-token vocabulary ran past 25 minutes)
            rows.append({"name": f"{name}-{set_name}", "tokenizer": name, "rules": set_name, "n_rules": len(rs),
                         **count_overbans(name, tok, rs, paras)})
            print(rows[-1], flush=True)
    path = write_results("benign-overban", rows, extra={
        "rules": {"antislop": f"{len(rules)} bans: " + ", ".join(LISTS),
                  "stress": "words of 3-6 letters from the 50,046-phrase list unused in the benign text"},
        "benign_paragraphs": len(paras), "benign_words": sum(len(p.split()) for p in paras),
        "source": "installed packages' METADATA prose and the standard library's docstrings"})
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
