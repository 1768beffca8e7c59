"""The watchdog helper drives a watchdog device when configured: a keepalive on every
heartbeat, and the magic close that disarms it only on a clean exit.

The device here is a regular file standing in for /dev/watchdog (a real one would reset
this machine): what the helper writes to it is exactly what a watchdog driver receives.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest


def written(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


@pytest.mark.timeout(60)
def test_device_is_petted_while_beating_and_disarmed_on_clean_exit(tmp_path: Path, dp_daemon: Any) -> None:
    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    daemon = dp_daemon("wd", watchdog_device=str(device))
    deadline = time.monotonic() + 10
    while written(device).count(b"\0") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert written(device).count(b"\0") >= 3  # one keepalive per heartbeat (1 s)
    assert b"V" not in written(device)
    daemon.stop()
    assert written(device).endswith(b"V")  # nothing protected, clean exit: disarmed


@pytest.mark.timeout(60)
def test_device_stays_armed_when_the_daemon_dies_holding(tmp_path: Path, dp_daemon: Any) -> None:
    """A daemon killed while a client holds a lease: the helper kills the client and leaves the
    device armed (no magic close), so the hardware would reset the host."""
    import os
    import subprocess
    import sys

    from diskpaxos import direct
    from diskpaxos.client import Client, DaemonError

    device = tmp_path / "watchdog"
    device.write_bytes(b"")
    leases = tmp_path / "leases.img"
    with open(leases, "wb") as f:
        f.truncate(4 << 20)
    direct.init_lockspace(str(leases), 0, "WD", io_timeout=1)
    direct.init_resource(str(leases), 1 << 20, "WD", "R")
    daemon = dp_daemon("wd2", watchdog_device=str(device))
    with Client(str(daemon.run_dir)) as c:
        c.add_lockspace(f"WD:1:{leases}:0", io_timeout=1)
    holder = subprocess.Popen([sys.executable, "-m", "diskpaxos.cli", "client", "command", "--run-dir",
                               str(daemon.run_dir), "-r", f"WD:R:{leases}:1048576", "-c", "sleep", "600"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with Client(str(daemon.run_dir)) as c:
                    if c.inquire(holder.pid):
                        break
            except DaemonError:
                pass  # not registered yet
            time.sleep(0.1)
        else:
            pytest.fail("the holder never got its lease")
        daemon.kill()
        assert holder.wait(5) == -9  # the helper killed it at once
        assert daemon.helper_exited(5)
        assert not written(device).endswith(b"V")  # armed: a real device would fire
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, 9)
            holder.wait()
