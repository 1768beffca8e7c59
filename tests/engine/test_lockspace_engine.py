"""The lockspace engine (renewal thread, expiry monitor, callbacks, leave) on a real
O_DIRECT file.  Most tests run in fake time (``cluster`` fixture: every
lockspace of the test on one SyncClock, advanced deadline by deadline); each
rule also has a real-time test with io_timeout 1.

Timeline of a fake-time join with io_timeout 1 on disk and ours: the record is
written at 1000, the join returns at 1002 (2 x io on disk) and the first
renewal is due at once (1000 + 2 x io), so L, the last good renewal, is 1002.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from diskpaxos import direct
from diskpaxos.fault_storage import Fault, FaultPlan
from diskpaxos.format import LEADER_SIZE, Geometry, HostState, LeaderRecord, lockspace_record
from diskpaxos.lockspace import Lockspace, State

EPS = 2.0 ** -10
G = Geometry(512, 1 << 20)


def bits_on_disk(helpers, path: Path, host_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    raw = helpers.read_sector(path, (host_id - 1) * 512)
    return (np.flatnonzero(np.unpackbits(np.frombuffer(raw[256:512], np.uint8), bitorder="little")) + 1).tolist()


def wait_until(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    """Poll (real time) until predicate() holds; returns when it did."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic()


# --- renewals ------------------------------------------------------------------------


@pytest.mark.parametrize("io", [1, 2])
def test_renewals_every_2io_with_history(cluster, io: int) -> None:
    ls = cluster.join(1, io_timeout=io)  # io 1 on disk: joined at 1002 whatever ours is
    assert ls.state is State.JOINED and ls.valid
    assert cluster.clock.monotonic() == 1002
    cluster.run_until(1030)
    hist = ls.renewal_history()
    first = 1002 if io == 1 else 1004  # due 2 x io after the acquire's write at 1000
    expected = list(range(first, 1031, 2 * io))
    assert [h.local_time for h in hist] == expected
    assert [h.timestamp for h in hist] == expected
    assert all(h.ok and h.error_code == 0 and h.error == "" for h in hist)
    assert all(h.read_ms > 0 and h.write_ms > 0 for h in hist)
    assert "ok" in hist[-1].line() and "read_ms=" in hist[-1].line() and "write_ms=" in hist[-1].line()
    rec = LeaderRecord.from_bytes(ls.storage.read(0, 512)[:LEADER_SIZE])
    assert rec.timestamp == expected[-1] and rec.io_timeout == io
    assert ls.expires_at == expected[-1] + 8 * io
    assert cluster.failures == []


def test_callback_never_fires_while_renewals_succeed(cluster) -> None:
    ls = cluster.join(1)
    seen = set()
    for t in range(1003, 1200, 7):
        cluster.run_until(t)
        seen.add(ls.state)
        assert ls.valid
    cluster.run_until(1200)
    assert seen == {State.JOINED}
    assert cluster.failures == []
    assert len(ls.renewal_history()) == (1200 - 1002) // 2 + 1


@pytest.mark.parametrize("fault, code", [
    (lambda: Fault.error(errno.EIO, op="read"), -errno.EIO),
    (lambda: Fault.error(errno.EIO, op="write"), -errno.EIO),
    (lambda: Fault.error(errno.ENOSPC, op="write"), -errno.EIO),
], ids=["read-EIO", "write-EIO", "write-ENOSPC"])
def test_failing_renewals_joined_failing_failed(cluster, fault, code: int) -> None:  # type: ignore[no-untyped-def]
    plan = FaultPlan()
    ls = cluster.join(1, plan=plan)
    L = ls.lease.last_success
    assert L == 1002
    plan.add(fault())
    cluster.run_until(L + 6 - EPS)
    assert ls.state is State.JOINED and ls.valid
    failed = [h for h in ls.renewal_history() if not h.ok]
    assert [h.local_time for h in failed] == [L + 2, L + 3, L + 4, L + 5]  # retried every second
    assert all(h.error_code == code and h.timestamp == 0 for h in failed)
    assert "error" in failed[0].line()
    cluster.run_until(L + 6)
    assert ls.state is State.FAILING and ls.valid  # warning point: still valid
    cluster.run_until(L + 8 - EPS)
    assert ls.state is State.FAILING and ls.valid
    assert cluster.failures == []  # never before 8 x io
    cluster.run_until(L + 8)
    wait_until(lambda: cluster.failures, 5, "the failure callback")
    assert ls.state is State.FAILED and not ls.valid
    assert [(f.host_id, f.fake_time) for f in cluster.failures] == [(1, L + 8)]
    assert "no successful renewal" in cluster.failures[0].reason
    assert ls.failure_reason == cluster.failures[0].reason
    cluster.run_until(L + 60)
    assert len(cluster.failures) == 1  # exactly once
    assert not ls._renewal_thread.is_alive() and not ls._monitor_thread.is_alive()
    writes = ls.storage.writes
    ls.leave()  # after FAILED: writes nothing
    assert ls.state is State.LEFT and ls.storage.writes == writes
    assert direct.read_leader(str(cluster.path), 0, host_id=1).record.timestamp == L


