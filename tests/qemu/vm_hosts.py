"""Hosts that run VMs: a real ``diskpaxos daemon`` plus a qemu-sanlock.conf-style config, and real QEMUs.

A ``VMHost`` is one host: its daemon (``DiskpaxosDaemon``, io_timeout 1) and a
config file with its host_id, auto disk leases on, and a ``disk_lease_dir``
that several hosts may share (as on NFS).  ``VM`` is one ``diskpaxos vm run
... -- qemu-system-x86_64 ...`` process: a tiny KVM guest (TCG when /dev/kvm
does not work) with no OS, a QMP socket, and the disks it is given.  It is
stopped by pid (QMP quit, then SIGKILL), whatever the test's outcome.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from daemon_hosts import DiskpaxosDaemon
from oracle import DISKPAXOS, wait_for

from diskpaxos.qemu.qmp import QMP, QMPError

QEMU = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"


def kvm_works() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


ACCEL = ["-accel", "kvm"] if kvm_works() else ["-accel", "tcg"]


def qemu_argv(qmp: Path, *disk_args: str, name: str | None = None) -> list[str]:
    """A VM with no OS: 64 MiB, no default devices, no display, a QMP socket, these disk options."""
    argv = [QEMU, *ACCEL, "-machine", "q35", "-m", "64", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{qmp},server=on,wait=off"]
    if name:
        argv += ["-name", f"guest={name},debug-threads=on"]
    return argv + list(disk_args)


def raw_image(path: Path, size: int = 4 * 1024 * 1024) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


class VMHost:
    """One host: a diskpaxos daemon and the qemu.conf that says its host_id and lease dir."""

    def __init__(self, workdir: Path, name: str, host_id: int, lease_dir: Path,
                 daemon_config: dict[str, object] | None = None, **settings: object) -> None:
        self.name = name
        self.host_id = host_id
        self.lease_dir = lease_dir
        self.daemon = DiskpaxosDaemon(workdir, name, **(daemon_config or {}))
        self.config = workdir / f"{name}-qemu.conf"
        conf = {"host_id": host_id, "auto_disk_leases": 1, "disk_lease_dir": str(lease_dir), "io_timeout": 1,
                **settings}
        self.config.write_text("".join(f"{k} = {_conf_value(v)}\n" for k, v in conf.items()))
        self.workdir = workdir
        self.vms: list[VM] = []

    @property
    def run_dir(self) -> str:
        return str(self.daemon.run_dir)

    def vm_argv(self, *args: str) -> list[str]:
        return [DISKPAXOS, "vm", "run", "--config", str(self.config), "--run-dir", self.run_dir, *args]

    def start(self, name: str, *disk_args: str, vm_options: tuple[str, ...] = (), wait: bool = True,
              qmp: Path | None = None) -> VM:
        """``vm run --name NAME [vm_options] -- QEMU ...``; with ``wait``, returns once QMP answers."""
        qmp = qmp or self.workdir / f"{name}-{self.name}-{len(self.vms)}.qmp"
        argv = self.vm_argv("--name", name, *vm_options, "--", *qemu_argv(qmp, *disk_args))
        vm = VM(argv, qmp, self.workdir / f"{name}-{self.name}-{len(self.vms)}.out")
        self.vms.append(vm)
        if wait:
            vm.wait_ready()
        return vm

    def status(self) -> dict:
        with self.daemon.api() as c:
            return c.status()

    def held_by(self, pid: int) -> list[str]:
        """The lease strings the daemon holds for pid (empty if it is not registered)."""
        for c in self.status()["clients"]:
            if c["pid"] == pid:
                return list(c["leases"])
        return []

    def stop(self) -> None:
        for vm in self.vms:
            vm.kill()
        self.daemon.stop()


def _conf_value(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(int(value))  # type: ignore[call-overload]


class VM:
    """One ``diskpaxos vm run`` process (which becomes QEMU), with its QMP socket."""

    def __init__(self, argv: list[str], qmp: Path, out: Path) -> None:
        self.argv = argv
        self.qmp_path = qmp
        self.out_path = out
        self._out = open(out, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def output(self) -> str:
        self._out.flush()
        return self.out_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until QEMU's QMP answers (the wrapper has exec'd QEMU); fails if the process exits first."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"vm run exited {self.proc.returncode}: {self.output()}")
            if not self.qmp_path.exists():
                return False
            try:
                with QMP(str(self.qmp_path), timeout=5) as q:
                    q.status()
                return True
            except QMPError:
                return False
        wait_for(ready, timeout, f"QEMU pid {self.pid} to answer on {self.qmp_path}")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def qmp(self) -> QMP:
        return QMP(str(self.qmp_path), timeout=30)

    def cmdline(self) -> str:
        try:
            return Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    def quit(self, timeout: float = 30) -> int:
        """QMP quit, and wait for the process."""
        with contextlib.suppress(QMPError), self.qmp() as q:
            q.execute("quit")
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL by pid (Popen reaps it, so the pid is never reused meanwhile) and wait."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._out.close()
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
