#!/usr/bin/env python3
"""The diskpaxos daemon beside the sanlock daemon, through their sockets, on one lease file.

Both daemons run in the same run of this script and join the same lockspace
(diskpaxos as host 1, sanlock as host 2) on one lease file (1M alignment,
512 B sectors) holding 1000 resource leases; clients are real processes:
``diskpaxos.client`` under this interpreter, python3-sanlock under
/usr/bin/python3.  Measured, alternating the two daemons:

- acquire + release latency of one client (median, p99), as the client sees it;
- boot storm: the 1000 leases acquired then released (each in turn), by 1 and
  by 4 client processes started together (throughput, leases/s);
- release on exit: a client holding a lease is SIGKILLed; time until the
  leader's timestamp is 0 on disk (polled with O_DIRECT reads every ~1 ms);
- idle CPU with one lockspace joined: CPU seconds per second over 30 s, from
  /proc/PID/stat (all threads, exited ones too) and the sum of every thread's
  /proc/PID/task/TID/schedstat, for the daemon and for its helper children.

Prints a table; ``--json FILE`` keeps every number.  Needs root, sanlock and
python3-sanlock.  Run it on a quiet machine: it takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diskpaxos import direct  # noqa: E402
from diskpaxos.client import Client  # noqa: E402
from diskpaxos.format import LEADER_SIZE, LeaderRecord  # noqa: E402

MiB = 1024 * 1024
LS = "DMNB"
SYSTEM_PYTHON = "/usr/bin/python3"
DISKPAXOS = os.path.join(os.path.dirname(sys.executable), "diskpaxos")

# One client process.  Modes: latency ROUNDS | storm FIRST COUNT (waits for a line on stdin
# before it starts; prints its elapsed time) | hold INDEX (acquires, says "held", sleeps).
DISKPAXOS_CLIENT = r"""
import json, sys, time
from diskpaxos.client import Client
mode, run_dir, path = sys.argv[1], sys.argv[2], sys.argv[3]
args = [int(a) for a in sys.argv[4:]]
def res(i):
    return "%s:R%d:%s:%d" % ("DMNB", i, path, (i + 1) * 1048576)
c = Client(run_dir)
c.register()
if mode == "latency":
    acq, rel = [], []
    for _ in range(args[0]):
        t0 = time.perf_counter(); c.acquire([res(0)]); t1 = time.perf_counter()
        c.release([res(0)]); t2 = time.perf_counter()
        acq.append((t1 - t0) * 1000); rel.append((t2 - t1) * 1000)
    print(json.dumps({"acquire_ms": acq, "release_ms": rel}))
elif mode == "storm":
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    for i in range(args[0], args[0] + args[1]):
        c.acquire([res(i)]); c.release([res(i)])
    print(json.dumps({"elapsed": time.perf_counter() - t0}), flush=True)
elif mode == "hold":
    c.acquire([res(args[0])])
    print("held", flush=True)
    time.sleep(3600)
"""

SANLOCK_CLIENT = r"""
import json, sys, time, sanlock
mode, path = sys.argv[1], sys.argv[2]
args = [int(a) for a in sys.argv[3:]]
def res(i):
    return b"R%d" % i, [(path, (i + 1) * 1048576)]
fd = sanlock.register()
if mode == "latency":
    acq, rel = [], []
    name, disks = res(0)
    for _ in range(args[0]):
        t0 = time.perf_counter(); sanlock.acquire(b"DMNB", name, disks, slkfd=fd); t1 = time.perf_counter()
        sanlock.release(b"DMNB", name, disks, slkfd=fd); t2 = time.perf_counter()
        acq.append((t1 - t0) * 1000); rel.append((t2 - t1) * 1000)
    print(json.dumps({"acquire_ms": acq, "release_ms": rel}))
elif mode == "storm":
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    for i in range(args[0], args[0] + args[1]):
        name, disks = res(i)
        sanlock.acquire(b"DMNB", name, disks, slkfd=fd); sanlock.release(b"DMNB", name, disks, slkfd=fd)
    print(json.dumps({"elapsed": time.perf_counter() - t0}), flush=True)
elif mode == "hold":
    name, disks = res(args[0])
    sanlock.acquire(b"DMNB", name, disks, slkfd=fd)
    print("held", flush=True)
    time.sleep(3600)