def test_failing_then_a_good_renewal_returns_to_joined(cluster) -> None:
    plan = FaultPlan()
    ls = cluster.join(1, plan=plan)
    L = ls.lease.last_success
    plan.add(Fault.error(errno.EIO, op="read", count=5))  # renewals at L+2..L+6 fail
    cluster.run_until(L + 6)
    assert ls.state is State.FAILING
    cluster.run_until(L + 7)
    assert ls.state is State.JOINED and ls.lease.last_success == L + 7
    cluster.run_until(L + 7 + 6 - EPS)  # warning time counts from the new last success
    assert ls.state is State.JOINED
    cluster.run_until(L + 100)
    assert ls.state is State.JOINED and cluster.failures == []
    outcomes = [h.ok for h in ls.renewal_history()]
    assert outcomes[:7] == [True, False, False, False, False, False, True]


def test_hung_read_times_out_fails_and_retries_with_a_new_buffer(cluster) -> None:
    plan = FaultPlan()
    ls = cluster.join(1, plan=plan)
    L = ls.lease.last_success
    storage = ls.storage
    old_buf = storage._read_buf
    assert old_buf is not None and storage.abandoned_ios == 0
    plan.add(Fault.hang(op="read", count=1))
    cluster.run_until(L + 2)  # the read hangs; after io_timeout (1 s real) the renewal fails
    last = ls.renewal_history()[-1]
    assert (last.local_time, last.ok, last.error_code) == (L + 2, False, -202)  # SANLK_AIO_TIMEOUT
    assert storage.abandoned_ios == 1 and storage.abandoned_in_flight == 1
    assert storage._read_buf is None  # the kernel may still write into it: dropped
    cluster.run_until(L + 3)  # retried after a second, still hung: a fresh buffer
    last = ls.renewal_history()[-1]
    assert (last.local_time, last.ok) == (L + 3, True)
    new_buf = storage._read_buf
    assert new_buf is not None and new_buf is not old_buf
    plan.release_all()
    assert storage.wait_abandoned(10)
    assert storage.late_completions == 1 and storage.abandoned_in_flight == 0
    cluster.run_until(L + 11)
    assert storage._read_buf is new_buf and storage.abandoned_ios == 1
    assert all(h.ok for h in ls.renewal_history()[-4:])
    assert ls.state is State.JOINED and cluster.failures == []


