"""sanlock's checksum (spec section 2) against an independent reference.

The reference below is the spec's table-driven algorithm written out here, not
imported from diskpaxos; the expected values come from the spec's worked
examples and from the bytes the real sanlock wrote (tests/golden).
"""

from __future__ import annotations

import gzip
import json
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diskpaxos.checksum import checksums, sanlock_checksum

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


# --- the spec's reference algorithm (section 2), written independently ---------

def _reflected_table(poly: int) -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_T = _reflected_table(0x82F63B78)  # reversed form of the Castagnoli polynomial 0x1EDC6F41


def ref_checksum(data: bytes) -> int:
    """sanlock: reflected CRC-32C, register starts at 0xFFFFFFFE, no final xor."""
    crc = 0xFFFFFFFE
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def ref_crc32c_iscsi(data: bytes) -> int:
    """The standard (iSCSI) CRC-32C: init 0xFFFFFFFF and a final complement."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@lru_cache(maxsize=None)
def golden(name: str) -> bytes:
    return gzip.decompress((GOLDEN / f"{name}.img.gz").read_bytes())


def manifest_entry(name: str) -> dict:
    images = json.loads((GOLDEN / "MANIFEST.json").read_text())["images"]
    (entry,) = [i for i in images if i["image"] == f"{name}.img.gz"]
    return entry


# --- the reference itself ---------------------------------------------------------


def test_reference_table_is_the_crc32c_table() -> None:
    # well-known entries of the reflected CRC-32C table
    assert _T[0] == 0
    assert _T[1] == 0xF26B8303
    assert _T[128] == 0x82F63B78
    assert _T[255] == 0xAD7D5351


def test_reference_iscsi_check_value() -> None:
    # guards the reference: the standard CRC-32C check value (spec section 2)
    assert ref_crc32c_iscsi(b"123456789") == 0xE3069283


# --- check values -----------------------------------------------------------------


def test_check_value_123456789() -> None:
    assert ref_checksum(b"123456789") == 0xE8C7BB34
    assert sanlock_checksum(b"123456789") == 0xE8C7BB34


def test_not_the_iscsi_crc() -> None:
    assert sanlock_checksum(b"123456789") != 0xE3069283


def test_empty_input_is_the_seed() -> None:
    assert sanlock_checksum(b"") == 0xFFFFFFFE
    assert ref_checksum(b"") == 0xFFFFFFFE


# --- worked examples (spec section 2), bytes taken from the golden images -----------

EX1_HEX = (  # spec example 1: ls_init_512_1M sector 0, the 168 covered bytes
    "10202112040003001000000000020000"
    + "0000000000000000"
    + "0100000000000000"
    + "00" * 24
    + "4c53353132" + "00" * 43
    + "00" * 48
    + "00" * 16
)
EX2_HEX = (  # spec example 2: res_live_512_ex_host1 byte 1024, the dblock of host 1
    "0100000000000000" "0100000000000000" "0100000000000000"
    "0100000000000000" "6801000000000000" "0100000000000000"
)
EX4_HEX = (  # spec example 4: ls_live_512_host1 sector 0
    "10202112" "04000300" "10000000" "00020000"
    + "0000000000000000"
    + "0100000000000000"
    + "0100000000000000"
    + "0100000000000000"
    + "0000000000000000"
    + b"LIVE".hex() + "00" * 44
    + b"hostA-golden".hex() + "00" * 36
    + "5a01000000000000"
    + "0000000000000000"
)

WORKED_EXAMPLES = [
    # (image, byte offset of the record in the image, covered length, spec bytes, checksum, stored bytes)
    ("ls_init_512_1M", 0, 168, EX1_HEX, 0xF16593E5, "e59365f1"),
    ("res_live_512_ex_host1", 1024, 48, EX2_HEX, 0x5ED99EAB, "ab9ed95e"),
    ("res_live_4096_1M_ex_host1", 12288, 48, "00" * 48, 0xCB5AD842, "42d85acb"),
    ("ls_live_512_host1", 0, 168, EX4_HEX, 0x088AEC68, "68ec8a08"),
]


@pytest.mark.parametrize("image,offset,covered,spec_hex,expected,stored_hex", WORKED_EXAMPLES,
                         ids=[w[0] for w in WORKED_EXAMPLES])
def test_worked_example(image: str, offset: int, covered: int, spec_hex: str, expected: int,
                        stored_hex: str) -> None:
    img = golden(image)
    record = img[offset: offset + covered]
    # the spec's bytes are the bytes sanlock wrote
    assert record == bytes.fromhex(spec_hex)
    assert ref_checksum(record) == expected
    assert sanlock_checksum(record) == expected
    # sanlock stored it little-endian right after the covered prefix
    stored = img[offset + covered: offset + covered + 4]
    assert stored == bytes.fromhex(stored_hex)
    assert struct.unpack("<I", stored)[0] == expected
    assert checksums(record, covered).tolist() == [expected]


def test_worked_example_4_io_timeout_not_covered() -> None:
    img = golden("ls_live_512_host1")
    assert struct.unpack_from("<H", img, 174)[0] == 2  # io_timeout 2 at byte 174
    sector = bytearray(img[:512])
    sector[174] = 77
    assert sanlock_checksum(bytes(sector[:168])) == 0x088AEC68


def test_worked_example_3_flags_released_not_covered() -> None:
    img = golden("res_live_4096_1M_ex_host1")
    assert manifest_entry("res_live_4096_1M_ex_host1")["sector_size"] == 4096
    dblock = img[12288: 12288 + 56]
    assert struct.unpack_from("<I", dblock, 52)[0] == 1  # flags = DBLOCK_FL_RELEASED
    assert sanlock_checksum(dblock[:48]) == struct.unpack_from("<I", dblock, 48)[0]


# --- agreement with the reference on random data ---------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_sanlock_checksum_matches_reference(data: bytes) -> None:
    assert sanlock_checksum(data) == ref_checksum(data)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([48, 168, 4, 1, 13]), st.data())
def test_checksums_matches_reference(record_len: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(min_value=0, max_value=20))
    blob = data.draw(st.binary(min_size=n * record_len, max_size=n * record_len))
    got = checksums(blob, record_len)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.uint32
    assert got.shape == (n,)
    expected = [ref_checksum(blob[i * record_len: (i + 1) * record_len]) for i in range(n)]
    assert got.tolist() == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=168, max_size=168), min_size=1, max_size=5),
       st.integers(min_value=0, max_value=4))
def test_checksums_with_repeated_records(distinct: list[bytes], repeat: int) -> None:
    # identical consecutive records must each get their checksum
    records = [r for r in distinct for _ in range(repeat + 1)]
    got = checksums(b"".join(records), 168).tolist()
    assert got == [ref_checksum(r) for r in records]


def test_checksums_of_all_golden_leaders() -> None:
    # every distinct leader record in a lockspace image, in one bulk call
    img = golden("ls_live_512_host1_2")
    covered = b"".join(img[i * 512: i * 512 + 168] for i in range(2000))
    stored = [struct.unpack_from("<I", img, i * 512 + 168)[0] for i in range(2000)]
    assert checksums(covered, 168).tolist() == stored
