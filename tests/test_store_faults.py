"""Store faults with real processes: promotion, kill -9 and power cut, a 5 s outage, demote and
re-promote, durability errors.

Every server is a real valkey-server (tests/servers.py); workers are real ``Worker`` objects or
``lessor worker`` processes. Waiting is polling with generous deadlines; nothing asserts a
duration. The evidence is what the workers *heard* (grants, renewals, committed reports,
recorded in-process by a LeaseClient/Worker subclass that only writes things down) against the
log of the server that survived.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import anyio
import pytest
import redis

from lessor.core import events as ev
from lessor.errors import NotDurable
from lessor.leasing.backend import Backend, make_redis, open_backend, read_partitions
from lessor.leasing.client import Lease, LeaseClient
from lessor.leasing.codes import Code
from lessor.leasing.config import LeaseConfig
from lessor.leasing.durability import Durability
from lessor.leasing.eventlog import EventLog
from lessor.leasing.scripts import SCRIPT_NAMES, Scripts, script_source
from lessor.scheduler.launch import lessor_command, worker_command
from lessor.scheduler.query import get_action, get_run, run_actions, run_phases
from lessor.scheduler.registry import Registry
from lessor.scheduler.submit import Retries, RunSpec, submit_run, submit_runs
from lessor.scheduler.values import pack_value
from lessor.scheduler.worker import Worker, WorkerConfig
from lessor.server import EmbeddedServer, _die_with_parent
from lessor.simulations.chaos.proxy import ChaosProxy
from tests.servers import (
    ReplicatedPair,
    command,
    connect,
    kill9,
    master_replid,
    replication,
    restart,
    run_id,
    wait_for,
)

pytestmark = pytest.mark.anyio
NS, QUEUE = "proj/development", "faults"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 60.0  # generous: a loaded 2-core machine


# --- what workers heard ----------------------------------------------------------------------


class RecordingClient(LeaseClient):
    """The real lease client; it also writes down every grant and every renewal its worker heard OK.

    ``promised[(ref, token)]``: the latest deadline the server promised this worker for that lease
    (the grant's deadline, or the server time of an accepted renewal + ttl).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grants: list[Lease] = []
        self.promised: dict[tuple[str, int], int] = {}

    def _promise(self, ref: str, token: int, deadline_ms: int) -> None:
        self.promised[(ref, token)] = max(self.promised.get((ref, token), 0), deadline_ms)

    async def acquire_from(self, partition: int, namespace: str, queue: str, n: int) -> list[Lease]:
        leases = await super().acquire_from(partition, namespace, queue, n)
        for lease in leases:
            self.grants.append(lease)
            self._promise(lease.ref, lease.token, lease.deadline_ms)
        return leases

    async def renew_partition(self, partition: int, leases: list[Lease]) -> dict[str, Code]:
        # LeaseClient.renew_partition, keeping the server time the renewal ran at (reply[0]).
        reply = await self.renew_reply(partition, leases)
        codes = {lease.ref: Code(code) for lease, code in zip(leases, reply[1:])}
        for lease in leases:
            if codes[lease.ref] in (Code.OK, Code.RESUMED):
                self._promise(lease.ref, lease.token, int(reply[0]) + self.config.ttl_ms)
        return codes


class RecordingWorker(Worker):
    """A real Worker whose client records what it heard, and which notes each report's outcome."""

    def __init__(self, backend: Backend, registry: Registry, config: WorkerConfig) -> None:
        super().__init__(backend, registry, config)
        self.client = RecordingClient(backend, config.worker_id, config.lease)
        self.keeper.client = self.client
        self.reporter.client = self.client
        self.heard: list[tuple[str, str, int, str, float]] = []   # (kind, ref, token, outcome, sent at)

    async def _report(self, call, lease: Lease, *args) -> str:
        sent_ms = time.time() * 1000  # clock: compared with the fsync shim's wall-clock records
        outcome = await super()._report(call, lease, *args)
        self.heard.append((call.__name__, lease.ref, lease.token, outcome, sent_ms))
        return outcome

    def committed(self, kind: str = "complete") -> list[tuple[str, int, float]]:
        return [(ref, token, sent) for k, ref, token, outcome, sent in self.heard
                if k == kind and outcome == "committed"]


class Gate:
    """Open by default; a nap that ends while it is closed waits until it opens again.
    ``inside[name]``: naps of registry ``name`` begun and not yet returned."""

    def __init__(self) -> None:
        self._open = anyio.Event()
        self._open.set()
        self.inside: Counter = Counter()

    def close(self) -> None:
        if self._open.is_set():
            self._open = anyio.Event()

    def open(self) -> None:
        self._open.set()

    async def passed(self) -> None:
        await self._open.wait()


def nap_registry(gate: Gate | None = None, name: str = "") -> Registry:
    registry = Registry()

    @registry.task
    async def nap(ctx, seconds: float) -> float:
        if gate is None:
            await anyio.sleep(seconds)
            return seconds
        gate.inside[name] += 1
        try:
            await anyio.sleep(seconds)
            await gate.passed()
        finally:
            gate.inside[name] -= 1
        return seconds

    return registry


async def until(predicate, what: str, timeout_s: float = DEADLINE_S) -> None:
    """Poll an async predicate; fail naming ``what`` after ``timeout_s``."""
    with anyio.move_on_after(timeout_s):
        while True:
            try:
                if await predicate():
                    return
            except Exception as exc:  # noqa: BLE001 - a server restarting answers with errors for a while
                if not isinstance(exc, (redis.RedisError, OSError, ConnectionError)) and "unreachable" not in str(exc):
                    raise
            await anyio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def submit_naps(backend: Backend, count: int, seconds: float, prefix: str) -> list[str]:
    runs = []
    for i in range(count):
        spec = RunSpec("nap", inputs=pack_value({"seconds": seconds}), namespace=NS, queue=QUEUE,
                       run_id=f"{prefix}{i:03d}", retries=Retries(system=5))
        await submit_runs(backend, [spec])
        runs.append(spec.run_id)
    return runs


async def phases(backend: Backend, runs: list[str]) -> dict[str, str | None]:
    return {r: (p.value if p else None) for r, p in (await run_phases(backend, NS, runs)).items()}


async def all_succeeded(backend: Backend, runs: list[str]) -> bool:
    return set((await phases(backend, runs)).values()) == {"succeeded"}


async def all_finished_or_lost(backend: Backend, runs: list[str]) -> bool:
    """Every run succeeded, or is missing (a submission a power cut took)."""
    return set((await phases(backend, runs)).values()) <= {"succeeded", None}


async def succeeded_tokens(backend: Backend) -> set[tuple[str, int]]:
    return {(f"{e.event.ns}/{e.event.run}/{e.event.action}", e.event.token)
            for e in await EventLog(backend).read_all() if isinstance(e.event, ev.ActionSucceeded)}


async def running_actions(backend: Backend, runs: list[str]) -> list[str]:
    out = []
    for r in runs:
        out += [f"{r}/{a.action_id}" for a in await run_actions(backend, NS, r) if a.phase.value == "running"]
    return out


# --- a. forced promotion under replicas:1 ----------------------------------------------------------


async def test_a_forced_promotion_loses_no_acknowledged_write_reuses_no_token_and_expires_nothing_early():
    """Primary + replica; workers with durability replicas:1 through proxies (a VIP). The replica
    is paused and the primary holds >= 2 MB of stream for it (renewals sent meanwhile are lost),
    then the primary is SIGKILLed, the replica promoted, the old primary rejoins as its replica.
    Worker A follows the VIP to the new primary; worker B stays cut off, so its leases must expire
    there, and not before the deadline + grace the old primary promised it."""
    lease = LeaseConfig(ttl_ms=2000, grace_ms=1000, margin_ms=800)
    # A wait longer than the pause: no write is answered "not durable" before the kill (their
    # tries after it go to the new primary).
    durability = Durability.parse("replicas:1", timeout_ms=15_000)
    # Naps that end while the gate is closed (from the pause until A follows the VIP) wait for it:
    # a nap B is inside at the pause is still running at the cut however long the filler takes,
    # so B surely holds leases there. (Before, a loaded machine let B finish first: nothing to
    # expire. Then "B running something" let through a nap already returned, its completion on
    # the way and replicated just before the pause: B held nothing the new primary knew of.)
    gate = Gate()
    with ReplicatedPair() as pair:
        proxies = [await ChaosProxy(pair.primary.port).start() for _ in range(2)]
        backends: list[Backend] = []
        try:
            for proxy in proxies:
                redis_ = make_redis(f"redis://127.0.0.1:{proxy.port}")
                backends.append(Backend(redis=redis_, url=f"redis://127.0.0.1:{proxy.port}",
                                        partitions=await read_partitions(redis_, 4), durability=durability))
            control = backends[0]
            runs = await submit_naps(control, 14, 3.0, "fo")          # acknowledged: on the replica too
            a, b = (RecordingWorker(backends[i], nap_registry(gate, f"w{'ab'[i]}"), WorkerConfig(
                queue=QUEUE, namespace=NS, concurrency=3, worker_id=f"w{'ab'[i]}", lease=lease,
                drain_s=1, reap_interval_ms=100)) for i in range(2))
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.run)
                tg.start_soon(b.run)
                await until(lambda: _true(len(a.committed()) + len(b.committed()) >= 2 and gate.inside["wb"]),
                            "two completions committed and worker B inside a nap")
                gate.close()                                            # no await since B was seen inside
                # The replica stops reading; the primary keeps >= 2 MB of stream in its own memory.
                pair.pause_replication()
                with connect(pair.primary) as filler:
                    await anyio.to_thread.run_sync(pair.write_until_unsent, filler)
                await anyio.sleep(1.0)                                  # renewals the replica will never see
                promised_before = dict(b.client.promised)
                granted_before = {id(lease) for w in (a, b) for lease in w.client.grants}
                await anyio.to_thread.run_sync(failover, pair)
                for proxy in proxies:                                   # the VIP moves to the new primary
                    proxy.upstream_port = pair.replica.port
                    proxy.cut()
                proxies[0].heal()                                       # B stays cut off from it
                gate.open()
                await anyio.to_thread.run_sync(rejoin_as_replica, pair)
                async with open_backend(pair.replica.url, durability=durability) as new:
                    await until(lambda: all_succeeded(new, runs), "every run to succeed on the new primary")
                    proxies[1].heal()                                   # B's late reports are refused
                    a.stop()
                    b.stop()
            async with open_backend(pair.replica.url) as new:
                entries = [e.event for e in await EventLog(new).read_all()]
                done = await succeeded_tokens(new)
                left = await running_actions(new, runs)
        finally:
            for proxy in proxies:
                await proxy.stop()
            for backend in backends:
                await backend.redis.aclose()

    # No token issued twice (per partition: the counter is per partition).
    granted = Counter((lease.partition, lease.token) for w in (a, b) for lease in w.client.grants)
    assert granted and max(granted.values()) == 1, [k for k, n in granted.items() if n > 1]
    # Every grant of the new primary is above every grant of the old one, partition by partition.
    grants = [lease for w in (a, b) for lease in w.client.grants]
    for part in {lease.partition for lease in grants}:
        old = [x.token for x in grants if x.partition == part and id(x) in granted_before]
        new = [x.token for x in grants if x.partition == part and id(x) not in granted_before]
        if old and new:
            assert min(new) > max(old), f"partition {part}: a token after the failover is not above those before"
    assert any(id(x) not in granted_before for x in grants), "nothing was granted after the failover"
    # No acknowledged-durable write lost: every acknowledged run, every completion heard committed.
    created = {e.run for e in entries if isinstance(e, ev.RunCreated)}
    assert set(runs) <= created
    heard = {(ref, token) for w in (a, b) for ref, token, _ in w.committed()}
    assert heard and heard <= done, heard - done
    # No lease expired before the deadline + grace its worker was promised (renewals the promoted
    # replica never saw included): the new epoch extended them first.
    expired = [e for e in entries if isinstance(e, ev.LeaseExpired)]
    assert any(e.worker == "wb" for e in expired), "worker B was cut off: its leases should expire"
    promised = {**a.client.promised}
    for key, deadline in b.client.promised.items():
        promised[key] = max(promised.get(key, 0), deadline)
    for e in expired:
        due = promised.get((f"{e.ns}/{e.run}/{e.action}", e.token), 0) + e.grace_ms
        assert e.ts > due, f"lease {e.token} of {e.run}/{e.action} expired at {e.ts}, before {due}"
    assert promised_before, "B heard renewals before the kill"
    # Nothing left running, with or without an owner.
    assert left == []


