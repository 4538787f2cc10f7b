"""docs/cli.md, the CLI reference, generated from the ``lessor`` argument parser.

    python -m lessor.cli.reference           # rewrite docs/cli.md
    python -m lessor.cli.reference --check   # exit 1 if docs/cli.md differs from the parser

Every command's section is its ``--help`` exactly as ``lessor <command> --help``
prints it at 80 columns, so the reference cannot drift from the parser:
``tests/test_docs.py`` checks the file against ``render()``, and runs
``lessor <command> --help`` for a few commands to show the two agree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

WIDTH = 80
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REGENERATE = ".venv/bin/python -m lessor.cli.reference"


@contextlib.contextmanager
def columns(width: int) -> Iterator[None]:
    """argparse wraps help to $COLUMNS: fix it for the block."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def commands(parser: argparse.ArgumentParser,
             path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(command path, its parser, its one-line help) for every command and subcommand, in --help order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, child in action.choices.items():
                yield (*path, name), child, helps.get(name, "")
                yield from commands(child, (*path, name))


def render() -> str:
    """The text of docs/cli.md for the parser as it is now."""
    from lessor.cli import CHECK_FAILED, build_parser, exit_codes

    parser = build_parser()
    found = list(commands(parser))
    out = [
        "# The `lessor` command",
        "",
        "<!-- Generated from the argument parser by `python -m lessor.cli.reference`: do not edit by hand. -->",
        "",
        "Every section below is what `lessor <command> --help` prints (at 80 columns).",
        "`tests/test_docs.py` checks this file against the parser, so a new option",
        f"fails the suite until the file is regenerated: `{REGENERATE}`.",
        "",
        "Commands that talk to a shared server take `--redis-url`, else `$LESSOR_REDIS_URL`",
        "(`lessor server` prints one). URLs, the server choices and the ACL:",
        "[operations.md](operations.md).",
        "",
        "## Exit codes",
        "",
        "| code | meaning |",
        "| --- | --- |",
        "| 0 | ok |",
        "| 1 | a check failed: " + "; ".join(f"`{c}`: {m}" for c, m in CHECK_FAILED.items()) + " |",
        "| 2 | bad usage or a lessor error (a bad value, no such run): one line on stderr |",
        "| 3 | the server cannot be reached, started or used, or none was given: one line on stderr. "
        "A service that does not answer within 3 s, or answers but is not Redis, is one too |",
        "| 130 | interrupted (Ctrl-C) |",
        "",
        "Each command's `--help` ends with its own line of them:",
        "",
        "```text",
        exit_codes("submit"),
        "```",
        "",
        "## Commands",
        "",
    ]
    for path, _, text in found:
        name = " ".join(path)
        indent = "  " * (len(path) - 1)
        out.append(f"{indent}- [`lessor {name}`](#{anchor(name)}): {' '.join(text.split())}")
    with columns(WIDTH):
        out += ["", "## `lessor`", "", "```text", parser.format_help().rstrip(), "```"]
        for path, child, _ in found:
            out += ["", f"{'#' * min(len(path) + 2, 4)} `lessor {' '.join(path)}`", "", "```text",
                    child.format_help().rstrip(), "```"]
    return "\n".join(out) + "\n"


def anchor(name: str) -> str:
    """The GitHub anchor of the heading `` `lessor NAME` ``."""
    return "lessor-" + name.replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    """Write docs/cli.md (or, with --check, exit 1 naming the fix if it is out of date)."""
    p = argparse.ArgumentParser(prog="python -m lessor.cli.reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if docs/cli.md is out of date")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if DOC.read_text() != text:
            print(f"{DOC} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
