"""The fault layer misbehaves as it says, on real O_DIRECT I/O, deterministically by seed."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import numpy as np
import pytest

from diskpaxos import errors
from diskpaxos.fault_storage import Fault, FaultEvent, FaultPlan
from diskpaxos.io_direct import DirectStorage


def pattern(length: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()


def on_disk(path: object, offset: int, length: int) -> bytes:
    """What another host would read: an independent fd, no faults."""
    with DirectStorage(str(path), io_timeout=5, readonly=True) as check:
        return check.read(offset, length).tobytes()


# --- each kind ----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_delay(lease_file: Path) -> None:
    plan = FaultPlan().add(Fault.delay(0.15, op="write", count=1))
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        start = time.monotonic()
        storage.write(0, b"d" * 512)
        assert time.monotonic() - start >= 0.15
        start = time.monotonic()
        storage.write(0, b"e" * 512)  # count=1: only once
        assert time.monotonic() - start < 0.15
    assert on_disk(lease_file, 0, 512) == b"e" * 512
    assert plan.events == [FaultEvent(0, "delay", "write", 0, 512)]


@pytest.mark.timeout(30)
def test_delay_past_deadline_times_out_then_completes(lease_file: Path) -> None:
    plan = FaultPlan().add(Fault.delay(0.4, op="write", count=1))
    with DirectStorage(lease_file, io_timeout=0.1, syscalls=plan.syscalls()) as storage:
        with pytest.raises(errors.IOTimeout):
            storage.write(0, b"late" * 128)
        assert storage.wait_abandoned(timeout=10)
        assert storage.late_completions == 1
    assert on_disk(lease_file, 0, 512) == b"late" * 128


@pytest.mark.parametrize("op", ["read", "write"])
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EPERM])
def test_error(lease_file: Path, op: str, code: int) -> None:
    plan = FaultPlan().add(Fault.error(code, op=op, count=1))
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        with pytest.raises(errors.IOFailed) as e:
            if op == "read":
                storage.read(4096, 512)
            else:
                storage.write(4096, b"x" * 512)
        assert (e.value.errno, e.value.op, e.value.offset, e.value.length) == (code, op, 4096, 512)
        assert str(e.value) == f"{lease_file} offset 4096: {op} of 512 bytes failed: {__import__('os').strerror(code)}"
    # A failed write does not reach the disk.
    assert on_disk(lease_file, 4096, 512) == bytes(512)


@pytest.mark.timeout(30)
def test_hang_until_released(lease_file: Path) -> None:
    hang = Fault.hang(op="read", count=2)
    plan = FaultPlan().add(hang)
    with DirectStorage(lease_file, io_timeout=0.2, syscalls=plan.syscalls()) as storage:
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(errors.IOTimeout):
                storage.read(0, 512)
            assert time.monotonic() - start < 0.7
        assert storage.abandoned_in_flight == 2
        storage.read(0, 512)  # count reached: not hung
        hang.release()
        assert storage.wait_abandoned(timeout=10)
        assert storage.late_completions == 2
        assert storage.workers_started == 3


@pytest.mark.timeout(30)
def test_released_hang_does_not_block(lease_file: Path) -> None:
    hang = Fault.hang(op="read")
    hang.release()
    plan = FaultPlan().add(hang)
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        storage.read(0, 512)
    assert hang.fired == 1


@pytest.mark.parametrize("keep", [0, 1, 100, 511, 512, 700])
def test_torn_write_within_and_across_sectors(lease_file: Path, keep: int) -> None:
    old, new = pattern(1024, seed=1), pattern(1024, seed=2)
    plan = FaultPlan()
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        storage.write(8192 - 512, b"g" * 512 + old + b"g" * 512)
        plan.add(Fault.torn_write(keep, offset=8192, count=1))
        storage.write(8192, new)  # reports success
        assert storage.read(8192, 1024).tobytes() == new[:keep] + old[keep:]
        assert plan.events[-1].detail == (keep,)
    assert on_disk(lease_file, 8192 - 512, 2048) == b"g" * 512 + new[:keep] + old[keep:] + b"g" * 512


def test_torn_write_on_4k_device(loop4k: str) -> None:
    old, new = pattern(8192, seed=3), pattern(8192, seed=4)
    plan = FaultPlan().add(Fault.torn_write(1000, skip=1, count=1))
    with DirectStorage(loop4k, io_timeout=5, syscalls=plan.syscalls()) as storage:
        storage.write(4096, old)  # skipped
        storage.write(4096, new)  # torn
    assert on_disk(loop4k, 4096, 8192) == new[:1000] + old[1000:]


def test_torn_write_past_end_of_file_leaves_zeros(lease_file: Path) -> None:
    end = 16 * 1024**2
    plan = FaultPlan().add(Fault.torn_write(10))
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        storage.write(end, b"n" * 512)
        assert storage.size == end + 512
    assert on_disk(lease_file, end, 512) == b"n" * 10 + bytes(502)


def test_corrupt_read_chosen_positions(lease_file: Path) -> None:
    data = pattern(1024, seed=5)
    plan = FaultPlan().add(Fault.corrupt([0, 511, 1023, 5000], op="read", count=1))
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        storage.write(0, data)
        got = storage.read(0, 1024).tobytes()
        flipped = [i for i in range(1024) if got[i] != data[i]]
        assert flipped == [0, 511, 1023]
        assert all(got[i] == data[i] ^ 0xFF for i in flipped)
        assert storage.read(0, 1024).tobytes() == data  # the disk is intact
    assert plan.events == [FaultEvent(0, "corrupt", "read", 0, 1024, (0, 511, 1023))]


def test_corrupt_write_random_positions(lease_file: Path) -> None:
    data = pattern(2048, seed=6)
    plan = FaultPlan(seed=42).add(Fault.corrupt(nbytes=3, op="write", count=1))
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        buf = bytearray(data)
        storage.write(0, buf)
        assert buf == data  # the caller's data is never modified
        storage.write(4096, data)  # count=1: clean
    disk = on_disk(lease_file, 0, 2048)
    positions = plan.events[0].detail
    assert len(positions) == 3
    assert [i for i in range(2048) if disk[i] != data[i]] == list(positions)
    assert on_disk(lease_file, 4096, 2048) == data


# --- matching -------------------------------------------------------------------


def test_match_by_op_offset_and_range(lease_file: Path) -> None:
    plan = (FaultPlan()
            .add(Fault.error(errno.EIO, op="write", offset=4096 + 100))
            .add(Fault.error(errno.ENODATA, op="read", offset=(8192, 12288))))
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        storage.write(0, bytes(4096))  # ends before 4196
        storage.read(4096, 512)  # a read, not a write
        with pytest.raises(errors.IOFailed) as e:
            storage.write(4096, bytes(512))  # covers byte 4196
        assert e.value.errno == errno.EIO
        storage.write(4608, bytes(512))  # starts after it
        storage.read(12288, 512)  # the range is half-open
        storage.read(4096, 4096)  # ends where the range starts
        with pytest.raises(errors.IOFailed) as e:
            storage.read(7680, 1024)  # overlaps its start
        assert e.value.errno == errno.ENODATA
        with pytest.raises(errors.IOFailed):
            storage.read(12288 - 512, 512)  # overlaps its end
    assert [(ev.op, ev.offset) for ev in plan.events] == [("write", 4096), ("read", 7680), ("read", 11776)]


def test_skip_and_count(lease_file: Path) -> None:
    plan = FaultPlan().add(Fault.error(op="write", skip=2, count=2))
    outcomes = []
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        for i in range(6):
            try:
                storage.write(i * 512, bytes(512))
                outcomes.append("ok")
            except errors.IOFailed:
                outcomes.append("EIO")
    assert outcomes == ["ok", "ok", "EIO", "EIO", "ok", "ok"]


def test_several_faults_on_one_io(lease_file: Path) -> None:
    data = pattern(512, seed=9)
    plan = (FaultPlan()
            .add(Fault.corrupt([7], op="read", count=1))
            .add(Fault.delay(0.05, op="read", count=1)))
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        storage.write(0, data)
        start = time.monotonic()
        got = storage.read(0, 512).tobytes()
        assert time.monotonic() - start >= 0.05
    assert got[7] == data[7] ^ 0xFF
    assert [ev.kind for ev in plan.events] == ["corrupt", "delay"]  # recorded in rule order


@pytest.mark.parametrize("kwargs", [
    {"kind": "melt"},
    {"kind": "delay", "op": "append"},
    {"kind": "torn_write", "op": "read"},
    {"kind": "error", "probability": 1.5},
])
def test_invalid_fault_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Fault(**kwargs)  # type: ignore[arg-type]


# --- determinism ------------------------------------------------------------------


def run_workload(path: Path, seed: int) -> tuple[list[FaultEvent], list[str], bytes]:
    """A fixed I/O sequence under random faults; returns what happened and the disk."""
    plan = (FaultPlan(seed=seed)
            .add(Fault.error(errno.EIO, op="write", probability=0.3))
            .add(Fault.corrupt(nbytes=2, op="read", probability=0.4))
            .add(Fault.torn_write(300, probability=0.2))
            .add(Fault.corrupt(nbytes=1, op="write", offset=(0, 8192), probability=0.5)))
    outcomes = []
    with DirectStorage(path, io_timeout=5, syscalls=plan.syscalls()) as storage:
        for i in range(40):
            offset = (i % 16) * 1024
            try:
                if i % 3:
                    storage.write(offset, pattern(1024, seed=i))
                    outcomes.append("w")
                else:
                    outcomes.append(storage.read(offset, 1024).tobytes().hex()[:16])
            except errors.IOFailed as e:
                outcomes.append(f"E{e.errno}")
    return plan.events, outcomes, on_disk(path, 0, 16 * 1024)


def test_same_seed_same_faults(tmp_path: Path) -> None:
    runs = []
    for n, seed in enumerate([7, 7, 8]):
        path = tmp_path / f"run{n}.img"
        path.write_bytes(bytes(16 * 1024))
        runs.append(run_workload(path, seed))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    kinds = {ev.kind for ev in runs[0][0]}
    assert kinds == {"error", "corrupt", "torn_write"}
