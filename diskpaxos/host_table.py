"""Liveness of other hosts, judged only from what we see change on storage.

A host is alive while its delta-lease timestamp keeps changing; how long ago
it last changed is measured on *our* monotonic clock from the moment we saw
the change (its timestamps come from its own clock and are never compared with
ours).  The thresholds come from the observed host's own io_timeout (stored in
its record; 0 means ours), exactly as sanlock judges (spec 5.4):

    FREE     its timestamp is 0
    LIVE     us; or seen changing, and now - last <= 8*io
    UNKNOWN  now - last <= 8*io but never seen changing yet
    FAIL     8*io < now - last <= 8*io + W
    DEAD     now - last > 8*io + W        (W: watchdog fire timeout)

``last`` is when we last saw a change (or first looked, if never).  Pure: the
table is fed observations (parsed lockspace areas) and a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .format import HostState, LockspaceView
from .timeouts import WATCHDOG_FIRE_TIMEOUT


@dataclass(frozen=True)
class HostInfo:
    """One row of the host table, as ``Lockspace.hosts()`` reports it."""

    host_id: int
    generation: int
    timestamp: int
    name: str
    io_timeout: int
    state: HostState
    last_live: float | None  # local monotonic time we last saw it change (None: never)
    last_check: float | None

    def as_dict(self) -> dict[str, object]:
        return {"host_id": self.host_id, "generation": self.generation, "timestamp": self.timestamp,
                "name": self.name, "io_timeout": self.io_timeout, "state": self.state.name,
                "last_live": self.last_live, "last_check": self.last_check}


def judge(*, now: float, timestamp: int, io_timeout: int, first_check: float, last_live: float,
          seen_change: bool, is_us: bool = False, watchdog_fire_timeout: int = WATCHDOG_FIRE_TIMEOUT) -> HostState:
    """The state of one host from our observations (the rule table above)."""
    if timestamp == 0:
        return HostState.FREE
    if is_us:
        return HostState.LIVE
    last = last_live if seen_change else first_check
    age = now - last
    fail_after = 8 * io_timeout
    if age <= fail_after:
        return HostState.LIVE if seen_change else HostState.UNKNOWN
    if age <= fail_after + watchdog_fire_timeout:
        return HostState.FAIL
    return HostState.DEAD


class HostTable:
    """Observations of every host_id of one lockspace, updated per area read.

    Kept as numpy arrays so a 2000-host update is a handful of vector ops.
    """

    def __init__(self, max_hosts: int, our_io_timeout: int, our_host_id: int = 0,
                 watchdog_fire_timeout: int = WATCHDOG_FIRE_TIMEOUT) -> None:
        self.max_hosts = max_hosts
        self.our_io_timeout = our_io_timeout
        self.our_host_id = our_host_id
        self.watchdog_fire_timeout = watchdog_fire_timeout
        n = max_hosts
        self.checked = np.zeros(n, bool)
        self.first_check = np.zeros(n)
        self.last_check = np.zeros(n)
        self.last_live = np.zeros(n)
        self.seen_change = np.zeros(n, bool)  # changed at least once after the first look
        self.owner_id = np.zeros(n, np.uint64)
        self.generation = np.zeros(n, np.uint64)
        self.timestamp = np.zeros(n, np.uint64)
        self.io_timeout = np.zeros(n, np.int64)
        self.names: list[str] = [""] * n
        # the bytes last seen, valid or not: any change is a sign of life
        self.raw_owner = np.zeros(n, np.uint64)
        self.raw_generation = np.zeros(n, np.uint64)
        self.raw_timestamp = np.zeros(n, np.uint64)
        self.last_change_mask = np.zeros(n, bool)

    def observe(self, view: LockspaceView, now: float) -> np.ndarray:
        """Record one read of the area at local time ``now``; returns the changed mask.

        Any change of a record's owner, generation or timestamp bytes counts as
        a sign of life, even in a record that fails its checks (a torn write
        by a live host is still a write): judging such a host dead would be the
        unsafe mistake.  Only verified records update the values we act on
        (generation, timestamp, io_timeout, name).
        """
        n = min(len(view), self.max_hosts)
        recs = view.records[:n]
        valid = view.valid()[:n]
        owner = recs["owner_id"].astype(np.uint64)
        gen = recs["owner_generation"].astype(np.uint64)
        ts = recs["timestamp"].astype(np.uint64)
        first = ~self.checked[:n]
        moved = first | (owner != self.raw_owner[:n]) | (gen != self.raw_generation[:n]) \
            | (ts != self.raw_timestamp[:n])
        self.raw_owner[:n], self.raw_generation[:n], self.raw_timestamp[:n] = owner, gen, ts
        changed = valid & moved
        self.first_check[:n][first] = now
        self.checked[:n] = True
        self.last_check[:n] = now
        self.seen_change[:n] |= moved & ~first
        self.last_live[:n][moved] = now
        self.owner_id[:n][changed] = owner[changed]
        self.generation[:n][changed] = gen[changed]
        self.timestamp[:n][changed] = ts[changed]
        self.io_timeout[:n][changed] = recs["io_timeout"][changed]
        for i in np.flatnonzero(changed).tolist():
            self.names[i] = recs["resource_name"][i].decode("utf8", "surrogateescape")
        mask = np.zeros(self.max_hosts, bool)
        mask[:n] = changed
        self.last_change_mask = mask
        return mask

    def io_for(self, host_id: int) -> int:
        """The io_timeout that judges host_id: from its record, 0 -> ours."""
        io = int(self.io_timeout[host_id - 1])
        return io or self.our_io_timeout

    def state(self, host_id: int, now: float) -> HostState:
        i = host_id - 1
        if not self.checked[i]:
            return HostState.UNKNOWN
        return judge(now=now, timestamp=int(self.timestamp[i]), io_timeout=self.io_for(host_id),
                     first_check=float(self.first_check[i]), last_live=float(self.last_live[i]),
                     seen_change=bool(self.seen_change[i]), is_us=host_id == self.our_host_id,
                     watchdog_fire_timeout=self.watchdog_fire_timeout)

    def host_live(self, host_id: int, generation: int, now: float) -> bool:
        """sanlock's resource-layer check for a holder (host_id, generation) (spec 5.4).

        Alive unless its record is free, it rejoined with a newer generation,
        or it has not changed for host_dead seconds (never seen: since first look).
        Hosts not yet observed count as alive: the safe answer.
        """
        i = host_id - 1
        if not self.checked[i]:
            return True
        if int(self.timestamp[i]) == 0:
            return False
        if int(self.generation[i]) > generation:
            return False
        host_dead = 8 * self.io_for(host_id) + self.watchdog_fire_timeout
        last = float(self.last_live[i]) if self.seen_change[i] else float(self.first_check[i])
        return now - last <= host_dead

    def info(self, host_id: int, now: float) -> HostInfo:
        i = host_id - 1
        return HostInfo(host_id=host_id, generation=int(self.generation[i]), timestamp=int(self.timestamp[i]),
                        name=self.names[i], io_timeout=int(self.io_timeout[i]), state=self.state(host_id, now),
                        last_live=float(self.last_live[i]) if self.checked[i] else None,
                        last_check=float(self.last_check[i]) if self.checked[i] else None)

    def hosts(self, now: float, include_free: bool = False) -> list[HostInfo]:
        """Every host that has held its host_id (owner set), with its state now."""
        ids = np.flatnonzero(self.checked & ((self.owner_id != 0) | include_free)) + 1
        out = [self.info(int(h), now) for h in ids.tolist()]
        return [h for h in out if include_free or h.timestamp != 0 or h.generation != 0]
