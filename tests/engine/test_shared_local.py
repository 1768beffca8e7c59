"""Several local holders of one shared lease share one on-disk record (as sanlock's daemon does):
it is written once, and cleared only when the last local holder releases."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from diskpaxos import direct, paxos_lease
from diskpaxos.format import Geometry, PaxosView
from diskpaxos.io_direct import DirectStorage, Syscalls
from diskpaxos.lockspace import Lockspace

MiB = 1024 * 1024


def shared_hosts(path: str) -> list[tuple[int, int]]:
    with DirectStorage(path, io_timeout=1, readonly=True) as s:
        return PaxosView.parse(np.array(s.read(MiB, MiB)), Geometry(512, MiB)).shared_holders()


@pytest.mark.timeout(60)
def test_second_local_shared_holder_shares_the_record(tmp_path: Path) -> None:
    path = str(tmp_path / "leases.img")
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    direct.init_lockspace(path, 0, "LS", io_timeout=1)
    direct.init_resource(path, MiB, "LS", "R")
    with Lockspace.join("LS", 1, path, 0, io_timeout=1, host_name="h1") as ls:
        a = ls.acquire("R", path, MiB, shared=True)
        b = ls.acquire("R", path, MiB, shared=True)  # a second process on this host: no -17
        assert a.valid and b.valid and shared_hosts(path) == [(1, ls.generation)]
        with pytest.raises(paxos_lease.SharedHoldersLive):
            b.convert(shared=False)  # exclusive while another local process shares it: refused
        a.release()
        assert shared_hosts(path) == [(1, ls.generation)]  # b still holds it
        assert b.valid and not a.valid
        b.release()
        assert shared_hosts(path) == []
        c = ls.acquire("R", path, MiB, shared=True)  # and it can be taken again
        assert shared_hosts(path) == [(1, ls.generation)]
    assert shared_hosts(path) == []  # leaving released it
    assert not c.valid


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shared", [False, True])
def test_release_racing_leave_releases_once_and_frees_the_host_id(tmp_path: Path, shared: bool,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A daemon stopping while its client exits: the client's release and leave() race on one lease.
    One of them writes the release; neither fails, and leave() still frees the host id (it used to
    stop at the second release's 'leader is no longer ours' and keep the host id)."""
    path = str(tmp_path / "leases.img")
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    direct.init_lockspace(path, 0, "LS", io_timeout=1)
    direct.init_resource(path, MiB, "LS", "R")
    writes: list[int] = []

    class SlowCountedWrites(Syscalls):
        """Every write to the resource area is counted and takes 0.2 s, so a racing release finds
        the first one mid-write."""

        def pwritev(self, fd: int, buffers: Any, offset: int) -> int:
            if offset >= MiB:
                writes.append(offset)
                time.sleep(0.2)
            return super().pwritev(fd, buffers, offset)

    ls = Lockspace.join("LS", 1, path, 0, io_timeout=1, host_name="h1")

    def race(second: Callable[[], None]) -> None:
        lease = ls.acquire("R", path, MiB, shared=shared, syscalls=SlowCountedWrites())
        writes.clear()
        lease.release()
        single = sorted(writes)  # the writes of one release, alone
        lease = ls.acquire("R", path, MiB, shared=shared, syscalls=SlowCountedWrites())
        writes.clear()
        start = threading.Barrier(2)
        t = threading.Thread(target=lambda: (start.wait(), lease.release()))  # type: ignore[func-returns-value]
        t.start()
        start.wait()
        time.sleep(0.05)  # the thread's release is writing now
        second()
        t.join(10)
        assert not lease.valid
        assert sorted(writes) == single  # one release written, not two

    race(lambda: [lease.release() for lease in ls.leases()])
    race(ls.leave)
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert direct.read_leader(path, 0, host_id=1).record.timestamp == 0  # host id released
    assert direct.read_leader(path, MiB, kind="resource").record.timestamp == 0 and shared_hosts(path) == []
