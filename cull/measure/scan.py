"""`cull scan`: count phrase matches in text files and JSONL files.

A document is a whole .txt file (or each line, with ``per_line=True``) or, in a .jsonl file, the
string under ``field`` of each line's object. The matcher is pluggable: any function
``(text, PhraseSet) -> list[Match]``; the default is the reference `cull.find` behind a cheap,
exact prefilter.
"""
from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from cull.errors import CullError
from cull.rules.find import Match, find
from cull.rules.regex_match import RegexTimeoutError
from cull.text.normalize import FOLD_CASE, FOLD_CONFUSABLES, fold_char
from cull.rules import PhraseSet, Rule

MatchFn = Callable[[str, PhraseSet], "list[Match]"]
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_ASCII_ALNUM_RUN = re.compile(r"[0-9A-Za-z_]+")


@dataclass
class ScanReport:
    files: int = 0
    documents: int = 0
    words: int = 0
    counts: Counter = field(default_factory=Counter)  # rule text -> hits

    @property
    def hits(self) -> int:
        return sum(self.counts.values())

    @property
    def hits_per_1k_words(self) -> float:
        return 1000.0 * self.hits / self.words if self.words else 0.0

    def to_dict(self) -> dict:
        return {
            "files": self.files, "documents": self.documents, "words": self.words, "hits": self.hits,
            "hits_per_1k_words": round(self.hits_per_1k_words, 4),
            "phrases": [{"phrase": p, "count": c} for p, c in self.most_common()],
        }

    def most_common(self) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda pc: (-pc[1], pc[0]))


def count_words(text: str) -> int:
    """Words are runs of non-whitespace characters."""
    return len(text.split())


def prefiltered(match_fn: MatchFn = find) -> MatchFn:
    """Wrap a matcher so that it only sees the rules that can match `text`.

    A phrase can only match where the longest ASCII letter/digit run of its normalised form occurs
    in the normalised text (cull.text.normalize.fold_char: whitespace, quotes and skipped characters are
    never inside such a run), so skipping the other rules never loses a match."""
    keys: dict[int, tuple] = {}

    def run(text: str, rules: PhraseSet) -> list[Match]:
        kid = id(rules)
        if kid not in keys or keys[kid][0] is not rules:
            keys.clear()
            keys[kid] = (rules, [(r, _key(r, rules.options.fold())) for r in rules.rules])
        hay = _normalised(text, rules.options.fold())
        keep = [r for r, k in keys[kid][1] if not k or k in hay]
        if not keep:
            return []
        return match_fn(text, rules.with_rules(keep))

    return run


def _normalised(text: str, fold: int) -> str:
    if text.isascii() and not fold & FOLD_CONFUSABLES:  # ASCII normalises to itself, lower-cased
        return text.translate(_ASCII_LOWER) if fold & FOLD_CASE else text
    return "".join(fold_char(ch, fold) for ch in text)


def _key(rule: Rule, fold: int) -> str:
    if rule.regex is not None:
        return ""  # regexes always run
    runs = _ASCII_ALNUM_RUN.findall(_normalised(rule.phrase, fold))
    return max(runs, key=len) if runs else ""


@dataclass(frozen=True)
class Hit:
    """One match, located like grep does: `line` and `col` count from 1. In a .txt file they are the
    file's line and the character in it; in a .jsonl file, the record's line and the character in its
    text field. `line_text` is the text's line holding the match's start, `span` the match in it."""
    path: Path
    line: int
    col: int
    phrase: str  # the rule that matched
    text: str  # the matched text
    line_text: str
    span: tuple[int, int]


def iter_documents(path: Path, per_line: bool = False, field_name: str = "text") -> Iterator[str]:
    """The documents of one file (see the module docstring)."""
    return (text for _, text in numbered_documents(path, per_line, field_name))


