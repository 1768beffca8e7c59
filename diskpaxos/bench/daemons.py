"""The diskpaxos daemon and the real sanlock daemon as processes, and client processes for each.

``bench compare`` drives both lock managers the way their users do: through
their sockets, from separate client processes (``diskpaxos.client`` under
this interpreter; python3-sanlock under /usr/bin/python3, the only one that
imports it).  Every process started here is stopped by its pid.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .. import errors
from ..client import Client

log = logging.getLogger(__name__)

SYSTEM_PYTHON = "/usr/bin/python3"

# One client process: a prelude (per lock manager) defines acquire(i) and release(i) of resource
# "R<i>" at (i + 1) * align; the body runs a mode.  argv: mode lockspace path align [run_dir] args...
# Modes: latency ROUNDS (prints acquire/release ms) | storm FIRST COUNT (waits for a line on stdin,
# prints its elapsed time) | hold INDEX (acquires, says "held", sleeps).
DISKPAXOS_PRELUDE = r"""
import json, sys, time
from diskpaxos.client import Client
mode, ls, path, align, run_dir = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
args = [int(a) for a in sys.argv[6:]]
def res(i):
    return ["%s:R%d:%s:%d" % (ls, i, path, (i + 1) * align)]
c = Client(run_dir)
c.register()
def acquire(i):
    c.acquire(res(i))
def release(i):
    c.release(res(i))
"""

SANLOCK_PRELUDE = r"""
import json, sys, time, sanlock
mode, ls, path, align = sys.argv[1], sys.argv[2].encode(), sys.argv[3], int(sys.argv[4])
args = [int(a) for a in sys.argv[5:]]
fd = sanlock.register()
def acquire(i):
    sanlock.acquire(ls, b"R%d" % i, [(path, (i + 1) * align)], slkfd=fd)
def release(i):
    sanlock.release(ls, b"R%d" % i, [(path, (i + 1) * align)], slkfd=fd)
"""

CLIENT_BODY = r"""
if mode == "latency":
    acq, rel = [], []
    for _ in range(args[0]):
        t0 = time.perf_counter(); acquire(0); t1 = time.perf_counter()
        release(0); t2 = time.perf_counter()
        acq.append((t1 - t0) * 1000); rel.append((t2 - t1) * 1000)
    print(json.dumps({"acquire_ms": acq, "release_ms": rel}))
elif mode == "storm":
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    for i in range(args[0], args[0] + args[1]):
        acquire(i); release(i)
    print(json.dumps({"elapsed": time.perf_counter() - t0}), flush=True)
elif mode == "hold":
    acquire(args[0])
    print("held", flush=True)
    time.sleep(3600)
"""


class Unavailable(errors.DiskpaxosError):
    """A component the comparison needs is missing (sanlock, python3-sanlock, strace, root)."""

    template = "bench compare needs {reason}"


# --- processes -----------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def kill_by_pid(pid: int, timeout: float = 15) -> None:
    """SIGTERM, wait, then SIGKILL: one process we started, by its pid."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return


def threads(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def schedstat_ns(pid: int, tid: int) -> int:
    """CPU time a thread has run (ns, /proc schedstat: no tracing needed); 0 once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, Any]:
    """A client's last line of JSON, once it exits 0."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed ({proc.returncode}): {out} {err}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def expect_line(proc: subprocess.Popen[str], want: str, timeout: float = 120) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else "(timeout)"
    if line != want:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"client said {line!r}, expected {want!r}")


# --- the two daemons -----------------------------------------------------------------


