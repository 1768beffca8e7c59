"""The leases ``vm run`` plans and the files it creates, on real files (no daemon, no QEMU).

- lease names are libvirt's: lowercase hex MD5 of the disk path exactly as written
  (the two examples from libvirt's docs and a run), so ``/a//b`` and ``/a/b`` differ;
- writable disks exclusive, shareable shared, read-only none; explicit leases exclusive;
- ``require_lease_for_disks`` refuses a writable disk without any lease, naming it;
- files appear complete or not at all (built under a temporary name, published with
  link), are 1 MiB, 0600 (the lockspace 0660 with a group), owned as configured, and an
  existing file (e.g. libvirt's) is left alone; racing creators all end with one file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from diskpaxos import direct, errors
from diskpaxos.qemu import leases
from diskpaxos.qemu.args import Disk
from diskpaxos.qemu.config import QemuConfig


def cfg(tmp_path: Path, **kw: object) -> QemuConfig:
    kw.setdefault("auto_disk_leases", True)
    kw.setdefault("require_lease_for_disks", not kw["auto_disk_leases"])
    return QemuConfig(host_id=1, disk_lease_dir=str(tmp_path), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("path, name", [
    ("/var/lib/libvirt/images/demo.img", "bfa0240911bc17753e0b473688822159"),  # libvirt's docs
    ("/srv/images/shared.img", "b447186659b17490af13cb27ad6978a0"),  # seen with libvirt 9.0.0 + sanlock
])
def test_lease_name_is_libvirts(path: str, name: str) -> None:
    assert leases.lease_name(path) == name


def test_paths_are_not_normalised() -> None:
    assert leases.lease_name("/a//b.img") != leases.lease_name("/a/b.img")
    assert leases.lease_name("b.img") != leases.lease_name("./b.img")


def test_plan_modes(tmp_path: Path) -> None:
    disks = [Disk("/d/w.img", False, False, "-drive #0"), Disk("/d/s.img", False, True, "-drive #1"),
             Disk("/d/r.img", True, False, "-drive #2")]
    got = leases.plan(cfg(tmp_path), disks, [f"LS:KEY:{tmp_path}/x:1048576"])
    assert [str(p.resource) for p in got] == [
        f"LS:KEY:{tmp_path}/x:1048576",
        f"__LIBVIRT__DISKS__:{leases.lease_name('/d/w.img')}:{tmp_path}/{leases.lease_name('/d/w.img')}:0",
        f"__LIBVIRT__DISKS__:{leases.lease_name('/d/s.img')}:{tmp_path}/{leases.lease_name('/d/s.img')}:0:SH",
    ]
    assert [p.disk for p in got] == [None, "/d/w.img", "/d/s.img"]


def test_require_lease_for_disks(tmp_path: Path) -> None:
    c = cfg(tmp_path, auto_disk_leases=False, path="/etc/diskpaxos/qemu.conf")
    with pytest.raises(leases.LeaseRequiredError) as e:
        leases.plan(c, [Disk("/d/w.img", False, False, "-hda")], [])
    assert "Read/write, exclusive access, disks were present, but no leases specified (/d/w.img)" in str(e.value)
    assert "/etc/diskpaxos/qemu.conf" in str(e.value)
    # shareable or read-only disks, or one explicit lease, satisfy it (as in libvirt)
    assert leases.plan(c, [Disk("/d/s.img", False, True, "-drive #0"), Disk("/d/r", True, False, "-cdrom")], []) == []
    assert len(leases.plan(c, [Disk("/d/w.img", False, False, "-hda")], [f"LS:K:{tmp_path}/x:0"])) == 1
    # with require_lease_for_disks = 0 nothing is refused
    assert leases.plan(cfg(tmp_path, auto_disk_leases=False, require_lease_for_disks=False),
                       [Disk("/d/w.img", False, False, "-hda")], []) == []


@pytest.mark.parametrize("bad", ["LS:KEY", "LS:KEY:/x:0:5", "LS:KEY:/x:0:SH"])
def test_explicit_lease_must_be_plain(tmp_path: Path, bad: str) -> None:
    with pytest.raises(errors.UsageError):
        leases.plan(cfg(tmp_path), [], [bad])


def test_files_are_created_complete_and_once(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert leases.ensure_lockspace_file(c) is True
    assert leases.ensure_lockspace_file(c) is False
    for host_id in (1, 2000):  # sanlock's default: a delta lease for each of 2000 hosts
        ls = direct.read_leader(str(tmp_path / leases.LOCKSPACE), 0, kind="lockspace", host_id=host_id,
                                space_name=leases.LOCKSPACE)
        assert ls.error is None and ls.record.io_timeout == 10
    pl = leases.disk_lease(c, Disk("/images/vm.img", False, False, "-hda"))
    # racing creators: exactly one wins, everybody sees a complete lease
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(leases.ensure_lease_file(c, pl))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    path = Path(pl.resource.path)
    assert path.stat().st_size == 1024 * 1024 and path.stat().st_mode & 0o777 == 0o600
    got = direct.read_leader(str(path), 0, kind="resource", space_name=leases.LOCKSPACE,
                             resource_name=leases.lease_name("/images/vm.img"))
    assert got.error is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([leases.LOCKSPACE, path.name])


def test_existing_file_is_left_alone(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    pl = leases.disk_lease(c, Disk("/images/vm.img", False, False, "-hda"))
    Path(pl.resource.path).write_bytes(b"not mine")
    assert leases.ensure_lease_file(c, pl) is False
    assert Path(pl.resource.path).read_bytes() == b"not mine"


def test_owner_and_group_mode(tmp_path: Path) -> None:
    c = cfg(tmp_path, user="+1234", group="+4321")
    leases.ensure_lockspace_file(c)
    st = (tmp_path / leases.LOCKSPACE).stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 4321, 0o660)
    pl = leases.disk_lease(c, Disk("/images/vm.img", False, False, "-hda"))
    leases.ensure_lease_file(c, pl)
    st = os.stat(pl.resource.path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1234, 4321, 0o600)


def test_missing_lease_dir_is_a_clear_error(tmp_path: Path) -> None:
    c = cfg(tmp_path / "nope")
    with pytest.raises(leases.LeaseDirError) as e:
        leases.ensure_lockspace_file(c)
    assert str(e.value) == f"disk_lease_dir {tmp_path}/nope: does not exist or is not a directory"
