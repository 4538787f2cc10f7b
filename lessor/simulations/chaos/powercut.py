"""A power cut for a real valkey-server: SIGKILL, then lose what its AOF had not fsynced.

``kill -9`` of the server process alone loses nothing it acknowledged: Valkey
``write()``s the AOF before it replies, and the kernel's page cache outlives
the process. What ``appendfsync everysec`` can lose is what a *machine* crash
takes with the page cache: the bytes written since the last fsync. A real
machine crash cannot be had here, so this emulates its worst allowed outcome:

- the server runs with a small LD_PRELOAD shim (C, built here with ``cc``)
  that wraps ``fsync``/``fdatasync`` and records, for each regular file, the
  size it had when an fsync of it began and returned successfully (everything
  below that size was written before the call, so it is on disk);
- ``cut()`` SIGKILLs the server and truncates each ``*.incr.aof`` to the last
  size recorded for it (or to its size before this server incarnation started,
  which an earlier cut left on disk). Valkey then loads the AOF with a
  truncated tail (``aof-load-truncated yes``, the default), as after a crash.

The shim changes nothing the server does; it only watches. AOF rewrites are
turned off (``--auto-aof-rewrite-percentage 0``) so the set of AOF files stays
the one the emulation knows. Test and chaos use only.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

from lessor.errors import ServerError
from lessor.server import EmbeddedServer, find_server_binary

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* One line per successful fsync/fdatasync of a regular file: "<unix ms> <size> <path>". */
static void record(int fd, long long size) {
  const char *log = getenv("LESSOR_FSYNC_LOG");
  char link[64], path[4096], line[4200];
  struct timespec ts;
  if (!log) return;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return;
  path[n] = 0;
  clock_gettime(CLOCK_REALTIME, &ts);
  int len = snprintf(line, sizeof line, "%lld %lld %s\n",
                     (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, size, path);
  int out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (out < 0) return;
  if (write(out, line, len) < 0) { /* best effort */ }
  close(out);
}

/* The size is read before the sync starts: every byte below it was written before the call. */
static int synced(int (*real)(int), int fd) {
  struct stat st;
  long long size = -1;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) size = (long long)st.st_size;
  int r = real(fd);
  if (r == 0 && size >= 0) record(fd, size);
  return r;
}

int fdatasync(int fd) {
  static int (*real)(int) = 0;
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  return synced(real, fd);
}

int fsync(int fd) {
  static int (*real)(int) = 0;
  if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  return synced(real, fd);
}
"""


def build_shim(directory: str | None = None) -> str:
    """Compile the fsync-recording shim (cached by source hash); its path. ServerError if no C compiler."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise ServerError("the power-cut emulation builds a small LD_PRELOAD shim and needs a C compiler "
                          "(`apt-get install gcc`); without one, use a plain kill -9 (--crash process)")
    directory = directory or os.path.join(tempfile.gettempdir(), "lessor-powercut")
    os.makedirs(directory, exist_ok=True)
    digest = hashlib.sha256(SHIM_SOURCE.encode()).hexdigest()[:12]
    target = os.path.join(directory, f"fsync-shim-{digest}.so")
    if os.path.exists(target):
        return target
    source = os.path.join(directory, f"fsync-shim-{digest}.c")
    with open(source, "w") as f:
        f.write(SHIM_SOURCE)
    partial = f"{target}.{os.getpid()}"
    proc = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", partial, source, "-ldl"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ServerError(f"could not build the power-cut shim with {compiler}: {proc.stderr.strip()}")
    os.replace(partial, target)
    return target


@contextlib.contextmanager
def _server_binary(path: str):
    old = os.environ.get("LESSOR_SERVER_BINARY")
    os.environ["LESSOR_SERVER_BINARY"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LESSOR_SERVER_BINARY", None)
        else:
            os.environ["LESSOR_SERVER_BINARY"] = old


@dataclass
class Cut:
    """What one power cut took: per AOF file, the bytes dropped (written but never fsynced)."""

    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_dropped(self) -> int:
        return sum(self.dropped.values())


class PowerCutServer:
    """An EmbeddedServer whose fsyncs are recorded, so ``cut()`` can drop the unsynced AOF tail.

    Use like the server it wraps: ``start()``, ``stop()``, ``url``, ``tcp_url``,
    ``port``, ``workdir``; ``crash()`` is a plain kill -9 (nothing acknowledged is
    lost), ``cut()`` a power cut (what was not fsynced is lost).
    """

    def __init__(self, appendfsync: str = "everysec", workdir: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.server = EmbeddedServer(appendfsync=appendfsync, workdir=workdir,
                                     extra_args=("--auto-aof-rewrite-percentage", "0", *extra_args))
        self.fsync_log = os.path.join(self.server.workdir, "fsync.log")
        self._wrapper = os.path.join(self.server.workdir, "valkey-server-watched")
        self._baseline: dict[str, int] = {}
        self.cuts: list[Cut] = []

    def __getattr__(self, name: str):  # url, tcp_url, port, workdir, pid, running, log_path, ...
        return getattr(self.server, name)

    @property
    def aof_dir(self) -> str:
        return os.path.join(self.server.workdir, "appendonlydir")

    def _write_wrapper(self) -> None:
        shim, real = build_shim(), find_server_binary()
        with open(self._wrapper, "w") as f:
            f.write(f"#!/bin/sh\nLD_PRELOAD='{shim}' LESSOR_FSYNC_LOG='{self.fsync_log}' exec '{real}' \"$@\"\n")
        os.chmod(self._wrapper, 0o700)

    def start(self, timeout_s: float = 10.0) -> "PowerCutServer":
        """Start (or start again after a cut: it loads the truncated AOF)."""
        if not os.path.exists(self._wrapper):
            self._write_wrapper()
        # What is on disk now survived any earlier cut: it is the floor of what a later cut keeps.
        self._baseline = {path: os.path.getsize(path) for path in self._incr_files()}
        with _server_binary(self._wrapper):
            self.server.start(timeout_s)
        return self

    def crash(self) -> None:
        """kill -9 of the process only: the page cache keeps every byte it wrote."""
        self.server.crash()

    def synced_sizes(self) -> dict[str, int]:
        """Per file: the largest size an fsync of it is known to have covered."""
        sizes: dict[str, int] = {}
        if os.path.exists(self.fsync_log):
            with open(self.fsync_log) as f:
                for line in f:
                    parts = line.rstrip("\n").split(" ", 2)
                    if len(parts) == 3 and parts[1].isdigit():
                        sizes[parts[2]] = max(sizes.get(parts[2], 0), int(parts[1]))
        return sizes

    def cut(self) -> Cut:
        """A power cut: SIGKILL, then truncate every incremental AOF to what an fsync covered."""
        self.server.crash()
        synced = self.synced_sizes()
        cut = Cut()
        for path in self._incr_files():
            keep = max(self._baseline.get(path, 0), synced.get(os.path.realpath(path), 0))
            size = os.path.getsize(path)
            if size > keep:
                with open(path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
                cut.dropped[os.path.basename(path)] = size - keep
        self.cuts.append(cut)
        return cut

    def restart(self, power_cut: bool = True) -> Cut | None:
        """Cut the power (or only kill -9 with ``power_cut=False``) and start again from the AOF."""
        cut = self.cut() if power_cut else self.crash()
        self.start()
        return cut

    def stop(self) -> None:
        self.server.stop()

    def _incr_files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.aof_dir, "*.incr.aof")))

    def __enter__(self) -> "PowerCutServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
