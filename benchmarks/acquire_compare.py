#!/usr/bin/env python3
"""Uncontended acquire + release, and a boot storm, beside the I/O floor and sanlock.

For each kind of storage (file, 512 B loop, 4K loop, tmpfs) in one run:

- floor: the I/O an uncontended acquire needs and nothing else (3 reads of the
  lease area + 3 sector writes), and a release's (sector write, sector read,
  sector write), as straight O_DIRECT syscalls;
- diskpaxos: ``Lockspace.acquire`` + ``Lease.release`` on a joined lockspace;
- sanlock: python3-sanlock ``acquire``/``release`` through a live daemon on
  another host id of the same lockspace (the client runs under /usr/bin/python3).

Then a boot storm on a file: 1000 distinct leases acquired and released one
after another by one host, as throughput (leases/s), beside sanlock's.
Prints medians, p99 and ratios; ``--json FILE`` keeps them.  Needs root.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import logging  # noqa: E402

from benchutil import attach_loop  # noqa: E402

from diskpaxos import direct  # noqa: E402
from diskpaxos.lockspace import Lockspace  # noqa: E402

MiB = 1024 * 1024
LS = "ACQB"

SANLOCK_CLIENT = r"""
import json, os, sys, time, sanlock
path, first, count, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = sanlock.register()
acq, rel = [], []
for r in range(rounds):
    for i in range(count):
        off = first + i * 1048576
        name = b"R%d" % i
        t0 = time.perf_counter()
        sanlock.acquire(b"ACQB", name, [(path, off)], slkfd=fd)
        t1 = time.perf_counter()
        sanlock.release(b"ACQB", name, [(path, off)], slkfd=fd)
        t2 = time.perf_counter()
        acq.append((t1 - t0) * 1000); rel.append((t2 - t1) * 1000)
