"""What an event does to its subject's projection, as data.

Each event type declares its effects once (``PROJECT`` on its class in
``core/events.py``). Two interpreters read them:

* the Python fold (``core/fold.py``) applies them to a frozen state;
* the Lua generator (``leasing/scripts.py``) turns them into the ``emit``
  handlers of the scripts' prelude.

So the fold that ``replay --verify`` builds and the hash the scripts keep are
two readings of one definition, not two hand-written copies.

The vocabulary is deliberately small; a new kind of effect needs both
interpreters taught, and ``tests/test_schema.py`` checks they agree.
"""

from __future__ import annotations

import string
from dataclasses import dataclass


@dataclass(frozen=True)
class Copy:
    """Set ``field`` to the event's ``src`` field (default: the same name)."""

    field: str
    src: str = ""

    @property
    def source(self) -> str:
        return self.src or self.field


@dataclass(frozen=True)
class Const:
    """Set ``field`` to a constant (``True`` is stored as ``'1'``)."""

    field: str
    value: object


@dataclass(frozen=True)
class Incr:
    """Add one to a counter field."""

    field: str


@dataclass(frozen=True)
class FirstOf:
    """Set ``field`` to the first of the event's ``srcs`` that is present and not
    empty; if none is, the field keeps its value."""

    field: str
    srcs: tuple[str, ...]


@dataclass(frozen=True)
class Text:
    """Set ``field`` to a text built from event fields: ``"after {timeout_ms} ms"``."""

    field: str
    template: str


@dataclass(frozen=True)
class Soft:
    """Set ``field`` in the server's hash only: lease timing that on-time renewals
    also move without an event (``deadline_ms``). The fold leaves it out, as it
    leaves out every renewal; a rebuilt lease gets a fresh ttl (see fold.py)."""

    field: str
    src: str = ""

    @property
    def source(self) -> str:
        return self.src or self.field


@dataclass(frozen=True)
class Create:
    """The event creates its subject: each field of the state is set from the
    event field of the same name, or from ``renamed`` (state field -> event field);
    ``created_ms`` is the event's ``ts``."""

    renamed: tuple[tuple[str, str], ...] = ()


Effect = Copy | Const | Incr | FirstOf | Text | Soft | Create


def template_fields(template: str) -> list[str]:
    """The event fields a Text template reads, in order (its ``{name}`` placeholders)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]
