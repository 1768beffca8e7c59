"""``bench storage``: the latency of exactly the I/O leases do, on one target, and the io_timeout it can carry.

Measured, each for an equal share of the duration, on a checked scratch area
(see ``scratch``) that is put back as it was at the end:

- ``write_sector``: one-sector O_DIRECT|O_SYNC writes (a renewal's write);
- ``read_1m``, ``read_8m``: O_DIRECT reads of a lease area (the 512 B and
  the 4K default lockspace sizes);
- ``renewal``: ``delta_lease.renew`` on a lockspace formatted there (read,
  parse and verify the area, write our sector);
- ``acquire``, ``release``: an uncontended ``Lockspace.acquire`` of a
  resource lease formatted there, and its release.

The first three are raw syscalls (``floor``); the last three run the lease
code with io_timeout 10, sanlock's default, as deadlines.  The scratch area
is ours alone (checked before).  Its own bytes are first written back over
it, so that a sparse file's holes are allocated and the reads really read.
The 2 x io_timeout wait that guards a host_id against another writer is
skipped when joining: the benchmark measures I/O, not that wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import delta_lease, direct
from ..clock import RealClock
from ..io_direct import DirectStorage
from ..lockspace import Lockspace
from ..timeouts import DEFAULT_IO_TIMEOUT
from . import machine, recommend, stats
from .floor import RawIO, Samples, sample, sample_rounds
from .scratch import Scratch, open_scratch, restore

log = logging.getLogger(__name__)

SCHEMA = "diskpaxos-bench-storage/1"
LOCKSPACE = "dpbench"
RESOURCE = "bench"
MiB = 1024 * 1024

# JSON name -> what it is (printed, and kept in the JSON)
OPERATIONS: dict[str, str] = {
    "write_sector": "one-sector O_DIRECT|O_SYNC write",
    "read_1m": "O_DIRECT read of 1 MiB (512 B lockspace area)",
    "read_8m": "O_DIRECT read of 8 MiB (4K lockspace area)",
    "renewal": "delta-lease renewal (read area, parse + verify, write sector)",
    "acquire": "uncontended resource lease acquire (Disk Paxos ballot + leader commit)",
    "release": "resource lease release",
}

Progress = Callable[[str, float], None]  # (operation, overall fraction done)


class JoinClock(RealClock):
    """Real time, except that while ``skip`` is set a wait in the creating thread returns at once
    and moves this clock on instead.

    Joining a lockspace nobody else uses (the checked scratch area) then
    takes no wall time, and every timestamp stays consistent with the waits.
    Other threads (the renewal thread a join starts) always really wait.
    """

    def __init__(self) -> None:
        self.skip = True
        self.offset = 0.0
        self.thread = threading.get_ident()

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def wait(self, event: threading.Event, timeout: float) -> bool:
        if not self.skip or threading.get_ident() != self.thread:
            return super().wait(event, timeout)
        if event.is_set():
            return True
        self.offset += max(0.0, timeout)
        return False


@contextmanager
def quiet_renewal_warnings() -> Iterator[None]:
    """Back-to-back renewals repeat a whole-second timestamp, which delta_lease warns about."""
    logger = logging.getLogger(delta_lease.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class StorageResult:
    """Samples per operation, the checked scratch area, and the recommendation."""

    scratch: Scratch
    samples: dict[str, Samples]
    duration: float
    elapsed: float
    machine: dict[str, Any] = field(default_factory=dict)

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {op: stats.summary(s.wall_ms) for op, s in self.samples.items()}

    def recommendation(self) -> dict[str, Any]:
        # the area read of the geometry in use is the one a lease reads
        used = {MiB: "read_1m", 8 * MiB: "read_8m"}.get(self.scratch.geometry.align_size)
        summaries = {op: s for op, s in self.summaries().items()
                     if not op.startswith("read_") or op == used}
        return recommend.recommend(summaries)

    def to_json(self) -> dict[str, Any]:
        """The stable ``--json`` document (README: "Storage timing")."""
        s = self.scratch
        ops = {}
        for op, summary in self.summaries().items():
            samples = self.samples[op]
            ops[op] = {"description": OPERATIONS[op], **summary, "errors": samples.errors,
                       "first_error": samples.first_error, "histogram": stats.histogram(samples.wall_ms)}
        return {
            "schema": SCHEMA,
            "target": {"path": s.path, "offset": s.offset, "type": "block device" if s.is_block_device else "file",
                       "size": s.size, "device_sector_size": s.device_sector_size, "area_bytes": s.length,
                       "found": s.found},
            "geometry": {"sector_size": s.geometry.sector_size, "align_size": s.geometry.align_size},
            "io_timeout_during_run": DEFAULT_IO_TIMEOUT,
            "duration_s": self.duration, "elapsed_s": self.elapsed, "unit": "ms",
            "operations": ops, "recommendation": self.recommendation(), "machine": self.machine,
        }


def _raw(scratch: Scratch, run: Callable[[str, Callable[[], object]], Samples]) -> dict[str, Samples]:
    ss = scratch.geometry.sector_size
    out = {}
    with RawIO(scratch.path, ss, max(8 * MiB, ss)) as raw:
        raw.load_sector(scratch.spare_sector)
        out["write_sector"] = run("write_sector", lambda: raw.write_sector(scratch.spare_sector))
        out["read_1m"] = run("read_1m", lambda: raw.read(scratch.offset, MiB))
        out["read_8m"] = run("read_8m", lambda: raw.read(scratch.offset, 8 * MiB))
    return out


def _leases(scratch: Scratch, run: Callable[[str, Callable[[], object]], Samples],
            pair: Callable[[str, list[Callable[[], object]]], list[Samples]]) -> dict[str, Samples]:
    g = scratch.geometry
    io = DEFAULT_IO_TIMEOUT
    direct.init_lockspace(scratch.path, scratch.lockspace_offset, LOCKSPACE, sector_size=g.sector_size,
                          align_size=g.align_size, io_timeout=io, force=True)
    direct.init_resource(scratch.path, scratch.resource_offset, LOCKSPACE, RESOURCE, sector_size=g.sector_size,
                         align_size=g.align_size, force=True)
    out = {}
    clock = JoinClock()
    with DirectStorage(scratch.path, io_timeout=io, sector_size=g.sector_size) as storage, quiet_renewal_warnings():
        lease = delta_lease.acquire(storage, g, scratch.lockspace_offset, LOCKSPACE, 1, "bench-renewal", io,
                                    clock=clock)

        def renew() -> None:
            result = delta_lease.renew(storage, lease, clock=clock)
            if result.error is not None:
                raise result.error

        out["renewal"] = run("renewal", renew)
        delta_lease.release(storage, lease)
    ls = Lockspace.join(LOCKSPACE, 2, scratch.path, scratch.lockspace_offset, io_timeout=io,
                        host_name="bench-acquire", clock=clock)
    clock.skip = False
    try:
        held: list[Any] = []

        def acquire() -> None:
            held.append(ls.acquire(RESOURCE, scratch.path, scratch.resource_offset))

        def release() -> None:
            held.pop().release()

        out["acquire"], out["release"] = pair("acquire", [acquire, release])
    finally:
        ls.leave()
    return out


def run(path: str, offset: int = 0, *, sector_size: int | None = None, duration: float = 30.0,
        force: bool = False, min_samples: int = 3, progress: Progress | None = None) -> StorageResult:
    """Check the target, measure every operation, put the area back; raise before writing on bad input."""
    scratch = open_scratch(path, offset, sector_size, force=force)
    share = duration / len(OPERATIONS)
    done = [0]

    def ticker(op: str, width: int = 1) -> Callable[[float], None]:
        index = done[0]
        return lambda f: progress(op, (index + f * width) / len(OPERATIONS)) if progress else None

    def one(op: str, fn: Callable[[], object]) -> Samples:
        result = sample(fn, seconds=share, min_n=min_samples, tick=ticker(op))
        done[0] += 1
        return result

    def pair(op: str, fns: list[Callable[[], object]]) -> list[Samples]:
        # a round is one acquire and one release: both ops' shares
        result = sample_rounds(fns, seconds=share * len(fns), min_n=min_samples, tick=ticker(op, len(fns)))
        done[0] += len(fns)
        return result

    t0 = time.monotonic()
    samples: dict[str, Samples] = {}
    try:
        # write the area's own bytes back first: a sparse file's holes would read without any disk I/O
        restore(scratch)
        samples.update(_raw(scratch, one))
        samples.update(_leases(scratch, one, pair))
    finally:
        restore(scratch)
    if progress:
        progress("done", 1.0)
    return StorageResult(scratch, samples, duration, time.monotonic() - t0, machine.describe(path))
