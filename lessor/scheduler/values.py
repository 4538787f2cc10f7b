"""Inputs and outputs as the log carries them: small msgpack values (references, not payloads)."""

from __future__ import annotations

from typing import Any

import msgpack

from lessor.errors import LessorError

MAX_VALUE_BYTES = 64 * 1024


class ValueEncodingError(LessorError, ValueError):
    """A value cannot be packed or unpacked."""


def pack_value(value: Any) -> bytes:
    """msgpack ``value``; refuse values over 64 KiB (store a URI to the payload instead)."""
    try:
        data = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueEncodingError(f"inputs/outputs must be msgpack-able (str, int, float, bytes, list, dict): {exc}") from None
    if len(data) > MAX_VALUE_BYTES:
        raise ValueEncodingError(
            f"value is {len(data)} bytes; lessor carries references, not payloads (max "
            f"{MAX_VALUE_BYTES}): write the data to object storage and pass its URI"
        )
    return data


def unpack_value(data: bytes | None) -> Any:
    """The value packed by ``pack_value`` (None for empty), or ValueEncodingError saying why not."""
    if not data:
        return None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types for bad bytes: all become the one named error
        raise ValueEncodingError(f"cannot decode value ({len(data)} bytes): {exc}") from None


def show_value(data: bytes | None) -> Any:
    """A printable form of a packed value: the value if it decodes, else ``hex:...``."""
    try:
        value = unpack_value(data)
    except ValueEncodingError:
        return "hex:" + (data or b"").hex()
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else repr(value)
