"""Find the disks in a QEMU command line, reading it the way QEMU itself does.

Pure: no I/O. The front end leases what QEMU will open, so every disk option is
read with QEMU's own syntax (``,,`` escapes a comma, ``-opt`` and ``--opt`` are
the same, a bare argument is ``-hda``), and options whose values are not disks
are skipped by a table so their values are never mistaken for disk images.

Decisions, as libvirt's sanlock driver makes them where it has a say:

* A path is reported exactly as written (libvirt hashes the string as given).
* Only the top image is leased: ``backing`` children (the backing chain) never are.
* Network and other non-local sources (nbd, rbd, gluster, iscsi, ssh, http(s),
  ftp(s), nfs, nvme, null) are skipped, as libvirt skips network disks.
* ``-snapshot`` and ``snapshot=on`` still take the lease of a writable disk:
  QEMU keeps the image open, and a later commit would write it.
* What we cannot see we cannot lease, so options that could add or change disks
  out of our sight (``-readconfig``, ``-set`` on drives or devices, fd sets,
  ``blkdebug:`` filenames, unknown block drivers) are refused with a
  :class:`QemuArgsError` rather than ignored.
* ``-global`` is ignored: it cannot add a disk, and a ``share-rw`` set there
  only makes us take an exclusive lease where a shared one would do (safe).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import errors

log = logging.getLogger(__name__)

# Options that take a value (QEMU 7.2 to 9.x, plus a few removed ones that old
# command lines still carry). Anything else is a flag with no value.
TAKES_VALUE = frozenset("""
    accel acpitable action add-fd append audio audiodev balloon bios blockdev boot bt cdrom chardev chroot compat cpu
    D d debugcon device dfilter display drive dtb dump-vmstate echr fda fdb fsdev fw_cfg g gdb global hda hdb hdc hdd
    icount incoming initrd iscsi k kernel L loadvm M m machine mem-path mon monitor msg mtdblock name net netdev nic
    numa object option-rom overcommit parallel pflash pidfile plugin prom-env qmp qmp-pretty qtest qtest-log
    readconfig rotate rtc run-with runas sandbox sd seed semihosting-config serial set smbios smp soundhw spice
    tb-size tpmdev trace usbdevice uuid vga virtfs virtioconsole vnc watchdog watchdog-action writeconfig xen-domid
    """.split())

# Shorthand disk options: option -> read-only.
SHORTHAND_DISKS = {"hda": False, "hdb": False, "hdc": False, "hdd": False, "fda": False, "fdb": False,
                   "mtdblock": False, "sd": False, "pflash": False, "cdrom": True}

# Block drivers that open a local file or device, with the option naming it.
LOCAL_DRIVERS = {"file": "filename", "host_device": "filename", "host_cdrom": "filename", "io_uring": "path",
                 "nvme-io_uring": "path", "vvfat": "dir"}
# Block drivers (and filename protocols) with no local path to lease: network
# storage, a PCI device, or no storage at all. libvirt leases none of these.
NO_LOCAL_DRIVERS = frozenset("""
    nbd nbd+tcp nbd+unix rbd gluster gluster+tcp gluster+unix gluster+rdma iscsi iser ssh http https ftp ftps nfs
    sheepdog vxhs nvme null-co null-aio virtio-blk-vhost-user virtio-blk-vhost-vdpa virtio-blk-vfio-pci
    """.split())
# Format and filter drivers: they open children, never a path of their own.
FORMAT_DRIVERS = frozenset("""
    raw qcow2 qcow qed vmdk vdi vpc vhdx parallels bochs cloop dmg luks throttle copy-on-read preallocate compress
    blkdebug blkverify blklogwrites quorum replication copy-before-write snapshot-access
    """.split())
# Options naming children whose data the guest sees (leased) and the backing chain (never leased).
DATA_CHILD_KEYS = ("file", "data-file", "external-data-file", "image", "test", "raw", "target", "log", "children",
                   "extents")
BACKING_KEY = "backing"

_TRUE = frozenset({"on", "yes", "true", "y"})
_FALSE = frozenset({"off", "no", "false", "n"})
_BOOL_KEYS = ("readonly", "read-only", "share-rw", "snapshot")


@dataclass(frozen=True)
class Disk:
    path: str        # exactly as written on the command line (libvirt hashes the string as given)
    readonly: bool   # no lease is taken for read-only disks
    shared: bool     # share-rw=on: a shared (SH) lease
    option: str      # where it came from, for messages


class QemuArgsError(errors.UsageError):
    """A QEMU command line we cannot read safely; names the option and its position."""

    template = "{option} (qemu argument {position}): {reason}"


# --- the option stream -------------------------------------------------------


def _options(argv: list[str]) -> Iterator[tuple[str, str | None, int]]:
    """(name without dashes, value or None, 1-based position) per option; bare arguments are ``hda``."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        position = i + 1
        if not arg.startswith("-"):
            yield "", arg, position  # a bare disk image: QEMU reads it as -hda
            i += 1
            continue
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if "=" in name:
            base = name.split("=", 1)[0]
            if base in TAKES_VALUE:
                raise QemuArgsError(option=arg, position=position,
                                    reason=f"QEMU takes no -{base}=VALUE, expected -{base} VALUE")
        if name in TAKES_VALUE:
            if i + 1 >= len(argv):
                raise QemuArgsError(option=arg, position=position,
                                    reason="expected a value after it, got the end of the command line")
            yield name, argv[i + 1], position
            i += 2
            continue
        if name not in _KNOWN_FLAGS:
            log.warning("unknown QEMU option %s (argument %d): assuming it takes no value", arg, position)
        yield name, None, position
        i += 1


