"""Loading the Lua scripts: one ``.lua`` file each, plus a generated prelude.

At load time each script is prefixed with ``lua/_prelude.lua``, into which we
generate (``leasing/luagen.py``) everything defined in Python: the transition
tables, each event's fields and projection handler, the key schema, the reply
codes; and the clock: the server's ``TIME`` in production, or a virtual clock
read from a key for simulations.

By default all scripts are loaded as one server FUNCTION library (``library``)
and called with FCALL: the prelude's tables and closures are built once per
library load instead of on every call. On "Function not found" (a restarted
server, FUNCTION FLUSH, a new cluster node) the library is loaded and the call
made again, which makes a server restart transparent to callers. The EVAL form
(``script_source``; redis-py's Script objects: EVALSHA, reloaded on NOSCRIPT)
stays for tests that run single scripts or small bodies.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from lessor.core.keyspace import HOT, KEY_FAMILIES
from lessor.leasing import luagen

SCRIPT_NAMES = (
    "append_events", "submit", "submit_child", "acquire", "renew", "complete", "fail", "release",
    "reap", "abort", "retire", "schedule", "tick", "settings", "trigger", "fair_sync",
)
VIRTUAL_CLOCK_KEY = "lessor:vclock"


class ClockMode(str, Enum):
    """Which clock the scripts read: the server's TIME, or a virtual one (simulations)."""

    SERVER = "server"
    VIRTUAL = "virtual"


_SERVER_CLOCK = """local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end"""

_VIRTUAL_CLOCK = f"""local function now_ms()
  return tonumber(redis.call('GET', '{VIRTUAL_CLOCK_KEY}') or '0')
end"""


#: What the prelude's library exports to the scripts (the one list: the Lua table
#: and each script's local bindings are both generated from it).
_LIB_NAMES = (
    # writing events and state
    "emit", "enqueue", "new_adds", "add_all", "wake", "fair_pass", "fair_join", "defer_counts", "defer_ends", "flush_ends",
    "create_run",
    "reject", "ended", "end_lease", "abort_actions", "token_source",
    # the lease rules, once each
    "fence", "check_token", "lease_dead", "lease_expiry", "expire_lease", "ensure_epoch", "server_epoch",
    # the boundary
    "refuse", "unpack_batch", "bad_token", "bad_int", "bad_id", "bad_ns", "bad_text", "bad_bytes", "SAFE_INT",
    "bad_event",
    # reading
    "hget", "split_ref", "nz", "is_run_event", "root_key", "run_phase",
    # generated: keys, tables, handlers
    *(f.lua for f in KEY_FAMILIES if f.lua not in HOT),
    "SETTING_KINDS", "UNSET", "ON", "ON_RUN", "ON_SCHEDULE", "ON_SETTINGS", "ON_TRIGGER", "EVF", "ACTION_T", "RUN_T",
    "SCHEDULE_T", "SETTINGS_T", "TRIGGER_T", "TERMINAL", "FROM_PAYLOAD", "NO_PHASE", "RETIRED", "RUN_ON_ROOT",
)
_LIB_EXPORTS = "lib_ = {" + ", ".join(f"{n} = {n}" for n in _LIB_NAMES) + "}"
# Scripts that need more than the renewal hot path say so with a --@@USES_LIB@@ line,
# replaced by this binding of the prelude's lazily built library.
_LIB_IMPORT = ("local L = lib()\nlocal " + ", ".join(_LIB_NAMES) + " =\n  "
               + ", ".join(f"L.{n}" for n in _LIB_NAMES))


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def _file(name: str) -> str:
    return (resources.files("lessor.leasing") / "lua" / f"{name}.lua").read_text()


@functools.cache
def script_source(name: str, clock: ClockMode = ClockMode.SERVER, trace: bool = False,
                  fail_after_checks: bool = False) -> str:
    """The full Lua source of script ``name`` as sent to the server by EVAL (see ``compose``).

    ``trace`` (tests only) records every key each Redis call names in the list
    ``lessor:test:touched`` as ``<script> <key>``, to check each script's
    ``Touches:`` header against what it really does (leasing/touches.py).
    ``fail_after_checks`` (tests only) makes ``checked()``, which every script
    calls once it has checked its arguments and before its first write, raise
    ``LESSOR_INJECTED``: a call then must leave the server exactly as it was.
    """
    return compose(name, _file(name), clock, trace, fail_after_checks)


