"""``bench compare``: diskpaxos beside the real sanlock and the bare I/O, same storage, same run.

For each kind of storage (a file, a 512 B loop device, a 4K loop device, a
file on tmpfs) one lease file holds a lockspace (io_timeout 1, 1M alignment,
so 1000 leases fit in 1 GiB for 4K sectors too) and N resource leases.  In
one run, alternating the two sides where a scenario repeats:

- floor: the same I/O as straight O_DIRECT syscalls (``floor.RawIO``);
- renewal wall: diskpaxos ``delta_lease.renew`` back to back (host 3), sanlock's
  lockspace thread traced with ``strace -T`` (its aio calls, so its figure
  carries strace's cost, which flatters neither side);
- renewal CPU: per renewal, CPU of the threads ``add_lockspace`` started in
  each daemon (``/proc`` schedstat over a window, divided by the renewals the
  daemon reports in that window): the same method for both;
- acquire + release, boot storm (N leases by 1 and by 4 client processes),
  add_lockspace wall time, release-on-exit (SIGKILL of a holder until its
  leader's timestamp is 0 on disk): through each daemon's socket, from real
  client processes (``daemons``).

Every figure is a median; the result keeps the samples for the plot.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import delta_lease, direct, errors
from ..format import LEADER_SIZE, Geometry, LeaderRecord, MiB
from ..io_direct import DirectStorage
from ..timeouts import Timeouts
from . import machine, stats
from .daemons import Daemon, DiskpaxosDaemon, SanlockDaemon, check_available, expect_line, finish, strace_renewals
from .floor import RawIO, sample, sample_rounds
from .storage import JoinClock, quiet_renewal_warnings

log = logging.getLogger(__name__)

SCHEMA = "diskpaxos-bench-compare/1"
KINDS = ("file", "loop512", "loop4k", "tmpfs")
LOCKSPACE = "DPCMP"
OURS_HOST = 3  # the in-process renewal host; the daemons are 1 (diskpaxos) and 2 (sanlock)

# metric name -> (what it is, unit); every one is "lower is better"
METRICS: dict[str, str] = {
    "renewal_wall_ms": "renewal wall time (ms)",
    "renewal_cpu_ms": "renewal CPU (ms)",
    "acquire_release_ms": "uncontended acquire + release (ms)",
    "storm_1_ms_per_lease": "boot storm, 1 client (ms per lease)",
    "storm_4_ms_per_lease": "boot storm, 4 clients (ms per lease)",
    "add_lockspace_ms": "add_lockspace wall time (ms)",
    "release_on_exit_ms": "release-on-exit delay (ms)",
}

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Options:
    storage: Sequence[str] = KINDS
    leases: int = 1000
    rounds: int = 300
    kills: int = 15
    renewal_seconds: float = 20.0
    io_timeout: int = 1
    dir: str = "/var/tmp"


@dataclass
class KindResult:
    """One storage kind: medians per metric and side, details, and the samples behind them."""

    geometry: Geometry
    backing: dict[str, Any]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def put(self, metric: str, side: str, value: float, samples: Sequence[float] | None = None) -> None:
        self.metrics.setdefault(metric, {})[side] = value
        if samples is not None:
            self.samples.setdefault(metric, {})[side] = list(samples)


@dataclass
class CompareResult:
    options: Options
    kinds: dict[str, KindResult]
    elapsed: float
    machine: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` document (README: "Storage timing")."""
        storage = {}
        for kind, r in self.kinds.items():
            metrics = {}
            for name, sides in r.metrics.items():
                row = {side: sides.get(side, float("nan")) for side in ("floor", "diskpaxos", "sanlock")}
                row["diskpaxos_vs_sanlock"] = stats.ratio(row["diskpaxos"], row["sanlock"])
                row["diskpaxos_vs_floor"] = stats.ratio(row["diskpaxos"], row["floor"])
                row["sanlock_vs_floor"] = stats.ratio(row["sanlock"], row["floor"])
                row["n"] = {side: len(xs) for side, xs in r.samples.get(name, {}).items()}
                metrics[name] = row
            storage[kind] = {"geometry": {"sector_size": r.geometry.sector_size, "align_size": r.geometry.align_size},
                             "backing": r.backing, "metrics": metrics, "details": r.details}
        o = self.options
        return {"schema": SCHEMA, "metrics": METRICS, "io_timeout": o.io_timeout, "leases": o.leases,
                "rounds": o.rounds, "kills": o.kills, "renewal_seconds": o.renewal_seconds,
                "elapsed_s": self.elapsed, "storage": storage, "machine": self.machine}


