"""Which leases a VM needs, named as libvirt's sanlock driver names them, and their files.

libvirt's auto disk leases (spec libvirt-frontend section 1.3-1.4): one lockspace
``__LIBVIRT__DISKS__`` in ``<disk_lease_dir>/__LIBVIRT__DISKS__``, and per disk path a
lease named by the lowercase hex MD5 of the path string exactly as written, in
``<disk_lease_dir>/<md5>`` at offset 0; shareable disks take it shared, read-only
disks take none.  Using the same names and files is what lets a libvirt+sanlock
host and a diskpaxos host protect the same disk from each other.

Files are created the first time they are needed.  Unlike libvirt (create, then
initialise in place), a file is built under a temporary name and published with
``link()``, which fails if the name exists: nobody ever sees a half-written lease.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from .. import direct, errors
from ..format import MiB
from ..lease_strings import Disk as LeaseDisk
from ..lease_strings import LockspaceArg, ResourceArg, parse_resource
from ..timeouts import DEFAULT_IO_TIMEOUT
from .args import Disk
from .config import QemuConfig

log = logging.getLogger(__name__)

LOCKSPACE = "__LIBVIRT__DISKS__"
AREA_SIZE = 1 * MiB  # one lease (or the 2000-host lockspace) at 512-byte sectors, as libvirt sizes them


class LeaseRequiredError(errors.UsageError):
    """libvirt's require_lease_for_disks refusal."""

    template = ("Read/write, exclusive access, disks were present, but no leases specified ({disk}); "
                "set auto_disk_leases = 1 in {config} or give --lease")


class LeaseDirError(errors.UsageError):
    template = "disk_lease_dir {path}: {reason}"


def lease_name(disk_path: str) -> str:
    """The lease (resource) name of a disk: MD5 of the path string as given, no NUL, no normalising."""
    return hashlib.md5(disk_path.encode(), usedforsecurity=False).hexdigest()


def lockspace_path(config: QemuConfig) -> str:
    return os.path.join(config.disk_lease_dir, LOCKSPACE)


def lockspace_arg(config: QemuConfig) -> LockspaceArg:
    return LockspaceArg(LOCKSPACE, config.host_id, lockspace_path(config), 0)


@dataclass(frozen=True)
class PlannedLease:
    """One lease a VM must hold; ``disk`` is the disk path it protects (None: an explicit lease)."""

    resource: ResourceArg
    disk: str | None

    @property
    def auto(self) -> bool:
        return self.disk is not None


def disk_lease(config: QemuConfig, disk: Disk) -> PlannedLease:
    name = lease_name(disk.path)
    res = ResourceArg(LOCKSPACE, name, (LeaseDisk(os.path.join(config.disk_lease_dir, name), 0),),
                      shared=disk.shared)
    return PlannedLease(res, disk.path)


def plan(config: QemuConfig, disks: list[Disk], explicit: list[str]) -> list[PlannedLease]:
    """The leases for a VM with these disks and explicit ``LS:KEY:PATH:OFFSET`` leases.

    Explicit leases are always exclusive (libvirt passes no flags for them).  With no
    lease at all and a writable, non-shared disk, ``require_lease_for_disks`` refuses.
    """
    leases: list[PlannedLease] = []
    for text in explicit:
        res = parse_resource(text)
        if res.lver is not None or res.shared or len(res.disks) != 1:
            raise errors.UsageError(f"--lease {text!r}: expected LOCKSPACE:KEY:PATH:OFFSET")
        leases.append(PlannedLease(res, None))
    if config.auto_disk_leases:
        leases += [disk_lease(config, d) for d in disks if not d.readonly]
    if not leases and config.require_lease_for_disks:
        exclusive = [d for d in disks if not d.readonly and not d.shared]
        if exclusive:
            raise LeaseRequiredError(disk=exclusive[0].path, config=config.path or "the config")
    return leases


# --- files -------------------------------------------------------------------------


def _publish(final: str, build: Callable[[str], object], config: QemuConfig, mode: int) -> bool:
    """Create ``final`` fully built, or leave an existing one alone.  True if we created it."""
    directory = os.path.dirname(final)
    if not os.path.isdir(directory):
        raise LeaseDirError(path=directory, reason="does not exist or is not a directory")
    if os.path.lexists(final):
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        uid, gid = config.uid(), config.gid()
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.ftruncate(fd, AREA_SIZE)
        os.close(fd)
        fd = -1
        build(tmp)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False  # someone else published it first: theirs is complete too
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            return _publish_without_link(final, tmp)
        log.info("created %s", final)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _publish_without_link(final: str, tmp: str) -> bool:
    """A filesystem without hard links: rename, refusing to replace what appeared meanwhile."""
    try:
        fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)  # the name is ours now; the complete file replaces the empty placeholder
    os.rename(tmp, final)
    return True


def ensure_lockspace_file(config: QemuConfig) -> bool:
    """The lockspace file, created and initialised (2000 hosts, the config's io_timeout) if missing."""
    io_timeout = config.io_timeout or DEFAULT_IO_TIMEOUT
    mode = 0o660 if config.group is not None else 0o600
    created = _publish(lockspace_path(config),
                       lambda tmp: direct.init_lockspace(tmp, 0, LOCKSPACE, io_timeout=io_timeout), config, mode)
    if not created:
        _match_owner(lockspace_path(config), config, mode)
    return created


def _match_owner(path: str, config: QemuConfig, mode: int) -> None:
    """As libvirt does for an existing lockspace file: give it the configured owner and mode."""
    uid, gid = config.uid(), config.gid()
    if uid is None and gid is None:
        return
    try:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(path, mode)
    except OSError as e:
        raise LeaseDirError(path=path, reason=f"cannot set owner and mode: {e.strerror}") from None


def ensure_lease_file(config: QemuConfig, lease: PlannedLease) -> bool:
    """An auto disk lease's file, created and initialised if missing (explicit leases never are)."""
    if not lease.auto:
        return False
    res = lease.resource
    return _publish(res.path, lambda tmp: direct.init_resource(tmp, 0, LOCKSPACE, res.name), config, 0o600)


__all__ = ["LOCKSPACE", "PlannedLease", "LeaseRequiredError", "LeaseDirError", "lease_name", "lockspace_path",
           "lockspace_arg", "disk_lease", "plan", "ensure_lockspace_file", "ensure_lease_file"]
