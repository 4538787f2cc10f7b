"""Nothing a client sends can poison the log: a fuzz of the public API and of every script's raw ARGV.

Invariant after every call: either it was refused with a named error (nothing
written), or the whole log still decodes and ``replay --verify`` finds the live
state equal to the fold of the log. ``make fuzz`` runs many more examples
(LESSOR_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import math
import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


from lessor.errors import LessorError
from lessor.leasing.eventlog import EventLog
from lessor.leasing.replay import verify
from lessor.leasing.scripts import SCRIPT_NAMES
from lessor.scheduler.api import Client
from lessor.scheduler.submit import Retries, submit_run

pytestmark = pytest.mark.anyio
EXAMPLES = int(os.environ.get("LESSOR_FUZZ_EXAMPLES", "60"))

# Values of every awkward kind: huge, negative, non-finite, wrong types, unicode, empty, control characters.
nasty = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**53 - 2, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e30, -1e30, math.inf, -math.inf, math.nan]),
    st.text(max_size=20), st.sampled_from(["", "10", "a/b", "x" * 300, "\x00\n", "ünïcödé", "-1", "1e3"]),
    st.binary(max_size=20), st.lists(st.integers(), max_size=2),
)
ARG = st.one_of(st.integers(-2**63, 2**63), st.text(max_size=30), st.binary(max_size=30),
                st.sampled_from(["", "0", "-1", "1e308", "inf", "nan", "9" * 40, "proj/development", "a0",
                                 "proj/development/r1/a0", "\xff", "x" * 70000]))


async def assert_log_is_sound(backend) -> None:
    await EventLog(backend).read_all()           # every entry decodes
    assert await verify(backend) == []           # and the fold equals the live state


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(task=st.one_of(st.just("t"), nasty), timeout_s=nasty, priority=nasty, queue=st.one_of(st.just("q"), nasty),
       user=nasty, system=nasty, backoff=nasty, key=st.one_of(st.none(), nasty))
async def test_submit_run_refuses_bad_values_or_leaves_a_sound_log(backend, task, timeout_s, priority, queue,
                                                                   user, system, backoff, key):
    client = Client(backend, None)
    try:
        retries = Retries(user=user, system=system, backoff_ms=backoff)
        await client.submit_run(task, {"x": 1}, queue=queue, retries=retries, timeout_s=timeout_s,
                                priority=priority, idempotency_key=key)
    except (ValueError, TypeError, LessorError) as exc:
        assert str(exc)  # a named error, never an empty one
    await assert_log_is_sound(backend)


# Scripts whose subject lives in the partition of a (namespace, id) in their ARGV: (index of namespace, of id).
# The script trusts KEYS[1] to be that partition (as every lessor client computes it), so the fuzz sends it there.
HOMED = {"submit": (0, 1), "schedule": (1, 2), "tick": (5, 6)}

# Scripts that also take a batch packed as one msgpack array: (index of its first value, values per item).
PACKED = {"submit/packed": (0, 14), "complete/packed": (1, 3)}


def templates(ref: str, token: int) -> dict[str, list]:
    """A valid ARGV per script, around one live lease (``ref``, ``token``) of worker w1 on queue q."""
    ns, run = "proj/development", ref.split("/")[2]
    return {
        "submit": [ns, "r2", "t", "q", b"\x01", "", 3, 0, 1000, 0, 0, "", 0, b""],
        # packed (as scheduler/submit.py sends it): the same 14 values as one msgpack array, then the count
        "submit/packed": [ns, "r2", "t", "q", b"\x01", "", 3, 0, 1000, 0, 0, "", 0, b"", 1],
        "submit_child": [ref, token, "w1", "c1", "t", b"", "q", 3, 0, 1000, 0, 0, ""],
        "acquire": [ns, "q", "w1", 1, 1000, 500],
        "renew": ["w1", 1000, ref, token],
        "complete": ["w1", ref, token, b"\x01"],
        "complete/packed": ["w1", ref, token, b"\x01", 1],   # as leasing/client.py sends it
        "fail": [ref, token, "w1", "boom", 1, 0.5],
        "release": [ref, token, "w1", "bye"],
        "reap": [100, 0],
        "abort": [ns, run, "stop"],
        "retire": [ns, 0, -1, 100, 0, -1],
        "schedule": ["create", ns, "s1", "t", "q", "*/5 * * * *", "UTC", "all", 0, b"", 0, 1],
        "tick": ["w1", "0", 1000, 500, "tick", ns, "s1", 1000, "rs1", 1, 2000],
    }


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(script=st.sampled_from([n for n in SCRIPT_NAMES if n != "append_events"] + list(PACKED)),
       replace=st.lists(st.one_of(st.none(), st.none(), st.none(), ARG), min_size=15, max_size=15),
       extra=st.lists(ARG, max_size=2))
async def test_raw_script_calls_refuse_bad_argv_or_leave_a_sound_log(backend, script, replace, extra):
    """A foreign client calling a script with a valid ARGV, some values replaced by anything:
    a LESSOR_BAD_ARG refusal (or a fenced refusal), or a sound log."""
    from lessor.leasing.client import LeaseClient
    from lessor.leasing.config import LeaseConfig

    await backend.redis.flushall()
    await backend.redis.hset("lessor:config", "partitions", backend.partitions)
    await submit_run(backend, "t", namespace="proj/development", queue="q", run_id="r1")
    (lease,) = await LeaseClient(backend, "w1", LeaseConfig(ttl_ms=1000, grace_ms=500)).acquire(
        "proj/development", "q", 1)
    # Drawn before any await (hypothesis must not stop a test inside the event loop):
    # each value of a valid ARGV is kept (None) or replaced by anything.
    args = [value if new is None else new
            for value, new in zip(templates(lease.ref, lease.token)[script], replace)] + extra
    name = script.split("/")[0]
    keys = backend.keys(lease.partition)
    if name in HOMED:  # a client sends these to the partition of the (namespace, id) they name
        ns_at, id_at = HOMED[name]
        home = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in (args[ns_at], args[id_at])]
        keys = backend.keys_for_run(*home)
    if script in PACKED:  # the values of a batch as one msgpack array, the rest as they are
        start, width = PACKED[script]
        args = [*args[:start], msgpack.packb(args[start:start + width], use_bin_type=False), *args[start + width:]]
    try:
        await backend.call(name, [keys.prefix], args)
    except LessorError as exc:
        assert str(exc)
    await assert_log_is_sound(backend)


@pytest.mark.parametrize("kwargs, message", [
    (dict(timeout_s=1e30), "timeout_s must be finite and within"),
    (dict(timeout_s="10"), "timeout_s must be a number of seconds"),
    (dict(timeout_s=math.nan), "timeout_s must be finite"),
    (dict(priority=10**30), "priority must be within"),
    (dict(priority=1.5), "priority must be an integer"),
])
async def test_the_values_that_poisoned_the_log_are_refused_by_name(backend, kwargs, message):
    client = Client(backend, None)
    with pytest.raises(ValueError, match=message):
        await client.submit_run("t", **kwargs)
    assert await EventLog(backend).read_all() == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(user=10**30), "Retries.user must be within 0..1000"),
    (dict(system=-1), "Retries.system must be within"),
    (dict(backoff_ms=1.5), "Retries.backoff_ms must be an integer"),
])
def test_bad_retry_budgets_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Retries(**kwargs)


async def test_a_raw_submit_with_a_poisonous_number_writes_nothing(backend):
    args = ["proj/development", "r1", "t", "q", "", "", 3, 0, 1000, 0, "inf", "", 0, ""]
    with pytest.raises(LessorError, match="LESSOR_BAD_ARG submit: timeout_ms must be an integer"):
        await backend.call("submit", [backend.keys(0).prefix], args)
    assert await EventLog(backend).read_all() == []


async def test_an_idempotency_key_reused_for_another_request_is_a_conflict(backend):
    from lessor.errors import IdempotencyConflict

    client = Client(backend, None)
    first = await client.submit_run("t", {"x": 1}, idempotency_key="order-42")
    again = await client.submit_run("t", {"x": 1}, idempotency_key="order-42")
    assert again.run_id == first.run_id and not again.created          # the same request: a repeat
    for task, inputs in (("t", {"x": 2}), ("other", {"x": 1})):
        with pytest.raises(IdempotencyConflict, match=f"order-42.*already names run proj/development/{first.run_id}"):
            await client.submit_run(task, inputs, idempotency_key="order-42")
    assert len(await EventLog(backend).read_all()) == 2                 # run_created + action_created, once