class Daemon:
    """What the measurements need from either daemon: join, clients, its lockspace threads, stop."""

    name = ""
    pid = 0
    host_id = 0

    def __init__(self, work: Path, lockspace: str, path: str, align: int, io_timeout: int) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.lockspace = lockspace
        self.path = path
        self.align = align
        self.io_timeout = io_timeout
        self.lockspace_threads: set[int] = set()

    @property
    def ls_string(self) -> str:
        return f"{self.lockspace}:{self.host_id}:{self.path}:0"

    def join(self) -> float:
        """add_lockspace through the daemon; its wall time in ms.  Remembers the threads it started."""
        before = threads(self.pid)
        t0 = time.perf_counter()
        self._add_lockspace()
        elapsed = (time.perf_counter() - t0) * 1000
        self.lockspace_threads = threads(self.pid) - before
        return elapsed

    def lockspace_cpu_ns(self) -> int:
        """CPU of the threads add_lockspace started (renewal, and I/O workers)."""
        return sum(schedstat_ns(self.pid, t) for t in self.lockspace_threads)

    def _add_lockspace(self) -> None:
        raise NotImplementedError

    def renewal_ms(self) -> list[tuple[int, float]]:
        """(timestamp, read + write ms) of the renewals the daemon remembers."""
        raise NotImplementedError

    def client(self, mode: str, *args: int) -> subprocess.Popen[str]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class DiskpaxosDaemon(Daemon):
    name = "diskpaxos"
    host_id = 1

    def __init__(self, work: Path, lockspace: str, path: str, align: int, io_timeout: int) -> None:
        super().__init__(work, lockspace, path, align, io_timeout)
        self.helpers: list[int] = []
        self.run_dir = work / "diskpaxos-run"
        config = work / "diskpaxos.toml"
        config.write_text(f'io_timeout = {io_timeout}\nlog_level = "warning"\n')
        exe = os.path.join(os.path.dirname(sys.executable), "diskpaxos")
        argv = [exe] if os.path.exists(exe) else [sys.executable, "-m", "diskpaxos.cli"]
        self.log = open(work / "diskpaxos.log", "wb")
        self.proc = subprocess.Popen([*argv, "daemon", "--run-dir", str(self.run_dir), "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while not (self.run_dir / "diskpaxos.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                said = (work / "diskpaxos.log").read_text().strip().splitlines() or ["(no output)"]
                raise RuntimeError(f"diskpaxos daemon did not start: {said[-1]}")
            time.sleep(0.02)
        self.helpers = children(self.pid)

    def _add_lockspace(self) -> None:
        with Client(str(self.run_dir)) as c:
            c.add_lockspace(self.ls_string, self.io_timeout)

    def renewal_ms(self) -> list[tuple[int, float]]:
        with Client(str(self.run_dir)) as c:
            return [(int(r["timestamp"]), float(r["read_ms"]) + float(r["write_ms"]))
                    for r in c.renewal(self.lockspace) if r["ok"]]

    def client(self, mode: str, *args: int) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", DISKPAXOS_PRELUDE + CLIENT_BODY, mode, self.lockspace, self.path,
                                 str(self.align), str(self.run_dir), *map(str, args)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        helpers = children(self.pid) or self.helpers
        kill_by_pid(self.pid)
        self.proc.wait(10)
        for pid in helpers:
            kill_by_pid(pid, 5)
        self.log.close()


class SanlockDaemon(Daemon):
    """sanlock as in production: forked into the background, logging only to nowhere, no wdmd."""

    name = "sanlock"
    host_id = 2

    def __init__(self, work: Path, lockspace: str, path: str, align: int, io_timeout: int) -> None:
        super().__init__(work, lockspace, path, align, io_timeout)
        self.run_dir = work / "sanlock-run"
        self.run_dir.mkdir()
        self.env = dict(os.environ, SANLOCK_RUN_DIR=str(self.run_dir), SANLOCK_PRIVILEGED="0")
        subprocess.run(["sanlock", "daemon", "-w", "0", "-L", "-1", "-S", "-1", "-e", "bench-sanlock"],
                       env=self.env, check=True, timeout=30, stdin=subprocess.DEVNULL, capture_output=True)
        pidfile = self.run_dir / "sanlock.pid"
        deadline = time.monotonic() + 30
        while not ((self.run_dir / "sanlock.sock").exists() and pidfile.exists() and pidfile.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError("sanlock daemon did not start")
            time.sleep(0.02)
        self.pid = int(pidfile.read_text())
        self.helpers = children(self.pid)
        self.joined = False

    def _sanlock(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sanlock", "client", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def _add_lockspace(self) -> None:
        done = self._sanlock("add_lockspace", "-s", self.ls_string, "-o", str(self.io_timeout), timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"sanlock add_lockspace failed: {done.stdout} {done.stderr}")
        self.joined = True

    def renewal_ms(self) -> list[tuple[int, float]]:
        out = self._sanlock("renewal", "-s", self.lockspace).stdout
        return [(int(t), float(r) + float(w))
                for t, r, w in re.findall(r"timestamp=(\d+) read_ms=(\d+) write_ms=(\d+)", out)]

    def lockspace_tid(self) -> int | None:
        """The lockspace thread: the busiest of the threads add_lockspace started."""
        if not self.lockspace_threads:
            return None
        return max(self.lockspace_threads, key=lambda t: schedstat_ns(self.pid, t))

    def client(self, mode: str, *args: int) -> subprocess.Popen[str]:
        return subprocess.Popen([SYSTEM_PYTHON, "-c", SANLOCK_PRELUDE + CLIENT_BODY, mode, self.lockspace, self.path,
                                 str(self.align), *map(str, args)], env=self.env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        helpers = children(self.pid) or self.helpers
        if self.joined:
            self._sanlock("rem_lockspace", "-s", self.ls_string)
        kill_by_pid(self.pid)
        for pid in helpers:
            kill_by_pid(pid, 5)


def check_available() -> None:
    """Raise Unavailable unless root, sanlock, python3-sanlock and strace are all here."""
    if os.geteuid() != 0:
        raise Unavailable(reason="root (loop devices, both daemons)")
    for tool in ("sanlock", "strace", "losetup"):
        if shutil.which(tool) is None:
            raise Unavailable(reason=f"{tool} (make sanlock installs it)")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sanlock"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        raise Unavailable(reason=f"python3-sanlock importable by {SYSTEM_PYTHON} (apt-get install python3-sanlock)")


def strace_renewals(pid: int, tid: int, seconds: float) -> list[float]:
    """Wall ms of each renewal of sanlock's lockspace thread ``tid``, from ``strace -T`` of its aio calls.

    A renewal is io_submit (read), io_getevents, io_submit (write),
    io_getevents: from the first call's start to the end of the last.
    strace slows the traced calls, so this flatters neither side.
    """
    trace = subprocess.run(["timeout", str(max(1, int(seconds))), "strace", "-T", "-ttt", "-p", str(tid),
                            "-e", "trace=io_submit,io_getevents"], capture_output=True, text=True).stderr
    calls = re.findall(r"^(\d+\.\d+) (io_submit|io_getevents)\(.*<(\d+\.\d+)>$", trace, re.M)
    wall = []
    i = 0
    while i + 3 < len(calls):
        if [c[1] for c in calls[i:i + 4]] == ["io_submit", "io_getevents", "io_submit", "io_getevents"]:
            wall.append((float(calls[i + 3][0]) + float(calls[i + 3][2]) - float(calls[i][0])) * 1000)
            i += 4
        else:
            i += 1
    return wall
