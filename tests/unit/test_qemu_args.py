"""find_disks, vm_name and option_values read QEMU command lines as QEMU does."""

from __future__ import annotations

import errno
import json
import logging

import pytest
from qemu_cmdlines import REAL_CASES

from diskpaxos import errors
from diskpaxos.qemu.args import TAKES_VALUE, Disk, QemuArgsError, find_disks, option_values, vm_name


def disks(argv: list[str]) -> list[tuple[str, bool, bool, str]]:
    return [(d.path, d.readonly, d.shared, d.option) for d in find_disks(argv)]


def js(value: dict) -> str:
    return json.dumps(value)


W, RO = False, True          # readonly
EX, SH = False, True         # shared


@pytest.mark.parametrize("name", sorted(REAL_CASES))
def test_real_cases(name: str) -> None:
    argv, expected = REAL_CASES[name].expand("/images")
    assert disks(argv) == expected


def test_disk_is_the_documented_dataclass() -> None:
    assert find_disks(["-hda", "/i/a.img"]) == [Disk(path="/i/a.img", readonly=False, shared=False, option="-hda")]


# --- -drive -----------------------------------------------------------------

@pytest.mark.parametrize("drive, expected", [
    ("file=/i/a.img,format=raw,if=virtio", ("/i/a.img", W, EX)),
    ("file=/i/a,,b,,,,c.img,if=none", ("/i/a,b,,c.img", W, EX)),
    ("if=none,file=/i/a.img,id=x", ("/i/a.img", W, EX)),
    ("file.driver=file,file.filename=/i/a.img,if=none", ("/i/a.img", W, EX)),
    ("driver=file,filename=/i/a.img,if=none", ("/i/a.img", W, EX)),
    ("driver=host_device,filename=/dev/sdb,if=none", ("/dev/sdb", W, EX)),
    ("file=/dev/sdb,format=raw,if=none,file.driver=host_device", ("/dev/sdb", W, EX)),
    ("file=/i/a.img,readonly=on", ("/i/a.img", RO, EX)),
    ("file=/i/a.img,readonly=true", ("/i/a.img", RO, EX)),
    ("file=/i/a.img,read-only=on", ("/i/a.img", RO, EX)),
    ("file=/i/a.img,readonly", ("/i/a.img", RO, EX)),
    ("file=/i/a.img,readonly=off", ("/i/a.img", W, EX)),
    ("file=/i/a.img,noreadonly", ("/i/a.img", W, EX)),
    ("file=/i/a.img,file.read-only=on", ("/i/a.img", RO, EX)),
    ("file=/i/a.img,media=cdrom", ("/i/a.img", RO, EX)),
    ("file=/i/a.img,media=disk", ("/i/a.img", W, EX)),
    ("file=/i/a.img,share-rw=on", ("/i/a.img", W, SH)),
    ("file=/i/a.img,snapshot=on", ("/i/a.img", W, EX)),
    ("file=/i/a.img,cache=none,aio=native,discard=unmap,werror=stop,rerror=stop", ("/i/a.img", W, EX)),
    ("file=/i/top.qcow2,format=qcow2,backing.file.filename=/i/base.qcow2", ("/i/top.qcow2", W, EX)),
    ("file=file:/i/a.img", ("/i/a.img", W, EX)),
    ("file=host_device:/dev/sdb", ("/dev/sdb", W, EX)),
    ("file=host_cdrom:/dev/sr0", ("/dev/sr0", RO, EX)),
    ("file=a.img", ("a.img", W, EX)),
    ("file=./x:y.img", ("./x:y.img", W, EX)),
    ("file=sub/dir:y.img", ("sub/dir:y.img", W, EX)),
    ("file=//i//a.img", ("//i//a.img", W, EX)),
    ("file=fat:rw:/srv/dir", ("/srv/dir", W, EX)),
    ("file=fat:/srv/dir", ("/srv/dir", RO, EX)),
    ("file=fat:floppy:rw:/srv/dir", ("/srv/dir", W, EX)),
    ('file=json:{"driver":"qcow2",,"file":{"driver":"file",,"filename":"/i/j.qcow2"}}', ("/i/j.qcow2", W, EX)),
    ('file=json:{"driver":"file",,"filename":"/i/j.img"}', ("/i/j.img", W, EX)),
    ('file=json:{"file.driver":"file",,"file.filename":"/i/j.img"}', ("/i/j.img", W, EX)),
    ('file=json:{"filename":"/i/j.img"}', ("/i/j.img", W, EX)),
    ('file=json:{"driver":"raw",,"file":{"driver":"file",,"filename":"/i/j.img"}},readonly=on', ("/i/j.img", RO, EX)),
])
def test_drive(drive: str, expected: tuple[str, bool, bool]) -> None:
    assert disks(["-drive", drive]) == [(*expected, "-drive #1")]