_KNOWN_FLAGS = frozenset("""
    S s snapshot nodefaults no-user-config nographic daemonize enable-kvm no-reboot no-shutdown no-acpi no-hpet
    full-screen portrait win2k-hack no-fd-bootchk only-migratable preconfig singlestep one-insn-per-tb
    enable-sync-profile async-teardown xen-attach xen-domid-restrict mem-prealloc semihosting usb h help version
    audio-help curses sdl alt-grab ctrl-grab no-quit no-frame enable-fips old-param
    """.split())


def option_values(argv: list[str], option: str) -> list[str]:
    """Every value of ``option`` (``-incoming``, ``--incoming`` or ``incoming``), in order."""
    name = option.lstrip("-")
    if name not in TAKES_VALUE:
        raise ValueError(f"-{name} takes no value")
    return [value for opt, value, _ in _options(argv) if opt == name and value is not None]


def vm_name(argv: list[str]) -> str | None:
    """The guest name from ``-name guest=NAME,...`` or ``-name NAME[,...]``; the last one wins, as in QEMU."""
    name = None
    for opt, value, position in _options(argv):
        if opt == "name" and value is not None:
            for key, item in _split(value, "-name", position, implied="guest"):
                if key == "guest":
                    name = item
    return name


# --- key=value and JSON option values ----------------------------------------


def _split(text: str, option: str, position: int, implied: str | None = None,
           bare_flags: bool = True) -> list[tuple[str, str]]:
    """QEMU's ``key=value,...`` list: ``,,`` is a literal comma; a first item without ``=`` is
    the implied key's value; later bare items are ``key=on`` (QemuOpts) or an error (keyval)."""
    items: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in "=,":
            j += 1
        if j < n and text[j] == "=":
            key = text[i:j]
            value, i = _value(text, j + 1)
        elif not items and implied is not None:
            key = implied
            value, i = _value(text, i)
        else:
            key, i = text[i:j], j + 1
            if not bare_flags:
                raise QemuArgsError(option=option, position=position, reason=f"expected {key}=VALUE, got {key!r}")
            value = "on"
            if key.startswith("no") and key[2:] in _BOOL_KEYS:
                key, value = key[2:], "off"
        if not key:
            raise QemuArgsError(option=option, position=position, reason=f"expected key=value, got an empty key in "
                                f"{text!r}")
        items.append((key, value))
    return items


def _value(text: str, i: int) -> tuple[str, int]:
    """A value from ``text[i:]`` up to a single comma; returns it and where the next item starts."""
    out = []
    while i < len(text):
        if text[i] == ",":
            if text.startswith(",,", i):
                out.append(",")
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    return "".join(out), i


def _nest(items: list[tuple[str, Any]], option: str, position: int) -> dict[str, Any]:
    """Dotted keys to nested dicts (``file.filename``), digit keys to lists (``children.0``); last value wins."""
    root: dict[str, Any] = {}
    for key, value in items:
        parts = key.split(".")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise QemuArgsError(option=option, position=position,
                                    reason=f"{key!r} used inconsistently: {part!r} is also given a value")
            node = child
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise QemuArgsError(option=option, position=position,
                                reason=f"{key!r} used inconsistently: it also has dotted sub-keys")
        node[parts[-1]] = value
    return _lists(root)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        value = {k: _lists(v) for k, v in value.items()}
        if value and all(k.isdigit() for k in value):
            return [value[k] for k in sorted(value, key=int)]
    return value


