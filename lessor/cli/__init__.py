"""The ``lessor`` command (``lessor.cli:main``; ``python -m lessor`` is the same).

Commands that share a server with other processes (events, replay, submit,
runs, run, abort, workers, queues, worker, reaper, doctor) need one: ``--redis-url``, else
$LESSOR_REDIS_URL; ``lessor server`` starts one and prints it. ``demo`` and
``chaos`` start a private one, ``simulate`` and ``bench`` too unless given
``--redis-url``. ``--json`` prints what a script would read. Client commands
go through ``lessor.connect``, as an embedder would.

Errors are one line naming what was wrong and what to do. Exit codes: 0 ok,
1 a check failed (``CHECK_FAILED``: replay --verify found differences, doctor,
demo, simulate, chaos, bench, submit --wait), 2 a usage or lessor error, 3 a
ServerError (the server cannot be reached, started or used, or none was
given; a silent or non-Redis service at the URL: ``options.probe_server``),
130 Ctrl-C. Every command's --help ends with its own (``exit_codes``).

The package: ``parser`` builds the argument parser from the command modules
(``server``: server, doctor; ``logs``: events, replay; ``fleet``: workers, queues; ``runs``: submit, runs,
run show, abort; ``processes``: worker, reaper, demo, simulate, chaos;
``bench``), ``options`` holds the options they share, ``render`` what they
print, ``demo`` the demo, ``reference`` the CLI reference (docs/cli.md) it
generates from the parser. Only ``lessor/__main__.py`` imports it: nothing
below the CLI does (``python -m lessor.tools.imports`` checks).
"""

from __future__ import annotations

import argparse

from lessor.errors import LessorError, ServerError

#: What exit code 1 means, for the commands that use it (every other command: never).
CHECK_FAILED = {
    "submit": "with --wait, the run ended other than succeeded",
    "replay": "--verify found differences",
    "doctor": "a check failed",
    "demo": "a check of the story failed",
    "simulate": "a checker found a violation (the plan is saved)",
    "chaos": "a checker found a violation",
    "bench": "the benchmark's own verification failed",
}


def exit_codes(command: str | None) -> str:
    """The exit codes of ``lessor [command]``, as its --help ends."""
    one = (f"1 {CHECK_FAILED[command]}; " if command in CHECK_FAILED
           else "" if command else "1 a check failed (replay --verify, doctor, demo, simulate, chaos, "
                                   "bench, submit --wait); ")
    return (f"exit codes: 0 ok; {one}2 bad usage or a lessor error (a bad value, no such run); 3 the server "
            "cannot be reached, started or used, or none was given; 130 interrupted (Ctrl-C).")


def build_parser() -> argparse.ArgumentParser:
    """The ``lessor`` parser with every command's exit codes at the end of its --help."""
    from lessor.cli.parser import build_parser as commands_parser

    parser = commands_parser()

    def document(p: argparse.ArgumentParser, command: str | None) -> None:
        p.epilog = f"{p.epilog}\n\n{exit_codes(command)}" if p.epilog else exit_codes(command)
        p.formatter_class = _Formatter
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    document(child, command or name)

    document(parser, None)
    return parser


class _Formatter(argparse.HelpFormatter):
    """The default formatter, but an epilog keeps its paragraphs (blank lines)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(super(_Formatter, self)._fill_text(part, width, indent) for part in text.split("\n\n"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lessor`` command: parse ``argv``, run the command, return the exit code.

    Exit codes: see ``exit_codes``; every command's --help ends with its own.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except ServerError as exc:
        _err(f"lessor: {exc}")
        return 3
    except (LessorError, ValueError) as exc:
        _err(f"lessor: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(message, style="bold red", highlight=False, markup=False, soft_wrap=True)
