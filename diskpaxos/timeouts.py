"""Every sanlock timing rule, derived from io_timeout (spec section 7).

A mixed cluster of sanlock and diskpaxos hosts is safe only if both judge
each other with the same formulas, so no other module writes a literal
timing: they ask a ``Timeouts`` built from the relevant io_timeout.
``watchdog_fire_timeout`` is cluster-wide (60 s, fixed in sanlock 3.8.5); it
is configurable only for clusters with no sanlock host.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_IO_TIMEOUT = 10
WATCHDOG_FIRE_TIMEOUT = 60
INIT_IO_TIMEOUT = 60  # sanlock's write_init_io_timeout: initialisation writes
KILL_GRACE_SECONDS = 40  # DEFAULT_GRACE_SEC: killpath / SIGTERM before SIGKILL
SH_RETRIES = 8
OBSERVE_INTERVAL = 1  # seconds between reads when watching hosts without joining
RENEWAL_RETRY_INTERVAL = 1  # seconds between attempts after a failed renewal, as sanlock's loop


@dataclass(frozen=True)
class Timeouts:
    """The timing rules for one io_timeout (seconds)."""

    io_timeout: int = DEFAULT_IO_TIMEOUT
    watchdog_fire_timeout: int = WATCHDOG_FIRE_TIMEOUT

    def __post_init__(self) -> None:
        if not 1 <= self.io_timeout <= 0xFF:
            raise ValueError(f"io_timeout {self.io_timeout} is outside 1..255 (stored as a byte on disk)")

    @property
    def id_renewal(self) -> int:
        """Renewal interval."""
        return 2 * self.io_timeout

    @property
    def id_renewal_warn(self) -> int:
        return 6 * self.io_timeout

    @property
    def id_renewal_fail(self) -> int:
        """Local lease expiry: time since the last successful renewal."""
        return 8 * self.io_timeout

    @property
    def host_dead(self) -> int:
        """Another host is dead this long after we last saw its timestamp change."""
        return 8 * self.io_timeout + self.watchdog_fire_timeout

    @property
    def set_bitmap(self) -> int:
        return 6 * self.io_timeout

    @property
    def delta_large_delay(self) -> int:
        return 2 * self.io_timeout + 6 * self.io_timeout

    @property
    def delta_acquire_held_wait(self) -> int:
        """Wait before taking a host_id whose record shows another holder."""
        return max(self.host_dead, self.delta_large_delay)

    @property
    def delta_short_delay(self) -> int:
        """Wait after writing our delta record before trusting it."""
        return 2 * self.io_timeout

    @property
    def request_finish(self) -> int:
        return 3 * self.id_renewal

    @property
    def renewal_write_timeout(self) -> int:
        return self.host_dead

    @property
    def renewal_read_extend(self) -> int:
        return self.io_timeout

    @property
    def paxos_acquire_held_max(self) -> int:
        return self.host_dead + 7 * self.io_timeout

    @property
    def paxos_acquire_free_max(self) -> int:
        return 6 * self.io_timeout
