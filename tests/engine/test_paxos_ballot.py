"""Disk Paxos ballots on a real file: a value accepted for an lver is never erased.

Regression tests for a torture finding: a host whose acquire timed out after its
phase 2 re-balloted the same lver; phase 1 wrote bal 0 over its accepted value,
which could let another host choose a different owner for that lver. Also the
ordering rule behind it: no I/O is issued while an abandoned write may land.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diskpaxos import direct, errors
from diskpaxos.clock import REAL_CLOCK
from diskpaxos.fault_storage import Fault, FaultPlan
from diskpaxos.format import Geometry, PaxosView
from diskpaxos.io_direct import DirectStorage
from diskpaxos.paxos_lease import run_ballot

MiB = 1024 * 1024
G = Geometry(512, MiB)


@pytest.fixture
def lease(tmp_path: Path) -> str:
    path = str(tmp_path / "lease.img")
    with open(path, "wb") as f:
        f.truncate(2 * MiB)
    direct.init_resource(path, 0, "LS", "R")
    return path


def ballot(storage: DirectStorage, host: int, mbal: int, accepted=None):  # type: ignore[no-untyped-def]
    return run_ballot(storage, G, 0, host_id=host, generation=1, num_hosts=2000, next_lver=1, our_mbal=mbal,
                      keep_mode=None, clock=REAL_CLOCK, timeout=1, accepted=accepted)


def dblock_on_disk(storage: DirectStorage, host: int):  # type: ignore[no-untyped-def]
    return PaxosView.parse(np.array(storage.read(0, MiB)), G).dblock(host)


def test_reballot_keeps_our_accepted_value_and_others_adopt_it(lease: str) -> None:
    with DirectStorage(lease, io_timeout=1) as storage:
        first = ballot(storage, 1, 1).dblock  # host 1 reaches phase 2: value (1, 1, t) accepted
        assert (first.bal, first.inp) == (1, 1)
        again = ballot(storage, 1, 4001, accepted=first).dblock  # host 1 tries lver 1 again
        assert (again.inp, again.inp3) == (1, first.inp3)  # the same value, not a new one
        other = ballot(storage, 2, 6002).dblock  # host 2 ballots lver 1 later: must adopt host 1's value
        assert (other.inp, other.inp2, other.inp3) == (1, 1, first.inp3)


def test_without_keeping_it_a_reballot_would_erase_the_accepted_value(lease: str) -> None:
    """What the fix prevents, shown on disk: phase 1 of a plain ballot writes bal 0."""
    with DirectStorage(lease, io_timeout=1) as storage:
        first = ballot(storage, 1, 1).dblock
        plan = FaultPlan().add(Fault.error(op="read"))  # stop right after the phase-1 write
        with DirectStorage(lease, io_timeout=1, syscalls=plan.syscalls()) as failing:
            with pytest.raises(errors.IOFailed):
                ballot(failing, 1, 4001, accepted=first)
        kept = dblock_on_disk(storage, 1)
        assert (kept.mbal, kept.bal, kept.inp) == (4001, 1, 1)  # accepted value still there
        with DirectStorage(lease, io_timeout=1, syscalls=plan.syscalls()) as failing:
            with pytest.raises(errors.IOFailed):
                ballot(failing, 1, 6001)  # no accepted value passed: the old, unsafe write
        erased = dblock_on_disk(storage, 1)
        assert (erased.mbal, erased.bal, erased.inp) == (6001, 0, 0)


@pytest.mark.timeout(30)
def test_late_phase2_write_is_kept_by_the_next_phase1(lease: str) -> None:
    """A phase-2 write that times out may still land: the retry treats it as accepted."""
    hang = Fault.hang(op="write", offset=2 * 512, count=1, skip=1)  # host 1's second dblock write
    plan = FaultPlan().add(hang)
    with DirectStorage(lease, io_timeout=0.3, syscalls=plan.syscalls()) as storage:
        with pytest.raises(errors.IOTimeout) as e:
            ballot(storage, 1, 1)
        accepted = e.value.accepted  # type: ignore[attr-defined]
        assert (accepted.bal, accepted.inp) == (1, 1)
        # nothing else is issued while that write may still land ...
        with pytest.raises(errors.WriteStillInFlight):
            ballot(storage, 1, 2001, accepted=accepted)
        hang.release()
        assert storage.wait_abandoned(10)
        # ... then the retry keeps the value it may have accepted
        again = ballot(storage, 1, 4001, accepted=accepted).dblock
        assert (again.inp, again.inp3) == (1, accepted.inp3)