def test_hung_write_does_not_delay_the_callback(cluster, helpers) -> None:
    """The renewal thread is stuck in a write (its deadline is host_dead, 68 s): the
    monitor still fires at exactly L + 8, and the late write does not revive the lease."""
    plan = FaultPlan()
    ls = cluster.join(1, plan=plan)
    L = ls.lease.last_success
    plan.add(Fault.hang(op="write", count=1))
    cluster.clock.advance(2)  # the renewal at L+2 reads, then blocks in the write
    wait_until(lambda: plan.events, 5, "the hung write")
    cluster.hung = 1
    cluster.run_until(L + 6)
    assert ls.state is State.FAILING
    cluster.run_until(L + 8 - EPS)
    assert cluster.failures == [] and ls.valid
    cluster.run_until(L + 8)
    wait_until(lambda: cluster.failures, 5, "the failure callback")
    assert cluster.failures[0].fake_time == L + 8
    assert cluster.failures[0].thread.startswith("expiry-")
    assert ls.state is State.FAILED and not ls.valid
    plan.release_all()  # the write completes (well within its 68 s deadline) and succeeds
    ls._renewal_thread.join(10)
    cluster.hung = 0
    assert not ls._renewal_thread.is_alive()
    assert ls.state is State.FAILED and not ls.valid and len(cluster.failures) == 1
    assert helpers.read_record(cluster.path, 1).timestamp == L + 2  # the late write landed
    writes = ls.storage.writes
    ls.leave()
    assert ls.storage.writes == writes
    assert helpers.read_record(cluster.path, 1).timestamp == L + 2


# --- corruption and theft: fail at once ---------------------------------------------


def _expect_immediate_failure(cluster, helpers, ls, at: float, code: int) -> None:  # type: ignore[no-untyped-def]
    cluster.run_until(at - EPS)
    assert cluster.failures == []
    before = helpers.read_sector(cluster.path, 0)
    cluster.run_until(at)
    wait_until(lambda: cluster.failures, 5, "the failure callback")
    assert [(f.fake_time, f.thread.startswith("renew-")) for f in cluster.failures] == [(at, True)]
    assert ls.state is State.FAILED and not ls.valid
    assert ls.renewal_history()[-1].error_code == code
    assert ls.failure_reason is not None and "damaged or taken" in ls.failure_reason
    cluster.run_until(at + 20)
    assert len(cluster.failures) == 1
    writes = ls.storage.writes
    ls.leave()  # writes nothing over what is there
    assert ls.storage.writes == writes
    assert helpers.read_sector(cluster.path, 0) == before


def test_torn_write_detected_at_next_renewal(cluster, helpers) -> None:
    plan = FaultPlan()
    ls = cluster.join(1, plan=plan)
    L = ls.lease.last_success
    # new timestamp reaches the disk, the old checksum stays: reported as a success
    plan.add(Fault.torn_write(keep=160, offset=0, count=1))
    cluster.run_until(L + 2)
    assert ls.renewal_history()[-1].ok and plan.events[-1].kind == "torn_write"
    assert not helpers.read_record(cluster.path, 1).checksum_ok
    _expect_immediate_failure(cluster, helpers, ls, L + 4, -229)


def test_corrupted_read_fails_at_once(cluster) -> None:
    plan = FaultPlan()
    ls = cluster.join(1, plan=plan)
    L = ls.lease.last_success
    plan.add(Fault.corrupt(positions=(160,), op="read", offset=(0, G.align_size), count=1))
    cluster.run_until(L + 2)
    wait_until(lambda: cluster.failures, 5, "the failure callback")
    assert cluster.failures[0].fake_time == L + 2
    assert ls.renewal_history()[-1].error_code == -229
    assert ls.state is State.FAILED and not ls.valid


@pytest.mark.parametrize("what, code", [
    ("garbage", -223),
    ("thief", -260),       # SANLK_RENEW_OWNER
    ("changed", -261),     # SANLK_RENEW_DIFF
    ("bad-checksum", -229),
])
def test_our_sector_rewritten_from_outside_fails_at_once(cluster, helpers, what: str, code: int) -> None:
    ls = cluster.join(1)
    L = ls.lease.last_success
    cluster.run_until(L + 1)
    rec = ls.lease.record
    data = {
        "garbage": np.random.default_rng(7).integers(0, 256, 512, dtype=np.uint8).tobytes(),
        "thief": helpers.record_sector(rec.replace(resource_name="thief", owner_generation=2,
                                                   timestamp=77).with_checksum()),
        "changed": helpers.record_sector(rec.replace(lver=5).with_checksum()),
        "bad-checksum": helpers.record_sector(rec.replace(checksum=rec.checksum ^ 4)),
    }[what]
    helpers.write_sector(cluster.path, 0, data)
    _expect_immediate_failure(cluster, helpers, ls, L + 2, code)
    assert helpers.read_sector(cluster.path, 0) == data


