"""The boundary: what a number, a duration or a text may be before it reaches the log.

One bad value must never poison the log: an event the codec cannot decode, or
a projection field a reader cannot parse, breaks every reader of the partition.
So every value a caller gives is checked here first, and the Lua scripts check
the raw ARGV again (a foreign client may call them directly).

- integers: real ``int`` (not bool, not float, not str), in the range that
  survives Lua's doubles and msgpack exactly: |x| <= 2^53 - 1;
- durations given in seconds: finite, >= 0, at most ``MAX_DURATION_S``
  (a year), converted to whole milliseconds;
- texts (error messages, reasons): ``str``, at most ``MAX_TEXT`` bytes as UTF-8;
- a task's traceback: at most ``MAX_TRACEBACK`` bytes; the worker keeps its
  tail (the frame that raised and the exception are at the end).
"""

from __future__ import annotations

import math

SAFE_INT = 2**53 - 1            # the largest integer a double (Lua, JSON) holds exactly
MAX_DURATION_S = 366 * 24 * 3600  # a timeout longer than a year is a mistake
MAX_RETRIES = 1000              # budgets beyond this are a mistake
MAX_BACKOFF_MS = 24 * 3600 * 1000
MAX_TEXT = 4096
MAX_TRACEBACK = 8192            # bytes of a failed attempt's traceback kept with its event (the tail)


def check_int(name: str, value: object, low: int = -SAFE_INT, high: int = SAFE_INT) -> int:
    """Return ``value`` if it is an int within [low, high]; ValueError naming ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be within {low}..{high}, got {value}")
    return value


def seconds_to_ms(name: str, seconds: object, *, allow_none: bool = True) -> int:
    """A duration in seconds (int or float, finite, 0..a year) as whole ms; None = 0 (no limit)."""
    if seconds is None and allow_none:
        return 0
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise ValueError(f"{name} must be a number of seconds, got {type(seconds).__name__} {seconds!r}")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION_S:
        raise ValueError(f"{name} must be finite and within 0..{MAX_DURATION_S} s (a year), got {seconds!r}")
    return int(round(seconds * 1000))


def check_text(name: str, value: object, max_bytes: int = MAX_TEXT) -> str:
    """Return ``value`` if it is a str of at most ``max_bytes`` bytes as UTF-8 (what the scripts count)."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ValueError(f"{name} is {size} bytes as UTF-8; at most {max_bytes}")
    return value


def clip_text(value: str, max_bytes: int = MAX_TEXT) -> str:
    """``value`` cut to ``max_bytes`` bytes of UTF-8 (for texts lessor writes itself, like a task's error)."""
    data = value.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return value
    return data[: max_bytes - 16].decode("utf-8", "ignore") + " …(clipped)"


def tail_text(value: str, max_bytes: int = MAX_TRACEBACK) -> str:
    """``value``'s last ``max_bytes`` bytes of UTF-8, marked where it was cut (a traceback's end says the most)."""
    data = value.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return value
    marker = f"…({len(data) - max_bytes + 64} bytes cut)\n"
    return marker + data[len(data) - max_bytes + 64:].decode("utf-8", "ignore")
