"""The `cull` command line: the parser of every command, and the one place errors are printed."""
from __future__ import annotations

import argparse
import sys

from cull.version import __version__
from cull.cli import compile, demo, discover, eval, finetune, generate, scan
from cull.cli.common import print_error, quiet_transformers
from cull.cli.parsing import ArgumentParser, reject_options_before_command, reject_unknown
from cull.errors import CullError, MissingExtraError

COMMANDS = (demo, generate, compile, scan, finetune, eval, discover)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="cull", description="Take unwanted words and phrases out of what LLMs write.",
        epilog="Run `cull demo` to see it at work, `cull COMMAND --help` for a command's options. "
               "Bad input exits with status 2 and a one-line error; an internal error exits with 1 "
               "(--debug shows its traceback).")
    parser.add_argument("--version", action="version", version=f"cull {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for command in COMMANDS:
        command.add_parser(sub)
    for command_parser in sub.choices.values():  # `cull generate ... --debug` works too
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show the full traceback on errors")
    parser.commands = sub.choices  # name -> the command's parser, for the suggestions
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    reject_options_before_command(parser, list(sys.argv[1:] if argv is None else argv))
    args, extras = parser.parse_known_args(argv)
    if extras:
        reject_unknown(parser, parser.commands.get(args.command), extras)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        args.no_progress = True
        import warnings

        warnings.simplefilter("ignore")  # --quiet: results and errors only
    if getattr(args, "no_progress", False):
        quiet_transformers(warnings=args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:  # `cull ... | head`
        return 0
    except (CullError, MissingExtraError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        msg = str(exc)
        if isinstance(exc, OSError) and exc.filename:
            msg = f"{exc.strerror}: {exc.filename}"
        print_error(msg)
        return 2
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print_error(f"internal error in `cull {args.command}`: {type(exc).__name__}"
                    f"{': ' + first if first else ''} (rerun with --debug for the traceback, and please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