# --- leave and states ------------------------------------------------------------------


def test_leave_after_clean_run_releases(cluster) -> None:
    ls = cluster.join(1, host_name="clean.example")
    cluster.run_until(1010)
    gen = ls.generation
    assert gen == 1
    ls.leave()
    assert ls.state is State.LEFT and ls.storage.closed and not ls.valid
    got = direct.read_leader(str(cluster.path), 0, host_id=1)
    assert got.ok
    rec = got.record
    assert rec.timestamp == 0
    assert (rec.owner_id, rec.owner_generation, rec.resource_name, rec.io_timeout) == (1, 1, "clean.example", 1)
    ls.leave()  # idempotent
    # rejoin under the same name: generation 2 after the short delay only (it is free)
    again = cluster.join(1, host_name="clean.example")
    assert again.generation == 2 and again.valid


def test_illegal_transitions_raise(cluster) -> None:
    ls = cluster.join(1)
    with pytest.raises(RuntimeError, match="illegal transition JOINED -> JOINING"):
        ls._set_state(State.JOINING)
    with pytest.raises(RuntimeError, match="illegal transition JOINED -> LEFT"):
        ls._set_state(State.LEFT)
    assert ls.state is State.JOINED
    ls._fail("test")
    ls._fail("again")  # a second failure (e.g. monitor and renewal thread at once) fires nothing
    assert ls.state is State.FAILED and ls.failure_reason == "test"
    for bad in (State.JOINED, State.FAILING, State.JOINING):
        with pytest.raises(RuntimeError, match=f"illegal transition FAILED -> {bad.name}"):
            ls._set_state(bad)
    ls.leave()
    assert ls.state is State.LEFT
    for bad in State:
        if bad is not State.LEFT:
            with pytest.raises(RuntimeError, match="illegal transition LEFT"):
                ls._set_state(bad)
    assert len(cluster.failures) == 1  # _fail fired once; leave did not


def test_watchdog_fire_timeout_lengthens_the_held_wait(cluster, helpers) -> None:
    """A cluster configured with W = 90: taking a host_id held by another name waits
    host_dead = 8 x 1 + 90 = 98 s, and the renewal write deadline is host_dead too."""
    other = lockspace_record(G, "LS", 1).replace(owner_id=1, owner_generation=3, timestamp=55,
                                                 resource_name="other").with_checksum()
    helpers.write_sector(cluster.path, 0, helpers.record_sector(other))
    fut = helpers.background(Lockspace.join, "LS", 1, str(cluster.path), 0, 1, "me", clock=cluster.clock,
                             watchdog_fire_timeout=90)
    cluster.clock.settle(1)
    cluster.clock.run_until(1000 + 98 - EPS, 1, stop=fut.done)
    assert not fut.done(), f"joined at {cluster.clock.monotonic()}, before host_dead 98 s"
    assert helpers.read_record(cluster.path, 1) == other
    cluster.clock.run_until(1000 + 98, 1)
    cluster.clock.run_until(1000 + 100, 1, stop=fut.done)
    ls = fut.result(timeout=10)
    cluster.spaces.append(ls)
    assert ls.generation == 4
    assert ls.timeouts.host_dead == 98
    assert ls.lease.timeouts.renewal_write_timeout == 98


def test_host_table_fed_by_every_good_read_even_when_our_write_fails(cluster) -> None:
    """Spec 5.4: hosts are judged after every successful renewal *read*."""
    cluster.join(1)
    cluster.run_for(1)
    plan = FaultPlan()
    b = cluster.join(2, plan=plan)  # renews at odd seconds from 1005
    plan.add(Fault.error(errno.EIO, op="write"))
    cluster.run_until(1011)  # B: ok at 1005, then fails at 1007, retries 1008..1011
    assert [h.ok for h in b.renewal_history()] == [True, False, False, False, False, False]
    assert b.host_table.last_check[0] == 1011
    assert b.host_table.timestamp[0] == 1010  # A's latest renewal, read by a failing renewal
    assert b.host_state(1) is HostState.LIVE and b.state is State.FAILING


