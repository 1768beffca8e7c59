"""``direct dump``: walk lease areas and print them as sanlock does.

Scripts parse ``sanlock direct dump``; ours prints the same lines for the same
bytes (column widths, zero padding, which records appear and when), so the
text is rendered here as bytes, names included exactly as stored.  The walk
and its rules (observed on sanlock 3.8.5, written up in our own words):

- the geometry comes from ``-Z``/``-A`` or from the first lockspace or
  resource leader found probing every 1 MiB from the start offset;
- the walk steps by the align size from the start offset; the magic of an
  area's first sector says what it is (lockspace, resource lease, rindex);
  without a size the walk ends at the first area that is none of these;
- lockspace: one line per sector whose magic and owner_id are non-zero;
- resource: the leader line, then (flag > 1) one line per dblock with a
  ballot in it, and a line per SHARED mode block (any flag);
- rindex: the header line, and (flag != 0) one line per used entry.

Deliberate differences, for safety: errors and warnings go to stderr as one
line; the dblock loop never runs past the area read; a leader's sector size
must be 512 or 4096 to be taken as the geometry; ``-Z``/``-A`` that disagree
with the leader at the start offset are refused (sanlock would misread the
area, or crash reading past its buffer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import errors
from .format import (
    DBLOCK_SIZE,
    DELTA_DISK_MAGIC,
    HOSTID_BITMAP_OFFSET,
    LEADER_SIZE,
    MBLOCK_SHARED,
    PAXOS_DISK_MAGIC,
    REQUEST_SIZE,
    RINDEX_DISK_MAGIC,
    RINDEX_ENTRY_SIZE,
    RINDEX_HEADER_SIZE,
    Dblock,
    Geometry,
    LeaderRecord,
    MiB,
    ModeBlock,
    RequestRecord,
    RindexEntry,
    RindexHeader,
    c_name,
    delta_sector_dtype,
)
from .io_direct import DirectStorage

log = logging.getLogger(__name__)

PROBE_SIZE = 4096
PROBE_STEP = MiB
PROBE_LIMIT = 1024
SH_INDENT = 106


def header(flags: int) -> bytes:
    last = "lver/req/mode" if flags else "lver"
    return f"{'offset':>8} {'lockspace':>36} {'resource':>48} {'timestamp':>10} {'own':>4} {'gen':>4} {last}".encode()


def _rjust(name: str, width: int) -> bytes:
    """A name as sanlock prints it (up to the first NUL, 48 bytes at most), right-justified."""
    return c_name(name).rjust(width)


def record_line(offset: int, rec: LeaderRecord) -> bytes:
    """The common prefix of a lockspace record or resource leader line."""
    return (f"{offset:08d} ".encode() + _rjust(rec.space_name, 36) + b" " + _rjust(rec.resource_name, 48)
            + f" {rec.timestamp:010d} {rec.owner_id:04d} {rec.owner_generation:04d}".encode())


@dataclass
class Area:
    """One align-size area as the dump saw it (also the ``--json`` shape)."""

    offset: int
    kind: str  # lockspace | resource | rindex
    lines: list[bytes] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def render_lockspace(buf: np.ndarray, offset: int, geometry: Geometry, flags: int) -> Area:
    ss = geometry.sector_size
    n = len(buf) // ss
    recs = buf[: n * ss].view(delta_sector_dtype(ss))
    area = Area(offset, "lockspace", data={"hosts": []})
    shown = np.flatnonzero((recs["magic"] != 0) & (recs["owner_id"] != 0))
    for i in shown.tolist():
        sector = buf[i * ss: (i + 1) * ss]
        rec = LeaderRecord.from_bytes(sector[:LEADER_SIZE])
        bits = np.unpackbits(sector[HOSTID_BITMAP_OFFSET: HOSTID_BITMAP_OFFSET + 256], bitorder="little")
        hosts = [h for h in (np.flatnonzero(bits) + 1).tolist() if h <= geometry.max_hosts]
        line = record_line(offset + i * ss, rec)
        if flags and hosts:
            line += "".join(f" {h}" for h in hosts).encode()
        area.lines.append(line)
        area.data["hosts"].append({"offset": offset + i * ss, "host_id": i + 1, "bitmap": hosts,
                                   **_leader_json(rec)})
    return area


def render_resource(buf: np.ndarray, offset: int, geometry: Geometry, flags: int) -> Area:
    ss = geometry.sector_size
    leader = LeaderRecord.from_bytes(buf[:LEADER_SIZE])
    req = RequestRecord.from_bytes(buf[ss: ss + REQUEST_SIZE])
    line = record_line(offset, leader)
    line += (f" {leader.lver}/{req.lver}/{req.force_mode}" if flags else f" {leader.lver}").encode()
    area = Area(offset, "resource", [line], {"leader": _leader_json(leader),
                                            "request": {"lver": req.lver, "force_mode": req.force_mode},
                                            "dblocks": [], "shared": []})
    count = min(leader.num_hosts, len(buf) // ss - 2)  # never past the area we read
    for i in range(count):
        sector = buf[(i + 2) * ss: (i + 3) * ss]
        db = Dblock.from_bytes(sector[:DBLOCK_SIZE])
        mb = ModeBlock.from_bytes(sector[128:144])
        if flags > 1 and (db.mbal or db.inp or db.lver):
            area.lines.append(f"dblock[{i:04d}] mbal {db.mbal} bal {db.bal} inp {db.inp} inp2 {db.inp2} "
                              f"inp3 {db.inp3} lver {db.lver} sum {db.checksum:x}".encode())
        if db.mbal or db.inp or db.lver:
            area.data["dblocks"].append({"host_id": i + 1, "mbal": db.mbal, "bal": db.bal, "inp": db.inp,
                                         "inp2": db.inp2, "inp3": db.inp3, "lver": db.lver,
                                         "checksum": db.checksum, "checksum_ok": db.checksum_ok,
                                         "flags": db.flags})
        if mb.flags & MBLOCK_SHARED:
            area.lines.append(b" " * SH_INDENT + f"{i + 1:04d} {mb.generation:04d} SH".encode())
            area.data["shared"].append({"host_id": i + 1, "generation": mb.generation})
    return area


def render_rindex(buf: np.ndarray, offset: int, geometry: Geometry, flags: int) -> Area:
    hdr = RindexHeader.from_bytes(buf[:RINDEX_HEADER_SIZE])
    ls = _rjust(hdr.lockspace_name, 36)
    area = Area(offset, "rindex", [f"{offset:08d} ".encode() + ls + (
        f" rindex_header 0x{hdr.flags:x} {hdr.sector_size} {hdr.max_resources} {hdr.rx_offset}").encode()],
        {"lockspace": hdr.lockspace_name, "flags": hdr.flags, "sector_size": hdr.sector_size,
         "max_resources": hdr.max_resources, "rx_offset": hdr.rx_offset, "entries": []})
    slots = buf[geometry.sector_size:]
    n = len(slots) // RINDEX_ENTRY_SIZE
    words = slots[: n * RINDEX_ENTRY_SIZE].reshape(n, RINDEX_ENTRY_SIZE)
    used = np.flatnonzero(words[:, :8].view("<u8")[:, 0].astype(bool) | (words[:, 16] != 0))
    for j in used.tolist():
        entry = RindexEntry.from_bytes(words[j])
        at = offset + geometry.sector_size + j * RINDEX_ENTRY_SIZE
        if flags:
            area.lines.append(f"{at:08d} ".encode() + ls + b" rentry " + c_name(entry.name)
                              + f" {entry.res_offset}".encode())
        area.data["entries"].append({"offset": at, "name": entry.name, "res_offset": entry.res_offset})
    return area


_RENDERERS = {DELTA_DISK_MAGIC: render_lockspace, PAXOS_DISK_MAGIC: render_resource,
              RINDEX_DISK_MAGIC: render_rindex}


def _leader_json(rec: LeaderRecord) -> dict[str, Any]:
    return {"space_name": rec.space_name, "resource_name": rec.resource_name, "timestamp": rec.timestamp,
            "owner_id": rec.owner_id, "owner_generation": rec.owner_generation, "lver": rec.lver,
            "io_timeout": rec.io_timeout, "checksum": rec.checksum, "checksum_ok": rec.checksum_ok}


def _read(storage: DirectStorage, pos: int, length: int) -> np.ndarray | None:
    """An area's bytes, or None where it runs past the end (sanlock: a failed read)."""
    if pos + length > storage.size:
        return None
    try:
        return storage.read(pos, length).copy()
    except errors.StorageError as e:
        log.warning("%s", e)
        return None


