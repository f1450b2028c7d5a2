"""The `cull` command line: the parser of every command, and the one place errors are printed."""
from __future__ import annotations

import argparse
import sys

from cull.version import __version__
from cull.cli import bench, compile, demo, discover, eval, finetune, generate, scan
from cull.cli.common import print_error
from cull.errors import CullError, MissingExtraError

COMMANDS = (demo, generate, compile, scan, bench, finetune, eval, discover)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cull", description="Take unwanted words and phrases out of what LLMs write.",
        epilog="Run `cull demo` to see it at work. Errors exit with status 2; --debug shows tracebacks.")
    parser.add_argument("--version", action="version", version=f"cull {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except (CullError, MissingExtraError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        msg = str(exc)
        if isinstance(exc, OSError) and exc.filename:
            msg = f"{exc.strerror}: {exc.filename}"
        print_error(msg)
        return 2
    except BrokenPipeError:  # `cull ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