# --- host signals ------------------------------------------------------------------------


def _two_staggered(cluster):  # type: ignore[no-untyped-def]
    """A (host 1) renews at even seconds from 1002, B (host 2) at odd ones from 1005."""
    a = cluster.join(1)
    cluster.run_for(1)
    b = cluster.join(2)
    assert cluster.clock.monotonic() == 1005
    return a, b


def test_signal_delivered_once_and_bit_lives_set_bitmap_seconds(cluster, helpers) -> None:
    a, b = _two_staggered(cluster)
    assert bits_on_disk(helpers, cluster.path, 1) == []
    a.signal_host(2)  # at 1005
    a.signal_host(1)  # our own id: never set
    on_disk = {}
    for t in (1006, 1008, 1010, 1012, 1014):  # A's renewals
        cluster.run_until(t)
        on_disk[t] = bits_on_disk(helpers, cluster.path, 1)
    # carried while now - set <= 6 x io (6 s): 1006, 1008, 1010; gone at 1012
    assert on_disk == {1006: [2], 1008: [2], 1010: [2], 1012: [], 1014: []}
    cluster.run_until(1040)
    assert cluster.signals == [(2, 1, 1007)]  # B's first renewal after A's 1006
    assert bits_on_disk(helpers, cluster.path, 2) == []


def test_signal_debounced_for_set_bitmap_seconds(cluster) -> None:
    a, b = _two_staggered(cluster)
    a.signal_host(2)  # bits in A's renewals 1006..1010
    cluster.run_until(1007)
    assert cluster.signals == [(2, 1, 1007)]
    a.signal_host(2)  # again at 1007: bits in A's renewals 1008..1012
    cluster.run_until(1013 - EPS)
    assert cluster.signals == [(2, 1, 1007)]  # B sees the bit at 1009 and 1011: too soon
    cluster.run_until(1013)
    assert cluster.signals == [(2, 1, 1007), (2, 1, 1013)]  # 6 s (set_bitmap) after the first
    cluster.run_until(1040)
    assert len(cluster.signals) == 2


def test_signal_not_delivered_to_other_hosts_or_sender(cluster) -> None:
    a, b = _two_staggered(cluster)
    b.signal_host(3)  # nobody holds host_id 3
    cluster.run_until(1030)
    assert cluster.signals == []


# --- real time -----------------------------------------------------------------------------


@pytest.mark.timeout(40)
def test_real_time_join_renew_leave(lockspace_file: Path) -> None:
    start = time.monotonic()
    ls = Lockspace.join("LS", 1, str(lockspace_file), 0, io_timeout=1, host_name="rt")
    try:
        assert 2.0 <= time.monotonic() - start < 3.0  # 2 x io on disk
        wait_until(lambda: len(ls.renewal_history()) >= 2, 6, "two renewals")
        hist = ls.renewal_history()[:2]
        assert all(h.ok and h.read_ms > 0 and h.write_ms > 0 for h in hist)
        # the first is due at once (2 s after the acquire's write); the next 2 s after the
        # whole second the first wrote: between 1 and 2 s later (+ scheduling)
        assert hist[0].local_time - start < 3.0
        assert 0.9 <= hist[1].local_time - hist[0].local_time <= 2.6
        assert hist[1].timestamp - hist[0].timestamp == 2
        assert ls.state is State.JOINED and ls.valid
        assert ls.expires_at == ls.lease.last_success + 8
    finally:
        ls.leave()
    rec = direct.read_leader(str(lockspace_file), 0, host_id=1).record
    assert (rec.timestamp, rec.owner_generation, rec.resource_name) == (0, 1, "rt")