def numbered_documents(path: Path, per_line: bool = False, field_name: str = "text") -> Iterator[tuple[int, str]]:
    """(line where it starts, document) for each document of one file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CullError(f"file {str(path)!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise CullError(f"{str(path)!r} is a directory") from None
    except OSError as exc:
        raise CullError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise CullError(f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); "
                        "save the file as UTF-8") from None
    if path.suffix.lower() in JSONL_SUFFIXES:
        yield from _jsonl_documents(text, path, field_name)
    elif per_line:
        yield from ((n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip())
    else:
        yield 1, text


def _jsonl_documents(text: str, path: Path, field_name: str) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CullError(f"{path}: line {n}, column {exc.colno}: malformed JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise CullError(f"{path}: line {n}: expected a JSON object with a {field_name!r} field, "
                            f"got {type(obj).__name__}")
        if field_name not in obj:
            keys = ", ".join(map(repr, list(obj)[:8])) or "none"
            raise CullError(f"{path}: line {n}: no field {field_name!r} (keys: {keys}); "
                            "choose the field with --field")
        value = obj[field_name]
        if value is None:
            continue
        if not isinstance(value, str):
            raise CullError(f"{path}: line {n}: field {field_name!r} is a {type(value).__name__}, "
                            "expected a string")
        yield n, value


def expand_paths(paths: Iterable) -> list[Path]:
    """Files as given; a folder stands for the .txt/.md/.jsonl files under it."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file()
                           and q.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
            if not found:
                raise CullError(f"folder {str(p)!r} has no .txt, .md or .jsonl files to scan")
            out.extend(found)
        elif not p.exists():
            raise CullError(f"file {str(p)!r} does not exist; check the path")
        else:
            out.append(p)
    if not out:
        raise CullError("no files to scan; pass one or more .txt or .jsonl files")
    return out


def scan_texts(texts: Iterable[str], rules: PhraseSet, match_fn: MatchFn | None = None,
               report: ScanReport | None = None) -> ScanReport:
    """Add the matches of `rules` in each text to `report` (a new one by default)."""
    match_fn = match_fn or prefiltered(find)
    report = report or ScanReport()
    for text in texts:
        _scan_document(text, rules, match_fn, report)
    return report


def _scan_document(text: str, rules: PhraseSet, match_fn: MatchFn, report: ScanReport) -> list[Match]:
    report.documents += 1
    report.words += count_words(text)
    matches = match_fn(text, rules)
    for m in matches:
        report.counts[m.rule.text] += 1
    return matches


def locate(path: Path, first_line: int, text: str, matches: list[Match], jsonl: bool) -> Iterator[Hit]:
    """The Hits of one document's matches, in the order they occur (see Hit for the numbering)."""
    lines = text.splitlines(keepends=True) or [""]
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line))
    for m in sorted(matches, key=lambda m: (m.start, m.end)):
        i = bisect_right(starts, m.start) - 1
        line_text = lines[i].rstrip("\r\n")
        start = m.start - starts[i]
        span = (start, min(m.end - starts[i], len(line_text)))
        line, col = (first_line, m.start + 1) if jsonl else (first_line + i, start + 1)
        yield Hit(path, line, col, m.rule.text, text[m.start:m.end], line_text, span)


def scan_files(paths: Iterable, rules: PhraseSet, *, per_line: bool = False, field_name: str = "text",
               match_fn: MatchFn | None = None, progress: Callable[[Path], None] | None = None,
               on_hit: Callable[[Hit], None] | None = None,
               on_error: Callable[[Path, CullError], None] | None = None) -> ScanReport:
    """Count the matches of `rules` in files (.txt: one document per file or per line; .jsonl: the
    `field_name` string of each line); `on_hit` sees each match as it is found. A file that cannot be
    read (not UTF-8, a bad .jsonl record) raises, or, with `on_error`, is reported there and the scan
    goes on (what it held before the bad line stays counted)."""
    match_fn = match_fn or prefiltered(find)
    report = ScanReport()
    for path in expand_paths(paths):
        if progress is not None:
            progress(path)
        report.files += 1
        jsonl = path.suffix.lower() in JSONL_SUFFIXES
        try:
            for first_line, text in numbered_documents(path, per_line, field_name):
                matches = _scan_document(text, rules, match_fn, report)
                if on_hit is not None and matches:
                    for hit in locate(path, first_line, text, matches, jsonl):
                        on_hit(hit)
        except CullError as exc:
            if on_error is None or isinstance(exc, RegexTimeoutError):  # a rule's fault ends the scan
                raise
            on_error(path, exc)
    return report
