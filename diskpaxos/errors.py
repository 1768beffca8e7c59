"""One exception hierarchy for diskpaxos.

Every error carries the code sanlock would return for the same condition
(negative, as in ``sanlock_rv.h``, or a negative errno), so that front ends and
tests can compare behaviour with sanlock by code, and a message that names the
path, the byte offset and the field involved so an admin can act on it.

Classes declare ``code`` and a ``template``; the keyword fields given to the
constructor fill the template and stay available as attributes, so tests
assert on fields rather than on message text.
"""

from __future__ import annotations

import errno as _errno
from typing import Any


class DiskpaxosError(Exception):
    """Base of every diskpaxos error."""

    code: int = -201  # SANLK_ERROR
    template: str = "{reason}"

    def __init__(self, reason: str | None = None, **fields: Any) -> None:
        self.fields = dict(fields)
        if reason is not None:
            self.fields.setdefault("reason", reason)
        for key, value in self.fields.items():
            setattr(self, key, value)
        super().__init__(self._render())

    def _render(self) -> str:
        try:
            text = self.template.format(**self.fields)
        except (KeyError, IndexError, ValueError):
            text = f"{self.template} {self.fields}"
        where = self.fields.get("path")
        if where is not None and "{path}" not in self.template:
            offset = self.fields.get("offset")
            prefix = f"{where}" if offset is None else f"{where} offset {offset}"
            text = f"{prefix}: {text}"
        return text

    @property
    def message(self) -> str:
        return str(self)


# --- usage -----------------------------------------------------------------


class UsageError(DiskpaxosError):
    """The caller asked for something malformed (bad argument, bad name)."""

    code = -_errno.EINVAL


# --- storage ---------------------------------------------------------------


class StorageError(DiskpaxosError):
    """An I/O-level failure; retried by renewals until id_renewal_fail."""

    code = -_errno.EIO


class OpenError(StorageError):
    template = "cannot open: {reason}"


class NotDirectIOCapable(OpenError):
    template = "cannot open with O_DIRECT (the filesystem refuses direct I/O): {reason}"
    code = -_errno.EINVAL


class AlignmentError(StorageError):
    """Offset, length or buffer not aligned to the sector size; checked before any syscall."""

    code = -_errno.EINVAL
    template = "{field} {value} is not a multiple of the sector size {sector_size}"


class ShortIOError(StorageError):
    template = "{op} of {length} bytes transferred only {done} bytes"


class IOTimeout(StorageError):
    """The I/O did not complete within its deadline (SANLK_AIO_TIMEOUT)."""

    code = -202
    template = "{op} of {length} bytes did not complete within {timeout} s"


class WriteStillInFlight(IOTimeout):
    """A new I/O would be issued while an earlier abandoned write may still land."""

    template = ("{op} of {length} bytes not issued: an earlier write that missed its deadline "
                "has not completed within {timeout} s")


class IOFailed(StorageError):
    template = "{op} of {length} bytes failed: {reason}"


class TargetTooSmall(StorageError):
    code = -_errno.ENOSPC
    template = "target is {size} bytes, needs at least {needed} bytes"


class ExistingDataError(DiskpaxosError):
    """Refusal to overwrite data that is not ours without --force."""

    code = -_errno.EEXIST
    template = "{reason}; refusing to overwrite (use --force)"


# --- on-disk format (codes as sanlock's) -----------------------------------


class FormatError(DiskpaxosError):
    """A record read from storage is not what it must be."""


class LeaderMagicError(FormatError):
    code = -223  # SANLK_LEADER_MAGIC
    template = "{field} 0x{found:08x} is not {expected}"


class LeaderVersionError(FormatError):
    code = -224  # SANLK_LEADER_VERSION
    template = "{field} 0x{found:08x} has unsupported major version, expected 0x{expected:08x}"


class LeaderSectorSizeError(FormatError):
    code = -225  # SANLK_LEADER_SECTORSIZE
    template = "{field} {found} {reason}"


class LeaderLockspaceError(FormatError):
    code = -226  # SANLK_LEADER_LOCKSPACE
    template = "space_name {found!r} does not match lockspace {expected!r}"


class LeaderResourceError(FormatError):
    code = -227  # SANLK_LEADER_RESOURCE
    template = "resource_name {found!r} does not match resource {expected!r}"


class LeaderNumHostsError(FormatError):
    code = -228  # SANLK_LEADER_NUMHOSTS
    template = "num_hosts {found} is smaller than host_id {expected}"


class LeaderChecksumError(FormatError):
    code = -229  # SANLK_LEADER_CHECKSUM
    template = "leader checksum 0x{found:08x} does not match computed 0x{expected:08x}"


class DblockChecksumError(FormatError):
    code = -214  # SANLK_DBLOCK_CHECKSUM
    template = "dblock of host_id {host_id} checksum 0x{found:08x} does not match computed 0x{expected:08x}"


class GeometryError(FormatError):
    code = -230  # SANLK_ADDLS_SIZES
    template = "{reason}"


class InvalidHostIdError(FormatError):
    code = -231  # SANLK_ADDLS_INVALID_HOSTID
    template = "host_id {host_id} is outside 1..{max_hosts}"


class RequestMagicError(FormatError):
    code = -270  # SANLK_REQUEST_MAGIC
    template = "request magic 0x{found:08x} is not 0x{expected:08x}"


class RequestVersionError(FormatError):
    code = -271  # SANLK_REQUEST_VERSION
    template = "request version 0x{found:08x} has unsupported major version"


class RindexMagicError(FormatError):
    code = -274  # SANLK_RINDEX_MAGIC
    template = "rindex magic 0x{found:08x} is not 0x{expected:08x}"


class RindexVersionError(FormatError):
    code = -275  # SANLK_RINDEX_VERSION
    template = "rindex version 0x{found:08x} has unsupported major version"


class RindexLockspaceError(FormatError):
    code = -276  # SANLK_RINDEX_LOCKSPACE
    template = "rindex lockspace_name {found!r} does not match {expected!r}"


class RindexOffsetError(FormatError):
    code = -277  # SANLK_RINDEX_OFFSET
    template = "rindex rx_offset {found} does not match where it was read ({expected})"