async def _true(value) -> bool:
    return bool(value)


def failover(pair: ReplicatedPair) -> None:
    """SIGKILL the primary while its replica is paused, resume the replica (it applies what the
    kernel still delivers, never what the primary held in its own memory), promote it."""
    pair.kill_primary()
    pair.resume_replication()
    wait_for(lambda: replication(pair.replica)["master_link_status"] == "down", "the replica to see its link down")
    pair.promote_replica()


def rejoin_as_replica(pair: ReplicatedPair) -> None:
    """The old primary comes back (from its AOF) and follows the new one (a full sync drops its tail)."""
    pair.primary.start()
    command(pair.primary, "REPLICAOF", "127.0.0.1", str(pair.replica.port))
    pair.wait_link_up(pair.primary)


async def test_a_repeated_write_is_not_called_durable_unless_the_first_one_is():
    """The durability wait covers the writes of *its own connection*. A write repeated with the same
    token after "not durable" (or after a lost reply) is answered "already done" and writes nothing,
    so on another connection (a reconnect, another pooled one) WAIT/WAITAOF has nothing to wait for
    and answers at once: the repeat is called durable while the first write is on no replica. A
    failover then loses a completion the worker counted as committed."""
    lease_cfg = LeaseConfig(ttl_ms=30_000, grace_ms=10_000)
    with ReplicatedPair() as pair:
        async with open_backend(pair.primary.url) as plain:
            await submit_run(plain, "t", namespace=NS, queue=QUEUE, run_id="wr1")
            (lease,) = await LeaseClient(plain, "w1", lease_cfg).acquire(NS, QUEUE, 1)
            pair.wait_synced()
        durability = Durability.parse("replicas:1", timeout_ms=300)
        with pair.replication_paused():
            with connect(pair.primary) as filler:   # what follows stays in the primary's own memory
                pair.write_until_unsent(filler)
            async with open_backend(pair.primary.url, durability=durability) as first:
                with pytest.raises(NotDurable, match="0 of 1 replicas"):
                    await LeaseClient(first, "w1", lease_cfg).complete(lease, b"")
            async with open_backend(pair.primary.url, durability=durability) as again:  # a new connection
                try:
                    await LeaseClient(again, "w1", lease_cfg).complete(lease, b"")
                    repeat = "committed"
                except NotDurable:
                    repeat = "not durable"
            pair.kill_primary()
        wait_for(lambda: replication(pair.replica)["master_link_status"] == "down", "the link down")
        pair.promote_replica()
        async with open_backend(pair.replica.url) as new:
            survived = (await get_action(new, NS, "wr1", "a0")).phase.value == "succeeded"
    # The repeat may be called committed only if the completion really survived the failover.
    assert repeat == "not durable" or survived, "a repeat was answered durable; the failover lost it"