def probe_geometry(storage: DirectStorage, offset: int, size: int) -> Geometry:
    """The geometry of the first lockspace or resource leader every 1 MiB from ``offset``."""
    for k in range(PROBE_LIMIT):
        pos = offset + k * PROBE_STEP
        if size and pos >= offset + size:
            break
        buf = _read(storage, pos, PROBE_SIZE)
        if buf is None:
            continue
        rec = LeaderRecord.from_bytes(buf[:LEADER_SIZE])
        if rec.magic in (DELTA_DISK_MAGIC, PAXOS_DISK_MAGIC) and rec.sector_size in (512, 4096):
            try:
                return Geometry.from_leader_flags(rec.flags, rec.sector_size)
            except errors.FormatError:
                continue
    raise errors.GeometryError(path=storage.path, offset=offset,
                               reason="found no lockspace or resource leader to take sector size and "
                                      "alignment from; set them with -Z and -A")


def check_explicit_geometry(storage: DirectStorage, offset: int, geometry: Geometry) -> None:
    """Refuse a geometry given by the user that the leader at ``offset`` contradicts."""
    buf = _read(storage, offset, PROBE_SIZE)
    if buf is None:
        return
    rec = LeaderRecord.from_bytes(buf[:LEADER_SIZE])
    if rec.magic not in (DELTA_DISK_MAGIC, PAXOS_DISK_MAGIC):
        return
    if rec.sector_size != geometry.sector_size:
        raise errors.LeaderSectorSizeError(
            path=storage.path, offset=offset, field="sector_size", found=rec.sector_size,
            reason=f"in the leader disagrees with -Z {geometry.sector_size}")
    try:
        theirs = Geometry.from_leader_flags(rec.flags, rec.sector_size)
    except errors.FormatError:
        return
    if theirs != geometry:
        raise errors.GeometryError(
            path=storage.path, offset=offset,
            reason=f"leader flags 0x{rec.flags:x} give align {theirs.align_size // MiB}M, "
                   f"which disagrees with -A {geometry.align_size // MiB}M")


