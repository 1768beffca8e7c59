"""Recognise what occupies a region before we format over it.

Formatting a lockspace over a filesystem or a VM image destroys it, so the
formatters refuse non-zero data unless forced, and this module names what they
found ("an ext4 filesystem", "a qcow2 image") so the admin sees the mistake.
Pure: it looks at bytes already read.
"""

from __future__ import annotations

from .format import DELTA_DISK_MAGIC, PAXOS_DISK_CLEAR, PAXOS_DISK_MAGIC, RINDEX_DISK_MAGIC, LeaderRecord, RindexHeader

# (offset, magic bytes, description); offsets within the region
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"QFI\xfb", "a qcow2 image"),
    (0, b"XFSB", "an XFS filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (0, b"KDMV", "a VMDK image"),
    (0, b"conectix", "a VHD image"),
    (0, b"vhdxfile", "a VHDX image"),
    (512, b"EFI PART", "a GPT partition table"),
    (512, b"LABELONE", "an LVM physical volume"),
    (1080, b"\x53\xef", "an ext2/3/4 filesystem"),
    (4086, b"SWAPSPACE2", "a swap area"),
    (65600, b"_BHRfS_M", "a btrfs filesystem"),
    (32769, b"CD001", "an ISO 9660 image"),
    (3, b"NTFS    ", "an NTFS filesystem"),
    (54, b"FAT1", "a FAT filesystem"),
    (82, b"FAT32   ", "a FAT32 filesystem"),
)


def _u32(data: bytes, at: int = 0) -> int:
    return int.from_bytes(data[at: at + 4], "little")


def first_nonzero(data: bytes) -> int | None:
    """Offset of the first non-zero byte, or None for an all-zero region."""
    stripped = data.lstrip(b"\0")
    return None if not stripped else len(data) - len(stripped)


def describe(data: bytes) -> str | None:
    """What the region holds, in words; None when it is all zeros."""
    at = first_nonzero(data)
    if at is None:
        return None
    magic = _u32(data)
    if magic == DELTA_DISK_MAGIC:
        rec = LeaderRecord.from_bytes(data)
        return f"a sanlock/diskpaxos lockspace {rec.space_name!r}"
    if magic in (PAXOS_DISK_MAGIC, PAXOS_DISK_CLEAR):
        rec = LeaderRecord.from_bytes(data)
        state = "cleared resource lease" if magic == PAXOS_DISK_CLEAR else "resource lease"
        return f"a sanlock/diskpaxos {state} {rec.space_name}:{rec.resource_name}"
    if magic == RINDEX_DISK_MAGIC:
        hdr = RindexHeader.from_bytes(data)
        return f"a sanlock/diskpaxos resource index of lockspace {hdr.lockspace_name!r}"
    return foreign(data) or f"non-zero data (first non-zero byte at +{at})"


def foreign(data: bytes) -> str | None:
    """A filesystem, partition table or image recognised by its signature, in words."""
    for offset, sig, text in _SIGNATURES:
        if data[offset: offset + len(sig)] == sig:
            return text
    if len(data) >= 512 and data[510:512] == b"\x55\xaa":
        return "a DOS/MBR partition table or boot sector"
    return None
