"""Fixtures for real storage and the real sanlock.

A fixture that cannot provide its real component skips the test with the
reason, except under ``DISKPAXOS_REQUIRE_INTEROP=1`` (CI), where a missing
sanlock, loop device or direct-I/O capable filesystem is a failure: a green
run must mean the interop tests really ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REQUIRE_INTEROP = os.environ.get("DISKPAXOS_REQUIRE_INTEROP") == "1"
SYSTEM_PYTHON = "/usr/bin/python3"


def unavailable(reason: str) -> None:
    """Skip, or fail when interop is required; called when a real component is missing."""
    if REQUIRE_INTEROP:
        pytest.fail(f"DISKPAXOS_REQUIRE_INTEROP=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def lease_file(tmp_path: Path) -> Path:
    """A 16 MiB sparse regular file on a filesystem that supports O_DIRECT."""
    path = tmp_path / "leases.img"
    with open(path, "wb") as f:
        f.truncate(16 * 1024**2)
    return path


def _losetup_attach(backing: Path, sector_size: int) -> str:
    out = subprocess.run(
        ["losetup", "-f", "--show", "--direct-io=on", f"--sector-size={sector_size}", str(backing)],
        check=True, capture_output=True, text=True, timeout=30,
    )
    return out.stdout.strip()


def _losetup_detach(device: str) -> None:
    subprocess.run(["losetup", "-d", device], check=False, capture_output=True, timeout=30)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: ``loop_device(sector_size, size=64 MiB)`` attaches a loop device
    over a sparse file; every device it made is detached after the test, pass or fail."""
    if os.geteuid() != 0 or shutil.which("losetup") is None or not os.path.exists("/dev/loop-control"):
        unavailable("loop devices need root, losetup and /dev/loop-control")
    attached: list[str] = []

    def make(sector_size: int, size: int = 64 * 1024**2) -> str:
        backing = tmp_path / f"loop{len(attached)}-{sector_size}.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        try:
            device = _losetup_attach(backing, sector_size)
        except subprocess.CalledProcessError as e:
            unavailable(f"losetup failed: {e.stderr.strip()}")
        attached.append(device)
        return device

    yield make
    for device in attached:
        _losetup_detach(device)


@pytest.fixture
def loop512(loop_device: Callable[..., str]) -> str:
    return loop_device(512)


@pytest.fixture
def loop4k(loop_device: Callable[..., str]) -> str:
    return loop_device(4096)


@pytest.fixture(scope="session")
def sanlock_bin() -> str:
    """Path of the real sanlock binary (Debian's), the oracle for the format."""
    path = shutil.which("sanlock") or ("/usr/sbin/sanlock" if os.path.exists("/usr/sbin/sanlock") else None)
    if path is None:
        unavailable("the real sanlock is not installed (apt-get install sanlock)")
    return path


@pytest.fixture(scope="session")
def sanlock_python() -> str:
    """An interpreter that imports python3-sanlock (Debian's binding, for the system python)."""
    if not os.path.exists(SYSTEM_PYTHON):
        unavailable(f"{SYSTEM_PYTHON} is missing")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sanlock"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        unavailable("python3-sanlock is not installed (apt-get install python3-sanlock)")
    return SYSTEM_PYTHON


@pytest.fixture
def shm_file() -> Iterator[Path]:
    """A file on tmpfs, which refuses O_DIRECT at open (EINVAL)."""
    if not os.path.isdir("/dev/shm"):
        unavailable("/dev/shm (tmpfs) is missing")
    fd, name = tempfile.mkstemp(dir="/dev/shm", prefix="diskpaxos-test-")
    os.ftruncate(fd, 16 * 1024**2)
    os.close(fd)
    yield Path(name)
    os.unlink(name)
