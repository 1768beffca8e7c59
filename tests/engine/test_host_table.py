"""Host liveness (spec 5.4): ``judge`` thresholds and the ``HostTable`` fed real areas.

Thresholds are written as numbers (8*io and 8*io+60 for io 1, 2, 10: 8/68,
16/76, 80/140), not derived from ``timeouts``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from diskpaxos.format import HOSTID_BITMAP_OFFSET, LEADER_SIZE, Geometry, HostState, LockspaceView, lockspace_record
from diskpaxos.host_table import HostTable, judge
from diskpaxos.io_direct import DirectStorage

EPS = 2.0 ** -10  # exact in binary floating point next to 1000-ish values
T0 = 1000.0
G512 = Geometry(512, 1 << 20)

# io -> (fail after, dead after), from the spec's table (id_renewal_fail, host_dead)
THRESHOLDS = {1: (8, 68), 2: (16, 76), 10: (80, 140)}


# --- judge ------------------------------------------------------------------------


@pytest.mark.parametrize("io", sorted(THRESHOLDS))
@pytest.mark.parametrize("age, seen, expected", [
    (0, True, HostState.LIVE),
    ("fail", True, HostState.LIVE),          # age == 8*io: still LIVE
    ("fail+", True, HostState.FAIL),         # 8*io + epsilon
    ("dead", True, HostState.FAIL),          # age == 8*io + 60: still FAIL
    ("dead+", True, HostState.DEAD),         # beyond
    (0, False, HostState.UNKNOWN),
    ("fail", False, HostState.UNKNOWN),
    ("fail+", False, HostState.FAIL),
    ("dead", False, HostState.FAIL),
    ("dead+", False, HostState.DEAD),
])
def test_judge_thresholds(io: int, age: object, seen: bool, expected: HostState) -> None:
    fail, dead = THRESHOLDS[io]
    a = {"fail": fail, "fail+": fail + EPS, "dead": dead, "dead+": dead + EPS}.get(age, age)  # type: ignore[arg-type]
    last_live = T0 + 5 if seen else T0  # the base: last_live when seen changing, else first_check
    state = judge(now=last_live + a, timestamp=77, io_timeout=io, first_check=T0, last_live=last_live,  # type: ignore[operator]
                  seen_change=seen)
    assert state is expected


def test_judge_free_and_us() -> None:
    assert judge(now=T0, timestamp=0, io_timeout=1, first_check=T0, last_live=T0, seen_change=True) is HostState.FREE
    # free wins even for us
    assert judge(now=T0, timestamp=0, io_timeout=1, first_check=T0, last_live=T0, seen_change=True,
                 is_us=True) is HostState.FREE
    # us: LIVE however long ago we looked
    assert judge(now=T0 + 10_000, timestamp=5, io_timeout=1, first_check=T0, last_live=T0, seen_change=False,
                 is_us=True) is HostState.LIVE


def test_judge_never_seen_changing_counts_from_first_check_not_last_live() -> None:
    # last_live is ignored when no change was seen (it is the first look)
    s = judge(now=T0 + 9, timestamp=5, io_timeout=1, first_check=T0, last_live=T0 + 8, seen_change=False)
    assert s is HostState.FAIL


@pytest.mark.parametrize("w, fail_state_at, dead_at", [(30, 8 + 30, 8 + 30 + EPS), (0, 8, 8 + EPS)])
def test_judge_watchdog_fire_timeout(w: int, fail_state_at: float, dead_at: float) -> None:
    kw = dict(timestamp=5, io_timeout=1, first_check=T0, last_live=T0, seen_change=True, watchdog_fire_timeout=w)
    assert judge(now=T0 + fail_state_at, **kw) is (HostState.FAIL if w else HostState.LIVE)  # type: ignore[arg-type]
    assert judge(now=T0 + dead_at, **kw) is HostState.DEAD  # type: ignore[arg-type]


# --- areas ------------------------------------------------------------------------


class Area:
    """A lockspace area in memory; hosts' records are rewritten as a test needs."""

    def __init__(self, geometry: Geometry = G512, io_timeout: int = 1) -> None:
        self.g = geometry
        self.buf = bytearray(geometry.align_size)
        self.free = lockspace_record(geometry, "LS", io_timeout)
        for h in range(1, geometry.max_hosts + 1):
            self.put(h, self.free)

    def put(self, host_id: int, rec, bitmap: bytes = b"") -> None:  # type: ignore[no-untyped-def]
        off = (host_id - 1) * self.g.sector_size
        self.buf[off:off + LEADER_SIZE] = rec.to_bytes()
        self.buf[off + HOSTID_BITMAP_OFFSET: off + HOSTID_BITMAP_OFFSET + 256] = bitmap.ljust(256, b"\0")

    def hold(self, host_id: int, ts: int, gen: int = 1, io: int = 1, name: str | None = None) -> None:
        self.put(host_id, self.free.replace(owner_id=host_id, owner_generation=gen, timestamp=ts, io_timeout=io,
                                            resource_name=name or f"host-{host_id}").with_checksum())

    def view(self) -> LockspaceView:
        return LockspaceView.parse(np.frombuffer(bytes(self.buf), np.uint8), self.g)


