"""DirectStorage against real O_DIRECT on a file and on 512 B and 4 KiB loop devices.

Hangs are injected with the fault layer, in the worker thread, on the real fd:
nothing in the kernel is mocked.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from diskpaxos import errors
from diskpaxos.fault_storage import Fault, FaultPlan
from diskpaxos.io_direct import DirectStorage, Syscalls

MiB = 1024**2
SLACK = 0.5  # seconds a timed-out call may take beyond its deadline


@pytest.fixture(params=["file", "loop512", "loop4k"])
def target(request: pytest.FixtureRequest) -> tuple[str, int, int, bool]:
    """(path, sector size, size, is block device) of each kind of storage."""
    if request.param == "file":
        return str(request.getfixturevalue("lease_file")), 512, 16 * MiB, False
    sector = 512 if request.param == "loop512" else 4096
    return request.getfixturevalue(request.param), sector, 64 * MiB, True


class CountingSyscalls(Syscalls):
    """Real syscalls, counted: proves a refused request never reached the kernel."""

    def __init__(self) -> None:
        self.calls = 0

    def preadv(self, fd: int, buffers, offset: int) -> int:  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().preadv(fd, buffers, offset)

    def pwritev(self, fd: int, buffers, offset: int) -> int:  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().pwritev(fd, buffers, offset)


def pattern(length: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()


# --- geometry ---------------------------------------------------------------


def test_detects_sector_size_and_size(target: tuple[str, int, int, bool]) -> None:
    path, sector, size, is_block = target
    with DirectStorage(path, io_timeout=5) as storage:
        assert storage.path == path
        assert storage.sector_size == storage.device_sector_size == sector
        assert storage.size == size
        assert storage.is_block_device == is_block
        assert storage.io_timeout == 5


def test_explicit_sector_size_overrides_detection(lease_file: Path) -> None:
    with DirectStorage(lease_file, io_timeout=5, sector_size=4096) as storage:
        assert storage.sector_size == 4096
        assert storage.device_sector_size == 512
        with pytest.raises(errors.AlignmentError):
            storage.write(512, bytes(512))


@pytest.mark.parametrize("sector_size", [0, 1024, 2048, 8192])
def test_unsupported_sector_size_refused(lease_file: Path, sector_size: int) -> None:
    with pytest.raises(errors.UsageError, match=str(sector_size)):
        DirectStorage(lease_file, io_timeout=5, sector_size=sector_size)


def test_sector_size_below_device_sector_refused(loop4k: str) -> None:
    with pytest.raises(errors.UsageError) as e:
        DirectStorage(loop4k, io_timeout=5, sector_size=512)
    assert loop4k in str(e.value)


# --- round trips --------------------------------------------------------------


@pytest.mark.parametrize("where", ["start", "second-sector", "1M", "end"])
@pytest.mark.parametrize("sectors", [1, 8])
def test_round_trip_keeps_guard_areas(target: tuple[str, int, int, bool], where: str,
                                      sectors: int) -> None:
    path, ss, size, _ = target
    length = sectors * ss
    offset = {"start": 0, "second-sector": ss, "1M": MiB, "end": size - length}[where]
    lo, hi = max(0, offset - 2 * ss), min(size, offset + length + 2 * ss)
    poison = b"\xa5" * (hi - lo)
    data = pattern(length, seed=offset + length)
    with DirectStorage(path, io_timeout=5) as storage:
        storage.write(lo, poison)
        storage.write(offset, data)
        assert storage.read(offset, length).tobytes() == data
    # An independent fd sees the same disk: the data, and untouched guards.
    with DirectStorage(path, io_timeout=5, readonly=True) as check:
        span = check.read(lo, hi - lo).tobytes()
    assert span[offset - lo:offset - lo + length] == data
    assert span[:offset - lo] == poison[:offset - lo]
    assert span[offset - lo + length:] == poison[offset - lo + length:]


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "uint8", "uint32", "slice"])
def test_write_accepts_bytes_like(lease_file: Path, kind: str) -> None:
    raw = pattern(1024, seed=3)
    data = {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "uint8": np.frombuffer(raw, dtype=np.uint8),
        "uint32": np.frombuffer(raw, dtype=np.uint32),
        "slice": np.frombuffer(raw * 2, dtype=np.uint8)[::2],  # not contiguous
    }[kind]
    expected = bytes(np.asarray(data).tobytes()) if kind == "slice" else raw
    with DirectStorage(lease_file, io_timeout=5) as storage:
        storage.write(4096, data)
        assert storage.read(4096, 1024).tobytes() == expected


def test_read_buffer_is_reused_and_read_only(lease_file: Path) -> None:
    with DirectStorage(lease_file, io_timeout=5) as storage:
        storage.write(0, b"a" * 512 + b"b" * 512)
        first = storage.read(0, 512)
        assert first.dtype == np.uint8 and first.shape == (512,)
        assert not first.flags.writeable
        assert first.ctypes.data % 4096 == 0
        second = storage.read(512, 512)
        assert second.ctypes.data == first.ctypes.data
        # Valid until the next read: the first view now shows the second read.
        assert first.tobytes() == b"b" * 512
        assert storage.reads == 2 and storage.writes == 1
        assert storage.workers_started == 1


def test_read_past_end_of_file_is_short(lease_file: Path) -> None:
    with DirectStorage(lease_file, io_timeout=5) as storage:
        with pytest.raises(errors.ShortIOError) as e:
            storage.read(16 * MiB - 512, 1024)
        assert (e.value.op, e.value.done, e.value.length) == ("read", 512, 1024)


def test_write_past_end_of_file_grows_it(lease_file: Path) -> None:
    with DirectStorage(lease_file, io_timeout=5) as storage:
        storage.write(16 * MiB, b"x" * 512)
        assert storage.size == 16 * MiB + 512


@pytest.mark.parametrize("op", ["read", "write"])
@pytest.mark.parametrize("past", [0, 1])
def test_io_past_end_of_device_is_short(loop4k: str, op: str, past: int) -> None:
    with DirectStorage(loop4k, io_timeout=5) as storage:
        offset = storage.size - 4096 + past * 4096  # straddles, or starts at, the end
        with pytest.raises(errors.ShortIOError) as e:
            if op == "read":
                storage.read(offset, 8192)
            else:
                storage.write(offset, bytes(8192))
        assert e.value.op == op
        assert e.value.done == (4096 if not past else 0)
        assert loop4k in str(e.value)


# --- alignment ------------------------------------------------------------------


def _bad_requests(ss: int) -> list[tuple[int, int, str]]:
    return [(1, ss, "offset"), (ss // 2, ss, "offset"), (-ss, ss, "offset"),
            (ss + 256, ss, "offset"), (0, 0, "length"), (0, 100, "length"),
            (ss, ss + 1, "length"), (0, -ss, "length")]


@pytest.mark.parametrize("op", ["read", "write"])
def test_misaligned_request_refused_before_syscall(target: tuple[str, int, int, bool],
                                                   op: str) -> None:
    path, ss, _, _ = target
    syscalls = CountingSyscalls()
    with DirectStorage(path, io_timeout=5, syscalls=syscalls) as storage:
        for offset, length, field in _bad_requests(ss):
            with pytest.raises(errors.AlignmentError) as e:
                if op == "read":
                    storage.read(offset, length)
                else:
                    storage.write(offset, b"\xff" * max(length, 0))
            assert e.value.field == field
            assert e.value.sector_size == ss
            sent = length if op == "read" else max(length, 0)
            assert e.value.value == (offset if field == "offset" else sent)
            assert e.value.code == -errno.EINVAL
            assert path in str(e.value) and "\n" not in str(e.value)
        assert syscalls.calls == 0
    with DirectStorage(path, io_timeout=5, readonly=True) as check:
        assert not check.read(0, 2 * MiB).any()


def test_512_aligned_write_refused_on_4k_device(loop4k: str) -> None:
    with DirectStorage(loop4k, io_timeout=5) as storage:
        with pytest.raises(errors.AlignmentError) as e:
            storage.write(512, bytes(512))
        assert (e.value.field, e.value.value, e.value.sector_size) == ("offset", 512, 4096)
        with pytest.raises(errors.AlignmentError) as e:
            storage.write(0, bytes(512))
        assert (e.value.field, e.value.value) == ("length", 512)
        assert not storage.read(0, 8192).any()


# --- open errors ------------------------------------------------------------------


def assert_one_line_naming(error: Exception, path: object) -> None:
    text = str(error)
    assert "\n" not in text
    assert text.startswith(f"{path}: "), text


def test_open_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.img"
    with pytest.raises(errors.OpenError) as e:
        DirectStorage(path, io_timeout=5)
    assert e.value.errno == errno.ENOENT
    assert not isinstance(e.value, errors.NotDirectIOCapable)
    assert_one_line_naming(e.value, path)
    assert "No such file or directory" in str(e.value)


def test_open_directory(tmp_path: Path) -> None:
    with pytest.raises(errors.OpenError) as e:
        DirectStorage(tmp_path, io_timeout=5)
    assert e.value.errno == errno.EISDIR
    assert_one_line_naming(e.value, tmp_path)


# Imports first, then drops root for good: the interpreter itself may live
# where "nobody" cannot read (e.g. under /root/.pyenv).
OPEN_AS_USER = """
import json, os, sys
from diskpaxos import errors
from diskpaxos.io_direct import DirectStorage
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
try:
    DirectStorage(sys.argv[1], io_timeout=5, readonly=sys.argv[2] == "ro").close()
    print(json.dumps({"opened": True}))
