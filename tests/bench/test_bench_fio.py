"""``bench storage``'s raw figures against fio, an independent measure of the same I/O on the same target.

fio runs the very pattern (psync engine, O_DIRECT; one-sector writes with
O_SYNC; 1 MiB reads) right after our run.  The medians must agree within a
factor of 4, or 0.25 ms: both issue the same syscalls, ours adds a Python
call (microseconds), and the suite runs two test files at once on two CPUs
beside other I/O, so back-to-back runs of the same tool differ by up to about
2x here; a factor of 4 still catches a wrong pattern (a buffered read, a
missing O_SYNC, a wrong size is 10x or more off on real storage).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
from cli_helpers import dp

from diskpaxos.format import Geometry

FACTOR = 4.0
SLACK_MS = 0.25


def fio_median_ms(fio: str, path: str, rw: str, bs: int, offset: int, sync: bool) -> float:
    argv = [fio, "--name=dp", f"--filename={path}", "--ioengine=psync", "--direct=1", f"--rw={rw}", f"--bs={bs}",
            f"--offset={offset}", f"--size={bs}", "--time_based", "--runtime=1", "--output-format=json"]
    if sync:
        argv.append("--sync=1")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    job = json.loads(out)["jobs"][0]["write" if rw == "write" else "read"]
    assert job["total_ios"] > 10
    return float(job["clat_ns"]["percentile"]["50.000000"]) / 1e6


def agree(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= SLACK_MS or 1 / FACTOR <= ours / theirs <= FACTOR


@pytest.mark.loop
@pytest.mark.parametrize("kind", ["file", "loop512", "loop4k"])
def test_medians_agree_with_fio(kind: str, targets: Callable[[str], str], fio_bin: str) -> None:
    path = targets(kind)
    got = dp("bench", "storage", path, "--duration", "1.5", "--json")
    assert got.returncode == 0, got
    report = json.loads(got.stdout)
    ss = report["geometry"]["sector_size"]
    ops = report["operations"]
    # the sector our run wrote (the last host's delta sector); and the area's first 1 MiB
    g = Geometry(ss, report["geometry"]["align_size"])
    spare = g.delta_offset(0, g.max_hosts)
    fio_write = fio_median_ms(fio_bin, path, "write", ss, spare, sync=True)
    fio_read = fio_median_ms(fio_bin, path, "read", 1024 * 1024, 0, sync=False)
    assert agree(ops["write_sector"]["median"], fio_write), (ops["write_sector"]["median"], fio_write)
    assert agree(ops["read_1m"]["median"], fio_read), (ops["read_1m"]["median"], fio_read)
