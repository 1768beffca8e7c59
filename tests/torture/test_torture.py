"""The torture harness, bounded: real host processes, kills, freezes, faults; zero violations.

A control run without leases shows the checker does catch overlapping holders,
so a clean result means something.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from oracle import diskpaxos

from diskpaxos.torture import checker


def _run(tmp_path: Path, *args: str, timeout: float) -> tuple[int, dict]:
    result = diskpaxos("torture", "--dir", str(tmp_path / "run"), "--json", *args, timeout=timeout)
    return result.returncode, json.loads(result.stdout)


@pytest.mark.timeout(400)
def test_two_minute_seeded_torture_has_no_violation(tmp_path: Path) -> None:
    code, summary = _run(tmp_path, "--hosts", "4", "--duration", "120s", "--seed", "7", timeout=380)
    assert summary["violations"] == 0, summary
    assert summary["overlaps"] == 0 and summary["lver_errors"] == 0 and summary["physical_violations"] == 0
    assert summary["worker_errors"] == 0, summary
    assert summary["acquisitions"] >= 10, summary  # the run exercised the lease
    assert code == 0


@pytest.mark.timeout(120)
def test_control_run_without_leases_is_caught(tmp_path: Path) -> None:
    code, summary = _run(tmp_path, "--hosts", "3", "--duration", "20s", "--seed", "3", "--no-faults",
                         "--control-no-lease", timeout=110)
    assert code == 1
    assert summary["overlaps"] > 0
    assert summary["physical_violations"] > 0


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_checker_finds_overlap_lver_and_killed_holder(tmp_path: Path) -> None:
    _write(tmp_path / "host-1.log", ["10.0 USE host=1 pid=11 gen=1 lver=1", "12.0 DROP host=1 pid=11 lver=1",
                                     "20.0 USE host=1 pid=12 gen=2 lver=3"])
    _write(tmp_path / "host-2.log", ["11.5 USE host=2 pid=21 gen=1 lver=2", "13.0 DROP host=2 pid=21 lver=2",
                                     "25.0 USE host=2 pid=22 gen=1 lver=3", "26.0 DROP host=2 pid=22 lver=3"])
    _write(tmp_path / "orchestrator.log", ["21.0 KILL host=1 pid=12 why=random"])
    report = checker.check(str(tmp_path), id_renewal_fail=8, end_of_run=100)
    pairs = {(a.pid, b.pid) for a, b in report.overlaps}
    assert (11, 21) in pairs  # 10-12 overlaps 11.5-13
    assert (12, 22) in pairs  # killed at 21: holds until 29, overlaps 25-26
    assert any("lver 3" in e for e in report.lver_errors)
    assert report.violations == 3


def test_checker_accepts_clean_handover(tmp_path: Path) -> None:
    _write(tmp_path / "host-1.log", ["10.0 USE host=1 pid=11 gen=1 lver=1", "12.0 DROP host=1 pid=11 lver=1"])
    _write(tmp_path / "host-2.log", ["12.5 USE host=2 pid=21 gen=1 lver=2", "13.0 DROP host=2 pid=21 lver=2",
                                     "13.1 VIOLAT"])  # a line torn by a kill is ignored
    report = checker.check(str(tmp_path), id_renewal_fail=8, end_of_run=100)
    assert report.violations == 0 and len(report.intervals) == 2
