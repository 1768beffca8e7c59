"""Disk Paxos resource leases, exclusive and shared (spec section 6).

A resource lease area holds a leader (the committed owner and lease version,
``lver``), a request record, and one dblock per host: the host's ballot
(mbal, bal, inp) for the next lver.  Acquiring runs one Disk Paxos instance
for ``lver + 1``: phase 1 claims a ballot number and learns any value already
accepted, phase 2 proposes (ourselves, unless someone's value was accepted),
and the chosen value is committed to the leader.  Shared holders mark their
dblock sector's mode block and leave the leader free.

The owner of a held lease is judged through the lockspace (its delta lease
must stop changing for host_dead seconds) before anyone ballots over it: this
is what keeps two holders from overlapping, so every rule is sanlock's.

Functions of (storage, geometry, our host, the lockspace's liveness view,
clock); the engine wraps them as ``Lockspace.acquire``.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import errors
from .clock import REAL_CLOCK, Clock
from .delta_lease import disk_time
from .format import (
    DBLOCK_FL_RELEASED,
    DBLOCK_SIZE,
    LEADER_SIZE,
    LFL_SHORT_HOLD,
    MBLOCK_OFFSET,
    MBLOCK_SHARED,
    MODE_BLOCK_SIZE,
    PAXOS_DISK_MAGIC,
    REQ_DISK_MAGIC,
    REQ_DISK_VERSION,
    REQUEST_SIZE,
    VERSION_MAJOR_MASK,
    Dblock,
    Geometry,
    LeaderRecord,
    ModeBlock,
    PaxosView,
    RequestRecord,
    check_paxos_leader,
)
from .io_direct import DirectStorage
from .timeouts import SH_RETRIES, Timeouts

log = logging.getLogger(__name__)

EAGAIN = -11
OWNER_CHECK_INTERVAL = 1  # seconds between looks at a held lease's owner (sanlock's loop)


# --- errors (sanlock's codes) ------------------------------------------------------------


class AcquireError(errors.DiskpaxosError):
    """An acquire that did not get the lease; ``holder`` fields name who has it."""


class AcquireLver(AcquireError):
    code = -240  # SANLK_ACQUIRE_LVER
    template = "lease {resource!r} is at lver {found}, not the expected {expected}"


class AcquireIdLive(AcquireError):
    code = -243  # SANLK_ACQUIRE_IDLIVE
    template = ("lease {resource!r} is held by host_id {owner_id} ({owner_name!r}, generation "
                "{owner_generation}, lver {lver}), which is alive")


class AcquireOwned(AcquireError):
    code = -244  # SANLK_ACQUIRE_OWNED
    template = "lease {resource!r} lver {lver} was committed to host_id {owner_id} generation {owner_generation}"


class AcquireOther(AcquireError):
    code = -245  # SANLK_ACQUIRE_OTHER
    template = "our ballot for {resource!r} lver {lver} chose host_id {owner_id}'s value"


class AcquireShRetry(AcquireError):
    code = -246  # SANLK_ACQUIRE_SHRETRY
    template = "lease {resource!r} kept being held briefly by host_id {owner_id}; gave up shared acquire"


class AcquireOwnedRetry(AcquireError):
    code = -247  # SANLK_ACQUIRE_OWNED_RETRY
    template = "lease {resource!r} is held by host_id {owner_id} whose liveness is not yet known"


class SharedHoldersLive(AcquireError):
    code = EAGAIN
    template = "lease {resource!r} is held shared by live host(s) {holders}"


class BallotAbort(errors.DiskpaxosError):
    """Phase 1 or 2 saw a larger ballot or lver: retry with a larger mbal."""

    accepted: Dblock | None = None  # set when our phase-2 value reached the disk before the abort


class DblockLver(BallotAbort):
    code = -212  # SANLK_DBLOCK_LVER
    template = "host_id {host_id}'s dblock is for lver {found}, beyond ours {expected}"


class DblockMbal(BallotAbort):
    code = -213  # SANLK_DBLOCK_MBAL
    template = "host_id {host_id}'s dblock has mbal {found}, beyond ours {expected}"


class ReleaseLver(errors.DiskpaxosError):
    code = -250  # SANLK_RELEASE_LVER
    template = "lease {resource!r} moved to lver {found} (we hold {expected})"


class ReleaseOwner(errors.DiskpaxosError):
    code = -251  # SANLK_RELEASE_OWNER
    template = "lease {resource!r} leader is no longer ours: {reason}"


class LockspaceNotJoined(errors.DiskpaxosError):
    code = -241  # SANLK_ACQUIRE_LOCKSPACE
    template = "lockspace {lockspace!r} is not joined here"


# --- what the paxos layer needs from the lockspace ---------------------------------------


class Liveness(Protocol):
    """The lockspace as the paxos layer sees it: who we are, and what we saw of others."""

    name: str
    host_id: int
    generation: int
    timeouts: Timeouts

    def observed(self, host_id: int) -> tuple[int, int, int, float, float, int] | None:
        """(owner_id, generation, timestamp, last_live, last_check, io_timeout) of host_id, or None."""
        ...

    def host_live(self, host_id: int, generation: int) -> bool: ...

    def read_delta(self, host_id: int) -> LeaderRecord:
        """Read host_id's delta lease from storage now (fully verified)."""
        ...


