"""``diskpaxos bench storage`` on a real file and real 512 B / 4K loop devices.

Checked: the JSON's fields and their plausibility (no timed asserts), the
recommendation against spec section 7 through ``Timeouts``, and that the
target's bytes are exactly what they were (the scratch area is put back).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import MiB, digest, dp, rewrite_leader

from diskpaxos.bench import recommend
from diskpaxos.timeouts import Timeouts

OPS = ["write_sector", "read_1m", "read_8m", "renewal", "acquire", "release"]
SUMMARY = ["n", "min", "median", "mean", "p99", "p999", "max"]


def bench_json(path: str, *args: str) -> dict:
    got = dp("bench", "storage", path, "--duration", "1", "--json", *args)
    assert got.returncode == 0, got
    return json.loads(got.stdout)


def check_report(report: dict, path: str, sector_size: int, kind: str) -> None:
    assert report["schema"] == "diskpaxos-bench-storage/1"
    t = report["target"]
    assert (t["path"], t["type"], t["device_sector_size"]) == (path, kind, sector_size)
    assert report["geometry"] == {"sector_size": sector_size, "align_size": MiB if sector_size == 512 else 8 * MiB}
    assert t["area_bytes"] == max(2 * report["geometry"]["align_size"], 8 * MiB)
    assert report["unit"] == "ms" and report["io_timeout_during_run"] == 10
    assert list(report["operations"]) == OPS
    for op, s in report["operations"].items():
        assert set(SUMMARY) <= set(s) and s["description"], op
        assert s["errors"] == 0 and s["first_error"] is None, (op, s)
        assert s["n"] >= 3
        assert 0 < s["min"] <= s["median"] <= s["p99"] <= s["p999"] <= s["max"] < 10_000, (op, s)
        assert sum(b["count"] for b in s["histogram"]) == s["n"]
        assert all(a["le_ms"] < b["le_ms"] for a, b in zip(s["histogram"], s["histogram"][1:]))
    ops = report["operations"]
    # plausibility: a lease operation is not faster than the I/O it is made of
    assert ops["renewal"]["median"] >= 0.5 * ops["write_sector"]["median"]
    assert ops["acquire"]["median"] >= ops["release"]["median"] * 0.5
    check_recommendation(report["recommendation"], ops, sector_size)


def check_recommendation(r: dict, ops: dict, sector_size: int) -> None:
    """The rule as documented: smallest T where every margin-scaled tail fits its budget at T."""
    T = r["io_timeout"]
    assert isinstance(T, int) and 1 <= T <= 255
    assert (r["margin_p999"], r["margin_max"]) == (recommend.MARGIN_P999, recommend.MARGIN_MAX)
    assert "p99.9" in r["rule"] and "section 7" in r["rule"]
    used_read = "read_1m" if sector_size == 512 else "read_8m"
    assert {c["operation"] for c in r["checks"]} == {"write_sector", used_read, "renewal", "acquire", "release"}
    t = Timeouts(T)
    assert (r["renewal_interval_s"], r["renewal_warn_s"], r["renewal_fail_s"], r["host_dead_s"],
            r["acquire_free_max_s"]) == (t.id_renewal, t.id_renewal_warn, t.id_renewal_fail, t.host_dead,
                                         t.paxos_acquire_free_max)
    for c in r["checks"]:
        s = ops[c["operation"]]
        need = max(recommend.MARGIN_P999 * s["p999"], recommend.MARGIN_MAX * s["max"]) / 1000
        assert c["need_s"] == pytest.approx(need)
        budget = t.paxos_acquire_free_max if c["operation"] == "acquire" else t.io_timeout
        assert (c["budget"], c["budget_s"]) == (
            "paxos_acquire_free_max" if c["operation"] == "acquire" else "io_timeout", budget)
        assert c["need_s"] <= c["budget_s"]
        assert c["budget_at_default_s"] == budget / T * 10
    if T > 1:  # smallest: one less does not fit
        smaller = Timeouts(T - 1)
        assert any(c["need_s"] > c["budget_s"] / t.io_timeout * smaller.io_timeout for c in r["checks"])


@pytest.mark.loop
@pytest.mark.parametrize("kind", ["file", "loop512", "loop4k"])
def test_storage_json(kind: str, targets: Callable[[str], str]) -> None:
    path = targets(kind)
    before = digest(path)
    report = bench_json(path)
    check_report(report, path, 4096 if kind == "loop4k" else 512, "file" if kind == "file" else "block device")
    assert report["target"]["found"] == "zeros"
    assert digest(path) == before


def test_storage_at_an_offset_leaves_the_rest_alone(scratch_file: Path) -> None:
    before = digest(scratch_file)
    report = bench_json(str(scratch_file), "--offset", "4M", "--sector-size", "512")
    assert report["target"]["offset"] == 4 * MiB
    assert digest(scratch_file) == before


def test_storage_4k_lease_geometry_on_a_file(scratch_file: Path) -> None:
    report = bench_json(str(scratch_file), "--sector-size", "4096")
    assert report["geometry"] == {"sector_size": 4096, "align_size": 8 * MiB}


def test_storage_over_idle_lease_areas_puts_them_back(scratch_file: Path) -> None:
    """A lockspace nobody holds and a resource lease are scratch; they are there again afterwards."""
    for args in (["-s", f"LS:0:{scratch_file}:0"], ["-r", f"LS:RES:{scratch_file}:{MiB}"]):
        assert dp("direct", "init", *args).returncode == 0
    rewrite_leader(scratch_file, 512, timestamp=0, owner_id=2)  # a host that left cleanly
    before = digest(scratch_file)
    report = bench_json(str(scratch_file))
    assert "lockspace 'LS'" in report["target"]["found"] and "resource lease LS:RES" in report["target"]["found"]
    assert digest(scratch_file) == before


def test_storage_text_histograms_progress_and_plot(scratch_file: Path, tmp_path: Path) -> None:
    png = tmp_path / "storage.png"
    got = dp("bench", "storage", str(scratch_file), "--duration", "1", "--plot", str(png), "--progress")
    assert got.returncode == 0, got
    lines = got.stdout.splitlines()
    assert lines[0].startswith(f"{scratch_file} offset 0: file, 512-byte sectors, lease area 1M")
    assert lines[1].split()[:7] == ["operation", "n", "min", "median", "p99", "p99.9", "max"]
    assert [line.split()[0] for line in lines[2:8]] == OPS
    assert "histograms:" in lines and any(line.strip().startswith("<=") and "#" in line for line in lines)
    assert any(line.startswith("recommendation: io_timeout ") for line in lines)
    assert "renew every" in got.stdout and "host" in got.stdout and "rule: smallest whole io_timeout" in got.stdout
    assert f"plot: {png}" in lines
    assert "100%" in got.stderr and "[###" in got.stderr  # the progress bar
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