def prelude(clock: ClockMode = ClockMode.SERVER, trace: bool = False, fail_after_checks: bool = False) -> str:
    """``_prelude.lua`` with the generated parts spliced in (shared by EVAL scripts and the library)."""
    checked = ("local function checked() error('LESSOR_INJECTED an error after the checks of ' .. SCRIPT) end"
               if fail_after_checks else "local function checked() end")
    text = _file("_prelude")
    for marker, part in (("--@@GENERATED_TRACER@@", _TRACER if trace else ""),
                         ("--@@GENERATED_CLOCK@@", _SERVER_CLOCK if clock is ClockMode.SERVER else _VIRTUAL_CLOCK),
                         ("--@@GENERATED_HOT@@", luagen.hot_block() + "\n" + checked),
                         ("--@@GENERATED_BIND@@", _indent(luagen.bind_block())),
                         ("--@@GENERATED_TABLES@@", _indent(luagen.lib_block())),
                         ("--@@GENERATED_HANDLERS@@", _indent(luagen.handlers_block())),
                         ("--@@LIB_EXPORTS@@", _LIB_EXPORTS)):
        assert text.count(marker) == 1, f"_prelude.lua must hold {marker} once"
        text = text.replace(marker, part)
    return _traced(text) if trace else text


def _traced(text: str) -> str:
    head, sep, rest = text.partition(_TRACER)
    return head + sep + rest.replace("redis.call(", "traced_call(")


def _body(body: str) -> str:
    return re.sub(r"^--@@USES_LIB@@.*$", _LIB_IMPORT, body, count=1, flags=re.M)


def compose(name: str, body: str, clock: ClockMode = ClockMode.SERVER, trace: bool = False,
            fail_after_checks: bool = False) -> str:
    """Prelude (generated parts spliced in) + a script body: what EVAL runs.

    Public for tests, which run small bodies against the prelude's helpers.
    """
    body = _body(body)
    if trace:
        body = body.replace("redis.call(", "traced_call(")
    return (prelude(clock, trace, fail_after_checks) + f"\nenter_call('{name}', KEYS[1])\n"
            + "-- ======== " + name + ".lua ========\nlocal function run_script(KEYS, ARGV)\n" + body
            + "\nend\nreturn finish_call(pcall(run_script, KEYS, ARGV))\n")


# Records the key of every call (its first argument) before making it (tests only).
# (redis.call is looked up on each call: a FUNCTION library has no redis.call while it loads.)
_TRACER = """local function real_call(...) return redis['call'](...) end
local function traced_call(cmd, key, ...)
  if key == nil then return real_call(cmd) end   -- TIME: no key (and a nil argument is refused)
  local c = string.upper(cmd)
  if c ~= 'INFO' and c ~= 'TIME' then real_call('RPUSH', 'lessor:test:touched', SCRIPT .. ' ' .. key) end
  return real_call(cmd, key, ...)
end
"""

_LIBRARY_ID = "@LIBRARY@"


@dataclass(frozen=True)
class Library:
    """Every lessor script as one server FUNCTION library: loaded once, called with FCALL.

    The prelude's tables and closures (lib()) are then built once per library load,
    not on every call as with EVAL. The library and function names carry a hash of
    the code, so builds that differ (a new release, the test-only trace and
    breakage builds) live side by side on one server and a client never calls
    code other than its own.
    """

    name: str
    code: str

    def function(self, script: str) -> str:
        """The FCALL name of ``script`` in this library."""
        return f"{self.name}_{script}"

    async def load(self, client: Redis) -> None:
        """FUNCTION LOAD on the server behind ``client`` (already loaded: fine)."""
        try:
            await client.function_load(self.code)
        except ResponseError as exc:
            if "already exists" not in str(exc):
                raise


