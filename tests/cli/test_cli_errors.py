"""Bad input through the real CLI: one line naming what is wrong, exit 1 (2 for usage), nothing written.

Leaders are corrupted on images made by ``diskpaxos direct init`` and by the
real ``sanlock direct init``; for every corruption sanlock's ``read_leader``
is run on the same bytes and must print what ours prints.  Every command,
read-only ones included, must leave the target's bytes as they were.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import (
    MiB,
    assert_one_line_error,
    digest,
    dp,
    flip,
    mkls,
    patch,
    region,
    rewrite_leader,
    run_as_nobody,
    u32,
)
from oracle import read_area, sanlock

LS_OFF, RES_OFF = 0, MiB  # where the pristine images hold the lockspace LS and resource LS:RES
IMAGE_SIZE = 2 * MiB

LS_ARG = "-s", "LS:1:{path}:0"
RES_ARG = "-r", "LS:RES:{path}:1048576"
RECORDS = {"lockspace": (LS_OFF, LS_ARG), "resource": (RES_OFF, RES_ARG)}


def args_for(record: str, path: object) -> list[str]:
    flag, text = RECORDS[record][1]
    return [flag, text.format(path=path)]


@pytest.fixture(scope="session")
def pristine(sanlock_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2 MiB file per maker: lockspace LS at 0 and resource LS:RES at 1 MiB (512/1M)."""
    d = tmp_path_factory.mktemp("pristine")
    images = {}
    for maker in ("diskpaxos", "sanlock"):
        path = d / f"{maker}.img"
        with open(path, "wb") as f:
            f.truncate(IMAGE_SIZE)
        for args in (["-s", f"LS:0:{path}:0"], ["-r", f"LS:RES:{path}:{RES_OFF}"]):
            got = dp("direct", "init", *args) if maker == "diskpaxos" else \
                sanlock(sanlock_bin, "direct", "init", *args)
            assert got.returncode == 0 and "init done 0" in got.stdout, got
        images[maker] = path
    assert digest(images["diskpaxos"]) == digest(images["sanlock"]), "the two makers disagree"
    return images


