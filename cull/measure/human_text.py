"""Human-written English for the perplexity check of `cull eval`: text no model wrote and the
project did not write either.

The source is the Jargon File (Eric S. Raymond et al., version 4.4.7, public domain), as Debian's
`jargon-text` package installs it::

    apt-get install jargon-text        # /usr/share/doc/jargon-text/jargon.txt.gz, 240k words

Its essays on hacker culture and writing style and its glossary entries are prose written by
people over three decades. `human_corpus()` reads the installed file at run time (nothing of it is
copied into this repository), keeps the prose paragraphs (at least 30 words, no tables or
headword lists), drops the `{cross-reference}` braces, and returns paragraphs in file order until
the requested number of tokens is reached. The same call gives the same texts.
"""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

from cull.errors import CullError

DEFAULT_PATHS = ("/usr/share/doc/jargon-text/jargon.txt.gz", "/usr/share/jargon/jargon.txt")
INSTALL_HINT = ("install Debian's jargon-text package (`apt-get install jargon-text`), or point "
                "CULL_HUMAN_TEXT at a plain-text or .gz file of human-written English")
_BOX = re.compile(r"[\u2500-\u257f|]")
_LETTERS = re.compile(r"[A-Za-z]")


def corpus_path(path=None) -> Path:
    """The corpus file: `path`, else $CULL_HUMAN_TEXT, else the jargon-text package's file."""
    if path:
        if not Path(path).is_file():
            raise CullError(f"human-written text file {str(path)!r} not found; {INSTALL_HINT}")
        return Path(path)
    for p in [os.environ.get("CULL_HUMAN_TEXT")] + list(DEFAULT_PATHS):
        if p and Path(p).is_file():
            return Path(p)
    raise CullError(f"no human-written English corpus found (looked in {', '.join(DEFAULT_PATHS)}); {INSTALL_HINT}")


def prose_paragraphs(text: str, min_words: int = 30, max_words: int = 160) -> list[str]:
    """Paragraphs of running prose: blank-line separated blocks, lines joined, cross-reference braces
    dropped; tables, headword lists and short lines left out; long paragraphs cut at sentence ends
    into pieces of at most about `max_words` words."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        if _BOX.search(block) or block.lstrip().startswith(":"):
            continue  # a table, or a glossary headword line
        para = " ".join(line.strip() for line in block.splitlines() if line.strip())
        para = re.sub(r"\{([^{}]*)\}", r"\1", para)
        n_words = len(para.split())
        if n_words < min_words or len(_LETTERS.findall(para)) < 0.7 * len(para.replace(" ", "")):
            continue
        piece: list[str] = []
        for sentence in re.split(r"(?<=[.!?])\s+", para):
            piece.append(sentence)
            if sum(len(s.split()) for s in piece) >= max_words:
                out.append(" ".join(piece))
                piece = []
        if piece and sum(len(s.split()) for s in piece) >= min_words:
            out.append(" ".join(piece))
    return out


def human_corpus(min_tokens: int = 20_000, tokenizer=None, path=None) -> list[str]:
    """Prose paragraphs, in file order, until they hold `min_tokens` tokens of `tokenizer` (or, with
    no tokenizer, 1.3 tokens a word). Raises a CullError naming the package when it is absent, or
    when the file holds too little prose."""
    p = corpus_path(path)
    raw = gzip.open(p, "rt", encoding="utf-8", errors="replace").read() if p.suffix == ".gz" \
        else p.read_text(encoding="utf-8", errors="replace")
    texts, total = [], 0
    for para in prose_paragraphs(raw):
        texts.append(para)
        total += (len(tokenizer(para, add_special_tokens=False)["input_ids"]) if tokenizer is not None
                  else int(1.3 * len(para.split())))
        if total >= min_tokens:
            return texts
    raise CullError(f"{p} holds only about {total} tokens of prose, fewer than the {min_tokens} asked for; "
                    f"ask for fewer (min_tokens) or {INSTALL_HINT}")