@pytest.mark.timeout(60)
def test_real_time_hung_write_fires_callback_on_time(lockspace_file: Path, helpers) -> None:
    """io_timeout 1: A's renewal write hangs; the callback fires within 8 s + 1 s of A's
    last good renewal.  Meanwhile B (a live engine) judges A and a crashed host 5."""
    crashed = lockspace_record(G, "LS", 1).replace(owner_id=5, owner_generation=1, timestamp=31337,
                                                   resource_name="crashed").with_checksum()
    helpers.write_sector(lockspace_file, 4 * 512, helpers.record_sector(crashed))
    plan = FaultPlan()
    fired: list[tuple[float, str]] = []
    got = threading.Event()

    def on_failure(ls: Lockspace, reason: str) -> None:
        fired.append((time.monotonic(), reason))
        got.set()

    fb = helpers.background(Lockspace.join, "LS", 2, str(lockspace_file), 0, 1, "rt-b")
    a = Lockspace.join("LS", 1, str(lockspace_file), 0, io_timeout=1, host_name="rt-a",
                       on_renewal_failure=on_failure, syscalls=plan.syscalls())
    b = fb.result(timeout=10)
    try:
        wait_until(lambda: any(h.ok for h in a.renewal_history()), 5, "A's first renewal")
        plan.add(Fault.hang(op="write", offset=0))
        assert got.wait(12), "the failure callback did not fire"
        last_ok = [h for h in a.renewal_history() if h.ok][-1]
        stamp = a.lease.last_success  # the hung renewal has not returned: still the last good one
        assert stamp == last_ok.timestamp
        fired_at = fired[0][0]
        assert fired_at >= stamp + 8  # never before id_renewal_fail after the written second
        assert fired_at - last_ok.local_time <= 9.0
        assert a.state is State.FAILED and not a.valid
        # B's view.  Host 5 never changed: UNKNOWN, then FAIL 8 s after B's first look.
        # A: FAIL 8 s after B last saw it change (or after B's first look, if B never did).
        first_look = float(b.host_table.first_check[4])
        failed5 = wait_until(lambda: b.host_state(5) is HostState.FAIL, 12, "host 5 FAIL")
        assert first_look + 8 <= failed5 <= first_look + 8.5
        base = float(b.host_table.last_live[0] if b.host_table.seen_change[0] else b.host_table.first_check[0])
        failed1 = wait_until(lambda: b.host_state(1) is HostState.FAIL, 12, "host 1 FAIL")
        assert base + 8 <= failed1 <= base + 8.5
        assert b.host_state(1) is HostState.FAIL and b.host_state(5) is HostState.FAIL  # DEAD only after 68 s
    finally:
        plan.release_all()
        a.leave()
        b.leave()
    assert len(fired) == 1
    assert helpers.read_record(lockspace_file, 1).timestamp != 0  # FAILED: A released nothing
    assert helpers.read_record(lockspace_file, 2).timestamp == 0


@pytest.mark.timeout(40)
def test_real_time_garbage_in_our_sector_fails_at_next_renewal(lockspace_file: Path, helpers) -> None:
    fired: list[float] = []
    ls = Lockspace.join("LS", 1, str(lockspace_file), 0, io_timeout=1, host_name="rt",
                       on_renewal_failure=lambda ls, reason: fired.append(time.monotonic()))
    try:
        wait_until(lambda: len(ls.renewal_history()) >= 1, 5, "a renewal")
        helpers.write_sector(lockspace_file, 0, b"\xa5" * 512)
        written = time.monotonic()
        wait_until(lambda: fired, 5, "the failure callback")
        assert fired[0] - written <= 2.5  # the next renewal, not id_renewal_fail
        assert ls.renewal_history()[-1].error_code == -223
        assert ls.state is State.FAILED and not ls.valid
    finally:
        ls.leave()
    assert helpers.read_sector(lockspace_file, 0) == b"\xa5" * 512


