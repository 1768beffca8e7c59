"""diskpaxos and the real sanlock initialise byte-identical areas, and each reads the other's.

For every geometry (512/1M on a file and a 512 B loop device; 4096 with
1M/2M/4M/8M on a 4K loop device) both programs format identical fresh targets;
the areas must be equal byte for byte, and sanlock's readers (``direct dump``,
``read_leader``, python3-sanlock's ``read_lockspace``/``read_resource``) must
say the same of ours as of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from oracle import diskpaxos, py_sanlock, read_area, sanlock

MiB = 1024 * 1024

GEOMETRIES = [
    pytest.param("file", 512, 1, id="file-512-1M"),
    pytest.param("loop512", 512, 1, id="loop512-512-1M"),
    pytest.param("loop4k", 4096, 1, id="loop4k-4096-1M"),
    pytest.param("loop4k", 4096, 2, id="loop4k-4096-2M"),
    pytest.param("loop4k", 4096, 4, id="loop4k-4096-4M"),
    pytest.param("loop4k", 4096, 8, id="loop4k-4096-8M"),
]


@pytest.fixture
def make_target(tmp_path: Path, loop_device: Callable[..., str]) -> Callable[[str, int], str]:
    """A fresh zeroed target of the given kind, big enough for a lockspace and two resources."""
    count = [0]

    def make(kind: str, size: int) -> str:
        count[0] += 1
        if kind == "file":
            path = tmp_path / f"target{count[0]}.img"
            with open(path, "wb") as f:
                f.truncate(size)
            return str(path)
        return loop_device(512 if kind == "loop512" else 4096, size)

    return make


def _init_both(sanlock_bin: str, a: str, b: str, args_for: Callable[[str], list[str]]) -> None:
    got = sanlock(sanlock_bin, "direct", "init", *args_for(a))
    assert got.returncode == 0 and "init done 0" in got.stdout, got
    ours = diskpaxos("direct", "init", *args_for(b))
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.strip() == "init done 0"


@pytest.mark.interop
@pytest.mark.parametrize("kind,sector,align_m", GEOMETRIES)
def test_lockspace_and_resource_init_byte_identical(sanlock_bin: str, sanlock_python: str, sanlock_reader,
                                                    make_target: Callable[[str, int], str],
                                                    kind: str, sector: int, align_m: int) -> None:
    align = align_m * MiB
    size = 4 * align
    a, b = make_target(kind, size), make_target(kind, size)
    geo = ["-Z", str(sector), "-A", f"{align_m}M"]

    _init_both(sanlock_bin, a, b, lambda p: ["-s", f"LSX:0:{p}:0", *geo, "-o", "5"])
    _init_both(sanlock_bin, a, b, lambda p: ["-r", f"LSX:RES_A:{p}:{align}", *geo])
    _init_both(sanlock_bin, a, b, lambda p: ["-r", f"LSX:RES_B:{p}:{2 * align}", *geo, "-n", "8"])

    theirs, ours = read_area(a, 0, 3 * align), read_area(b, 0, 3 * align)
    if theirs != ours:
        first = next(i for i in range(len(theirs)) if theirs[i] != ours[i])
        pytest.fail(f"areas differ first at byte {first}: sanlock {theirs[first]:#x}, diskpaxos {ours[first]:#x}")
    assert theirs[:4] == b"\x10\x20\x21\x12"  # the lockspace was really written

    # sanlock reads ours exactly as its own
    def same(*args: str) -> None:
        r_a = sanlock(sanlock_bin, *[x.replace("@", a) for x in args])
        r_b = sanlock(sanlock_bin, *[x.replace("@", b) for x in args])
        assert r_a.returncode == r_b.returncode
        assert r_a.stdout.replace(a, "@") == r_b.stdout.replace(b, "@")
        assert "done 0" in r_b.stdout or "offset" in r_b.stdout

    same("direct", "read_leader", "-s", "LSX:1:@:0")
    max_hosts = 2000 if sector == 512 else 250 * align_m
    same("direct", "read_leader", "-s", f"LSX:{max_hosts}:@:0")
    same("direct", "read_leader", "-r", f"LSX:RES_A:@:{align}")
    same("direct", "read_leader", "-r", f"LSX:RES_B:@:{2 * align}")
    same("direct", "dump", f"@:0:{3 * align}")
    for flag in ("0", "2"):
        theirs_dump = sanlock(sanlock_bin, "direct", "dump", f"{b}:0:{3 * align}", "-f", flag)
        ours_dump = diskpaxos("direct", "dump", f"{b}:0:{3 * align}", "-f", flag)
        assert ours_dump.returncode == 0, ours_dump.stderr
        assert ours_dump.stdout == theirs_dump.stdout
        assert "RES_A" in ours_dump.stdout and "RES_B" in ours_dump.stdout

    code = (f"result = [sanlock.read_lockspace(P, 0, align={align}, sector={sector}),"
            f" sanlock.read_resource(P, {align}, align={align}, sector={sector}),"
            f" sanlock.read_resource(P, {2 * align}, align={align}, sector={sector})]")
    theirs_py = py_sanlock(sanlock_python, f"P = {a!r}\n{code}", env=sanlock_reader.env)
    ours_py = py_sanlock(sanlock_python, f"P = {b!r}\n{code}", env=sanlock_reader.env)
    assert theirs_py == ours_py
    assert ours_py[0] == {"lockspace": "LSX", "iotimeout": 5}
    assert ours_py[1]["resource"] == "RES_A" and ours_py[2]["resource"] == "RES_B"


@pytest.mark.interop
def test_default_geometry_on_4k_device_matches_sanlock(sanlock_bin: str, loop_device: Callable[..., str]) -> None:
    """Without -Z/-A both pick the device's sector size and 8M alignment on a 4K device."""
    a, b = loop_device(4096, 32 * MiB), loop_device(4096, 32 * MiB)
    _init_both(sanlock_bin, a, b, lambda p: ["-s", f"DEF:0:{p}:0"])
    theirs, ours = read_area(a, 0, 8 * MiB), read_area(b, 0, 8 * MiB)
    assert theirs == ours
    assert int.from_bytes(ours[8:12], "little") == 0x80  # LFL_ALIGN_8M


@pytest.mark.interop
def test_sanlock_written_area_readable_by_diskpaxos(sanlock_bin: str, lease_file: Path) -> None:
    """The reverse direction on a fresh target: our read-leader agrees with sanlock's."""
    p = str(lease_file)
    assert sanlock(sanlock_bin, "direct", "init", "-s", f"REV:0:{p}:0", "-o", "3").returncode == 0
    assert sanlock(sanlock_bin, "direct", "init", "-r", f"REV:R1:{p}:1048576").returncode == 0
    for arg in (["-s", f"REV:7:{p}:0"], ["-r", f"REV:R1:{p}:1048576"]):
        theirs = sanlock(sanlock_bin, "direct", "read_leader", *arg)
        ours = diskpaxos("direct", "read-leader", *arg)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout
