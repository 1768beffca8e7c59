"""Operations on lease areas without a daemon: sanlock's ``direct`` verbs.

Initialise a lockspace or a resource lease, read a leader, probe an area's
geometry.  Each operation opens the storage itself, checks what it is about
to overwrite, and writes exactly what sanlock writes, so that either
implementation can use the result.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import errors, signatures
from .format import (
    DELTA_DISK_MAGIC,
    LEADER_SIZE,
    PAXOS_DISK_CLEAR,
    PAXOS_DISK_MAGIC,
    Geometry,
    LeaderRecord,
    LockspaceView,
    PaxosView,
    build_lockspace_area,
    build_resource_area,
    check_delta_leader,
    check_name,
    check_paxos_leader,
)
from .io_direct import DirectStorage
from .timeouts import DEFAULT_IO_TIMEOUT, INIT_IO_TIMEOUT

log = logging.getLogger(__name__)

PROBE_SIZE = 4096  # one read that holds a leader whatever the sector size


@dataclass(frozen=True)
class InitResult:
    path: str
    offset: int
    geometry: Geometry
    kind: str  # "lockspace" | "resource"
    replaced: str | None  # what was there before (None: zeros)


def choose_geometry(storage: DirectStorage, sector_size: int | None, align_size: int | None) -> Geometry:
    """The geometry to format with: explicit values, else sanlock's defaults.

    sanlock's defaults: the device's sector size; align 1M for 512-byte and 8M
    for 4096-byte sectors.  Unlike sanlock, a sector size alone is accepted and
    takes its default alignment (sanlock 3.8.5 fails that combination).
    """
    ss = sector_size or storage.sector_size  # DirectStorage refused one below the device's
    if align_size is None:
        return Geometry.default_for(ss)
    return Geometry(ss, align_size)


def _check_target(storage: DirectStorage, offset: int, geometry: Geometry) -> None:
    if offset % geometry.sector_size:
        raise errors.AlignmentError(path=storage.path, offset=offset, field="offset", value=offset,
                                    sector_size=geometry.sector_size)
    needed = offset + geometry.align_size
    if storage.is_block_device and storage.size < needed:
        raise errors.TargetTooSmall(path=storage.path, offset=offset, size=storage.size, needed=needed)


def _read_existing(storage: DirectStorage, offset: int, length: int) -> bytes:
    """What is in [offset, offset+length) now; past the end of a file reads as zeros."""
    available = max(0, min(length, storage.size - offset))
    available -= available % storage.sector_size
    if available <= 0:
        return b""
    return storage.read(offset, available, timeout=INIT_IO_TIMEOUT).tobytes()


def _leader_geometry(leader: LeaderRecord) -> Geometry | None:
    try:
        return Geometry.from_leader_flags(leader.flags, leader.sector_size)
    except errors.FormatError:
        return None


def _lockspace_reusable(existing: bytes, geometry: Geometry, name: str) -> str | None:
    """Why an existing lockspace may not be reformatted without --force (None: it may).

    It may when every sector is zero or a record of lockspace ``name`` whose
    host is not holding its host_id (timestamp 0): reformatting then loses
    nothing.  An interrupted init (sector 0 with magic 0) counts as ours.
    """
    leader = LeaderRecord.from_bytes(existing)
    if leader.magic != DELTA_DISK_MAGIC:
        foreign = signatures.foreign(existing)  # e.g. ext4 leaves its first 1024 bytes zero
        if foreign is not None:
            return foreign
    if signatures.first_nonzero(existing[:geometry.sector_size]) is not None \
            and leader.magic not in (0, DELTA_DISK_MAGIC):
        return signatures.describe(existing)
    if leader.magic == DELTA_DISK_MAGIC and _leader_geometry(leader) != geometry:
        # parsed with the new geometry, the old records (and their hosts) would be misread
        return (f"a lockspace {leader.space_name!r} with sector_size {leader.sector_size} and flags "
                f"0x{leader.flags:x} (formatting sector_size {geometry.sector_size}, "
                f"align {geometry.align_size >> 20}M)")
    view = LockspaceView.parse(np.frombuffer(existing, np.uint8), geometry)
    recs = view.records
    nonempty = ~view.empty
    magic = recs["magic"].copy()
    if len(magic) and magic[0] == 0 and nonempty[0]:
        magic[0] = DELTA_DISK_MAGIC  # phase one of an init that never committed
    if np.any(nonempty & (magic != DELTA_DISK_MAGIC)):
        bad = int(np.flatnonzero(nonempty & (magic != DELTA_DISK_MAGIC))[0]) + 1
        return f"host_id {bad}'s sector holds something that is not a lockspace record"
    names = recs["space_name"][nonempty]
    if np.any(names != name.encode()):
        other = names[names != name.encode()][0].decode(errors="replace")
        return f"a lockspace named {other!r} (not {name!r})"
    live = np.flatnonzero(nonempty & (recs["timestamp"] != 0))
    if len(live):
        h = int(live[0]) + 1
        rec = view.record(h)
        return (f"host_id {h} ({rec.resource_name!r}, generation {rec.owner_generation}) "
                f"holds lockspace {name!r} (timestamp {rec.timestamp})")
    tail = existing[len(view) * geometry.sector_size:]
    if signatures.first_nonzero(tail) is not None:
        return "non-zero data after the host records"
    return None


def _resource_reusable(existing: bytes, geometry: Geometry, lockspace: str, resource: str) -> str | None:
    """Why an existing resource lease may not be reformatted without --force (None: it may)."""
    leader = LeaderRecord.from_bytes(existing)
    if leader.magic not in (PAXOS_DISK_MAGIC, PAXOS_DISK_CLEAR):
        return signatures.describe(existing) or "data"
    if (leader.space_name, leader.resource_name) != (lockspace, resource):
        return f"resource lease {leader.space_name}:{leader.resource_name}"
    if leader.magic == PAXOS_DISK_MAGIC and leader.timestamp != 0:
        return (f"resource lease {lockspace}:{resource} held by host_id {leader.owner_id} "
                f"generation {leader.owner_generation} (lver {leader.lver})")
    view = PaxosView.parse(np.frombuffer(existing, np.uint8), geometry, num_hosts=geometry.max_hosts)
    shared = view.shared_holders()
    if shared:
        h, g = shared[0]
        return f"resource lease {lockspace}:{resource} held shared by host_id {h} generation {g}"
    return None


def _refuse_unless(force: bool, storage: DirectStorage, offset: int, why: str | None) -> None:
    if why is None:
        return
    if force:
        log.warning("%s offset %d: overwriting %s (--force)", storage.path, offset, why)
        return
    raise errors.ExistingDataError(path=storage.path, offset=offset, reason=f"found {why}")


def init_lockspace(path: str, offset: int, name: str, *, sector_size: int | None = None,
                   align_size: int | None = None, io_timeout: int = DEFAULT_IO_TIMEOUT,
                   force: bool = False) -> InitResult:
    """Write a fresh lockspace: every host_id record free (sanlock ``direct init -s``)."""
    check_name("lockspace name", name)
    if not 1 <= io_timeout <= 0xFF:
        raise errors.UsageError(f"io_timeout {io_timeout} is outside 1..255")
    with DirectStorage(path, io_timeout=INIT_IO_TIMEOUT, sector_size=sector_size) as storage:
        geometry = choose_geometry(storage, sector_size, align_size)
        _check_target(storage, offset, geometry)
        existing = _read_existing(storage, offset, geometry.align_size)
        found = signatures.describe(existing)
        why = None
        if found is not None:
            why = _lockspace_reusable(existing.ljust(geometry.align_size, b"\0"), geometry, name)
        _refuse_unless(force, storage, offset, why)
        area, first = build_lockspace_area(geometry, name, io_timeout)
        storage.write(offset, area)
        storage.write(offset, first)
        log.info("%s offset %d: initialised lockspace %r (%d/%dM, %d hosts)", path, offset, name,
                 geometry.sector_size, geometry.align_size >> 20, geometry.max_hosts)
        return InitResult(storage.path, offset, geometry, "lockspace", found)


def init_resource(path: str, offset: int, lockspace: str, resource: str, *,
                  sector_size: int | None = None, align_size: int | None = None,
                  num_hosts: int = 0, clear: bool = False, force: bool = False,
                  clock: Callable[[], float] = time.monotonic) -> InitResult:
    """Write a fresh resource lease: free leader, empty request, zero dblocks."""
    check_name("lockspace name", lockspace)
    check_name("resource name", resource)
    with DirectStorage(path, io_timeout=INIT_IO_TIMEOUT, sector_size=sector_size) as storage:
        geometry = choose_geometry(storage, sector_size, align_size)
        _check_target(storage, offset, geometry)
        if num_hosts < 0 or num_hosts > geometry.max_hosts:
            raise errors.UsageError(f"num_hosts {num_hosts} is outside 1..{geometry.max_hosts}")
        existing = _read_existing(storage, offset, geometry.align_size)
        found = signatures.describe(existing)
        why = None
        if found is not None:
            why = _resource_reusable(existing.ljust(geometry.align_size, b"\0"), geometry,
                                     lockspace, resource)
        _refuse_unless(force, storage, offset, why)
        stamp = int(clock()) if clear else 0
        area = build_resource_area(geometry, lockspace, resource, num_hosts, clear, stamp)
        storage.write(offset, area)
        log.info("%s offset %d: initialised resource %s:%s", path, offset, lockspace, resource)
        return InitResult(storage.path, offset, geometry, "resource", found)


# --- reading ---------------------------------------------------------------------


@dataclass(frozen=True)
class LeaderRead:
    """A leader as read from storage, with the verdict of sanlock's checks."""

    path: str
    offset: int
    kind: str  # "lockspace" | "resource"
    geometry: Geometry
    record: LeaderRecord
    error: errors.FormatError | None

    @property
    def ok(self) -> bool:
        return self.error is None