@pytest.mark.timeout(60)
def test_real_time_two_hosts_liveness_and_signal(lockspace_file: Path, helpers) -> None:
    """io_timeout 1: B sees A UNKNOWN at its first look, LIVE once A's timestamp changed;
    A's signal reaches B once while A's bit lives; after A leaves B sees it FREE.

    Renewals fall on whole seconds (due 2 s after the second written), so B joins one
    second out of phase with A and A signals just after one of its renewals: B reads each
    of A's records a second after it was written, never racing A's write.  (In phase, a
    bit set just before a renewal can be read at t and t + 6 and be delivered twice:
    sanlock's lifetime <= set_bitmap and debounce >= set_bitmap are both inclusive.)
    """
    signals: list[tuple[int, float]] = []
    now = time.monotonic()
    time.sleep((1.1 - now % 1) % 1)  # A writes at k + 0.1 (stamp k), B at k + 1.3 (stamp k + 1)
    fa = helpers.background(Lockspace.join, "LS", 1, str(lockspace_file), 0, 1, "rt-a")
    time.sleep(1.2)
    b = None
    try:
        b = Lockspace.join("LS", 2, str(lockspace_file), 0, io_timeout=1, host_name="rt-b",
                           on_host_signal=lambda h: signals.append((h, time.monotonic())))
        a = fa.result(timeout=5)
        wait_until(lambda: a.renewal_history() and b.renewal_history(), 5, "first renewals")
        phase = a.renewal_history()[0].timestamp  # A renews at phase + 2k
        assert (b.renewal_history()[0].timestamp - phase) % 2 == 1
        assert b.host_table.checked[0] and not b.host_table.seen_change[0]
        assert b.host_state(1) is HostState.UNKNOWN  # first look: no change seen yet
        assert b.host_state(2) is HostState.LIVE  # us
        n = len(a.renewal_history())
        wait_until(lambda: len(a.renewal_history()) > n, 5, "an A renewal")
        a.signal_host(2)
        sent = time.monotonic()
        wait_until(lambda: b.host_state(1) is HostState.LIVE, 5, "A LIVE in B's table")
        assert {h.host_id: h.name for h in b.hosts()} == {1: "rt-a", 2: "rt-b"}
        wait_until(lambda: signals, 5, "the signal")
        assert signals[0][0] == 1 and signals[0][1] - sent <= 3.5
        # the bit stays in A's renewals for 6 s; B must not deliver it again
        wait_until(lambda: time.monotonic() - sent > 7.2 and bits_on_disk(helpers, lockspace_file, 1) == [],
                   12, "A's bit to expire")
        assert len(signals) == 1
        assert a.host_state(2) is HostState.LIVE
        a.leave()
        wait_until(lambda: b.host_state(1) is HostState.FREE, 4, "A FREE in B's table")
    finally:
        fa.result(timeout=10).leave()
        if b is not None:
            b.leave()


# --- block devices ----------------------------------------------------------------------


@pytest.mark.loop
@pytest.mark.parametrize("device", ["loop512", "loop4k"])
def test_engine_on_loop_device(request, clock, helpers, device: str) -> None:
    """The same engine on a 512 B and a 4 KiB sector block device (fake time)."""
    path = Path(request.getfixturevalue(device))
    geometry = direct.init_lockspace(str(path), 0, "LS", io_timeout=1).geometry
    ss = geometry.sector_size
    assert ss == (512 if device == "loop512" else 4096)
    cluster = helpers.Cluster(path, clock)
    try:
        a = cluster.join(3)
        cluster.run_for(1)
        b = cluster.join(7)
        a.signal_host(7)
        cluster.run_until(1011)
        assert cluster.signals == [(7, 3, 1007)]
        sector = helpers.read_sector(path, 2 * ss, ss)
        rec = LeaderRecord.from_bytes(sector[:LEADER_SIZE])
        assert (rec.owner_id, rec.timestamp, rec.sector_size) == (3, 1010, ss)
        assert sector[256:] == b"\x40" + bytes(ss - 257)  # host 7's bit, 5 s after the signal
        assert sector[LEADER_SIZE:256] == bytes(56)
        assert b.host_state(3) is HostState.LIVE and a.host_state(7) is HostState.LIVE
        assert [h.ok for h in a.renewal_history()] == [True] * 5
        assert a.storage.sector_size == ss
        cluster.run_until(1012)
        assert helpers.read_sector(path, 2 * ss, ss)[LEADER_SIZE:] == bytes(ss - LEADER_SIZE)  # expired
        a.leave()
        assert helpers.read_record(path, 3, ss).timestamp == 0
    finally:
        cluster.close()
