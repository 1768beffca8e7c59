"""Registration carries an owner name (sanlock's owner_name; the VM front end passes the VM's name)
and front-end info, shown by status; a second registration updates them; oversize values are refused
with sanlock-style codes and change nothing."""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Callable

import pytest
from daemon_hosts import DiskpaxosDaemon

from diskpaxos.client import DaemonError


def test_name_and_info(dp_daemon: Callable[..., DiskpaxosDaemon]) -> None:
    daemon = dp_daemon("host1")
    proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
    try:
        with daemon.api() as c:
            c.register(pid=proc.pid, name="vm-web", info='{"kind":"x"}')
            [client] = c.status()["clients"]
            assert (client["pid"], client["name"], client["info"]) == (proc.pid, "vm-web", '{"kind":"x"}')
            c.register(pid=proc.pid, name="vm-web2")  # info kept, name updated
            [client] = c.status()["clients"]
            assert (client["name"], client["info"]) == ("vm-web2", '{"kind":"x"}')
            for kwargs in ({"name": "n" * 49}, {"info": "i" * (16 * 1024 + 1)}):
                with pytest.raises(DaemonError) as e:
                    c.register(pid=proc.pid, **kwargs)
                assert e.value.code == -errno.EINVAL and "longer than" in str(e.value)
            [client] = c.status()["clients"]
            assert (client["name"], client["info"]) == ("vm-web2", '{"kind":"x"}')
        got = daemon.cli("status")
        assert f"p {proc.pid} vm-web2\n" in got.stdout, got
    finally:
        proc.kill()
        proc.wait()
