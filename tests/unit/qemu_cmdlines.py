"""Representative QEMU command lines with the disks find_disks must report.

Shared by the unit tests (paths under a fake ``/images``) and by
tests/qemu/test_qemu_accepts_args.py, which runs the real QEMU on them (paths
under a temp dir) to prove it opens exactly these files, read-only where we say.
``{d}`` stands for the image directory; each case says which images to create
(``raw`` with truncate, ``qcow2 BACKING`` with qemu-img) and which machine QEMU needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


def _js(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    disks: tuple[tuple[str, bool, bool, str], ...]   # (path, readonly, shared, option)
    images: tuple[tuple[str, str], ...]               # (name, "raw" | "qcow2" | "qcow2:BACKING")
    machine: str = "none"

    def expand(self, d: str) -> tuple[list[str], list[tuple[str, bool, bool, str]]]:
        """argv and expected disks with ``{d}`` replaced by the image directory."""
        argv = [a.replace("{d}", d) for a in self.argv]
        disks = [(p.replace("{d}", d), ro, sh, opt.replace("{d}", d)) for p, ro, sh, opt in self.disks]
        return argv, disks


# libvirt 9 style: a qcow2 disk with a one-level backing chain, a shared raw disk
# (share-rw on the device), and a read-only cdrom; every node named, JSON everywhere.
LIBVIRT9 = Case(
    argv=(
        "-blockdev", _js({"driver": "file", "filename": "{d}/base.qcow2", "node-name": "libvirt-3-storage",
                          "auto-read-only": True, "discard": "unmap"}),
        "-blockdev", _js({"node-name": "libvirt-3-format", "read-only": True, "driver": "qcow2",
                          "file": "libvirt-3-storage", "backing": None}),
        "-blockdev", _js({"driver": "file", "filename": "{d}/top.qcow2", "node-name": "libvirt-2-storage",
                          "auto-read-only": True, "discard": "unmap"}),
        "-blockdev", _js({"node-name": "libvirt-2-format", "read-only": False, "driver": "qcow2",
                          "file": "libvirt-2-storage", "backing": "libvirt-3-format"}),
        "-device", _js({"driver": "virtio-blk-pci", "bus": "pcie.0", "addr": "0x4", "drive": "libvirt-2-format",
                        "id": "virtio-disk0", "bootindex": 1}),
        "-blockdev", _js({"driver": "file", "filename": "{d}/shared.img", "node-name": "libvirt-1-storage",
                          "auto-read-only": True, "discard": "unmap"}),
        "-blockdev", _js({"node-name": "libvirt-1-format", "read-only": False, "driver": "raw",
                          "file": "libvirt-1-storage"}),
        "-device", _js({"driver": "virtio-blk-pci", "bus": "pcie.0", "addr": "0x5", "drive": "libvirt-1-format",
                        "id": "virtio-disk1", "share-rw": True}),
        "-blockdev", _js({"driver": "file", "filename": "{d}/install.iso", "node-name": "libvirt-4-storage",
                          "auto-read-only": True, "discard": "unmap"}),
        "-blockdev", _js({"node-name": "libvirt-4-format", "read-only": True, "driver": "raw",
                          "file": "libvirt-4-storage"}),
        "-device", _js({"driver": "ide-cd", "bus": "ide.0", "drive": "libvirt-4-format", "id": "sata0-0-0"}),
    ),
    disks=(
        ("{d}/top.qcow2", False, False, "-blockdev node-name=libvirt-2-storage"),
        ("{d}/shared.img", False, True, "-blockdev node-name=libvirt-1-storage"),
        ("{d}/install.iso", True, False, "-blockdev node-name=libvirt-4-storage"),
    ),
    images=(("base.qcow2", "qcow2"), ("top.qcow2", "qcow2:base.qcow2"), ("shared.img", "raw"),
            ("install.iso", "raw")),
    machine="q35",
)

REAL_CASES: dict[str, Case] = {
    "libvirt9": LIBVIRT9,
    "drive-escaped-comma-and-readonly": Case(
        argv=("-drive", "file={d}/a,,b.img,if=none,format=raw,id=d0",
              "-drive", "file={d}/c.img,if=none,format=raw,readonly=on"),
        disks=(("{d}/a,b.img", False, False, "-drive #1"), ("{d}/c.img", True, False, "-drive #2")),
        images=(("a,b.img", "raw"), ("c.img", "raw")),
    ),
    "drive-media-cdrom-and-empty-cdrom": Case(
        argv=("-drive", "file={d}/cd.iso,if=none,media=cdrom,format=raw",
              "-drive", "if=none,media=cdrom,id=empty"),
        disks=(("{d}/cd.iso", True, False, "-drive #1"),),
        images=(("cd.iso", "raw"),),
    ),
    "drive-device-share-rw": Case(
        argv=("-drive", "file={d}/s.img,if=none,format=raw,id=d0",
              "-device", "virtio-blk-pci,drive=d0,share-rw=on",
              "-drive", "file={d}/x.img,if=none,format=raw,id=d1",
              "-device", "virtio-blk-pci,drive=d1"),
        disks=(("{d}/s.img", False, True, "-drive #1"), ("{d}/x.img", False, False, "-drive #2")),
        images=(("s.img", "raw"), ("x.img", "raw")),
        machine="pc",
    ),
    "drive-qcow2-backing-not-leased": Case(
        argv=("-drive", "file={d}/top.qcow2,if=none,format=qcow2",),
        disks=(("{d}/top.qcow2", False, False, "-drive #1"),),
        images=(("base.qcow2", "qcow2"), ("top.qcow2", "qcow2:base.qcow2")),
    ),
    "drive-file-dotted-and-json-pseudo-protocol": Case(
        argv=("-drive", "if=none,driver=raw,file.driver=file,file.filename={d}/dot.img",
              "-drive", 'if=none,file=json:{"driver":"raw",,"file":{"driver":"file",,"filename":"{d}/j.img"}}'),
        disks=(("{d}/dot.img", False, False, "-drive #1"), ("{d}/j.img", False, False, "-drive #2")),
        images=(("dot.img", "raw"), ("j.img", "raw")),
    ),
    "shorthands": Case(
        argv=("-hdb", "{d}/hd,b.img", "-cdrom", "{d}/cd.iso", "{d}/positional.img"),
        disks=(("{d}/hd,b.img", False, False, "-hdb"), ("{d}/cd.iso", True, False, "-cdrom"),
               ("{d}/positional.img", False, False, "disk image (argument 5)")),
        images=(("hd,b.img", "raw"), ("cd.iso", "raw"), ("positional.img", "raw")),
        machine="pc",
    ),
    "blockdev-keyval-inline-file": Case(
        argv=("-blockdev", "driver=raw,node-name=f1,read-only=on,file.driver=file,file.filename={d}/ro.img",
              "-blockdev", "raw,node-name=f2,file.driver=file,file.filename={d}/rw.img"),
        disks=(("{d}/ro.img", True, False, "-blockdev node-name=f1"),
               ("{d}/rw.img", False, False, "-blockdev node-name=f2")),
        images=(("ro.img", "raw"), ("rw.img", "raw")),
    ),
    "blockdev-protocol-alone-and-auto-read-only": Case(
        argv=("-blockdev", "driver=file,node-name=p1,filename={d}/p.img,auto-read-only=on",),
        disks=(("{d}/p.img", False, False, "-blockdev node-name=p1"),),
        images=(("p.img", "raw"),),
    ),
    "blockdev-format-read-only-over-writable-protocol": Case(
        argv=("-blockdev", "driver=file,node-name=p1,filename={d}/p.img",
              "-blockdev", "driver=raw,node-name=f1,file=p1,read-only=on"),
        disks=(("{d}/p.img", True, False, "-blockdev node-name=p1"),),
        images=(("p.img", "raw"),),
    ),
}
