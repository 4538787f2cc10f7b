"""The worker's side of leasing: acquire, batched renew, complete, fail, release.

Every call is one round trip (one script per partition touched; calls to
several partitions run concurrently). Every write carries the lease's fencing
token; the scripts refuse and record any token that is not current.

Where two holders can overlap, and why it is safe: after a reap the old worker
may still be running (paused, partitioned) while a new worker holds the next
lease. Both may *compute*; only the current token can *write*: every script
compares the token with the action's current one before applying anything, so
the old worker's completion, failure, child submission or renewal is refused and
recorded. Self-fencing (keeper.py) shortens the window in which the old worker
even computes; the token makes the window harmless.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import logging

import anyio
import msgpack

from lessor.core.ids import check_id, check_worker_namespace, split_action_ref
from lessor.core.limits import MAX_TRACEBACK, check_int, check_text
from lessor.errors import NotDurable, StoreUnavailable
from lessor.leasing.backend import Backend
from lessor.leasing.codes import Code, raise_for
from lessor.leasing.config import LeaseConfig

LEASE_FIELDS = 7  # values per lease in acquire.lua's reply


@dataclass(frozen=True)
class Lease:
    """One granted lease: an attempt of an action held by this worker under ``token``."""

    ref: str
    token: int
    attempt: int
    deadline_ms: int
    task: str
    inputs: bytes
    parent: str
    partition: int

    @property
    def action(self) -> str:
        return split_action_ref(self.ref)[2]


log = logging.getLogger("lessor.lease")


class LeaseClient:
    """Lease operations of one worker against one backend."""

    def __init__(self, backend: Backend, worker_id: str, config: LeaseConfig | None = None,
                 rng: random.Random | None = None) -> None:
        self.backend = backend
        self.worker_id = check_id("worker", worker_id)
        self.config = config or LeaseConfig()
        self._rng = rng or random.Random()
        self._next_partition = 0
        self._wake_keys: dict[tuple[str, str], dict[str, int]] = {}
        self._reads: dict[str, asyncio.Task] = {}          # a cluster's blocking reads in flight
        self._handing_back: set[asyncio.Task] = set()
        self._waiting = False
        # A blocking read for a wake-up ends after at most this long without a token, well inside
        # the client's 30 s socket timeout, and is sent again until the wait's own timeout (the
        # worker's safety poll, idle_poll_ms) is up. Tests shorten it.
        self.wake_read_s = 10.0
        self.waits_timed_out = 0   # waits that ended with no token (the caller then polls every partition)

    async def acquire(self, namespace: str, queue: str, n: int = 1) -> list[Lease]:
        """Lease up to ``n`` queued actions of ``queue``, visiting partitions in turn.

        ``namespace``: ``project/domain``, or ``*`` for every namespace of the queue,
        by weighted fair share (leasing/fairshare.py); running limits apply to both.
        Returns the leases granted (possibly none). One script call per
        partition visited; stops as soon as ``n`` are granted.
        """
        check_worker_namespace(namespace)
        check_id("queue", queue)
        check_int("n", n, 1, 10_000)
        leases: list[Lease] = []
        errors: list[Exception] = []
        for _ in range(self.backend.partitions):
            p = self._next_partition
            self._next_partition = (p + 1) % self.backend.partitions
            try:
                leases.extend(await self.acquire_from(p, namespace, queue, n - len(leases)))
            except StoreUnavailable as exc:  # one node down: keep what the others granted
                errors.append(exc)
                continue
            if len(leases) >= n:
                break
        if errors and not leases:
            raise errors[0]
        return leases

    async def acquire_from(self, partition: int, namespace: str, queue: str, n: int) -> list[Lease]:
        """Lease up to ``n`` actions of ``queue`` from one partition (one round trip).

        Under a durability mode, leases the server could not make durable are
        not started: they are given back (released) and NotDurable is raised, so
        no work runs on a grant a failover could forget, and the caller backs off.
        """
        keys = self.backend.keys(partition)
        args = [namespace, queue, self.worker_id, n, self.config.ttl_ms, self.config.grace_ms]
        try:
            reply = await self.backend.call("acquire", [keys.prefix], args)
        except NotDurable as exc:
            await self._give_back(self._parse_leases(partition, exc.reply or []), exc)
            raise  # the caller backs off, instead of leasing and giving back in a tight loop
        return self._parse_leases(partition, reply)

    def _parse_leases(self, partition: int, reply: list) -> list[Lease]:
        out = []
        for i in range(1, len(reply), LEASE_FIELDS):
            ref, token, attempt, deadline, task, inputs, parent = reply[i:i + LEASE_FIELDS]
            out.append(Lease(ref.decode(), int(token), int(attempt), int(deadline), task.decode(),
                             inputs, parent.decode(), partition))
        return out

    async def _give_back(self, leases: list[Lease], why: Exception) -> None:
        for lease in leases:
            try:
                await self.release(lease, "the grant was not confirmed durable")
            except Exception as exc:  # best effort: an unreleased grant expires and fails over
                log.warning("could not give back %s (%s); it will expire and fail over", lease.ref, exc)
        if leases:
            log.warning("did not start %d leases: %s", len(leases), why)

    async def any_queued(self, namespace: str, queue: str) -> bool:
        """Whether any partition holds queued work for ``queue`` (``namespace``'s, or any's with ``*``).

        An idle worker's safety poll, for a wake-up it never got (one handed to a
        worker that was paused or died while blocked): one EXISTS naming every
        partition's queue on one server, one per partition on a cluster (a command
        may not span slots), instead of an acquire per partition, which ran a
        script and its ZCARD in each (measured: 1.2 of an idle worker's 2.5
        commands/s). Raises what the read raised (a store fault).
        """
        keys = [self.backend.keys(p).fair(queue) if namespace == "*" else self.backend.keys(p).queue(namespace, queue)
                for p in range(self.backend.partitions)]
        if not self.backend.cluster:
            return await self.backend.redis.exists(*keys) > 0
        counts = await asyncio.gather(*(self.backend.redis.exists(key) for key in keys))
        return any(counts)

    async def wait_for_work(self, namespace: str, queue: str, timeout_s: float) -> int | None:
        """Block until work is enqueued on ``queue``; the partition it was enqueued in.

        Pops the wake-up token that every enqueue leaves on the queue's wake list
        (``wake_key``: at most one token per partition, so one idle worker wakes
        per token, and acquire.lua passes it on while work is left). None after
        about ``timeout_s`` with no token. On one server one BLPOP names every
        partition's list. On a cluster a blocking read may not span slots: one
        BLPOP per partition, each on its own connection (``_wait_each``).
        Raises what a read raised (a store fault: back off, then poll).
        """
        keys = self._wake_keys.get((namespace, queue))
        if keys is None:
            keys = {self.backend.keys(p).wake(namespace, queue): p for p in range(self.backend.partitions)}
            self._wake_keys[(namespace, queue)] = keys
        if self.backend.cluster:
            woken = await self._wait_each(keys, timeout_s)
        else:
            # Each BLPOP ends inside the client's socket timeout: a long wait is a few reads.
            woken, reads = None, max(1, math.ceil(timeout_s / self.wake_read_s))
            for _ in range(reads):
                reply = await self.backend.redis.blpop(list(keys), timeout=timeout_s / reads)
                if reply is not None:
                    woken = keys[reply[0].decode()]
                    break
        self.waits_timed_out += woken is None
        return woken

    async def _wait_each(self, keys: dict[str, int], timeout_s: float) -> int | None:
        """One BLPOP per partition, kept in flight from one wait to the next rather than
        cancelled when another partition wakes first: a read cancelled while its reply is on
        the way would lose the token. A token popped while nobody waits is handed back.

        A read that the server timed out (no token within its ``wake_read_s``) is sent again
        at once, even mid-wait: reads outlive waits, so one wait can outlast the reads it
        found in flight, and a partition without a read in flight would not wake anyone
        (before this, a worker woken by one partition left the others unwatched until its
        safety poll: submits stalled up to 10 s on a cluster)."""
        reads = self._reads
        read_s = min(timeout_s, self.wake_read_s)
        self._waiting = True
        try:
            with anyio.move_on_after(timeout_s):
                while True:
                    for key in keys:
                        if key not in reads:
                            read = asyncio.ensure_future(self.backend.redis.blpop([key], timeout=read_s))
                            read.add_done_callback(functools.partial(self._read_done, key))
                            reads[key] = read
                    woken, failed = [], None
                    for key, read in list(reads.items()):
                        if read.done():
                            del reads[key]
                            if read.cancelled():
                                continue
                            if read.exception() is not None:
                                failed = failed or read.exception()
                            elif read.result() is not None:
                                woken.append(key)
                    if woken:
                        for key in woken[1:]:   # more than one at once: the others go to other idle workers
                            await self.backend.redis.rpush(key, 1)
                        return keys[woken[0]]
                    if failed is not None:
                        raise failed
                    if all(key in reads for key in keys):   # else a read timed out: send it again first
                        await asyncio.wait(list(reads.values()), return_when=asyncio.FIRST_COMPLETED)
            return None
        finally:
            self._waiting = False

    def _read_done(self, key: str, read: asyncio.Task) -> None:
        if self._waiting or read.cancelled() or read.exception() is not None or read.result() is None:
            return  # a waiter takes it; or nothing to hand on (an error is seen by the next read)
        # A token popped while this worker is busy: hand it back for another idle worker.
        self._reads.pop(key, None)
        self._handing_back.add(asyncio.ensure_future(self.backend.redis.rpush(key, 1)))
        for done in [t for t in self._handing_back if t.done()]:
            self._handing_back.discard(done)
            if not done.cancelled():
                done.exception()   # best effort: a token lost here is found by the next safety poll

    async def stop_waiting(self) -> None:
        """Cancel the blocking reads still in flight (a cluster's per-partition reads); wait for them."""
        pending = [*self._reads.values(), *self._handing_back]
        self._reads.clear()
        self._handing_back.clear()
        for read in pending:
            read.cancel()   # redis-py drops a connection cancelled mid-read: no reply is left on it
        if pending:
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*pending, return_exceptions=True)

    async def renew(self, leases: Iterable[Lease], timeout_s: float | None = None) -> dict[str, Code]:
        """Renew every given lease: one script call per partition, all concurrently.

        Returns ref -> Code (OK, RESUMED, ABORTED, STALE, UNKNOWN); leases of a
        partition whose call failed, or did not answer within ``timeout_s``, are
        missing from it (no answer). Raises the error if no partition answered
        (the caller counts a failed renewal), and ValueError if two of the leases
        are of one action (answers are keyed by action; a worker holds at most one
        lease of an action at a time).

        ``timeout_s`` bounds each partition's call apart, so that one node that does
        not answer (a primary killed, not yet failed over) costs only its own leases
        their answer: cancelling the whole call from outside would drop the answers
        the other nodes gave, and their leases would self-fence for nothing (seen on
        a 3-primary cluster with one primary killed).
        """
        by_partition: dict[int, list[Lease]] = defaultdict(list)
        seen: set[str] = set()
        for lease in leases:
            if lease.ref in seen:
                raise ValueError(f"renew got two leases of {lease.ref}: renew the current one only")
            seen.add(lease.ref)
            by_partition[lease.partition].append(lease)
        codes: dict[str, Code] = {}
        errors: list[Exception] = []

        async def one(partition: int, group: list[Lease]) -> None:
            try:
                with anyio.fail_after(timeout_s):
                    codes.update(await self.renew_partition(partition, group))
            except Exception as exc:  # this partition's leases get no answer; the others still do
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for p, group in by_partition.items():
                tg.start_soon(one, p, group)
        if errors and not codes:
            raise errors[0]
        return codes

    async def renew_partition(self, partition: int, leases: list[Lease]) -> dict[str, Code]:
        """Renew leases of one partition in one script call; ref -> Code. Raises as Backend.call."""
        reply = await self.renew_reply(partition, leases)
        # A dict lookup, not Code(code): the enum's call was a fifth of the client's CPU per call.
        return {lease.ref: _CODES[code] for lease, code in zip(leases, reply[1:])}

    async def renew_reply(self, partition: int, leases: list[Lease]) -> list:
        """renew.lua's raw reply for ``leases`` (one partition): [server ms, one code per lease]."""
        # Renewals are soft state: never waited for (see leasing/durability.py).
        return await self.backend.call("renew", [self.backend.keys(partition).prefix],
                                       renew_args(self.worker_id, self.config.ttl_ms, leases), durable=False)

    async def complete(self, lease: Lease, result: bytes = b"") -> None:
        """Commit the attempt's result. Raises StaleToken (refused, recorded) or UnknownAction."""
        ((code, current),) = await self.complete_many(lease.partition, [(lease, result)])
        raise_for(code, lease.ref, lease.token, current)

    async def complete_many(self, partition: int, items: list[tuple[Lease, bytes]]) -> list[tuple[int, int]]:
        """Commit several results of one partition in one call; (code, current token) per item.

        Codes as ``complete``; the caller decides what a refusal means for each.
        """
        values: list = []
        for lease, result in items:
            values += (lease.ref, lease.token, result or b"")
        # Packed: one msgpack blob and a count instead of three arguments per item, which
        # redis-py would pack one by one in Python (complete.lua unpacks it).
        args = [self.worker_id, msgpack.packb(values, use_bin_type=False), len(items)]
        reply = await self.backend.call("complete", [self.backend.keys(partition).prefix], args)
        return [(int(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]

    async def fail(self, lease: Lease, error: str, retryable: bool = True, traceback: str | None = None) -> int:
        """Record a failed attempt, with the task's traceback if given (at most MAX_TRACEBACK
        bytes: clip it with ``limits.tail_text``); returns when it is ready to retry (server
        ms, 0 = failed for good)."""
        check_text("error", error)
        if traceback is not None:
            check_text("traceback", traceback, MAX_TRACEBACK)
        reply = await self._call("fail", lease, [error, int(retryable), self._rng.random(), traceback or ""])
        raise_for(int(reply[0]), lease.ref, lease.token, int(reply[1]))
        return int(reply[2])

    async def release(self, lease: Lease, reason: str = "worker shutting down") -> None:
        """Give the lease back now (requeued without spending budget, or aborted if aborting)."""
        check_text("reason", reason)
        code, current = await self._fenced("release", lease, [reason])
        raise_for(code, lease.ref, lease.token, current)

    async def _fenced(self, script: str, lease: Lease, extra: list) -> tuple[int, int]:
        reply = await self._call(script, lease, extra)
        return int(reply[0]), int(reply[1])

    async def _call(self, script: str, lease: Lease, extra: list) -> list:
        keys = [self.backend.keys(lease.partition).prefix]
        return await self.backend.call(script, keys, [lease.ref, lease.token, self.worker_id, *extra])


__all__ = ["Code", "Lease", "LeaseClient"]


_CODES = {int(code): code for code in Code}


def renew_args(worker_id: str, ttl_ms: int, leases: Iterable[Lease]) -> list:
    """renew.lua's ARGV for ``leases``: the worker, the ttl, and the (ref, token) pairs packed as one
    JSON array of strings (renew.lua's packed form).

    One argument instead of two per lease: redis-py packs and writes every
    argument apart in Python, which was two thirds of a renewal call's client
    CPU at 100 leases a call.
    """
    values: list[str] = []
    for lease in leases:
        values += (lease.ref, str(lease.token))
    packed = '","'.join(values)
    # Ids are letters, digits, _ . - and / (checked at submit): joined as they are, they make
    # valid JSON at a tenth of json.dumps' cost. Anything else is escaped by json.dumps.
    if "\\" in packed or packed.count('"') != 2 * (len(values) - 1):   # a quote of their own
        return [worker_id, ttl_ms, json.dumps(values)]
    return [worker_id, ttl_ms, f'["{packed}"]' if values else "[]"]
