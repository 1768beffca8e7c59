"""sanlock's on-disk records, byte for byte, and where they live.

One declarative table per record (``*_FIELDS``) drives both views of the
bytes: a ``construct`` struct for a single record (dumps, writes, tests) and a
numpy structured dtype for whole areas (a 2000-host lockspace parsed in one
pass during every renewal).  ``tests/unit/test_format.py`` proves the two agree.

Nothing here does I/O; see ``io_direct`` for that.  Every constant of the
format is defined once, here.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import construct as cs
import numpy as np

from . import errors
from .checksum import checksums, sanlock_checksum

# --- constants ----------------------------------------------------------------

DELTA_DISK_MAGIC = 0x12212010
DELTA_DISK_VERSION = 0x00030004
PAXOS_DISK_MAGIC = 0x06152010
PAXOS_DISK_VERSION = 0x00060004
PAXOS_DISK_CLEAR = 0x11282016
REQ_DISK_MAGIC = 0x08292011
REQ_DISK_VERSION = 0x00010001
RINDEX_DISK_MAGIC = 0x01042018
RINDEX_DISK_VERSION = 0x00010002
VERSION_MAJOR_MASK = 0xFFFF0000

NAME_LEN = 48
LEADER_CHECKSUM_LEN = 168
LEADER_COMPARE_LEN = 152
DBLOCK_CHECKSUM_LEN = 48
MBLOCK_OFFSET = 128
HOSTID_BITMAP_OFFSET = 256
HOSTID_BITMAP_SIZE = 256
DEFAULT_MAX_HOSTS = 2000
DEFAULT_IO_TIMEOUT = 10
DEFAULT_MAX_RESOURCES = 4096
RINDEX_LEASE_NAME = "rindex_lease"

LFL_SHORT_HOLD = 0x1
DBLOCK_FL_RELEASED = 0x1
MBLOCK_SHARED = 0x1

SECTOR_SIZES = (512, 4096)
MiB = 1024 * 1024


class HostState(enum.IntEnum):
    """Host states as sanlock reports them (``client host_status``)."""

    UNKNOWN = 1
    FREE = 2
    LIVE = 3
    FAIL = 4
    DEAD = 5


class ForceMode(enum.IntEnum):
    """Request record force modes."""

    NONE = 0
    FORCE = 1
    GRACEFUL = 2


# --- the field tables ---------------------------------------------------------

class _NameAdapter(cs.Adapter):  # type: ignore[misc]
    """A 48-byte name field: the bytes without the trailing NUL padding, NUL-padded on build.

    Decoded as UTF-8 with surrogateescape so any bytes (garbage included)
    parse and re-encode unchanged; ``name_bytes`` gives them back for output.
    Bytes after an embedded NUL are kept (only trailing NULs are stripped, as
    numpy's ``S48`` does): dropping them would make ``to_bytes`` differ from
    the bytes read, and the checksum computed from the record would then
    reject a record sanlock accepts.  Comparisons use C-string semantics
    (``_name_matches``), display code should cut at the first NUL.
    """

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return obj.rstrip(b"\0").decode("utf8", "surrogateescape")

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        raw = name_bytes(obj)
        if len(raw) > NAME_LEN:
            raise errors.UsageError(f"name {obj!r} is {len(raw)} bytes, at most {NAME_LEN} allowed")
        return raw.ljust(NAME_LEN, b"\0")


def name_bytes(name: str) -> bytes:
    """The on-disk bytes of a name as decoded by the record classes."""
    return name.encode("utf8", "surrogateescape")


_PRIMITIVES: dict[str, tuple[Any, str, int]] = {
    # kind: (construct type, numpy type, size)
    "u16": (cs.Int16ul, "<u2", 2),
    "u32": (cs.Int32ul, "<u4", 4),
    "u64": (cs.Int64ul, "<u8", 8),
    "name": (_NameAdapter(cs.Bytes(NAME_LEN)), f"S{NAME_LEN}", NAME_LEN),
}


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # a key of _PRIMITIVES, or "pad" (zero bytes, unnamed in records)
    size: int = 0

    @property
    def nbytes(self) -> int:
        return self.size if self.kind == "pad" else _PRIMITIVES[self.kind][2]


def _f(name: str, kind: str) -> Field:
    return Field(name, kind)


def _pad(size: int) -> Field:
    return Field("", "pad", size)


LEADER_FIELDS: tuple[Field, ...] = (
    _f("magic", "u32"), _f("version", "u32"), _f("flags", "u32"), _f("sector_size", "u32"),
    _f("num_hosts", "u64"), _f("max_hosts", "u64"), _f("owner_id", "u64"),
    _f("owner_generation", "u64"), _f("lver", "u64"),
    _f("space_name", "name"), _f("resource_name", "name"),
    _f("timestamp", "u64"), _f("unused1", "u64"),
    _f("checksum", "u32"), _f("unused2", "u16"), _f("io_timeout", "u16"),
    _f("write_id", "u64"), _f("write_generation", "u64"), _f("write_timestamp", "u64"),
)
REQUEST_FIELDS: tuple[Field, ...] = (
    _f("magic", "u32"), _f("version", "u32"), _f("lver", "u64"), _f("force_mode", "u32"), _pad(4),
)
DBLOCK_FIELDS: tuple[Field, ...] = (
    _f("mbal", "u64"), _f("bal", "u64"), _f("inp", "u64"), _f("inp2", "u64"), _f("inp3", "u64"),
    _f("lver", "u64"), _f("checksum", "u32"), _f("flags", "u32"),
)
MODE_BLOCK_FIELDS: tuple[Field, ...] = (_f("flags", "u32"), _pad(4), _f("generation", "u64"))
RINDEX_HEADER_FIELDS: tuple[Field, ...] = (
    _f("magic", "u32"), _f("version", "u32"), _f("flags", "u32"), _f("sector_size", "u32"),
    _f("max_resources", "u32"), _f("unused", "u32"), _f("rx_offset", "u64"),
    _f("lockspace_name", "name"),
)
RINDEX_ENTRY_FIELDS: tuple[Field, ...] = (
    _f("res_offset", "u64"), _f("flags", "u32"), _f("unused", "u32"), _f("name", "name"),
)


def table_size(fields: Sequence[Field]) -> int:
    return sum(f.nbytes for f in fields)


def field_offsets(fields: Sequence[Field]) -> dict[str, int]:
    """Byte offset of every named field."""
    out, pos = {}, 0
    for f in fields:
        if f.kind != "pad":
            out[f.name] = pos
        pos += f.nbytes
    return out


def construct_struct(fields: Sequence[Field]) -> cs.Struct:
    """The construct spec of one record, generated from its field table."""
    parts = []
    for f in fields:
        if f.kind == "pad":
            parts.append(cs.Padding(f.size))
        else:
            parts.append(f.name / _PRIMITIVES[f.kind][0])
    return cs.Struct(*parts)


def numpy_fields(fields: Sequence[Field], base: int = 0) -> dict[str, tuple[str, int]]:
    """``{name: (numpy type, byte offset)}`` for a record placed at ``base``."""
    out, pos = {}, base
    for f in fields:
        if f.kind != "pad":
            out[f.name] = (_PRIMITIVES[f.kind][1], pos)
        pos += f.nbytes
    return out


def numpy_dtype(fields: Sequence[Field], itemsize: int | None = None) -> np.dtype:
    """The structured dtype of one record (optionally padded to a sector)."""
    spec = numpy_fields(fields)
    return np.dtype({
        "names": list(spec),
        "formats": [t for t, _ in spec.values()],
        "offsets": [o for _, o in spec.values()],
        "itemsize": itemsize or table_size(fields),
    })


LEADER_SIZE = table_size(LEADER_FIELDS)          # 200
REQUEST_SIZE = table_size(REQUEST_FIELDS)        # 24
DBLOCK_SIZE = table_size(DBLOCK_FIELDS)          # 56
MODE_BLOCK_SIZE = table_size(MODE_BLOCK_FIELDS)  # 16
RINDEX_HEADER_SIZE = table_size(RINDEX_HEADER_FIELDS)  # 80
RINDEX_ENTRY_SIZE = table_size(RINDEX_ENTRY_FIELDS)    # 64
LEADER_CHECKSUM_OFFSET = field_offsets(LEADER_FIELDS)["checksum"]
DBLOCK_CHECKSUM_OFFSET = field_offsets(DBLOCK_FIELDS)["checksum"]
assert LEADER_CHECKSUM_OFFSET == LEADER_CHECKSUM_LEN and DBLOCK_CHECKSUM_OFFSET == DBLOCK_CHECKSUM_LEN


# --- single records -----------------------------------------------------------

R = TypeVar("R", bound="Record")


_STRUCT_CODES = {"u16": "H", "u32": "I", "u64": "Q", "name": f"{NAME_LEN}s"}


def packer(fields: Sequence[Field]) -> struct.Struct:
    """A ``struct.Struct`` for one record, generated from its field table.

    The fast path of ``Record.to_bytes``/``from_bytes`` (a renewal builds and
    parses records several times); the construct spec stays the declarative
    view used for dumps, and the tests prove the three views agree.
    """
    return struct.Struct("<" + "".join(f"{f.size}x" if f.kind == "pad" else _STRUCT_CODES[f.kind]
                                       for f in fields))


class Record:
    """A dataclass record serialised by the field table ``FIELDS``.

    Names are ``str`` (trailing NULs stripped, undecodable bytes kept as
    surrogates); building NUL-pads them.
    """

    FIELDS: ClassVar[tuple[Field, ...]]
    STRUCT: ClassVar[cs.Struct]
    PACKER: ClassVar[struct.Struct]
    SIZE: ClassVar[int]
    _NAMES: ClassVar[tuple[str, ...]]
    _NAME_FIELDS: ClassVar[frozenset[str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "FIELDS" in cls.__dict__:
            cls.STRUCT = construct_struct(cls.FIELDS)
            cls.PACKER = packer(cls.FIELDS)
            cls.SIZE = table_size(cls.FIELDS)
            assert cls.PACKER.size == cls.SIZE
            cls._NAMES = tuple(f.name for f in cls.FIELDS if f.kind != "pad")
            cls._NAME_FIELDS = frozenset(f.name for f in cls.FIELDS if f.kind == "name")

    @classmethod
    def from_bytes(cls: type[R], data: bytes | bytearray | memoryview | np.ndarray) -> R:
        raw = bytes(memoryview(data)[: cls.SIZE])  # type: ignore[arg-type]
        if len(raw) < cls.SIZE:
            raise errors.FormatError(f"{cls.__name__} needs {cls.SIZE} bytes, got {len(raw)}")
        values = cls.PACKER.unpack(raw)
        names = cls._NAME_FIELDS
        return cls(**{n: (v.rstrip(b"\0").decode("utf8", "surrogateescape") if n in names else v)
                      for n, v in zip(cls._NAMES, values)})

    def to_bytes(self) -> bytes:
        values = []
        for n in self._NAMES:
            v = getattr(self, n)
            if n in self._NAME_FIELDS:
                v = name_bytes(v)
                if len(v) > NAME_LEN:
                    raise errors.UsageError(
                        f"{n} {getattr(self, n)!r} is {len(v)} bytes, at most {NAME_LEN} allowed")
            values.append(v)
        try:
            return self.PACKER.pack(*values)
        except struct.error as e:
            raise errors.UsageError(f"{type(self).__name__}: {e}") from None

    def replace(self: R, **changes: Any) -> R:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class LeaderRecord(Record):
    """Delta-lease (host_id) record and paxos-lease leader: the same 200 bytes."""

    FIELDS = LEADER_FIELDS
    magic: int = 0
    version: int = 0
    flags: int = 0
    sector_size: int = 0
    num_hosts: int = 0
    max_hosts: int = 0
    owner_id: int = 0
    owner_generation: int = 0
    lver: int = 0
    space_name: str = ""
    resource_name: str = ""
    timestamp: int = 0
    unused1: int = 0
    checksum: int = 0
    unused2: int = 0
    io_timeout: int = 0
    write_id: int = 0
    write_generation: int = 0
    write_timestamp: int = 0

    def compute_checksum(self) -> int:
        return sanlock_checksum(self.replace(checksum=0).to_bytes()[:LEADER_CHECKSUM_LEN])

    def with_checksum(self) -> LeaderRecord:
        return self.replace(checksum=self.compute_checksum())

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.compute_checksum()


@dataclass(frozen=True)
class RequestRecord(Record):
    FIELDS = REQUEST_FIELDS
    magic: int = REQ_DISK_MAGIC
    version: int = REQ_DISK_VERSION
    lver: int = 0
    force_mode: int = 0


@dataclass(frozen=True)
class Dblock(Record):
    """A host's Disk Paxos block: its ballot for one lease version."""

    FIELDS = DBLOCK_FIELDS
    mbal: int = 0
    bal: int = 0
    inp: int = 0
    inp2: int = 0
    inp3: int = 0
    lver: int = 0
    checksum: int = 0
    flags: int = 0

    def compute_checksum(self) -> int:
        return sanlock_checksum(self.to_bytes()[:DBLOCK_CHECKSUM_LEN])

    def with_checksum(self) -> Dblock:
        return self.replace(checksum=self.compute_checksum())

    @property
    def is_unwritten(self) -> bool:
        """A never-written dblock verifies without a checksum (spec 3.4)."""
        return self.checksum == 0 and self.mbal == 0 and self.bal == 0 and self.inp == 0 and self.lver == 0

    @property
    def checksum_ok(self) -> bool:
        return self.is_unwritten or self.checksum == self.compute_checksum()


@dataclass(frozen=True)
class ModeBlock(Record):
    FIELDS = MODE_BLOCK_FIELDS
    flags: int = 0
    generation: int = 0


@dataclass(frozen=True)
class RindexHeader(Record):
    FIELDS = RINDEX_HEADER_FIELDS
    magic: int = RINDEX_DISK_MAGIC
    version: int = RINDEX_DISK_VERSION
    flags: int = 0
    sector_size: int = 0
    max_resources: int = 0
    unused: int = 0
    rx_offset: int = 0
    lockspace_name: str = ""


@dataclass(frozen=True)
class RindexEntry(Record):
    FIELDS = RINDEX_ENTRY_FIELDS
    res_offset: int = 0
    flags: int = 0
    unused: int = 0
    name: str = ""

    @property
    def is_empty(self) -> bool:
        return self.res_offset == 0 and not self.name


# --- geometry -----------------------------------------------------------------

# (sector_size, align_size) -> (max_hosts, leader ALIGN flag, rindex ALIGN flag)
_GEOMETRIES: dict[tuple[int, int], tuple[int, int, int]] = {
    (512, 1 * MiB): (2000, 0x10, 0x1),
    (4096, 1 * MiB): (250, 0x10, 0x1),
    (4096, 2 * MiB): (500, 0x20, 0x2),
    (4096, 4 * MiB): (1000, 0x40, 0x4),
    (4096, 8 * MiB): (2000, 0x80, 0x8),
}
LFL_ALIGN_MASK = 0xF0
RHF_ALIGN_MASK = 0xF
ALIGN_SIZES = (1 * MiB, 2 * MiB, 4 * MiB, 8 * MiB)


def _roundup_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class Geometry:
    """Sector size and alignment of a lease area, and where each record lives.

    Offsets are absolute device offsets given the area's start.
    """

    sector_size: int
    align_size: int

    def __post_init__(self) -> None:
        if (self.sector_size, self.align_size) not in _GEOMETRIES:
            raise errors.GeometryError(
                f"sector size {self.sector_size} with align {_fmt_size(self.align_size)} is not a valid "
                "geometry (512 with 1M, or 4096 with 1M/2M/4M/8M)")

    @classmethod
    def default_for(cls, sector_size: int) -> Geometry:
        """sanlock's default when only the sector size is known: 512 -> 1M, 4096 -> 8M."""
        return cls(sector_size, 1 * MiB if sector_size == 512 else 8 * MiB)

    @classmethod
    def from_leader_flags(cls, flags: int, sector_size: int) -> Geometry:
        """The geometry a leader record declares (no ALIGN flag: pre-minor-4 default)."""
        if sector_size not in SECTOR_SIZES:
            raise errors.LeaderSectorSizeError(field="sector_size", found=sector_size,
                                               reason="is not 512 or 4096")
        bits = flags & LFL_ALIGN_MASK
        if bits == 0:
            return cls.default_for(sector_size)
        for (ss, align), (_, lfl, _) in _GEOMETRIES.items():
            if ss == sector_size and lfl == bits:
                return cls(sector_size, align)
        raise errors.GeometryError(f"leader flags 0x{flags:x} with sector_size {sector_size} "
                                   "name no valid alignment")

    @classmethod
    def from_rindex_flags(cls, flags: int, sector_size: int) -> Geometry:
        bits = flags & RHF_ALIGN_MASK
        for (ss, align), (_, _, rhf) in _GEOMETRIES.items():
            if ss == sector_size and rhf == bits:
                return cls(sector_size, align)
        return cls.default_for(sector_size)

    @property
    def max_hosts(self) -> int:
        return _GEOMETRIES[(self.sector_size, self.align_size)][0]

    @property
    def leader_align_flag(self) -> int:
        return _GEOMETRIES[(self.sector_size, self.align_size)][1]

    @property
    def rindex_align_flag(self) -> int:
        return _GEOMETRIES[(self.sector_size, self.align_size)][2]

    @property
    def sectors(self) -> int:
        return self.align_size // self.sector_size

    def check_host_id(self, host_id: int) -> None:
        if not 1 <= host_id <= self.max_hosts:
            raise errors.InvalidHostIdError(host_id=host_id, max_hosts=self.max_hosts)

    # lockspace (delta leases)
    def delta_offset(self, ls_offset: int, host_id: int) -> int:
        """Device offset of host_id's delta-lease sector."""
        self.check_host_id(host_id)
        return ls_offset + (host_id - 1) * self.sector_size

    # resource (paxos) leases
    def leader_offset(self, res_offset: int) -> int:
        return res_offset

    def request_offset(self, res_offset: int) -> int:
        return res_offset + self.sector_size

    def dblock_offset(self, res_offset: int, host_id: int) -> int:
        """Device offset of host_id's dblock sector (mode block at +128)."""
        self.check_host_id(host_id)
        return res_offset + (host_id + 1) * self.sector_size

    def ballot_read_size(self, num_hosts: int) -> int:
        """Bytes a ballot reads: roundup_pow2(num_hosts + 2) sectors."""
        return _roundup_pow2(num_hosts + 2) * self.sector_size

    # rindex
    @property
    def max_resources(self) -> int:
        """Entries that fit in an rindex area (all sectors but the header's)."""
        return self.max_hosts * (self.sector_size // RINDEX_ENTRY_SIZE)

    def rindex_entry_offset(self, rx_offset: int, index: int) -> int:
        return rx_offset + self.sector_size + index * RINDEX_ENTRY_SIZE

    def rindex_lease_offset(self, rx_offset: int) -> int:
        return rx_offset + self.align_size

    def rindex_resource_offset(self, rx_offset: int, index: int) -> int:
        return rx_offset + (2 + index) * self.align_size


def _fmt_size(n: int) -> str:
    return f"{n // MiB}M" if n % MiB == 0 else str(n)


# --- record validation (sanlock's checks and codes) ---------------------------


def c_name(name: str) -> bytes:
    """A name as sanlock's strncmp(..., NAME_ID_SIZE) sees it: at most 48 bytes, up to the first NUL."""
    return name_bytes(name)[:NAME_LEN].split(b"\0", 1)[0]


def _name_matches(found: str, expected: str) -> bool:
    return c_name(found) == c_name(expected)


def check_delta_leader(rec: LeaderRecord, *, path: str | None = None, offset: int | None = None,
                       space_name: str | None = None) -> None:
    """Verify a delta-lease record as sanlock does before using it (spec 5.1 step 1)."""
    where = {"path": path, "offset": offset}
    if rec.magic != DELTA_DISK_MAGIC:
        raise errors.LeaderMagicError(field="magic", found=rec.magic,
                                      expected=f"the lockspace magic 0x{DELTA_DISK_MAGIC:08x}", **where)
    if rec.version & VERSION_MAJOR_MASK != DELTA_DISK_VERSION & VERSION_MAJOR_MASK:
        raise errors.LeaderVersionError(field="version", found=rec.version, expected=DELTA_DISK_VERSION, **where)
    if rec.sector_size not in SECTOR_SIZES:
        raise errors.LeaderSectorSizeError(field="sector_size", found=rec.sector_size,
                                           reason="is not 512 or 4096", **where)
    if space_name is not None and not _name_matches(rec.space_name, space_name):
        raise errors.LeaderLockspaceError(found=rec.space_name, expected=space_name, **where)
    computed = rec.compute_checksum()
    if rec.checksum != computed:
        raise errors.LeaderChecksumError(found=rec.checksum, expected=computed, **where)


def check_paxos_leader(rec: LeaderRecord, *, path: str | None = None, offset: int | None = None,
                       space_name: str | None = None, resource_name: str | None = None,
                       host_id: int | None = None) -> None:
    """Verify a resource leader as sanlock does before a ballot (spec 6.1)."""
    where = {"path": path, "offset": offset}
    if rec.magic == PAXOS_DISK_CLEAR:
        raise errors.LeaderMagicError(field="magic", found=rec.magic,
                                      expected="a live resource lease (this lease was cleared)", **where)
    if rec.magic != PAXOS_DISK_MAGIC:
        raise errors.LeaderMagicError(field="magic", found=rec.magic,
                                      expected=f"the resource lease magic 0x{PAXOS_DISK_MAGIC:08x}", **where)
    if rec.version & VERSION_MAJOR_MASK != PAXOS_DISK_VERSION & VERSION_MAJOR_MASK:
        raise errors.LeaderVersionError(field="version", found=rec.version, expected=PAXOS_DISK_VERSION, **where)
    if rec.sector_size not in SECTOR_SIZES:
        raise errors.LeaderSectorSizeError(field="sector_size", found=rec.sector_size,
                                           reason="is not 512 or 4096", **where)
    if space_name is not None and not _name_matches(rec.space_name, space_name):
        raise errors.LeaderLockspaceError(found=rec.space_name, expected=space_name, **where)
    if resource_name is not None and not _name_matches(rec.resource_name, resource_name):
        raise errors.LeaderResourceError(found=rec.resource_name, expected=resource_name, **where)
    if host_id is not None and rec.num_hosts < host_id:
        raise errors.LeaderNumHostsError(found=rec.num_hosts, expected=host_id, **where)
    computed = rec.compute_checksum()
    if rec.checksum != computed:
        raise errors.LeaderChecksumError(found=rec.checksum, expected=computed, **where)


def check_name(field: str, name: str) -> None:
    """Names are at most 48 bytes (sanlock's NAME_ID_SIZE) and non-empty."""
    encoded = name.encode("utf8")
    if not encoded:
        raise errors.UsageError(f"{field} must not be empty")
    if len(encoded) > NAME_LEN:
        raise errors.UsageError(f"{field} {name!r} is {len(encoded)} bytes long, at most {NAME_LEN} allowed")
    if b"\0" in encoded:
        raise errors.UsageError(f"{field} {name!r} contains a NUL byte")


# --- building fresh areas (initialisation) ------------------------------------


def lockspace_record(geometry: Geometry, space_name: str, io_timeout: int) -> LeaderRecord:
    """The record every host_id of a freshly initialised lockspace holds."""
    return LeaderRecord(
        magic=DELTA_DISK_MAGIC, version=DELTA_DISK_VERSION, flags=geometry.leader_align_flag,
        sector_size=geometry.sector_size, num_hosts=0, max_hosts=1, space_name=space_name,
        io_timeout=io_timeout & 0xFF,
    ).with_checksum()


def build_lockspace_area(geometry: Geometry, space_name: str,
                         io_timeout: int = DEFAULT_IO_TIMEOUT) -> tuple[bytes, bytes]:
    """The two writes of lockspace initialisation (spec 4.5).

    Returns ``(area, first_sector)``: the whole align-size area with sector 0's
    magic still 0 (so a crash mid-init leaves no valid lockspace), then the
    sector that commits it.
    """
    check_name("lockspace name", space_name)
    committed = lockspace_record(geometry, space_name, io_timeout)
    uncommitted = committed.replace(magic=0).with_checksum()
    area = bytearray(geometry.align_size)
    record = committed.to_bytes()
    ss = geometry.sector_size
    for i in range(1, geometry.max_hosts):
        area[i * ss: i * ss + LEADER_SIZE] = record
    area[:LEADER_SIZE] = uncommitted.to_bytes()
    first = bytearray(ss)
    first[:LEADER_SIZE] = record
    return bytes(area), bytes(first)


def resource_leader(geometry: Geometry, space_name: str, resource_name: str,
                    num_hosts: int = 0, clear: bool = False, write_timestamp: int = 0) -> LeaderRecord:
    """The leader of a freshly initialised (or cleared) resource lease."""
    if not 1 <= num_hosts <= geometry.max_hosts:
        num_hosts = geometry.max_hosts
    return LeaderRecord(
        magic=PAXOS_DISK_CLEAR if clear else PAXOS_DISK_MAGIC, version=PAXOS_DISK_VERSION,
        flags=geometry.leader_align_flag, sector_size=geometry.sector_size, num_hosts=num_hosts,
        max_hosts=geometry.max_hosts, space_name=space_name, resource_name=resource_name,
        write_timestamp=write_timestamp if clear else 0,
    ).with_checksum()


def build_resource_area(geometry: Geometry, space_name: str, resource_name: str,
                        num_hosts: int = 0, clear: bool = False, write_timestamp: int = 0) -> bytes:
    """The one align-size write that initialises a resource lease (spec 4.5)."""
    check_name("lockspace name", space_name)
    check_name("resource name", resource_name)
    area = bytearray(geometry.align_size)
    leader = resource_leader(geometry, space_name, resource_name, num_hosts, clear, write_timestamp)
    area[:LEADER_SIZE] = leader.to_bytes()
    req = RequestRecord().to_bytes()
    area[geometry.sector_size: geometry.sector_size + REQUEST_SIZE] = req
    return bytes(area)


def build_rindex_header(geometry: Geometry, space_name: str, rx_offset: int,
                        max_resources: int = 0) -> bytes:
    """Sector 0 of an rindex area (spec 4.4, 4.5); max_resources capped by geometry."""
    check_name("lockspace name", space_name)
    if max_resources <= 0:
        max_resources = DEFAULT_MAX_RESOURCES
    max_resources = min(max_resources, geometry.max_resources)
    header = RindexHeader(flags=geometry.rindex_align_flag, sector_size=geometry.sector_size,
                          max_resources=max_resources, rx_offset=rx_offset, lockspace_name=space_name)
    sector = bytearray(geometry.sector_size)
    sector[:RINDEX_HEADER_SIZE] = header.to_bytes()
    return bytes(sector)


# --- bulk views of whole areas --------------------------------------------------


@functools.lru_cache(maxsize=None)
def delta_sector_dtype(sector_size: int) -> np.dtype:
    """One delta-lease sector: the leader record and the host-id bitmap."""
    spec = numpy_fields(LEADER_FIELDS)
    names, formats, offsets = list(spec), [t for t, _ in spec.values()], [o for _, o in spec.values()]
    names.append("bitmap")
    formats.append((np.uint8, HOSTID_BITMAP_SIZE))
    offsets.append(HOSTID_BITMAP_OFFSET)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": sector_size})


@functools.lru_cache(maxsize=None)
def dblock_sector_dtype(sector_size: int) -> np.dtype:
    """One dblock sector: the dblock and the mode block at byte 128."""
    spec = numpy_fields(DBLOCK_FIELDS)
    mb = numpy_fields(MODE_BLOCK_FIELDS, base=MBLOCK_OFFSET)
    names = list(spec) + ["mb_flags", "mb_generation"]
    formats = [t for t, _ in spec.values()] + [mb["flags"][0], mb["generation"][0]]
    offsets = [o for _, o in spec.values()] + [mb["flags"][1], mb["generation"][1]]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": sector_size})


def _as_u8(buf: Any) -> np.ndarray:
    arr = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf.view(np.uint8)
    return arr.reshape(-1)


def _verify_rows(raw: np.ndarray, covered: int, stored: np.ndarray, check: np.ndarray) -> np.ndarray:
    """Checksum rows of ``raw`` (n x sector bytes) where ``check`` is set.

    A row whose covered bytes and stored checksum equal the previous (also
    checked) row's has the same verdict, so runs of identical records (a fresh
    lockspace: 2000 of them) cost one CRC; the comparison is one vectorised
    pass and the verdicts are forward-filled without a Python loop.
    """
    n = raw.shape[0]
    ok = np.ones(n, dtype=bool)
    if n == 0:
        return ok
    words = raw[:, : covered + 4].view("<u4")  # covered prefix + stored checksum
    inherit = np.zeros(n, dtype=bool)
    if n > 1:
        inherit[1:] = (words[1:] == words[:-1]).all(axis=1) & check[1:] & check[:-1]
    compute = check & ~inherit
    if compute.any():
        ok[compute] = checksums(raw[compute, :covered].tobytes(), covered) == stored[compute]
    if inherit.any():
        last = np.maximum.accumulate(np.where(compute, np.arange(n), 0))
        ok[inherit] = ok[last[inherit]]
    return ok


@dataclass
class LockspaceView:
    """Every delta-lease sector of a lockspace area, parsed in one numpy pass.

    ``records`` is a structured array (a view of the buffer, no copy);
    ``empty`` marks all-zero records (never checked); ``checksum_ok`` is the
    verdict for the others.
    """

    geometry: Geometry
    records: np.ndarray
    empty: np.ndarray
    checksum_ok: np.ndarray

    @classmethod
    def parse(cls, buf: Any, geometry: Geometry) -> LockspaceView:
        ss = geometry.sector_size
        u8 = _as_u8(buf)
        n = min(geometry.max_hosts, u8.size // ss)
        u8 = u8[: n * ss]
        raw = u8.reshape(n, ss)
        records = u8.view(delta_sector_dtype(ss))
        # an empty record: the whole 200-byte record is zero
        empty = ~raw[:, :LEADER_SIZE].view("<u8").any(axis=1)
        ok = _verify_rows(raw, LEADER_CHECKSUM_LEN, records["checksum"], ~empty)
        return cls(geometry, records, empty, ok)

    def __len__(self) -> int:
        return len(self.records)

    def record(self, host_id: int) -> LeaderRecord:
        """The leader record of host_id (1-based)."""
        raw = self.records[host_id - 1 : host_id].view(np.uint8)[:LEADER_SIZE]
        return LeaderRecord.from_bytes(raw)

    def bitmap_bits(self, host_id: int) -> list[int]:
        """Host ids whose bit is set in host_id's bitmap."""
        bits = np.unpackbits(self.records["bitmap"][host_id - 1], bitorder="little")
        return (np.flatnonzero(bits) + 1).tolist()

    def valid(self) -> np.ndarray:
        """Records that are lockspace records of this area with a good checksum."""
        r = self.records
        major = (r["version"] & VERSION_MAJOR_MASK) == (DELTA_DISK_VERSION & VERSION_MAJOR_MASK)
        return (~self.empty) & self.checksum_ok & (r["magic"] == DELTA_DISK_MAGIC) & major


@dataclass
class PaxosView:
    """A resource lease area: leader, request record, every dblock and mode block."""

    geometry: Geometry
    leader: LeaderRecord
    request: RequestRecord
    dblocks: np.ndarray
    unwritten: np.ndarray
    checksum_ok: np.ndarray

    @classmethod
    def parse(cls, buf: Any, geometry: Geometry, num_hosts: int | None = None) -> PaxosView:
        ss = geometry.sector_size
        u8 = _as_u8(buf)
        leader = LeaderRecord.from_bytes(u8[:LEADER_SIZE])
        request = RequestRecord.from_bytes(u8[ss: ss + REQUEST_SIZE])
        if num_hosts is None:
            num_hosts = leader.num_hosts if 0 < leader.num_hosts <= geometry.max_hosts else geometry.max_hosts
        n = min(num_hosts, u8.size // ss - 2)
        area = u8[2 * ss: (2 + n) * ss]
        raw = area.reshape(n, ss)
        dblocks = area.view(dblock_sector_dtype(ss))
        w = raw[:, :DBLOCK_SIZE].view("<u8")  # mbal bal inp inp2 inp3 lver [checksum|flags]
        unwritten = ~(w[:, [0, 1, 2, 5]].any(axis=1)) & (dblocks["checksum"] == 0)
        ok = _verify_rows(raw, DBLOCK_CHECKSUM_LEN, dblocks["checksum"], ~unwritten)
        return cls(geometry, leader, request, dblocks, unwritten, ok)

    def dblock(self, host_id: int) -> Dblock:
        raw = self.dblocks[host_id - 1: host_id].view(np.uint8)[:DBLOCK_SIZE]
        return Dblock.from_bytes(raw)

    def mode_block(self, host_id: int) -> ModeBlock:
        d = self.dblocks[host_id - 1]
        return ModeBlock(flags=int(d["mb_flags"]), generation=int(d["mb_generation"]))

    @property
    def max_mbal(self) -> int:
        """Largest mbal over the dblocks (spec 6.1)."""
        return int(self.dblocks["mbal"].max()) if len(self.dblocks) else 0

    def shared_holders(self) -> list[tuple[int, int]]:
        """(host_id, generation) of every SHARED mode block."""
        d = self.dblocks
        idx = np.flatnonzero(d["mb_flags"] & MBLOCK_SHARED)
        return [(int(i) + 1, int(d["mb_generation"][i])) for i in idx]

    def bad_dblocks(self) -> list[int]:
        return (np.flatnonzero(~self.checksum_ok) + 1).tolist()