# --- b. kill -9 and power cut under load ------------------------------------------------------------


async def run_workers_through(server, durability: str, crash, runs: int = 24, workers: int = 2):
    """Workers (in-process) under load; ``crash(workers)`` is awaited mid-run; then everything must finish.

    Returns (workers, acknowledged run ids, (ref, token) succeeded in the log after the restart).
    """
    lease = LeaseConfig(ttl_ms=2000, grace_ms=1000, margin_ms=500)   # self-fence 2.5 s: longer than the outage
    registry = nap_registry()
    async with open_backend(server.url, durability=durability) as backend:
        ws = [RecordingWorker(backend, registry, WorkerConfig(queue=QUEUE, namespace=NS, concurrency=4,
                                                             worker_id=f"w{i}", lease=lease, drain_s=1,
                                                             reap_interval_ms=100)) for i in range(workers)]
        acked: list[str] = []
        async with anyio.create_task_group() as tg:
            for w in ws:
                tg.start_soon(w.run)

            async def submitter() -> None:
                for i in range(runs):
                    while True:
                        try:
                            await submit_runs(backend, [RunSpec("nap", inputs=pack_value({"seconds": 0.2}),
                                                                namespace=NS, queue=QUEUE, run_id=f"k{i:03d}",
                                                                retries=Retries(system=5))])
                            break
                        except Exception:  # noqa: BLE001 - down or restarting: same run id again
                            await anyio.sleep(0.1)
                    acked.append(f"k{i:03d}")
                    await anyio.sleep(0.05)

            tg.start_soon(submitter)
            await until(lambda: _true(sum(len(w.committed()) for w in ws) >= 4), "four completions committed")
            await crash(ws)
            await until(lambda: _true(len(acked) == runs), "every submission acknowledged")
            await until(lambda: all_finished_or_lost(backend, acked), "every run to finish")
            for w in ws:
                w.stop()
        return ws, acked, await succeeded_tokens(backend)