def is_function_missing(exc: BaseException) -> bool:
    """The server does not know the function: restarted without it, FUNCTION FLUSH, a new node."""
    return isinstance(exc, ResponseError) and "function not found" in str(exc).lower()


@functools.cache
def library(clock: ClockMode = ClockMode.SERVER, trace: bool = False, fail_after_checks: bool = False,
            patches: tuple[tuple[str, str, str], ...] = ()) -> Library:
    """All scripts as one FUNCTION library; ``patches`` (tests only: breakage.py) are
    ``(script or '*', old, new)`` replacements, '*' in the prelude, else in that script."""
    pre = prelude(clock, trace, fail_after_checks)
    parts = []
    for target, old, new in patches:
        if target == "*":
            assert old in pre, f"the prelude no longer contains {old!r}"
            pre = pre.replace(old, new)
    for name in SCRIPT_NAMES:
        body = _body(_file(name))
        for target, old, new in patches:
            if target == name:
                assert old in body, f"{name}.lua no longer contains {old!r}"
                body = body.replace(old, new)
        if trace:
            body = body.replace("redis.call(", "traced_call(")
        parts.append(f"-- ======== {name}.lua ========\nlocal function run_{name}(KEYS, ARGV)\n{body}\nend\n"
                     f"redis.register_function('{_LIBRARY_ID}_{name}', function(keys, args)\n"
                     f"  enter_call('{name}', keys[1])\n  return finish_call(pcall(run_{name}, keys, args))\nend)\n")
    code = pre + "\n" + "".join(parts)
    lib_name = "lessor_" + hashlib.sha1(code.encode()).hexdigest()[:12]
    return Library(lib_name, f"#!lua name={lib_name}\n" + code.replace(_LIBRARY_ID, lib_name))


class Function:
    """One script of a loaded Library, called like redis-py's Script: ``await f(keys=..., args=...)``.

    A server that lacks the library (restarted without persistence, FUNCTION
    FLUSH, a new cluster node) answers "Function not found": the library is
    loaded there and the call made again, which makes that transparent to callers.
    """

    def __init__(self, redis: Redis, lib: Library, script: str) -> None:
        self.redis, self.library, self.script = redis, lib, script
        self.name = lib.function(script)

    async def __call__(self, keys: list | tuple = (), args: list | tuple = (), client: Redis | None = None) -> Any:
        client = client if client is not None else self.redis
        try:
            return await client.fcall(self.name, len(keys), *keys, *args)
        except ResponseError as exc:
            if not is_function_missing(exc):
                raise
        await self.library.load(client)
        return await client.fcall(self.name, len(keys), *keys, *args)


class Scripts:
    """The scripts of one Redis client, by name (``scripts.renew(keys, args)``).

    By default the FUNCTION library (``Function``: FCALL); with ``functions=False``
    each script is an EVAL script (redis-py's Script: EVALSHA, reloaded on NOSCRIPT).
    Tests may put a Script in place of one of them; Backend.call runs either.
    """

    def __init__(self, redis: Redis, clock: ClockMode = ClockMode.SERVER, trace: bool = False,
                 fail_after_checks: bool = False, functions: bool = True,
                 patches: tuple[tuple[str, str, str], ...] = ()) -> None:
        self.clock = clock
        self._scripts: dict[str, AsyncScript | Function] = {}
        if functions:
            lib = library(clock, trace, fail_after_checks, patches)
            self._scripts = {name: Function(redis, lib, name) for name in SCRIPT_NAMES}
        else:
            assert not patches, "patches are for the library build"
            self._scripts = {name: redis.register_script(script_source(name, clock, trace, fail_after_checks))
                             for name in SCRIPT_NAMES}

    def __getattr__(self, name: str) -> AsyncScript | Function:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(f"no lessor script {name!r}; known: {', '.join(SCRIPT_NAMES)}") from None

    def command(self, name: str) -> tuple[str, str]:
        """How script ``name`` appears in SLOWLOG / MONITOR: (command, its first argument)."""
        script = self._scripts[name]
        if isinstance(script, Function):
            return "fcall", script.name
        return "evalsha", script.sha