print(json.dumps({"acquire_ms": acq, "release_ms": rel}))
"""


def floor(path: str, sector: int, rounds: int) -> tuple[list[float], list[float]]:
    fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
    try:
        area, sec = mmap.mmap(-1, MiB), mmap.mmap(-1, sector)  # zero-filled
        lease = MiB  # the benchmarked lease itself; the sector written is host 3's dblock, kept all zero
        acq, rel = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(3):
                os.preadv(fd, [area], lease)
                os.pwritev(fd, [sec], lease + 4 * sector)
            t1 = time.perf_counter()
            os.pwritev(fd, [sec], lease + 4 * sector)
            os.preadv(fd, [sec], lease + 4 * sector)
            os.pwritev(fd, [sec], lease + 4 * sector)
            t2 = time.perf_counter()
            acq.append((t1 - t0) * 1000)
            rel.append((t2 - t1) * 1000)
        return acq, rel
    finally:
        os.close(fd)


def ours(ls: Lockspace, path: str, first: int, count: int, rounds: int) -> tuple[list[float], list[float]]:
    acq, rel = [], []
    for _ in range(rounds):
        for i in range(count):
            t0 = time.perf_counter()
            lease = ls.acquire(f"R{i}", path, first + i * MiB)
            t1 = time.perf_counter()
            lease.release()
            t2 = time.perf_counter()
            acq.append((t1 - t0) * 1000)
            rel.append((t2 - t1) * 1000)
    return acq, rel


class SanlockHost:
    def __init__(self, path: str) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="bench-sanlock-"))
        self.env = dict(os.environ, SANLOCK_RUN_DIR=str(self.run_dir), SANLOCK_PRIVILEGED="0")
        self.log = open(self.run_dir / "log", "wb")
        self.proc = subprocess.Popen(["sanlock", "daemon", "-D", "-w", "0", "-e", "bench-sanlock"], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        while not (self.run_dir / "sanlock.sock").exists():
            time.sleep(0.02)
        self.path = path
        subprocess.run(["sanlock", "client", "add_lockspace", "-s", f"{LS}:2:{path}:0", "-o", "1"], env=self.env,
                       check=True, capture_output=True)

    def run(self, first: int, count: int, rounds: int) -> dict[str, list[float]]:
        out = subprocess.run(["/usr/bin/python3", "-c", SANLOCK_CLIENT, self.path, str(first), str(count),
                              str(rounds)], env=self.env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def stop(self) -> None:
        subprocess.run(["sanlock", "client", "rem_lockspace", "-s", f"{LS}:2:{self.path}:0"], env=self.env,
                       capture_output=True, timeout=60)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"median": statistics.median(s), "p99": s[max(0, int(len(s) * 0.99) - 1)], "n": len(s)}


def prepare(path: str, resources: int, align_m: int | None) -> None:
    align = align_m * MiB if align_m else None
    direct.init_lockspace(path, 0, LS, io_timeout=1, align_size=align, force=True)
    for i in range(resources):
        direct.init_resource(path, (i + 1) * MiB, LS, f"R{i}", align_size=align, force=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", nargs="*", default=["file", "loop512", "loop4k", "tmpfs"])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--storm", type=int, default=1000, help="leases in the boot storm (0: skip)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    results: dict = {"machine": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count()},
                     "io_timeout": 1, "storage": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-acquire-"))
    loops: list[str] = []
    try:
        kinds = list(args.storage) + (["storm"] if args.storm else [])
        for kind in kinds:
            n_res = args.storm if kind == "storm" else 1
            size = (n_res + 2) * MiB
            if kind == "tmpfs":
                backing = Path(tempfile.mkdtemp(prefix="bench-", dir="/dev/shm")) / "leases.img"
            else:
                backing = work / f"{kind}.img"
            with open(backing, "wb") as f:
                f.truncate(size)
            path = str(backing)
            if kind.startswith("loop"):
                path = attach_loop(backing, 4096 if kind == "loop4k" else 512)
                loops.append(path)
            prepare(path, n_res, 1 if kind == "loop4k" else None)
            sector = 4096 if kind == "loop4k" else 512
            ls = Lockspace.join(LS, 1, path, 0, io_timeout=1, host_name="bench-diskpaxos")
            sanlock = SanlockHost(path)
            try:
                if kind == "storm":
                    t0 = time.perf_counter()
                    ours(ls, path, MiB, n_res, 1)
                    ours_rate = n_res / (time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    sanlock.run(MiB, n_res, 1)
                    theirs_rate = n_res / (time.perf_counter() - t0)
                    results["boot_storm"] = {"leases": n_res, "diskpaxos_per_s": ours_rate,
                                             "sanlock_per_s": theirs_rate, "ratio": ours_rate / theirs_rate}
                    continue
                f_acq, f_rel = floor(path, sector, args.rounds)
                o_acq, o_rel = ours(ls, path, MiB, 1, args.rounds)
                s = sanlock.run(MiB, 1, args.rounds)
                row = {"floor_acquire": stats(f_acq), "floor_release": stats(f_rel),
                       "diskpaxos_acquire": stats(o_acq), "diskpaxos_release": stats(o_rel),
                       "sanlock_acquire": stats(s["acquire_ms"]), "sanlock_release": stats(s["release_ms"])}
                row["acquire_vs_floor"] = row["diskpaxos_acquire"]["median"] / row["floor_acquire"]["median"]
                row["acquire_vs_sanlock"] = row["diskpaxos_acquire"]["median"] / row["sanlock_acquire"]["median"]
                row["release_vs_sanlock"] = row["diskpaxos_release"]["median"] / row["sanlock_release"]["median"]
                results["storage"][kind] = row
            finally:
                sanlock.stop()
                ls.leave()
                if kind == "tmpfs":
                    shutil.rmtree(backing.parent, ignore_errors=True)
    finally:
        for dev in loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'storage':<8} {'floor acq':>10} {'ours acq':>10} {'p99':>8} {'sanlock acq':>12} {'p99':>8} "
          f"{'vs floor':>9} {'vs sanlock':>11} {'ours rel':>9} {'sanlock rel':>12}")
    for kind, r in results["storage"].items():
        print(f"{kind:<8} {r['floor_acquire']['median']:>10.3f} {r['diskpaxos_acquire']['median']:>10.3f} "
              f"{r['diskpaxos_acquire']['p99']:>8.3f} {r['sanlock_acquire']['median']:>12.3f} "
              f"{r['sanlock_acquire']['p99']:>8.3f} {r['acquire_vs_floor']:>9.2f} {r['acquire_vs_sanlock']:>11.2f} "
              f"{r['diskpaxos_release']['median']:>9.3f} {r['sanlock_release']['median']:>12.3f}")
    if "boot_storm" in results:
        b = results["boot_storm"]
        print(f"boot storm {b['leases']} leases: diskpaxos {b['diskpaxos_per_s']:.0f}/s, "
              f"sanlock {b['sanlock_per_s']:.0f}/s (ratio {b['ratio']:.2f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