async def test_b_after_a_kill_9_under_load_every_completion_heard_committed_is_in_the_log():
    with EmbeddedServer(appendfsync="everysec") as server:
        async def crash(_):
            await anyio.to_thread.run_sync(kill9, server)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(restart, server)   # same dir, socket and port: AOF reloaded

        ws, acked, done = await run_workers_through(server, "fsync", crash)
    heard = {(ref, token) for w in ws for ref, token, _ in w.committed()}
    assert len(heard) >= 4 and heard <= done, heard - done
    assert {ref.split("/")[2] for ref, _ in done} == set(acked)   # and every acknowledged run succeeded


def powercut_when_a_commit_is_unsynced(server, ws, attempts: int = 40) -> int:
    """Freeze the server (SIGSTOP: no more writes or fsyncs), and if a completion heard committed was
    *sent* after the last fsync of the AOF returned, cut the power now (its bytes are not on disk
    unless the durability wait held it back). Else resume and look again. Returns the number of such
    completions at the cut (0: none was ever unsynced, the cut happened anyway at the end)."""
    for _ in range(attempts):
        os.kill(server.pid, signal.SIGSTOP)
        synced = [int(line.split(" ", 2)[0]) for line in open(server.fsync_log) if line.rstrip().endswith(".incr.aof")]
        last_fsync_ms = max(synced, default=0)
        unsynced = [1 for w in ws for _, _, sent in w.committed() if sent > last_fsync_ms + 1]
        if unsynced:
            server.cut()        # SIGKILL works on a stopped process
            return len(unsynced)
        os.kill(server.pid, signal.SIGCONT)
        time.sleep(0.05)
    server.cut()
    return 0