@pytest.mark.parametrize("drive", [
    "if=none,media=cdrom,id=cd0",
    "if=ide,media=cdrom",
    "file=,if=none",
    "if=none,id=empty",
])
def test_drive_without_medium_is_no_disk(drive: str) -> None:
    assert find_disks(["-drive", drive]) == []


@pytest.mark.parametrize("device, shared", [
    ("virtio-blk-pci,drive=d0,share-rw=on", SH),
    ("virtio-blk-pci,drive=d0,share-rw=true", SH),
    ("virtio-blk-pci,drive=d0,share-rw=yes", SH),
    ("virtio-blk-pci,drive=d0,share-rw", SH),
    ("driver=scsi-hd,drive=d0,share-rw=on", SH),
    ("virtio-blk-pci,drive=d0,share-rw=off", EX),
    ("virtio-blk-pci,drive=d0", EX),
    ("virtio-blk-pci,drive=other,share-rw=on", EX),
    (js({"driver": "virtio-blk-pci", "drive": "d0", "share-rw": True}), SH),
    (js({"driver": "virtio-blk-pci", "drive": "d0", "share-rw": False}), EX),
    (js({"driver": "virtio-blk-pci", "drive": "d0", "share-rw": "on"}), SH),
])
def test_device_share_rw_on_a_drive(device: str, shared: bool) -> None:
    argv = ["-drive", "file=/i/a.img,if=none,id=d0", "-device", device]
    assert disks(argv) == [("/i/a.img", W, shared, "-drive #1")]


def test_device_before_drive_still_counts() -> None:
    argv = ["-device", "virtio-blk-pci,drive=d0,share-rw=on", "-drive", "file=/i/a.img,if=none,id=d0"]
    assert disks(argv) == [("/i/a.img", W, SH, "-drive #1")]


def test_two_devices_on_one_drive_one_exclusive_is_exclusive() -> None:
    argv = ["-drive", "file=/i/a.img,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0,share-rw=on",
            "-device", "virtio-blk-pci,drive=d0"]
    assert disks(argv) == [("/i/a.img", W, EX, "-drive #1")]


@pytest.mark.parametrize("source", [
    "nbd:localhost:10809", "nbd:unix:/run/nbd.sock", "nbd://host/export", "nbd+unix:///export?socket=/s",
    "rbd:pool/image", "gluster://host/vol/image", "gluster+tcp://host/vol/img", "iscsi://host/iqn.2000-01.x:t/0",
    "ssh://user@host/path/img", "http://host/a.iso", "https://host/a.iso", "ftp://host/a.iso", "ftps://host/a.iso",
    "nfs://host/export/img", "null-co://",
    'json:{"driver":"raw",,"file":{"driver":"nbd",,"server":{"type":"unix",,"path":"/s"},,"export":"e"}}',
    'json:{"driver":"rbd",,"pool":"p",,"image":"i"}',
])
def test_network_file_is_not_leased(source: str) -> None:
    """The same source after -hda is written without ``,,`` escapes."""
    assert find_disks(["-drive", f"file={source},if=none", "-hda", source.replace(",,", ",")]) == []