except errors.DiskpaxosError as e:
    print(json.dumps({"type": type(e).__name__, "errno": e.errno, "message": str(e)}))
"""


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_open_permission_denied(world_dir: Path, mode: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the open as another user")
    path = world_dir / "leases.img"
    path.write_bytes(bytes(4096))
    path.chmod(0o000)
    out = subprocess.run([sys.executable, "-c", OPEN_AS_USER, str(path), mode],
                         cwd=world_dir,
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["type"] == "OpenError"
    assert result["errno"] == errno.EACCES
    assert result["message"] == f"{path}: cannot open: Permission denied"


def test_open_read_write_on_read_only_filesystem(readonly_mount: Path) -> None:
    path = readonly_mount / "leases.img"
    with pytest.raises(errors.OpenError) as e:
        DirectStorage(path, io_timeout=5)
    assert e.value.errno == errno.EROFS
    assert_one_line_naming(e.value, path)
    with DirectStorage(path, io_timeout=5, readonly=True) as storage:
        assert not storage.read(0, 4096).any()
        with pytest.raises(errors.UsageError):
            storage.write(0, bytes(512))


def test_open_on_filesystem_without_direct_io(ramfs_file: Path) -> None:
    with pytest.raises(errors.NotDirectIOCapable) as e:
        DirectStorage(ramfs_file, io_timeout=5)
    assert e.value.errno == errno.EINVAL
    assert e.value.code == -errno.EINVAL
    assert_one_line_naming(e.value, ramfs_file)
    assert "O_DIRECT" in str(e.value)


def test_io_error_from_the_device(loop_device) -> None:  # type: ignore[no-untyped-def]
    device = loop_device(512, size=MiB)
    with DirectStorage(device, io_timeout=5) as storage:
        subprocess.run(["blockdev", "--setro", device], check=True, timeout=30)
        try:
            with pytest.raises(errors.IOFailed) as e:
                storage.write(0, bytes(512))
        finally:
            subprocess.run(["blockdev", "--setrw", device], check=True, timeout=30)
        assert e.value.errno == errno.EPERM
        assert (e.value.op, e.value.offset, e.value.length) == ("write", 0, 512)
        assert_one_line_naming(e.value, f"{device} offset 0")


# --- deadlines ------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_hung_read_times_out_and_its_buffer_is_abandoned(lease_file: Path) -> None:
    hang = Fault.hang(op="read", offset=4096, count=1)
    plan = FaultPlan(seed=1).add(hang)
    with DirectStorage(lease_file, io_timeout=0.3, syscalls=plan.syscalls()) as storage:
        storage.write(0, b"A" * 4096 + b"X" * 4096)
        before = storage.read(0, 4096)
        start = time.monotonic()
        with pytest.raises(errors.IOTimeout) as e:
            storage.read(4096, 4096)
        elapsed = time.monotonic() - start
        assert 0.3 <= elapsed < 0.3 + SLACK
        assert (e.value.op, e.value.offset, e.value.length, e.value.timeout) == ("read", 4096, 4096, 0.3)
        assert e.value.code == -202
        assert_one_line_naming(e.value, f"{lease_file} offset 4096")
        assert storage.abandoned_ios == 1 and storage.abandoned_in_flight == 1

        # The next read gets a new buffer and a new worker, and works.
        after = storage.read(0, 4096)
        assert after.ctypes.data != before.ctypes.data
        assert storage.workers_started == 2
        assert after.tobytes() == b"A" * 4096

        # The late completion fills the abandoned buffer, not the one we hold.
        hang.release()
        assert storage.wait_abandoned(timeout=10)
        assert storage.late_completions == 1 and storage.abandoned_in_flight == 0
        assert after.tobytes() == b"A" * 4096
        assert before.tobytes() == b"X" * 4096  # the abandoned buffer, filled late


@pytest.mark.timeout(30)
def test_per_call_timeout_overrides_io_timeout(lease_file: Path) -> None:
    plan = FaultPlan().add(Fault.hang(op="read", count=1))
    try:
        with DirectStorage(lease_file, io_timeout=60, syscalls=plan.syscalls()) as storage:
            start = time.monotonic()
            with pytest.raises(errors.IOTimeout) as e:
                storage.read(0, 512, timeout=0.2)
            assert time.monotonic() - start < 0.2 + SLACK
            assert e.value.timeout == 0.2
    finally:
        plan.release_all()


@pytest.mark.timeout(30)
def test_hung_write_lands_late_from_its_own_buffer(target: tuple[str, int, int, bool]) -> None:
    path, ss, _, _ = target
    hang = Fault.hang(op="write", offset=0, count=1)
    plan = FaultPlan().add(hang)
    with DirectStorage(path, io_timeout=0.2, syscalls=plan.syscalls()) as storage:
        start = time.monotonic()
        with pytest.raises(errors.IOTimeout):
            storage.write(0, b"L" * ss)
        assert time.monotonic() - start < 0.2 + SLACK
        # Nothing is issued while the late write may still land: it could land after it.
        start = time.monotonic()
        with pytest.raises(errors.WriteStillInFlight):
            storage.write(ss, b"N" * ss)
        assert 0.2 - SLACK < time.monotonic() - start < 0.2 + SLACK
        with pytest.raises(errors.WriteStillInFlight):
            storage.read(0, ss)
        hang.release()
        assert storage.wait_abandoned(timeout=10)
        # Then I/O goes on; the late write landed with its own data, and the next write
        # used a new buffer (the abandoned one is never reused).
        storage.write(ss, b"N" * ss)
        assert storage.read(0, 2 * ss).tobytes() == b"L" * ss + b"N" * ss
        assert storage.abandoned_writes_in_flight == 0


@pytest.mark.timeout(30)
def test_close_defers_fd_close_until_abandoned_io_completes(lease_file: Path) -> None:
    hang = Fault.hang(op="write", count=1)
    plan = FaultPlan().add(hang)
    storage = DirectStorage(lease_file, io_timeout=0.2, syscalls=plan.syscalls())
    fd = storage._fd
    try:
        with pytest.raises(errors.IOTimeout):
            storage.write(0, b"W" * 512)
        start = time.monotonic()
        storage.close()
        assert time.monotonic() - start < SLACK  # close does not wait for the disk
        assert storage.closed and not storage.fd_closed
        assert os.readlink(f"/proc/self/fd/{fd}") == str(lease_file)
        with pytest.raises(errors.UsageError):
            storage.read(0, 512)
    finally:
        hang.release()
    assert storage.wait_abandoned(timeout=10)
    assert storage.fd_closed
    with DirectStorage(lease_file, io_timeout=5, readonly=True) as check:
        assert check.read(0, 512).tobytes() == b"W" * 512


@pytest.mark.timeout(30)
def test_concurrent_caller_refused(lease_file: Path) -> None:
    hang = Fault.hang(op="read", count=1)
    plan = FaultPlan().add(hang)
    with DirectStorage(lease_file, io_timeout=5, syscalls=plan.syscalls()) as storage:
        reader = threading.Thread(target=storage.read, args=(0, 512))
        reader.start()
        try:
            deadline = time.monotonic() + 5
            while not hang.fired and time.monotonic() < deadline:
                time.sleep(0.01)
            assert hang.fired
            with pytest.raises(errors.UsageError, match="concurrent"):
                storage.read(0, 512)
        finally:
            hang.release()
            reader.join(10)
        assert storage.reads == 1


@pytest.mark.timeout(30)
def test_delay_within_deadline_completes(lease_file: Path) -> None:
    plan = FaultPlan().add(Fault.delay(0.1, op="read"))
    with DirectStorage(lease_file, io_timeout=2, syscalls=plan.syscalls()) as storage:
        start = time.monotonic()
        assert not storage.read(0, 512).any()
        assert time.monotonic() - start >= 0.1
        assert storage.abandoned_ios == 0 and storage.workers_started == 1


def test_closed_storage_refuses_io(lease_file: Path) -> None:
    storage = DirectStorage(lease_file, io_timeout=5)
    storage.read(0, 512)
    storage.close()
    storage.close()  # idempotent
    assert storage.fd_closed
    with pytest.raises(errors.UsageError, match="closed"):
        storage.write(0, bytes(512))