@dataclass
class PaxosLease:
    """A lease we hold (or tried to): where it is, and what we last wrote."""

    lockspace: str
    resource: str
    path: str
    offset: int
    geometry: Geometry
    host_id: int
    generation: int
    shared: bool
    leader: LeaderRecord
    dblock: Dblock = field(default_factory=Dblock)

    @property
    def lver(self) -> int:
        return self.leader.lver

    def state_string(self) -> str:
        """sanlock's ``LS:NAME:PATH:OFFSET:LVER`` (or ``:SH``) form."""
        path = self.path.replace("\\", "\\\\").replace(":", "\\:")
        tail = "SH" if self.shared else str(self.lver)
        return f"{self.lockspace}:{self.resource}:{path}:{self.offset}:{tail}"


# --- I/O helpers ---------------------------------------------------------------------------


def _sector_bytes(geometry: Geometry, dblock: Dblock, mode: ModeBlock | None = None) -> bytes:
    buf = bytearray(geometry.sector_size)
    buf[:DBLOCK_SIZE] = dblock.to_bytes()
    if mode is not None:
        buf[MBLOCK_OFFSET: MBLOCK_OFFSET + MODE_BLOCK_SIZE] = mode.to_bytes()
    return bytes(buf)


def write_dblock(storage: DirectStorage, geometry: Geometry, offset: int, host_id: int, dblock: Dblock,
                 mode: ModeBlock | None, timeout: float) -> None:
    """Our whole dblock sector: dblock and mode block written together (never one alone)."""
    storage.write(geometry.dblock_offset(offset, host_id), _sector_bytes(geometry, dblock.with_checksum(), mode),
                  timeout=timeout)


def _leader_sector(geometry: Geometry, leader: LeaderRecord) -> bytes:
    buf = bytearray(geometry.sector_size)
    buf[:LEADER_SIZE] = leader.to_bytes()
    return bytes(buf)


def read_leader(storage: DirectStorage, geometry: Geometry, offset: int, timeout: float) -> LeaderRecord:
    return LeaderRecord.from_bytes(storage.read(offset, geometry.sector_size, timeout=timeout)[:LEADER_SIZE])