@pytest.mark.parametrize("durability, appendfsync, lost_expected", [
    pytest.param("memory", "everysec", True, id="memory-everysec-control"),
    pytest.param("fsync", "always", False, id="fsync-always"),
    pytest.param("fsync", "everysec", False, id="fsync-everysec", marks=pytest.mark.xfail(
        strict=False, raises=AssertionError, reason="Valkey (8.1 here, 9.1 too) answers WAITAOF 1 0 under appendfsync everysec "
                             "before the fsync (the fix, redis/redis#13793, is only in Redis >= 8.0): "
                             "`fsync` durability then holds against a process crash, not a power cut")),
])
async def test_b_after_a_power_cut_every_completion_heard_committed_is_in_the_log(durability, appendfsync,
                                                                                 lost_expected):
    """A machine crash: the AOF bytes no fsync covered are gone (powercut.py). Under ``memory`` the
    check must find a loss (the control: the check bites); under ``fsync`` there must be none."""
    from lessor.simulations.chaos.powercut import PowerCutServer

    server = PowerCutServer(appendfsync=appendfsync).start()
    try:
        async def crash(ws):
            unsynced = await anyio.to_thread.run_sync(powercut_when_a_commit_is_unsynced, server, ws)
            if lost_expected:
                assert unsynced, "never caught a commit ahead of the fsync: the control proves nothing"
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(server.start)

        ws, acked, done = await run_workers_through(server, durability, crash)
    finally:
        server.stop()
    heard = {(ref, token) for w in ws for ref, token, _ in w.committed()}
    lost = heard - done
    if lost_expected:
        assert lost, "the control lost nothing: the power cut did not drop an acknowledged write"
    else:
        assert not lost, f"{len(lost)} completions heard committed are not in the log after the power cut"