"""


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


class Daemon:
    """What the measurements need from either daemon."""

    name: str
    pid: int
    helpers: list[int]

    def client(self, mode: str, *args: int) -> subprocess.Popen[str]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class DiskpaxosDaemon(Daemon):
    name = "diskpaxos"

    def __init__(self, work: Path, path: str, io_timeout: int) -> None:
        self.run_dir = work / "diskpaxos-run"
        self.path = path
        config = work / "diskpaxos.toml"
        config.write_text(f'io_timeout = {io_timeout}\nlog_level = "warning"\n')
        self.log = open(work / "diskpaxos.log", "wb")
        self.proc = subprocess.Popen([DISKPAXOS, "daemon", "--run-dir", str(self.run_dir), "--config", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while not (self.run_dir / "diskpaxos.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"diskpaxos daemon did not start: {(work / 'diskpaxos.log').read_text()}")
            time.sleep(0.02)
        self.helpers = children(self.pid)

    def join(self) -> None:
        with Client(str(self.run_dir)) as c:
            c.add_lockspace(f"{LS}:1:{self.path}:0")

    def client(self, mode: str, *args: int) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", DISKPAXOS_CLIENT, mode, str(self.run_dir), self.path,
                                 *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self) -> None:
        helpers = children(self.pid) or self.helpers
        kill_by_pid(self.pid)
        self.proc.wait(10)
        for pid in helpers:
            kill_by_pid(pid, 5)
        self.log.close()


class SanlockDaemon(Daemon):
    name = "sanlock"

    def __init__(self, work: Path, path: str, io_timeout: int) -> None:
        self.run_dir = work / "sanlock-run"
        self.run_dir.mkdir()
        self.path = path
        self.io_timeout = io_timeout
        self.env = dict(os.environ, SANLOCK_RUN_DIR=str(self.run_dir), SANLOCK_PRIVILEGED="0")
        # as in production: it forks into the background, logs warnings (here: nowhere), no wdmd
        subprocess.run(["sanlock", "daemon", "-w", "0", "-L", "-1", "-S", "-1", "-e", "bench-sanlock"],
                       env=self.env, check=True, timeout=30, stdin=subprocess.DEVNULL)
        pidfile = self.run_dir / "sanlock.pid"
        deadline = time.monotonic() + 30
        while not ((self.run_dir / "sanlock.sock").exists() and pidfile.exists() and pidfile.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError("sanlock daemon did not start")
            time.sleep(0.02)
        self.pid = int(pidfile.read_text())
        self.helpers = children(self.pid)

    def join(self) -> None:
        subprocess.run(["sanlock", "client", "add_lockspace", "-s", f"{LS}:2:{self.path}:0", "-o",
                        str(self.io_timeout)], env=self.env, check=True, capture_output=True, timeout=600)

    def client(self, mode: str, *args: int) -> subprocess.Popen[str]:
        return subprocess.Popen([SYSTEM_PYTHON, "-c", SANLOCK_CLIENT, mode, self.path, *map(str, args)],
                                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self) -> None:
        helpers = children(self.pid) or self.helpers
        subprocess.run(["sanlock", "client", "rem_lockspace", "-s", f"{LS}:2:{self.path}:0"], env=self.env,
                       capture_output=True, timeout=120)
        kill_by_pid(self.pid)
        for pid in helpers:
            kill_by_pid(pid, 5)


# --- measurements ----------------------------------------------------------------------


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"median": statistics.median(s), "p99": s[min(len(s) - 1, max(0, int(len(s) * 0.99 + 0.5) - 1))],
            "max": s[-1], "n": len(s)}


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed ({proc.returncode}): {out}")
    return json.loads(out.strip().splitlines()[-1])


def expect_line(proc: subprocess.Popen[str], want: str, timeout: float = 120) -> None:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else "(timeout)"
    if line != want:
        proc.kill()
        raise RuntimeError(f"client said {line!r}, expected {want!r}")


def latency(daemon: Daemon, rounds: int) -> dict[str, list[float]]:
    return finish(daemon.client("latency", rounds))


def storm(daemon: Daemon, leases: int, procs: int) -> float:
    """Leases per second: ``procs`` clients take disjoint shares, started together."""
    share = leases // procs
    clients = [daemon.client("storm", k * share, share) for k in range(procs)]
    for c in clients:
        expect_line(c, "ready")
    t0 = time.perf_counter()
    for c in clients:
        assert c.stdin is not None
        c.stdin.write("go\n")
        c.stdin.flush()
    for c in clients:
        finish(c)
    return share * procs / (time.perf_counter() - t0)


class LeaderReader:
    """The leader record of a lease, read past the page cache."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        self.buf = mmap.mmap(-1, 4096)

    def timestamp(self, offset: int) -> int:
        n = os.preadv(self.fd, [self.buf], offset)
        assert n == 4096, n
        return LeaderRecord.from_bytes(bytes(self.buf[:LEADER_SIZE])).timestamp

    def close(self) -> None:
        os.close(self.fd)
        self.buf.close()


