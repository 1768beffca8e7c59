"""Every timing rule of spec section 7, against the numbers of the spec's table.

The expected values are copied from the table (columns io = 10, 1, 2), not
computed from formulas, so a wrong formula in ``timeouts.py`` cannot agree
with itself here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from diskpaxos import timeouts
from diskpaxos.lockspace import Lockspace
from diskpaxos.timeouts import Timeouts

# spec section 7, one row per rule: property -> (io=10, io=1, io=2)
TABLE = {
    "io_timeout": (10, 1, 2),
    "id_renewal": (20, 2, 4),
    "id_renewal_warn": (60, 6, 12),
    "id_renewal_fail": (80, 8, 16),
    "watchdog_fire_timeout": (60, 60, 60),
    "host_dead": (140, 68, 76),
    "set_bitmap": (60, 6, 12),
    "delta_large_delay": (80, 8, 16),
    "delta_acquire_held_wait": (140, 68, 76),  # "delta acquire wait when held"; = delta_acquire_held min
    "delta_short_delay": (20, 2, 4),  # also delta_acquire_free min
    "request_finish": (60, 6, 12),
    "renewal_write_timeout": (140, 68, 76),
    "renewal_read_extend": (10, 1, 2),
    "paxos_acquire_free_max": (60, 6, 12),
    "paxos_acquire_held_max": (210, 75, 90),
}
IOS = (10, 1, 2)


@pytest.mark.parametrize("rule", sorted(TABLE))
@pytest.mark.parametrize("column", range(3), ids=[f"io{io}" for io in IOS])
def test_spec_table(rule: str, column: int) -> None:
    t = Timeouts(IOS[column])
    assert getattr(t, rule) == TABLE[rule][column]


@pytest.mark.parametrize("column", range(3), ids=[f"io{io}" for io in IOS])
def test_table_min_max_rows_that_alias_other_rules(column: int) -> None:
    """Rows of the table with a min/max pair whose bound is another rule's value."""
    t = Timeouts(IOS[column])
    delta_renew_max = (20, 2, 4)[column]
    delta_acquire_free_min = (20, 2, 4)[column]
    delta_acquire_held_min = (140, 68, 76)[column]
    paxos_acquire_held_min = (140, 68, 76)[column]
    assert t.id_renewal == delta_renew_max
    assert t.delta_short_delay == delta_acquire_free_min
    assert t.delta_acquire_held_wait == delta_acquire_held_min
    assert t.host_dead == paxos_acquire_held_min


def test_constants() -> None:
    assert timeouts.DEFAULT_IO_TIMEOUT == 10
    assert Timeouts().io_timeout == 10  # the default column
    assert timeouts.WATCHDOG_FIRE_TIMEOUT == 60
    assert timeouts.INIT_IO_TIMEOUT == 60  # write_init_io_timeout
    assert timeouts.KILL_GRACE_SECONDS == 40  # DEFAULT_GRACE_SEC
    assert timeouts.SH_RETRIES == 8


@pytest.mark.parametrize("io, w, host_dead", [(1, 30, 38), (1, 90, 98), (10, 0, 80), (2, 45, 61)])
def test_watchdog_fire_timeout_changes_host_dead(io: int, w: int, host_dead: int) -> None:
    t = Timeouts(io, watchdog_fire_timeout=w)
    assert t.watchdog_fire_timeout == w
    assert t.host_dead == host_dead
    assert t.renewal_write_timeout == host_dead
    assert t.delta_acquire_held_wait == max(host_dead, 8 * io)
    # the local rules do not depend on the watchdog
    assert (t.id_renewal, t.id_renewal_warn, t.id_renewal_fail) == (2 * io, 6 * io, 8 * io)


def test_host_dead_never_below_delta_large_delay() -> None:
    # trap 17: the long wait is max(host_dead, 8*io), host_dead even with no watchdog at all
    assert Timeouts(3, watchdog_fire_timeout=0).delta_acquire_held_wait == 24


@pytest.mark.parametrize("io", [0, -1, 256, 1000])
def test_io_timeout_outside_1_255_rejected(io: int) -> None:
    with pytest.raises(ValueError, match="outside 1..255"):
        Timeouts(io)


@pytest.mark.parametrize("io", [1, 255])
def test_io_timeout_bounds_accepted(io: int) -> None:
    assert Timeouts(io).id_renewal_fail == 8 * io


@pytest.mark.parametrize("io", [0, 256])
def test_join_rejects_io_timeout_before_touching_storage(tmp_path: Path, io: int) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(ValueError, match="outside 1..255"):
        Lockspace.join("LS", 1, str(missing), 0, io_timeout=io, host_name="h")
    assert not missing.exists()