def probe_geometry(storage: DirectStorage, offset: int) -> tuple[str, Geometry, LeaderRecord]:
    """Learn kind and geometry from the leader at ``offset`` (a 4096-byte read).

    The leader's sector size overrides the device's: a 4K lockspace may live on
    a 512-byte device.  A leader claiming 512 on a 4K device cannot be used.
    """
    if offset % storage.sector_size:
        raise errors.AlignmentError(path=storage.path, offset=offset, field="offset", value=offset,
                                    sector_size=storage.sector_size)
    if storage.size < offset + PROBE_SIZE:
        raise errors.TargetTooSmall(path=storage.path, offset=offset, size=storage.size,
                                    needed=offset + PROBE_SIZE)
    rec = LeaderRecord.from_bytes(storage.read(offset, PROBE_SIZE)[:LEADER_SIZE])
    if rec.magic == DELTA_DISK_MAGIC:
        kind = "lockspace"
    elif rec.magic in (PAXOS_DISK_MAGIC, PAXOS_DISK_CLEAR):
        kind = "resource"
    else:
        found = signatures.describe(storage.read(offset, PROBE_SIZE).tobytes())
        raise errors.LeaderMagicError(path=storage.path, offset=offset, field="magic", found=rec.magic,
                                      expected=f"a lockspace or resource lease (found {found or 'zeros'})")
    if rec.sector_size not in (512, 4096):
        raise errors.LeaderSectorSizeError(path=storage.path, offset=offset, field="sector_size",
                                           found=rec.sector_size, reason="is not 512 or 4096")
    try:
        geometry = Geometry.from_leader_flags(rec.flags, rec.sector_size)
    except errors.GeometryError as e:
        raise errors.GeometryError(path=storage.path, offset=offset, reason=str(e)) from None
    if geometry.sector_size < storage.sector_size:
        raise errors.LeaderSectorSizeError(
            path=storage.path, offset=offset, field="sector_size", found=rec.sector_size,
            reason=f"in the leader is smaller than the device's logical sector size {storage.sector_size}")
    return kind, geometry, rec