def test_valkey_everysec_waitaof_acknowledges_writes_no_fsync_has_covered():
    """A fact about the server lessor's `fsync` mode relies on (see durability.py), measured with the
    fsync-recording shim: under everysec, WAITAOF 1 0 answers [1, 0] for writes that no fsync has
    covered yet. If this starts failing, the server waits for the fsync now, as Redis >= 8.0 does."""
    from lessor.simulations.chaos.powercut import PowerCutServer

    with PowerCutServer(appendfsync="everysec") as server:
        aof = server._incr_files()[0]
        with connect(server.url) as client:
            acks = []
            for i in range(50):
                client.set(f"k{i}", "x" * 100)
                size = os.path.getsize(aof)
                assert client.execute_command("WAITAOF", 1, 0, 2000) == [1, 0]
                acks.append((time.time() * 1000, size))    # clock: compared with the shim's wall-clock records
        records = [line.split(" ", 2) for line in open(server.fsync_log)]
        syncs = [(int(t), int(s)) for t, s, path in records if path.rstrip().endswith(".incr.aof")]
        ahead = [size for at, size in acks if max([s for t, s in syncs if t <= at], default=0) < size]
    assert ahead, "every WAITAOF waited for an fsync: Valkey fixed it; lessor's guard can go"


# --- c. a 5 s outage: real processes live through it ---------------------------------------------


def _spawn(argv: list[str], log_path: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("LESSOR_REDIS_URL", "LESSOR_DURABILITY")}
    env["COLUMNS"] = "400"   # one log record per line
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)


_LOST = re.compile(r"(worker \S+ reaper|worker \S+|lease keeper \S+|watcher|reaper): lost the server")
_BACK = re.compile(r"(worker \S+ reaper|worker \S+|lease keeper \S+|watcher|reaper): the server is back "
                   r"after an outage of ([\d.]+) s")


async def test_c_workers_and_the_reaper_live_through_a_5_s_outage_and_log_it_once(tmp_path):
    outage_s = 5.0
    with EmbeddedServer(appendfsync="always") as server:
        procs = {name: _spawn(argv, str(tmp_path / f"{name}.log")) for name, argv in {
            "reaper": lessor_command("reaper", "--redis-url", server.url, "--interval-ms", "100"),
            **{f"w{i}": worker_command(server.tcp_url, "tests.app:registry", worker_id=f"w{i}", queue=QUEUE,
                                       namespace=NS, concurrency=3, ttl_ms=10000, grace_ms=5000, drain_s=1)
               for i in range(2)},
        }.items()}
        try:
            def logged(name: str, text: str) -> bool:
                return text in (tmp_path / f"{name}.log").read_text(errors="replace")

            wait_for(lambda: all(logged(n, "reaper on " if n == "reaper" else f"worker {n} on") for n in procs),
                     "every process connected")
            async with open_backend(server.url) as backend:
                runs = [(await submit_run(backend, "sleepy", inputs=pack_value({"seconds": 1.5}), namespace=NS,
                                          queue=QUEUE, run_id=f"o{i}")).run_id for i in range(8)]
                await until(lambda: _any_leased(backend, runs), "a run to be leased")
            server.crash()                                       # kill -9
            await anyio.sleep(outage_s)                          # nothing answers on the socket or the port
            server.start()                                       # same socket and port, AOF reloaded
            async with open_backend(server.url) as backend:
                await until(lambda: all_succeeded(backend, runs), "every run to succeed after the outage")

            def recovered(name: str) -> bool:  # every component that logged a loss logged its recovery
                text = (tmp_path / f"{name}.log").read_text(errors="replace")
                return set(_LOST.findall(text)) <= {c for c, _ in _BACK.findall(text)}

            # A component in backoff notices the server is back at its next try (up to ~2 s later).
            wait_for(lambda: all(recovered(n) for n in procs), "every component to log its recovery")
            alive = {name: p.poll() for name, p in procs.items()}
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    assert all(code is None for code in alive.values()), alive   # nobody exited during or after the outage
    survived = {}
    for name in procs:
        text = (tmp_path / f"{name}.log").read_text(errors="replace")
        lost = Counter(_LOST.findall(text))
        back = {}
        for component, seconds in _BACK.findall(text):
            back.setdefault(component, []).append(float(seconds))
        assert lost, f"{name} never logged losing the server:\n{text}"
        for component, n in lost.items():
            assert n == 1, f"{name}: {component} logged the loss {n} times"
            assert len(back.get(component, [])) == 1, f"{name}: {component} did not log its recovery once"
        survived[name] = max(max(lengths) for lengths in back.values())
    # Each component measures from its own first failed call to its first good one (a worker whose
    # slots are all busy notices at its next report or heartbeat): lengths, not asserted.
    print(f"outage of {outage_s:g} s (kill -9 to restart); longest each process logged: {survived}")
    assert all(length > 0 for length in survived.values()), survived


