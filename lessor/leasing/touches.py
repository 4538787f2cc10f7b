"""Which keys each script can touch: read from the Lua, checked against its header.

Every script's header has a ``Touches:`` line naming, by their names in the
key schema (``core/keyspace.py``), the keys it may read or write, directly or
through the prelude's functions (``emit`` appends to STREAM and writes the
subject's hash; an action that ends aborts its live descendants, and so on).

``reachable(name)`` computes that set from the source: the key names each
function and the script body mention, closed over the calls between them.
``tests/test_schema.py`` checks the header equals it, and that a traced run of
every script never touches a key outside it.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from lessor.core.keyspace import KEY_FAMILIES, PARTITION_KEYS

_CONSTANTS = {k.lua for k in PARTITION_KEYS}
_FAMILIES = {f.lua for f in KEY_FAMILIES}
# What a function leaves to the end of the call: emit() only collects its event, which
# flush_log() appends to STREAM when the call ends (finish_call, in every script's wrapper),
# and the runs it finishes, which flush_finished() adds to their done index (done_key).
_LATER = {"emit": {"flush_log", "flush_finished"}}
_DEF = re.compile(r"^(\s*)(?:local function (\w+)|(\w+) = function)\(")


def _lua(name: str) -> str:
    return (resources.files("lessor.leasing") / "lua" / f"{name}.lua").read_text()


def _strip_comments(text: str) -> str:
    text = re.sub(r"--\[\[.*?\]\]", "", text, flags=re.S)
    return re.sub(r"--.*$", "", text, flags=re.M)


@functools.cache
def _prelude_functions() -> dict[str, str]:
    """name -> body text of every function the prelude defines (comments stripped)."""
    lines = _strip_comments(_lua("_prelude")).splitlines()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        found = _DEF.match(line)
        if not found:
            continue
        indent, name = found.group(1), found.group(2) or found.group(3)
        if line.rstrip().endswith("end"):   # a one-line function
            out[name] = line
            continue
        body = [line]
        for nxt in lines[i + 1:]:
            body.append(nxt)
            if nxt.rstrip() == indent + "end":
                break
        out[name] = "\n".join(body)
    return out


def _mentions(text: str) -> tuple[set[str], set[str]]:
    """(key names, prelude functions) a piece of Lua mentions."""
    keys = {k for k in _CONSTANTS if re.search(rf"\b{k}\b", text)}
    keys |= {f for f in _FAMILIES if re.search(rf"\b{f}\(", text)}
    # lib() builds the library (its text holds every function): binding it is not a call of them all.
    calls = {f for f in _prelude_functions() if f != "lib" and re.search(rf"\b{f}\(", text)}
    return keys, calls


def reachable(name: str) -> set[str]:
    """Every key script ``name`` can touch: its own mentions and those of the functions it calls."""
    keys, todo = _mentions(_strip_comments(_lua(name)))
    seen: set[str] = set()
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        more_keys, more_calls = _mentions(_prelude_functions()[fn])
        more_calls |= _LATER.get(fn, set())
        keys |= more_keys
        todo |= more_calls - seen
    return keys


def declared(name: str) -> set[str]:
    """The keys script ``name`` lists on its header's ``Touches:`` line (continuation lines indented)."""
    found = re.search(r"^\s*Touches:(.*(?:\n\s{4,}[A-Za-z_, ]+$)*)", _lua(name), re.M)
    if not found:
        raise ValueError(f"{name}.lua has no Touches: line in its header")
    return set(re.findall(r"[A-Za-z_]+", found.group(1)))
