"""The embeddable engine: join a lockspace and keep our host id alive.

``Lockspace.join(...)`` acquires the host id (blocking: 2 x io_timeout when
free, host_dead when it was held by another name), then two threads run:

- the renewal thread renews every 2 x io_timeout (retrying failed renewals)
  and feeds each area it reads to the host table;
- the expiry monitor fires ``on_renewal_failure`` exactly once when the lease
  is no longer valid locally: id_renewal_fail (8 x io_timeout) after the last
  good renewal, or at once when our record was taken or damaged.  It runs
  apart from the renewal thread so a renewal hung in I/O cannot delay it.

Lifecycle states are an explicit enum; every transition is logged.  The clock
is injectable, so every rule is tested without waiting.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from . import delta_lease, errors, paxos_lease
from .clock import REAL_CLOCK, Clock
from .direct import probe_geometry
from .format import LEADER_SIZE, Geometry, HostState, LeaderRecord, check_delta_leader, check_name
from .host_table import HostInfo, HostTable
from .io_direct import DEFAULT_SYSCALLS, DirectStorage, Syscalls
from .storage_pool import StoragePool
from .timeouts import DEFAULT_IO_TIMEOUT, RENEWAL_RETRY_INTERVAL, WATCHDOG_FIRE_TIMEOUT, Timeouts

log = logging.getLogger(__name__)

HISTORY_LEN = 180  # renewals kept, as sanlock's renewal history


class State(enum.Enum):
    JOINING = "joining"
    JOINED = "joined"
    FAILING = "failing"  # renewals failing past the warning point; still valid
    FAILED = "failed"  # lease no longer valid locally; we stop writing
    LEAVING = "leaving"
    LEFT = "left"


_TRANSITIONS = {
    State.JOINING: {State.JOINED, State.LEFT},
    State.JOINED: {State.FAILING, State.FAILED, State.LEAVING},
    State.FAILING: {State.JOINED, State.FAILED, State.LEAVING},
    State.FAILED: {State.LEAVING, State.LEFT},
    State.LEAVING: {State.LEFT},
    State.LEFT: set(),
}


@dataclass(frozen=True)
class Renewal:
    """One renewal, as ``sanlock client renewal`` lists them."""

    timestamp: int  # written on disk (0: not written)
    local_time: float
    read_ms: float
    write_ms: float
    ok: bool
    error_code: int
    error: str

    def line(self) -> str:
        outcome = "ok" if self.ok else f"error {self.error_code}: {self.error}"
        return (f"timestamp={self.timestamp} read_ms={self.read_ms:.3f} write_ms={self.write_ms:.3f} "
                f"{outcome}")


def default_host_name() -> str:
    """A fresh ``<uuid>.<nodename>`` per join, as sanlock names a daemon run.

    A new name after a crash makes the next join wait host_dead before taking
    the host id back: the safe path when the previous run's state is unknown.
    """
    return f"{uuid.uuid4()}.{os.uname().nodename}"[:47]


FailureCallback = Callable[["Lockspace", str], None]


class _Share:
    """How many local holders share one on-disk shared lease."""

    def __init__(self) -> None:
        self.count = 1


class Lease:
    """A resource lease held through a joined lockspace (context manager)."""

    def __init__(self, lockspace: Lockspace, held: paxos_lease.PaxosLease, key: tuple[str, int],
                 syscalls: Syscalls, share: _Share | None = None) -> None:
        self.lockspace = lockspace
        self.held = held
        self.key = key
        self.syscalls = syscalls
        self.share = share or _Share()
        self.released = False

    def storage(self) -> contextlib.AbstractContextManager[DirectStorage]:
        """The lease's storage, borrowed from the lockspace's pool for one operation."""
        return self.lockspace.pool.borrow(self.held.path, self.syscalls)

    @property
    def resource(self) -> str:
        return self.held.resource

    @property
    def lver(self) -> int:
        return self.held.lver

    @property
    def shared(self) -> bool:
        return self.held.shared

    @property
    def valid(self) -> bool:
        """Held, and our host id still valid: the only time the resource may be used."""
        return not self.released and self.lockspace.valid

    def state_string(self) -> str:
        return self.held.state_string()

    def convert(self, shared: bool) -> None:
        """Switch between shared and exclusive without letting go (-11 if live sharers remain)."""
        if not self.valid:
            raise paxos_lease.LockspaceNotJoined(lockspace=self.lockspace.name)
        if not shared and self.share.count > 1:
            raise paxos_lease.SharedHoldersLive(resource=self.resource, holders="on this host (other processes)",
                                                path=self.held.path, offset=self.held.offset)
        with self.storage() as storage:
            paxos_lease.convert(storage, self.held, self.lockspace, shared=shared, clock=self.lockspace.clock)

    def release(self) -> None:
        """Give the lease back; nothing is written once the lockspace failed."""
        self._release(everyone=False)

    def _release(self, everyone: bool) -> None:
        """Release our hold; the on-disk record goes with the last local holder (or ``everyone``)."""
        with self.lockspace._lock:
            if self.share.count == 0 or (self.released and not everyone):
                # the on-disk record is gone or going (a client's exit and leave() may race here)
                self.released = True
                return
            if self.share.count > 1 and not everyone:  # other local holders still share the on-disk record
                self.share.count -= 1
                self.released = True
                return
            self.share.count = 0
        try:
            if self.lockspace.may_write():
                with self.storage() as storage:
                    paxos_lease.release(storage, self.held, self.lockspace.timeouts.io_timeout,
                                        self.lockspace.clock)
            else:
                log.warning("%s: not released on storage: the lockspace is no longer valid", self.state_string())
        finally:
            self.released = True
            self.lockspace._forget(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lease {self.state_string()}{' released' if self.released else ''}>"


class Lockspace:
    """A joined lockspace: our host id renewed on a thread, the host table, failure callback."""

    def __init__(self, storage: DirectStorage, lease: delta_lease.DeltaLease, *,
                 on_renewal_failure: FailureCallback | None, clock: Clock,
                 watchdog_fire_timeout: int,
                 on_host_signal: Callable[[int], None] | None = None,
                 on_request: Callable[[Lease, int], None] | None = None,
                 on_renewal_warning: Callable[[Lockspace, float], None] | None = None) -> None:
        self.storage = storage
        self.lease = lease
        self.name = lease.space_name
        self.host_id = lease.host_id
        self.host_name = lease.host_name
        self.geometry: Geometry = lease.geometry
        self.timeouts = Timeouts(lease.io_timeout, watchdog_fire_timeout)
        self.clock = clock
        self.on_renewal_failure = on_renewal_failure
        self.on_host_signal = on_host_signal
        self.on_request = on_request
        self.on_renewal_warning = on_renewal_warning  # (lockspace, local expiry time) at 6 x io
        self.history: collections.deque[Renewal] = collections.deque(maxlen=HISTORY_LEN)
        self.host_table = HostTable(self.geometry.max_hosts, lease.io_timeout, lease.host_id,
                                    watchdog_fire_timeout)
        self.failure_reason: str | None = None
        self._state = State.JOINING
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._renewed = threading.Event()
        self._failed_fired = False
        self._last_request_from: dict[int, float] = {}
        self._leases: dict[tuple[str, int], Lease] = {}
        self._acquiring: set[tuple[str, int]] = set()
        self.pool = StoragePool(self.timeouts.io_timeout)
        self._reader: DirectStorage | None = None
        self._reader_lock = threading.Lock()
        self._renewal_thread = threading.Thread(target=self._renewal_loop, daemon=True,
                                                name=f"renew-{self.name}:{self.host_id}")
        self._monitor_thread = threading.Thread(target=self._expiry_loop, daemon=True,
                                                name=f"expiry-{self.name}:{self.host_id}")

    # --- joining --------------------------------------------------------------------

    @classmethod
    def join(cls, name: str, host_id: int, path: str, offset: int = 0, io_timeout: int = DEFAULT_IO_TIMEOUT,
             host_name: str | None = None, *, on_renewal_failure: FailureCallback | None = None,
             on_host_signal: Callable[[int], None] | None = None,
             on_request: Callable[[Lease, int], None] | None = None,
             on_renewal_warning: Callable[[Lockspace, float], None] | None = None,
             clock: Clock = REAL_CLOCK,
             watchdog_fire_timeout: int = WATCHDOG_FIRE_TIMEOUT, syscalls: Syscalls = DEFAULT_SYSCALLS,
             abort: threading.Event | None = None) -> Lockspace:
        """Acquire ``host_id`` in lockspace ``name`` and start renewing it."""
        Timeouts(io_timeout, watchdog_fire_timeout)  # validates
        storage = DirectStorage(path, io_timeout=io_timeout, syscalls=syscalls)
        try:
            kind, geometry, first = probe_geometry(storage, offset)
            if kind != "lockspace":
                raise errors.LeaderMagicError(path=path, offset=offset, field="magic", found=first.magic,
                                              expected="a lockspace (found a resource lease)")
            if not 1 <= host_id <= geometry.max_hosts:
                raise errors.InvalidHostIdError(host_id=host_id, max_hosts=geometry.max_hosts,
                                                path=path, offset=offset)
            lease = delta_lease.acquire(storage, geometry, offset, name, host_id,
                                        host_name or default_host_name(), io_timeout, clock=clock,
                                        abort=abort, watchdog_fire_timeout=watchdog_fire_timeout)
        except BaseException:
            storage.close()
            raise
        ls = cls(storage, lease, on_renewal_failure=on_renewal_failure, clock=clock,
                 watchdog_fire_timeout=watchdog_fire_timeout, on_host_signal=on_host_signal,
                 on_request=on_request, on_renewal_warning=on_renewal_warning)
        ls._set_state(State.JOINED)
        ls._renewal_thread.start()
        ls._monitor_thread.start()
        return ls

    # --- public state ---------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def generation(self) -> int:
        return self.lease.generation

    @property
    def expires_at(self) -> float:
        """Local monotonic time our lease stops being valid without a renewal."""
        return self.lease.last_success + self.timeouts.id_renewal_fail

    @property
    def valid(self) -> bool:
        """True while we may act as the holder of our host id."""
        with self._lock:
            return self._state in (State.JOINED, State.FAILING) and self.clock.monotonic() < self.expires_at

    def may_write(self) -> bool:
        """Our host id is still ours: writes on its behalf (releases while leaving) are allowed."""
        with self._lock:
            return (self._state in (State.JOINED, State.FAILING, State.LEAVING) and not self._failed_fired
                    and self.clock.monotonic() < self.expires_at)

    def hosts(self, include_free: bool = False) -> list[HostInfo]:
        """The host table: every host seen holding an id, and its state now."""
        with self._lock:
            return self.host_table.hosts(self.clock.monotonic(), include_free)

    def host_state(self, host_id: int) -> HostState:
        with self._lock:
            return self.host_table.state(host_id, self.clock.monotonic())

    def renewal_history(self) -> list[Renewal]:
        with self._lock:
            return list(self.history)

    def signal_host(self, host_id: int) -> None:
        """Set host_id's bit in our bitmap for set_bitmap seconds (requests, events)."""
        with self._lock:
            self.lease.bitmap_set_times[host_id] = self.clock.monotonic()

    # --- the paxos layer's view of us (paxos_lease.Liveness) -------------------------

    def observed(self, host_id: int) -> tuple[int, int, int, float, float, int] | None:
        with self._lock:
            t = self.host_table
            i = host_id - 1
            if not t.checked[i]:
                return None
            return (int(t.owner_id[i]), int(t.generation[i]), int(t.timestamp[i]), float(t.last_live[i]),
                    float(t.last_check[i]), int(t.io_timeout[i]))

    def host_live(self, host_id: int, generation: int) -> bool:
        with self._lock:
            return self.host_table.host_live(host_id, generation, self.clock.monotonic())

    def read_delta(self, host_id: int) -> LeaderRecord:
        """Read host_id's delta lease now, through our own reader (not the renewal's storage)."""
        offset = self.geometry.delta_offset(self.lease.ls_offset, host_id)
        with self._reader_lock:
            if self._reader is None:
                self._reader = DirectStorage(self.storage.path, io_timeout=self.timeouts.io_timeout, readonly=True)
            raw = self._reader.read(offset, self.geometry.sector_size)[:LEADER_SIZE]
            rec = LeaderRecord.from_bytes(raw)
        check_delta_leader(rec, path=self.storage.path, offset=offset, space_name=self.name)
        return rec

    # --- resource leases --------------------------------------------------------------

    def acquire(self, resource: str, path: str, offset: int = 0, shared: bool = False,
                lver: int | None = None, *, owner_nowait: bool = False,
                syscalls: Syscalls = DEFAULT_SYSCALLS) -> Lease:
        """Acquire a resource lease for this host (exclusive, or shared)."""
        check_name("resource name", resource)
        key = (os.path.realpath(path), offset)
        with self._lock:
            if not self.valid:
                raise paxos_lease.LockspaceNotJoined(lockspace=self.name)
            first = self._leases.get(key)
            if first is not None and shared and first.shared and lver is None and first.share.count > 0:
                # another local holder shares it: one on-disk record, released by the last holder
                first.share.count += 1
                lease = Lease(self, first.held, key, first.syscalls, first.share)
                log.info("%s:%d shares %s (%d local holders)", self.name, self.host_id, lease.state_string(),
                         first.share.count)
                return lease
            if key in self._leases or key in self._acquiring:
                raise errors.DiskpaxosError(f"resource {resource!r} at {path}:{offset} is already held or being "
                                            "acquired by this host", code=-errno.EEXIST)
            self._acquiring.add(key)
        try:
            with self.pool.borrow(path, syscalls) as storage:
                held = paxos_lease.acquire(storage, self.geometry, offset, self, resource, shared=shared,
                                           lver=lver, owner_nowait=owner_nowait, clock=self.clock, abort=self._stop)
        except BaseException:
            with self._lock:
                self._acquiring.discard(key)
            raise
        lease = Lease(self, held, key, syscalls)
        with self._lock:
            self._acquiring.discard(key)
            self._leases[key] = lease
        log.info("%s:%d acquired %s", self.name, self.host_id, lease.state_string())
        return lease

    def read_owners(self, path: str, offset: int = 0) -> list[dict[str, int | bool]]:
        """Who holds a resource lease, by its area alone (leader owner and shared holders)."""
        with self.pool.borrow(path) as storage:
            geometry = paxos_lease.geometry_of_leader(storage, offset, self.geometry, self.timeouts.io_timeout)
            return paxos_lease.read_owners(storage, geometry, offset, self.timeouts.io_timeout)

    def request(self, resource: str, path: str, offset: int = 0, lver: int | None = None,
                force_mode: int = 1) -> int:
        """Ask a lease's holder to give it up (1: force, 2: graceful); returns its host_id (0: free)."""
        with self.pool.borrow(path) as storage:
            geometry = paxos_lease.geometry_of_leader(storage, offset, self.geometry, self.timeouts.io_timeout)
            return paxos_lease.request(storage, geometry, offset, self, resource, lver=lver,
                                       force_mode=force_mode, signal=self.signal_host)

    def leases(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def _forget(self, lease: Lease) -> None:
        with self._lock:
            self._leases.pop(lease.key, None)

    # --- leaving --------------------------------------------------------------------

    def leave(self) -> None:
        """Stop renewing and release our host id (timestamp 0) if it is still ours."""
        with self._lock:
            if self._state in (State.LEAVING, State.LEFT):
                return
            was_valid = self._state in (State.JOINED, State.FAILING) and \
                self.clock.monotonic() < self.expires_at
            self._set_state(State.LEAVING)
        self._stop.set()
        self._renewed.set()
        self._renewal_thread.join(self.timeouts.io_timeout * 2)
        self._monitor_thread.join(self.timeouts.io_timeout * 2)
        try:
            if not was_valid:
                log.warning("%s:%d left without releasing: the lease was no longer valid", self.name,
                            self.host_id)
            elif self._renewal_thread.is_alive():
                log.warning("%s:%d left without releasing: a renewal is still stuck in I/O", self.name,
                            self.host_id)
            else:
                for held in self.leases():
                    try:
                        held._release(everyone=True)
                    except errors.DiskpaxosError as e:  # the others, and our host id, are still released
                        log.error("%s:%d release of %s failed: %s", self.name, self.host_id, held.state_string(), e)
                delta_lease.release(self.storage, self.lease)
                log.info("%s:%d released host_id (generation %d)", self.name, self.host_id, self.generation)
        except errors.DiskpaxosError as e:
            log.error("%s:%d release failed: %s", self.name, self.host_id, e)
        finally:
            self.pool.close()
            self.storage.close()
            if self._reader is not None:
                self._reader.close()
            with self._lock:
                self._set_state(State.LEFT)

    def __enter__(self) -> Lockspace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.leave()

    # --- internals ------------------------------------------------------------------

    def _set_state(self, new: State) -> None:
        old = self._state
        if new is old:
            return
        if new not in _TRANSITIONS[old]:
            raise RuntimeError(f"lockspace {self.name}:{self.host_id}: illegal transition {old.name} -> {new.name}")
        self._state = new
        log.info("lockspace %s:%d %s -> %s", self.name, self.host_id, old.name, new.name)

    def _fail(self, reason: str) -> None:
        """Enter FAILED and fire the callback, exactly once."""
        with self._lock:
            if self._failed_fired or self._state in (State.LEAVING, State.LEFT):
                return
            self._failed_fired = True
            self.failure_reason = reason
            self._set_state(State.FAILED)
        self._stop.set()
        self._renewed.set()
        log.error("lockspace %s:%d lease lost: %s", self.name, self.host_id, reason)
        if self.on_renewal_failure is not None:
            try:
                self.on_renewal_failure(self, reason)
            except Exception:
                log.exception("on_renewal_failure callback raised")

    def _renewal_loop(self) -> None:
        t = self.timeouts
        previous_ok = True
        while not self._stop.is_set():
            due = self.lease.last_success + t.id_renewal
            delay = due - self.clock.monotonic() if previous_ok else RENEWAL_RETRY_INTERVAL
            if delay > 0 and self.clock.wait(self._stop, delay):
                return
            if self.storage.abandoned_in_flight:
                # the previous renewal's I/O timed out: give it io_timeout to finish
                self.storage.wait_abandoned(t.renewal_read_extend)
                if self._stop.is_set():  # failed (or leaving) while we waited: FAILED writes nothing more
                    return
            result = delta_lease.renew(self.storage, self.lease, clock=self.clock, previous_ok=previous_ok)
            now = self.clock.monotonic()
            with self._lock:
                if self._state in (State.LEAVING, State.LEFT, State.FAILED):
                    return
                self.history.append(Renewal(result.timestamp, now, result.read_ms, result.write_ms, result.ok,
                                            result.error.code if result.error else 0,
                                            str(result.error) if result.error else ""))
                if result.view is not None:
                    changed = self.host_table.observe(result.view, now)
                    signals = self._signals_for_us(result.view, changed, now)
                else:
                    signals = []
                if result.ok and self._state is State.FAILING:
                    self._set_state(State.JOINED)
            for host in signals:
                self._deliver_signal(host)
            if result.ok:
                previous_ok = True
                self._renewed.set()
                log.debug("%s:%d renewed: %s", self.name, self.host_id, self.history[-1].line())
            elif result.corrupt:
                self._fail(f"renewal found our delta lease damaged or taken: {result.error}")
                return
            else:
                previous_ok = False
                log.warning("%s:%d renewal failed: %s", self.name, self.host_id, result.error)

    def _signals_for_us(self, view, changed, now: float) -> list[int]:  # type: ignore[no-untyped-def]
        """Hosts whose changed record carries our bit, debounced (spec 5.5)."""
        byte, bit = divmod(self.host_id - 1, 8)
        bitmaps = view.records["bitmap"][: len(changed)]
        mine = (bitmaps[:, byte] >> bit) & 1
        out = []
        for i in (changed[: len(mine)] & (mine == 1)).nonzero()[0].tolist():
            host = i + 1
            if host == self.host_id:
                continue
            last = self._last_request_from.get(host)
            if last is None or now - last >= self.timeouts.set_bitmap:
                self._last_request_from[host] = now
                out.append(host)
        return out

    def _deliver_signal(self, host: int) -> None:
        log.info("%s:%d signalled by host_id %d", self.name, self.host_id, host)
        if self.on_host_signal is not None:
            try:
                self.on_host_signal(host)
            except Exception:
                log.exception("on_host_signal callback raised")
        for lease in self.leases():  # a signal may carry a request for a lease we hold (6.5)
            try:
                with lease.storage() as storage:
                    mode = paxos_lease.pending_request(storage, lease.held, self.timeouts.io_timeout)
            except errors.DiskpaxosError as e:
                log.warning("%s: cannot read its request record: %s", lease.state_string(), e)
                continue
            if mode and self.on_request is not None:
                log.warning("%s: host_id %d requests it (mode %d)", lease.state_string(), host, mode)
                try:
                    self.on_request(lease, mode)
                except Exception:
                    log.exception("on_request callback raised")

    def _expiry_loop(self) -> None:
        t = self.timeouts
        warned_for = None
        while not self._stop.is_set():
            now = self.clock.monotonic()
            last = self.lease.last_success
            warn_at, fail_at = last + t.id_renewal_warn, last + t.id_renewal_fail
            if now >= fail_at:
                self._fail(f"no successful renewal for {now - last:.1f} s "
                           f"(id_renewal_fail is {t.id_renewal_fail} s)")
                return
            if now >= warn_at and warned_for != last:
                warned_for = last
                with self._lock:
                    if self._state is State.JOINED:
                        self._set_state(State.FAILING)
                log.warning("%s:%d no successful renewal for %.1f s; the lease expires in %.1f s",
                            self.name, self.host_id, now - last, fail_at - now)
                if self.on_renewal_warning is not None:
                    try:
                        self.on_renewal_warning(self, fail_at)
                    except Exception:
                        log.exception("on_renewal_warning callback raised")
            next_check = warn_at if now < warn_at else fail_at
            self._renewed.clear()
            if self.lease.last_success != last:
                continue
            self.clock.wait(self._renewed, next_check - now)


__all__ = ["Lockspace", "State", "Renewal", "HostInfo", "HostState", "default_host_name"]
