"""The scratch area a storage benchmark writes, and the checks made before anything is written.

``bench storage`` formats a lockspace and a resource lease and writes sectors,
so it must never run over data someone needs: the area must be all zeros or
hold only sanlock/diskpaxos areas (lockspace, resource lease, resource index)
that nobody holds, unless the admin says ``--force``.  Too small a target and
a target that cannot be opened for writing (read-only device, read-only mount,
no write permission) are refused before the first write.  What the area held
is kept and written back when the benchmark ends, so a scratch area of zeros
stays zeros.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass

import numpy as np

from .. import errors, signatures
from ..format import (
    DELTA_DISK_MAGIC,
    LEADER_SIZE,
    PAXOS_DISK_CLEAR,
    PAXOS_DISK_MAGIC,
    RINDEX_DISK_MAGIC,
    Geometry,
    LeaderRecord,
    LockspaceView,
    MiB,
    RindexHeader,
)
from ..io_direct import DirectStorage
from ..timeouts import INIT_IO_TIMEOUT

log = logging.getLogger(__name__)

BLKROGET = 0x125E  # _IO(0x12, 94): is the block device read-only, int
READ_SIZES = (MiB, 8 * MiB)  # the lease-area reads measured: the 512 B default area and the 4K one


class ReadOnlyTarget(errors.OpenError):
    code = -errno.EROFS
    template = "cannot open for writing ({reason}); the benchmark writes its scratch area"


class NotScratch(errors.ExistingDataError):
    """The area holds data that is not an idle sanlock/diskpaxos area."""


@dataclass(frozen=True)
class Scratch:
    """A checked scratch area: where it is, its geometry, and what it held before."""

    path: str
    offset: int
    is_block_device: bool
    device_sector_size: int
    geometry: Geometry  # the lease geometry benchmarked: sanlock's default for the sector size
    size: int  # of the whole target
    length: int  # bytes of the area, from offset
    found: str  # what was there: "zeros" or a description
    original: bytes  # the area's bytes before the benchmark

    @property
    def lockspace_offset(self) -> int:
        return self.offset

    @property
    def resource_offset(self) -> int:
        return self.offset + self.geometry.align_size

    @property
    def spare_sector(self) -> int:
        """The last host's delta sector: zeros, written by the raw sector-write measurement."""
        return self.geometry.delta_offset(self.offset, self.geometry.max_hosts)


def area_length(geometry: Geometry) -> int:
    """Bytes the benchmark needs: a lockspace and a resource lease, and room for the largest read."""
    return max(2 * geometry.align_size, max(READ_SIZES))


def _area_geometry(data: bytes) -> tuple[str, Geometry] | None:
    """(what, geometry) of a sanlock/diskpaxos area starting at data[0], None if it is not one."""
    rec = LeaderRecord.from_bytes(data[:LEADER_SIZE])
    try:
        if rec.magic == DELTA_DISK_MAGIC:
            return "lockspace", Geometry.from_leader_flags(rec.flags, rec.sector_size)
        if rec.magic in (PAXOS_DISK_MAGIC, PAXOS_DISK_CLEAR):
            return "resource", Geometry.from_leader_flags(rec.flags, rec.sector_size)
        if rec.magic == RINDEX_DISK_MAGIC:
            hdr = RindexHeader.from_bytes(data[:LEADER_SIZE])
            return "rindex", Geometry.from_rindex_flags(hdr.flags, hdr.sector_size)
    except errors.FormatError:
        return None
    return None


def _in_use(kind: str, data: bytes, geometry: Geometry) -> str | None:
    """Who holds the area, in words (None: nobody)."""
    rec = LeaderRecord.from_bytes(data[:LEADER_SIZE])
    if kind == "lockspace":
        view = LockspaceView.parse(np.frombuffer(data[:geometry.align_size], np.uint8), geometry)
        live = np.flatnonzero(~view.empty & (view.records["timestamp"] != 0))
        if len(live):
            h = int(live[0]) + 1
            held = view.record(h)
            return (f"host_id {h} ({held.resource_name!r}) holds lockspace {rec.space_name!r} "
                    f"(timestamp {held.timestamp})")
    if kind == "resource" and rec.magic == PAXOS_DISK_MAGIC and rec.timestamp != 0:
        return f"resource lease {rec.space_name}:{rec.resource_name} is held by host_id {rec.owner_id}"
    return None


