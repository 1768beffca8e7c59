"""Delta leases (spec 5.1-5.3) as functions, on a real O_DIRECT file, in fake time.

``acquire`` runs on a background thread; the test moves the fake clock and
checks that it waits exactly as long as the spec says (never a tick less,
never a tick more) and what it wrote on the disk.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from diskpaxos import delta_lease, errors
from diskpaxos.delta_lease import Aborted, HostIdBusy, RenewDiff, RenewOwner
from diskpaxos.fault_storage import Fault, FaultPlan
from diskpaxos.format import DELTA_DISK_MAGIC, DELTA_DISK_VERSION, LEADER_SIZE, Geometry, LeaderRecord, lockspace_record
from diskpaxos.io_direct import Buffers, DirectStorage, Syscalls

EPS = 2.0 ** -10
G = Geometry(512, 1 << 20)
HOST = 5
OFF = (HOST - 1) * 512


@pytest.fixture
def storage(lockspace_file: Path):  # type: ignore[no-untyped-def]
    with DirectStorage(str(lockspace_file), io_timeout=1) as s:
        yield s


def start_acquire(helpers, storage, clock, name="me", io=1, host_id=HOST, **kw):  # type: ignore[no-untyped-def]
    fut = helpers.background(delta_lease.acquire, storage, G, 0, "LS", host_id, name, io, clock=clock, **kw)
    clock.wait_for_waiters(1)  # no advance yet: the sleeper count is exact here
    clock.settle(1)
    return fut


def finish(clock, fut, seconds: float):  # type: ignore[no-untyped-def]
    """The wait ends exactly after ``seconds``: asleep at seconds - EPS, done at seconds."""
    clock.advance(seconds - EPS)
    clock.settle(1)
    assert not fut.done(), f"acquire finished before {seconds} s"
    clock.advance(EPS)
    return fut.result(timeout=10)


def held(name: str = "other", gen: int = 4, ts: int = 777, io: int = 1, owner: int = HOST) -> LeaderRecord:
    return lockspace_record(G, "LS", 1).replace(owner_id=owner, owner_generation=gen, timestamp=ts,
                                                io_timeout=io, resource_name=name).with_checksum()


# --- acquire: free ------------------------------------------------------------------


@pytest.mark.parametrize("disk_io, our_io, wait", [(3, 1, 6), (1, 1, 2), (1, 3, 2), (2, 10, 4)])
def test_acquire_free_writes_record_and_waits_2x_io_on_disk(lease_file: Path, clock, helpers,
                                                            disk_io: int, our_io: int, wait: int) -> None:
    helpers.format_lockspace(lease_file, io_timeout=disk_io)
    before = helpers.read_record(lease_file, HOST)
    with DirectStorage(str(lease_file), io_timeout=1) as storage:
        fut = start_acquire(helpers, storage, clock, name="host-a.example", io=our_io)
        # written before the short delay starts
        rec = helpers.read_record(lease_file, HOST)
        assert (rec.owner_id, rec.owner_generation, rec.resource_name) == (HOST, 1, "host-a.example")
        assert (rec.timestamp, rec.io_timeout) == (1000, our_io)
        # everything else as read
        assert rec == before.replace(owner_id=HOST, owner_generation=1, resource_name="host-a.example",
                                     timestamp=1000, io_timeout=our_io).with_checksum()
        assert rec.checksum_ok
        lease = finish(clock, fut, wait)
    assert clock.monotonic() == 1000 + wait
    assert lease.generation == 1 and lease.record == rec and lease.last_success == 1000.0
    assert lease.io_timeout == our_io and lease.host_id == HOST and lease.sector_offset == OFF
    # only our sector was touched
    assert helpers.read_record(lease_file, HOST - 1) == before
    assert helpers.read_record(lease_file, HOST + 1) == before


@pytest.mark.parametrize("name, stored", [
    ("a" * 47, "a" * 47),
    ("b" * 48, "b" * 47),
    ("c" * 60, "c" * 47),
    ("short", "short"),
])
def test_acquire_host_name_at_most_47_bytes(lockspace_file: Path, storage, clock, helpers,
                                            name: str, stored: str) -> None:
    fut = start_acquire(helpers, storage, clock, name=name)
    lease = finish(clock, fut, 2)
    raw = helpers.read_sector(lockspace_file, OFF)
    assert raw[104:104 + len(stored)] == stored.encode()
    assert raw[104 + len(stored):152] == bytes(48 - len(stored))  # NUL-terminated within 48
    assert lease.host_name == stored


def test_acquire_zeroes_the_bitmap_and_rest_of_sector(lockspace_file: Path, storage, clock, helpers) -> None:
    rec = helpers.read_record(lockspace_file, HOST)
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(rec, tail=b"\xff" * (512 - LEADER_SIZE)))
    fut = start_acquire(helpers, storage, clock)
    finish(clock, fut, 2)
    assert helpers.read_sector(lockspace_file, OFF)[LEADER_SIZE:] == bytes(512 - LEADER_SIZE)


# --- acquire: held ------------------------------------------------------------------


@pytest.mark.parametrize("rec_io, our_io, long_wait, short_wait", [
    (1, 1, 68, 2),
    (2, 1, 76, 4),    # the io on disk, not ours
    (10, 1, 140, 20),
    (0, 2, 76, 4),    # 0 on disk -> ours
])
def test_acquire_held_by_other_waits_host_dead_of_io_on_disk(lockspace_file: Path, storage, clock, helpers,
                                                              rec_io: int, our_io: int, long_wait: int,
                                                              short_wait: int) -> None:
    other = held(io=rec_io, gen=4)
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(other))
    fut = start_acquire(helpers, storage, clock, io=our_io)
    clock.advance(long_wait - EPS)
    clock.settle(1)
    assert not fut.done()
    assert helpers.read_record(lockspace_file, HOST) == other  # nothing written while waiting
    clock.advance(EPS)
    clock.settle(1)  # now in the short delay, record written
    rec = helpers.read_record(lockspace_file, HOST)
    assert (rec.resource_name, rec.owner_generation, rec.timestamp) == ("me", 5, 1000 + long_wait)
    lease = finish(clock, fut, short_wait)
    assert lease.generation == 5
    assert clock.monotonic() == 1000 + long_wait + short_wait


@pytest.mark.parametrize("w, long_wait", [(90, 98), (30, 38)])
def test_acquire_held_wait_uses_the_configured_watchdog_fire_timeout(lockspace_file: Path, storage, clock, helpers,
                                                                      w: int, long_wait: int) -> None:
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(held(io=1)))
    fut = start_acquire(helpers, storage, clock, watchdog_fire_timeout=w)
    clock.advance(long_wait - EPS)
    clock.settle(1)
    assert not fut.done() and helpers.read_record(lockspace_file, HOST) == held(io=1)
    clock.advance(EPS)
    clock.settle(1)
    assert helpers.read_record(lockspace_file, HOST).resource_name == "me"
    lease = finish(clock, fut, 2)
    assert lease.timeouts.host_dead == long_wait
    assert lease.timeouts.renewal_write_timeout == long_wait


def test_acquire_held_timestamp_changed_raises_host_id_busy(lockspace_file: Path, storage, clock,
                                                            helpers) -> None:
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(held(gen=4, ts=777)))
    fut = start_acquire(helpers, storage, clock)
    clock.advance(30)
    clock.settle(1)
    alive = held(gen=4, ts=790)  # the holder renewed while we watched
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(alive))
    clock.advance(38 - EPS)
    clock.settle(1)
    assert not fut.done()
    clock.advance(EPS)
    with pytest.raises(HostIdBusy) as e:
        fut.result(timeout=10)
    err = e.value
    assert err.code == -262
    assert (err.host_id, err.holder, err.generation, err.lockspace) == (HOST, "other", 4, "LS")
    assert "host_id 5" in str(err) and "'other'" in str(err) and "generation 4" in str(err)
    assert helpers.read_record(lockspace_file, HOST) == alive  # we wrote nothing


def test_acquire_held_then_released_during_wait_is_taken(lockspace_file: Path, storage, clock, helpers) -> None:
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(held(gen=4)))
    fut = start_acquire(helpers, storage, clock)
    clock.advance(10)
    clock.settle(1)
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(held(gen=4, ts=0)))  # clean release
    clock.advance(58)
    clock.settle(1)
    lease = finish(clock, fut, 2)
    assert lease.generation == 5 and lease.record.resource_name == "me"


def test_acquire_held_by_our_own_name_is_fast(lockspace_file: Path, storage, clock, helpers) -> None:
    """A previous incarnation with our host name (a crash, then a restart): no long wait."""
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(held(name="me", gen=7, ts=12345, io=1)))
    fut = start_acquire(helpers, storage, clock, name="me")
    lease = finish(clock, fut, 2)
    assert lease.generation == 8
    assert clock.monotonic() == 1002


def test_acquire_name_compare_is_by_stored_47_bytes(lockspace_file: Path, storage, clock, helpers) -> None:
    long_name = "x" * 60
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(held(name="x" * 47, gen=1)))
    fut = start_acquire(helpers, storage, clock, name=long_name)
    assert finish(clock, fut, 2).generation == 2


def test_concurrent_claimant_during_short_delay_raises_host_id_busy(lockspace_file: Path, storage, clock,
                                                                    helpers) -> None:
    fut = start_acquire(helpers, storage, clock, name="me")
    assert helpers.read_record(lockspace_file, HOST).resource_name == "me"
    rival = held(name="rival", gen=1, ts=999_999)  # it read the same free record and wrote after us
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(rival))
    clock.advance(2 - EPS)
    clock.settle(1)
    assert not fut.done()
    clock.advance(EPS)
    with pytest.raises(HostIdBusy) as e:
        fut.result(timeout=10)
    assert e.value.code == -262
    assert (e.value.host_id, e.value.holder, e.value.generation) == (HOST, "rival", 1)


def test_claimant_that_only_rewrites_the_same_bytes_is_not_a_rival(lockspace_file: Path, storage, clock,
                                                                   helpers) -> None:
    fut = start_acquire(helpers, storage, clock)
    same = helpers.read_sector(lockspace_file, OFF)
    helpers.write_sector(lockspace_file, OFF, same)
    assert finish(clock, fut, 2).generation == 1


@pytest.mark.parametrize("phase", ["short", "long"])
def test_abort_cancels_the_wait(lockspace_file: Path, storage, clock, helpers, phase: str) -> None:
    if phase == "long":
        helpers.write_sector(lockspace_file, OFF, helpers.record_sector(held()))
    abort = threading.Event()
    fut = start_acquire(helpers, storage, clock, abort=abort)
    clock.advance(1)
    clock.settle(1)
    abort.set()
    with pytest.raises(Aborted) as e:
        fut.result(timeout=5)  # promptly, without more fake time
    assert e.value.code == -125
    assert clock.monotonic() == 1001


@pytest.mark.parametrize("damage, code", [
    (dict(magic=0), -223),
    (dict(version=0x00040004), -224),
    (dict(space_name="OTHER"), -226),
    ("checksum", -229),
])
def test_acquire_verifies_the_record(lockspace_file: Path, storage, clock, helpers, damage, code: int) -> None:  # type: ignore[no-untyped-def]
    rec = helpers.read_record(lockspace_file, HOST)
    bad = rec.replace(checksum=rec.checksum ^ 1) if damage == "checksum" else rec.replace(**damage).with_checksum()
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(bad))
    with pytest.raises(errors.FormatError) as e:
        delta_lease.acquire(storage, G, 0, "LS", HOST, "me", 1, clock=clock)
    assert e.value.code == code
    assert helpers.read_record(lockspace_file, HOST) == bad


# --- renew ----------------------------------------------------------------------------


class CountingSyscalls(Syscalls):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def preadv(self, fd: int, buffers: Buffers, offset: int) -> int:
        self.calls.append(("read", offset, sum(len(b) for b in buffers)))
        return super().preadv(fd, buffers, offset)

    def pwritev(self, fd: int, buffers: Buffers, offset: int) -> int:
        self.calls.append(("write", offset, sum(len(b) for b in buffers)))
        return super().pwritev(fd, buffers, offset)


def acquired(helpers, storage, clock, **kw):  # type: ignore[no-untyped-def]
    return finish(clock, start_acquire(helpers, storage, clock, **kw), 2)


def test_renew_reads_whole_area_once_and_writes_one_sector(lockspace_file: Path, clock, helpers) -> None:
    counting = CountingSyscalls()
    with DirectStorage(str(lockspace_file), io_timeout=1, syscalls=counting) as storage:
        lease = acquired(helpers, storage, clock)
        counting.calls.clear()
        reads, writes = storage.reads, storage.writes
        clock.advance(2)
        result = delta_lease.renew(storage, lease, clock=clock)
    assert result.ok and result.error is None
    assert counting.calls == [("read", 0, G.align_size), ("write", OFF, 512)]
    assert (storage.reads - reads, storage.writes - writes) == (1, 1)
    assert result.timestamp == 1004 and lease.last_success == 1004.0
    rec = helpers.read_record(lockspace_file, HOST)
    assert rec == lease.record and rec.timestamp == 1004 and rec.owner_generation == 1
    assert result.view is not None and len(result.view) == 2000
    assert result.read_ms >= 0 and result.write_ms >= 0


def test_renew_fields_and_io_timeout_rewritten(lockspace_file: Path, storage, clock, helpers) -> None:
    lease = acquired(helpers, storage, clock, io=1)
    first = lease.record
    lease.io_timeout = 3  # the lockspace's io_timeout changed: rewritten at the next renewal
    clock.advance(2)
    assert delta_lease.renew(storage, lease, clock=clock).ok
    rec = helpers.read_record(lockspace_file, HOST)
    assert rec == first.replace(timestamp=1004, io_timeout=3).with_checksum()


@pytest.mark.parametrize("change", [
    dict(resource_name="thief"),
    dict(owner_generation=2),
    dict(owner_id=HOST + 1),
    dict(resource_name="thief", owner_generation=2, timestamp=5),
])
def test_renew_owner_when_another_host_took_our_record(lockspace_file: Path, storage, clock, helpers,
                                                       change) -> None:  # type: ignore[no-untyped-def]
    lease = acquired(helpers, storage, clock)
    theirs = lease.record.replace(**change).with_checksum()
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(theirs))
    writes = storage.writes
    for previous_ok in (True, False):  # whatever the previous renewal did
        result = delta_lease.renew(storage, lease, clock=clock, previous_ok=previous_ok)
        assert not result.ok and result.corrupt
        assert isinstance(result.error, RenewOwner) and result.error.code == -260
        assert result.error.holder == theirs.resource_name
        assert result.error.generation == theirs.owner_generation
    assert storage.writes == writes  # nothing written over the new owner
    assert helpers.read_record(lockspace_file, HOST) == theirs


@pytest.mark.parametrize("change", [
    dict(timestamp=4444), dict(lver=1), dict(io_timeout=9), dict(write_id=3), dict(write_generation=1),
    dict(write_timestamp=1), dict(flags=0), dict(num_hosts=1), dict(unused1=1),
])
def test_renew_diff_when_our_record_changed_otherwise(lockspace_file: Path, storage, clock, helpers,
                                                      change) -> None:  # type: ignore[no-untyped-def]
    lease = acquired(helpers, storage, clock)
    changed = lease.record.replace(**change).with_checksum()
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(changed))
    writes = storage.writes
    result = delta_lease.renew(storage, lease, clock=clock, previous_ok=True)
    assert not result.ok and result.corrupt
    assert isinstance(result.error, RenewDiff) and result.error.code == -261
    assert storage.writes == writes
    assert helpers.read_record(lockspace_file, HOST) == changed


def test_renew_after_a_failed_renewal_tolerates_our_late_write(lockspace_file: Path, storage, clock,
                                                               helpers) -> None:
    """A write that timed out may land later: after a failure only owner/gen/name are checked."""
    lease = acquired(helpers, storage, clock)
    late = lease.record.replace(timestamp=1003).with_checksum()
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(late))
    clock.advance(2)
    result = delta_lease.renew(storage, lease, clock=clock, previous_ok=False)
    assert result.ok
    assert helpers.read_record(lockspace_file, HOST).timestamp == 1004


@pytest.mark.parametrize("damage, code", [
    ("checksum", -229),
    (dict(magic=0x12345678), -223),
    (dict(version=0x00050004), -224),
    (dict(sector_size=1024), -225),
    (dict(space_name="NOTLS"), -226),
])
def test_renew_damaged_record_is_corrupt(lockspace_file: Path, storage, clock, helpers, damage,
                                         code: int) -> None:  # type: ignore[no-untyped-def]
    lease = acquired(helpers, storage, clock)
    rec = lease.record
    bad = rec.replace(checksum=rec.checksum ^ 0x100) if damage == "checksum" else rec.replace(**damage).with_checksum()
    helpers.write_sector(lockspace_file, OFF, helpers.record_sector(bad))
    writes = storage.writes
    result = delta_lease.renew(storage, lease, clock=clock)
    assert not result.ok and result.corrupt
    assert isinstance(result.error, errors.FormatError) and result.error.code == code
    assert storage.writes == writes


@pytest.mark.parametrize("op", ["read", "write"])
def test_renew_io_error_is_not_corrupt(lockspace_file: Path, clock, helpers, op: str) -> None:
    plan = FaultPlan()
    with DirectStorage(str(lockspace_file), io_timeout=1, syscalls=plan.syscalls()) as storage:
        lease = acquired(helpers, storage, clock)
        before = lease.record
        plan.add(Fault.error(errno.EIO, op=op, count=1))
        clock.advance(2)
        result = delta_lease.renew(storage, lease, clock=clock)
        assert not result.ok and not result.corrupt
        assert isinstance(result.error, errors.IOFailed) and result.error.errno == errno.EIO
        assert lease.record == before and lease.last_success == 1000.0  # unchanged on failure
        assert (result.view is None) == (op == "read")
        clock.advance(1)
        assert delta_lease.renew(storage, lease, clock=clock, previous_ok=False).ok


def test_bitmap_written_by_renew_zeroed_by_release(lockspace_file: Path, storage, clock, helpers) -> None:
    lease = acquired(helpers, storage, clock)
    lease.bitmap_set_times.update({1: clock.monotonic(), 9: clock.monotonic(), HOST: clock.monotonic()})
    clock.advance(2)
    assert delta_lease.renew(storage, lease, clock=clock).ok
    raw = helpers.read_sector(lockspace_file, OFF)
    bits = np.unpackbits(np.frombuffer(raw[256:512], np.uint8), bitorder="little")
    assert (np.flatnonzero(bits) + 1).tolist() == [1, 9]  # never our own bit
    assert raw[LEADER_SIZE:256] == bytes(56)
    delta_lease.release(storage, lease)
    raw = helpers.read_sector(lockspace_file, OFF)
    assert raw[LEADER_SIZE:] == bytes(512 - LEADER_SIZE)
    rec = LeaderRecord.from_bytes(raw[:LEADER_SIZE])
    assert rec.timestamp == 0 and rec.checksum_ok
    assert (rec.owner_id, rec.owner_generation, rec.resource_name, rec.io_timeout) == (HOST, 1, "me", 1)
    assert (rec.magic, rec.version) == (DELTA_DISK_MAGIC, DELTA_DISK_VERSION)


@pytest.mark.parametrize("io, lifetime", [(1, 6), (2, 12)])
def test_bitmap_bytes_lifetime(io: int, lifetime: int) -> None:
    times = {3: 100.0, 4: 100.0 - lifetime, 5: 100.0 - lifetime - EPS, 7: 100.0}
    packed = delta_lease.bitmap_bytes(times, 100.0, delta_lease.Timeouts(io).set_bitmap, our_host_id=7)
    bits = np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")
    assert (np.flatnonzero(bits) + 1).tolist() == [3, 4]
    assert 5 not in times  # expired entries are forgotten
    assert delta_lease.bitmap_bytes({}, 100.0, lifetime, 1) == b""  # none: the area stays zero


@pytest.mark.timeout(30)
def test_real_time_acquire_renew_release(lockspace_file: Path) -> None:
    with DirectStorage(str(lockspace_file), io_timeout=1) as storage:
        start = time.monotonic()
        lease = delta_lease.acquire(storage, G, 0, "LS", HOST, "rt", 1)
        assert 2.0 <= time.monotonic() - start < 3.0
        assert lease.last_success == int(lease.last_success) <= start + 1
        result = delta_lease.renew(storage, lease)
        assert result.ok and result.timestamp >= lease.record.timestamp
        delta_lease.release(storage, lease)
    with DirectStorage(str(lockspace_file), io_timeout=1, readonly=True) as check:
        rec = LeaderRecord.from_bytes(check.read(OFF, 512)[:LEADER_SIZE])
    assert rec.timestamp == 0 and rec.owner_generation == 1 and rec.resource_name == "rt"
