"""Fencing runs the client's killpath first (like libvirt's lock-failure helper), before
SIGTERM, and the holder is dead before its lease expires locally."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_hosts import DISKPAXOS, DiskpaxosDaemon, Holder, T, make_area, wait_for


@pytest.mark.timeout(60)
def test_fencing_runs_killpath_before_sigterm(dp_daemon: Callable[..., DiskpaxosDaemon], tmp_path: Path) -> None:
    area = make_area(tmp_path / "leases.img")
    trigger = tmp_path / "pull-the-plug"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"trigger": str(trigger), "seed": 0,
                                "faults": [{"kind": "error", "op": "read"}, {"kind": "error", "op": "write"}]}))
    marker = tmp_path / "killpath-ran"
    killpath = tmp_path / "killpath.sh"
    # the daemon appends the client's pid; the helper records it and kills the client itself
    killpath.write_text(f'#!/bin/sh\necho "$1" > {marker}\nkill -KILL "$1"\n')
    killpath.chmod(0o755)
    host = dp_daemon("kp", fault_plan=str(plan))
    host.join(area, 1, "kpA")
    holder = Holder([DISKPAXOS, "client", "command", "--run-dir", str(host.run_dir), "-k", str(killpath),
                     "-r", area.res(), "-c", "sleep", "600"], None, tmp_path / "holder.out")
    host.holders.append(holder)

    def held() -> bool:
        with host.api() as c:
            return any(cl["pid"] == holder.pid and cl["leases"] for cl in c.status()["clients"])

    wait_for(held, 30, "the holder to get its lease")
    with host.api() as c:
        last_ok = max(r["local_time"] for r in c.renewal(area.name) if r["ok"])
    trigger.touch()
    assert holder.wait(T.id_renewal_fail + 5), "the holder was never fenced"
    assert marker.read_text().strip() == str(holder.pid)  # the killpath ran, for this client
    assert holder.returncode == -9  # killed by its killpath, before any SIGTERM
    died_after = holder.exited_at - last_ok  # type: ignore[operator]
    assert T.id_renewal_warn - 1 <= died_after < T.id_renewal_fail, died_after  # from the warning point


@pytest.mark.timeout(60)
def test_sd_notify_ready_when_serving(tmp_path: Path) -> None:
    """Under systemd (Type=notify) the daemon says READY=1 once its socket serves."""
    import os
    import signal
    import socket
    import subprocess

    from diskpaxos.client import Client

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    run_dir = tmp_path / "run"
    config = tmp_path / "c.toml"
    config.write_text('log_level = "warning"\n')
    proc = subprocess.Popen([DISKPAXOS, "daemon", "--run-dir", str(run_dir), "--config", str(config)],
                            env=dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify")),
                            stdin=subprocess.DEVNULL)
    try:
        assert notify.recv(64) == b"READY=1"
        with Client(str(run_dir), timeout=5) as c:  # ready means serving
            assert c.status()["lockspaces"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        notify.close()
