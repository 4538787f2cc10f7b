"""Loading the Lua scripts: one ``.lua`` file each, plus a generated prelude.

At load time each script is prefixed with ``lua/_prelude.lua``, into which we
generate (a) the transition tables of ``core/phases.py``, so the server checks
exactly the table the Python fold uses, and (b) the clock: the server's
``TIME`` in production, or a virtual clock read from a key for simulations.

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

from lessor.core.phases import ACTION_TRANSITIONS, RUN_TRANSITIONS, TERMINAL

SCRIPT_NAMES = (
    "append_events", "submit", "submit_child", "acquire", "renew", "complete", "fail", "release",
    "reap", "abort",
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


_LIB_NAMES = ("abort_actions", "bad_token", "bad_int", "bad_id", "bad_ns", "bad_text", "bad_bytes", "refuse", "SAFE_INT", "ensure_epoch", "ended", "emit", "enqueue", "reject", "expire_lease", "token_source", "fence", "split_ref",
              "end_lease", "hget", "rkey", "qkey", "TERMINAL", "is_run_event", "ON", "ACTION_T", "RUN_T",
              "STREAM", "LEASES", "DELAYED", "TIMEOUTS")
# Scripts that need more than the renewal hot path say so with a --@@USES_LIB@@ line,
# replaced by this binding of the prelude's lazily built library.
_LIB_IMPORT = ("local L = lib()\nlocal " + ", ".join(_LIB_NAMES) + " =\n  "
               + ", ".join(f"L.{n}" for n in _LIB_NAMES))


def _lua_table(name: str, table: dict) -> str:
    rows = []
    for (phase, etype), target in sorted(table.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        rows.append(f'  ["{phase or "-"}|{etype}"] = "{target}",')
    return f"local {name} = {{\n" + "\n".join(rows) + "\n}"


def generated_prelude(clock: ClockMode) -> tuple[str, str]:
    """The Lua generated from Python: (transition tables + terminal set, clock function)."""
    terminal = ", ".join(f"{p} = true" for p in sorted(TERMINAL))
    tables = "\n".join([
        _lua_table("ACTION_T", ACTION_TRANSITIONS),
        _lua_table("RUN_T", RUN_TRANSITIONS),
        f"local TERMINAL = {{ {terminal} }}",
    ])
    return tables, _SERVER_CLOCK if clock is ClockMode.SERVER else _VIRTUAL_CLOCK


@functools.cache
def script_source(name: str, clock: ClockMode = ClockMode.SERVER) -> str:
    """The full Lua source of script ``name`` as sent to the server."""
    lua = resources.files("lessor.leasing") / "lua"
    prelude = (lua / "_prelude.lua").read_text()
    tables, clock_fn = generated_prelude(clock)
    prelude = prelude.replace("--@@GENERATED_CLOCK@@", clock_fn)
    prelude = prelude.replace("--@@GENERATED_TABLES@@", tables.replace("\n", "\n  "))
    body = (lua / f"{name}.lua").read_text()
    body = re.sub(r"^--@@USES_LIB@@.*$", _LIB_IMPORT, body, count=1, flags=re.M)
    return prelude + "\n-- ======== " + name + ".lua ========\n" + body


class Scripts:
    """The registered scripts of one Redis client, by name (``scripts.renew(keys, args)``)."""

    def __init__(self, redis: Redis, clock: ClockMode = ClockMode.SERVER) -> None:
        self.clock = clock
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name, clock)) for name in SCRIPT_NAMES
        }

    def __getattr__(self, name: str) -> AsyncScript:
        try:
            return self._scripts[name]
        except KeyError:
            raise AttributeError(f"no lessor script {name!r}; known: {', '.join(SCRIPT_NAMES)}") from None

    def sha(self, name: str) -> str:
        return self._scripts[name].sha