def release_on_exit(daemon: Daemon, reader: LeaderReader, index: int, timeout: float = 60) -> float:
    """Seconds from SIGKILL of a holder to a zero leader timestamp on disk."""
    offset = (index + 1) * MiB
    holder = daemon.client("hold", index)
    try:
        expect_line(holder, "held")
        if reader.timestamp(offset) == 0:
            raise RuntimeError(f"{daemon.name}: the lease at {offset} is not held after the client said so")
        t0 = time.perf_counter()
        holder.kill()
        while reader.timestamp(offset) != 0:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{daemon.name}: leader still held {timeout} s after its holder died")
            time.sleep(0.001)
        return time.perf_counter() - t0
    finally:
        holder.kill()
        holder.wait(10)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_sample(pid: int) -> dict[str, Any]:
    """utime+stime of the whole process (exited threads included) and each live thread's schedstat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    stat_s = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            threads[tid] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except OSError:
            pass
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return {"stat_s": stat_s, "threads": threads, "rss": rss}


def idle_cpu(daemons: list[Daemon], seconds: float) -> dict[str, dict[str, Any]]:
    """CPU s/s of every daemon (and its helpers) over the same idle window."""
    watched = {d.name: [d.pid, *(children(d.pid) or d.helpers)] for d in daemons}
    before = {name: [cpu_sample(p) for p in pids] for name, pids in watched.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = {name: [cpu_sample(p) for p in pids] for name, pids in watched.items()}
    elapsed = time.monotonic() - t0
    out = {}
    for name in watched:
        rows = []
        for b, a in zip(before[name], after[name]):
            sched = sum(a["threads"][t] - b["threads"].get(t, 0.0) for t in a["threads"])
            rows.append({"stat": (a["stat_s"] - b["stat_s"]) / elapsed, "schedstat": sched / elapsed,
                         "threads": len(a["threads"]), "threads_gone": len(set(b["threads"]) - set(a["threads"])),
                         "rss_mib": a["rss"] / MiB})
        daemon, helpers = rows[0], rows[1:]
        out[name] = {"daemon": daemon, "helpers": helpers,
                     "total_stat": daemon["stat"] + sum(h["stat"] for h in helpers),
                     "total_schedstat": daemon["schedstat"] + sum(h["schedstat"] for h in helpers),
                     "seconds": elapsed}
    return out


def prepare(path: str, resources: int, io_timeout: int) -> None:
    with open(path, "wb") as f:
        f.truncate((resources + 2) * MiB)
    direct.init_lockspace(path, 0, LS, io_timeout=io_timeout, align_size=MiB, force=True)
    for i in range(resources):
        direct.init_resource(path, (i + 1) * MiB, LS, f"R{i}", align_size=MiB, force=True)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=300, help="acquire+release rounds for the latency")
    ap.add_argument("--leases", type=int, default=1000, help="leases in the boot storm")
    ap.add_argument("--kills", type=int, default=15, help="release-on-exit repetitions per daemon")
    ap.add_argument("--idle", type=float, default=30, help="seconds of the idle CPU window")
    ap.add_argument("--io-timeout", type=int, default=10, help="both daemons' io_timeout (sanlock's default: 10)")
    ap.add_argument("--dir", default="/var/tmp", help="where the lease file lives (a filesystem with O_DIRECT)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (both daemons, O_DIRECT on the lease file)")

    results: dict[str, Any] = {
        "machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                    "loadavg_start": loadavg()},
        "io_timeout": args.io_timeout, "leases": args.leases, "storage": "file, 512 B sectors, 1M align"}
    work = Path(tempfile.mkdtemp(prefix="bench-daemons-", dir=args.dir))
    path = str(work / "leases.img")
    daemons: list[Daemon] = []
    reader = None
    try:
        t0 = time.monotonic()
        prepare(path, args.leases, args.io_timeout)
        results["init_s"] = time.monotonic() - t0
        ours = DiskpaxosDaemon(work, path, args.io_timeout)
        daemons.append(ours)
        theirs = SanlockDaemon(work, path, args.io_timeout)
        daemons.append(theirs)
        for d in daemons:
            t0 = time.monotonic()
            d.join()
            results.setdefault("join_s", {})[d.name] = time.monotonic() - t0
        print(f"joined: {results['join_s']}", file=sys.stderr)

        lat = {d.name: latency(d, args.rounds) for d in daemons}
        results["latency"] = {name: {"acquire": stats(v["acquire_ms"]), "release": stats(v["release_ms"])}
                              for name, v in lat.items()}
        print("latency done", file=sys.stderr)
        results["storm"] = {}
        for procs in (1, 4):
            for d in daemons:
                results["storm"].setdefault(d.name, {})[str(procs)] = storm(d, args.leases, procs)
        print("storm done", file=sys.stderr)
        reader = LeaderReader(path)
        delays: dict[str, list[float]] = {d.name: [] for d in daemons}
        for k in range(args.kills):
            for d in daemons:
                delays[d.name].append(release_on_exit(d, reader, k % args.leases) * 1000)
        results["release_on_exit_ms"] = {name: stats(v) for name, v in delays.items()}
        print("release on exit done", file=sys.stderr)
        time.sleep(2)  # let the last releases settle
        results["idle_cpu"] = idle_cpu(daemons, args.idle)
        results["machine"]["loadavg_end"] = loadavg()
    finally:
        if reader is not None:
            reader.close()
        for d in reversed(daemons):
            try:
                d.stop()
            except Exception as e:  # keep stopping the others
                print(f"stopping {d.name}: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)

    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict[str, Any]) -> None:
    rows: list[tuple[str, float, float]] = []
    for op in ("acquire", "release"):
        for q in ("median", "p99"):
            rows.append((f"{op} {q} (ms)", r["latency"]["diskpaxos"][op][q], r["latency"]["sanlock"][op][q]))
    for procs in ("1", "4"):
        rows.append((f"boot storm {r['leases']}, {procs} client(s) (leases/s)", r["storm"]["diskpaxos"][procs],
                     r["storm"]["sanlock"][procs]))
    for q in ("median", "p99"):
        rows.append((f"release on SIGKILL {q} (ms)", r["release_on_exit_ms"]["diskpaxos"][q],
                     r["release_on_exit_ms"]["sanlock"][q]))
    cpu = r["idle_cpu"]
    rows.append(("idle CPU, daemon, /proc stat (ms/s)", cpu["diskpaxos"]["daemon"]["stat"] * 1000,
                 cpu["sanlock"]["daemon"]["stat"] * 1000))
    rows.append(("idle CPU, daemon, schedstat (ms/s)", cpu["diskpaxos"]["daemon"]["schedstat"] * 1000,
                 cpu["sanlock"]["daemon"]["schedstat"] * 1000))
    rows.append(("idle CPU, daemon + helpers, schedstat (ms/s)", cpu["diskpaxos"]["total_schedstat"] * 1000,
                 cpu["sanlock"]["total_schedstat"] * 1000))
    rows.append(("daemon threads", cpu["diskpaxos"]["daemon"]["threads"], cpu["sanlock"]["daemon"]["threads"]))
    rows.append(("daemon RSS (MiB)", cpu["diskpaxos"]["daemon"]["rss_mib"], cpu["sanlock"]["daemon"]["rss_mib"]))
    width = max(len(name) for name, _, _ in rows)
    print(f"io_timeout {r['io_timeout']}, {r['storage']}, {r['machine']['cpus']} CPUs, "
          f"load {r['machine']['loadavg_start']} -> {r['machine'].get('loadavg_end')}")
    print(f"{'':<{width}} {'diskpaxos':>10} {'sanlock':>10} {'ratio':>7}")
    for name, ours, theirs in rows:
        ratio = f"{ours / theirs:7.2f}" if theirs else "      -"
        print(f"{name:<{width}} {ours:>10.3f} {theirs:>10.3f} {ratio}")


if __name__ == "__main__":
    sys.exit(main())
