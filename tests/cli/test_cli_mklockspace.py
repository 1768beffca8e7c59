"""mklockspace: formats only zeros or its own idle lockspace, says what it refused, matches sanlock.

Foreign data (filesystems, partition tables, images, random bytes, another
lockspace, a lockspace with a host joined, a resource lease held by a live
sanlock daemon) is refused with one line naming what was found, and left
untouched; ``--force`` overwrites and says what it replaced.  The result is
byte-identical to ``sanlock direct init -s`` with the same geometry.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import (
    MiB,
    assert_one_line_error,
    digest,
    dp,
    mkls,
    patch,
    printed_geometry,
    region,
    rewrite_leader,
    run,
)
from oracle import sanlock


@pytest.fixture
def blank(tmp_path: Path) -> Callable[..., Path]:
    """Factory: a sparse zero file of ``size`` bytes (16 MiB by default)."""
    count = [0]

    def make(size: int = 16 * MiB) -> Path:
        count[0] += 1
        path = tmp_path / f"target{count[0]}.img"
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    return make


def assert_refused(path: Path, found: str, *more: str, offset: int = 0, extra: tuple[str, ...] = ()) -> None:
    """mklockspace refuses PATH naming what it found, and writes nothing."""
    before = digest(path)
    got = mkls(path, "--name", "LS", *extra)
    assert got.stdout == ""
    assert_one_line_error(got, 1, path, f"offset {offset}", found, "--force", *more, prog="mklockspace")
    assert digest(path) == before


# --- refusals ------------------------------------------------------------------------------------


def test_refuses_an_ext4_filesystem(blank: Callable[..., Path]) -> None:
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        pytest.skip("e2fsprogs (mkfs.ext4) is not installed")
    path = blank()
    subprocess.run([mkfs, "-q", "-F", str(path)], check=True, capture_output=True, timeout=60)
    assert region(path, 1080, 2) == b"\x53\xef"
    assert_refused(path, "ext2/3/4 filesystem")


def test_refuses_an_ext4_filesystem_on_a_4k_device(loop_device: Callable[..., str]) -> None:
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        pytest.skip("e2fsprogs (mkfs.ext4) is not installed")
    device = loop_device(4096, 16 * MiB)
    subprocess.run([mkfs, "-q", "-F", device], check=True, capture_output=True, timeout=60)
    assert_refused(Path(device), "ext2/3/4 filesystem")


def _mbr(entries: list[tuple[int, int, int]]) -> bytes:
    """A DOS partition table: (type, first LBA, sectors) entries and the 0x55AA signature."""
    mbr = bytearray(512)
    for i, (ptype, lba, count) in enumerate(entries):
        e = 446 + 16 * i
        mbr[e + 4] = ptype
        mbr[e + 8:e + 12] = lba.to_bytes(4, "little")
        mbr[e + 12:e + 16] = count.to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def test_refuses_an_mbr_partition_table(blank: Callable[..., Path]) -> None:
    path = blank()
    if shutil.which("sfdisk"):
        subprocess.run(["sfdisk", "-q", str(path)], input="label: dos\n,,L\n", text=True, check=True,
                       capture_output=True, timeout=60)
    else:
        patch(path, 0, _mbr([(0x83, 2048, 30720)]))
    assert region(path, 510, 2) == b"\x55\xaa"
    assert_refused(path, "DOS/MBR partition table")


def test_refuses_a_gpt_partition_table(blank: Callable[..., Path]) -> None:
    path = blank()
    if shutil.which("sfdisk"):
        subprocess.run(["sfdisk", "-q", str(path)], input="label: gpt\n,,L\n", text=True, check=True,
                       capture_output=True, timeout=60)
    else:  # protective MBR, then the GPT header's signature and revision in LBA 1
        patch(path, 0, _mbr([(0xEE, 1, 16 * MiB // 512 - 1)]))
        patch(path, 512, b"EFI PART" + b"\x00\x00\x01\x00" + (92).to_bytes(4, "little"))
    assert region(path, 512, 8) == b"EFI PART"
    assert_refused(path, "GPT partition table")


def test_refuses_a_qcow2_image(blank: Callable[..., Path]) -> None:
    path = blank()
    if shutil.which("qemu-img"):
        os.unlink(path)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True, timeout=60)
        with open(path, "r+b") as f:
            f.truncate(16 * MiB)
    else:  # the header's magic and version 3
        patch(path, 0, b"QFI\xfb" + (3).to_bytes(4, "big"))
    assert_refused(path, "qcow2 image")


def test_refuses_random_bytes(blank: Callable[..., Path]) -> None:
    path = blank()
    patch(path, 0, np.random.default_rng(7).integers(1, 256, MiB, dtype=np.uint8).tobytes())
    assert_refused(path, "non-zero data")


def test_refuses_a_single_stray_byte_far_into_the_area(blank: Callable[..., Path]) -> None:
    path = blank()
    patch(path, MiB - 1, b"\x01")  # the very last byte of a 512/1M lockspace
    assert_refused(path, "non-zero data")
    patch(path, MiB - 1, b"\x00")
    assert mkls(path, "--name", "LS").returncode == 0


def test_refuses_another_lockspace(sanlock_bin: str, blank: Callable[..., Path]) -> None:
    path = blank()
    assert sanlock(sanlock_bin, "direct", "init", "-s", f"OTHER:0:{path}:0").returncode == 0
    assert_refused(path, "lockspace named 'OTHER'", "'LS'")


def test_refuses_a_resource_lease(sanlock_bin: str, blank: Callable[..., Path]) -> None:
    path = blank()
    assert sanlock(sanlock_bin, "direct", "init", "-r", f"LS:RES:{path}:{MiB}").returncode == 0
    assert_refused(path, "resource lease LS:RES", offset=MiB, extra=("--offset", "1M"))


def test_refuses_same_lockspace_of_another_sector_size_with_a_host_joined(sanlock_bin: str,
                                                                           blank: Callable[..., Path]) -> None:
    """At 4096-byte records, host_id 2's 512-byte record would be hidden inside record 1."""
    path = blank()
    assert sanlock(sanlock_bin, "direct", "init", "-s", f"LS:0:{path}:0").returncode == 0
    rewrite_leader(path, 512, owner_id=2, owner_generation=1, timestamp=777)
    assert_refused(path, "sector_size 512", "4096", extra=("--sector-size", "4096"))
    assert_refused(path, "host_id 2", "timestamp 777")


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.interop
def test_refuses_a_live_lockspace_and_a_held_resource(sanlock_bin: str, sanlock_daemon,  # type: ignore[no-untyped-def]
                                                      blank: Callable[..., Path]) -> None:
    """A real sanlock daemon joins LS as host_id 1 and holds LS:RES for a command."""
    path = blank(4 * MiB)
    assert mkls(path, "--name", "LS", "--io-timeout", "1").returncode == 0
    assert dp("direct", "init", "-r", f"LS:RES:{path}:{MiB}").returncode == 0
    daemon = sanlock_daemon()
    client = [sanlock_bin, "client"]
    joined = run([*client, "add_lockspace", "-s", f"LS:1:{path}:0", "-o", "1"], env=daemon.env)
    assert joined.returncode == 0, (joined, daemon.log_path.read_text())
    holder = subprocess.Popen([*client, "command", "-r", f"LS:RES:{path}:{MiB}", "-c", "/bin/sleep", "60"],
                              env=daemon.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def held() -> bool:
            text = sanlock(sanlock_bin, "direct", "read_leader", "-r", f"LS:RES:{path}:{MiB}").stdout
            return "owner_id 1\n" in text
        _wait_for(held, 15, "sanlock to acquire LS:RES")

        # The daemon keeps renewing host_id 1's sector (bytes 0..511); the rest must not change.
        rest = region(path, 512, 4 * MiB - 512)
        got = mkls(path, "--name", "LS")
        assert_one_line_error(got, 1, path, "offset 0", "host_id 1", "holds lockspace 'LS'", "timestamp",
                              "--force", prog="mklockspace")
        got = dp("direct", "init", "-s", f"LS:0:{path}:0")
        assert_one_line_error(got, 1, path, "offset 0", "host_id 1", "holds lockspace 'LS'")
        got = mkls(path, "--name", "LS", "--offset", "1M")
        assert_one_line_error(got, 1, path, "offset 1048576", "resource lease LS:RES", prog="mklockspace")
        got = dp("direct", "init", "-r", f"LS:RES:{path}:{MiB}")
        assert_one_line_error(got, 1, path, "offset 1048576", "LS:RES held by host_id 1", "--force")
        assert region(path, 512, 4 * MiB - 512) == rest
        ours = sanlock(sanlock_bin, "direct", "read_leader", "-s", f"LS:1:{path}:0").stdout
        assert "owner_id 1\n" in ours and "timestamp 0\n" not in ours  # still joined, not reset
    finally:
        holder.kill()
        holder.wait(timeout=10)
    left = run([*client, "rem_lockspace", "-s", f"LS:1:{path}:0"], env=daemon.env)
    assert left.returncode == 0, left
    # host_id 1 released (timestamp 0): the idle lockspace may be formatted again
    got = mkls(path, "--name", "LS", "--io-timeout", "1")
    assert got.returncode == 0, got


# --- what it accepts -----------------------------------------------------------------------------


def test_accepts_zeros_and_prints_the_file_geometry(sanlock_bin: str, blank: Callable[..., Path]) -> None:
    path = blank()
    got = mkls(path, "--name", "LS")
    assert got.returncode == 0 and got.stderr == "", got
    assert got.stdout.splitlines()[0] == f"formatted lockspace 'LS' on {path}"
    geo = printed_geometry(got.stdout)
    assert geo == {"offset": "0", "sector size": "512", "align": "1M", "max hosts": "2000",
                   "io_timeout": "10", "area": "0..1048576", "next free offset": "1048576"}
    assert sanlock(sanlock_bin, "direct", "read_leader", "-s", f"LS:2000:{path}:0").returncode == 0


def test_accepts_its_own_idle_lockspace(sanlock_bin: str, blank: Callable[..., Path]) -> None:
    path = blank()
    assert sanlock(sanlock_bin, "direct", "init", "-s", f"LS:0:{path}:0", "-o", "3").returncode == 0
    before = digest(path)
    got = mkls(path, "--name", "LS", "--io-timeout", "3")
    assert got.returncode == 0, got
    assert "replaced" in got.stdout and "lockspace 'LS'" in got.stdout
    assert digest(path) == before  # the same bytes, rewritten


@pytest.mark.parametrize("make,found", [
    (lambda p, s: subprocess.run([s, "direct", "init", "-s", f"OTHER:0:{p}:0"], check=True,
                                 capture_output=True, timeout=60), "a sanlock/diskpaxos lockspace 'OTHER'"),
    (lambda p, s: patch(p, 0, b"QFI\xfb" + bytes(4)), "a qcow2 image"),
    (lambda p, s: patch(p, 1000, b"junk"), "non-zero data (first non-zero byte at +1000)"),
], ids=["other-lockspace", "qcow2", "junk"])
def test_force_overwrites_and_says_what_it_replaced(sanlock_bin: str, blank: Callable[..., Path],
                                                    make, found: str) -> None:  # type: ignore[no-untyped-def]
    path, reference = blank(), blank()
    make(path, sanlock_bin)
    got = mkls(path, "--name", "LS", "--force")
    assert got.returncode == 0, got
    assert printed_geometry(got.stdout)["replaced"] == found
    assert sanlock(sanlock_bin, "direct", "init", "-s", f"LS:0:{reference}:0").returncode == 0
    assert region(path, 0, MiB) == region(reference, 0, MiB)


# --- exit codes and --size -----------------------------------------------------------------------


@pytest.mark.parametrize("args,needles", [
    (["--sector-size", "1024"], ["--sector-size", "1024"]),
    (["--align", "3M"], ["3M", "1M, 2M, 4M or 8M"]),
    (["--sector-size", "512", "--align", "8M"], ["sector size 512", "align 8M"]),
    (["--offset", "lots"], ["offset 'lots'"]),
    (["--io-timeout", "0"], ["--io-timeout", "1<=x<=255"]),
    (["--name", ""], ["lockspace name", "empty"]),
    (["--size", "big"], ["size 'big'"]),
    (["--size", "512K"], ["--size 512K is too small", "1048576"]),
    (["--size", "4M", "--sector-size", "4096"], ["--size 4M is too small", "8388608"]),
    (["--size", "1M", "--offset", "1M"], ["--size 1M is too small", "2097152"]),
], ids=["sector-size", "align", "combination", "offset", "io-timeout", "empty-name", "size-bogus",
        "size-small-512", "size-small-4096", "size-small-offset"])
def test_usage_errors_exit_2_and_write_nothing(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    path = tmp_path / "new.img"  # --size would create it; nothing else may
    full = [str(path), *([] if "--name" in args else ["--name", "LS"]), *args]
    got = mkls(*full)
    assert_one_line_error(got, 2, *needles, prog="mklockspace")
    assert not path.exists()


def test_missing_name_is_a_usage_error(blank: Callable[..., Path]) -> None:
    path = blank()
    before = digest(path)
    assert_one_line_error(mkls(path), 2, "--name", prog="mklockspace")
    assert digest(path) == before


def test_size_creates_a_sparse_file(sanlock_bin: str, tmp_path: Path) -> None:
    path = tmp_path / "new.img"
    got = mkls(path, "--name", "LS", "--size", "1G")
    assert got.returncode == 0, got
    st = path.stat()
    assert st.st_size == 1024 * MiB
    assert st.st_blocks * 512 <= 2 * MiB  # only the lockspace area is allocated
    assert sanlock(sanlock_bin, "direct", "read_leader", "-s", f"LS:1:{path}:0").returncode == 0


def test_size_refuses_an_existing_path(blank: Callable[..., Path]) -> None:
    path = blank()
    patch(path, 0, b"precious")
    before = digest(path)
    got = mkls(path, "--name", "LS", "--size", "16M")
    assert_one_line_error(got, 1, path, "exists", prog="mklockspace")
    assert digest(path) == before


def test_failed_mklockspace_with_size_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "new.img"
    got = mkls(path, "--name", "LS", "--size", "4M", "--offset", "100")  # made, then the init fails
    assert_one_line_error(got, 1, path, "offset 100", prog="mklockspace")
    assert not path.exists()


# --- geometry and byte-identity with sanlock --------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("kind,extra,sanlock_sizes,expected", [
    ("file", [], ["-Z", "512", "-A", "1M"], ("512", "1M", "2000")),
    ("file", ["--offset", "3M"], ["-Z", "512", "-A", "1M"], ("512", "1M", "2000")),
    ("loop4k", [], ["-Z", "4096", "-A", "8M"], ("4096", "8M", "2000")),
    ("loop4k", ["--align", "1M"], ["-Z", "4096", "-A", "1M"], ("4096", "1M", "250")),
    ("loop4k", ["--align", "2M", "--offset", "2M"], ["-Z", "4096", "-A", "2M"], ("4096", "2M", "500")),
    ("loop512", [], ["-Z", "512", "-A", "1M"], ("512", "1M", "2000")),
], ids=["file", "file-offset", "loop4k-auto", "loop4k-1M", "loop4k-2M-offset", "loop512"])
def test_geometry_printed_and_bytes_identical_to_sanlock(sanlock_bin: str, blank: Callable[..., Path],
                                                         loop_device: Callable[..., str], kind: str,
                                                         extra: list[str], sanlock_sizes: list[str],
                                                         expected: tuple[str, str, str]) -> None:
    if kind == "file":
        ours, theirs = str(blank()), str(blank())
    else:
        sector = 4096 if kind == "loop4k" else 512
        ours, theirs = loop_device(sector, 16 * MiB), loop_device(sector, 16 * MiB)
    got = mkls(ours, "--name", "LS", "--io-timeout", "7", *extra)
    assert got.returncode == 0, got
    geo = printed_geometry(got.stdout)
    offset = int(geo["offset"])
    align = {"1M": MiB, "2M": 2 * MiB, "4M": 4 * MiB, "8M": 8 * MiB}[geo["align"]]
    assert (geo["sector size"], geo["align"], geo["max hosts"]) == expected
    assert geo["io_timeout"] == "7" and "replaced" not in geo
    assert geo["area"] == f"{offset}..{offset + align}" and geo["next free offset"] == str(offset + align)
    assert offset == (3 * MiB if "3M" in extra else 2 * MiB if "2M" in extra and "--offset" in extra else 0)
    made = sanlock(sanlock_bin, "direct", "init", "-s", f"LS:0:{theirs}:{offset}", "-o", "7", *sanlock_sizes)
    assert made.returncode == 0, made
    assert digest(ours) == digest(theirs)
    host = expected[2]
    read = sanlock(sanlock_bin, "direct", "read_leader", "-s", f"LS:{host}:{ours}:{offset}")
    assert read.returncode == 0 and "io_timeout 7\n" in read.stdout, read