@pytest.mark.parametrize("argv", [
    ["-drive", "if=none,driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=h,file.server.port=1"],
    ["-drive", "if=none,driver=rbd,pool=p,image=i"],
    ["-blockdev", "driver=nbd,node-name=n,server.type=unix,server.path=/s,export=e"],
    ["-blockdev", js({"driver": "rbd", "node-name": "r", "pool": "p", "image": "i"})],
    ["-blockdev", js({"driver": "iscsi", "node-name": "s", "transport": "tcp", "portal": "h", "target": "t"})],
    ["-blockdev", js({"driver": "gluster", "node-name": "g", "volume": "v", "path": "/img",
                      "server": [{"type": "inet", "host": "h"}]})],
    ["-blockdev", js({"driver": "nvme", "node-name": "n", "device": "0000:01:00.0", "namespace": 1})],
    ["-blockdev", js({"driver": "raw", "node-name": "f", "file": {"driver": "https", "url": "https://h/x"}})],
])
def test_network_blockdev_is_not_leased(argv: list[str]) -> None:
    assert find_disks(argv) == []


# --- shorthands and bare images -------------------------------------------------

@pytest.mark.parametrize("option, readonly", [
    ("-hda", W), ("-hdb", W), ("-hdc", W), ("-hdd", W), ("-fda", W), ("-fdb", W), ("-mtdblock", W), ("-sd", W),
    ("-pflash", W), ("-cdrom", RO), ("--hda", W), ("--cdrom", RO),
])
def test_shorthand(option: str, readonly: bool) -> None:
    """The file name is taken literally: no ``,,`` escaping after a shorthand."""
    assert disks([option, "/i/a,b.img"]) == [("/i/a,b.img", readonly, EX, "-" + option.lstrip("-"))]


def test_bare_argument_is_hda() -> None:
    assert disks(["-S", "-nodefaults", "/i/a.img", "-m", "1G"]) == [("/i/a.img", W, EX, "disk image (argument 3)")]


def test_snapshot_flag_still_leases_writable() -> None:
    assert disks(["-snapshot", "-hda", "/i/a.img"]) == [("/i/a.img", W, EX, "-hda")]


@pytest.mark.parametrize("option", sorted(TAKES_VALUE - {"drive", "blockdev", "hda", "hdb", "hdc", "hdd", "fda", "fdb",
                                                          "mtdblock", "sd", "pflash", "cdrom", "device", "readconfig",
                                                          "set"}))
def test_values_of_other_options_are_not_disks(option: str) -> None:
    assert find_disks([f"-{option}", "/i/value.img", "-S"]) == []


def test_unknown_flag_takes_no_value_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert disks(["-new-flag", "/i/a.img"]) == [("/i/a.img", W, EX, "disk image (argument 2)")]
    assert "unknown QEMU option -new-flag" in caplog.text


def test_option_value_that_looks_like_an_option_is_skipped() -> None:
    argv = ["-append", "-hda /i/x.img", "-kernel", "-cdrom", "-hdb", "/i/b.img"]
    assert disks(argv) == [("/i/b.img", W, EX, "-hdb")]


