"""`lessor doctor URL`: check a server before lessor writes anything to it.

Each check answers ok, warn or fail, with what was found and what to do:
server version, persistence (AOF, fsync policy) against the durability asked
for, ACL permissions for every command lessor sends (from the Lua sources and
the client), cluster state and partition placement, failover readiness (a
Sentinel service's primary, replicas and sentinels, or a cluster's replicas per
primary, against the durability asked for), and the clock skew between the
nodes (deadlines are judged on each partition's node clock).
Nothing is written.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from importlib import resources

from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import RedisError, ResponseError

from lessor.core.ids import CLUSTER_SLOTS, spread_tags
from lessor.leasing.backend import CONFIG_KEY, MIN_VERSIONS, make_redis
from lessor.leasing.durability import Durability
from lessor.leasing.urls import is_cluster, redact

# Commands the client sends outside the scripts (reads, follows, durability waits).
CLIENT_COMMANDS = ("fcall", "function|load", "xread", "xrange", "xrevrange", "xlen", "hget", "hmget", "hgetall",
                   "hsetnx", "smembers", "zrange", "zrevrangebyscore", "zcard", "scan", "info", "ping", "wait",
                   "waitaof", "blpop", "rpush",   # blpop, rpush: idle workers wait on the wake-up lists
                   "hset", "hdel", "time")        # workers' presence entries (scheduler/presence.py)


@dataclass(frozen=True)
class Check:
    """One finding: ``status`` is ok, warn or fail."""

    name: str
    status: str
    detail: str


def script_commands() -> set[str]:
    """Every command the Lua scripts call, read from their sources."""
    lua = resources.files("lessor.leasing") / "lua"
    found: set[str] = set()
    for item in lua.iterdir():
        if item.name.endswith(".lua"):
            found |= {c.lower() for c in re.findall(r"redis\.call\('([A-Za-z]+)'", item.read_text())}
    return found | {"time"}  # the server clock, generated into the prelude (leasing/scripts.py)


async def run_checks(url: str, durability: str = "memory") -> list[Check]:
    """All checks against ``url`` (read-only)."""
    redis = make_redis(url)
    checks: list[Check] = []
    try:
        if is_cluster(redis):
            await redis.initialize()
        checks.append(await _version(redis))
        checks.append(await _persistence(redis, Durability.parse(durability)))
        checks.append(await _acl(redis))
        checks += await _topology(redis)
        checks += await _replication(redis, Durability.parse(durability))
        checks.append(await _clock_skew(redis))
        checks.append(await _layout(redis))
    except Exception as exc:  # a check that cannot even run is itself the finding
        checks.append(Check("connect", "fail", f"{redact(url)}: {type(exc).__name__}: {redact(str(exc))}"))
    finally:
        await redis.aclose()
    return checks


async def _info(redis, section: str) -> dict:
    if is_cluster(redis):
        return await redis.execute_command("INFO", section, target_nodes=redis.get_default_node())
    return await redis.info(section)


async def _cmd(redis, *args):
    """A keyless command: on a cluster, sent to one node (they share ACL and config in a healthy cluster)."""
    if is_cluster(redis):
        return await redis.execute_command(*args, target_nodes=redis.get_default_node())
    return await redis.execute_command(*args)


def config_value(reply, name: str) -> str:
    """A CONFIG GET answer (a dict with str or bytes keys, or a flat list) as text."""
    if isinstance(reply, dict):
        value = reply.get(name, reply.get(name.encode()))
    else:
        items = list(reply or [])
        value = dict(zip(items[::2], items[1::2])).get(name.encode())
    return value.decode() if isinstance(value, bytes) else str(value or "?")


async def _version(redis) -> Check:
    info = await _info(redis, "server")
    flavour = "valkey" if "valkey_version" in info else "redis"
    text = str(info.get("valkey_version") or info.get("redis_version"))
    need = MIN_VERSIONS[flavour]
    ok = tuple(int(x) for x in text.split(".")[:2]) >= need
    return Check("version", "ok" if ok else "fail",
                 f"{flavour} {text}" + ("" if ok else f": lessor needs >= {'.'.join(map(str, need))}"))


async def _persistence(redis, durability: Durability) -> Check:
    info = await _info(redis, "persistence")
    if not int(info.get("aof_enabled", 0)):
        status = "fail" if durability.fsync else "warn"
        return Check("persistence", status, "appendonly is off: a restart loses everything since the last RDB "
                     "snapshot; set appendonly yes" + (" (durability fsync needs it)" if durability.fsync else ""))
    try:
        policy = config_value(await _cmd(redis, "CONFIG", "GET", "appendfsync"), "appendfsync")
    except ResponseError:
        return Check("persistence", "warn", "appendonly yes; appendfsync unknown (no +config permission)")
    if policy == "no" and durability.fsync:
        return Check("persistence", "fail", "appendfsync no never confirms WAITAOF: durability fsync would "
                     "fail every write; use everysec or always")
    flavour = "valkey" if "valkey_version" in await _info(redis, "server") else "redis"
    if durability.fsync and policy == "everysec" and flavour == "valkey":
        return Check("persistence", "warn", "appendonly yes, appendfsync everysec on Valkey: it confirms WAITAOF "
                     "before the fsync, so durability fsync holds against a server crash but not a machine "
                     "crash; use appendfsync always for that")
    return Check("persistence", "ok", f"appendonly yes, appendfsync {policy}")


async def _acl(redis) -> Check:
    try:
        user = (await _cmd(redis, "ACL", "WHOAMI")).decode()
    except ResponseError as exc:
        return Check("acl", "warn", f"cannot ask who this user is ({exc}); check it has {_needed()}")
    missing = []
    for command in sorted(script_commands() | set(CLIENT_COMMANDS)):
        answer = await _dryrun(redis, user, command)
        if answer == "no-dryrun":
            return Check("acl", "warn", f"user {user} may not run ACL DRYRUN, so its permissions cannot be "
                         f"checked; it needs {_needed()}")
        if answer not in ("OK", "arity"):
            missing.append(command)
    if missing:
        return Check("acl", "fail", f"user {user} may not run: {', '.join(missing)}; grant {_needed()}")
    return Check("acl", "ok", f"user {user} may run every command lessor sends")


async def _dryrun(redis, user: str, command: str) -> str:
    """ACL DRYRUN of ``command`` on a lessor key, with as many dummy arguments as its arity wants."""
    keyless = command in ("info", "ping", "wait", "waitaof", "scan", "function|load")
    for extra in range(6):
        args = ([] if keyless else ["lessor:{x}:k"]) + ["0"] * extra
        try:
            answer = await _cmd(redis, "ACL", "DRYRUN", user, *command.split("|"), *args)
        except ResponseError as exc:
            text = str(exc).upper()
            if "NOPERM" in text or "DRYRUN" in text:
                return "no-dryrun"
            if "WRONG NUMBER" in text or "ARITY" in text:
                continue
            return str(exc)
        return answer.decode() if isinstance(answer, bytes) else str(answer)
    return "arity"


def _needed() -> str:
    # function|load as such: the rest of FUNCTION (FLUSH, DELETE, RESTORE) is not lessor's to run.
    return "~lessor:* plus +" + " +".join(sorted(script_commands() | set(CLIENT_COMMANDS)))


async def _topology(redis) -> list[Check]:
    stored = await redis.hget(CONFIG_KEY, "partitions")
    placement = await redis.hget(CONFIG_KEY, "placement")
    if not is_cluster(redis):
        return [Check("topology", "ok", f"one server; lessor data: "
                      + (f"{int(stored)} partitions ({(placement or b'legacy').decode()} placement)" if stored
                         else "none yet"))]
    primaries = {n.name for n in redis.get_primaries()}
    covered = sum(1 for slot in range(CLUSTER_SLOTS) if redis.nodes_manager.slots_cache.get(slot))
    checks = [Check("cluster", "ok" if covered == CLUSTER_SLOTS else "fail",
                    f"{len(primaries)} primaries cover {covered} of {CLUSTER_SLOTS} slots"),
              await _full_coverage(redis)]
    if stored and (placement or b"") == b"spread":
        per = {name: 0 for name in primaries}
        for tag in spread_tags(int(stored)):
            per[redis.get_node_from_key("{" + tag + "}").name] += 1
        spread = max(per.values()) - min(per.values())
        checks.append(Check("placement", "ok" if spread <= 1 else "warn",
                            f"{int(stored)} partitions over primaries: "
                            + ", ".join(f"{k} {v}" for k, v in sorted(per.items()))
                            + ("" if spread <= 1 else "; uneven: choose P >= 8 x primaries on a fresh server")))
    return checks


async def _full_coverage(redis) -> Check:
    """cluster-require-full-coverage yes (the default) stops every primary while one shard is
    down: no lease anywhere is renewed until it has failed over, and leases self-fence."""
    try:
        value = config_value(await _cmd(redis, "CONFIG", "GET", "cluster-require-full-coverage"),
                             "cluster-require-full-coverage")
    except Exception as exc:  # no +config permission: say what to check by hand
        return Check("coverage", "warn", f"cannot read cluster-require-full-coverage ({exc}); set it to no")
    if value == "yes":
        return Check("coverage", "warn", "cluster-require-full-coverage yes: while one shard fails over every "
                     "node answers CLUSTERDOWN and no lease anywhere is renewed; lessor's partitions are "
                     "independent: set it to no on every node")
    return Check("coverage", "ok", f"cluster-require-full-coverage {value}: a failing shard stops only its partitions")


async def _replication(redis, durability: Durability) -> list[Check]:
    """Failover readiness: a Sentinel service (its primary, replicas, sentinels) or a cluster's replicas."""
    if is_cluster(redis):
        try:
            nodes = await _cmd(redis, "CLUSTER", "NODES")
        except ResponseError as exc:
            return [Check("replicas", "warn", f"cannot list the cluster's nodes ({exc}): replicas per primary unknown")]
        fewest = min(replicas_per_primary(nodes).values(), default=0)
        return [_enough_replicas("replicas", fewest, durability, f"each primary has >= {fewest} replica(s)")]
    pool = redis.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return []
    service, sentinels = pool.service_name, pool.sentinel_manager.sentinels
    states = []
    for sentinel in sentinels:
        try:
            states.append(await sentinel.sentinel_master(service))
        except (RedisError, OSError):
            continue
        finally:
            await sentinel.aclose()
    if not states:
        return [Check("sentinel", "fail", f"none of the {len(sentinels)} sentinels answers for service {service}")]
    state = states[0]
    found = (f"service {service}: primary {state['ip']}:{state['port']}, {state['num-slaves']} replica(s), "
             f"{len(states)} of {state['num-other-sentinels'] + 1} sentinels answer, quorum {state['quorum']}")
    if len(states) < state["quorum"]:
        return [Check("sentinel", "fail", found + ": too few sentinels answer to agree on a failover")]
    return [_enough_replicas("sentinel", state["num-slaves"], durability, found)]


