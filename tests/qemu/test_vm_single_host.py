"""One host, real QEMU: the VM lock manager's first promise, and what the admin sees.

- VM A runs with extra.img; VM B with the same disk is refused in one line naming the
  disk, A's name, pid and host, before QEMU exists (no QEMU process, no open of the
  image); once A stops, B starts (scenario 1).
- Leases live exactly as long as QEMU: ``vm run`` execs QEMU in its own pid, so the
  daemon's holder *is* QEMU; killing whatever started it changes nothing, and the
  lease goes the moment QEMU dies (scenario 4, management failure).
- Shareable disks take a shared lease (two VMs run), a writable user is refused while
  shareable users run; read-only disks take no lease (scenario 5).
- Lease files are named and initialised exactly as libvirt's sanlock driver does, and
  ``vm status`` shows VMs, disks, leases and lvers.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from oracle import DISKPAXOS, run, wait_for
from vm_hosts import QEMU, qemu_argv, raw_image, wait_gone

from diskpaxos import direct
from diskpaxos.timeouts import Timeouts

T = Timeouts(1)  # warn 6 s, fail 8 s after the last good renewal

pytestmark = pytest.mark.timeout(180)

LS = "__LIBVIRT__DISKS__"


def md5(path: str) -> str:
    return hashlib.md5(path.encode()).hexdigest()


def drive(path: Path, *extra: str) -> list[str]:
    return ["-drive", ",".join([f"file={path}", "if=virtio", "format=raw", *extra])]


def qemu_pids_with(path: Path) -> list[int]:
    """QEMU processes that have ``path`` open (from /proc/*/fd)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if "qemu" not in exe:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    found.append(int(pid))
                    break
            except OSError:
                continue
    return found


def test_second_start_is_refused_until_the_first_stops(vm_host, disk: Path, lease_dir: Path) -> None:
    host = vm_host("h1", 1)
    a = host.start("vmA", *drive(disk))
    # the lease holder is QEMU itself: same pid, exec'd
    assert a.cmdline().startswith(QEMU)
    [lease] = host.held_by(a.pid)
    assert lease == f"{LS}:{md5(str(disk))}:{lease_dir}/{md5(str(disk))}:0:1"

    b = host.start("vmB", *drive(disk), wait=False)
    rc = b.wait_exit(60)
    lines = b.output().strip().splitlines()
    assert rc != 0
    host_name = next(h["name"] for h in host.daemon.api().host_status(LS) if h["host_id"] == 1)
    assert lines == [f"diskpaxos: disk image {disk} is already in use by VM 'vmA' (pid {a.pid}) "
                     f"on host ID 1 '{host_name}'"]
    # QEMU never started for B: only A's QEMU has the image open
    assert qemu_pids_with(disk) == [a.pid]

    assert a.quit() == 0
    wait_for(lambda: not host.held_by(a.pid), 10, "A's lease to go")
    b2 = host.start("vmB", *drive(disk))
    assert host.held_by(b2.pid) == [f"{LS}:{md5(str(disk))}:{lease_dir}/{md5(str(disk))}:0:2"]


def test_lease_files_are_libvirts(vm_host, disk: Path, lease_dir: Path, sanlock_bin: str) -> None:
    """The lockspace and lease files are what libvirt creates, as the real sanlock reads them."""
    host = vm_host("h1", 1)
    vm = host.start("vmA", *drive(disk))
    lease_path = lease_dir / md5(str(disk))
    assert sorted(p.name for p in lease_dir.iterdir()) == sorted([LS, md5(str(disk))])  # no temporary left
    assert lease_path.stat().st_size == 1024 * 1024 and (lease_path.stat().st_mode & 0o777) == 0o600
    dump = run([sanlock_bin, "direct", "dump", str(lease_path)]).stdout
    assert f"{LS} {md5(str(disk))}" in " ".join(dump.split()), dump
    ls = direct.read_leader(str(lease_dir / LS), 0, kind="lockspace", host_id=1, space_name=LS)
    assert ls.error is None and ls.record.io_timeout == 1
    vm.quit()


def test_management_failure_keeps_the_lease_with_qemu(vm_host, disk: Path, tmp_path: Path) -> None:
    """Whatever started the VM is killed and its state deleted: QEMU keeps its lease; a new start
    fails; killing the orphaned QEMU frees the disk."""
    host = vm_host("h1", 1)
    qmp = tmp_path / "mgr.qmp"
    state = tmp_path / "manager-state"
    state.mkdir()
    # a "management daemon": a shell that starts the VM in the background and records it
    argv = host.vm_argv("--name", "vmA", "--", *qemu_argv(qmp, *drive(disk)))
    manager = subprocess.Popen(["sh", "-c", '"$@" >"$STATE/vm.out" 2>&1 & echo $! >"$STATE/vm.pid"; sleep 600',
                                "manager", *argv], env=dict(os.environ, STATE=str(state)),
                               start_new_session=False)
    try:
        pid = int(wait_for(lambda: (state / "vm.pid").exists() and (state / "vm.pid").read_text().strip(), 30,
                           "the manager to start the VM"))
        wait_for(lambda: host.held_by(pid), 60, "the VM to hold its lease")
        manager.send_signal(signal.SIGKILL)
        manager.wait(10)
        for f in state.iterdir():
            f.unlink()
        state.rmdir()
        time.sleep(0.5)
        assert os.path.exists(f"/proc/{pid}") and host.held_by(pid), "QEMU or its lease went with its manager"

        again = host.start("vmA", *drive(disk), wait=False)
        assert again.wait_exit(60) != 0
        assert f"is already in use by VM 'vmA' (pid {pid})" in again.output()

        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        wait_for(lambda: not any(c["pid"] == pid for c in host.status()["clients"]), 10, "the orphan's lease to go")
        ok = host.start("vmA", *drive(disk))
        assert host.held_by(ok.pid)
    finally:
        if manager.poll() is None:
            manager.kill()
            manager.wait(10)
        pid_file = state / "vm.pid"
        if pid_file.exists():  # the orphan, if the test failed before killing it
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


def test_shareable_and_readonly_disks(vm_host, disk: Path, tmp_path: Path, lease_dir: Path) -> None:
    host = vm_host("h1", 1)
    ro = raw_image(tmp_path / "iso.img")
    shared_dev = ["-drive", f"file={disk},if=none,id=d0,format=raw", "-device", "virtio-blk-pci,drive=d0,share-rw=on"]
    s1 = host.start("s1", *shared_dev)
    s2 = host.start("s2", *shared_dev)
    name = md5(str(disk))
    for vm in (s1, s2):
        assert host.held_by(vm.pid) == [f"{LS}:{name}:{lease_dir}/{name}:0:SH"]
    # a writable (exclusive) user is refused while shareable users run
    w = host.start("writer", *drive(disk), wait=False)
    assert w.wait_exit(60) != 0
    out = w.output().strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"diskpaxos: disk image {disk} is already in use by VM 's"), out
    assert "(shared)" in out[0]
    # read-only disks take no lease, and do not block each other
    r1 = host.start("r1", *drive(ro, "readonly=on"))
    r2 = host.start("r2", *drive(ro, "readonly=on"))
    assert host.held_by(r1.pid) == [] and host.held_by(r2.pid) == []
    assert not (lease_dir / md5(str(ro))).exists()
    # once the shareable users are gone the writer runs
    s1.quit()
    s2.quit()
    wait_for(lambda: not host.held_by(s1.pid) and not host.held_by(s2.pid), 10, "shared leases to go")
    w2 = host.start("writer", *drive(disk))
    [held] = host.held_by(w2.pid)
    assert held.startswith(f"{LS}:{name}:{lease_dir}/{name}:0:") and held.rsplit(":", 1)[1].isdigit()

    # vm status shows it all
    got = run([DISKPAXOS, "vm", "status", "--json", "--run-dir", host.run_dir])
    assert got.returncode == 0, got
    status = json.loads(got.stdout)
    by_name = {v["name"]: v for v in status["vms"]}
    assert set(by_name) >= {"writer", "r1", "r2"}
    [d] = by_name["writer"]["disks"]
    assert d["path"] == str(disk) and d["mode"] == "exclusive" and d["held"] and d["lver"] >= 1
    [d] = by_name["r1"]["disks"]
    assert d["readonly"] and d["lease"] is None
    text = run([DISKPAXOS, "vm", "status", "--run-dir", host.run_dir]).stdout
    assert f"VM 'writer' pid {w2.pid}" in text and f"disk {disk}: exclusive lease {LS}:{name} held, lver" in text


def test_storage_lost_kills_the_vm_before_its_lease_expires(vm_host, disk: Path, tmp_path: Path) -> None:
    """Every lease I/O of the host fails from a trigger on (a fault plan in the daemon): the daemon
    fences the VM's QEMU from the warning point (6 x io_timeout after the last good renewal),
    before the lease expires locally (8 x io_timeout), as sanlock kills libvirt's QEMU."""
    trigger = tmp_path / "pull-the-plug"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"trigger": str(trigger), "seed": 0,
                                "faults": [{"kind": "error", "op": "read"}, {"kind": "error", "op": "write"}]}))
    host = vm_host("h1", 1, daemon_config={"fault_plan": str(plan)})
    vm = host.start("vmA", *drive(disk))
    with host.daemon.api() as c:
        wait_for(lambda: len(c.renewal(LS)) >= 2, 30, "two renewals")
        trigger.touch()
        # the on-disk timestamp of the last good renewal: whole seconds of CLOCK_MONOTONIC
        last = max(r["timestamp"] for r in c.renewal(LS) if r["ok"])
    rc = vm.wait_exit(30)
    died = time.monotonic()
    # QEMU exits 0 on SIGTERM and says who sent it: the daemon's fencing, not the watchdog's SIGKILL at expiry
    assert rc == 0 and f"terminating on signal 15 from pid {host.daemon.pid}" in vm.output(), (rc, vm.output())
    assert T.id_renewal_warn <= died - last < T.id_renewal_fail, died - last


def test_libvirt_style_blockdev_command_line(vm_host, disk: Path, tmp_path: Path, lease_dir: Path,
                                             qemu_img: str) -> None:
    """A command line as libvirt 9 writes it (JSON -blockdev file + format nodes, JSON -device): the
    top image is leased, its qcow2 backing file is not, a read-only cdrom is not."""
    host = vm_host("h1", 1)
    base, top, iso = tmp_path / "base.qcow2", tmp_path / "top.qcow2", raw_image(tmp_path / "cd.iso")
    for args in (["create", "-q", "-f", "qcow2", str(base), "4M"],
                 ["create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)]):
        subprocess.run([qemu_img, *args], check=True, timeout=30)
    nodes = [
        {"driver": "file", "filename": str(base), "node-name": "libvirt-3-storage", "auto-read-only": True},
        {"node-name": "libvirt-3-format", "read-only": True, "driver": "qcow2", "file": "libvirt-3-storage"},
        {"driver": "file", "filename": str(top), "node-name": "libvirt-2-storage", "auto-read-only": True},
        {"node-name": "libvirt-2-format", "read-only": False, "driver": "qcow2", "file": "libvirt-2-storage",
         "backing": "libvirt-3-format"},
        {"driver": "file", "filename": str(iso), "node-name": "libvirt-1-storage", "auto-read-only": True},
        {"node-name": "libvirt-1-format", "read-only": True, "driver": "raw", "file": "libvirt-1-storage"},
    ]
    args: list[str] = []
    for node in nodes:
        args += ["-blockdev", json.dumps(node)]
    args += ["-device", json.dumps({"driver": "virtio-blk-pci", "drive": "libvirt-2-format", "id": "virtio-disk0"}),
             "-device", json.dumps({"driver": "ide-cd", "bus": "ide.0", "drive": "libvirt-1-format", "id": "sata0"})]
    vm = host.start("lv", *args)
    assert host.held_by(vm.pid) == [f"{LS}:{md5(str(top))}:{lease_dir}/{md5(str(top))}:0:1"]
    assert sorted(p.name for p in lease_dir.iterdir()) == sorted([LS, md5(str(top))])
    with vm.qmp() as q:
        opened = {b["inserted"]["file"] for b in q.execute("query-block") if b.get("inserted")}
    assert str(top) in opened  # QEMU really runs with that disk


def test_first_vms_on_a_host_start_together(vm_host, tmp_path: Path) -> None:
    """Three VMs started at once on a host that has not joined the lockspace yet: one joins, the
    others wait for that join (the daemon says EEXIST while it runs) instead of failing."""
    host = vm_host("h1", 1)
    disks = [raw_image(tmp_path / f"d{i}.img") for i in range(3)]
    vms = [host.start(f"vm{i}", *drive(d), wait=False) for i, d in enumerate(disks)]
    for vm in vms:
        vm.wait_ready()
    for vm, d in zip(vms, disks):
        assert host.held_by(vm.pid) == [f"{LS}:{md5(str(d))}:{host.lease_dir}/{md5(str(d))}:0:1"]


def test_explicit_lease_and_all_or_nothing(vm_host, disk: Path, tmp_path: Path, lease_dir: Path) -> None:
    """Explicit leases (libvirt's <lease>: the admin initialised them and the daemon joined their
    lockspace) are taken exclusive and named in the refusal; a VM whose later lease is busy keeps
    none of the ones it took first."""
    host = vm_host("h1", 1)
    area = raw_image(tmp_path / "vm-leases.img")
    assert run([DISKPAXOS, "direct", "init", "-s", f"VMS:0:{area}:0", "-o", "1"]).returncode == 0
    for key, offset in (("web", "1M"), ("db", "2M")):
        assert run([DISKPAXOS, "direct", "init", "-r", f"VMS:{key}:{area}:{offset}"]).returncode == 0
    with host.daemon.api() as c:
        c.add_lockspace(f"VMS:1:{area}:0", io_timeout=1)
    web, db = f"VMS:web:{area}:1048576", f"VMS:db:{area}:2097152"
    disk_lease = f"{LS}:{md5(str(disk))}:{lease_dir}/{md5(str(disk))}:0"
    a = host.start("web", *drive(disk), vm_options=("--lease", web))
    assert sorted(host.held_by(a.pid)) == sorted([f"{web}:1", f"{disk_lease}:1"])
    host_name = next(h["name"] for h in host.daemon.api().host_status("VMS") if h["host_id"] == 1)

    other = raw_image(tmp_path / "other.img")
    b = host.start("web2", *drive(other), vm_options=("--lease", web), wait=False)
    assert b.wait_exit(60) != 0
    assert b.output().strip().splitlines() == [
        f"diskpaxos: lease {web} is already in use by VM 'web' (pid {a.pid}) on host ID 1 '{host_name}'"]
    # explicit leases come first: "db" is taken, then the disk's lease is busy, and "db" is given back
    c = host.start("db-and-busy-disk", *drive(disk), vm_options=("--lease", db), wait=False)
    assert c.wait_exit(60) != 0
    assert f"disk image {disk} is already in use by VM 'web'" in c.output()
    d = host.start("db", *drive(other), vm_options=("--lease", db))
    assert f"{db}:2" in host.held_by(d.pid)  # lver 1 was the refused VM's, released at once
