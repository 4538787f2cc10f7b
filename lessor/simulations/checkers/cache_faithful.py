"""The cache holds only results the log accepted, and the log accepts only what tasks produced.

Evidence: the event log, the cache's content at the end (per partition, read
by the simulator), and the ground truth of what each attempt's task returned
(every simulated result names its action and token, so no two are alike):

- an accepted result (action_succeeded) is the one that attempt's task returned;
- a cache entry is the result of the last success the log accepted, in that
  partition, for an action submitted with that cache key: a completion the token
  check refused never reaches the cache;
- a cache hit hands out a result some success with that key stored (a crash or
  failover rolls the whole server back, so a hit that survived kept its source).
"""

from __future__ import annotations

from typing import Mapping

from lessor.core import events as ev
from lessor.simulations.checkers import Violation

NAME = "cache_faithful"


def check(entries, cache: Mapping[tuple[int, str], bytes],
          results: Mapping[tuple[str, int], bytes]) -> list[Violation]:
    """Violations: a cache entry or cache hit no accepted success stored, an accepted result no task returned."""
    out = []
    key_of = {f"{e.ns}/{e.run}/{e.action}": e.cache_key for _, e in entries
              if isinstance(e, ev.ActionCreated) and e.cache_key}
    stored: dict[tuple[int, str], bytes] = {}
    ever: dict[str, set[bytes]] = {}
    for _, e in entries:
        if isinstance(e, ev.ActionSucceeded) and f"{e.ns}/{e.run}/{e.action}" in key_of:
            ever.setdefault(key_of[f"{e.ns}/{e.run}/{e.action}"], set()).add(e.result or b"")
    for partition, e in entries:
        if not isinstance(e, ev.ActionEvent) or not e.action:
            continue
        ref = f"{e.ns}/{e.run}/{e.action}"
        if isinstance(e, ev.ActionSucceeded):
            produced = results.get((ref, e.token))
            if produced is not None and (e.result or b"") != produced:
                out.append(Violation(NAME, ref, f"accepted result of token {e.token} (event {e.id}) is not what "
                                                "its task returned"))
            if ref in key_of:
                stored[(partition, key_of[ref])] = e.result or b""
        elif isinstance(e, ev.CacheHit) and (e.result or b"") not in ever.get(e.cache_key, ()):
            out.append(Violation(NAME, ref, f"cache hit (event {e.id}) handed out a result no success with key "
                                            f"{e.cache_key!r} stored before it"))
    for (partition, key), value in sorted(cache.items()):
        if stored.get((partition, key)) != value:
            out.append(Violation(NAME, f"cache {key}", f"partition {partition} holds a result that is not the "
                                                       "last success the log accepted for that key"))
    return out