def _json(text: str, option: str, position: int) -> dict[str, Any]:
    """A JSON object; QEMU's JSON also allows 'single-quoted' strings, so those are accepted too."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        try:
            value = json.loads(_double_quoted(text))
        except (json.JSONDecodeError, ValueError):
            raise QemuArgsError(option=option, position=position,
                                reason=f"expected a JSON object, got invalid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(value, dict):
        raise QemuArgsError(option=option, position=position,
                            reason=f"expected a JSON object, got {type(value).__name__}")
    return _nest(list(value.items()), option, position)


def _double_quoted(text: str) -> str:
    """Rewrite QEMU's single-quoted JSON strings as standard double-quoted ones."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif c == "'":
            chars, i = [], i + 1
            while i < n and text[i] != "'":
                if text[i] == "\\" and i + 1 < n and text[i + 1] in "'\"":
                    chars.append(text[i + 1])
                    i += 2
                elif text[i] == "\\" and i + 1 < n:
                    chars.append(json.loads(f'"{text[i:i + 2 + (4 if text[i + 1] == "u" else 0)]}"'))
                    i += 2 + (4 if text[i + 1] == "u" else 0)
                else:
                    chars.append(text[i])
                    i += 1
            if i >= n:
                raise ValueError("unterminated string")
            out.append(json.dumps("".join(chars)))
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _bool(value: Any, key: str, option: str, position: int) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise QemuArgsError(option=option, position=position, reason=f"{key}: expected on or off, got {value!r}")


# --- the block graph ----------------------------------------------------------


@dataclass(eq=False)
class _Node:
    """One block node: a -drive, a -blockdev, or a node written inline inside one."""

    label: str
    position: int
    read_only: bool = False
    shared: bool = False             # -drive share-rw=on
    path: str | None = None          # the local file or device this node opens
    data: list[_Node | str] = field(default_factory=list)     # children or node-names
    backing: list[_Node | str] = field(default_factory=list)  # the backing chain: never leased