def test_first_look_unknown_then_live_when_seen_changing() -> None:
    a = Area()
    a.hold(2, ts=500)
    t = HostTable(G512.max_hosts, our_io_timeout=1, our_host_id=1)
    assert t.state(2, T0) is HostState.UNKNOWN  # never observed
    changed = t.observe(a.view(), T0)
    assert changed[1]
    assert t.state(2, T0) is HostState.UNKNOWN  # first look: no change seen yet
    assert t.state(3, T0) is HostState.FREE  # timestamp 0
    changed = t.observe(a.view(), T0 + 2)  # same bytes
    assert not changed[1]
    assert t.state(2, T0 + 2) is HostState.UNKNOWN
    a.hold(2, ts=502)
    changed = t.observe(a.view(), T0 + 4)
    assert changed[1] and changed.sum() == 1
    assert t.state(2, T0 + 4) is HostState.LIVE
    info = t.info(2, T0 + 4)
    assert (info.generation, info.timestamp, info.name, info.io_timeout) == (1, 502, "host-2", 1)
    assert info.last_live == T0 + 4 and info.last_check == T0 + 4


@pytest.mark.parametrize("io", sorted(THRESHOLDS))
def test_seen_changing_host_live_fail_dead_exact(io: int) -> None:
    fail, dead = THRESHOLDS[io]
    a = Area()
    a.hold(7, ts=10, io=io)
    t = HostTable(G512.max_hosts, our_io_timeout=5, our_host_id=1)
    t.observe(a.view(), T0)
    a.hold(7, ts=12, io=io)
    t.observe(a.view(), T0 + 3)  # last_live = T0 + 3
    for later in (4, 6, fail, fail + 30):  # unchanged reads do not refresh last_live
        t.observe(a.view(), T0 + later)
    base = T0 + 3
    assert t.state(7, base + fail) is HostState.LIVE
    assert t.state(7, base + fail + EPS) is HostState.FAIL
    assert t.state(7, base + dead) is HostState.FAIL
    assert t.state(7, base + dead + EPS) is HostState.DEAD


@pytest.mark.parametrize("io", sorted(THRESHOLDS))
def test_never_changing_host_unknown_fail_dead_from_first_check(io: int) -> None:
    fail, dead = THRESHOLDS[io]
    a = Area()
    a.hold(3, ts=99, io=io)
    t = HostTable(G512.max_hosts, our_io_timeout=1, our_host_id=1)
    t.observe(a.view(), T0)
    for k in range(1, 200, 7):
        t.observe(a.view(), T0 + k)  # looked at again and again, never changing
    assert t.state(3, T0 + fail) is HostState.UNKNOWN
    assert t.state(3, T0 + fail + EPS) is HostState.FAIL
    assert t.state(3, T0 + dead) is HostState.FAIL
    assert t.state(3, T0 + dead + EPS) is HostState.DEAD
    assert t.info(3, T0 + dead + EPS).last_check == T0 + 197


