"""Helpers for the CLI tests: run the real commands, check one-line errors, hash targets.

Every CLI test runs the installed ``diskpaxos``/``mklockspace`` entry points
(and the real sanlock) as processes, so what is checked is what a user sees:
exit status, stdout, stderr, and the bytes on the target.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

from oracle import DISKPAXOS, MKLOCKSPACE, Result, read_area

MiB = 1024 * 1024
LEADER_LEN = 200  # bytes of a leader record; sanlock checksums the first 168


def target_size(path: str | os.PathLike[str]) -> int:
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)
    return st.st_size


def digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256) of a whole file or block device (O_DIRECT for a device: no stale page cache)."""
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):
        size = target_size(path)
        return size, hashlib.sha256(read_area(os.fspath(path), 0, size)).hexdigest()
    data = Path(path).read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def region(path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    st = os.stat(path)
    if stat.S_ISBLK(st.st_mode):  # O_DIRECT: whole 4 KiB blocks around the region
        start = offset - offset % 4096
        end = -(-(offset + length) // 4096) * 4096
        return read_area(os.fspath(path), start, end - start)[offset - start: offset - start + length]
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def patch(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of a regular file (buffered, then fsync)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def flip(path: str | os.PathLike[str], offset: int) -> None:
    """Invert every bit of one byte."""
    patch(path, offset, bytes([region(path, offset, 1)[0] ^ 0xFF]))


def u32(data: bytes, at: int = 0) -> int:
    return int.from_bytes(data[at:at + 4], "little")


def rewrite_leader(path: str | os.PathLike[str], offset: int, **fields: int) -> None:
    """Change leader fields and store a checksum that matches, so only those fields are wrong.

    Uses diskpaxos's record class to recompute the checksum; the tests that
    rely on it also ask the real sanlock, which would see a bad checksum.
    """
    from diskpaxos.format import LeaderRecord
    rec = LeaderRecord.from_bytes(region(path, offset, LEADER_LEN)).replace(**fields).with_checksum()
    patch(path, offset, rec.to_bytes())


def run(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
        timeout: float = 60) -> Result:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env=env, cwd=cwd)
    return Result(p.returncode, p.stdout, p.stderr)


def dp(*args: str) -> Result:
    return run([DISKPAXOS, *map(str, args)])


def mkls(*args: str) -> Result:
    return run([MKLOCKSPACE, *map(str, args)])


def assert_one_line_error(result: Result, status: int, *needles: object, prog: str = "diskpaxos") -> str:
    """Exit ``status``, and stderr is one line, no traceback, naming every needle."""
    assert result.returncode == status, f"exit {result.returncode}, wanted {status}: {result}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, \
        f"stderr is not exactly one line: {result.stderr!r}"
    line = result.stderr.rstrip("\n")
    assert line.startswith(f"{prog}: "), line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    return line


# Imports first, then drops root for good: the interpreter may live where
# "nobody" cannot read it (difflib: click's option parser imports it lazily).
# Then runs the very entry point the scripts run.
_AS_NOBODY = """
import difflib, os, sys
from diskpaxos.cli import main, mklockspace
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
prog = sys.argv[1]
(main if prog == "diskpaxos" else mklockspace)(args=sys.argv[2:], prog_name=prog)
"""


def run_as_nobody(prog: str, *args: str, cwd: str) -> Result:
    """Run ``diskpaxos`` or ``mklockspace`` as uid/gid 65534 (we are root)."""
    return run([sys.executable, "-c", _AS_NOBODY, prog, *map(str, args)], cwd=cwd)


def printed_geometry(stdout: str) -> dict[str, str]:
    """mklockspace's ``  key   value`` lines as a dict."""
    out = {}
    for line in stdout.splitlines()[1:]:
        key, _, value = line.strip().rpartition("  ")
        out[key.strip()] = value.strip()
    return out