# --- storage ---------------------------------------------------------------------------


def attach_loop(backing: Path, sector: int) -> str:
    """A loop device over ``backing`` with the given logical sector size and direct I/O."""
    return subprocess.run(["losetup", "-f", "--show", "--direct-io=on", f"--sector-size={sector}", str(backing)],
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@contextmanager
def target(kind: str, size: int, work: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(path, sector size, what backs it) of a fresh sparse target; removed (and detached) afterwards."""
    if kind not in KINDS:
        raise ValueError(kind)
    parent = Path(tempfile.mkdtemp(prefix="dp-compare-", dir="/dev/shm")) if kind == "tmpfs" else work
    backing = parent / f"{kind}.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    device = None
    try:
        path = str(backing)
        sector = 512
        if kind.startswith("loop"):
            sector = 4096 if kind == "loop4k" else 512
            device = path = attach_loop(backing, sector)
        yield path, sector, machine.storage_of(path) | ({"backing_filesystem": machine.storage_of(str(backing))}
                                                        if device else {})
    finally:
        if device is not None:
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)
        backing.unlink(missing_ok=True)
        if kind == "tmpfs":
            shutil.rmtree(parent, ignore_errors=True)


def prepare(path: str, geometry: Geometry, leases: int, io_timeout: int) -> None:
    """A lockspace at 0 and resources R0..R(n-1) at (i + 1) x align, as sanlock's direct init writes them."""
    direct.init_lockspace(path, 0, LOCKSPACE, sector_size=geometry.sector_size, align_size=geometry.align_size,
                          io_timeout=io_timeout, force=True)
    for i in range(leases):
        direct.init_resource(path, (i + 1) * geometry.align_size, LOCKSPACE, f"R{i}",
                             sector_size=geometry.sector_size, align_size=geometry.align_size, force=True)


# --- scenarios -------------------------------------------------------------------------


def floors(path: str, g: Geometry, rounds: int, r: KindResult) -> None:
    """The bare I/O of a renewal, an acquire, a release and a join's I/O, on unused sectors."""
    spare = g.delta_offset(0, g.max_hosts)
    dblock = g.dblock_offset(g.align_size, g.max_hosts)
    with RawIO(path, g.sector_size, g.align_size) as raw:
        raw.load_sector(spare)
        renewal = sample(lambda: raw.renewal(0, g.align_size, spare), seconds=0, min_n=rounds)
        raw.load_sector(dblock)
        acquire, release = sample_rounds([lambda: raw.acquire(g.align_size, g.align_size, dblock),
                                          lambda: raw.release(dblock)], seconds=0, min_n=rounds)
        raw.load_sector(spare)
        join_io = sample(lambda: (raw.load_sector(spare), raw.write_sector(spare), raw.load_sector(spare)),
                         seconds=0, min_n=min(rounds, 50))
    pairs = [a + b for a, b in zip(acquire.wall_ms, release.wall_ms)]
    r.put("renewal_wall_ms", "floor", stats.median(renewal.wall_ms), renewal.wall_ms)
    r.put("renewal_cpu_ms", "floor", stats.median(renewal.cpu_ms), renewal.cpu_ms)
    r.put("acquire_release_ms", "floor", stats.median(pairs), pairs)
    r.put("storm_1_ms_per_lease", "floor", stats.median(pairs))
    r.put("storm_4_ms_per_lease", "floor", stats.median(pairs))
    r.put("release_on_exit_ms", "floor", stats.median(release.wall_ms), release.wall_ms)
    r.details["floor_join_io_ms"] = stats.median(join_io.wall_ms)


def in_process_renewal(path: str, g: Geometry, rounds: int, io_timeout: int, r: KindResult) -> None:
    """diskpaxos renewals back to back, in this process: wall, and CPU of the whole process."""
    clock = JoinClock()
    with DirectStorage(path, io_timeout=io_timeout, sector_size=g.sector_size) as storage, quiet_renewal_warnings():
        lease = delta_lease.acquire(storage, g, 0, LOCKSPACE, OURS_HOST, "bench-compare", io_timeout, clock=clock)

        def renew() -> None:
            result = delta_lease.renew(storage, lease, clock=clock)
            if result.error is not None:
                raise result.error

        s = sample(renew, seconds=0, min_n=rounds)
        delta_lease.release(storage, lease)
    r.put("renewal_wall_ms", "diskpaxos", stats.median(s.wall_ms), s.wall_ms)
    r.details["diskpaxos_in_process_renewal_cpu_ms"] = stats.median(s.cpu_ms)
    r.details["diskpaxos_in_process_renewal_wall"] = stats.summary(s.wall_ms)


def renewal_window(daemons: Sequence[Daemon], seconds: float, r: KindResult) -> None:
    """CPU per renewal of each daemon's lockspace threads over one window; renewal times from histories."""
    before = {d.name: (d.lockspace_cpu_ns(), {t for t, _ in d.renewal_ms()}) for d in daemons}
    time.sleep(seconds)
    for d in daemons:
        cpu0, seen = before[d.name]
        history = d.renewal_ms()
        new = [ms for t, ms in history if t not in seen]
        cpu = (d.lockspace_cpu_ns() - cpu0) / 1e6
        r.details[f"{d.name}_renewals_in_window"] = len(new)
        r.details[f"{d.name}_history_renewal_ms"] = stats.median(new)
        if new:
            r.put("renewal_cpu_ms", d.name, cpu / len(new), [cpu / len(new)])


def latency(daemons: Sequence[Daemon], rounds: int, r: KindResult) -> None:
    """acquire + release of one lease from one client, in two alternating halves per daemon."""
    pairs: dict[str, list[float]] = {d.name: [] for d in daemons}
    for half in (rounds - rounds // 2, rounds // 2):
        for d in daemons:
            if half:
                out = finish(d.client("latency", half))
                pairs[d.name] += [a + b for a, b in zip(out["acquire_ms"], out["release_ms"])]
    for name, xs in pairs.items():
        r.put("acquire_release_ms", name, stats.median(xs), xs)


def storm(daemon: Daemon, leases: int, procs: int) -> float:
    """ms per lease: ``procs`` clients take disjoint shares of the leases, started together."""
    share = leases // procs
    clients = [daemon.client("storm", k * share, share) for k in range(procs)]
    try:
        for c in clients:
            expect_line(c, "ready")
        t0 = time.perf_counter()
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        for c in clients:
            finish(c)
        return (time.perf_counter() - t0) * 1000 / (share * procs)
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.wait(10)


def release_on_exit(daemon: Daemon, raw: RawIO, offset: int, index: int, timeout: float = 60) -> float:
    """ms from SIGKILL of a holder to a zero leader timestamp on disk (polled ~every ms, O_DIRECT)."""
    def timestamp() -> int:
        raw.read(offset, raw.sector_size)
        return LeaderRecord.from_bytes(bytes(raw.area[:LEADER_SIZE])).timestamp

    holder = daemon.client("hold", index)
    try:
        expect_line(holder, "held")
        if timestamp() == 0:
            raise RuntimeError(f"{daemon.name}: the lease at {offset} is not held after the client said so")
        t0 = time.perf_counter()
        holder.kill()
        while timestamp() != 0:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{daemon.name}: leader still held {timeout} s after its holder died")
            time.sleep(0.001)
        return (time.perf_counter() - t0) * 1000
    finally:
        holder.kill()
        holder.wait(10)


def run_kind(kind: str, o: Options, work: Path, runs: Path, tick: Callable[[str, float], None]) -> KindResult:
    """Every scenario on one storage kind; ``runs`` is a short path for the daemons' sockets."""
    align = MiB
    with target(kind, (o.leases + 2) * align, work) as (path, sector, backing):
        g = Geometry(sector, align)
        r = KindResult(g, backing)
        tick("prepare", 0.0)
        t0 = time.monotonic()
        prepare(path, g, o.leases, o.io_timeout)
        r.details["prepare_s"] = time.monotonic() - t0
        tick("floor", 0.05)
        floors(path, g, o.rounds, r)
        r.details["floor_join_wait_ms"] = Timeouts(o.io_timeout).delta_short_delay * 1000.0
        r.put("add_lockspace_ms", "floor", r.details["floor_join_wait_ms"] + r.details["floor_join_io_ms"])
        tick("renewal", 0.1)
        in_process_renewal(path, g, o.rounds, o.io_timeout, r)
        daemons: list[Daemon] = []
        try:
            tick("daemons", 0.15)
            daemons.append(DiskpaxosDaemon(runs / f"{kind}-dp", LOCKSPACE, path, align, o.io_timeout))
            daemons.append(SanlockDaemon(runs / f"{kind}-sl", LOCKSPACE, path, align, o.io_timeout))
            for d in daemons:
                joined = d.join()
                r.put("add_lockspace_ms", d.name, joined, [joined])
            tick("renewal CPU", 0.25)
            renewal_window(daemons, o.renewal_seconds, r)
            sanlock = daemons[1]
            assert isinstance(sanlock, SanlockDaemon)
            tid = sanlock.lockspace_tid()
            tick("strace", 0.5)
            traced = strace_renewals(sanlock.pid, tid, max(3.0, o.renewal_seconds / 2)) if tid else []
            r.put("renewal_wall_ms", "sanlock", stats.median(traced), traced)
            tick("acquire", 0.65)
            latency(daemons, o.rounds, r)
            tick("storm", 0.7)
            for procs in (1, 4):
                for d in daemons:
                    per = storm(d, o.leases, procs)
                    r.put(f"storm_{procs}_ms_per_lease", d.name, per, [per])
            tick("release on exit", 0.9)
            delays: dict[str, list[float]] = {d.name: [] for d in daemons}
            with RawIO(path, g.sector_size, g.sector_size, readonly=True) as raw:
                for k in range(o.kills):
                    index = k % o.leases
                    for d in daemons:
                        delays[d.name].append(release_on_exit(d, raw, (index + 1) * align, index))
            for name, xs in delays.items():
                r.put("release_on_exit_ms", name, stats.median(xs), xs)
        finally:
            for d in reversed(daemons):
                try:
                    d.stop()
                except Exception as e:  # keep stopping the others
                    log.error("stopping %s: %s", d.name, e)
        return r


def run(options: Options, progress: Progress | None = None) -> CompareResult:
    """Every storage kind in turn; raises Unavailable before anything starts when a component is missing."""
    check_available()
    if options.leases < 4:
        raise ValueError("at least 4 leases (the 4-client storm gives each client one)")
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dp-compare-", dir=options.dir))
    runs = Path(tempfile.mkdtemp(prefix="dpc-", dir="/tmp"))  # unix socket paths are short
    kinds: dict[str, KindResult] = {}
    try:
        for i, kind in enumerate(options.storage):
            def tick(step: str, f: float, i: int = i, kind: str = kind) -> None:
                if progress:
                    progress(f"{kind}: {step}", (i + f) / len(options.storage))
            try:
                kinds[kind] = run_kind(kind, options, work, runs, tick)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                raise errors.DiskpaxosError(f"bench compare on {kind}: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runs, ignore_errors=True)
    if progress:
        progress("done", 1.0)
    return CompareResult(options, kinds, time.monotonic() - t0, machine.describe(os.path.join(options.dir, ".")))
