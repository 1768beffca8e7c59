"""Hot paths of the foundation: checksum, bulk parse + verify, lease-sized direct I/O.

Targets (not asserted: speed goals live here, never in timed asserts):
parse + verify of a 2000-host lockspace <= 1 ms; a renewal's I/O (one 1 MiB
read + one sector write) close to the raw floor measured by fio.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from diskpaxos import format as F
from diskpaxos.checksum import checksums, sanlock_checksum
from diskpaxos.io_direct import DirectStorage

GOLDEN = Path(__file__).parent.parent / "tests" / "golden"
G512 = F.Geometry(512, F.MiB)


def _distinct_lockspace() -> np.ndarray:
    """2000 live hosts, every record different: the worst case for bulk verify."""
    area = np.zeros(F.MiB, dtype=np.uint8)
    for i in range(2000):
        rec = F.LeaderRecord(magic=F.DELTA_DISK_MAGIC, version=F.DELTA_DISK_VERSION, flags=0x10,
                             sector_size=512, max_hosts=1, owner_id=i + 1, owner_generation=3,
                             space_name="BENCH", resource_name=f"host-{i}", timestamp=1000 + i,
                             io_timeout=10).with_checksum()
        area[i * 512: i * 512 + F.LEADER_SIZE] = np.frombuffer(rec.to_bytes(), np.uint8)
    return area


@pytest.mark.benchmark(group="checksum")
def test_checksum_one_leader(benchmark):
    data = os.urandom(F.LEADER_CHECKSUM_LEN)
    benchmark(sanlock_checksum, data)


@pytest.mark.benchmark(group="checksum")
def test_checksum_2000_leaders(benchmark):
    blob = os.urandom(F.LEADER_CHECKSUM_LEN * 2000)
    benchmark(checksums, blob, F.LEADER_CHECKSUM_LEN)


@pytest.mark.benchmark(group="bulk-parse")
def test_parse_verify_2000_distinct_hosts(benchmark):
    area = _distinct_lockspace()
    view = benchmark(F.LockspaceView.parse, area, G512)
    assert view.checksum_ok.all() and len(view) == 2000


@pytest.mark.benchmark(group="bulk-parse")
def test_parse_verify_golden_live_lockspace(benchmark):
    area = np.frombuffer(gzip.open(GOLDEN / "ls_live_512_host1_2.img.gz").read(), np.uint8)
    view = benchmark(F.LockspaceView.parse, area, G512)
    assert view.checksum_ok.all()


@pytest.mark.benchmark(group="bulk-parse")
def test_parse_verify_paxos_area(benchmark):
    area = np.frombuffer(gzip.open(GOLDEN / "res_live_512_sh_host1_2.img.gz").read(), np.uint8)
    view = benchmark(F.PaxosView.parse, area, G512)
    assert view.checksum_ok.all()


@pytest.mark.benchmark(group="io")
def test_renewal_io_1mib_read_plus_sector_write(benchmark, tmp_path):
    path = tmp_path / "bench.img"
    with open(path, "wb") as f:
        f.truncate(4 * F.MiB)
    sector = np.zeros(512, np.uint8)
    with DirectStorage(path, io_timeout=10) as storage:
        def renewal_io():
            storage.read(0, F.MiB)
            storage.write(0, sector)
        benchmark(renewal_io)
