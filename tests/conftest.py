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
    """Detach, read-write again first: a loop device's read-only flag outlives the detach, and the
    next test to attach that device node would find it read-only (``blockdev --setro`` tests)."""
    subprocess.run(["blockdev", "--setrw", device], check=False, capture_output=True, timeout=30)
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
def qemu_bin() -> str:
    """The real qemu-system-x86_64 (Debian's qemu-system-x86), for the VM front end's tests."""
    return _tool("qemu-system-x86_64", "qemu-system-x86")


@pytest.fixture(scope="session")
def qemu_img() -> str:
    """The real qemu-img (Debian's qemu-utils), for images with backing files."""
    return _tool("qemu-img", "qemu-utils")


@pytest.fixture(scope="session")
def sanlock_python() -> str:
    """An interpreter that imports python3-sanlock (Debian's binding, for the system python)."""
    if not os.path.exists(SYSTEM_PYTHON):
        unavailable(f"{SYSTEM_PYTHON} is missing")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import sanlock"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        unavailable("python3-sanlock is not installed (apt-get install python3-sanlock)")
    return SYSTEM_PYTHON


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed (apt-get install {package}; make test installs it when root)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def fio_bin() -> str:
    """fio: the independent measure of the I/O ``bench storage`` times."""
    return _tool("fio", "fio")


@pytest.fixture(scope="session")
def strace_bin() -> str:
    """strace: ``bench compare`` times sanlock's renewals with it."""
    return _tool("strace", "strace")


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp dirs are private to root), for running
    commands as another user; removed after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run commands as another user")
    path = Path(tempfile.mkdtemp(prefix="diskpaxos-test-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ramfs_file(tmp_path: Path) -> Iterator[Path]:
    """A file on a private ramfs mount, which refuses O_DIRECT at open (EINVAL).

    tmpfs accepts O_DIRECT since Linux 6.6; ramfs still refuses it.
    """
    if os.geteuid() != 0 or shutil.which("mount") is None:
        unavailable("mounting ramfs needs root and mount")
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mountpoint)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        unavailable(f"cannot mount ramfs: {mounted.stderr.strip()}")
    try:
        path = mountpoint / "leases.img"
        with open(path, "wb") as f:
            f.truncate(1024**2)
        yield path
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)


@pytest.fixture
def readonly_mount(tmp_path: Path) -> Iterator[Path]:
    """A directory holding ``leases.img`` (1 MiB), bind-mounted read-only: opening
    the file for writing fails with EROFS while reading works."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        unavailable("bind mounts need root and mount")
    source = tmp_path / "rw"
    source.mkdir()
    with open(source / "leases.img", "wb") as f:
        f.truncate(1024**2)
    target = tmp_path / "ro"
    target.mkdir()
    for args in (["--bind", str(source), str(target)], ["-o", "remount,ro,bind", str(target)]):
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True, timeout=30)
            unavailable(f"cannot make a read-only bind mount: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True, timeout=30)


class SanlockDaemon:
    """A real sanlock daemon, unprivileged, in its own run dir: one "host".

    Started by the fixtures below and stopped by pid (its helper process too),
    whatever the test's outcome.
    """

    def __init__(self, sanlock_bin: str, run_dir: Path, host_name: str | None = None) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, SANLOCK_RUN_DIR=str(run_dir), SANLOCK_PRIVILEGED="0")
        argv = [sanlock_bin, "daemon", "-D", "-w", "0"]
        if host_name:
            argv += ["-e", host_name]
        self.log_path = run_dir / "daemon.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        import time
        deadline = time.monotonic() + 10
        while not (run_dir / "sanlock.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sanlock daemon did not start: {self.log_path.read_text()}")
            time.sleep(0.02)

    def _children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]

    def stop(self) -> None:
        import signal
        import time
        helpers = self._children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in helpers:
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            if os.path.exists(f"/proc/{pid}"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


@pytest.fixture(scope="session")
def sanlock_reader(sanlock_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SanlockDaemon]:
    """One sanlock daemon per test session: python3-sanlock's read_* calls go through it."""
    daemon = SanlockDaemon(sanlock_bin, tmp_path_factory.mktemp("sanlock-reader"))
    yield daemon
    daemon.stop()


@pytest.fixture
def sanlock_daemon(sanlock_bin: str, tmp_path: Path) -> Iterator[Callable[..., SanlockDaemon]]:
    """Factory: ``sanlock_daemon(host_name=None)`` starts one more sanlock "host"."""
    started: list[SanlockDaemon] = []

    def start(host_name: str | None = None) -> SanlockDaemon:
        daemon = SanlockDaemon(sanlock_bin, tmp_path / f"sanlock-run{len(started)}", host_name)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