# --- -blockdev ------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["-blockdev", "driver=file,filename=/i/a.img,node-name=n1"], [("/i/a.img", W, EX, "-blockdev node-name=n1")]),
    (["-blockdev", "file,filename=/i/a,,b.img,node-name=n1"], [("/i/a,b.img", W, EX, "-blockdev node-name=n1")]),
    (["-blockdev", "driver=file,filename=/i/a.img"], [("/i/a.img", W, EX, "-blockdev #1")]),
    (["-blockdev", "driver=host_device,filename=/dev/sdb,node-name=d"], [("/dev/sdb", W, EX, "-blockdev node-name=d")]),
    (["-blockdev", "driver=host_cdrom,filename=/dev/sr0,node-name=c"], [("/dev/sr0", RO, EX, "-blockdev node-name=c")]),
    (["-blockdev", "driver=file,filename=/i/a.img,node-name=n,read-only=on"],
     [("/i/a.img", RO, EX, "-blockdev node-name=n")]),
    (["-blockdev", "driver=file,filename=/i/a.img,node-name=n,auto-read-only=on"],
     [("/i/a.img", W, EX, "-blockdev node-name=n")]),
    (["-blockdev", "driver=qcow2,node-name=f,file.driver=file,file.filename=/i/a.qcow2"],
     [("/i/a.qcow2", W, EX, "-blockdev node-name=f")]),
    (["-blockdev", js({"driver": "qcow2", "node-name": "f", "read-only": True,
                       "file": {"driver": "file", "filename": "/i/a.qcow2"}})],
     [("/i/a.qcow2", RO, EX, "-blockdev node-name=f")]),
    (["-blockdev", "{'driver':'file','filename':'/i/a.img','node-name':'q'}"],
     [("/i/a.img", W, EX, "-blockdev node-name=q")]),
    (["-blockdev", "{'driver':'file','filename':'/i/a\\'b.img','node-name':'q'}"],
     [("/i/a'b.img", W, EX, "-blockdev node-name=q")]),
    # protocol read-only, format not: still read-only
    (["-blockdev", "driver=file,node-name=p,filename=/i/a.img,read-only=on", "-blockdev", "driver=raw,node-name=f,file=p"],
     [("/i/a.img", RO, EX, "-blockdev node-name=p")]),
    # qcow2 with an external data file: both are the guest's data
    (["-blockdev", "driver=file,node-name=d,filename=/i/data.raw", "-blockdev", "driver=file,node-name=m,filename=/i/m.qcow2",
      "-blockdev", "driver=qcow2,node-name=f,file=m,data-file=d"],
     [("/i/m.qcow2", W, EX, "-blockdev node-name=m"), ("/i/data.raw", W, EX, "-blockdev node-name=d")]),
    # quorum children as a keyval list
    (["-blockdev", "driver=file,node-name=a,filename=/i/a.img", "-blockdev", "driver=file,node-name=b,filename=/i/b.img",
      "-blockdev", "driver=quorum,node-name=q,vote-threshold=1,children.0=a,children.1=b"],
     [("/i/a.img", W, EX, "-blockdev node-name=a"), ("/i/b.img", W, EX, "-blockdev node-name=b")]),
    # a filter on top: the chain still reaches the file
    (["-blockdev", "driver=file,node-name=p,filename=/i/a.img", "-blockdev", "driver=raw,node-name=f,file=p",
      "-blockdev", "driver=copy-on-read,node-name=c,file=f", "-device", "virtio-blk-pci,drive=c,share-rw=on"],
     [("/i/a.img", W, SH, "-blockdev node-name=p")]),
    # inline backing chain: never leased
    (["-blockdev", js({"driver": "qcow2", "node-name": "f", "file": {"driver": "file", "filename": "/i/top.qcow2"},
                       "backing": {"driver": "qcow2", "file": {"driver": "file", "filename": "/i/base.qcow2"}}})],
     [("/i/top.qcow2", W, EX, "-blockdev node-name=f")]),
    # a backing node that a device also uses is a top of its own
    (["-blockdev", "driver=file,node-name=bp,filename=/i/base.qcow2", "-blockdev", "driver=qcow2,node-name=b,file=bp",
      "-blockdev", "driver=file,node-name=tp,filename=/i/top.qcow2",
      "-blockdev", "driver=qcow2,node-name=t,file=tp,backing=b", "-device", "virtio-blk-pci,drive=b"],
     [("/i/base.qcow2", W, EX, "-blockdev node-name=bp"), ("/i/top.qcow2", W, EX, "-blockdev node-name=tp")]),
    # one protocol node under a read-only and a writable format node: writable
    (["-blockdev", "driver=file,node-name=p,filename=/i/a.img", "-blockdev", "driver=raw,node-name=f1,file=p,read-only=on",
      "-blockdev", "driver=raw,node-name=f2,file=p"],
     [("/i/a.img", W, EX, "-blockdev node-name=p")]),
    # device on a read-only format node: read-only (no lease), share-rw irrelevant
    (["-blockdev", "driver=file,node-name=p,filename=/i/a.img,read-only=on",
      "-blockdev", "driver=raw,node-name=f,file=p,read-only=on", "-device", "ide-cd,drive=f,share-rw=on"],
     [("/i/a.img", RO, EX, "-blockdev node-name=p")]),
    (["-blockdev", "driver=vvfat,node-name=v,dir=/srv/dir,rw=on"], [("/srv/dir", W, EX, "-blockdev node-name=v")]),
    (["-blockdev", "driver=vvfat,node-name=v,dir=/srv/dir"], [("/srv/dir", RO, EX, "-blockdev node-name=v")]),
    (["-blockdev", "driver=null-co,node-name=n"], []),
])
def test_blockdev(argv: list[str], expected: list[tuple[str, bool, bool, str]]) -> None:
    assert disks(argv) == expected


