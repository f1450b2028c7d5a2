"""`cull scan`: find phrase matches in text files."""
from __future__ import annotations

import json

from cull.cli.common import add_phrase_options, consoles, load_rules, positive_int

def cmd_scan(args) -> int:
    from cull.cli.demo import default_phrases
    from cull.measure.scan import scan_files

    rules = load_rules(args, default=lambda: default_phrases()[0])
    out, err = consoles()
    if not args.phrases and not args.phrase:
        err.print(f"Phrases: {len(rules)} from {default_phrases()[0]} (pass --phrases FILE to choose)")
    with err.status("Scanning ...") as status:
        report = scan_files(args.files, rules, per_line=args.per_line, field_name=args.field,
                            progress=lambda p: status.update(f"Scanning {p} ..."))
    if args.json:
        out.print_json(json.dumps(report.to_dict()))
        return 0
    from rich.table import Table

    out.print(f"{report.hits:,} hits in {report.documents:,} document{'s' * (report.documents != 1)} "
              f"({report.words:,} words, {report.files} file{'s' * (report.files != 1)}): "
              f"{report.hits_per_1k_words:.3f} per 1,000 words")
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
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("scan", help="count phrase matches in .txt and .jsonl files",
                       description="Count phrase matches in .txt files (one document each, or per line) "
                                   "and .jsonl files (one document per line).")
    p.add_argument("files", nargs="+", metavar="FILE", help=".txt/.md/.jsonl files or folders")
    add_phrase_options(p, modes=False)
    p.add_argument("--per-line", action="store_true", help="each line of a .txt file is a document")
    p.add_argument("--field", default="text", metavar="NAME", help="the JSONL field holding the text (default: text)")
    p.add_argument("--top", type=positive_int("--top"), default=30, metavar="N", help="phrases to list (default: 30)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_scan)
