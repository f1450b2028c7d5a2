"""The argument parser of every command: help that states each option's default, one-line errors, and a
"did you mean" for misspelled commands, options and choices."""
from __future__ import annotations

import argparse
import difflib
import re
import sys

from cull.cli.common import print_error

# argparse's wording for a bad choice (the choices quoted or not, depending on the Python version)
_INVALID_CHOICE = re.compile(r"invalid choice: '?(?P<got>[^' ]*)'? \(choose from (?P<choices>.*)\)$")
_ARGUMENT = re.compile(r"argument (?P<name>[^:]+): (?P<rest>.*)$", re.S)

# commands that were here once, with where their job went
MOVED = {
    "bench": "the benchmarks are not part of the installed package; from a source checkout of cull run "
             "`python -m bench.compile_bench --quick` (or kernel_bench, e2e_bench): see README, Benchmarks",
}


def help_with_default(action: argparse.Action) -> str:
    """The help text of `action`, with "(default: X)" added when the text does not state its default.

    Flags (no value) are off unless given, so they get nothing; an option without a value by
    default must say in words what happens then."""
    text = action.help or ""
    if text == argparse.SUPPRESS or "default" in text.lower() or not action.option_strings or action.nargs == 0:
        return text
    if action.default is None or action.default == [] or action.default is argparse.SUPPRESS:
        return text
    return f"{text}; default: %(default)s" if text.endswith(")") else f"{text} (default: %(default)s)"


class HelpFormatter(argparse.HelpFormatter):
    """Help that states every default (see help_with_default) and keeps a description's paragraphs."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(super(HelpFormatter, self)._fill_text(par, width, indent) for par in text.split("\n\n"))

    def _get_help_string(self, action):
        return help_with_default(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, suggestions for misspellings, and defaults in the help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        m = _INVALID_CHOICE.search(message)
        if m:
            got = m.group("got")
            choices = [c.strip().strip("'") for c in m.group("choices").split(",")]
            if message.startswith("argument COMMAND:"):
                if got in MOVED:
                    self.exit_with(f"there is no `cull {got}` command: {MOVED[got]}")
                self.exit_with(f"unknown command {got!r}{did_you_mean(got, choices)} (commands: {', '.join(choices)})")
            self.exit_with(message[: m.start()] + f"invalid choice: {got!r}{did_you_mean(got, choices)} "
                                                  f"(choose from {', '.join(choices)})")
        m = _ARGUMENT.match(message)
        if m and m.group("name") in m.group("rest"):  # our own messages name the option already
            message = m.group("rest")
        self.exit_with(f"{message} (see `{self.prog} --help`)")

    def exit_with(self, message: str):
        print_error(message)
        sys.exit(2)


def did_you_mean(word: str, candidates) -> str:
    """'; did you mean X?' for the closest candidate, or '' when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string the parser accepts (--help included)."""
    return [s for a in parser._actions for s in a.option_strings]  # argparse lists them nowhere public


def reject_options_before_command(parser: ArgumentParser, argv: list[str]) -> None:
    """Exit when a command's option comes before the command (`cull --quiet scan`, `cull --phrases x
    generate`: parsed as it stands, the option's value would be taken for the command)."""
    command = next((a for a in argv if a in parser.commands), None)
    if command is None:
        return
    top, own = option_strings(parser), option_strings(parser.commands[command])
    for word in (a.split("=", 1)[0] for a in argv[:argv.index(command)]):
        if word.startswith("-") and word not in top and word in own:
            parser.commands[command].exit_with(f"{word} goes after the command: `cull {command} {word} ...`")


def reject_unknown(parser: ArgumentParser, command_parser, extras: list[str]) -> None:
    """Exit with a one-line error for the arguments nobody took, with a suggestion for an option."""
    target = command_parser or parser
    options = [a for a in extras if a.startswith("-") and a != "-"]
    if options:
        word = options[0].split("=", 1)[0]
        known = option_strings(target) + (option_strings(parser) if target is not parser else [])
        target.exit_with(f"unrecognized argument {word}{did_you_mean(word, known)} (see `{target.prog} --help`)")
    target.exit_with(f"unexpected argument {extras[0]!r} (see `{target.prog} --help`)")