@pytest.mark.parametrize("record_io, ours, fail, dead", [
    (3, 1, 24, 84),    # the host's own io_timeout from its record
    (0, 2, 16, 76),    # 0 on disk -> ours
    (0, 10, 80, 140),
])
def test_thresholds_use_io_timeout_from_the_hosts_record(record_io: int, ours: int, fail: int, dead: int) -> None:
    a = Area()
    a.hold(4, ts=1, io=record_io)
    t = HostTable(G512.max_hosts, our_io_timeout=ours, our_host_id=1)
    t.observe(a.view(), T0)
    a.hold(4, ts=2, io=record_io)
    t.observe(a.view(), T0)
    assert t.io_for(4) == (record_io or ours)
    assert t.state(4, T0 + fail) is HostState.LIVE
    assert t.state(4, T0 + fail + EPS) is HostState.FAIL
    assert t.state(4, T0 + dead) is HostState.FAIL
    assert t.state(4, T0 + dead + EPS) is HostState.DEAD


def test_io_timeout_follows_the_latest_record() -> None:
    a = Area()
    a.hold(4, ts=1, io=1)
    t = HostTable(G512.max_hosts, our_io_timeout=1)
    t.observe(a.view(), T0)
    a.hold(4, ts=2, io=3)  # the host rejoined with a longer io_timeout
    t.observe(a.view(), T0 + 1)
    assert t.state(4, T0 + 1 + 24) is HostState.LIVE
    assert t.state(4, T0 + 1 + 24 + EPS) is HostState.FAIL


def test_us_is_live_and_watchdog_fire_timeout_configurable() -> None:
    a = Area()
    a.hold(1, ts=5)
    a.hold(2, ts=5)
    t = HostTable(G512.max_hosts, our_io_timeout=1, our_host_id=1, watchdog_fire_timeout=20)
    t.observe(a.view(), T0)
    assert t.state(1, T0 + 1000) is HostState.LIVE
    assert t.state(2, T0 + 28) is HostState.FAIL
    assert t.state(2, T0 + 28 + EPS) is HostState.DEAD
    assert t.host_live(2, 1, T0 + 28)
    assert not t.host_live(2, 1, T0 + 28 + EPS)


def test_release_makes_host_free() -> None:
    a = Area()
    a.hold(2, ts=5, gen=3)
    t = HostTable(G512.max_hosts, our_io_timeout=1)
    t.observe(a.view(), T0)
    a.put(2, a.free.replace(owner_id=2, owner_generation=3, timestamp=0, resource_name="host-2").with_checksum())
    t.observe(a.view(), T0 + 1)
    assert t.state(2, T0 + 1) is HostState.FREE
    assert [h.host_id for h in t.hosts(T0 + 1)] == [2]  # owner set: still listed, FREE
    assert t.hosts(T0 + 1)[0].state is HostState.FREE


# --- host_live ----------------------------------------------------------------------


def test_host_live_rules() -> None:
    a = Area()
    a.hold(2, ts=5, gen=4, io=1)
    t = HostTable(G512.max_hosts, our_io_timeout=1, our_host_id=1)
    # not observed yet: counts as alive (the safe answer)
    assert t.host_live(2, 4, T0 + 10_000)
    t.observe(a.view(), T0)
    # never seen changing: alive until host_dead (68) after first_check
    assert t.host_live(2, 4, T0 + 68)
    assert not t.host_live(2, 4, T0 + 68 + EPS)
    a.hold(2, ts=6, gen=4, io=1)
    t.observe(a.view(), T0 + 10)
    assert t.host_live(2, 4, T0 + 10 + 68)
    assert not t.host_live(2, 4, T0 + 10 + 68 + EPS)
    # the holder we ask about had generation 3: the host rejoined since -> its old holding is dead
    assert not t.host_live(2, 3, T0 + 11)
    # an older generation on disk than asked: not "newer", still judged by time
    assert t.host_live(2, 5, T0 + 11)
    # released (timestamp 0): not alive, at once
    a.put(2, a.free.replace(owner_id=2, owner_generation=4, timestamp=0, resource_name="host-2").with_checksum())
    t.observe(a.view(), T0 + 12)
    assert not t.host_live(2, 4, T0 + 12)


def test_host_live_uses_host_io_timeout() -> None:
    a = Area()
    a.hold(9, ts=5, io=2)  # host_dead(2) = 76
    t = HostTable(G512.max_hosts, our_io_timeout=1)
    t.observe(a.view(), T0)
    assert t.host_live(9, 1, T0 + 76)
    assert not t.host_live(9, 1, T0 + 76 + EPS)


