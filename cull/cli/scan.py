"""`cull scan`: find phrase matches in text files, listed like grep, or counted."""
from __future__ import annotations

import json
import os
import sys

from cull.cli.common import add_output_options, add_phrase_options, consoles, load_rules, positive_int, print_error

CONTEXT = 60  # characters of the line shown on each side of a match in a long line

DESCRIPTION = """Find phrase matches in .txt/.md files (one document each, or one per line with --per-line) and
.jsonl files (one document per line, the text under --field).

Each match prints like grep: FILE:LINE:COL: MATCH, a tab, and the line it is on (the match highlighted
when stdout is a terminal). In a .jsonl file LINE is the record's line and COL the character in its
text. --count prints a table of counts per phrase instead, --json the same counts as JSON."""


def cmd_scan(args) -> int:
    from cull.cli.demo import default_phrases
    from cull.measure.scan import scan_files

    rules = load_rules(args, default=lambda: default_phrases()[0])
    out, err = consoles(args)
    if not args.phrases and not args.phrase:
        err.print(f"Phrases: {len(rules)} from {default_phrases()[0]} (pass --phrases FILE to choose)")
    listing = not (args.count or args.json)
    print_hit = _hit_printer(sys.stdout, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    unreadable = []

    def skip(path, exc):  # like grep: say so, go on, and exit 2 at the end
        unreadable.append(path)
        print_error(f"{exc} (skipped)")

    options = dict(per_line=args.per_line, field_name=args.field, on_error=skip)
    if listing:  # the matches stream as they are found: no spinner between them
        report = scan_files(args.files, rules, on_hit=print_hit, **options)
    else:
        with err.status("Scanning ...") as status:
            report = scan_files(args.files, rules, progress=lambda p: status.update(f"Scanning {p} ..."), **options)
    files = f"{report.files} file{'s' * (report.files != 1)}"
    if listing:
        sys.stdout.flush()
        err.print(f"{report.hits:,} match{'es' * (report.hits != 1)} in {files} "
                  f"({report.hits_per_1k_words:.3f} per 1,000 words); --count for the counts per phrase",
                  highlight=False, soft_wrap=True)
        return 2 if unreadable else 0
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
        return 2 if unreadable else 0
    from rich.table import Table

    out.print(f"{report.hits:,} hits in {report.documents:,} document{'s' * (report.documents != 1)} "
              f"({report.words:,} words, {files}): {report.hits_per_1k_words:.3f} per 1,000 words")
    t = Table()
    t.add_column("phrase")
    t.add_column("count", justify="right")
    t.add_column("per 1k words", justify="right")
    common = report.most_common()
    for phrase, count in common[: args.top]:
        t.add_row(phrase, f"{count:,}", f"{1000 * count / report.words:.3f}" if report.words else "-")
    if len(common) > args.top:
        t.add_row(f"... {len(common) - args.top} more (--top N)", "", "")
    t.add_row("[bold]total[/]", f"[bold]{report.hits:,}[/]", f"[bold]{report.hits_per_1k_words:.3f}[/]",
              end_section=True)
    out.print(t)
    return 2 if unreadable else 0


def _hit_printer(stream, color: bool):
    """A function that writes one Hit as `FILE:LINE:COL: MATCH<tab>LINE TEXT`, in grep's colours on a terminal."""
    def paint(code: str, s: str) -> str:
        return f"\033[{code}m{s}\033[0m" if color else s

    def one_line(s: str) -> str:
        return " ".join(s.split()) if any(c in s for c in "\t\r\n") else s

    def print_hit(hit) -> None:
        text, (start, end) = hit.line_text, hit.span
        lo, hi = max(0, start - CONTEXT), min(len(text), end + CONTEXT)
        before = ("…" if lo else "") + one_line(text[lo:start])
        after = one_line(text[end:hi]) + ("…" if hi < len(text) else "")
        line = before + paint("1;31", one_line(text[start:end])) + after
        stream.write(f"{paint('35', str(hit.path))}:{paint('32', str(hit.line))}:{paint('32', str(hit.col))}: "
                     f"{paint('1;31', one_line(hit.text))}\t{line}\n")

    return print_hit


def add_parser(sub) -> None:
    p = sub.add_parser("scan", help="find phrase matches in .txt and .jsonl files (like grep), or count them",
                       description=DESCRIPTION)
    p.add_argument("files", nargs="+", metavar="FILE", help=".txt/.md/.jsonl files or folders")
    add_phrase_options(p, "antislop's list from CULL_DATA_DIR, else cull's small built-in list", modes=False)
    p.add_argument("--per-line", action="store_true", help="each line of a .txt file is a document")
    p.add_argument("--field", default="text", metavar="NAME", help="the JSONL field holding the text")
    p.add_argument("-c", "--count", action="store_true", help="print a table of counts per phrase, not the matches")
    p.add_argument("--top", type=positive_int("--top"), default=30, metavar="N", help="phrases in the --count table")
    p.add_argument("--json", action="store_true", help="print the counts per phrase as JSON")
    add_output_options(p)
    p.set_defaults(func=cmd_scan)