class _Graph:
    """Every block node of the command line, and the devices that use them."""

    def __init__(self) -> None:
        self.tops: list[_Node] = []            # -drive and -blockdev nodes, in argv order
        self.drives: list[_Node] = []          # always top nodes: QEMU opens every -drive
        self.by_name: dict[str, _Node] = {}    # node-name or -drive id -> node
        self.device_refs: dict[str, list[bool]] = {}  # drive= value -> share-rw of each device using it

    def add(self, opts: dict[str, Any], label: str, position: int, read_only: bool = False) -> _Node:
        """A node for ``opts`` (and its inline children)."""
        node = _Node(label, position, read_only=read_only)
        if "read-only" in opts:
            node.read_only = node.read_only or _bool(opts["read-only"], "read-only", label, position)
        name = opts.get("node-name")
        if isinstance(name, str) and name:
            self.by_name[name] = node
        driver = opts.get("driver")
        if driver is None and isinstance(opts.get("filename"), str):  # QEMU picks the protocol from the name
            protocol = _protocol_opts(opts["filename"], label, position)
            if protocol is None:
                return node  # network storage
            opts, driver = {**opts, **protocol}, protocol["driver"]
        for key in DATA_CHILD_KEYS:
            node.data += self._children(opts.get(key), label, position, node.read_only)
        node.backing += self._children(opts.get(BACKING_KEY), label, position, node.read_only)
        if node.data or driver in FORMAT_DRIVERS or driver in NO_LOCAL_DRIVERS:
            return node
        if driver is None:
            raise QemuArgsError(option=label, position=position, reason="expected driver=NAME, got no driver")
        if driver not in LOCAL_DRIVERS:
            raise QemuArgsError(option=label, position=position,
                                reason=f"unknown block driver {driver!r}: cannot tell whether it opens a local "
                                f"file (expected one of {', '.join(sorted(LOCAL_DRIVERS))}, a format, or a network "
                                f"driver)")
        key = LOCAL_DRIVERS[driver]
        path = opts.get(key)
        if not isinstance(path, str) or not path:
            raise QemuArgsError(option=label, position=position,
                                reason=f"driver {driver}: expected {key}=PATH, got {path!r}")
        if path.startswith("/dev/fdset/"):
            raise QemuArgsError(option=label, position=position,
                                reason=f"{path}: a passed file descriptor hides which file it is, expected a path")
        node.path = path
        if driver == "host_cdrom" or (driver == "vvfat" and not _bool(opts.get("rw", False), "rw", label, position)):
            node.read_only = True
        return node

    def _children(self, value: Any, label: str, position: int, read_only: bool) -> list[_Node | str]:
        if value is None or value == "":
            return []
        if isinstance(value, list):
            return [c for item in value for c in self._children(item, label, position, read_only)]
        if isinstance(value, dict):
            return [self.add(value, label, position, read_only)]
        if isinstance(value, str):
            return [value]
        raise QemuArgsError(option=label, position=position, reason=f"expected a node-name or options, got {value!r}")

    def resolve(self, ref: _Node | str) -> _Node | None:
        return ref if isinstance(ref, _Node) else self.by_name.get(ref)

    def disks(self) -> list[Disk]:
        """Walk from each top node down its data children; merge what reaches the same path."""
        referenced = {id(c) for node in self._all() for ref in node.data + node.backing
                      if (c := self.resolve(ref)) is not None}
        used: dict[int, list[bool]] = {}  # node -> share-rw of each device using it
        for name, shares in self.device_refs.items():
            if (node := self.by_name.get(name)) is not None:
                used.setdefault(id(node), []).extend(shares)
        found: dict[str, list[tuple[bool, bool, str]]] = {}
        for top in self.tops:
            uses = used.get(id(top), [])
            if top in self.drives or uses or id(top) not in referenced:
                shared = top.shared or (bool(uses) and all(uses))
                self._walk(top, top.read_only, shared, found, set())
        disks = []
        for path, hits in found.items():
            readonly = all(ro for ro, _, _ in hits)
            shared = not readonly and all(sh for ro, sh, _ in hits if not ro)
            disks.append(Disk(path, readonly, shared, hits[0][2]))
        return disks

    def _walk(self, node: _Node, read_only: bool, shared: bool, found: dict, stack: set[int]) -> None:
        if id(node) in stack:
            return
        read_only = read_only or node.read_only
        if node.path is not None:
            found.setdefault(node.path, []).append((read_only, shared, node.label))
        for ref in node.data:
            child = self.resolve(ref)
            if child is not None:
                self._walk(child, read_only, shared, found, stack | {id(node)})

    def _all(self) -> Iterator[_Node]:
        seen: set[int] = set()
        todo = list(self.tops)
        while todo:
            node = todo.pop()
            if id(node) not in seen:
                seen.add(id(node))
                todo += [c for c in node.data + node.backing if isinstance(c, _Node)]
                yield node


# --- -drive and the shorthands -------------------------------------------------


def _protocol_opts(filename: str, label: str, position: int) -> dict[str, Any] | None:
    """Options of the node that opens ``filename``: its protocol prefix (``nbd:``...) picks the driver.

    As in QEMU, a filename has a protocol if a ``:`` comes before any ``/``."""
    colon, slash = filename.find(":"), filename.find("/")
    if colon < 0 or 0 <= slash < colon:
        return {"driver": "file", "filename": filename}
    protocol, rest = filename[:colon], filename[colon + 1:]
    if protocol in ("file", "host_device", "host_cdrom"):
        return {"driver": protocol, "filename": rest}
    if protocol == "fat":
        rw = False
        while True:
            head, sep, tail = rest.partition(":")
            if not sep or head not in ("rw", "floppy", "12", "16", "32"):
                break
            rw, rest = rw or head == "rw", tail
        return {"driver": "vvfat", "dir": rest, "rw": rw}
    if protocol in NO_LOCAL_DRIVERS:
        return None
    raise QemuArgsError(option=label, position=position,
                        reason=f"file={filename}: unsupported protocol {protocol!r} (expected a local path, a network "
                        f"protocol, or json:; a local name with ':' needs a '/' before it, e.g. ./{filename})")


