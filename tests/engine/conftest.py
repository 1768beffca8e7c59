"""Fixtures for the engine tests: a fake clock tests can synchronise with, and
lockspaces joined on a real O_DIRECT file under that clock.

The engine runs threads (an acquire, a renewal loop, an expiry monitor) that
sleep on the injected clock.  A test moves time with ``advance`` and must then
know when the threads have *finished reacting*: ``FakeClock.wait_for_waiters``
counts sleepers, but right after an ``advance`` a thread whose deadline passed
still counts until it gets the CPU back.  ``SyncClock`` also records each
sleeper's deadline, so ``settle(n)`` waits (in real time, with a deadline)
until exactly ``n`` threads sleep with a deadline still in the future: nothing
can happen any more until the next ``advance``.  ``run_until`` advances from one
sleeper's deadline to the next, so periodic threads fire at exactly their times
and never have two due times merged into one jump.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from diskpaxos import direct
from diskpaxos.clock import FakeClock
from diskpaxos.fault_storage import FaultPlan
from diskpaxos.format import LEADER_SIZE, Geometry, LeaderRecord
from diskpaxos.io_direct import DEFAULT_SYSCALLS, DirectStorage
from diskpaxos.lockspace import Lockspace

START = 1000.0
SETTLE_TIMEOUT = 15.0  # real seconds: a hung I/O times out after io_timeout (1 s) real


class SyncClock(FakeClock):
    """A FakeClock that knows the deadline and event of every sleeper."""

    def __init__(self, start: float = START) -> None:
        super().__init__(start)
        self._sleepers: dict[int, tuple[float, threading.Event]] = {}

    def wait(self, event: threading.Event, timeout: float) -> bool:
        me = threading.get_ident()
        with self._cond:  # an RLock: FakeClock.wait re-enters it, Condition.wait releases it fully
            self._sleepers[me] = (self._now + max(0.0, timeout), event)
            try:
                return super().wait(event, timeout)
            finally:
                self._sleepers.pop(me, None)

    def asleep(self) -> int:
        """Threads that will not wake before the next advance."""
        with self._cond:
            return sum(1 for deadline, event in self._sleepers.values()
                       if deadline > self._now and not event.is_set())

    def next_deadline(self) -> float | None:
        with self._cond:
            pending = [d for d, e in self._sleepers.values() if d > self._now and not e.is_set()]
            return min(pending) if pending else None

    def settle(self, count: int | Callable[[], int], timeout: float = SETTLE_TIMEOUT,
               stop: Callable[[], bool] | None = None) -> None:
        """Block (real time) until exactly ``count`` threads sleep with a future deadline."""
        end = time.monotonic() + timeout
        while True:
            want = count() if callable(count) else count
            if stop is not None and stop():
                return
            if self.asleep() == want:
                # seen twice, a poll apart: no thread was between waking and sleeping again
                time.sleep(self.POLL)
                want = count() if callable(count) else count
                if self.asleep() == want:
                    return
            if time.monotonic() > end:
                raise TimeoutError(f"{self.asleep()} threads asleep on the fake clock, expected {want}")
            time.sleep(self.POLL / 5)

    def run_until(self, target: float, count: int | Callable[[], int],
                  stop: Callable[[], bool] | None = None) -> None:
        """Advance to ``target`` stopping at every sleeper's deadline, settling each time."""
        while True:
            self.settle(count, stop=stop)
            if stop is not None and stop():
                return
            now = self.monotonic()
            if now >= target:
                return
            nxt = self.next_deadline()
            self.advance((target if nxt is None else min(nxt, target)) - now)


