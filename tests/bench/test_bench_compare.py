"""``diskpaxos bench compare`` against a real sanlock daemon, on a file, with a small workload.

No timed asserts: the table and the JSON have every metric for every side,
the figures are positive and plausible (add_lockspace waits 2 x io_timeout
on both sides; nothing beats the bare I/O by much), and nothing is left
behind: daemons, loop devices, work files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import dp, run
from oracle import DISKPAXOS

from diskpaxos.bench.compare import METRICS

pytestmark = [pytest.mark.interop]


def our_processes(*markers: str) -> list[str]:
    """Processes whose command line names a marker (work dir, daemons' run dirs): none may outlive the run."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmdline for m in markers) and "pytest" not in cmdline:
                found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.timeout(300)
def test_compare_on_a_file(sanlock_bin: str, sanlock_python: str, strace_bin: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    started = time.time() - 1
    out, png = tmp_path / "compare.json", tmp_path / "compare.png"
    got = run([DISKPAXOS, "bench", "compare", "--storage", "file", "--leases", "8", "--rounds", "4", "--kills", "2",
               "--renewal-seconds", "3", "--dir", str(work), "--output", str(out), "--plot", str(png)], timeout=280)
    assert got.returncode == 0, got
    report = json.loads(out.read_text())
    assert report["schema"] == "diskpaxos-bench-compare/1"
    assert report["metrics"] == METRICS and report["io_timeout"] == 1 and report["leases"] == 8
    assert report["machine"]["sanlock"] and report["machine"]["cpus"] >= 1
    file = report["storage"]["file"]
    assert file["geometry"] == {"sector_size": 512, "align_size": 1024 * 1024}
    assert list(file["metrics"]) and set(file["metrics"]) == set(METRICS)
    for name, row in file["metrics"].items():
        for side in ("floor", "diskpaxos", "sanlock"):
            assert 0 < row[side] < 60_000 and math.isfinite(row[side]), (name, side, row)
        assert row["diskpaxos_vs_sanlock"] == pytest.approx(row["diskpaxos"] / row["sanlock"])
        assert row["diskpaxos_vs_floor"] == pytest.approx(row["diskpaxos"] / row["floor"])
    m = file["metrics"]
    for side in ("diskpaxos", "sanlock"):  # a join waits 2 x io_timeout (spec 7: delta_short_delay)
        assert m["add_lockspace_ms"][side] >= 1900
        # a lease operation through a daemon is not much faster than its bare I/O
        assert m["acquire_release_ms"][side] >= 0.3 * m["acquire_release_ms"]["floor"]
    assert m["acquire_release_ms"]["n"] == {"floor": 4, "diskpaxos": 4, "sanlock": 4}
    assert m["release_on_exit_ms"]["n"]["diskpaxos"] == m["release_on_exit_ms"]["n"]["sanlock"] == 2
    assert file["details"]["diskpaxos_renewals_in_window"] >= 1 and file["details"]["sanlock_renewals_in_window"] >= 1

    lines = got.stdout.splitlines()
    assert lines[0].startswith("diskpaxos ") and "vs sanlock 3.8.5" in lines[0]
    header = next(line for line in lines if "median of" in line)
    assert header.split()[2:] == ["floor", "diskpaxos", "sanlock", "dp/sanlock", "dp/floor"]
    for label in METRICS.values():
        assert any(line.strip().startswith(label) for line in lines), label
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert os.listdir(work) == []  # the run's work dir is gone
    assert our_processes(str(work), "/tmp/dpc-", "bench-sanlock") == []
    assert not [p for p in Path("/tmp").glob("dpc-*") if p.stat().st_mtime >= started]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout
    assert str(work) not in loops


def test_compare_usage_errors() -> None:
    got = dp("bench", "compare", "--storage", "nfs")
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and "--storage" in got.stderr
    got = dp("bench", "compare", "--leases", "2")
    assert got.returncode == 2 and "--leases" in got.stderr