def _drive(graph: _Graph, flat: dict[str, str], label: str, position: int) -> None:
    """Add one -drive (or -hda...): ``file=`` names the top node's file or, under a format, its protocol child's."""
    filename = flat.pop("file", None)
    read_only = any(_bool(flat.pop(k), k, label, position) for k in ("readonly", "read-only") if k in flat)
    read_only = read_only or flat.get("media") == "cdrom"
    shared = "share-rw" in flat and _bool(flat.pop("share-rw"), "share-rw", label, position)
    opts = _nest(list(flat.items()), label, position)
    if "format" in opts:
        opts.setdefault("driver", opts.pop("format"))
    if filename and filename.startswith("json:"):
        opts = {**_json(filename[5:], label, position), **opts}  # explicit options win, as in QEMU
        filename = opts.pop("filename", None) if opts.get("driver") not in LOCAL_DRIVERS else None
    driver = opts.get("driver")
    if filename and driver in LOCAL_DRIVERS:
        protocol = _protocol_opts(filename, label, position)
        same = protocol is not None and protocol.get("driver") == driver
        opts.setdefault(LOCAL_DRIVERS[driver], protocol[LOCAL_DRIVERS[driver]] if same else filename)
    elif filename and driver not in NO_LOCAL_DRIVERS:
        protocol = _protocol_opts(filename, label, position)
        if protocol is None:
            return  # network storage: not leased
        child = opts.get("file", {})
        if not isinstance(child, dict) or any(k in child for k in ("filename", "dir")):
            raise QemuArgsError(option=label, position=position,
                                reason=f"file={filename}: expected no other file or file.filename, got both")
        opts["file"] = {**protocol, **child}
    elif not filename and driver not in LOCAL_DRIVERS and not any(k in opts for k in DATA_CHILD_KEYS):
        return  # no medium (an empty cdrom drive)
    opts.setdefault("driver", "raw")  # a probed format: whatever it is, its file child is what we lease
    node = graph.add(opts, label, position, read_only=read_only)
    node.shared = shared
    graph.tops.append(node)
    graph.drives.append(node)
    if "id" in flat:
        graph.by_name.setdefault(flat["id"], node)


def _device(graph: _Graph, value: str, position: int) -> None:
    """Note which drive or node a -device uses, and whether it shares it (``share-rw``)."""
    opts = _json(value, "-device", position) if value.startswith("{") else dict(_split(value, "-device", position,
                                                                                       implied="driver"))
    drive = opts.get("drive")
    if isinstance(drive, str) and drive:
        shared = _bool(opts.get("share-rw", False), "share-rw", f"-device {opts.get('driver', '')}", position)
        graph.device_refs.setdefault(drive, []).append(shared)


def _refuse_hidden(opt: str, value: str, position: int) -> None:
    """Options that can add or change disks out of our sight."""
    if opt == "readconfig":
        raise QemuArgsError(option="-readconfig", position=position,
                            reason=f"{value}: a config file may define disks we cannot see; put them on the "
                            f"command line")
    if opt == "set" and value.split(".", 1)[0] in ("drive", "device", "blockdev"):
        raise QemuArgsError(option="-set", position=position,
                            reason=f"{value}: -set may change a disk we cannot see; write the option on the "
                            f"-drive/-device itself")


def find_disks(argv: list[str]) -> list[Disk]:
    """The local disks QEMU will open for ``argv`` (without the emulator), in order of first appearance."""
    graph = _Graph()
    drive_count = blockdev_count = 0
    for opt, value, position in _options(argv):
        if value is None:
            continue
        _refuse_hidden(opt, value, position)
        if opt == "drive":
            drive_count += 1
            flat = dict(_split(value, "-drive", position))
            _drive(graph, flat, f"-drive #{drive_count}", position)
        elif opt in SHORTHAND_DISKS or opt == "":
            label = f"-{opt}" if opt else f"disk image (argument {position})"
            flat = {"file": value, "media": "cdrom" if SHORTHAND_DISKS.get(opt) else "disk"}
            _drive(graph, flat, label, position)
        elif opt == "blockdev":
            blockdev_count += 1
            if value.startswith("{"):
                opts = _json(value, "-blockdev", position)
            else:
                opts = _nest(_split(value, "-blockdev", position, implied="driver", bare_flags=False),
                             "-blockdev", position)
            name = opts.get("node-name")
            label = f"-blockdev node-name={name}" if name else f"-blockdev #{blockdev_count}"
            graph.tops.append(graph.add(opts, label, position))
        elif opt == "device":
            _device(graph, value, position)
    return graph.disks()