async def _any_leased(backend: Backend, runs: list[str]) -> bool:
    for r in runs:
        if (await get_action(backend, NS, r, "a0")).phase.value == "running":
            return True
    return False


# --- d. demote and re-promote the same process -----------------------------------------------------

_NEW_EPOCH = "return run_id .. ':' .. replid"


class RunIdOnlyEpoch(Scripts):
    """The scripts with the old epoch rule: the server's run_id only (a test-only copy, as breakage.py)."""

    def __init__(self, redis_, clock) -> None:
        self.clock = clock
        self._scripts = {}
        for name in SCRIPT_NAMES:
            source = script_source(name, clock)
            assert _NEW_EPOCH in source, "server_epoch() changed: update this test's patch"
            self._scripts[name] = redis_.register_script(source.replace(_NEW_EPOCH, "return run_id"))


async def grant(backend: Backend, prefix: str, n: int) -> list[int]:
    """Submit n runs and lease them; their tokens."""
    for i in range(n):
        await submit_run(backend, "t", namespace=NS, queue=QUEUE, run_id=f"{prefix}{i}")
    leases = []
    while len(leases) < n:
        leases += await LeaseClient(backend, "w1", LeaseConfig()).acquire(NS, QUEUE, n - len(leases))
    return [lease.token for lease in leases]


@pytest.mark.parametrize("rule, jump_replicated", [
    pytest.param("run_id+replid", True, id="current-rule"),
    pytest.param("run_id only", True, id="old-rule-control"),
    # Once a bug: a fixed 2^30 jump from the surviving counter re-issued the tokens of a lost
    # history that had made its own jump (Valkey gives a primary a new master_replid when its
    # first replica attaches after a restart). The jump now depends on the epoch.
    pytest.param("run_id+replid", False, id="current-rule-lost-jump"),
])
async def test_d_after_a_rollback_and_a_re_promotion_of_the_same_process_no_token_repeats(rule, jump_replicated):
    """One partition. The primary P is restarted once (its counter jumps 2^30 ahead of the
    now*1024 floor, and stays ahead for ~17 minutes); its replica R syncs (Valkey gives P a new
    master_replid when the first replica attaches to a fresh backlog: one more epoch, one more
    jump on P's next grant, replicated to R or not: ``jump_replicated``). R is detached (promoted,
    as Sentinel would on a partition) with that state; P grants more (split brain); P is then made
    a replica of R (rolled back to R's older state) and promoted again: same process, same run_id,
    new master_replid. The next grant must be above every token granted before. With the old
    rule (run_id only) it repeats the first split-brain token: the control, so this can fail."""
    with ReplicatedPair() as pair:
        p, r = pair.primary, pair.replica

        async def backend_on(url: str):
            redis_ = make_redis(url)
            b = Backend(redis=redis_, url=url, partitions=await read_partitions(redis_, 1))
            if rule == "run_id only":
                b.scripts = RunIdOnlyEpoch(redis_, b.clock)
            return b

        b = await backend_on(p.url)
        before = await grant(b, "e0-", 1)
        await b.redis.aclose()
        kill9(p)
        restart(p)                                                 # a new run_id: the counter jumps
        run_after_restart = run_id(p)
        b = await backend_on(p.url)
        before += await grant(b, "e1-", 2)
        pair.wait_link_up()                                        # R attached: P's replid changed
        if jump_replicated:
            before += await grant(b, "e1b-", 1)
        pair.wait_synced()
        command(r, "REPLICAOF", "NO", "ONE")                       # R detached with this state
        wait_for(lambda: replication(r)["role"] == "master", "R to be a primary")
        split_brain = await grant(b, "e2-", 3)                     # only P has these
        replid_before = master_replid(p)
        await b.redis.aclose()
        pair.demote_and_repromote(p, to=r)                         # P rolled back to R's state, re-promoted
        assert run_id(p) == run_after_restart and master_replid(p) != replid_before
        b = await backend_on(p.url)
        assert await _exists(b, "e1-0") and not await _exists(b, "e2-0")   # the rollback happened
        (after,) = await grant(b, "e3-", 1)
        await b.redis.aclose()
    assert max(split_brain) > max(before)
    if rule == "run_id only":  # the control: the old rule repeats a token
        assert after in split_brain
    else:
        assert after > max(before + split_brain), f"token {after} was already granted: {split_brain}"