# --- the same path twice ----------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["-drive", "file=/i/a.img,readonly=on", "-hda", "/i/a.img"], [("/i/a.img", W, EX, "-drive #1")]),
    (["-hda", "/i/a.img", "-cdrom", "/i/a.img"], [("/i/a.img", W, EX, "-hda")]),
    (["-cdrom", "/i/a.img", "-hdb", "/i/a.img"], [("/i/a.img", W, EX, "-cdrom")]),
    (["-drive", "file=/i/a.img,share-rw=on", "-drive", "file=/i/a.img"], [("/i/a.img", W, EX, "-drive #1")]),
    (["-drive", "file=/i/a.img,share-rw=on", "-drive", "file=/i/a.img,share-rw=on"], [("/i/a.img", W, SH, "-drive #1")]),
    (["-drive", "file=/i/a.img,share-rw=on", "-cdrom", "/i/a.img"], [("/i/a.img", W, SH, "-drive #1")]),
    (["-hdb", "/i/b.img", "-blockdev", "driver=file,filename=/i/a.img,node-name=n", "-hda", "/i/b.img",
      "-drive", "file=/i/a.img,readonly=on"],
     [("/i/b.img", W, EX, "-hdb"), ("/i/a.img", W, EX, "-blockdev node-name=n")]),
])
def test_same_path_twice_is_one_disk(argv: list[str], expected: list[tuple[str, bool, bool, str]]) -> None:
    assert disks(argv) == expected


def test_different_spellings_are_different_disks() -> None:
    """libvirt hashes the string, so we must not normalise it."""
    assert [d.path for d in find_disks(["-hda", "/i/a.img", "-hdb", "/i//a.img", "-hdc", "/i/./a.img"])] == [
        "/i/a.img", "/i//a.img", "/i/./a.img"]


