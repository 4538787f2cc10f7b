"""Invariant checkers: each reads the evidence (the event log, and where needed a
ground-truth record of what workers executed) and returns the violations it
finds. An empty list means the guarantee held for that evidence."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    """One broken guarantee, with where and what."""

    checker: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.checker}] {self.subject}: {self.detail}"
