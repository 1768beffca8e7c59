"""Drive the real sanlock (the oracle) and the diskpaxos CLI as separate processes.

Used by the interop tests: every comparison runs both real programs on real
storage and compares what they print or write.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

DISKPAXOS = os.path.join(os.path.dirname(sys.executable), "diskpaxos")
MKLOCKSPACE = os.path.join(os.path.dirname(sys.executable), "mklockspace")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], timeout: float = 120, env: dict[str, str] | None = None) -> Result:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       env=env)
    return Result(p.returncode, p.stdout, p.stderr)


def sanlock(sanlock_bin: str, *args: str, timeout: float = 120) -> Result:
    return run([sanlock_bin, *args], timeout=timeout)


def diskpaxos(*args: str, timeout: float = 120) -> Result:
    return run([DISKPAXOS, *args], timeout=timeout)


def mklockspace(*args: str, timeout: float = 120) -> Result:
    return run([MKLOCKSPACE, *args], timeout=timeout)


def py_sanlock(python: str, code: str, timeout: float = 60, env: dict[str, str] | None = None) -> object:
    """Run ``code`` with python3-sanlock imported as ``sanlock``; it must set ``result``.

    Returns the JSON-decoded result, or {"errno": N} for a SanlockException.
    """
    wrapper = (
        "import json, sanlock\n"
        "try:\n"
        + "".join(f"    {line}\n" for line in code.splitlines())
        + "except sanlock.SanlockException as e:\n"
        "    result = {'errno': e.errno}\n"
        "def conv(o):\n"
        "    return o.decode() if isinstance(o, bytes) else str(o)\n"
        "print(json.dumps(result, default=conv))\n"
    )
    p = subprocess.run([python, "-c", wrapper], capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"python3-sanlock failed: {p.stderr}")
    return json.loads(p.stdout)


def read_area(path: str, offset: int, length: int) -> bytes:
    """Read bytes with O_DIRECT so a block device's page cache cannot mislead us."""
    import mmap
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = mmap.mmap(-1, length)
        n = os.preadv(fd, [buf], offset)
        assert n == length, f"short read {n} of {length}"
        return bytes(buf)
    finally:
        os.close(fd)


def sanlock_client(sanlock_bin: str, daemon: Any, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``sanlock client ...`` talking to this daemon (its SANLOCK_RUN_DIR)."""
    return subprocess.run([sanlock_bin, "client", *args], env=daemon.env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def daemon_log(daemon: Any) -> str:
    """The tail of a sanlock daemon's log, for failure messages."""
    try:
        return daemon.log_path.read_text(errors="replace")[-3000:]
    except OSError as e:
        return f"(no log: {e})"


def parse_host_status(text: str) -> dict[int, dict[str, str]]:
    """``sanlock client host_status -D`` output as {host_id: {timestamp, last_live, owner_name, ...}}."""
    out: dict[int, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        m = re.match(r"^(\d+) timestamp (\d+)$", line)
        if m:
            current = out.setdefault(int(m[1]), {})
            continue
        m = re.match(r"^\s+(\w+)=(.*)$", line)
        if m and current is not None:
            current[m[1]] = m[2]
    return out


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def sanlock_read_leader(sanlock_bin: str, what: str, spec: str) -> dict[str, int]:
    """``sanlock direct read_leader -r|-s SPEC``: the record's numeric fields as the real sanlock decodes it."""
    got = sanlock(sanlock_bin, "direct", "read_leader", what, spec)
    assert "read_leader done 0" in got.stdout, got
    out = {}
    for line in got.stdout.splitlines()[1:]:
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value, 0)
        except ValueError:
            pass  # names
    return out
