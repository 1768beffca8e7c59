"""``vm migrate``: a live migration over QMP with a strict lease handover.

The order is what keeps two QEMUs from ever holding a disk's lease together:

1. the destination QEMU (``vm run --incoming``) is registered with its daemon
   and holds nothing; the source runs and holds its leases;
2. QEMU migrates; at completion the source is stopped (``postmigrate``) and the
   destination is paused (``-S``);
3. the source's daemon releases the source's leases;
4. the destination's daemon acquires them *with the lease versions the source
   held*, so the acquire fails if anybody took a lease in between (libvirt
   parses that version but does not check it);
5. the destination resumes and the source quits.

If anything fails after step 3, the source takes its leases back (with the same
versions) and resumes, and the destination quits; if the source cannot take
them back either, it stays paused: nobody runs the VM rather than two.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import errors
from ..client import Client, DaemonError
from .qmp import QMP, QMPError
from .vm import INFO_KIND

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0


class MigrationError(errors.DiskpaxosError):
    template = "migration of VM '{vm}': {reason}"


@dataclass
class Migration:
    """What happened, step by step (monotonic seconds since the start)."""

    vm: str = "?"
    source_pid: int = 0
    destination_pid: int = 0
    uri: str = ""
    leases: list[str] = field(default_factory=list)  # held by the destination at the end
    steps: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        self.steps.append((round(time.monotonic() - self.started, 4), text))
        log.info("migration %s: %s", self.vm, text)

    def as_dict(self) -> dict[str, Any]:
        return {"vm": self.vm, "source_pid": self.source_pid, "destination_pid": self.destination_pid,
                "uri": self.uri, "leases": self.leases, "steps": [{"t": t, "step": s} for t, s in self.steps]}


def _registered(daemon: Client, pid: int, side: str, sock: str) -> dict[str, Any]:
    for c in daemon.status()["clients"]:
        if c["pid"] == pid:
            try:
                info = json.loads(c.get("info") or "{}")
            except ValueError:
                info = {}
            if info.get("kind") == INFO_KIND:
                return info
    raise MigrationError(vm="?", reason=f"the {side} QEMU (pid {pid}, QMP {sock}) was not started by "
                                        f"'diskpaxos vm run' on its daemon ({daemon.path})")


def migrate(source_qmp: str, destination_qmp: str, *, uri: str | None = None, source_run_dir: str | None = None,
            destination_run_dir: str | None = None, timeout: float = DEFAULT_TIMEOUT,
            on_released: Callable[[list[str]], None] | None = None) -> Migration:
    """Migrate the VM behind ``source_qmp`` to the QEMU behind ``destination_qmp``; see the module doc.

    ``on_released`` is called with the released lease strings between steps 3 and 4
    (an embedder's hook; the tests use it to take a lease in the gap).
    """
    m = Migration()
    with QMP(source_qmp) as src, QMP(destination_qmp) as dst, \
            Client(source_run_dir) as src_daemon, Client(destination_run_dir) as dst_daemon:
        m.source_pid, m.destination_pid = src.peer_pid(), dst.peer_pid()
        src_info = _registered(src_daemon, m.source_pid, "source", source_qmp)
        dst_info = _registered(dst_daemon, m.destination_pid, "destination", destination_qmp)
        m.vm = str(src_info.get("name", "?"))
        held = src_daemon.inquire(pid=m.source_pid)
        if dst_daemon.inquire(pid=m.destination_pid):
            raise MigrationError(vm=m.vm, reason="the destination already holds leases")
        incoming = dst_info.get("incoming")
        if incoming is None:
            raise MigrationError(vm=m.vm, reason="the destination was not started with 'vm run --incoming'")
        src_state, dst_state = src.status(), dst.status()
        if dst_state != "inmigrate":
            raise MigrationError(vm=m.vm, reason=f"the destination is {dst_state}, not waiting for a migration")
        if src_state not in ("running", "paused"):
            raise MigrationError(vm=m.vm, reason=f"the source is {src_state}")
        m.uri = uri or ("" if incoming == "defer" else str(incoming))
        if not m.uri:
            raise MigrationError(vm=m.vm, reason="the destination listens on 'defer': give --uri")
        m.step(f"source pid {m.source_pid} holds {len(held)} lease(s); destination pid {m.destination_pid} none")
        if incoming == "defer":
            dst.execute("migrate-incoming", uri=m.uri)
        src.execute("migrate", uri=m.uri)
        m.step(f"migrating to {m.uri}")
        result = src.wait_migration(timeout)
        if result.get("status") != "completed":
            _abort_before_release(src, dst, src_state, m)
            raise MigrationError(vm=m.vm, reason=f"QEMU migration {result.get('status')}: "
                                                 f"{result.get('error-desc', 'no reason given')}; "
                                                 "the source keeps its leases and runs on")
        if dst.status() == "running":  # must never run without leases: stop it before anything else
            dst.execute("stop")
            m.step("destination was running without leases: stopped it")
        m.step(f"QEMU migration completed; source is {src.status()}")
        released = src_daemon.release(pid=m.source_pid) if held else []
        m.step(f"source released {released}")
        try:
            if on_released is not None:
                on_released(released)
            taken = dst_daemon.acquire(released, pid=m.destination_pid) if released else []
            m.step(f"destination acquired {taken}")
        except Exception as e:  # whatever failed, the source gets its leases back
            m.step(f"destination could not acquire: {e}")
            _roll_back(src, dst, src_daemon, released, src_state, m, e)
            raise AssertionError("unreachable")  # _roll_back always raises
        # the destination is now the VM: no longer an incoming one (what vm status shows)
        dst_daemon.register(pid=m.destination_pid, info=json.dumps({**dst_info, "incoming": None},
                                                                   separators=(",", ":")))
        if src_state == "running":
            dst.execute("cont")
        m.leases = taken
        m.step(f"destination is {dst.status()}")
        try:
            src.execute("quit")
        except QMPError:
            pass  # it may close the socket before answering
        m.step("source quit")
    return m


def _abort_before_release(src: QMP, dst: QMP, src_state: str, m: Migration) -> None:
    """The migration failed while the source still held everything: make sure it runs, drop the destination."""
    if src_state == "running" and src.status() != "running":
        src.execute("cont")
    _quit(dst)
    m.step("migration failed; source runs, destination quit")


def _roll_back(src: QMP, dst: QMP, src_daemon: Client, released: list[str], src_state: str, m: Migration,
               cause: Exception) -> None:
    _quit(dst)
    try:
        src_daemon.acquire(released, pid=m.source_pid)
    except DaemonError as e:
        m.step(f"source could not take its leases back: {e}")
        raise MigrationError(vm=m.vm, reason=f"the destination could not take the leases ({cause}) and the "
                                             f"source could not take them back ({e}): the VM stays paused on the "
                                             "source, nobody runs it") from None
    if src_state == "running":
        src.execute("cont")
    m.step(f"source took its leases back and is {src.status()}")
    raise MigrationError(vm=m.vm, reason=f"the destination could not take the leases ({cause}); "
                                         "the source took them back and runs on")


def _quit(qmp: QMP) -> None:
    try:
        qmp.execute("quit")
    except QMPError:
        pass


__all__ = ["migrate", "Migration", "MigrationError"]
