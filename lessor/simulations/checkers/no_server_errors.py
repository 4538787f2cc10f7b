"""The scripts never refuse, nor fail on, a call lessor's own code made.

Evidence: the truth's record of every ServerRefused a simulated call got: a bad
argument, a failed check in ``emit`` (an illegal transition, a mistyped field),
or a Lua error. Every argument the simulator and its workers send is built by
lessor's own client code, so each one is a bug (and, since scripts check before
they write, a call that did nothing the caller expected).
"""

from __future__ import annotations

from lessor.simulations.checkers import Violation
from lessor.simulations.truth import Truth

NAME = "no_server_errors"


def check(truth: Truth) -> list[Violation]:
    """Violations: each script error the simulation met."""
    return [Violation(NAME, what, f"at t={at_ms} ms: {error}") for what, at_ms, error in truth.server_errors]
