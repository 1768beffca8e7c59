"""What the daemon holds, for whom: lockspaces, client processes, their leases, fencing.

Thread-safe and synchronous: the socket server calls it from worker threads.
Client processes are known by pidfd; the server watches each pidfd and calls
``client_exited`` when the process is gone, which releases its leases at once.

Fencing, when a lockspace's renewals have failed up to the warning point
(6 x io_timeout): each client holding leases in it gets its killpath command
(if it set one), then SIGTERM, then SIGKILL, all within the time left before
the lease expires locally (8 x io_timeout), and well before another host may
take the leases (8 x io_timeout + the watchdog fire timeout).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .. import errors
from ..fault_storage import load_plan
from ..io_direct import DEFAULT_SYSCALLS
from ..lease_strings import LockspaceArg, ResourceArg, parse_lockspace, parse_resource
from ..lockspace import Lease, Lockspace
from . import watchdog
from .config import Config

log = logging.getLogger(__name__)

MAX_OWNER_NAME = 48  # sanlock's SANLK_NAME_LEN
MAX_INFO = 16 * 1024
FENCE_MARGIN = 0.5  # seconds kept between the last SIGKILL and the local lease expiry


class DaemonError(errors.DiskpaxosError):
    template = "{reason}"


@dataclass
class Client:
    pid: int
    pidfd: int
    leases: dict[str, Lease] = field(default_factory=dict)  # resource string (no lver) -> lease
    killpath: list[str] | None = None
    killpath_cred: tuple[int, int] = (0, 0)  # (uid, gid) of whoever set the killpath: it runs as them
    fencing: bool = False
    name: str = ""  # owner name, as sanlock's owner_name (libvirt passes the VM's name)
    info: str = ""  # what the front end keeps with the process (the VM front end: JSON of its disks)


def _key(res: ResourceArg) -> str:
    return f"{res.lockspace}:{res.name}:{res.path}:{res.offset}"


class Manager:
    def __init__(self, config: Config, watchdog_sock: socket.socket | None = None) -> None:
        self.config = config
        self.lockspaces: dict[str, Lockspace] = {}
        self.joining: set[str] = set()
        self.clients: dict[int, Client] = {}
        self.watchdog_sock = watchdog_sock
        self.started = time.monotonic()
        self.counters = {"acquires": 0, "acquire_failures": 0, "releases": 0, "clients_exited": 0,
                         "fenced": 0}
        self._lock = threading.RLock()
        self.syscalls = DEFAULT_SYSCALLS
        if config.fault_plan:
            self.syscalls = load_plan(config.fault_plan)
            log.warning("lease I/O goes through the fault plan %s", config.fault_plan)

    # --- lockspaces ------------------------------------------------------------------

    def add_lockspace(self, text: str, io_timeout: int | None, host_name: str | None) -> dict[str, object]:
        ls_arg = parse_lockspace(text)
        if ls_arg.host_id == 0:
            raise errors.UsageError(f"lockspace {text!r}: host_id must be 1 or more")
        if io_timeout is not None and not 0 <= io_timeout <= 255:  # 0: the configured default
            raise errors.UsageError(f"io_timeout {io_timeout} is outside 1..255")
        with self._lock:
            if ls_arg.name in self.lockspaces or ls_arg.name in self.joining:
                raise DaemonError(f"lockspace {ls_arg.name!r} is already added", code=-errno.EEXIST)
            self.joining.add(ls_arg.name)
        try:
            ls = Lockspace.join(ls_arg.name, ls_arg.host_id, ls_arg.path, ls_arg.offset,
                                io_timeout or self.config.io_timeout, host_name,
                                on_renewal_warning=self._renewal_warning, on_renewal_failure=self._renewal_failure,
                                on_request=self._requested, watchdog_fire_timeout=self.config.watchdog_fire_timeout,
                                syscalls=self.syscalls)
        finally:
            with self._lock:
                self.joining.discard(ls_arg.name)
        with self._lock:
            self.lockspaces[ls_arg.name] = ls
        return {"lockspace": ls_arg.name, "host_id": ls.host_id, "generation": ls.generation}

    def _lockspace(self, name: str) -> Lockspace:
        with self._lock:
            ls = self.lockspaces.get(name)
        if ls is None:
            raise DaemonError(f"lockspace {name!r} is not added here", code=-errno.ENOSPC)
        return ls

    def rem_lockspace(self, text: str) -> dict[str, object]:
        ls_arg = parse_lockspace(text)
        ls = self._lockspace(ls_arg.name)
        with self._lock:
            holders = [c.pid for c in self.clients.values() if any(k.startswith(f"{ls.name}:") for k in c.leases)]
            if holders:
                raise DaemonError(f"lockspace {ls.name!r} has leases held by pid(s) {holders}", code=-errno.EBUSY)
            del self.lockspaces[ls.name]
        ls.leave()
        return {"lockspace": ls.name}

    def inq_lockspace(self, text: str) -> dict[str, object]:
        ls = self._lockspace(parse_lockspace(text).name)
        return {"lockspace": ls.name, "host_id": ls.host_id, "generation": ls.generation,
                "state": ls.state.value, "valid": ls.valid}

    # --- clients ---------------------------------------------------------------------

    def register(self, pid: int, name: str | None = None, info: str | None = None) -> Client:
        """Track ``pid``; registering again only updates its name and info."""
        if name is not None and len(name.encode()) > MAX_OWNER_NAME:
            raise errors.UsageError(f"register: name is longer than {MAX_OWNER_NAME} bytes")
        if info is not None and len(info.encode()) > MAX_INFO:
            raise errors.UsageError(f"register: info is longer than {MAX_INFO} bytes")
        with self._lock:
            client = self.clients.get(pid)
            if client is not None:
                client.name = client.name if name is None else name
                client.info = client.info if info is None else info
                return client
        if pid <= 0:
            raise DaemonError(f"pid {pid} is not a process id", code=-errno.EINVAL)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise DaemonError(f"pid {pid} does not exist", code=-errno.ESRCH) from None
        except (OverflowError, OSError) as e:
            raise DaemonError(f"pid {pid}: cannot open a pidfd: {getattr(e, 'strerror', None) or e}",
                              code=-(getattr(e, "errno", None) or errno.EINVAL)) from None
        client = Client(pid, pidfd, name=name or "", info=info or "")
        with self._lock:
            self.clients[pid] = client
        log.info("registered client pid %d", pid)
        return client

    def client(self, pid: int) -> Client:
        with self._lock:
            client = self.clients.get(pid)
        if client is None:
            raise DaemonError(f"pid {pid} is not registered", code=-errno.ENOENT)
        return client

    def set_killpath(self, pid: int, argv: list[str], cred: tuple[int, int] = (0, 0)) -> None:
        """``cred``: (uid, gid) of the requester; a non-root client's killpath never runs as root."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise errors.UsageError("killpath must be a non-empty list of strings")
        client = self.client(pid)
        client.killpath, client.killpath_cred = list(argv), cred

    def client_exited(self, pid: int) -> int:
        """The process is gone: release every lease it held, now.  Returns how many."""
        with self._lock:
            client = self.clients.pop(pid, None)
        if client is None:
            return 0
        self.counters["clients_exited"] += 1
        released = 0
        for lease in list(client.leases.values()):
            try:
                lease.release()
                released += 1
            except errors.DiskpaxosError as e:
                log.error("release of %s after pid %d exited failed: %s", lease.state_string(), pid, e)
        self._unprotect(client)
        os.close(client.pidfd)
        log.info("client pid %d exited; released %d lease(s)", pid, released)
        return released

    # --- leases ----------------------------------------------------------------------

    def acquire(self, pid: int, resources: list[str]) -> list[str]:
        """Acquire every resource for pid, all or nothing."""
        client = self.client(pid)
        parsed = [parse_resource(r) for r in resources]
        if not parsed:
            raise errors.UsageError("acquire: no resources given")
        taken: list[tuple[str, Lease]] = []
        try:
            for res in parsed:
                if len(res.disks) != 1:
                    raise errors.UsageError(f"resource {res}: one disk per lease is supported")
                if _key(res) in client.leases:
                    raise DaemonError(f"pid {pid} already holds {_key(res)}", code=-errno.EEXIST)
                ls = self._lockspace(res.lockspace)
                lease = ls.acquire(res.name, res.path, res.offset, shared=res.shared, lver=res.lver,
                                   syscalls=self.syscalls)
                taken.append((_key(res), lease))
        except BaseException:
            self.counters["acquire_failures"] += 1
            for _, lease in reversed(taken):
                try:
                    lease.release()
                except errors.DiskpaxosError as e:
                    log.error("release of %s after a failed acquire: %s", lease.state_string(), e)
            raise
        with self._lock:
            alive = pid in self.clients
            if alive:
                client.leases.update(taken)
        if not alive:  # the client died while we acquired: nothing may stay held for it
            for _, lease in taken:
                lease.release()
            raise DaemonError(f"pid {pid} exited during acquire", code=-errno.ESRCH)
        self.counters["acquires"] += len(taken)
        self._protect(client)
        return [lease.state_string() for _, lease in taken]

    def release(self, pid: int, resources: list[str] | None) -> list[str]:
        client = self.client(pid)
        keys = list(client.leases) if not resources else [_key(parse_resource(r)) for r in resources]
        missing = [k for k in keys if k not in client.leases]
        if missing:
            raise DaemonError(f"pid {pid} does not hold {missing[0]}", code=-errno.ENOENT)
        done = []
        for key in keys:
            lease = client.leases.pop(key)
            lease.release()
            done.append(lease.state_string())
        self.counters["releases"] += len(done)
        if not client.leases:
            self._unprotect(client)
        return done

    def convert(self, pid: int, resource: str, shared: bool) -> str:
        client = self.client(pid)
        key = _key(parse_resource(resource))
        lease = client.leases.get(key)
        if lease is None:
            raise DaemonError(f"pid {pid} does not hold {key}", code=-errno.ENOENT)
        lease.convert(shared)
        return lease.state_string()

    def inquire(self, pid: int) -> list[str]:
        return [lease.state_string() for lease in self.client(pid).leases.values()]

    def request(self, resource: str, force_mode: int) -> int:
        res = parse_resource(resource)
        return self._lockspace(res.lockspace).request(res.name, res.path, res.offset, res.lver, force_mode)

    def read_owners(self, resource: str) -> list[dict[str, object]]:
        res = parse_resource(resource)
        return self._lockspace(res.lockspace).read_owners(res.path, res.offset)  # type: ignore[return-value]

    # --- fencing ---------------------------------------------------------------------

    def _holders(self, ls: Lockspace) -> list[Client]:
        with self._lock:
            return [c for c in self.clients.values() if any(lease.lockspace is ls for lease in c.leases.values())]

    def _renewal_warning(self, ls: Lockspace, expires_at: float) -> None:
        for client in self._holders(ls):
            if not client.fencing:
                client.fencing = True
                threading.Thread(target=self._fence, args=(client, expires_at, f"lockspace {ls.name} renewals failing"),
                                 daemon=True, name=f"fence-{client.pid}").start()

    def _renewal_failure(self, ls: Lockspace, reason: str) -> None:
        # the lease is gone: anyone still holding must die now (normally fencing finished already)
        for client in self._holders(ls):
            self._signal(client, signal.SIGKILL)
            with self._lock:
                for key in [k for k, lease in client.leases.items() if lease.lockspace is ls]:
                    client.leases.pop(key).released = True
            if not client.fencing:
                client.fencing = True
                self.counters["fenced"] += 1

    def _requested(self, lease: Lease, mode: int) -> None:
        """Another host asks for a lease we hold for a client (6.5): force kills, graceful asks."""
        with self._lock:
            owners = [c for c in self.clients.values() if lease in c.leases.values()]
        for client in owners:
            if mode == 1:
                self._signal(client, signal.SIGKILL)
            elif client.killpath:
                self._run_killpath(client)
            else:
                self._signal(client, signal.SIGTERM)

    def _signal(self, client: Client, sig: int) -> None:
        # under the lock, and only while registered: client_exited closes the pidfd after removing
        # the client, and a closed pidfd's number may already name another process's pidfd
        with self._lock:
            if self.clients.get(client.pid) is not client:
                return
            try:
                signal.pidfd_send_signal(client.pidfd, sig)
            except (ProcessLookupError, OSError):
                pass

    def _run_killpath(self, client: Client) -> None:
        assert client.killpath is not None
        uid, gid = client.killpath_cred
        as_user = {"user": uid, "group": gid, "extra_groups": []} if uid != 0 else {}
        try:
            subprocess.Popen([*client.killpath, str(client.pid)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             **as_user)
        except (OSError, subprocess.SubprocessError) as e:
            log.error("killpath %s for pid %d failed: %s", client.killpath[0], client.pid, e)

    def _exited(self, client: Client, timeout: float) -> bool:
        import select
        if timeout <= 0:
            timeout = 0
        with self._lock:
            if self.clients.get(client.pid) is not client:
                return True  # client_exited ran: the process is gone (and its pidfd closed)
        ready, _, _ = select.select([client.pidfd], [], [], timeout)
        return bool(ready)

    def _fence(self, client: Client, expires_at: float, why: str) -> None:
        """killpath, then SIGTERM, then SIGKILL, all before the lease expires locally."""
        self.counters["fenced"] += 1
        budget = max(0.0, expires_at - FENCE_MARGIN - time.monotonic())
        step = min(self.config.kill_grace, budget / 3)
        log.error("fencing pid %d: %s (%.1f s to lease expiry)", client.pid, why, budget + FENCE_MARGIN)
        if client.killpath:
            self._run_killpath(client)
            if self._exited(client, step):
                return
        self._signal(client, signal.SIGTERM)
        if self._exited(client, step):
            return
        self._signal(client, signal.SIGKILL)

    # --- watchdog ----------------------------------------------------------------------

    def _protect(self, client: Client) -> None:
        if self.watchdog_sock is not None:
            with self._lock:  # as _signal: never pass on a pidfd client_exited may have closed
                if self.clients.get(client.pid) is not client:
                    return
                try:
                    watchdog.send_protect(self.watchdog_sock, client.pid, client.pidfd)
                    # and the deadline now: the helper's last one may be "inf" (nothing held), and
                    # a daemon that hangs before its next heartbeat must not leave the client unguarded
                    watchdog.send_beat(self.watchdog_sock, self.deadline())
                except OSError as e:
                    log.error("cannot reach the watchdog helper: %s", e)

    def beat(self) -> None:
        """Send the watchdog helper the deadline now; under the lock, so an older deadline computed
        by another thread can never arrive after a newer one."""
        if self.watchdog_sock is not None:
            with self._lock:
                watchdog.send_beat(self.watchdog_sock, self.deadline())

    def _unprotect(self, client: Client) -> None:
        if self.watchdog_sock is not None:
            try:
                watchdog.send_unprotect(self.watchdog_sock, client.pid)
            except OSError as e:
                log.error("cannot reach the watchdog helper: %s", e)

    def deadline(self) -> float:
        """When protected clients must be dead if we say nothing more: the earliest lease expiry."""
        with self._lock:
            holding = {lease.lockspace for c in self.clients.values() for lease in c.leases.values()}
        return min((ls.expires_at for ls in holding), default=float("inf"))

    # --- status ------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                "lockspaces": [{"lockspace": ls.name, "host_id": ls.host_id, "generation": ls.generation,
                                "state": ls.state.value, "valid": ls.valid, "io_timeout": ls.timeouts.io_timeout}
                               for ls in self.lockspaces.values()],
                "clients": [{"pid": c.pid, "name": c.name, "info": c.info,
                             "leases": [lease.state_string() for lease in c.leases.values()],
                             "fencing": c.fencing} for c in self.clients.values()],
            }

    def host_status(self, name: str) -> list[dict[str, object]]:
        return [h.as_dict() for h in self._lockspace(name).hosts()]

    def renewal(self, name: str) -> list[dict[str, object]]:
        return [r.__dict__ for r in self._lockspace(name).renewal_history()]

    def metrics(self) -> str:
        """Prometheus text: each metric's samples in one group after its TYPE line, as scrapers require."""
        with self._lock:  # a consistent snapshot: other threads add and remove clients and lockspaces
            lockspaces = list(self.lockspaces.values())
            clients = len(self.clients)
            leases = sum(len(c.leases) for c in self.clients.values())
            counters = dict(self.counters)
        lines = ["# TYPE diskpaxos_lockspaces gauge", f"diskpaxos_lockspaces {len(lockspaces)}",
                 "# TYPE diskpaxos_clients gauge", f"diskpaxos_clients {clients}",
                 "# TYPE diskpaxos_leases gauge", f"diskpaxos_leases {leases}"]
        for name, value in counters.items():
            lines += [f"# TYPE diskpaxos_{name}_total counter", f"diskpaxos_{name}_total {value}"]
        lines.append("# TYPE diskpaxos_renewal_ms gauge")
        for ls in lockspaces:
            history = ls.renewal_history()
            if history:
                last = history[-1]
                lines.append(f'diskpaxos_renewal_ms{{lockspace="{ls.name}",io="read"}} {last.read_ms:.3f}')
                lines.append(f'diskpaxos_renewal_ms{{lockspace="{ls.name}",io="write"}} {last.write_ms:.3f}')
        lines.append("# TYPE diskpaxos_lockspace_valid gauge")
        for ls in lockspaces:
            lines.append(f'diskpaxos_lockspace_valid{{lockspace="{ls.name}"}} {int(ls.valid)}')
        return "\n".join(lines) + "\n"

    def shutdown(self, force: bool) -> None:
        with self._lock:
            holders = [c.pid for c in self.clients.values() if c.leases]
        if holders and not force:
            raise DaemonError(f"clients still hold leases: pid(s) {holders}", code=-errno.EBUSY)
        for pid in list(self.clients):
            client = self.clients[pid]
            if client.leases:  # forced: a holder must be dead before its leases are released
                self._signal(client, signal.SIGKILL)
                self._exited(client, self.config.kill_grace)
            self.client_exited(pid)
        for name in list(self.lockspaces):
            self.lockspaces.pop(name).leave()


__all__ = ["Manager", "Client", "DaemonError", "LockspaceArg"]
