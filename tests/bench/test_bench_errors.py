"""Bad input to ``bench storage``: one line naming the path, offset or field, exit 1 (2 for usage),
and not one byte of the target changed (sha256 before and after)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from bench_helpers import read_only
from cli_helpers import MiB, assert_one_line_error, digest, dp, patch, rewrite_leader, run, run_as_nobody


def bench(path: object, *args: str) -> object:
    return dp("bench", "storage", str(path), "--duration", "0.2", *args)


def refused(path: object, status: int, *needles: object, args: tuple[str, ...] = ()) -> str:
    before = digest(path)
    got = bench(path, *args)
    assert got.stdout == ""
    line = assert_one_line_error(got, status, *needles)
    assert digest(path) == before
    return line


def test_data_is_refused(scratch_file: Path) -> None:
    patch(scratch_file, 3 * MiB + 100, b"precious")
    refused(scratch_file, 1, scratch_file, f"offset {3 * MiB}", "non-zero data", "refusing", "--force")


def test_a_filesystem_is_named(scratch_file: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", str(scratch_file)], check=True, capture_output=True, timeout=60)
    refused(scratch_file, 1, scratch_file, "offset 0", "ext2/3/4 filesystem", "--force")


def test_a_held_lockspace_is_refused(scratch_file: Path) -> None:
    assert dp("direct", "init", "-s", f"LS:0:{scratch_file}:0").returncode == 0
    rewrite_leader(scratch_file, 512, timestamp=1234, owner_id=2, owner_generation=1, resource_name="other")
    refused(scratch_file, 1, scratch_file, "offset 0", "host_id 2", "holds lockspace 'LS'")


def test_a_held_resource_is_refused(scratch_file: Path) -> None:
    assert dp("direct", "init", "-r", f"LS:RES:{scratch_file}:{2 * MiB}").returncode == 0
    rewrite_leader(scratch_file, 2 * MiB, timestamp=99, owner_id=3, owner_generation=1)
    refused(scratch_file, 1, scratch_file, f"offset {2 * MiB}", "LS:RES is held by host_id 3")


def test_force_runs_over_data_and_puts_it_back(scratch_file: Path) -> None:
    patch(scratch_file, 100, b"precious")
    before = digest(scratch_file)
    got = bench(scratch_file, "--force", "--json")
    assert got.returncode == 0, got
    assert digest(scratch_file) == before


@pytest.mark.parametrize("size, offset, needed", [(4 * MiB, "0", 8 * MiB), (32 * MiB, "30M", 38 * MiB)])
def test_too_small_a_file(tmp_path: Path, size: int, offset: str, needed: int) -> None:
    path = tmp_path / "small.img"
    with open(path, "wb") as f:
        f.truncate(size)
    refused(path, 1, path, f"is {size} bytes, needs at least {needed}", args=("--offset", offset))
    assert path.stat().st_size == size


@pytest.mark.loop
def test_too_small_a_4k_device(loop_device: Callable[..., str]) -> None:
    device = loop_device(4096, 12 * MiB)
    refused(device, 1, device, f"needs at least {16 * MiB}")


@pytest.mark.loop
def test_read_only_device(loop_device: Callable[..., str]) -> None:
    device = loop_device(512, 16 * MiB)
    with read_only(device):
        refused(device, 1, device, "cannot open for writing", "the benchmark writes its scratch area")


def test_read_only_mount(readonly_mount: Path, tmp_path: Path) -> None:
    with open(tmp_path / "rw" / "leases.img", "r+b") as f:  # the same file, through the writable side
        f.truncate(16 * MiB)
    path = readonly_mount / "leases.img"
    refused(path, 1, path, "cannot open for writing (Read-only file system)")


def test_no_write_permission(world_file: Path) -> None:
    world_file.chmod(0o444)
    before = digest(world_file)
    got = run_as_nobody("diskpaxos", "bench", "storage", str(world_file), "--duration", "0.2",
                        cwd=str(world_file.parent))
    assert_one_line_error(got, 1, world_file, "cannot open for writing (Permission denied)")
    assert digest(world_file) == before


def test_missing_path(tmp_path: Path) -> None:
    got = bench(tmp_path / "nope.img")
    assert_one_line_error(got, 1, tmp_path / "nope.img", "no such file")
    assert not (tmp_path / "nope.img").exists()


def test_unaligned_offset(scratch_file: Path) -> None:
    refused(scratch_file, 1, scratch_file, "offset 1000", "not a multiple of the sector size 512",
            args=("--offset", "1000"))


@pytest.mark.loop
def test_512_sectors_on_a_4k_device(loop_device: Callable[..., str]) -> None:
    device = loop_device(4096, 32 * MiB)
    refused(device, 2, device, "sector size 512 is smaller than the device's logical sector size 4096",
            args=("--sector-size", "512"))


@pytest.mark.parametrize("args, needle", [
    (("--sector-size", "1024"), "--sector-size"),
    (("--duration", "0"), "--duration"),
    (("--offset", "lots"), "offset 'lots' is not a number of bytes"),
])
def test_usage_errors(scratch_file: Path, args: tuple[str, ...], needle: str) -> None:
    refused(scratch_file, 2, needle, args=args)


def test_plot_without_matplotlib(scratch_file: Path, tmp_path: Path) -> None:
    """The extra is missing: said before anything is measured or written."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from diskpaxos.cli import main\n"
            "main(args=sys.argv[1:], prog_name='diskpaxos')\n")
    before = digest(scratch_file)
    got = run([sys.executable, "-c", code, "bench", "storage", str(scratch_file), "--plot", str(tmp_path / "p.png")])
    assert_one_line_error(got, 1, "--plot needs matplotlib", "pip install 'diskpaxos[bench]'", "make bench")
    assert digest(scratch_file) == before and not (tmp_path / "p.png").exists()
    assert os.listdir(tmp_path) == [scratch_file.name]
