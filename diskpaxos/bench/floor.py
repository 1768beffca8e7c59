"""The bare I/O of leases, as straight O_DIRECT syscalls: the floor every lease operation sits on.

A lease operation cannot be faster than its I/O, so each figure is reported
beside the same I/O issued with nothing else: no worker thread, no parsing,
no checksums.  The patterns are the ones the lease code issues (spec sections
5 and 6): a renewal reads the whole lockspace area and writes one sector; an
uncontended acquire is three rounds of (read the lease area, write our dblock
sector); a release writes, reads and writes one sector.

Writes go only to sectors the caller names and write back the bytes already
there (zeros on an unused host's sector), so a floor run changes nothing.

This module and ``io_direct`` are the only ones that issue disk syscalls:
``io_direct`` adds deadlines and a worker thread, which is exactly what the
floor must leave out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..io_direct import aligned_buffer

MiB = 1024 * 1024


@dataclass
class Samples:
    """Wall and CPU milliseconds per call of one operation; errors counted, not raised."""

    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None


def sample_rounds(ops: Sequence[Callable[[], object]], *, seconds: float, min_n: int = 3,
                  max_n: int = 1_000_000, tick: Callable[[float], None] | None = None,
                  cpu: Callable[[], float] = time.process_time) -> list[Samples]:
    """Run rounds of ``ops`` (each op once, in order) back to back for ``seconds``.

    At least ``min_n`` and at most ``max_n`` rounds.  ``cpu`` is the CPU clock
    (process-wide by default: lease I/O runs in a worker thread, whose
    syscalls must be counted).  ``tick`` gets the fraction of the time share
    used, for a progress bar.  A DiskpaxosError counts as an error of that op
    and ends its round, so a slow storage shows as errors, not as a crash.
    """
    out = [Samples() for _ in ops]
    start = time.perf_counter()
    end = start + seconds
    rounds = 0
    while rounds < max_n and (rounds < min_n or time.perf_counter() < end):
        rounds += 1
        for op, samples in zip(ops, out):
            w0, c0 = time.perf_counter(), cpu()
            try:
                op()
            except errors.DiskpaxosError as e:
                samples.errors += 1
                samples.first_error = samples.first_error or str(e)
                break
            c1, w1 = cpu(), time.perf_counter()
            samples.wall_ms.append((w1 - w0) * 1000)
            samples.cpu_ms.append((c1 - c0) * 1000)
        if tick is not None:
            tick(min(1.0, (time.perf_counter() - start) / seconds) if seconds > 0 else 1.0)
    return out


def sample(op: Callable[[], object], **kwargs: Any) -> Samples:
    """``sample_rounds`` of one operation."""
    return sample_rounds([op], **kwargs)[0]


class RawIO:
    """One O_DIRECT file descriptor (O_SYNC for writes) and aligned buffers: the floor's syscalls."""

    def __init__(self, path: str, sector_size: int, area_size: int, *, readonly: bool = False) -> None:
        flags = os.O_DIRECT | os.O_CLOEXEC | (os.O_RDONLY if readonly else os.O_RDWR | os.O_SYNC)
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            raise errors.OpenError(path=path, reason=os.strerror(e.errno or 0), errno=e.errno) from None
        self.path = path
        self.sector_size = sector_size
        self.area = aligned_buffer(area_size)
        self.sector = aligned_buffer(sector_size)

    def _io(self, op: str, func: Callable[[int, Sequence[Any], int], int], buffers: Sequence[Any],
            offset: int, length: int) -> None:
        try:
            done = func(self.fd, buffers, offset)
        except OSError as e:
            raise errors.IOFailed(path=self.path, offset=offset, op=op, length=length,
                                  reason=os.strerror(e.errno or 0)) from None
        if done != length:
            raise errors.ShortIOError(path=self.path, offset=offset, op=op, length=length, done=done)

    def read(self, offset: int, length: int) -> None:
        self._io("read", os.preadv, [memoryview(self.area)[:length]], offset, length)

    def write_sector(self, offset: int) -> None:
        """Write the sector buffer (what ``load_sector`` read there: the bytes already on disk)."""
        self._io("write", os.pwritev, [self.sector], offset, self.sector_size)

    def load_sector(self, offset: int) -> None:
        """Read the sector at ``offset`` into the buffer later writes put back."""
        self._io("read", os.preadv, [self.sector], offset, self.sector_size)

    # the lease patterns

    def renewal(self, area_offset: int, area_size: int, sector_offset: int) -> None:
        """One renewal's I/O: read the lockspace area, write one sector."""
        self.read(area_offset, area_size)
        self.write_sector(sector_offset)

    def acquire(self, lease_offset: int, area_size: int, sector_offset: int) -> None:
        """An uncontended acquire's I/O: three rounds of (read the lease area, write our dblock)."""
        for _ in range(3):
            self.read(lease_offset, area_size)
            self.write_sector(sector_offset)

    def release(self, sector_offset: int) -> None:
        """A release's I/O: write, read, write one sector."""
        self.write_sector(sector_offset)
        self.load_sector(sector_offset)
        self.write_sector(sector_offset)

    def close(self) -> None:
        os.close(self.fd)
        self.area.close()
        self.sector.close()

    def __enter__(self) -> RawIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
