"""Host-id leases (delta leases): acquire, renew, release (spec section 5).

A host id is one sector of the lockspace area.  Its holder proves it is alive
by rewriting the sector's timestamp every 2 x io_timeout; others only watch
the sector change.  Acquiring waits long enough that a previous holder that
might still be alive would have been seen, and re-reads after writing to catch
a concurrent claimant (told apart by the host name in ``resource_name``).

These are functions of (storage, geometry, host, clock): no threads here.
The engine (``lockspace``) schedules them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import errors
from .clock import REAL_CLOCK, Clock
from .format import (
    HOSTID_BITMAP_OFFSET,
    HOSTID_BITMAP_SIZE,
    LEADER_SIZE,
    NAME_LEN,
    Geometry,
    LeaderRecord,
    LockspaceView,
    check_delta_leader,
    name_bytes,
)
from .io_direct import DirectStorage
from .timeouts import WATCHDOG_FIRE_TIMEOUT, Timeouts

log = logging.getLogger(__name__)


# --- errors with sanlock's codes ------------------------------------------------------


class HostIdBusy(errors.DiskpaxosError):
    code = -262  # SANLK_HOSTID_BUSY
    template = "host_id {host_id} of lockspace {lockspace!r} is held by {holder!r} generation {generation}: {reason}"


class RenewOwner(errors.DiskpaxosError):
    code = -260  # SANLK_RENEW_OWNER
    template = "host_id {host_id} was taken by {holder!r} generation {generation} (we are {ours!r} generation {our_generation})"


class RenewDiff(errors.DiskpaxosError):
    code = -261  # SANLK_RENEW_DIFF
    template = "our delta lease (host_id {host_id}) changed on storage since our last write: {reason}"


class Aborted(errors.DiskpaxosError):
    code = -125  # -ECANCELED
    template = "{reason}"


# --- clock ----------------------------------------------------------------------------


def disk_time(clock: Clock) -> int:
    """The timestamp written on disk: whole seconds of our monotonic clock (never 0)."""
    return max(1, int(clock.monotonic()))


# --- the held lease -------------------------------------------------------------------


@dataclass
class DeltaLease:
    """What we hold: the last record we wrote, and when (locally)."""

    space_name: str
    host_id: int
    host_name: str
    io_timeout: int
    geometry: Geometry
    ls_offset: int
    record: LeaderRecord
    last_success: float  # the last timestamp we wrote (whole seconds of our monotonic clock)
    bitmap_set_times: dict[int, float] = field(default_factory=dict)
    watchdog_fire_timeout: int = WATCHDOG_FIRE_TIMEOUT  # cluster-wide: host_dead, renewal write deadline

    @property
    def generation(self) -> int:
        return self.record.owner_generation

    @property
    def sector_offset(self) -> int:
        return self.geometry.delta_offset(self.ls_offset, self.host_id)

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(self.io_timeout, self.watchdog_fire_timeout)


def host_name_field(host_name: str) -> str:
    """The name as sanlock stores it: at most 47 bytes plus a NUL."""
    raw = name_bytes(host_name)[: NAME_LEN - 1]
    return raw.decode("utf8", "surrogateescape")


def _sector(record: LeaderRecord, geometry: Geometry, bitmap: bytes = b"") -> bytes:
    """A whole sector: the record, then (renewals only) the bitmap; the rest zero."""
    buf = bytearray(geometry.sector_size)
    buf[:LEADER_SIZE] = record.to_bytes()
    if bitmap:
        buf[HOSTID_BITMAP_OFFSET: HOSTID_BITMAP_OFFSET + len(bitmap)] = bitmap
    return bytes(buf)


def _read_record(storage: DirectStorage, offset: int, geometry: Geometry, space_name: str,
                 timeout: float) -> tuple[LeaderRecord, bytes]:
    raw = storage.read(offset, geometry.sector_size, timeout=timeout)[:LEADER_SIZE].tobytes()
    rec = LeaderRecord.from_bytes(raw)
    check_delta_leader(rec, path=storage.path, offset=offset, space_name=space_name)
    return rec, raw


def acquire(storage: DirectStorage, geometry: Geometry, ls_offset: int, space_name: str, host_id: int,
            host_name: str, io_timeout: int, *, clock: Clock = REAL_CLOCK,
            abort: threading.Event | None = None,
            progress: Callable[[str], None] | None = None,
            watchdog_fire_timeout: int = WATCHDOG_FIRE_TIMEOUT) -> DeltaLease:
    """Take host_id (spec 5.1).  Blocks for 2 x io (free) up to host_dead (held)."""
    abort = abort or threading.Event()
    say = progress or (lambda msg: log.info("%s:%d %s", space_name, host_id, msg))
    offset = geometry.delta_offset(ls_offset, host_id)
    name = host_name_field(host_name)
    ours = Timeouts(io_timeout, watchdog_fire_timeout)
    cur, cur_raw = _read_record(storage, offset, geometry, space_name, ours.io_timeout)
    other = Timeouts(cur.io_timeout or io_timeout, ours.watchdog_fire_timeout)

    if cur.timestamp != 0 and cur.resource_name != name:
        delay = other.delta_acquire_held_wait
        say(f"host_id {host_id} last held by {cur.resource_name!r} generation {cur.owner_generation} "
            f"(timestamp {cur.timestamp}); waiting {delay} s to see whether it is alive")
        while True:
            if _sleep(clock, abort, delay):
                raise Aborted(reason=f"join of {space_name}:{host_id} was cancelled")
            again, again_raw = _read_record(storage, offset, geometry, space_name, ours.io_timeout)
            if again_raw == cur_raw or again.timestamp == 0:
                break
            raise HostIdBusy(host_id=host_id, lockspace=space_name, holder=again.resource_name,
                             generation=again.owner_generation,
                             reason=f"its timestamp changed from {cur.timestamp} to {again.timestamp} "
                                    f"while we waited {delay} s", path=storage.path, offset=offset)
        cur, cur_raw = again, again_raw
    elif cur.timestamp != 0:
        say(f"host_id {host_id} was last held by us ({name!r}): taking it back at once")

    stamp = disk_time(clock)
    new = cur.replace(timestamp=stamp, io_timeout=io_timeout & 0xFF, owner_id=host_id,
                      owner_generation=cur.owner_generation + 1, resource_name=name).with_checksum()
    storage.write(offset, _sector(new, geometry), timeout=ours.io_timeout)
    short = other.delta_short_delay
    if _sleep(clock, abort, short):
        raise Aborted(reason=f"join of {space_name}:{host_id} was cancelled")
    check, check_raw = _read_record(storage, offset, geometry, space_name, ours.io_timeout)
    if check_raw != new.to_bytes():
        raise HostIdBusy(host_id=host_id, lockspace=space_name, holder=check.resource_name,
                         generation=check.owner_generation,
                         reason=f"another host wrote the record within {short} s of ours",
                         path=storage.path, offset=offset)
    say(f"acquired host_id {host_id} generation {new.owner_generation}")
    # validity counts from the whole second written, never from later: as sanlock
    return DeltaLease(space_name, host_id, name, io_timeout, geometry, ls_offset, new, float(stamp),
                      watchdog_fire_timeout=watchdog_fire_timeout)


def _sleep(clock: Clock, abort: threading.Event, seconds: float) -> bool:
    """Sleep in one-second steps (so a cancel is prompt); True if aborted."""
    deadline = clock.monotonic() + seconds
    while True:
        left = deadline - clock.monotonic()
        if left <= 0:
            return False
        if clock.wait(abort, min(1.0, left)):
            return True


@dataclass(frozen=True)
class RenewalResult:
    """What one renewal did, for the renewal history and the host table."""

    ok: bool
    read_ms: float
    write_ms: float
    timestamp: int  # written (0 when not written)
    view: LockspaceView | None  # the area as read (None when the read failed)
    error: errors.DiskpaxosError | None = None

    @property
    def corrupt(self) -> bool:
        """A failure that retrying cannot fix: our lease is gone or damaged."""
        return isinstance(self.error, (errors.FormatError, RenewOwner, RenewDiff))


def bitmap_bytes(set_times: dict[int, float], now: float, lifetime: int, our_host_id: int) -> bytes:
    """Our bitmap: a bit for each host we signal, while its bit is fresh (spec 5.5)."""
    bits = np.zeros(HOSTID_BITMAP_SIZE * 8, np.uint8)
    for host, since in list(set_times.items()):
        if now - since > lifetime:
            del set_times[host]
        elif host != our_host_id and 1 <= host <= len(bits):
            bits[host - 1] = 1
    packed = np.packbits(bits, bitorder="little").tobytes()
    return packed if any(packed) else b""


def renew(storage: DirectStorage, lease: DeltaLease, *, clock: Clock = REAL_CLOCK,
          previous_ok: bool = True) -> RenewalResult:
    """One renewal (spec 5.2): read the whole area, check ours, write a new timestamp.

    Updates ``lease`` on success.  I/O failures are returned (retried by the
    caller until id_renewal_fail); a damaged or taken record is ``corrupt``.
    """
    t = lease.timeouts
    g = lease.geometry
    t0 = time.perf_counter()
    try:
        area = storage.read(lease.ls_offset, g.align_size, timeout=t.io_timeout)
        view = LockspaceView.parse(area, g)
        read_ms = (time.perf_counter() - t0) * 1000
        rec = view.record(lease.host_id)
        check_delta_leader(rec, path=storage.path, offset=lease.sector_offset, space_name=lease.space_name)
    except errors.StorageError as e:
        return RenewalResult(False, (time.perf_counter() - t0) * 1000, 0.0, 0, None, e)
    except errors.FormatError as e:
        return RenewalResult(False, (time.perf_counter() - t0) * 1000, 0.0, 0, None, e)
    last = lease.record
    if (rec.owner_id, rec.owner_generation, rec.resource_name) != \
            (last.owner_id, last.owner_generation, last.resource_name):
        err: errors.DiskpaxosError = RenewOwner(
            host_id=lease.host_id, holder=rec.resource_name, generation=rec.owner_generation,
            ours=last.resource_name, our_generation=last.owner_generation,
            path=storage.path, offset=lease.sector_offset)
        return RenewalResult(False, read_ms, 0.0, 0, view, err)
    if previous_ok and rec != last:
        changed = [f for f in ("timestamp", "io_timeout", "lver", "flags", "write_id", "write_generation",
                               "write_timestamp", "num_hosts", "max_hosts", "sector_size", "unused1")
                   if getattr(rec, f) != getattr(last, f)]
        err = RenewDiff(host_id=lease.host_id, reason=f"fields {', '.join(changed) or 'raw bytes'} differ",
                        path=storage.path, offset=lease.sector_offset)
        return RenewalResult(False, read_ms, 0.0, 0, view, err)
    stamp = disk_time(clock)
    now = float(stamp)
    if stamp <= last.timestamp:
        log.warning("%s:%d new timestamp %d is not after the last %d", lease.space_name, lease.host_id,
                    stamp, last.timestamp)
    new = last.replace(timestamp=stamp, io_timeout=lease.io_timeout & 0xFF).with_checksum()
    bitmap = bitmap_bytes(lease.bitmap_set_times, now, t.set_bitmap, lease.host_id)
    t1 = time.perf_counter()
    try:
        storage.write(lease.sector_offset, _sector(new, g, bitmap), timeout=t.renewal_write_timeout)
    except errors.StorageError as e:
        return RenewalResult(False, read_ms, (time.perf_counter() - t1) * 1000, 0, view, e)
    write_ms = (time.perf_counter() - t1) * 1000
    lease.record = new
    lease.last_success = now
    return RenewalResult(True, read_ms, write_ms, stamp, view)


def release(storage: DirectStorage, lease: DeltaLease) -> None:
    """Give host_id back cleanly (spec 5.3): our last record with timestamp 0."""
    new = lease.record.replace(timestamp=0).with_checksum()
    storage.write(lease.sector_offset, _sector(new, lease.geometry), timeout=lease.timeouts.io_timeout)
    lease.record = new