def read_leader(path: str, offset: int, *, host_id: int = 0, kind: str | None = None,
                space_name: str | None = None, resource_name: str | None = None,
                sector_size: int | None = None) -> LeaderRead:
    """Read and verify one leader record.

    For a lockspace, ``host_id`` picks the delta-lease record (0 or 1: the
    first).  Verification failures are returned, not raised, so callers can
    show the record anyway (as sanlock's ``read_leader`` does), also when the
    probe of the leader at ``offset`` fails a format check and that leader is
    the record asked for (``kind`` given, not another host_id's); I/O errors,
    and probe failures for another host_id's record, raise.
    """
    def verify(rec: LeaderRecord, kind: str, at: int) -> errors.FormatError | None:
        try:
            if kind == "lockspace":
                check_delta_leader(rec, path=storage.path, offset=at, space_name=space_name)
            else:
                check_paxos_leader(rec, path=storage.path, offset=at, space_name=space_name,
                                   resource_name=resource_name)
        except errors.FormatError as e:
            return e
        return None

    # The leader at the offset is the record asked for unless it is another host_id's.
    at_offset = kind == "resource" or (kind == "lockspace" and host_id <= 1)
    with DirectStorage(path, io_timeout=DEFAULT_IO_TIMEOUT, readonly=True) as storage:
        try:
            found_kind, geometry, first = probe_geometry(storage, offset)
        except errors.FormatError as e:
            # Like sanlock's read_leader, still show that record with the first check it fails.
            if not at_offset:
                raise
            assert kind is not None
            rec = LeaderRecord.from_bytes(storage.read(offset, PROBE_SIZE)[:LEADER_SIZE])
            return LeaderRead(os.fspath(path), offset, kind, Geometry.default_for(storage.sector_size), rec,
                              verify(rec, kind, offset) or e)
        if sector_size is not None and sector_size != geometry.sector_size:
            raise errors.LeaderSectorSizeError(
                path=storage.path, offset=offset, field="sector_size", found=geometry.sector_size,
                reason=f"in the leader disagrees with the requested sector size {sector_size}")
        if kind is not None and kind != found_kind:
            if at_offset:
                return LeaderRead(os.fspath(path), offset, kind, geometry, first, verify(first, kind, offset))
            raise errors.LeaderMagicError(path=storage.path, offset=offset, field="magic", found=first.magic,
                                          expected=f"a {kind} (found a {found_kind})")
        record_offset = offset
        if found_kind == "lockspace" and host_id > 1:
            if not 1 <= host_id <= geometry.max_hosts:
                raise errors.InvalidHostIdError(path=storage.path, offset=offset, host_id=host_id,
                                                max_hosts=geometry.max_hosts)
            record_offset = geometry.delta_offset(offset, host_id)
        rec = first
        if record_offset != offset:
            raw = storage.read(record_offset - record_offset % storage.sector_size, storage.sector_size)
            rec = LeaderRecord.from_bytes(raw[:LEADER_SIZE])
        return LeaderRead(os.fspath(path), record_offset, found_kind, geometry, rec,
                          verify(rec, found_kind, record_offset))