@pytest.fixture(params=["diskpaxos", "sanlock"])
def image(request: pytest.FixtureRequest, pristine: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of an image made by one maker."""
    path = tmp_path / f"{request.param}.img"
    shutil.copyfile(pristine[request.param], path)
    return path


@pytest.fixture
def ours_image(pristine: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the diskpaxos-made image (for checks that do not depend on the maker)."""
    path = tmp_path / "ours.img"
    shutil.copyfile(pristine["diskpaxos"], path)
    return path


def read_both(sanlock_bin: str, path: Path, args: list[str], sizes: bool = False) -> tuple:  # type: ignore[type-arg]
    """(ours, sanlock's) read_leader of the same record; asserts ours wrote nothing."""
    before = digest(path)
    ours = dp("direct", "read-leader", *args)
    assert digest(path) == before, "read-leader changed the target"
    theirs = sanlock(sanlock_bin, "direct", "read_leader", *(["-Z", "512", "-A", "1M"] if sizes else []), *args)
    return ours, theirs


def done_code(stdout: str) -> int:
    m = re.match(r"read_leader done (-?\d+)\n", stdout)
    assert m, stdout
    return int(m.group(1))


# --- corrupted leaders: checksum, magic, version ------------------------------------------------


@pytest.mark.parametrize("record,byte", [
    ("lockspace", 16),  # num_hosts
    ("lockspace", 100),  # space_name, after its NUL: sanlock compares and prints it as a C string
    ("lockspace", 160),  # unused1, the last covered field
    ("resource", 20),  # num_hosts
    ("resource", 130),  # resource_name, after its NUL
])
def test_flipped_byte_in_checksummed_prefix(sanlock_bin: str, image: Path, record: str, byte: int) -> None:
    off = RECORDS[record][0]
    stored = u32(region(image, off + 168, 4))
    flip(image, off + byte)
    ours, theirs = read_both(sanlock_bin, image, args_for(record, image))
    assert done_code(ours.stdout) == -229
    assert ours.stdout == theirs.stdout and theirs.returncode == 1
    line = assert_one_line_error(ours, 1, image, f"offset {off}", "checksum", f"0x{stored:08x}")
    computed = re.search(r"computed (0x[0-9a-f]{8})", line)
    assert computed and int(computed.group(1), 16) != stored, line


@pytest.mark.parametrize("record", ["lockspace", "resource"])
def test_flipped_checksum_field_names_the_expected_checksum(sanlock_bin: str, image: Path, record: str) -> None:
    """The checksum field itself (bytes 168..171) damaged: what we expect is the original checksum."""
    off = RECORDS[record][0]
    original = u32(region(image, off + 168, 4))
    flip(image, off + 169)
    ours, theirs = read_both(sanlock_bin, image, args_for(record, image))
    assert done_code(ours.stdout) == -229 and ours.stdout == theirs.stdout
    assert_one_line_error(ours, 1, image, f"offset {off}", "checksum", f"0x{original ^ 0xFF00:08x}",
                          f"computed 0x{original:08x}")


def test_flipped_byte_in_another_host_ids_record(sanlock_bin: str, image: Path) -> None:
    flip(image, 512 + 20)  # host_id 2's num_hosts
    ours, theirs = read_both(sanlock_bin, image, ["-s", f"LS:2:{image}:0"])
    assert done_code(ours.stdout) == -229 and ours.stdout == theirs.stdout
    assert_one_line_error(ours, 1, image, "offset 512", "checksum")
    ok = dp("direct", "read-leader", "-s", f"LS:3:{image}:0")
    assert ok.returncode == 0 and ok.stdout.startswith("read_leader done 0\n"), ok


@pytest.mark.parametrize("record", ["lockspace", "resource"])
def test_wrong_magic(sanlock_bin: str, image: Path, record: str) -> None:
    off = RECORDS[record][0]
    magic = u32(region(image, off, 4))
    rewrite_leader(image, off, magic=magic ^ 0x1)  # checksum made to match: only the magic is wrong
    # sanlock needs the sizes given to get past its own geometry probe on a lockspace
    ours, theirs = read_both(sanlock_bin, image, args_for(record, image), sizes=True)
    assert done_code(ours.stdout) == -223
    assert ours.stdout == theirs.stdout and theirs.returncode == 1
    assert_one_line_error(ours, 1, image, f"offset {off}", "magic", f"0x{magic ^ 1:08x}", f"0x{magic:08x}")


@pytest.mark.parametrize("args", [["-r", "LS:RES:{path}:0"], ["-s", "LS:1:{path}:1048576"]],
                         ids=["lockspace-read-as-resource", "resource-read-as-lockspace"])
def test_reading_one_kind_as_the_other_is_a_magic_error(sanlock_bin: str, image: Path, args: list[str]) -> None:
    args = [args[0], args[1].format(path=image)]
    off = int(args[1].rsplit(":", 1)[1])
    ours, theirs = read_both(sanlock_bin, image, args, sizes=True)
    assert done_code(ours.stdout) == -223 and ours.stdout == theirs.stdout
    assert_one_line_error(ours, 1, image, f"offset {off}", "magic")


@pytest.mark.parametrize("record,bad", [("lockspace", 0x00040004), ("resource", 0x00070004)])
def test_unknown_major_version(sanlock_bin: str, image: Path, record: str, bad: int) -> None:
    off = RECORDS[record][0]
    version = u32(region(image, off + 4, 4))
    rewrite_leader(image, off, version=bad)
    ours, theirs = read_both(sanlock_bin, image, args_for(record, image))
    assert done_code(ours.stdout) == -224
    assert ours.stdout == theirs.stdout and theirs.returncode == 1
    assert_one_line_error(ours, 1, image, f"offset {off}", "version", f"0x{bad:08x}", f"0x{version:08x}")


@pytest.mark.parametrize("record", ["lockspace", "resource"])
def test_newer_minor_version_is_accepted(sanlock_bin: str, image: Path, record: str) -> None:
    off = RECORDS[record][0]
    version = u32(region(image, off + 4, 4))
    rewrite_leader(image, off, version=version + 1)  # e.g. 0x00030004 -> 0x00030005
    ours, theirs = read_both(sanlock_bin, image, args_for(record, image))
    assert (ours.returncode, theirs.returncode) == (0, 0), (ours, theirs)
    assert ours.stderr == ""
    assert ours.stdout == theirs.stdout
    assert f"version 0x{version + 1:x}\n" in ours.stdout and done_code(ours.stdout) == 0


def test_leader_flags_naming_no_alignment(sanlock_bin: str, image: Path) -> None:
    """Bad ALIGN bits: host_id 1 is still shown (-229, as sanlock); another host_id cannot be located."""
    patch(image, 8, b"\x30")  # flags 0x10 -> 0x30: no 512-byte geometry has it
    ours, theirs = read_both(sanlock_bin, image, ["-s", f"LS:1:{image}:0"])
    assert done_code(ours.stdout) == -229 and ours.stdout == theirs.stdout
    before = digest(image)
    other = dp("direct", "read-leader", "-s", f"LS:2:{image}:0")
    assert other.stdout == ""
    assert_one_line_error(other, 1, image, "offset 0", "flags 0x30")
    assert digest(image) == before


# --- sector size ---------------------------------------------------------------------------------


@pytest.fixture
def ls512_on_loop4k(pristine: dict[str, Path], loop_device: Callable[..., str]) -> str:
    """A 4K-sector loop device holding a lockspace whose leader says sector_size 512."""
    device = loop_device(4096, 16 * MiB)
    fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
    try:
        import mmap
        buf = mmap.mmap(-1, IMAGE_SIZE)
        buf[:] = pristine["sanlock"].read_bytes()
        assert os.pwritev(fd, [buf], 0) == IMAGE_SIZE
    finally:
        os.close(fd)
    assert read_area(device, 0, 4096)[12:16] == (512).to_bytes(4, "little")
    return device


def test_leader_sector_size_smaller_than_the_device(ls512_on_loop4k: str) -> None:
    device = ls512_on_loop4k
    before = digest(device)
    for args in (["direct", "read-leader", "-s", f"LS:1:{device}:0"],
                 ["direct", "read-leader", "-s", f"LS:2:{device}:0"],
                 ["direct", "dump", device]):
        got = dp(*args)
        assert "read_leader done 0" not in got.stdout
        assert_one_line_error(got, 1, device, "offset 0", "sector_size 512", "4096")
    # a fresh init there would misread (and destroy) the 512-byte lockspace
    got = dp("direct", "init", "-s", f"LS:0:{device}:0")
    assert_one_line_error(got, 1, device, "offset 0", "sector_size 512", "--force")
    assert digest(device) == before


def test_init_with_sector_size_below_the_devices(loop_device: Callable[..., str]) -> None:
    device = loop_device(4096, 16 * MiB)
    before = digest(device)
    for args in (["-s", f"LS:0:{device}:0"], ["-r", f"LS:RES:{device}:0"]):
        got = dp("direct", "init", "-Z", "512", *args)
        assert_one_line_error(got, 2, device, "sector size 512", "4096")
    assert digest(device) == before


@pytest.fixture
def ls4096_8m_file(sanlock_bin: str, tmp_path: Path) -> Path:
    path = tmp_path / "ls4k.img"
    with open(path, "wb") as f:
        f.truncate(24 * MiB)
    for args in (["-s", f"LS:0:{path}:0"], ["-r", f"LS:RES:{path}:{8 * MiB}"]):
        got = sanlock(sanlock_bin, "direct", "init", "-Z", "4096", "-A", "8M", *args)
        assert got.returncode == 0, got
    return path


@pytest.mark.parametrize("z,a,needles", [
    ("512", "1M", ["sector_size 4096", "-Z 512"]),
    ("4096", "1M", ["flags 0x80", "8M", "-A 1M"]),  # sanlock 3.8.5 segfaults on this one
])
def test_dump_with_sizes_the_leader_contradicts(ls4096_8m_file: Path, z: str, a: str, needles: list[str]) -> None:
    path = ls4096_8m_file
    before = digest(path)
    got = dp("direct", "dump", "-Z", z, "-A", a, path)
    assert got.stdout == ""
    assert_one_line_error(got, 1, path, "offset 0", *needles)
    assert digest(path) == before


def test_dump_with_the_right_sizes_matches_sanlock(sanlock_bin: str, ls4096_8m_file: Path) -> None:
    path = ls4096_8m_file
    before = digest(path)
    ours = dp("direct", "dump", "-Z", "4096", "-A", "8M", path)
    theirs = sanlock(sanlock_bin, "direct", "dump", str(path), "-Z", "4096", "-A", "8M")
    assert ours.returncode == 0 and ours.stdout == theirs.stdout and "RES" in ours.stdout
    assert digest(path) == before


def test_init_changing_sector_size_of_a_joined_lockspace_refuses(pristine: dict[str, Path], tmp_path: Path) -> None:
    """A 512-byte lockspace where host_id 2 is joined: a 4096 init would not see that record."""
    path = tmp_path / "joined.img"
    shutil.copyfile(pristine["sanlock"], path)
    with open(path, "r+b") as f:
        f.truncate(16 * MiB)
    rewrite_leader(path, 512, owner_id=2, owner_generation=3, timestamp=4242)
    before = digest(path)
    for args in (["direct", "init", "-Z", "4096", "-A", "8M", "-s", f"LS:0:{path}:0"],
                 ["direct", "init", "-Z", "4096", "-s", f"LS:0:{path}:0"]):
        assert_one_line_error(dp(*args), 1, path, "offset 0", "sector_size 512", "4096", "--force")
    assert digest(path) == before


# --- target too small ----------------------------------------------------------------------------


def test_block_device_too_small(loop_device: Callable[..., str]) -> None:
    device = loop_device(4096, MiB)  # a 4096/8M lockspace needs 8 MiB
    before = digest(device)
    for got, prog in ((dp("direct", "init", "-s", f"LS:0:{device}:0"), "diskpaxos"),
                      (dp("direct", "init", "-r", f"LS:RES:{device}:0"), "diskpaxos"),
                      (mkls(device, "--name", "LS"), "mklockspace")):
        assert_one_line_error(got, 1, device, "offset 0", "1048576 bytes", "8388608", prog=prog)
    got = dp("direct", "init", "-s", f"LS:0:{device}:{512 * 1024}", "-A", "1M")
    assert_one_line_error(got, 1, device, "offset 524288", str(512 * 1024 + MiB))
    assert digest(device) == before


def test_read_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "short.img"
    path.write_bytes(bytes(4096))
    got = dp("direct", "read-leader", "-s", f"LS:1:{path}:4096")
    assert_one_line_error(got, 1, path, "offset 4096", "4096 bytes", "8192")
    assert path.read_bytes() == bytes(4096)


def test_regular_file_too_small_is_grown_like_sanlock(sanlock_bin: str, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.img", tmp_path / "theirs.img"
    for p in (ours, theirs):
        with open(p, "wb") as f:
            f.truncate(MiB)
    got = dp("direct", "init", "-Z", "4096", "-A", "8M", "-s", f"LS:0:{ours}:0")
    assert got.returncode == 0, got
    got = sanlock(sanlock_bin, "direct", "init", "-Z", "4096", "-A", "8M", "-s", f"LS:0:{theirs}:0")
    assert got.returncode == 0, got
    assert ours.stat().st_size == theirs.stat().st_size == 8 * MiB
    assert digest(ours) == digest(theirs)


# --- unaligned offset ----------------------------------------------------------------------------


def test_unaligned_offset(ours_image: Path) -> None:
    before = digest(ours_image)
    for got, prog in ((dp("direct", "init", "-s", f"LS:0:{ours_image}:100"), "diskpaxos"),
                      (dp("direct", "init", "-r", f"LS:RES:{ours_image}:100"), "diskpaxos"),
                      (dp("direct", "read-leader", "-s", f"LS:1:{ours_image}:100"), "diskpaxos"),
                      (dp("direct", "read-leader", "-r", f"LS:RES:{ours_image}:100"), "diskpaxos"),
                      (dp("direct", "dump", f"{ours_image}:100"), "diskpaxos"),
                      (mkls(ours_image, "--name", "LS", "--offset", "100"), "mklockspace")):
        assert got.stdout == ""
        assert_one_line_error(got, 1, ours_image, "offset 100", "multiple of the sector size 512", prog=prog)
    assert digest(ours_image) == before


def test_offset_aligned_to_512_but_not_to_a_4k_device(loop_device: Callable[..., str]) -> None:
    device = loop_device(4096, 16 * MiB)
    before = digest(device)
    for args in (["init", "-s", f"LS:0:{device}:512"], ["read-leader", "-s", f"LS:1:{device}:512"]):
        assert_one_line_error(dp("direct", *args), 1, device, "offset 512", "sector size 4096")
    assert digest(device) == before


# --- names and host ids --------------------------------------------------------------------------

NAME48 = "n" * 48
NAME49 = "n" * 49


def test_name_longer_than_48_bytes(ours_image: Path) -> None:
    before = digest(ours_image)
    for got, prog, what in (
            (dp("direct", "init", "-s", f"{NAME49}:0:{ours_image}:0"), "diskpaxos", "lockspace name"),
            (dp("direct", "init", "-r", f"LS:{NAME49}:{ours_image}:0"), "diskpaxos", "resource name"),
            (dp("direct", "init", "-r", f"{NAME49}:RES:{ours_image}:0"), "diskpaxos", "lockspace name"),
            (dp("direct", "read-leader", "-s", f"{NAME49}:1:{ours_image}:0"), "diskpaxos", "lockspace name"),
            (mkls(ours_image, "--name", NAME49), "mklockspace", "lockspace name"),
            # 25 two-byte characters: the limit is bytes, not characters
            (mkls(ours_image, "--name", "é" * 25), "mklockspace", "50 bytes")):
        assert_one_line_error(got, 2, what, "at most 48", prog=prog)
    assert digest(ours_image) == before


def test_name_of_48_bytes_is_accepted_and_sanlock_reads_it(sanlock_bin: str, tmp_path: Path) -> None:
    path = tmp_path / "n48.img"
    with open(path, "wb") as f:
        f.truncate(2 * MiB)
    assert dp("direct", "init", "-s", f"{NAME48}:0:{path}:0").returncode == 0
    assert dp("direct", "init", "-r", f"{NAME48}:{NAME48}:{path}:{MiB}").returncode == 0
    for args in (["-s", f"{NAME48}:1:{path}:0"], ["-r", f"{NAME48}:{NAME48}:{path}:{MiB}"]):
        ours, theirs = read_both(sanlock_bin, path, args)
        assert ours.returncode == theirs.returncode == 0, (ours, theirs)
        assert ours.stdout == theirs.stdout and f"space_name {NAME48}\n" in ours.stdout


def test_host_id_zero_is_a_usage_error(ours_image: Path) -> None:
    before = digest(ours_image)
    got = dp("direct", "read-leader", "-s", f"LS:0:{ours_image}:0")
    assert got.stdout == ""
    assert_one_line_error(got, 2, "host_id", "1 or more")
    assert digest(ours_image) == before


@pytest.mark.parametrize("host_id", [2001, 99999])
def test_host_id_above_max_hosts(ours_image: Path, host_id: int) -> None:
    before = digest(ours_image)
    got = dp("direct", "read-leader", "-s", f"LS:{host_id}:{ours_image}:0")
    assert got.stdout == ""
    assert_one_line_error(got, 1, ours_image, f"host_id {host_id}", "1..2000")
    assert digest(ours_image) == before


def test_host_id_limits_follow_the_geometry(sanlock_bin: str, loop_device: Callable[..., str]) -> None:
    device = loop_device(4096, 16 * MiB)
    assert dp("direct", "init", "-A", "1M", "-s", f"LS:0:{device}:0").returncode == 0
    last = dp("direct", "read-leader", "-s", f"LS:250:{device}:0")
    assert last.returncode == 0
    assert last.stdout == sanlock(sanlock_bin, "direct", "read_leader", "-s", f"LS:250:{device}:0").stdout
    assert_one_line_error(dp("direct", "read-leader", "-s", f"LS:251:{device}:0"), 1, device,
                          "host_id 251", "1..250")


# --- the target cannot be opened -----------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.img"
    for got, prog in ((dp("direct", "init", "-s", f"LS:0:{path}:0"), "diskpaxos"),
                      (dp("direct", "init", "-r", f"LS:RES:{path}:0"), "diskpaxos"),
                      (dp("direct", "read-leader", "-s", f"LS:1:{path}:0"), "diskpaxos"),
                      (dp("direct", "read-leader", "-r", f"LS:RES:{path}:0"), "diskpaxos"),
                      (dp("direct", "dump", path), "diskpaxos"),
                      (mkls(path, "--name", "LS"), "mklockspace")):
        assert got.stdout == ""
        assert_one_line_error(got, 1, path, "No such file or directory", prog=prog)
        assert not path.exists()


def test_permission_denied(pristine: dict[str, Path], world_dir: Path) -> None:
    path = world_dir / "leases.img"
    shutil.copyfile(pristine["diskpaxos"], path)
    path.chmod(0o000)
    before = digest(path)
    for prog, *args in (("diskpaxos", "direct", "init", "-s", f"LS:0:{path}:0"),
                        ("diskpaxos", "direct", "init", "-r", f"LS:RES:{path}:{MiB}"),
                        ("diskpaxos", "direct", "read-leader", "-s", f"LS:1:{path}:0"),
                        ("diskpaxos", "direct", "dump", str(path)),
                        ("mklockspace", str(path), "--name", "LS")):
        got = run_as_nobody(prog, *args, cwd=str(world_dir))
        assert got.stdout == ""
        assert_one_line_error(got, 1, path, "Permission denied", prog=prog)
    assert digest(path) == before


def test_init_on_a_read_only_filesystem(readonly_mount: Path) -> None:
    path = readonly_mount / "leases.img"
    before = digest(path)
    for got, prog in ((dp("direct", "init", "-s", f"LS:0:{path}:0"), "diskpaxos"),
                      (dp("direct", "init", "-r", f"LS:RES:{path}:0"), "diskpaxos"),
                      (mkls(path, "--name", "LS"), "mklockspace")):
        assert got.stdout == ""
        assert_one_line_error(got, 1, path, "Read-only file system", prog=prog)
    new = readonly_mount / "new.img"
    got = mkls(new, "--name", "LS", "--size", "1M")
    assert_one_line_error(got, 1, new, "Read-only file system", prog="mklockspace")
    assert not new.exists()
    assert digest(path) == before


def test_filesystem_refusing_o_direct(ramfs_file: Path) -> None:
    path = ramfs_file
    before = digest(path)
    for got, prog in ((dp("direct", "init", "-s", f"LS:0:{path}:0"), "diskpaxos"),
                      (dp("direct", "init", "-r", f"LS:RES:{path}:0"), "diskpaxos"),
                      (dp("direct", "read-leader", "-s", f"LS:1:{path}:0"), "diskpaxos"),
                      (dp("direct", "dump", path), "diskpaxos"),
                      (mkls(path, "--name", "LS"), "mklockspace")):
        assert got.stdout == ""
        assert_one_line_error(got, 1, path, "O_DIRECT", prog=prog)
    assert digest(path) == before
    # --size made the file, then could not use it: nothing is left behind
    new = path.parent / "new.img"
    assert_one_line_error(mkls(new, "--name", "LS", "--size", "1M"), 1, new, "O_DIRECT", prog="mklockspace")
    assert not new.exists()
