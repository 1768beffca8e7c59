"""sanlock's lease strings: ``LOCKSPACE`` and ``RESOURCE`` arguments.

``LOCKSPACE = name:host_id:path:offset`` and
``RESOURCE = lockspace:name:path:offset[:path:offset...][:lver|:SH]``; a
backslash escapes a ``:`` inside a path.  Offsets accept ``1M``-style suffixes
(powers of 1024) besides plain bytes, as everywhere in the diskpaxos CLI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import errors
from .format import NAME_LEN, check_name

MAX_PATH_LEN = 1023
MAX_DISKS = 4
_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "S": 512}
_SIZE_RE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([KMGTS]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from ``4096``, ``0x1000``, ``1M``, ``8MiB`` (suffixes are powers of 1024)."""
    m = _SIZE_RE.match(str(text)) if len(str(text)) <= 40 else None
    if not m:
        raise errors.UsageError(f"{what} {text!r} is not a number of bytes (e.g. 1048576, 1M, 8M)")
    number = int(m.group(1), 0)
    return number * _SUFFIXES[m.group(2).upper()]


def split_unescaped(text: str) -> list[str]:
    """Split on ``:`` not preceded by a backslash, removing the escapes."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def _check_path(path: str, arg: str) -> None:
    if not path:
        raise errors.UsageError(f"{arg}: the path is empty")
    if len(path) > MAX_PATH_LEN:
        raise errors.UsageError(f"{arg}: path is {len(path)} characters, at most {MAX_PATH_LEN}")


@dataclass(frozen=True)
class LockspaceArg:
    name: str
    host_id: int
    path: str
    offset: int

    def __str__(self) -> str:
        return f"{self.name}:{self.host_id}:{_escape(self.path)}:{self.offset}"


@dataclass(frozen=True)
class Disk:
    path: str
    offset: int


@dataclass(frozen=True)
class ResourceArg:
    lockspace: str
    name: str
    disks: tuple[Disk, ...]
    lver: int | None = None
    shared: bool = False

    @property
    def path(self) -> str:
        return self.disks[0].path

    @property
    def offset(self) -> int:
        return self.disks[0].offset

    def __str__(self) -> str:
        disks = ":".join(f"{_escape(d.path)}:{d.offset}" for d in self.disks)
        extra = ":SH" if self.shared else (f":{self.lver}" if self.lver is not None else "")
        return f"{self.lockspace}:{self.name}:{disks}{extra}"


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:")


def parse_lockspace(text: str) -> LockspaceArg:
    """Parse ``name:host_id:path:offset`` (offset may be omitted: 0)."""
    parts = split_unescaped(text)
    if len(parts) == 3:
        parts.append("0")
    if len(parts) != 4:
        raise errors.UsageError(f"lockspace {text!r} is not NAME:HOST_ID:PATH:OFFSET")
    name, host_id_text, path, offset_text = parts
    check_name("lockspace name", name)
    try:
        host_id = int(host_id_text, 0)
    except ValueError:
        raise errors.UsageError(f"lockspace {text!r}: host_id {host_id_text!r} is not a number") from None
    if host_id < 0:
        raise errors.UsageError(f"lockspace {text!r}: host_id {host_id} is negative")
    _check_path(path, f"lockspace {text!r}")
    return LockspaceArg(name, host_id, path, parse_size(offset_text, "offset"))


def parse_resource(text: str) -> ResourceArg:
    """Parse ``lockspace:name:path:offset[:path:offset...][:lver|:SH]``."""
    parts = split_unescaped(text)
    colons = len(parts) - 1
    if colons < 3 or colons == 2:
        raise errors.UsageError(f"resource {text!r} is not LOCKSPACE:NAME:PATH:OFFSET[:LVER|:SH]")
    lockspace, name, rest = parts[0], parts[1], parts[2:]
    check_name("lockspace name", lockspace)
    check_name("resource name", name)
    lver: int | None = None
    shared = False
    if len(rest) % 2 == 1:
        extra = rest.pop()
        if extra == "SH":
            shared = True
        else:
            try:
                lver = int(extra, 0)
            except ValueError:
                raise errors.UsageError(f"resource {text!r}: {extra!r} is neither a lease version nor SH") from None
    if len(rest) // 2 > MAX_DISKS:
        raise errors.UsageError(f"resource {text!r} names {len(rest) // 2} disks, at most {MAX_DISKS}")
    disks = []
    for i in range(0, len(rest), 2):
        _check_path(rest[i], f"resource {text!r}")
        disks.append(Disk(rest[i], parse_size(rest[i + 1], "offset")))
    return ResourceArg(lockspace, name, tuple(disks), lver, shared)


__all__ = ["NAME_LEN", "LockspaceArg", "ResourceArg", "Disk", "parse_lockspace", "parse_resource",
           "parse_size", "split_unescaped"]
