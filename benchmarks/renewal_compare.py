#!/usr/bin/env python3
"""Renewal cost side by side: the raw I/O floor, diskpaxos, and a sanlock daemon.

For each kind of storage (a file, a 512 B loop device, a 4K loop device, a
file on tmpfs) this formats a lockspace (io_timeout 1) and measures, in the
same run:

- floor: the renewal's I/O and nothing else: one O_DIRECT read of the whole
  lockspace area and one O_DIRECT|O_SYNC sector write, straight syscalls;
- diskpaxos: ``delta_lease.renew`` (read, bulk parse + verify, checks, write),
  wall and CPU time of the calling thread per renewal;
- sanlock: a real daemon holding another host id of the same lockspace; CPU per
  renewal from its lockspace thread's schedstat (ns, no tracing), wall per
  renewal from ``strace -T`` of that thread's aio calls (first io_submit to the
  end of the last io_getevents; strace adds its own overhead, so this
  flatters neither side), and its own renewal history (whole milliseconds).

Prints a table of medians and ratios and writes JSON (``--json FILE``).
Needs root (loop devices), sanlock and strace.  Not a test: speed goals are
reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import mmap
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import attach_loop  # noqa: E402

from diskpaxos import delta_lease, direct  # noqa: E402
from diskpaxos.format import Geometry  # noqa: E402
from diskpaxos.io_direct import DirectStorage  # noqa: E402

MiB = 1024 * 1024
LS = "BENCH"


def floor(path: str, geometry: Geometry, rounds: int) -> tuple[list[float], list[float]]:
    """Wall and CPU ms of the bare renewal I/O: one area read, one sector write."""
    fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
    try:
        area = mmap.mmap(-1, geometry.align_size)
        sector = mmap.mmap(-1, geometry.sector_size)
        os.preadv(fd, [area], 0)
        sector[:] = area[: geometry.sector_size]
        wall, cpu = [], []
        for _ in range(rounds):
            w0, c0 = time.perf_counter(), time.thread_time()
            os.preadv(fd, [area], 0)
            os.pwritev(fd, [sector], 0)
            cpu.append((time.thread_time() - c0) * 1000)
            wall.append((time.perf_counter() - w0) * 1000)
        return wall, cpu
    finally:
        os.close(fd)


def ours(path: str, rounds: int) -> tuple[list[float], list[float]]:
    """Wall and CPU ms of diskpaxos renewals (host_id 1), called back to back."""
    with DirectStorage(path, io_timeout=1) as storage:
        kind, geometry, _ = direct.probe_geometry(storage, 0)
        lease = delta_lease.acquire(storage, geometry, 0, LS, 1, "bench-diskpaxos", 1)
        for _ in range(5):
            delta_lease.renew(storage, lease)
        wall, cpu = [], []
        for _ in range(rounds):
            w0, c0 = time.perf_counter(), time.thread_time()
            result = delta_lease.renew(storage, lease)
            cpu.append((time.thread_time() - c0) * 1000)
            wall.append((time.perf_counter() - w0) * 1000)
            assert result.ok, result.error
        delta_lease.release(storage, lease)
        return wall, cpu


def _schedstat_ns(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])


def sanlock_side(path: str, seconds: float) -> dict[str, list[float]]:
    """CPU ms per renewal (schedstat), wall ms per renewal (strace), history ms."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-sanlock-"))
    env = dict(os.environ, SANLOCK_RUN_DIR=str(run_dir), SANLOCK_PRIVILEGED="0")
    log = open(run_dir / "log", "wb")
    daemon = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-e", "bench-sanlock"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        while not (run_dir / "sanlock.sock").exists():
            time.sleep(0.02)
        before = set(os.listdir(f"/proc/{daemon.pid}/task"))
        subprocess.run(["sanlock", "client", "add_lockspace", "-s", f"{LS}:2:{path}:0", "-o", "1"], env=env,
                       check=True, capture_output=True)
        new = sorted(set(os.listdir(f"/proc/{daemon.pid}/task")) - before)
        # the lockspace thread is the one doing the renewal I/O: the busiest new thread
        time.sleep(3)
        tid = max((int(t) for t in new), key=lambda t: _schedstat_ns(daemon.pid, t))

        def history() -> list[tuple[int, int, int]]:
            out = subprocess.run(["sanlock", "client", "renewal", "-s", LS], env=env, capture_output=True,
                                 text=True).stdout
            return [tuple(map(int, m)) for m in re.findall(r"timestamp=(\d+) read_ms=(\d+) write_ms=(\d+)", out)]

        h0 = history()
        c0 = _schedstat_ns(daemon.pid, tid)
        time.sleep(seconds)
        c1 = _schedstat_ns(daemon.pid, tid)
        h1 = history()
        renewals = len({h[0] for h in h1} - {h[0] for h in h0})
        cpu_per = (c1 - c0) / 1e6 / max(1, renewals)
        hist_ms = [float(h[1] + h[2]) for h in h1 if h not in h0]

        trace = subprocess.run(["timeout", str(int(seconds / 2) + 1), "strace", "-T", "-ttt", "-p", str(tid),
                                "-e", "trace=io_submit,io_getevents"], capture_output=True, text=True).stderr
        calls = re.findall(r"^(\d+\.\d+) (io_submit|io_getevents)\(.*<(\d+\.\d+)>$", trace, re.M)
        wall = []
        i = 0
        while i + 3 < len(calls):  # submit(read), getevents, submit(write), getevents
            kinds = [c[1] for c in calls[i:i + 4]]
            if kinds == ["io_submit", "io_getevents", "io_submit", "io_getevents"]:
                start = float(calls[i][0])
                end = float(calls[i + 3][0]) + float(calls[i + 3][2])
                wall.append((end - start) * 1000)
                i += 4
            else:
                i += 1
        subprocess.run(["sanlock", "client", "rem_lockspace", "-s", f"{LS}:2:{path}:0"], env=env,
                       capture_output=True, timeout=60)
        return {"cpu_ms": [cpu_per], "wall_ms_strace": wall, "history_ms": hist_ms, "renewals": [renewals]}
    finally:
        daemon.terminate()
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", nargs="*", default=["file", "loop512", "loop4k", "tmpfs"])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--sanlock-seconds", type=float, default=25.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    # back-to-back renewals repeat the same whole-second timestamp, which the library warns about;
    # a warning per renewal would be measured too
    logging.disable(logging.WARNING)
    results = {"machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                           "python": platform.python_version()}, "io_timeout": 1, "storage": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-renewal-"))
    loops: list[str] = []
    try:
        for kind in args.storage:
            if kind == "tmpfs":
                backing = Path(tempfile.mkdtemp(prefix="bench-", dir="/dev/shm")) / "ls.img"
            else:
                backing = work / f"{kind}.img"
            with open(backing, "wb") as f:
                f.truncate(32 * MiB)
            path = str(backing)
            if kind.startswith("loop"):
                path = attach_loop(backing, 4096 if kind == "loop4k" else 512)
                loops.append(path)
            init = direct.init_lockspace(path, 0, LS, io_timeout=1,
                                         align_size=MiB if kind == "loop4k" else None)
            geometry = init.geometry
            f_wall, f_cpu = floor(path, geometry, args.rounds)
            o_wall, o_cpu = ours(path, args.rounds)
            s = sanlock_side(path, args.sanlock_seconds)
            row = {"geometry": f"{geometry.sector_size}/{geometry.align_size // MiB}M",
                   "floor_wall_ms": med(f_wall), "floor_cpu_ms": med(f_cpu),
                   "diskpaxos_wall_ms": med(o_wall), "diskpaxos_cpu_ms": med(o_cpu),
                   "diskpaxos_wall_p99_ms": sorted(o_wall)[int(len(o_wall) * 0.99) - 1],
                   "sanlock_wall_ms_strace": med(s["wall_ms_strace"]), "sanlock_cpu_ms": med(s["cpu_ms"]),
                   "sanlock_history_ms": med(s["history_ms"]), "sanlock_renewals": s["renewals"][0]}
            row["wall_vs_floor"] = row["diskpaxos_wall_ms"] / row["floor_wall_ms"]
            row["wall_vs_sanlock"] = row["diskpaxos_wall_ms"] / row["sanlock_wall_ms_strace"]
            row["cpu_vs_sanlock"] = row["diskpaxos_cpu_ms"] / row["sanlock_cpu_ms"]
            results["storage"][kind] = row
            if kind == "tmpfs":
                shutil.rmtree(backing.parent, ignore_errors=True)
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    cols = ["geometry", "floor_wall_ms", "diskpaxos_wall_ms", "sanlock_wall_ms_strace", "wall_vs_floor",
            "wall_vs_sanlock", "floor_cpu_ms", "diskpaxos_cpu_ms", "sanlock_cpu_ms", "cpu_vs_sanlock"]
    print(f"{'storage':<8} " + " ".join(f"{c:>22}" for c in cols))
    for kind, row in results["storage"].items():
        cells = [row[c] if isinstance(row[c], str) else f"{row[c]:.3f}" for c in cols]
        print(f"{kind:<8} " + " ".join(f"{c:>22}" for c in cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
