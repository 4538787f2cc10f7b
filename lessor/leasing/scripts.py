"""Loading the Lua scripts: one ``.lua`` file each, plus a generated prelude.

At load time each script is prefixed with ``lua/_prelude.lua``, into which we
generate (``leasing/luagen.py``) everything defined in Python: the transition
tables, each event's fields and projection handler, the key schema, the reply
codes; and the clock: the server's ``TIME`` in production, or a virtual clock
read from a key for simulations.

Scripts go through redis-py's Script objects: EVALSHA first, and on NOSCRIPT
(a restarted server, a SCRIPT FLUSH) they load the source and retry, which is
what makes a server restart transparent to callers.
"""

from __future__ import annotations

import functools
import re
from enum import Enum
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from lessor.core.keyspace import HOT, KEY_FAMILIES, PARTITION_KEYS
from lessor.leasing import luagen

SCRIPT_NAMES = (
    "append_events", "submit", "submit_child", "acquire", "renew", "complete", "fail", "release",
    "reap", "abort", "retire", "schedule", "tick", "fair_sync",
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
    "emit", "enqueue", "wake", "fair_pass", "fair_join", "defer_counts", "create_run", "reject", "ended", "end_lease", "abort_actions", "token_source",
    # the lease rules, once each
    "fence", "check_token", "lease_dead", "lease_expiry", "expire_lease", "ensure_epoch", "server_epoch",
    # the boundary
    "refuse", "unpack_batch", "bad_token", "bad_int", "bad_id", "bad_ns", "bad_text", "bad_bytes", "SAFE_INT",
    # reading
    "hget", "split_ref", "nz", "is_run_event",
    # generated: keys, tables, handlers
    *(k.lua for k in PARTITION_KEYS if k.lua not in HOT), *(f.lua for f in KEY_FAMILIES if f.lua not in HOT),
    "ON", "ON_RUN", "ON_SCHEDULE", "EVF", "ACTION_T", "RUN_T", "SCHEDULE_T", "TERMINAL", "FROM_PAYLOAD", "NO_PHASE", "RETIRED",
)
_LIB_EXPORTS = "lib_ = {" + ", ".join(f"{n} = {n}" for n in _LIB_NAMES) + "}"
# Scripts that need more than the renewal hot path say so with a --@@USES_LIB@@ line,
# replaced by this binding of the prelude's lazily built library.
_LIB_IMPORT = ("local L = lib()\nlocal " + ", ".join(_LIB_NAMES) + " =\n  "
               + ", ".join(f"L.{n}" for n in _LIB_NAMES))


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


@functools.cache
def script_source(name: str, clock: ClockMode = ClockMode.SERVER, trace: bool = False,
                  fail_after_checks: bool = False) -> str:
    """The full Lua source of script ``name`` as sent to the server.

    ``trace`` (tests only) records every key each Redis call names in the list
    ``lessor:test:touched`` as ``<script> <key>``, to check each script's
    ``Touches:`` header against what it really does (leasing/touches.py).
    ``fail_after_checks`` (tests only) makes ``checked()``, which every script
    calls once it has checked its arguments and before its first write, raise
    ``LESSOR_INJECTED``: a call then must leave the server exactly as it was.
    """
    body = (resources.files("lessor.leasing") / "lua" / f"{name}.lua").read_text()
    return compose(name, body, clock, trace, fail_after_checks)


def compose(name: str, body: str, clock: ClockMode = ClockMode.SERVER, trace: bool = False,
            fail_after_checks: bool = False) -> str:
    """Prelude (generated parts spliced in) + a script body: what the server runs.

    Public for tests, which run small bodies against the prelude's helpers.
    """
    checked = (f"local function checked() error('LESSOR_INJECTED an error after the checks of {name}') end"
               if fail_after_checks else "local function checked() end")
    prelude = (resources.files("lessor.leasing") / "lua" / "_prelude.lua").read_text()
    for marker, text in (("--@@GENERATED_CLOCK@@", _SERVER_CLOCK if clock is ClockMode.SERVER else _VIRTUAL_CLOCK),
                         ("--@@GENERATED_HOT@@", luagen.hot_block() + "\n" + checked),
                         ("--@@GENERATED_TABLES@@", _indent(luagen.lib_block())),
                         ("--@@GENERATED_HANDLERS@@", _indent(luagen.handlers_block())),
                         ("--@@LIB_EXPORTS@@", _LIB_EXPORTS)):
        assert prelude.count(marker) == 1, f"_prelude.lua must hold {marker} once"
        prelude = prelude.replace(marker, text)
    body = re.sub(r"^--@@USES_LIB@@.*$", _LIB_IMPORT, body, count=1, flags=re.M)
    source = prelude + "\n-- ======== " + name + ".lua ========\n" + body
    if trace:
        source = _TRACER.replace("@NAME@", name) + source.replace("redis.call(", "traced_call(")
    return source


# Records the key of every call (its first argument) before making it (tests only).
_TRACER = """local real_call = redis.call
local function traced_call(cmd, key, ...)
  local c = string.upper(cmd)
  if key ~= nil and c ~= 'INFO' and c ~= 'TIME' then real_call('RPUSH', 'lessor:test:touched', '@NAME@ ' .. key) end
  return real_call(cmd, key, ...)
end
"""


class Scripts:
    """The registered scripts of one Redis client, by name (``scripts.renew(keys, args)``)."""

    def __init__(self, redis: Redis, clock: ClockMode = ClockMode.SERVER, trace: bool = False,
                 fail_after_checks: bool = False) -> None:
        self.clock = clock
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name, clock, trace, fail_after_checks))
            for name in SCRIPT_NAMES
        }

    def __getattr__(self, name: str) -> AsyncScript:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(f"no lessor script {name!r}; known: {', '.join(SCRIPT_NAMES)}") from None

    def sha(self, name: str) -> str:
        return self._scripts[name].sha
