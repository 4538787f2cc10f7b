"""Test-only: explore or replay with a broken system, to see a checker catch it.

    python -m lessor.simulations.catch report_gives_up --examples 200 --seed 1 --store-faults
    python -m lessor.simulations.catch report_gives_up --replay lessor-plan-1.json

Takes a switch of ``breakage.Switch`` and every option of ``lessor simulate``.
It is not part of the ``lessor`` command and nothing else reaches it: a switch
breaks only the simulation this process runs. Exit status 1 means caught.
"""

from __future__ import annotations

import argparse
import sys

from lessor.simulations import cli
from lessor.simulations.breakage import Breakage, Switch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lessor.simulations.catch",
                                description="explore or replay with one test-only switch on (exit 1: caught)")
    p.add_argument("switch", choices=[s.value for s in Switch])
    cli.add_arguments(p)
    args = p.parse_args(argv)
    breakage = Breakage(Switch(args.switch))
    if args.replay:
        return cli.run_replay(args, breakage)
    if args.examples < 1:
        p.error("--examples must be >= 1")
    return cli.run_explore(args, breakage, replay_command=f"python -m lessor.simulations.catch {args.switch}")


if __name__ == "__main__":
    sys.exit(main())
