"""Every golden image decodes to what the real sanlock reports for it, live.

The images (tests/golden, written by sanlock 3.8.5) are decompressed into
files; the real ``sanlock direct dump`` and ``read_leader`` run on them in the
test, and diskpaxos's parse, ``read-leader`` and ``dump`` must agree field by
field and line by line.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from oracle import diskpaxos, sanlock

from diskpaxos import format as F

GOLDEN = Path(__file__).parent.parent / "golden"
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())
IMAGES = {img["image"].removesuffix(".img.gz"): img for img in MANIFEST["images"]}


@pytest.fixture
def golden_file(tmp_path: Path):
    def make(name: str) -> tuple[str, bytes, dict]:
        img = IMAGES[name]
        data = gzip.decompress((GOLDEN / img["image"]).read_bytes())
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        return str(path), data, img
    return make


def parse_read_leader(text: str) -> dict[str, str]:
    """``read_leader`` output as {label: value}, plus "done" for the result code."""
    out = {}
    for line in text.splitlines():
        if line.startswith("read_leader done"):
            out["done"] = line.split()[-1]
            continue
        label, _, value = line.partition(" ")
        out[label] = value
    return out


def assert_leader_matches(rec: F.LeaderRecord, reported: dict[str, str]) -> None:
    assert reported["done"] == "0"
    assert int(reported["magic"], 16) == rec.magic
    assert int(reported["version"], 16) == rec.version
    assert int(reported["flags"], 16) == rec.flags
    assert int(reported["checksum"], 16) == rec.checksum and rec.checksum_ok
    for name in ("sector_size", "num_hosts", "max_hosts", "owner_id", "owner_generation", "lver",
                 "timestamp", "io_timeout"):
        assert int(reported[name]) == getattr(rec, name), name
    assert reported["space_name"] == rec.space_name
    assert reported["resource_name"] == rec.resource_name


@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(IMAGES))
@pytest.mark.parametrize("flag", ["0", "1", "2"])
def test_dump_text_equals_sanlock(name: str, flag: str, golden_file, sanlock_bin: str) -> None:
    path, data, img = golden_file(name)
    for target in (path, f"{path}:0:{len(data)}"):
        theirs = sanlock(sanlock_bin, "direct", "dump", target, "-f", flag)
        ours = diskpaxos("direct", "dump", target, "-f", flag)
        assert theirs.returncode == 0 and ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout
        assert ours.stdout.count("\n") >= 1


@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(n for n, i in IMAGES.items() if i["kind"] == "lockspace"))
def test_lockspace_records_equal_sanlock_read_leader(name: str, golden_file, sanlock_bin: str) -> None:
    path, data, img = golden_file(name)
    geometry = F.Geometry(img["sector_size"], img["align_size"])
    view = F.LockspaceView.parse(np.frombuffer(data, np.uint8), geometry)
    assert view.checksum_ok[~view.empty].all()
    held = [int(h) + 1 for h in np.flatnonzero(view.records["owner_id"] != 0)]
    for host_id in sorted({1, geometry.max_hosts, *held}):
        arg = ["-s", f"{img['lockspace']}:{host_id}:{path}:0"]
        theirs = sanlock(sanlock_bin, "direct", "read_leader", *arg)
        assert_leader_matches(view.record(host_id), parse_read_leader(theirs.stdout))
        ours = diskpaxos("direct", "read-leader", *arg)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout


_DBLOCK = re.compile(r"^dblock\[(\d+)\] mbal (\d+) bal (\d+) inp (\d+) inp2 (\d+) inp3 (\d+) lver (\d+) sum ([0-9a-f]+)$")
_SH = re.compile(r"^\s{106}(\d+) (\d+) SH$")


@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(n for n, i in IMAGES.items() if i["kind"] == "resource"))
def test_resource_leader_and_dblocks_equal_sanlock(name: str, golden_file, sanlock_bin: str) -> None:
    path, data, img = golden_file(name)
    geometry = F.Geometry(img["sector_size"], img["align_size"])
    view = F.PaxosView.parse(np.frombuffer(data, np.uint8), geometry)
    arg = ["-r", f"{img['lockspace']}:{img['resource']}:{path}:0"]
    theirs = sanlock(sanlock_bin, "direct", "read_leader", *arg)
    assert_leader_matches(view.leader, parse_read_leader(theirs.stdout))
    assert int(parse_read_leader(theirs.stdout)["write_id"]) == view.leader.write_id
    ours = diskpaxos("direct", "read-leader", *arg)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout

    dump = sanlock(sanlock_bin, "direct", "dump", path, "-f", "2").stdout.splitlines()
    reported_dblocks = [tuple(int(x) for x in m.groups()[:7]) + (int(m.group(8), 16),)
                        for m in map(_DBLOCK.match, dump) if m]
    ours_dblocks = []
    for host_id in range(1, view.leader.num_hosts + 1):
        db = view.dblock(host_id)
        if db.mbal or db.inp or db.lver:
            ours_dblocks.append((host_id - 1, db.mbal, db.bal, db.inp, db.inp2, db.inp3, db.lver, db.checksum))
            assert db.checksum_ok
    assert ours_dblocks == reported_dblocks
    reported_sh = [(int(m.group(1)), int(m.group(2))) for m in map(_SH.match, dump) if m]
    assert view.shared_holders() == reported_sh
    assert view.checksum_ok.all()
    req_field = dump[1].split()[-1] if len(dump) > 1 else ""
    assert req_field == "" or view.request.lver == 0 or str(view.request.lver) in req_field


@pytest.mark.interop
@pytest.mark.parametrize("name", sorted(n for n, i in IMAGES.items() if i["kind"] == "rindex"))
def test_rindex_equals_sanlock(name: str, golden_file, sanlock_bin: str) -> None:
    path, data, img = golden_file(name)
    geometry = F.Geometry(img["sector_size"], img["align_size"])
    header = F.RindexHeader.from_bytes(data)
    entries = [F.RindexEntry.from_bytes(data[geometry.sector_size + i * 64:])
               for i in range((geometry.align_size - geometry.sector_size) // 64)]
    used = [e for e in entries if not e.is_empty]
    dump = sanlock(sanlock_bin, "direct", "dump", f"{path}:0:{len(data)}", "-f", "1").stdout.splitlines()
    hdr_line = next(line for line in dump if "rindex_header" in line).split()
    assert hdr_line[1] == header.lockspace_name
    assert (int(hdr_line[3], 16), int(hdr_line[4]), int(hdr_line[5]), int(hdr_line[6])) == \
        (header.flags, header.sector_size, header.max_resources, header.rx_offset)
    rentries = [line.split()[3:5] for line in dump if " rentry " in line]
    assert [[e.name, str(e.res_offset)] for e in used] == rentries
