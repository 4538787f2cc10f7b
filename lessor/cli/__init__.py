"""The ``lessor`` command (``lessor.cli:main``; ``python -m lessor`` is the same).

Commands that share a server with other processes (events, replay, submit,
runs, run, abort, worker, reaper, doctor) need one: ``--redis-url``, else
$LESSOR_REDIS_URL; ``lessor server`` starts one and prints it. ``demo`` and
``chaos`` start a private one, ``simulate`` and ``bench`` too unless given
``--redis-url``. ``--json`` prints what a script would read. Client commands
go through ``lessor.connect``, as an embedder would.

Errors are one line naming what was wrong and what to do. Exit codes: 0 ok,
1 a check failed (replay --verify found differences, doctor, demo, simulate,
chaos), 2 a usage or lessor error, 3 a ServerError (the server cannot be
reached, started or used, or none was given), 130 Ctrl-C.

The package: ``parser`` builds the argument parser from the command modules
(``server``: server, doctor; ``logs``: events, replay; ``runs``: submit, runs,
run show, abort; ``processes``: worker, reaper, demo, simulate, chaos;
``bench``), ``options`` holds the options they share, ``render`` what they
print, ``demo`` the demo. Only ``lessor/__main__.py`` imports it: nothing
below the CLI does (``python -m lessor.tools.imports`` checks).
"""

from __future__ import annotations

from lessor.errors import LessorError, ServerError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lessor`` command: parse ``argv``, run the command, return the exit code."""
    from lessor.cli.parser import build_parser

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