# --- 2000 hosts ---------------------------------------------------------------------


@pytest.mark.parametrize("geometry", [G512, Geometry(4096, 8 << 20)], ids=["512-1M", "4096-8M"])
def test_2000_host_update(geometry: Geometry) -> None:
    a = Area(geometry)
    assert geometry.max_hosts == 2000
    for h in range(1, 2001):
        a.hold(h, ts=100 + h, gen=h % 7 + 1, io=1 + h % 3)
    t = HostTable(2000, our_io_timeout=1, our_host_id=1)
    view = a.view()
    assert len(view) == 2000
    start = time.perf_counter()
    changed = t.observe(view, T0)
    assert changed.all()
    # every other host renews; the rest stay still
    for h in range(2, 2001, 2):
        a.hold(h, ts=200 + h, gen=h % 7 + 1, io=1 + h % 3)
    changed = t.observe(a.view(), T0 + 2)
    elapsed = time.perf_counter() - start
    assert np.flatnonzero(changed).tolist() == list(range(1, 2000, 2))
    states = [t.state(h, T0 + 2) for h in range(1, 2001)]
    assert states[0] is HostState.LIVE  # us
    assert all(s is HostState.LIVE for s in states[1::2])
    assert all(s is HostState.UNKNOWN for s in states[2::2])
    # per-host io from each record: host 2000 has io 1 + 2000 % 3 = 3 -> fails after 24 s
    assert t.io_for(2000) == 3 and t.state(2000, T0 + 2 + 24 + EPS) is HostState.FAIL
    assert t.io_for(1999) == 2 and t.state(1999, T0 + 16 + EPS) is HostState.FAIL  # never changed
    hosts = t.hosts(T0 + 2)
    assert len(hosts) == 2000
    assert hosts[-1].name == "host-2000" and hosts[-1].timestamp == 2200
    assert elapsed < 5.0, f"2000-host table update took {elapsed:.3f} s"


def test_2000_hosts_from_a_real_area(lockspace_file: Path) -> None:
    """A 2000-record area read with O_DIRECT from a file: all free, then hosts appear."""
    with DirectStorage(str(lockspace_file), io_timeout=5) as s:
        t = HostTable(2000, our_io_timeout=1)
        t.observe(LockspaceView.parse(s.read(0, G512.align_size), G512), T0)
        assert all(t.state(h, T0) is HostState.FREE for h in range(1, 2001))
        assert t.hosts(T0) == []
        a = Area()
        a.hold(1500, ts=3)
        s.write(1499 * 512, bytes(a.buf[1499 * 512:1500 * 512]))
        changed = t.observe(LockspaceView.parse(s.read(0, G512.align_size), G512), T0 + 1)
        assert np.flatnonzero(changed).tolist() == [1499]
        assert t.state(1500, T0 + 1) is HostState.LIVE  # changed after the first look


def test_changing_record_with_bad_checksum_still_counts_as_alive() -> None:
    """A torn write by a live host is still a write: never judge it dead for that (the unsafe
    mistake), but never adopt the damaged values (generation) either."""
    area, table = Area(), HostTable(2000, 1, our_host_id=1)
    area.hold(2, ts=100, gen=3)
    table.observe(area.view(), now=0.0)
    for step in range(1, 40):
        rec = area.free.replace(owner_id=2, owner_generation=3, timestamp=100 + step, io_timeout=1,
                                resource_name="host-2").with_checksum()
        area.put(2, rec.replace(checksum=rec.checksum ^ 1))  # torn: bad checksum, yet changing
        table.observe(area.view(), now=float(step * 2))
    now = 39 * 2.0 + 1
    assert table.state(2, now) is HostState.LIVE
    assert table.host_live(2, 3, now)
    assert int(table.generation[1]) == 3 and int(table.timestamp[1]) == 100  # values from the good record only
    # once it stops changing, the usual thresholds apply from the last change seen
    assert table.state(2, 78.0 + 8.5) is HostState.FAIL
    assert table.state(2, 78.0 + 68.5) is HostState.DEAD
