"""Several local holders of one shared lease share one on-disk record (as sanlock's daemon does):
it is written once, and cleared only when the last local holder releases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diskpaxos import direct, paxos_lease
from diskpaxos.format import Geometry, PaxosView
from diskpaxos.io_direct import DirectStorage
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
