"""Shared pieces of the benchmarks: event loop choice, server stats, timing, tables."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import anyio

from lessor.leasing.urls import is_cluster


def loop_backend(use_uvloop: bool = True) -> tuple[str, dict]:
    """(backend, backend_options) for anyio.run: uvloop when installed and wanted."""
    if use_uvloop:
        try:
            import uvloop  # noqa: F401

            return "asyncio", {"use_uvloop": True}
        except ImportError:
            pass
    return "asyncio", {}


def run(main: Callable, *args: Any, use_uvloop: bool = True) -> Any:
    backend, options = loop_backend(use_uvloop)
    return anyio.run(main, *args, backend=backend, backend_options=options)


def uvloop_name(use_uvloop: bool) -> str:
    return "uvloop" if loop_backend(use_uvloop)[1] else "asyncio"


async def server_info(redis, *sections: str) -> dict:
    """INFO ``sections`` of the server, or on a cluster of every primary summed.

    Numbers are added up (CPU seconds, commandstats calls and usec), so a
    cluster reads as one server whose CPU time is spread over its primaries.
    """
    if not is_cluster(redis):
        return await redis.info(*sections)
    from redis.asyncio.cluster import RedisCluster

    per_node = await redis.info(*sections, target_nodes=RedisCluster.PRIMARIES)
    return functools.reduce(_add_info, per_node.values(), {})


def _add_info(total: dict, info: dict) -> dict:
    out = dict(total)
    for key, value in info.items():
        if isinstance(value, dict):
            out[key] = _add_info(out.get(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
        else:
            out.setdefault(key, value)
    return out


async def command_stats(redis) -> dict[str, dict]:
    """INFO commandstats as {command: {"calls": int, "usec": int, "usec_per_call": float}} (a cluster: summed)."""
    raw = await server_info(redis, "commandstats")
    out = {}
    for key, value in raw.items():
        name = key.removeprefix("cmdstat_")
        calls, usec = int(value["calls"]), int(value["usec"])
        out[name] = {"calls": calls, "usec": usec, "usec_per_call": usec / calls if calls else 0.0}
    return out


@dataclass(frozen=True)
class ServerSample:
    """The server's CPU time (user + sys, every thread) and its commandstats at one instant."""

    cpu_s: float
    commands: dict[str, dict]
    at_s: float


async def sample_server(redis) -> ServerSample:
    """One INFO call for both sections, so CPU time and command counts are read together (a cluster: summed)."""
    raw = await server_info(redis, "cpu", "commandstats")
    commands = {}
    for key, value in raw.items():
        if key.startswith("cmdstat_"):
            commands[key.removeprefix("cmdstat_")] = {
                "calls": int(value["calls"]), "usec": int(value["usec"]),
                "failed_calls": int(value.get("failed_calls", 0)),
                "rejected_calls": int(value.get("rejected_calls", 0))}
    cpu_s = float(raw["used_cpu_user"]) + float(raw["used_cpu_sys"])
    return ServerSample(cpu_s=cpu_s, commands=commands, at_s=time.perf_counter())  # clock: benchmark timing only


async def server_cpu_s(redis) -> float:
    """used_cpu_user + used_cpu_sys from INFO cpu: all the server did, not only script time (a cluster: summed)."""
    info = await server_info(redis, "cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def process_cpu_s(pid: int) -> float | None:
    """CPU time another process has used so far (all its live threads, ns precision); None without /proc.

    From /proc/PID/task/*/schedstat (time on a CPU, in ns): /proc/PID/stat's
    utime + stime count in 10 ms ticks, too coarse for a few µs per action.
    """
    total_ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total_ns += int(f.read().split()[0])
    except OSError:
        return None
    return total_ns / 1e9


def stat_delta(before: dict, after: dict, command: str) -> tuple[int, int]:
    """(calls, usec) spent by ``command`` between two command_stats snapshots."""
    a, b = after.get(command, {}), before.get(command, {})
    return a.get("calls", 0) - b.get("calls", 0), a.get("usec", 0) - b.get("usec", 0)


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """Measures wall time of a block: ``with stopwatch() as t: ...; t[0]`` is seconds."""
    box = [0.0]
    start = time.perf_counter()  # clock: benchmark timing only
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start  # clock: benchmark timing only


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of an already sorted list (nearest rank)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """A rich table of ``rows`` with (key, header) columns."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for _, header in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[_fmt(row.get(key)) for key, _ in columns])
    Console().print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


def dump_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=True))