class GeometryMismatch(Exception):
    """The lease's leader declares another sector size or alignment: restart with it."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__(f"lease geometry is {geometry}")
        self.geometry = geometry


def read_lease(storage: DirectStorage, geometry: Geometry, offset: int, *, lockspace: str, resource: str,
               host_id: int, timeout: float) -> tuple[LeaderRecord, int, Dblock]:
    """The initial read (6.1): leader and every dblock verified; returns (leader, max mbal, our dblock).

    A leader that declares another geometry than ``geometry`` raises
    GeometryMismatch before anything is judged with the wrong one (6.2 step 1).
    """
    view = PaxosView.parse(storage.read(offset, geometry.align_size, timeout=timeout), geometry)
    leader = view.leader
    if leader.magic == PAXOS_DISK_MAGIC and leader.sector_size in (512, 4096):
        try:
            declared = Geometry.from_leader_flags(leader.flags, leader.sector_size)
        except errors.FormatError:
            declared = geometry
        if declared != geometry:
            raise GeometryMismatch(declared)
    check_paxos_leader(leader, path=storage.path, offset=offset, space_name=lockspace,
                       resource_name=resource, host_id=host_id)
    bad = view.bad_dblocks()
    if bad:
        d = view.dblock(bad[0])
        raise errors.DblockChecksumError(host_id=bad[0], found=d.checksum, expected=d.compute_checksum(),
                                         path=storage.path, offset=geometry.dblock_offset(offset, bad[0]))
    return leader, view.max_mbal, view.dblock(host_id)


def geometry_of_leader(storage: DirectStorage, offset: int, fallback: Geometry, timeout: float) -> Geometry:
    """The lease's own geometry: its leader overrides the lockspace's (6.2 step 1)."""
    raw = storage.read(offset, max(4096, storage.sector_size), timeout=timeout)
    rec = LeaderRecord.from_bytes(raw[:LEADER_SIZE])
    try:
        return Geometry.from_leader_flags(rec.flags, rec.sector_size)
    except errors.FormatError:
        return fallback


# --- the ballot ------------------------------------------------------------------------------


@dataclass
class BallotResult:
    dblock: Dblock  # our phase-2 dblock: the value chosen for next_lver
    shared_hosts: list[tuple[int, int]]  # (host_id, generation) of SHARED mode blocks seen in phase 1


def _check_phase(view_dblocks: np.ndarray, ok: np.ndarray, num_hosts: int, next_lver: int, our_mbal: int,
                 ) -> int | None:
    """Abort rules of both phases, vectorised; returns the index of bk_max or None."""
    d = view_dblocks[:num_hosts]
    good = ok[:num_hosts] & (d["lver"] >= next_lver)
    beyond = np.flatnonzero(good & (d["lver"] > next_lver))
    if len(beyond):
        i = int(beyond[0])
        raise DblockLver(host_id=i + 1, found=int(d["lver"][i]), expected=next_lver)
    bigger = np.flatnonzero(good & (d["mbal"] > our_mbal))
    if len(bigger):
        i = int(bigger[0])
        raise DblockMbal(host_id=i + 1, found=int(d["mbal"][i]), expected=our_mbal)
    cand = np.flatnonzero(good & (d["inp"] != 0) & (d["bal"] != 0))
    if not len(cand):
        return None
    bals = d["bal"][cand]
    return int(cand[int(np.argmax(bals))])  # first of the largest: strict "larger wins"


def run_ballot(storage: DirectStorage, geometry: Geometry, offset: int, *, host_id: int, generation: int,
               num_hosts: int, next_lver: int, our_mbal: int, keep_mode: ModeBlock | None, clock: Clock,
               timeout: float, accepted: Dblock | None = None) -> BallotResult:
    """Phases 1 and 2 of Disk Paxos for ``next_lver`` (6.2).

    ``accepted``: our dblock's value already accepted for ``next_lver`` by an
    earlier ballot of ours; phase 1 keeps it (bal, inp) as Disk Paxos requires.
    """
    read_size = geometry.ballot_read_size(num_hosts)
    # phase 1: claim our_mbal
    mine = Dblock(mbal=our_mbal, lver=next_lver)
    if accepted is not None and accepted.lver == next_lver:
        mine = mine.replace(bal=accepted.bal, inp=accepted.inp, inp2=accepted.inp2, inp3=accepted.inp3)
    write_dblock(storage, geometry, offset, host_id, mine, keep_mode, timeout)
    view = PaxosView.parse(storage.read(offset, read_size, timeout=timeout), geometry, num_hosts)
    shared = [(h, g) for h, g in view.shared_holders() if h != host_id]
    best = _check_phase(view.dblocks, view.checksum_ok, num_hosts, next_lver, our_mbal)
    if best is not None:
        b = view.dblock(best + 1)
        inp, inp2, inp3 = b.inp, b.inp2, b.inp3
    else:
        inp, inp2, inp3 = host_id, generation, disk_time(clock)
    # phase 2: propose
    mine = Dblock(mbal=our_mbal, bal=our_mbal, inp=inp, inp2=inp2, inp3=inp3, lver=next_lver).with_checksum()
    try:
        write_dblock(storage, geometry, offset, host_id, mine, keep_mode, timeout)
    except errors.StorageError as e:
        e.accepted = mine  # type: ignore[attr-defined]  # it may have landed: keep it from here on
        raise
    view = PaxosView.parse(storage.read(offset, read_size, timeout=timeout), geometry, num_hosts)
    try:
        _check_phase(view.dblocks, view.checksum_ok, num_hosts, next_lver, our_mbal)
    except BallotAbort as e:
        e.accepted = mine  # our phase-2 value is on disk: the next phase 1 keeps it
        raise
    return BallotResult(mine, shared)


def next_mbal(max_mbal: int, max_hosts: int, host_id: int) -> int:
    """Our ballot number: above every mbal seen, congruent to our host_id (6.2)."""
    if max_mbal == 0:
        return host_id
    return max_mbal - (max_mbal % max_hosts) + max_hosts + host_id


# --- acquire -------------------------------------------------------------------------------


def _owner_check(storage: DirectStorage, geometry: Geometry, offset: int, cur: LeaderRecord, ls: Liveness,
                 resource: str, clock: Clock, abort: threading.Event, owner_nowait: bool,
                 timeout: float) -> bool:
    """Wait until the holder of ``cur`` is known dead or gone (True: ballot) or raise -243.

    Returns False when the leader changed while we watched (restart the acquire).
    """
    owner, owner_gen = cur.owner_id, cur.owner_generation
    seen = ls.observed(owner)
    if seen is not None and seen[0] == owner and seen[1] == owner_gen:
        _, _, last_ts, wait_start, last_check, io = seen
        recent = wait_start != 0 and last_check == wait_start
    else:
        last_ts, wait_start, io, recent = 0, clock.monotonic(), 0, False
    while True:
        delta = ls.read_delta(owner)
        # the owner's own io_timeout judges it; the larger of what we saw and what its record
        # says now, so a host we have not observed yet is never judged by our (shorter) one
        owner_io = max(io, delta.io_timeout) or ls.timeouts.io_timeout
        host_dead = Timeouts(owner_io, ls.timeouts.watchdog_fire_timeout).host_dead
        if delta.timestamp == 0:
            return True  # the owner's host id is free: it left cleanly
        if delta.owner_id != owner or delta.owner_generation > owner_gen:
            return True  # the host id changed hands or rejoined: the old generation is gone
        if last_ts == 0:
            last_ts = delta.timestamp
        else:
            if delta.timestamp != last_ts or recent:
                if cur.write_id != cur.owner_id:
                    # another host wrote the leader; the owner may have released via its dblock
                    raw = storage.read(geometry.dblock_offset(offset, owner), geometry.sector_size, timeout=timeout)
                    if Dblock.from_bytes(raw[:DBLOCK_SIZE]).flags & DBLOCK_FL_RELEASED:
                        return True
                raise AcquireIdLive(resource=resource, owner_id=owner, owner_name=delta.resource_name,
                                    owner_generation=owner_gen, lver=cur.lver, path=storage.path, offset=offset)
            if clock.monotonic() - wait_start > host_dead:
                log.info("%s: owner host_id %d generation %d is dead (%.0f s > %d s)", resource, owner, owner_gen,
                         clock.monotonic() - wait_start, host_dead)
                return True
            if owner_nowait:
                raise AcquireOwnedRetry(resource=resource, owner_id=owner, path=storage.path, offset=offset)
        recent = False
        if clock.wait(abort, OWNER_CHECK_INTERVAL):
            raise errors.DiskpaxosError(f"acquire of {resource!r} was cancelled")
        if read_leader(storage, geometry, offset, timeout).to_bytes() != cur.to_bytes():
            return False


def acquire(storage: DirectStorage, geometry: Geometry, offset: int, ls: Liveness, resource: str, *,
            shared: bool = False, lver: int | None = None, keep_mode: ModeBlock | None = None,
            owner_nowait: bool = False, clock: Clock = REAL_CLOCK, abort: threading.Event | None = None,
            rng: random.Random | None = None) -> PaxosLease:
    """Acquire ``resource`` exclusively (or shared) for our host (6.2, 6.4).

    ``keep_mode`` is our SHARED mode block while converting shared to
    exclusive: every dblock write keeps it, so our shared hold never lapses.
    """
    abort = abort or threading.Event()
    rng = rng or random.Random()
    h, g = ls.host_id, ls.generation
    timeout = ls.timeouts.io_timeout
    sh_tries = 0
    last_ballot: Dblock | None = None
    try:
        while True:  # restart from the initial read
            try:
                cur, max_mbal, ours = read_lease(storage, geometry, offset, lockspace=ls.name, resource=resource,
                                                 host_id=h, timeout=timeout)
            except GeometryMismatch as e:
                log.info("%s: the lease's leader says %s; reading it again with that", resource, e.geometry)
                geometry = e.geometry
                continue
            if lver is not None and cur.lver != lver:
                raise AcquireLver(resource=resource, found=cur.lver, expected=lver, path=storage.path,
                                  offset=offset)
            held = cur.timestamp != 0 and not (cur.owner_id == h and cur.owner_generation <= g)
            if held:
                if shared and cur.flags & LFL_SHORT_HOLD:
                    # someone is passing through the leader to take it shared: let them finish
                    if sh_tries >= SH_RETRIES:
                        raise AcquireShRetry(resource=resource, owner_id=cur.owner_id, path=storage.path,
                                             offset=offset)
                    sh_tries += 1
                    if clock.wait(abort, rng.random()):
                        raise _cancelled(resource)
                    continue
                if not _owner_check(storage, geometry, offset, cur, ls, resource, clock, abort, owner_nowait,
                                    timeout):
                    continue
            decided = _ballot_until_decided(storage, geometry, offset, ls, resource, cur, max_mbal, ours,
                                            keep_mode, clock, abort, rng, timeout)
            if decided is None:
                continue  # the leader moved on while we balloted: start over
            chosen, leader, shared_hosts, committed = decided
            last_ballot = chosen
            if not committed:
                flags = cur.flags
                if chosen.inp == h:
                    flags = flags | LFL_SHORT_HOLD if shared else flags & ~LFL_SHORT_HOLD
                leader = leader.replace(flags=flags).with_checksum()
                commit(storage, geometry, offset, leader, timeout)
            if (leader.owner_id, leader.owner_generation) != (h, g):
                raise AcquireOther(resource=resource, lver=leader.lver, owner_id=leader.owner_id,
                                   path=storage.path, offset=offset)
            lease = PaxosLease(ls.name, resource, storage.path, offset, geometry, h, g, shared, leader, chosen)
            if shared:
                _become_shared(storage, lease, timeout, clock)
            elif shared_hosts:
                _clear_or_refuse_shared(storage, lease, shared_hosts, ls, keep_mode, timeout, clock)
            return lease
    except errors.DiskpaxosError:
        if shared:
            # a failed shared attempt leaves our sector released with no mode block (as sanlock)
            done = (last_ballot or Dblock()).replace(flags=DBLOCK_FL_RELEASED)
            try:
                write_dblock(storage, geometry, offset, h, done, None, timeout)
            except errors.DiskpaxosError as e:
                log.warning("%s: could not mark our failed shared attempt released: %s", resource, e)
        raise


def _cancelled(resource: str) -> errors.DiskpaxosError:
    return errors.DiskpaxosError(f"acquire of {resource!r} was cancelled")


def _ballot_until_decided(storage: DirectStorage, geometry: Geometry, offset: int, ls: Liveness, resource: str,
                          cur: LeaderRecord, max_mbal: int, ours: Dblock, keep_mode: ModeBlock | None,
                          clock: Clock, abort: threading.Event, rng: random.Random, timeout: float,
                          ) -> tuple[Dblock, LeaderRecord, list[tuple[int, int]], bool] | None:
    """Ballot for cur.lver + 1 until a value is chosen.

    Returns (our dblock, the leader to commit or already committed, SHARED
    holders seen, already committed?), or None when the acquire must restart.
    """
    h, g = ls.host_id, ls.generation
    next_lver = cur.lver + 1
    our_mbal = next_mbal(max_mbal, cur.max_hosts, h)
    # a value we already accepted for this lver (an earlier attempt reached phase 2) must stay
    # on disk through our next phase 1: erasing it could let another value be chosen
    accepted = ours if ours.lver == next_lver and ours.bal and ours.inp else None
    first = True
    while True:
        if not first:
            leader = read_leader(storage, geometry, offset, timeout)
            check_paxos_leader(leader, path=storage.path, offset=offset, space_name=ls.name,
                               resource_name=resource)
            if leader.lver == next_lver:
                if (leader.owner_id, leader.owner_generation) == (h, g):
                    return Dblock(), leader, [], True
                raise AcquireOwned(resource=resource, lver=leader.lver, owner_id=leader.owner_id,
                                   owner_generation=leader.owner_generation, path=storage.path, offset=offset)
            if leader.lver > next_lver or leader.to_bytes() != cur.to_bytes():
                return None
        first = False
        try:
            ballot = run_ballot(storage, geometry, offset, host_id=h, generation=g, num_hosts=cur.num_hosts,
                                next_lver=next_lver, our_mbal=our_mbal, keep_mode=keep_mode, clock=clock,
                                timeout=timeout, accepted=accepted)
        except BallotAbort as e:
            if e.accepted is not None:
                accepted = e.accepted
            log.debug("%s: ballot %d aborted: %s", resource, our_mbal, e)
            if clock.wait(abort, rng.random()):
                raise _cancelled(resource) from None
            our_mbal += cur.max_hosts
            continue
        d = ballot.dblock
        new = cur.replace(lver=next_lver, owner_id=d.inp, owner_generation=d.inp2, timestamp=d.inp3,
                          write_id=h, write_generation=g, write_timestamp=disk_time(clock))
        return d, new, ballot.shared_hosts, False


def commit(storage: DirectStorage, geometry: Geometry, offset: int, leader: LeaderRecord, timeout: float) -> None:
    """Write the leader that records the chosen owner of a lease version."""
    storage.write(offset, _leader_sector(geometry, leader.with_checksum()), timeout=timeout)


def _become_shared(storage: DirectStorage, lease: PaxosLease, timeout: float, clock: Clock) -> None:
    """After committing ourselves: mark our mode block SHARED, then free the leader (6.4)."""
    released = lease.dblock.replace(flags=DBLOCK_FL_RELEASED)
    write_dblock(storage, lease.geometry, lease.offset, lease.host_id, released,
                 ModeBlock(flags=MBLOCK_SHARED, generation=lease.generation), timeout)
    lease.dblock = released
    release_leader(storage, lease, timeout, clock)


def _clear_or_refuse_shared(storage: DirectStorage, lease: PaxosLease, shared_hosts: list[tuple[int, int]],
                            ls: Liveness, keep_mode: ModeBlock | None, timeout: float, clock: Clock) -> None:
    """An exclusive holder must be alone: clear dead SH holders, give up if any lives (6.4)."""
    g = lease.geometry
    live = []
    for host, _ in shared_hosts:
        raw = storage.read(g.dblock_offset(lease.offset, host), g.sector_size, timeout=timeout)
        mode = ModeBlock.from_bytes(raw[MBLOCK_OFFSET: MBLOCK_OFFSET + MODE_BLOCK_SIZE])
        if not mode.flags & MBLOCK_SHARED or mode.generation == 0:
            continue
        if ls.host_live(host, mode.generation):
            live.append(host)
        else:
            log.info("%s: cleared shared lease of dead host_id %d generation %d", lease.resource, host,
                     mode.generation)
            storage.write(g.dblock_offset(lease.offset, host), bytes(g.sector_size), timeout=timeout)
    if live:
        if keep_mode is not None:
            release_leader(storage, lease, timeout, clock)  # converting: stay shared
        else:
            release(storage, lease, timeout, clock)
        raise SharedHoldersLive(resource=lease.resource, holders=live, path=storage.path, offset=lease.offset)
    if keep_mode is not None:  # converted: our sector drops its SHARED mark
        write_dblock(storage, g, lease.offset, lease.host_id, lease.dblock, None, timeout)


# --- release -------------------------------------------------------------------------------


def release_leader(storage: DirectStorage, lease: PaxosLease, timeout: float, clock: Clock) -> None:
    """Free the leader if it is still the one we committed (6.3 step 2)."""
    leader = read_leader(storage, lease.geometry, lease.offset, timeout)
    if leader.write_id != lease.host_id:
        return  # another host wrote it since; our RELEASED dblock speaks for us
    if leader.lver != lease.leader.lver:
        raise ReleaseLver(resource=lease.resource, found=leader.lver, expected=lease.leader.lver,
                          path=storage.path, offset=lease.offset)
    if leader.timestamp == 0 or (leader.owner_id, leader.owner_generation) != (lease.host_id, lease.generation) \
            or leader.to_bytes() != lease.leader.with_checksum().to_bytes():
        raise ReleaseOwner(resource=lease.resource, reason=f"owner {leader.owner_id}/{leader.owner_generation} "
                           f"timestamp {leader.timestamp}", path=storage.path, offset=lease.offset)
    freed = leader.replace(timestamp=0, write_id=lease.host_id, write_generation=lease.generation,
                           write_timestamp=disk_time(clock), flags=leader.flags & ~LFL_SHORT_HOLD).with_checksum()
    storage.write(lease.offset, _leader_sector(lease.geometry, freed), timeout=timeout)
    lease.leader = freed


def release(storage: DirectStorage, lease: PaxosLease, timeout: float, clock: Clock = REAL_CLOCK) -> None:
    """Release an exclusive or shared lease (6.3, 6.4)."""
    released = lease.dblock.replace(flags=DBLOCK_FL_RELEASED)
    write_dblock(storage, lease.geometry, lease.offset, lease.host_id, released, None, timeout)
    lease.dblock = released
    if not lease.shared:
        release_leader(storage, lease, timeout, clock)


# --- converting, owners, requests ------------------------------------------------------------


def convert(storage: DirectStorage, lease: PaxosLease, ls: Liveness, *, shared: bool, clock: Clock = REAL_CLOCK,
            abort: threading.Event | None = None) -> None:
    """Switch a held lease between shared and exclusive without letting go (6.4).

    Shared to exclusive runs a ballot whose dblock writes keep our SHARED mode
    block, so if other live shared holders refuse us (-11) we are still shared.
    """
    timeout = ls.timeouts.io_timeout
    if shared == lease.shared:
        return
    if shared:  # exclusive -> shared: mark our sector shared, then free the leader
        _become_shared(storage, lease, timeout, clock)
        lease.shared = True
        return
    keep = ModeBlock(flags=MBLOCK_SHARED, generation=lease.generation)
    new = acquire(storage, lease.geometry, lease.offset, ls, lease.resource, keep_mode=keep, clock=clock, abort=abort)
    lease.leader, lease.dblock, lease.shared = new.leader, new.dblock, False


def read_owners(storage: DirectStorage, geometry: Geometry, offset: int, timeout: float) -> list[dict[str, int | bool]]:
    """Who holds the lease by its area alone: the leader's owner and every shared holder.

    The leader must be a valid resource lease (magic, version, checksum), as
    sanlock requires: nothing is decoded from an area that is not one.
    """
    view = PaxosView.parse(storage.read(offset, geometry.align_size, timeout=timeout).copy(), geometry)
    check_paxos_leader(view.leader, path=storage.path, offset=offset)
    owners: list[dict[str, int | bool]] = []
    if view.leader.timestamp != 0:
        owners.append({"host_id": view.leader.owner_id, "generation": view.leader.owner_generation,
                       "timestamp": view.leader.timestamp, "lver": view.leader.lver, "shared": False})
    for host, gen in view.shared_holders():
        owners.append({"host_id": host, "generation": gen, "timestamp": 0, "lver": view.leader.lver,
                       "shared": True})
    return owners


class RequestError(errors.DiskpaxosError):
    template = "{reason}"


class RequestOld(RequestError):
    code = -272  # SANLK_REQUEST_OLD


class RequestLver(RequestError):
    code = -273  # SANLK_REQUEST_LVER


def request(storage: DirectStorage, geometry: Geometry, offset: int, ls: Liveness, resource: str, *,
            lver: int | None, force_mode: int, signal: Callable[[int], None]) -> int:
    """Ask the holder of a lease to give it up (6.5); returns the owner's host_id (0: free).

    ``lver`` None means "the next version" (python3-sanlock's version=None);
    lver 0 with mode 0 clears the request record.  The owner learns of the
    request through a bit we set in our own delta lease (``signal``).
    """
    timeout = ls.timeouts.io_timeout
    where = {"path": storage.path, "offset": geometry.request_offset(offset)}

    def write(req: RequestRecord) -> None:
        buf = bytearray(geometry.sector_size)
        buf[:REQUEST_SIZE] = req.to_bytes()
        storage.write(geometry.request_offset(offset), bytes(buf), timeout=timeout)

    if lver == 0 and force_mode == 0:
        write(RequestRecord())
        return 0
    leader = read_leader(storage, geometry, offset, timeout)
    check_paxos_leader(leader, path=storage.path, offset=offset, space_name=ls.name, resource_name=resource)
    if leader.timestamp == 0:
        return 0
    want = leader.lver + 1 if lver is None else lver
    if leader.lver >= want:
        raise RequestOld(reason=f"lease {resource!r} is already at lver {leader.lver}; request lver {want} is old",
                         **where)
    raw = storage.read(geometry.request_offset(offset), geometry.sector_size, timeout=timeout)
    cur = RequestRecord.from_bytes(raw[:REQUEST_SIZE])
    if cur.magic != REQ_DISK_MAGIC:
        raise errors.RequestMagicError(found=cur.magic, expected=REQ_DISK_MAGIC, **where)
    if cur.version & VERSION_MAJOR_MASK != REQ_DISK_VERSION & VERSION_MAJOR_MASK:
        raise errors.RequestVersionError(found=cur.version, **where)
    if cur.lver > want:
        raise RequestLver(reason=f"a request for lver {cur.lver} is already pending (we asked for {want})", **where)
    write(RequestRecord(lver=want, force_mode=force_mode))
    signal(leader.owner_id)
    return leader.owner_id


def pending_request(storage: DirectStorage, lease: PaxosLease, timeout: float) -> int:
    """The force mode another host asks of us for this held lease (0: none) (6.5 owner side)."""
    raw = storage.read(lease.geometry.request_offset(lease.offset), lease.geometry.sector_size, timeout=timeout)
    req = RequestRecord.from_bytes(raw[:REQUEST_SIZE])
    if req.magic != REQ_DISK_MAGIC or req.version & VERSION_MAJOR_MASK != REQ_DISK_VERSION & VERSION_MAJOR_MASK:
        return 0
    if req.force_mode and req.lver and req.lver > lease.lver:
        return req.force_mode
    return 0