def background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Run ``fn`` on a daemon thread; its result or exception lands in the Future."""
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            fut.set_exception(e)

    threading.Thread(target=run, daemon=True, name=f"bg-{getattr(fn, '__name__', fn)}").start()
    return fut


def format_lockspace(path: Path, io_timeout: int = 1, **kw: Any) -> Geometry:
    return direct.init_lockspace(str(path), 0, "LS", io_timeout=io_timeout, **kw).geometry


def read_sector(path: Path, offset: int, length: int = 512) -> bytes:
    """What another host would read: a fresh fd, no faults."""
    with DirectStorage(str(path), io_timeout=5, readonly=True) as s:
        return s.read(offset, length).tobytes()


def write_sector(path: Path, offset: int, data: bytes) -> None:
    """Write from "outside" (another host, or garbage), through a fresh fd."""
    with DirectStorage(str(path), io_timeout=5) as s:
        s.write(offset, data)


def read_record(path: Path, host_id: int, sector_size: int = 512) -> LeaderRecord:
    return LeaderRecord.from_bytes(read_sector(path, (host_id - 1) * sector_size, sector_size)[:LEADER_SIZE])


def record_sector(rec: LeaderRecord, sector_size: int = 512, tail: bytes = b"") -> bytes:
    buf = bytearray(sector_size)
    buf[:LEADER_SIZE] = rec.to_bytes()
    buf[LEADER_SIZE:LEADER_SIZE + len(tail)] = tail
    return bytes(buf)


@dataclass
class Failure:
    host_id: int
    reason: str
    fake_time: float
    real_time: float
    thread: str


class Cluster:
    """Lockspaces of one formatted file, all on one SyncClock; torn down after the test."""

    def __init__(self, path: Path, clock: SyncClock) -> None:
        self.path = path
        self.clock = clock
        self.spaces: list[Lockspace] = []
        self.plans: list[FaultPlan] = []
        self.pending: list[Future] = []
        self.failures: list[Failure] = []
        self.signals: list[tuple[int, int, float]] = []  # (receiver, sender, fake time)
        self.hung = 0  # engine threads known to be blocked in I/O (not on the clock)

    def on_failure(self, ls: Lockspace, reason: str) -> None:
        self.failures.append(Failure(ls.host_id, reason, self.clock.monotonic(), time.monotonic(),
                                     threading.current_thread().name))

    def signal_sink(self, host_id: int) -> Callable[[int], None]:
        return lambda sender: self.signals.append((host_id, sender, self.clock.monotonic()))

    def threads(self) -> int:
        """Engine threads that should be asleep on the clock when nothing is due."""
        n = sum(1 for f in self.pending if not f.done())
        for ls in self.spaces:
            n += ls._renewal_thread.is_alive() + ls._monitor_thread.is_alive()
        return n - self.hung

    def settle(self) -> None:
        self.clock.settle(self.threads, stop=self._join_finished)

    def _join_finished(self) -> bool:
        return any(f.done() for f in self.pending)

    def run_until(self, target: float) -> None:
        self.clock.run_until(target, self.threads)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.monotonic() + seconds)

    def join(self, host_id: int, io_timeout: int = 1, host_name: str | None = None, *,
             plan: FaultPlan | None = None, limit: float = 400.0, **kw: Any) -> Lockspace:
        """Join in fake time: advance deadline by deadline until the join returns."""
        if plan is not None:
            self.plans.append(plan)
        fut = background(Lockspace.join, "LS", host_id, str(self.path), 0, io_timeout,
                         host_name or f"host-{host_id}", on_renewal_failure=self.on_failure,
                         on_host_signal=self.signal_sink(host_id), clock=self.clock,
                         syscalls=plan.syscalls() if plan is not None else DEFAULT_SYSCALLS, **kw)
        self.pending.append(fut)
        end = self.clock.monotonic() + limit
        try:
            while not fut.done():
                self.clock.run_until(end, self.threads, stop=self._join_finished)
                if self.clock.monotonic() >= end and not fut.done():
                    raise AssertionError(f"join of host_id {host_id} did not finish in {limit} fake s")
            ls = fut.result()
        finally:
            self.pending.remove(fut)
        self.spaces.append(ls)
        self.settle()
        return ls

    def close(self) -> None:
        for plan in self.plans:
            plan.release_all()
        for f in self.pending:
            f.cancel()
        for ls in self.spaces:
            ls.leave()


@pytest.fixture
def clock() -> SyncClock:
    return SyncClock()


@pytest.fixture
def lockspace_file(lease_file: Path) -> Path:
    """lease_file formatted as lockspace "LS" (512/1M) with io_timeout 1 on disk."""
    format_lockspace(lease_file, io_timeout=1)
    return lease_file


@pytest.fixture
def cluster(lockspace_file: Path, clock: SyncClock) -> Iterator[Cluster]:
    c = Cluster(lockspace_file, clock)
    yield c
    c.close()


@pytest.fixture
def helpers() -> Any:
    """The module-level helpers, for test modules (conftest is not importable by name)."""
    import types
    return types.SimpleNamespace(background=background, format_lockspace=format_lockspace,
                                 read_sector=read_sector, write_sector=write_sector,
                                 read_record=read_record, record_sector=record_sector,
                                 SyncClock=SyncClock, Cluster=Cluster, START=START)
