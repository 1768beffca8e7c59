"""``diskpaxos run``: hold leases for exactly as long as a command runs.

Joins the lockspace, acquires every resource (all or nothing: on any failure
the ones already taken are released and the command never starts), runs the
command, then releases and leaves when it exits, returning its status.  If the
host id can no longer be renewed the command is fenced: SIGTERM, then SIGKILL
after the kill grace, well before another host may judge us dead.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Sequence

from . import errors
from .lease_strings import LockspaceArg, ResourceArg
from .lockspace import Lease, Lockspace
from .timeouts import KILL_GRACE_SECONDS

log = logging.getLogger(__name__)

EXIT_FENCED = 128 + signal.SIGKILL


class Runner:
    def __init__(self, lockspace: LockspaceArg, resources: Sequence[ResourceArg], command: Sequence[str],
                 io_timeout: int, host_name: str | None = None) -> None:
        for res in resources:
            if res.lockspace != lockspace.name:
                raise errors.UsageError(f"resource {res} is in lockspace {res.lockspace!r}, "
                                        f"not {lockspace.name!r}")
            if len(res.disks) != 1:
                raise errors.UsageError(f"resource {res}: one disk per lease is supported")
        self.lockspace_arg = lockspace
        self.resources = list(resources)
        self.command = list(command)
        self.io_timeout = io_timeout
        self.host_name = host_name
        self.child: subprocess.Popen[bytes] | None = None
        self.fenced = threading.Event()
        self._stop = threading.Event()

    def _fence(self, ls: Lockspace, reason: str) -> None:
        """The lease is gone: the command must stop using the resources now."""
        log.error("fencing %s: %s", self.command[0], reason)
        self.fenced.set()
        child = self.child
        if child is None or child.poll() is not None:
            self._stop.set()
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=min(KILL_GRACE_SECONDS, ls.timeouts.watchdog_fire_timeout / 2))
        except subprocess.TimeoutExpired:
            child.kill()

    def _requested(self, lease: Lease, mode: int) -> None:
        """Another host asks for a lease we hold: the command must let go (6.5).

        Force: SIGKILL; graceful: SIGTERM.  Its exit releases every lease.
        """
        child = self.child
        if child is None or child.poll() is not None:
            return
        log.warning("%s requested by another host (mode %d): stopping %s", lease.state_string(), mode,
                    self.command[0])
        child.send_signal(signal.SIGKILL if mode == 1 else signal.SIGTERM)

    def acquire_all(self, ls: Lockspace) -> list[Lease]:
        held: list[Lease] = []
        try:
            for res in self.resources:
                held.append(ls.acquire(res.name, res.path, res.offset, shared=res.shared, lver=res.lver))
        except BaseException:
            for lease in reversed(held):
                try:
                    lease.release()
                except errors.DiskpaxosError as e:
                    log.error("release of %s failed: %s", lease.state_string(), e)
            raise
        return held

    def run(self) -> int:
        a = self.lockspace_arg
        ls = Lockspace.join(a.name, a.host_id, a.path, a.offset, self.io_timeout, self.host_name,
                            on_renewal_failure=self._fence, on_request=self._requested, abort=self._stop)
        try:
            held = self.acquire_all(ls)
            for lease in held:
                log.info("holding %s", lease.state_string())
            self.child = subprocess.Popen(self.command)
            status = self.child.wait()
            if self.fenced.is_set():
                return EXIT_FENCED
            return status if status >= 0 else 128 - status
        finally:
            if self.child is not None and self.child.poll() is None:
                self.child.kill()
                self.child.wait()
            ls.leave()
