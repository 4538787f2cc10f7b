"""Settings in the store: read a scope, write it with optimistic locking, resolve a namespace.

The keys, their types and the resolution rules are defined once in
``lessor/core/settings.py``. Every scope's document lives in the settings
partition (``leasing/backend.py: settings_keys``) as a hash holding its version
and its JSON document; ``settings.lua`` replaces a document only if it is still
at the version the writer read, and logs the change as ``settings_changed``,
which ``lessor replay`` folds like any other event.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from lessor.core.ids import check_namespace
from lessor.core.settings import (
    SETTINGS, UNSET, BadSettingValue, Effective, check_document, check_scope, check_value, decode_document,
    encode_document, resolve, scopes_of,
)
from lessor.errors import ConfigError, LessorError
from lessor.leasing.backend import Backend, settings_keys
from lessor.leasing.codes import Code
from lessor.leasing.durability import Durability


class SettingsConflict(LessorError):
    """The scope was written by someone else since it was read: nothing was written."""

    def __init__(self, scope: str, current: int, had: int) -> None:
        super().__init__(f"settings for {scope} changed since you read them (version {current}, you had {had}): "
                         "read again and reapply")
        self.scope, self.current, self.had = scope, current, had


@dataclass(frozen=True)
class ScopeDocument:
    """One scope's local overrides and their version (0: never written)."""

    scope: str
    version: int
    document: dict[str, Any]


def check_setting(key: str, value: Any) -> Any:
    """``value`` checked for ``key`` (core/settings.py), and a durability mode parsed as one."""
    value = check_value(key, value)
    if key == "run.durability" and value != UNSET:
        try:
            Durability.parse(value)
        except ConfigError as exc:
            raise BadSettingValue(f"setting run.durability: {exc}") from None
    return value


def check_settings(document: Any) -> dict[str, Any]:
    """A whole document checked (every key known, every value of its type); SettingsError naming the first bad one."""
    document = check_document(document)
    for key, value in document.items():
        check_setting(key, value)
    return document


async def read_scope(backend: Backend, scope: str) -> ScopeDocument:
    """A scope's document and version (version 0 and an empty document if it was never written)."""
    check_scope(scope)
    version, text = await backend.redis.hmget(settings_keys(backend).settings(scope), "version", "document")
    return ScopeDocument(scope, int(version or 0), decode_document((text or b"").decode()))


async def write_scope(backend: Backend, scope: str, document: dict[str, Any], version: int) -> int:
    """Replace the scope's document if it is still at ``version`` (what the caller read); the new version.

    SettingsConflict if it changed meanwhile (nothing written); SettingsError naming a bad key or value.
    """
    check_scope(scope)
    document = check_settings(document)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ConfigError(f"version must be the integer a read returned (0 for a scope never written), got {version!r}")
    code, current = await backend.call("settings", [settings_keys(backend).prefix],
                                       [scope, version, encode_document(document)])
    if code == Code.STALE:
        raise SettingsConflict(scope, int(current), version)
    return int(current)


async def update_scope(backend: Backend, scope: str, changes: dict[str, Any], *, version: int | None = None,
                       remove: tuple[str, ...] = ()) -> int:
    """Set ``changes`` and drop the keys in ``remove`` in the scope's document, other keys kept.

    With ``version``, the write is refused (SettingsConflict) unless the scope is still at it;
    without, the version just read is used (so a concurrent writer still makes it a conflict).
    """
    for key in remove:
        check_value(key, UNSET)  # UnknownSetting for a key that is not a setting
    current = await read_scope(backend, scope)
    document = {k: v for k, v in current.document.items() if k not in remove} | changes
    return await write_scope(backend, scope, document, current.version if version is None else version)


async def read_documents(backend: Backend, namespace: str) -> dict[str, ScopeDocument]:
    """The three scope documents a namespace inherits from, in one round trip."""
    check_namespace(namespace)
    keys = settings_keys(backend)
    pipe = backend.redis.pipeline(transaction=False)
    chain = scopes_of(namespace)
    for scope in chain:
        pipe.hmget(keys.settings(scope), "version", "document")
    replies = await pipe.execute()
    return {scope: ScopeDocument(scope, int(version or 0), decode_document((text or b"").decode()))
            for scope, (version, text) in zip(chain, replies)}


async def effective(backend: Backend, namespace: str) -> dict[str, Effective]:
    """Every setting's effective value for ``namespace``, with the scope it came from."""
    documents = await read_documents(backend, namespace)
    return resolve(namespace, {scope: d.document for scope, d in documents.items()})


class SettingsCache:
    """Resolved settings per namespace, kept for ``ttl_s`` (a client reads them at every submit
    that leaves a default to them: without the cache that would be one more round trip per
    submit). A change is seen by a client within ``ttl_s``; ``ttl_s=0`` reads every time.
    Monotonic time, a client-side cache: no deadline of the store is judged by it."""

    def __init__(self, backend: Backend, ttl_s: float = 5.0) -> None:
        self.backend, self.ttl_s = backend, ttl_s
        self._cache: dict[str, tuple[float, dict[str, Effective]]] = {}

    async def get(self, namespace: str) -> dict[str, Effective]:
        """The namespace's effective settings, from the cache if younger than ``ttl_s``."""
        hit = self._cache.get(namespace)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        values = await effective(self.backend, namespace)
        self._cache[namespace] = (now, values)
        return values

    def forget(self) -> None:
        """Drop everything cached (a write through this client does it)."""
        self._cache.clear()


def as_json(values: dict[str, Effective]) -> dict[str, Any]:
    """Effective settings as plain data: key -> {value, origin, [unset_at], [origins]}."""
    out = {}
    for key, e in values.items():
        item: dict[str, Any] = {"value": e.value, "origin": e.origin}
        if e.unset_at:
            item["unset_at"] = e.unset_at
        if SETTINGS[key].kind == "map":
            item["origins"] = e.origins
        out[key] = item
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line: the value as its key's type (a map as JSON, ``~unset`` as is)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise BadSettingValue(f"expected key=value, got {text!r}")
    spec = SETTINGS.get(key)
    if spec is None:
        check_value(key, None)   # raises UnknownSetting with the list of keys
    if raw == UNSET:
        return key, UNSET
    try:
        if spec.kind == "int":
            return key, int(raw)
        if spec.kind == "number":
            return key, float(raw) if any(c in raw for c in ".eE") else int(raw)
        if spec.kind == "map":
            return key, json.loads(raw)
    except ValueError:
        what = {"int": "an integer", "number": "a number", "map": 'a JSON map, e.g. {"team":"ml"}'}[spec.kind]
        raise BadSettingValue(f"setting {key}: cannot read {raw!r} as {what}") from None
    return key, raw
