"""Local monotonic time and interruptible sleeps, injectable.

Lease logic takes a ``Clock`` so every timing rule can be tested without
waiting: ``FakeClock`` moves only when a test advances it, and sleepers wake
exactly when their deadline is passed.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Sleep ``timeout`` seconds or until ``event`` is set; True if it was set."""
        ...


class RealClock:
    """CLOCK_MONOTONIC: the clock sanlock writes into delta leases."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(max(0.0, timeout))


REAL_CLOCK = RealClock()


class FakeClock:
    """A clock that moves only on ``advance``; waits end when it passes their deadline."""

    POLL = 0.005  # real seconds between checks of a waiter's event

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        self.waiters = 0

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._cond:
            deadline = self._now + max(0.0, timeout)
            self.waiters += 1
            try:
                while not event.is_set() and self._now < deadline:
                    self._cond.wait(self.POLL)
            finally:
                self.waiters -= 1
            return event.is_set()

    def wait_for_waiters(self, count: int, timeout: float = 10.0) -> None:
        """Block (in real time) until ``count`` threads sleep on this clock: the test's sync point."""
        end = time.monotonic() + timeout
        while True:
            with self._cond:
                if self.waiters >= count:
                    return
            if time.monotonic() > end:
                raise TimeoutError(f"only {self.waiters} of {count} threads are waiting on the clock")
            time.sleep(self.POLL)
