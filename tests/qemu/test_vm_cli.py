"""The VM front end's commands as an admin meets them: ``diskpaxos-qemu`` as libvirt's
<emulator>, and bad input (one line naming what is wrong, a non-zero exit, no QEMU started,
nothing created in the lease dir)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from oracle import DISKPAXOS, run, wait_for
from vm_hosts import QEMU, qemu_argv

pytestmark = pytest.mark.timeout(180)

WRAPPER = os.path.join(os.path.dirname(DISKPAXOS), "diskpaxos-qemu")


def drive(path: Path, *extra: str) -> list[str]:
    return ["-drive", ",".join([f"file={path}", "if=virtio", "format=raw", *extra])]


def wrapper_env(host, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return dict(os.environ, DISKPAXOS_QEMU_CONF=str(host.config), DISKPAXOS_RUN_DIR=host.run_dir,
                PATH=f"{os.path.dirname(DISKPAXOS)}:{os.environ.get('PATH', '/usr/bin:/bin')}", **extra)


def test_wrapper_runs_the_real_emulator_as_the_lease_holder(vm_host, disk: Path, tmp_path: Path) -> None:
    host = vm_host("h1", 1)
    qmp = tmp_path / "w.qmp"
    out = open(tmp_path / "w.out", "wb")
    proc = subprocess.Popen([WRAPPER, *qemu_argv(qmp, *drive(disk), name="vmW")[1:]], env=wrapper_env(host),
                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: host.held_by(proc.pid), 60, "the wrapper's QEMU to hold the lease")
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        assert os.path.samefile(exe, QEMU), exe  # the real emulator, in the registered pid
        [client] = [c for c in host.status()["clients"] if c["pid"] == proc.pid]
        assert client["name"] == "vmW"  # from QEMU's -name guest=..., as libvirt passes it
        again = subprocess.run([WRAPPER, *qemu_argv(tmp_path / "x.qmp", *drive(disk))[1:]], env=wrapper_env(host),
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 1
        assert again.stderr.splitlines() == [f"diskpaxos-qemu: disk image {disk} is already in use by VM 'vmW' "
                                             f"(pid {proc.pid}) on host ID 1 "
                                             f"'{host.daemon.api().host_status('__LIBVIRT__DISKS__')[0]['name']}'"]
    finally:
        proc.kill()
        proc.wait(30)
        out.close()


def test_wrapper_passes_probes_through_without_config(tmp_path: Path, qemu_bin: str) -> None:
    """libvirt runs its emulator with -version, -help and -machine none to learn its capabilities."""
    env = dict(os.environ, DISKPAXOS_QEMU_CONF=str(tmp_path / "missing.conf"),
               PATH=f"{os.path.dirname(DISKPAXOS)}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    got = subprocess.run([WRAPPER, "-version"], env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and got.stdout.startswith("QEMU emulator version"), got
    got = subprocess.run([WRAPPER, "-drive", "file=/x.img"], env=env, capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and str(tmp_path / "missing.conf") in got.stderr


def _lease_dir_listing(lease_dir: Path) -> list[str]:
    return sorted(p.name for p in lease_dir.iterdir())


@pytest.mark.parametrize("conf, code, message", [
    ("auto_disk_leases = 1\n", 2, "host_id"),
    ("host_id = 1\nhost_idd = 2\n", 2, "host_idd"),
    ("host_id = 2001\n", 2, "host_id"),
    ("host_id = 1\nauto_disk_leases = 1\ndisk_lease_dir = \"/nonexistent/sanlock\"\n", 2,
     "disk_lease_dir /nonexistent/sanlock: does not exist or is not a directory"),
    ("host_id = 1\n", 2, "Read/write, exclusive access, disks were present, but no leases specified"),
])
def test_bad_config(vm_host, disk: Path, lease_dir: Path, tmp_path: Path, conf: str, code: int,
                    message: str) -> None:
    host = vm_host("h1", 1)
    path = tmp_path / "bad.conf"
    path.write_text(conf)
    got = run([DISKPAXOS, "vm", "run", "--config", str(path), "--run-dir", host.run_dir, "--",
               *qemu_argv(tmp_path / "q.qmp", *drive(disk))])
    assert got.returncode == code, got
    [line] = got.stderr.splitlines()
    assert message in line and got.stdout == ""
    assert _lease_dir_listing(lease_dir) == [] and not (tmp_path / "q.qmp").exists()  # QEMU never started


@pytest.mark.parametrize("extra, qemu_extra, code, message", [
    (["--lease", "LS:KEY"], [], 2, "LS:KEY"),
    (["--name", "x" * 49], [], 2, "longer than 48 bytes"),
    ([], ["-readconfig", "/etc/vm.cfg"], 2, "-readconfig"),
    (["--incoming", "defer"], ["-incoming", "tcp:0:4444"], 2, "-incoming"),
    ([], ["-drive", "file=relative.img,if=virtio,format=raw"], 2,
     "disk image 'relative.img' is a relative path: give its absolute path"),
])
def test_bad_arguments(vm_host, disk: Path, lease_dir: Path, tmp_path: Path, extra: list[str],
                       qemu_extra: list[str], code: int, message: str) -> None:
    host = vm_host("h1", 1)
    got = run([*host.vm_argv(*extra), "--", *qemu_argv(tmp_path / "q.qmp", *drive(disk), *qemu_extra)])
    assert got.returncode == code, got
    [line] = got.stderr.splitlines()
    assert message in line
    assert _lease_dir_listing(lease_dir) == [] and not (tmp_path / "q.qmp").exists()


def test_no_daemon(vm_host, disk: Path, lease_dir: Path, tmp_path: Path) -> None:
    host = vm_host("h1", 1)
    got = run([DISKPAXOS, "vm", "run", "--config", str(host.config), "--run-dir", str(tmp_path / "norun"), "--",
               *qemu_argv(tmp_path / "q.qmp", *drive(disk))])
    assert got.returncode == 1
    assert got.stderr.splitlines() == [f"diskpaxos: cannot reach the daemon at {tmp_path}/norun/diskpaxos.sock: "
                                       "No such file or directory"]
    assert _lease_dir_listing(lease_dir) == []
    got = run([DISKPAXOS, "vm", "status", "--run-dir", str(tmp_path / "norun")])
    assert got.returncode == 1 and len(got.stderr.splitlines()) == 1


def test_emulator_that_cannot_run_leaves_no_lease(vm_host, disk: Path, tmp_path: Path) -> None:
    host = vm_host("h1", 1)
    got = run([*host.vm_argv("--name", "vmX"), "--", str(tmp_path / "no-such-qemu"), *drive(disk)])
    assert got.returncode == 1
    assert got.stderr.splitlines() == [f"diskpaxos: {tmp_path}/no-such-qemu: cannot execute: No such file or directory"]
    wait_for(lambda: not host.status()["clients"], 10, "the failed VM's registration and lease to go")


def test_migrate_refuses_what_vm_run_did_not_start(vm_host, disk: Path, tmp_path: Path, qemu_bin: str) -> None:
    host = vm_host("h1", 1)
    plain_qmp = tmp_path / "plain.qmp"
    plain = subprocess.Popen(qemu_argv(plain_qmp, *drive(disk, "readonly=on")), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(plain_qmp.exists, 30, "plain QEMU's QMP socket")
        vm = host.start("vmA", *drive(disk, "readonly=on"))
        got = run([DISKPAXOS, "vm", "migrate", "--from", str(plain_qmp), "--to", str(vm.qmp_path),
                   "--from-run-dir", host.run_dir])
        assert got.returncode == 1
        [line] = got.stderr.splitlines()
        assert f"the source QEMU (pid {plain.pid}, QMP {plain_qmp}) was not started by 'diskpaxos vm run'" in line
        got = run([DISKPAXOS, "vm", "migrate", "--from", str(vm.qmp_path), "--to", str(tmp_path / "none.qmp"),
                   "--from-run-dir", host.run_dir])
        assert got.returncode == 1
        assert got.stderr.splitlines() == [f"diskpaxos: QMP {tmp_path}/none.qmp: cannot connect: "
                                           "No such file or directory"]
        with vm.qmp() as q:
            assert q.status() == "running"  # refusals touch nothing
    finally:
        plain.kill()
        plain.wait(30)