async def _exists(backend: Backend, run: str) -> bool:
    try:
        await get_run(backend, NS, run)
        return True
    except Exception:  # noqa: BLE001 - UnknownRun
        return False


# --- e. durability mode errors ----------------------------------------------------------------------


@pytest.mark.parametrize("mode, server_args, cause", [
    ("fsync", dict(appendfsync="no"), "appendfsync no"),
    ("replicas:1", dict(), "0 of 1 replicas confirmed it"),
])
async def test_e_a_durability_the_server_cannot_give_raises_not_durable_and_the_write_stays_applied(
        mode, server_args, cause):
    durability = Durability.parse(mode, timeout_ms=300)
    with EmbeddedServer(**server_args) as server:
        async with open_backend(server.url) as plain, open_backend(server.url, durability=durability) as strict:
            with pytest.raises(NotDurable, match=re.escape(cause)) as caught:
                await submit_run(strict, "t", namespace=NS, queue=QUEUE, run_id="d1")
            assert str(durability) in str(caught.value)
            assert (await get_run(plain, NS, "d1")).phase.value == "running"   # applied all the same
            with pytest.raises(NotDurable):                                     # repeated: still not durable
                await submit_run(strict, "t", namespace=NS, queue=QUEUE, run_id="d1")
            (lease,) = await LeaseClient(plain, "w1").acquire(NS, QUEUE, 1)
            client = LeaseClient(strict, "w1")
            with pytest.raises(NotDurable, match=re.escape(cause)):
                await client.complete(lease, b"\xc0")
            assert (await get_action(plain, NS, "d1", "a0")).phase.value == "succeeded"
            with pytest.raises(NotDurable):                                     # the same call again
                await client.complete(lease, b"\xc0")
            entries = [e.event for e in await EventLog(plain).read_all()]
    counts = Counter(type(e).__name__ for e in entries)
    assert counts["RunCreated"] == 1 and counts["ActionSucceeded"] == 1      # applied once, not twice
    assert counts["ReportRejected"] == 0                                      # the repeat was not refused


# --- the live scenario, end to end (small) ----------------------------------------------------------


def test_chaos_store_restart_scenario_reports_its_verdict_as_json():
    """`lessor chaos --scenario store-restart`, small: real reaper, three real workers, a kill -9 and a
    short outage. No acknowledged run lost, none left running, no process died, checkers pass.
    (Run twice is reported, not asserted here: see the scenario's 3 s outage for that figure.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("LESSOR_REDIS_URL", "LESSOR_DURABILITY")}
    proc = subprocess.run([sys.executable, "-m", "lessor", "chaos", "--scenario", "store-restart", "--durability",
                           "fsync", "--jobs", "8", "--job-s", "1", "--outage-s", "0.5", "--seed", "1", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    out = json.loads(proc.stdout)
    assert proc.returncode == (0 if out["ok"] else 1), proc.stderr
    assert out["submitted"] == 8 and out["durability"] == "fsync" and out["crash"] == "process"
    assert out["lost"] == 0 and out["left_running"] == 0 and out["actions_left_running"] == 0, out
    assert out["processes_died"] == {} and out["violations"] == [], out
    assert out["run_twice"] == len(out["run_twice_actions"]) and out["server_down_s"] > 0
    assert any(f.startswith("SIGKILL reaper") for f in out["faults"])