def classify(data: bytes) -> tuple[str, int | None, str | None]:
    """Walk ``data`` area by area: (what it holds, offset of the first refusal, why).

    Zeros are skipped 1 MiB at a time (the smallest alignment); a sanlock or
    diskpaxos area is skipped by its own align size; anything else, and an
    area in use, stop the walk with a reason.
    """
    found: list[str] = []
    at = 0
    while at < len(data):
        chunk = data[at: at + MiB]
        if signatures.first_nonzero(chunk) is None:
            at += MiB
            continue
        area = _area_geometry(chunk)
        if area is None:
            return "data", at, f"found {signatures.describe(chunk)}"
        kind, geometry = area
        whole = data[at: at + geometry.align_size].ljust(geometry.align_size, b"\0")
        held = _in_use(kind, whole, geometry)
        if held is not None:
            return kind, at, held
        found.append(signatures.describe(chunk) or kind)
        at += geometry.align_size
    return ("; ".join(dict.fromkeys(found)) or "zeros"), None, None


def _block_read_only(path: str) -> bool:
    """BLKROGET: a read-only block device opens for writing, and then fails every write."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return bool(struct.unpack("i", fcntl.ioctl(fd, BLKROGET, bytes(4)))[0])
    finally:
        os.close(fd)


def open_scratch(path: str, offset: int, sector_size: int | None = None, *, force: bool = False) -> Scratch:
    """Check the target and read what it holds; raise (and write nothing) when it must not be used."""
    if offset < 0:
        raise errors.UsageError(f"offset {offset} is negative", path=path)
    if not os.path.exists(path):
        raise errors.OpenError(path=path, reason="no such file or device (the bench does not create one)")
    with DirectStorage(path, io_timeout=INIT_IO_TIMEOUT, readonly=True) as probe:
        device_ss = probe.device_sector_size
        size = probe.size
        is_block = probe.is_block_device
    ss = sector_size or device_ss
    if ss < device_ss:
        raise errors.UsageError(f"sector size {ss} is smaller than the device's logical sector size {device_ss}",
                                path=path)
    geometry = Geometry.default_for(ss)
    if offset % ss:
        raise errors.AlignmentError(path=path, offset=offset, field="offset", value=offset, sector_size=ss)
    length = area_length(geometry)
    if size < offset + length:
        raise errors.TargetTooSmall(path=path, offset=offset, size=size, needed=offset + length)
    try:
        writable = DirectStorage(path, io_timeout=INIT_IO_TIMEOUT)
    except errors.OpenError as e:
        if e.fields.get("errno") not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise ReadOnlyTarget(path=path, reason=e.fields.get("reason", str(e))) from None
    with writable:
        if is_block and _block_read_only(writable.path):
            raise ReadOnlyTarget(path=path, reason="the block device is read-only (blockdev --getro)")
        original = writable.read(offset, length).tobytes()
    found, at, why = classify(original)
    if why is not None:
        if not force:
            raise NotScratch(path=path, offset=offset + (at or 0), reason=why)
        log.warning("%s offset %d: benchmarking over %s (--force)", path, offset + (at or 0), why)
    return Scratch(os.fspath(path), offset, is_block, device_ss, geometry, size, length, found, original)


def restore(scratch: Scratch) -> None:
    """Write back what the area held before the benchmark."""
    with DirectStorage(scratch.path, io_timeout=INIT_IO_TIMEOUT, sector_size=scratch.geometry.sector_size) as s:
        s.write(scratch.offset, scratch.original)
