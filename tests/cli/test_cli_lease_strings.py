"""sanlock's LOCKSPACE and RESOURCE strings through the real CLI.

A malformed string is a usage error: exit 2, one line naming the string and
what is wrong with it, and the target (which exists) is left untouched.  The
forms sanlock accepts (escaped ``:`` in paths, an omitted offset, offsets
with suffixes) work and mean what they mean to sanlock.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_helpers import MiB, assert_one_line_error, digest, dp
from oracle import sanlock


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "t.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    return path


@pytest.mark.parametrize("verb,flag,text,needles", [
    ("init", "-s", "LS", ["'LS'", "NAME:HOST_ID:PATH:OFFSET"]),
    ("read-leader", "-s", "LS:one:{p}:0", ["host_id 'one' is not a number"]),
    ("read-leader", "-s", "LS:-1:{p}:0", ["host_id -1 is negative"]),
    ("init", "-s", "LS:0::0", ["path is empty"]),
    ("init", "-s", "LS:0:{p}:12Q", ["offset '12Q'"]),
    ("init", "-s", ":0:{p}:0", ["lockspace name", "empty"]),
    ("init", "-r", "LS:RES:{p}", ["LOCKSPACE:NAME:PATH:OFFSET"]),
    ("init", "-r", "LS:RES:{p}:0:SH", ["no :LVER or :SH"]),
    ("init", "-r", "LS:RES:{p}:0:{p}:1M:{p}:2M:{p}:3M:{p}:4M", ["5 disks", "at most 4"]),
    ("read-leader", "-r", "LS::{p}:0", ["resource name", "empty"]),
])
def test_malformed_strings_are_usage_errors(target: Path, verb: str, flag: str, text: str,
                                            needles: list[str]) -> None:
    before = digest(target)
    got = dp("direct", verb, flag, text.format(p=target))
    assert got.stdout == ""
    assert_one_line_error(got, 2, *needles)
    assert digest(target) == before


@pytest.mark.parametrize("args,needles", [
    (["{p}:0:1M:9"], ["PATH[:OFFSET[:SIZE]]"]),
    (["{p}:x"], ["offset 'x'"]),
    (["{p}", "-f", "many"], ["'many' is not a number"]),
    (["{p}", "-Z", "4096"], ["-Z and -A together"]),
    (["{p}", "-Z", "4096", "-A", "3M"], ["3M"]),
])
def test_malformed_dump_targets_are_usage_errors(target: Path, args: list[str], needles: list[str]) -> None:
    before = digest(target)
    got = dp("direct", "dump", *[a.format(p=target) for a in args])
    assert got.stdout == ""
    assert_one_line_error(got, 2, *needles)
    assert digest(target) == before


def test_neither_or_both_of_s_and_r(target: Path) -> None:
    assert_one_line_error(dp("direct", "read-leader"), 2, "exactly one of -s", "-r")
    got = dp("direct", "init", "-s", f"LS:0:{target}:0", "-r", f"LS:RES:{target}:{MiB}")
    assert_one_line_error(got, 2, "exactly one of -s", "-r")
    assert not any(target.read_bytes())


def test_escaped_colon_in_path_and_suffixed_offsets_mean_what_they_mean_to_sanlock(sanlock_bin: str,
                                                                                   tmp_path: Path) -> None:
    path = tmp_path / "lease:s.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    escaped = str(path).replace(":", "\\:")
    assert dp("direct", "init", "-s", f"LS:0:{escaped}").returncode == 0  # offset omitted: 0
    assert dp("direct", "init", "-r", f"LS:RES:{escaped}:2M").returncode == 0
    assert dp("direct", "init", "-r", f"LS:RES2:{escaped}:0x300000").returncode == 0
    for args in (["-s", f"LS:1:{escaped}:0"], ["-r", f"LS:RES:{escaped}:{2 * MiB}"],
                 ["-r", f"LS:RES2:{escaped}:{3 * MiB}"]):
        theirs = sanlock(sanlock_bin, "direct", "read_leader", *args)
        ours = dp("direct", "read-leader", *args)
        assert theirs.returncode == ours.returncode == 0, (theirs, ours)
        assert ours.stdout == theirs.stdout


def test_no_command_still_shows_the_help() -> None:
    """One-line usage errors must not swallow click's help for a bare group."""
    got = dp("direct")
    assert got.returncode == 2
    assert got.stderr.startswith("Usage: diskpaxos direct [OPTIONS] COMMAND") and "read-leader" in got.stderr
