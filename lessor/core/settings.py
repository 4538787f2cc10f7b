"""Settings with inheritance, pure: the keys, their types, and how scopes resolve.

Three scopes, broadest first: org (``*``), domain (``*/production``) and
project (``demo/production``, a namespace). Each scope holds a document of
local overrides (key -> value). Resolution for a namespace:

* scalars: the most specific scope that sets the key wins;
* maps: merged from org down to project, the child winning per entry;
* the literal ``~unset`` as a value blocks inheritance of that key from the
  scopes above (the key is then unset, or for a map empty, unless a more
  specific scope sets it again); as a map entry's value it removes that entry.

The keys are defined once, here (``SETTINGS``): the Python checks read them,
and ``leasing/luagen.py`` generates the Lua table ``settings.lua`` checks a
document against (a foreign client may call the script directly).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lessor.core.ids import check_id
from lessor.core.limits import MAX_DURATION_S, MAX_RETRIES, SAFE_INT

UNSET = "~unset"
MAX_DOCUMENT = 65536           # bytes of JSON per scope document
MAX_MAP_ENTRIES = 64
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$")


class SettingsError(ValueError):
    """Base of the settings errors (a ValueError: bad input from the caller)."""


class UnknownSetting(SettingsError, KeyError):
    """A key that is not a setting."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0])


class BadSettingValue(SettingsError):
    """A value of the wrong type or out of range for its key."""


class BadScope(SettingsError):
    """A scope that is not ``*``, ``*/domain`` or ``project/domain``."""


@dataclass(frozen=True)
class Setting:
    """One settable key: its kind (``str``, ``int``, ``number``, ``map``), its range and default."""

    key: str
    kind: str
    what: str
    default: Any = None
    low: float = 0
    high: float = SAFE_INT
    id_like: bool = False       # a str that must be a lessor id (a queue name)

    @property
    def lua_kind(self) -> str:
        """Its kind in the generated Lua check: s(tring), i(nteger), n(umber), m(ap of strings)."""
        return {"str": "s", "int": "i", "number": "n", "map": "m"}[self.kind]


SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("run.default_queue", "str", "queue a run's root action waits on when submit names none",
            "default", id_like=True),
    Setting("run.default_retries", "int", "retries after the task's own errors when submit gives none",
            0, 0, MAX_RETRIES),
    Setting("run.timeout_s", "number", "a run's timeout in seconds when submit gives none (0: none)",
            0, 0, MAX_DURATION_S),
    Setting("run.durability", "str", "when a submit counts as acknowledged: memory, fsync, replicas:N or "
            "fsync+replicas:N (default: the client's own)", None),
    Setting("run.labels", "map", "labels of a namespace's runs (a map: merged across scopes)", {}),
    Setting("retention.keep_s", "number", "how long finished runs are kept, in seconds (0: no limit)",
            0, 0, 10 * MAX_DURATION_S),
    Setting("retention.keep_runs", "int", "how many finished runs a namespace keeps (0: no limit)",
            0, 0, SAFE_INT),
    Setting("fair_share.weight", "int", "the namespace's weight in fair share across namespaces", 1, 1, 1000),
)}


def valid_keys() -> str:
    """The settable keys, for error messages."""
    return ", ".join(SETTINGS)


# --- scopes ----------------------------------------------------------------------------

ORG = "*"


def check_scope(scope: object) -> str:
    """``scope`` if it is ``*``, ``*/domain`` or ``project/domain``; BadScope saying what is valid."""
    if isinstance(scope, str):
        if scope == ORG:
            return scope
        project, _, domain = scope.partition("/")
        try:
            if domain and (project == ORG or check_id("project", project)) and check_id("domain", domain):
                return scope
        except ValueError:
            pass
    raise BadScope(f"settings scope must be '*' (org), '*/DOMAIN' (a domain) or 'PROJECT/DOMAIN' (a project), "
                   f"e.g. */production or demo/production; got {scope!r}")


def level_of(scope: str) -> str:
    """``org``, ``domain`` or ``project``."""
    return "org" if scope == ORG else "domain" if scope.startswith("*/") else "project"


def scopes_of(namespace: str) -> tuple[str, str, str]:
    """The scopes a namespace inherits from, broadest first: (org, domain, project)."""
    domain = namespace.split("/", 1)[1]
    return ORG, f"*/{domain}", namespace


# --- values ----------------------------------------------------------------------------


def check_value(key: str, value: Any) -> Any:
    """``value`` checked (and normalized) for ``key``; UnknownSetting or BadSettingValue naming what is wrong."""
    spec = SETTINGS.get(key)
    if spec is None:
        raise UnknownSetting(f"unknown setting {key!r}; the settings are: {valid_keys()}")
    if value == UNSET:
        return value
    bad = f"setting {key} must be {_expected(spec)} (or {UNSET!r} to block inheritance), got "
    if spec.kind == "str":
        if not isinstance(value, str) or not 0 < len(value.encode()) <= 256:
            raise BadSettingValue(bad + f"{type(value).__name__} {value!r}")
        if spec.id_like:
            try:
                check_id(key, value)
            except ValueError as exc:
                raise BadSettingValue(f"setting {key}: {exc}") from None
        return value
    if spec.kind in ("int", "number"):
        ok = isinstance(value, int) or (spec.kind == "number" and isinstance(value, float) and math.isfinite(value))
        if not ok or isinstance(value, bool) or not spec.low <= value <= spec.high:
            raise BadSettingValue(bad + f"{type(value).__name__} {value!r}")
        return value
    if not isinstance(value, dict) or len(value) > MAX_MAP_ENTRIES:
        raise BadSettingValue(bad + f"{type(value).__name__} {value!r}")
    for k, v in value.items():
        if not isinstance(k, str) or not _LABEL_RE.match(k) or not isinstance(v, str) or len(v.encode()) > 256:
            raise BadSettingValue(f"setting {key}: entry {k!r}: {v!r} must be a name (letters, digits, _ . - /) "
                                  "mapped to a text of at most 256 bytes")
    return dict(value)


def _expected(spec: Setting) -> str:
    if spec.kind == "str":
        return "a queue name (letters, digits, _ . -)" if spec.id_like else "a text"
    if spec.kind == "map":
        return f"a map of names to texts (at most {MAX_MAP_ENTRIES} entries)"
    number = "an integer" if spec.kind == "int" else "a number"
    return f"{number} within {spec.low:g}..{spec.high:g}"


def check_document(document: Any) -> dict[str, Any]:
    """A scope document (key -> value) checked, every key and value; a SettingsError naming the first bad one."""
    if not isinstance(document, dict):
        raise BadSettingValue(f"a settings document must be a map of key -> value, got {type(document).__name__}")
    out = {key: check_value(key, value) for key, value in document.items()}
    if len(encode_document(out).encode()) > MAX_DOCUMENT:
        raise BadSettingValue(f"a settings document must be at most {MAX_DOCUMENT} bytes as JSON")
    return out


def encode_document(document: dict[str, Any]) -> str:
    """The document as it is stored and logged: compact JSON, keys sorted (one spelling per content)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_document(text: str) -> dict[str, Any]:
    """A stored document ('' = none)."""
    return json.loads(text) if text else {}


# --- resolution ------------------------------------------------------------------------


@dataclass(frozen=True)
class Effective:
    """One key's effective value for a namespace and the scope it came from (``default``: no scope
    set it; for a map, ``origins`` gives each entry's scope)."""

    key: str
    value: Any
    origin: str
    unset_at: str | None = None                       # the scope whose ~unset blocked the scopes above
    origins: dict[str, str] = field(default_factory=dict)


def resolve(namespace: str, documents: dict[str, dict[str, Any]]) -> dict[str, Effective]:
    """Every key's effective value for ``namespace`` from the scope documents (scope -> document)."""
    chain = scopes_of(namespace)
    out = {}
    for key, spec in SETTINGS.items():
        if spec.kind == "map":
            merged: dict[str, Any] = {}
            origins: dict[str, str] = {}
            unset_at = None
            for scope in chain:                       # broadest first: the child wins per entry
                value = documents.get(scope, {}).get(key)
                if value is None:
                    continue
                if value == UNSET:
                    merged, origins, unset_at = {}, {}, scope
                    continue
                for k, v in value.items():
                    if v == UNSET:
                        merged.pop(k, None)
                        origins.pop(k, None)
                    else:
                        merged[k], origins[k] = v, scope
            scopes = set(origins.values())
            origin = "merged" if len(scopes) > 1 else scopes.pop() if scopes else "default"
            out[key] = Effective(key, merged, origin, unset_at, origins)
            continue
        effective = Effective(key, spec.default, "default")
        for scope in reversed(chain):                 # most specific first
            value = documents.get(scope, {}).get(key)
            if value is None:
                continue
            effective = (Effective(key, spec.default, "default", unset_at=scope) if value == UNSET
                         else Effective(key, value, scope))
            break
        out[key] = effective
    return out
