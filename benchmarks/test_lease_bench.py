"""Hot paths of the lease algorithms on a real file: one renewal, one ballot, acquire + release."""

from __future__ import annotations

import logging

import pytest

from diskpaxos import delta_lease, direct, paxos_lease
from diskpaxos.clock import REAL_CLOCK
from diskpaxos.format import Geometry
from diskpaxos.io_direct import DirectStorage
from diskpaxos.lockspace import Lockspace

MiB = 1024 * 1024


@pytest.fixture
def leases(tmp_path):
    path = str(tmp_path / "leases.img")
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    direct.init_lockspace(path, 0, "BENCH", io_timeout=1)
    direct.init_resource(path, MiB, "BENCH", "R")
    logging.disable(logging.WARNING)
    yield path
    logging.disable(logging.NOTSET)


@pytest.mark.benchmark(group="renewal")
def test_renewal(benchmark, leases):
    with DirectStorage(leases, io_timeout=1) as storage:
        lease = delta_lease.acquire(storage, Geometry(512, MiB), 0, "BENCH", 1, "bench", 1)
        result = benchmark(delta_lease.renew, storage, lease)
        assert result.ok


@pytest.mark.benchmark(group="ballot")
def test_ballot(benchmark, leases):
    g = Geometry(512, MiB)
    with DirectStorage(leases, io_timeout=1) as storage:
        mbal = iter(range(1, 10**9, 2000))
        result = benchmark(lambda: paxos_lease.run_ballot(
            storage, g, MiB, host_id=1, generation=1, num_hosts=2000, next_lver=1, our_mbal=next(mbal),
            keep_mode=None, clock=REAL_CLOCK, timeout=1))
        assert result.dblock.inp == 1


@pytest.mark.benchmark(group="acquire")
def test_acquire_release(benchmark, leases):
    with Lockspace.join("BENCH", 1, leases, 0, io_timeout=1, host_name="bench") as ls:
        benchmark(lambda: ls.acquire("R", leases, MiB).release())