def replicas_per_primary(nodes) -> dict[str, int]:
    """Healthy replicas of each primary serving slots, from a CLUSTER NODES answer."""
    lines = [line.split() for line in (nodes.decode() if isinstance(nodes, bytes) else nodes).splitlines()]
    counts = {f[0]: 0 for f in lines if "master" in f[2].split(",") and len(f) > 8}
    for f in lines:
        flags = f[2].split(",")
        if "slave" in flags and "fail" not in flags and f[3] in counts:
            counts[f[3]] += 1
    return counts


def _enough_replicas(name: str, replicas: int, durability: Durability, found: str) -> Check:
    """ok, or warn when a failover would leave nothing to promote or too few replicas for ``durability``."""
    if replicas == 0:
        return Check(name, "warn", found + ": no replica, so a failed primary has nothing to take over")
    if replicas < durability.replicas + 1:
        return Check(name, "warn", found + f": durability {durability} needs {durability.replicas + 1} replicas "
                     "per primary to stay writable through a failover (the promoted one has a replica fewer)")
    return Check(name, "ok", found)


async def _clock_skew(redis) -> Check:
    nodes = redis.get_primaries() if is_cluster(redis) else [None]
    skews = []
    for node in nodes:
        before = time.time()  # clock: measuring the servers' clocks against ours is this check's job
        if node is None:
            seconds, micros = await redis.time()
        else:
            seconds, micros = await redis.execute_command("TIME", target_nodes=node)
        after = time.time()  # clock: as above
        skews.append(abs((int(seconds) + int(micros) / 1e6) - (before + after) / 2) * 1000)
    worst = max(skews)
    status = "ok" if worst < 500 else "warn"
    return Check("clock", status, f"server clocks within {worst:.0f} ms of this machine's"
                 + ("" if status == "ok" else ": deadlines are judged per node; keep node clocks in sync (NTP)"))


async def _layout(redis) -> Check:
    from lessor.leasing.backend import RUNS_ON_ROOT
    from lessor.leasing.migrate import old_runs

    if await redis.hget(CONFIG_KEY, RUNS_ON_ROOT) == b"1":   # laid out, or migrated, so: no scan
        return Check("layout", "ok", "every run lives on its root action's hash")
    found = await old_runs(redis, limit=1000)
    if not found:
        return Check("layout", "ok", "every run lives on its root action's hash")
    many = "1000 or more runs" if len(found) >= 1000 else "1 run" if len(found) == 1 else f"{len(found)} runs"
    return Check("layout", "warn", f"{many} in the old layout (a hash of their own, e.g. {found[0]}): once "
                                   "every older lessor process has stopped, run `lessor doctor --migrate`")


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