def walk(path: str, offset: int = 0, size: int = 0, flags: int = 0,
         geometry: Geometry | None = None) -> tuple[Geometry, Iterator[Area]]:
    """Learn the geometry, then yield each recognised area from ``offset`` on."""
    storage = DirectStorage(path, io_timeout=10, readonly=True)
    try:
        if offset % storage.sector_size:
            raise errors.AlignmentError(path=storage.path, offset=offset, field="offset", value=offset,
                                        sector_size=storage.sector_size)
        if offset % MiB:
            log.warning("%s: dump offset %d is not a multiple of 1M", path, offset)
        if geometry is not None:
            check_explicit_geometry(storage, offset, geometry)
        geo = geometry or probe_geometry(storage, offset, size)
        if geo.sector_size < storage.sector_size:
            raise errors.LeaderSectorSizeError(
                path=storage.path, offset=offset, field="sector_size", found=geo.sector_size,
                reason=f"is smaller than the device's logical sector size {storage.sector_size}")
    except BaseException:
        storage.close()
        raise

    def areas() -> Iterator[Area]:
        with storage:
            pos = offset
            while not size or pos < offset + size:
                buf = _read(storage, pos, geo.align_size)
                render = _RENDERERS.get(int(buf[:4].view("<u4")[0])) if buf is not None else None
                if render is None:
                    if not size:
                        return
                else:
                    yield render(buf, pos, geo, flags)  # type: ignore[arg-type]
                pos += geo.align_size

    return geo, areas()