# --- errors ----------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["-drive"], "-drive (qemu argument 1): expected a value after it, got the end of the command line"),
    (["-m", "1G", "--blockdev"], "--blockdev (qemu argument 3): expected a value after it, got the end of the command line"),
    (["-drive=file=/i/a.img"], "-drive=file=/i/a.img (qemu argument 1): QEMU takes no -drive=VALUE, expected -drive VALUE"),
    (["-S", "-blockdev", '{"driver": "file",'],
     "-blockdev (qemu argument 2): expected a JSON object, got invalid JSON (Expecting property name enclosed in "
     "double quotes at character 18)"),
    (["-device", '{"driver": "virtio-blk-pci"'], "-device (qemu argument 1): expected a JSON object, got invalid JSON"),
    (["-readconfig", "/etc/qemu/vm.cfg"],
     "-readconfig (qemu argument 1): /etc/qemu/vm.cfg: a config file may define disks we cannot see"),
    (["-set", "drive.d0.file=/i/b.img"], "-set (qemu argument 1): drive.d0.file=/i/b.img: -set may change a disk"),
    (["-set", "device.dev0.drive=d1"], "-set (qemu argument 1): device.dev0.drive=d1: -set may change a disk"),
    (["-set", "blockdev.n.read-only=off"], "-set (qemu argument 1): blockdev.n.read-only=off: -set may change a disk"),
    (["-hda", "/i/a.img", "-drive", "file=foo:bar.img"],
     "-drive #1 (qemu argument 3): file=foo:bar.img: unsupported protocol 'foo' (expected a local path, a network "
     "protocol, or json:; a local name with ':' needs a '/' before it, e.g. ./foo:bar.img)"),
    (["-drive", "file=blkdebug:/etc/blkdebug.conf:/i/a.img"], "unsupported protocol 'blkdebug'"),
    (["-drive", "file=/dev/fdset/1,if=none"],
     "-drive #1 (qemu argument 1): /dev/fdset/1: a passed file descriptor hides which file it is, expected a path"),
    (["-drive", "file=/i/a.img,readonly=maybe"], "-drive #1 (qemu argument 1): readonly: expected on or off, got 'maybe'"),
    (["-drive", "file=/i/a.img,file.filename=/i/b.img"],
     "-drive #1 (qemu argument 1): file=/i/a.img: expected no other file or file.filename, got both"),
    (["-drive", "file.driver=file,file.driver.x=1"], "'file.driver.x' used inconsistently"),
    (["-blockdev", "driver=weird,node-name=w"],
     "-blockdev node-name=w (qemu argument 1): unknown block driver 'weird': cannot tell whether it opens a local file"),
    (["-blockdev", "node-name=x,size=1"],
     "-blockdev node-name=x (qemu argument 1): expected driver=NAME, got no driver"),
    (["-blockdev", "driver=file,node-name=x"],
     "-blockdev node-name=x (qemu argument 1): driver file: expected filename=PATH, got None"),
    (["-blockdev", "driver=file,filename=/i/a.img,read-only"],
     "-blockdev (qemu argument 1): expected read-only=VALUE, got 'read-only'"),
    (["-blockdev", "driver=file,filename=/i/a.img,read-only=perhaps,node-name=n"],
     "-blockdev node-name=n (qemu argument 1): read-only: expected on or off, got 'perhaps'"),
    (["-drive", "file=/i/a.img,if=none,id=d", "-device", "virtio-blk-pci,drive=d,share-rw=2"],
     "-device virtio-blk-pci (qemu argument 3): share-rw: expected on or off, got '2'"),
])
def test_errors(argv: list[str], message: str) -> None:
    with pytest.raises(QemuArgsError) as e:
        find_disks(argv)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_error_is_a_usage_error_with_fields() -> None:
    with pytest.raises(errors.UsageError) as e:
        find_disks(["-m", "1G", "-drive"])
    assert e.value.code == -errno.EINVAL
    assert (e.value.option, e.value.position) == ("-drive", 3)


@pytest.mark.parametrize("argv", [
    ["-set", "machine.type.x=y"],
    ["-global", "virtio-blk-pci.share-rw=on"],
    ["-add-fd", "fd=3,set=1"],
])
def test_harmless_options_are_accepted(argv: list[str]) -> None:
    assert find_disks(argv) == []


# --- vm_name and option_values ----------------------------------------------------

@pytest.mark.parametrize("argv, name", [
    (["-name", "guest=vm1,debug-threads=on"], "vm1"),
    (["-name", "vm1"], "vm1"),
    (["--name", "vm1,process=qemu-vm1"], "vm1"),
    (["-name", "a,,b,process=x"], "a,b"),
    (["-name", "debug-threads=on"], None),
    (["-name", "first", "-name", "second"], "second"),
    (["-append", "-name", "-name", "real"], "real"),
    (["-m", "1G"], None),
])
def test_vm_name(argv: list[str], name: str | None) -> None:
    assert vm_name(argv) == name


@pytest.mark.parametrize("argv, option, values", [
    (["-incoming", "defer"], "-incoming", ["defer"]),
    (["--incoming", "tcp:0:4444"], "-incoming", ["tcp:0:4444"]),
    (["-incoming", "defer"], "incoming", ["defer"]),
    (["-qmp", "unix:/a,server=on", "-S", "-qmp", "unix:/b,server=on"], "-qmp", ["unix:/a,server=on", "unix:/b,server=on"]),
    (["-append", "-incoming", "-incoming", "defer"], "-incoming", ["defer"]),
    (["-hda", "/i/a.img"], "-incoming", []),
])
def test_option_values(argv: list[str], option: str, values: list[str]) -> None:
    assert option_values(argv, option) == values


def test_option_values_of_a_flag_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        option_values(["-S"], "-S")
