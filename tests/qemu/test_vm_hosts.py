"""Two hosts sharing one disk_lease_dir and one disk image, real QEMU, real daemons (io_timeout 1).

- scenario 2: a VM on host 1 blocks the same VM on host 2, whose one-line refusal names
  host 1 as storage records it; once it stops, host 2 runs it;
- scenario 3: live migration host 1 -> host 2 over QMP with the strict handover: the
  destination holds nothing until the source has stopped and released, then acquires
  with the source's lver; a poller on both daemons never sees two holders; a
  destination that cannot take the lease leaves the source running with its lease; a
  lease taken by somebody else in the gap (the lver moved) leaves nobody running;
- scenario 6: compatibility with libvirt's sanlock driver: a sanlock daemon holding the
  lease libvirt would take for a disk path (files created as libvirt creates them)
  blocks ``vm run`` on another host, and a running diskpaxos VM blocks sanlock.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest
from daemon_hosts import sanlock_client, sanlock_try
from oracle import DISKPAXOS, run, wait_for

from diskpaxos.qemu.migrate import MigrationError, migrate

pytestmark = pytest.mark.timeout(300)

LS = "__LIBVIRT__DISKS__"
SANLK_ACQUIRE_IDLIVE = -243


def md5(path: str) -> str:
    return hashlib.md5(path.encode()).hexdigest()


def drive(path: Path) -> list[str]:
    return ["-drive", f"file={path},if=virtio,format=raw"]


def lease_of(disk: Path, lease_dir: Path) -> str:
    return f"{LS}:{md5(str(disk))}:{lease_dir}/{md5(str(disk))}:0"


def test_vm_on_host1_blocks_host2_until_it_stops(vm_host, disk: Path) -> None:
    h1, h2 = vm_host("h1", 1), vm_host("h2", 2)
    a = h1.start("vmA", *drive(disk))
    b = h2.start("vmA", *drive(disk), wait=False)
    assert b.wait_exit(90) != 0
    h1_name = next(h["name"] for h in h1.daemon.api().host_status(LS) if h["host_id"] == 1)
    [line] = b.output().strip().splitlines()
    assert line.startswith(f"diskpaxos: disk image {disk} is already in use on host ID 1 '{h1_name}' "), line
    assert a.quit() == 0
    wait_for(lambda: not h1.held_by(a.pid), 10, "host 1 to release A's lease")
    b2 = h2.start("vmA", *drive(disk))
    assert h2.held_by(b2.pid)[0].startswith(lease_of(disk, h2.lease_dir) + ":")


class HolderPoller:
    """Samples both daemons' holders of one lease every few ms, from a thread."""

    def __init__(self, hosts, lease: str) -> None:  # type: ignore[no-untyped-def]
        self.hosts, self.lease = hosts, lease
        self.samples: list[tuple[float, list[int]]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        clients = [h.daemon.api() for h in self.hosts]
        while not self._stop.is_set():
            holders = []
            for c in clients:
                for cl in c.status()["clients"]:
                    if any(text.startswith(self.lease + ":") for text in cl["leases"]):
                        holders.append(cl["pid"])
            self.samples.append((time.monotonic(), holders))
            time.sleep(0.003)
        for c in clients:
            c.close()

    def stop(self) -> list[tuple[float, list[int]]]:
        self._stop.set()
        self.thread.join(10)
        return self.samples


def _source_and_destination(h1, h2, disk: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    src = h1.start("vmA", *drive(disk))
    dst = h2.start("vmA", *drive(disk), vm_options=("--incoming", f"unix:{tmp_path}/mig.sock"))
    assert h2.held_by(dst.pid) == [], "the destination holds a lease before the handover"
    with dst.qmp() as q:
        assert q.status() == "inmigrate"
    assert "-S" in dst.cmdline().split()
    return src, dst


def test_live_migration_hands_the_lease_over(vm_host, disk: Path, tmp_path: Path) -> None:
    h1, h2 = vm_host("h1", 1), vm_host("h2", 2)
    src, dst = _source_and_destination(h1, h2, disk, tmp_path)
    [before] = h1.held_by(src.pid)
    lver = int(before.rsplit(":", 1)[1])
    poller = HolderPoller([h1, h2], lease_of(disk, h1.lease_dir))
    got = run([DISKPAXOS, "vm", "migrate", "--from", str(src.qmp_path), "--to", str(dst.qmp_path),
               "--from-run-dir", h1.run_dir, "--to-run-dir", h2.run_dir], timeout=120)
    samples = poller.stop()
    assert got.returncode == 0, got
    assert f"VM 'vmA' now runs as pid {dst.pid}" in got.stdout
    assert src.wait_exit(30) == 0
    with dst.qmp() as q:
        assert q.status() == "running"
    assert h2.held_by(dst.pid) == [f"{lease_of(disk, h1.lease_dir)}:{lver + 1}"]
    status = run([DISKPAXOS, "vm", "status", "--run-dir", h2.run_dir]).stdout
    assert f"VM 'vmA' pid {dst.pid}\n" in status and f"held, lver {lver + 1}" in status, status
    # never two holders; the source held it first, the destination last
    assert samples and all(len(holders) <= 1 for _, holders in samples), \
        [s for s in samples if len(s[1]) > 1][:3]
    assert samples[0][1] == [src.pid] and samples[-1][1] == [dst.pid]
    order = [holders[0] for _, holders in samples if holders]
    assert order == sorted(order, key=lambda pid: pid == dst.pid), "the lease went back and forth"


def test_destination_without_the_lease_leaves_the_source_running(vm_host, disk: Path, tmp_path: Path) -> None:
    h1, h2 = vm_host("h1", 1), vm_host("h2", 2)
    src, dst = _source_and_destination(h1, h2, disk, tmp_path)
    [before] = h1.held_by(src.pid)
    with h2.daemon.api() as c:  # the destination host loses its lockspace: it cannot acquire
        c.rem_lockspace(f"{LS}:2:{h2.lease_dir}/{LS}:0")
    got = run([DISKPAXOS, "vm", "migrate", "--from", str(src.qmp_path), "--to", str(dst.qmp_path),
               "--from-run-dir", h1.run_dir, "--to-run-dir", h2.run_dir], timeout=120)
    assert got.returncode != 0
    [line] = got.stderr.strip().splitlines()
    assert "the destination could not take the leases" in line and "the source took them back and runs on" in line
    with src.qmp() as q:
        assert q.status() == "running"
    # taken back with the lver it released (nobody had it meanwhile), so the new version is the next one
    lease, lver = before.rsplit(":", 1)
    assert h1.held_by(src.pid) == [f"{lease}:{int(lver) + 1}"]
    assert dst.wait_exit(30) == 0


def test_lease_taken_in_the_gap_leaves_nobody_running(vm_host, disk: Path, tmp_path: Path) -> None:
    """Stricter than libvirt: the destination acquires with the source's lver, so a lease that
    somebody took (and even gave back) in the gap fails the handover; the source cannot take it
    back either, and stays paused."""
    h1, h2 = vm_host("h1", 1), vm_host("h2", 2)
    src, dst = _source_and_destination(h1, h2, disk, tmp_path)
    [before] = h1.held_by(src.pid)
    lease = lease_of(disk, h1.lease_dir)

    def intruder(released: list[str]) -> None:
        assert released == [before]
        code, _ = h2.daemon.try_acquire(lease)  # acquire and release at once: the lver moves on
        assert code == 0

    with pytest.raises(MigrationError) as info:
        migrate(str(src.qmp_path), str(dst.qmp_path), source_run_dir=h1.run_dir, destination_run_dir=h2.run_dir,
                on_released=intruder)
    assert "the VM stays paused on the source, nobody runs it" in str(info.value)
    with src.qmp() as q:
        assert q.status() == "postmigrate"
    assert h1.held_by(src.pid) == [] and h2.held_by(dst.pid) == []
    assert dst.wait_exit(30) == 0


def _libvirt_files(sanlock_bin: str, lease_dir: Path, disk: Path) -> str:
    """Create the lockspace and lease files as libvirt's plugin does (1 MiB of zeros, sanlock's init)."""
    ls_path, lease_path = lease_dir / LS, lease_dir / md5(str(disk))
    for path in (ls_path, lease_path):
        with open(path, "wb") as f:
            f.write(b"\0" * 1024 * 1024)
    assert run([sanlock_bin, "direct", "init", "-s", f"{LS}:0:{ls_path}:0", "-o", "1"]).returncode == 0
    assert run([sanlock_bin, "direct", "init", "-r", f"{LS}:{md5(str(disk))}:{lease_path}:0"]).returncode == 0
    return f"{LS}:{md5(str(disk))}:{lease_path}:0"


@pytest.mark.interop
def test_libvirt_sanlock_host_and_diskpaxos_host_exclude_each_other(vm_host, disk: Path, lease_dir: Path,
                                                                    sanlock_bin: str, sanlock_daemon) -> None:
    resource = _libvirt_files(sanlock_bin, lease_dir, disk)
    sl = sanlock_daemon(host_name="libvirt-host-1")
    got = sanlock_client(sanlock_bin, sl, "add_lockspace", "-s", f"{LS}:1:{lease_dir}/{LS}:0", "-o", "1")
    assert got.returncode == 0, got
    # what libvirt does for a running VM: the QEMU pid holds the disk's lease (here: sleep)
    holder = sanlock_client_command(sanlock_bin, sl, resource)
    try:
        h2 = vm_host("h2", 2)
        b = h2.start("vmA", *drive(disk), wait=False)
        assert b.wait_exit(90) != 0
        [line] = b.output().strip().splitlines()
        assert f"disk image {disk} is already in use on host ID 1 'libvirt-host-1'" in line, line
    finally:
        holder.kill()
        holder.wait(10)
    wait_for(lambda: "p " + str(holder.pid) not in sanlock_client(sanlock_bin, sl, "status").stdout, 10,
             "sanlock to drop the dead holder")
    vm = h2.start("vmA", *drive(disk))
    assert h2.held_by(vm.pid)
    sanlock_refused_while_vm_runs(sanlock_bin, sl, resource, h2, vm)
    sanlock_client(sanlock_bin, sl, "rem_lockspace", "-s", f"{LS}:1:{lease_dir}/{LS}:0", timeout=30)


@pytest.mark.interop
def test_diskpaxos_created_files_serve_a_sanlock_host(vm_host, disk: Path, lease_dir: Path, sanlock_bin: str,
                                                      sanlock_daemon) -> None:
    """The other order: diskpaxos creates the files on first use; a sanlock host uses them as libvirt would."""
    h1 = vm_host("h1", 1)
    vm = h1.start("vmA", *drive(disk))
    sl = sanlock_daemon(host_name="libvirt-host-2")
    got = sanlock_client(sanlock_bin, sl, "add_lockspace", "-s", f"{LS}:2:{lease_dir}/{LS}:0", "-o", "1")
    assert got.returncode == 0, got
    sanlock_refused_while_vm_runs(sanlock_bin, sl, lease_of(disk, lease_dir), h1, vm)
    sanlock_client(sanlock_bin, sl, "rem_lockspace", "-s", f"{LS}:2:{lease_dir}/{LS}:0", timeout=30)


def sanlock_refused_while_vm_runs(sanlock_bin: str, sl, resource: str, host, vm) -> None:  # type: ignore[no-untyped-def]
    """sanlock's acquire of the VM's disk lease fails (-243) while the VM runs, and succeeds once it quit
    and its daemon released the lease (the daemon sees the exit through a pidfd, a few ms later)."""
    code, _ = sanlock_try(sanlock_bin, sl, resource)
    assert code == SANLK_ACQUIRE_IDLIVE
    assert vm.quit() == 0
    wait_for(lambda: not any(c["pid"] == vm.pid for c in host.status()["clients"]), 10,
             "the daemon to release the VM's lease")
    code, _ = sanlock_try(sanlock_bin, sl, resource)
    assert code == 0


def sanlock_client_command(sanlock_bin: str, daemon, resource: str):  # type: ignore[no-untyped-def]
    import subprocess
    proc = subprocess.Popen([sanlock_bin, "client", "command", "-r", resource, "-c", "/bin/sleep", "600"],
                            env=daemon.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: f"p {proc.pid}" in sanlock_client(sanlock_bin, daemon, "status").stdout and
             resource.split(":")[1] in sanlock_client(sanlock_bin, daemon, "status").stdout, 30,
             "sanlock to hold the lease for the holder")
    return proc

