"""``vm run``: take every lease a VM's disks need, then become its QEMU.

The process registers its own pid with the daemon, acquires all leases (all or
nothing) for that pid, closes the daemon connection and execs QEMU.  exec keeps
the pid, so the daemon's pidfd now watches QEMU: the leases live exactly as long
as QEMU, whatever happens to the program that started it (libvirt gets the same
effect by registering in the pre-exec child).  A busy disk is reported in one
line and QEMU never starts, so it never opens the image.

With ``--incoming`` the VM is registered but holds nothing, and QEMU is started
paused (``-S``): ``vm migrate`` gives it the leases after the source released them.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from .. import errors
from ..client import Client, DaemonError
from ..lease_strings import parse_resource
from ..timeouts import DEFAULT_IO_TIMEOUT, Timeouts
from . import leases as lease_plan
from .args import Disk, find_disks, option_values, vm_name
from .config import QemuConfig

log = logging.getLogger(__name__)

INFO_KIND = "diskpaxos-vm"
MAX_NAME = 48  # the daemon keeps owner names as sanlock does (SANLK_NAME_LEN)
EMULATOR = "qemu-system-x86_64"


class DiskBusyError(errors.DiskpaxosError):
    """A lease the VM needs is held by someone else; the message says by whom."""

    template = "{reason}"


@dataclass
class VMPlan:
    """What ``vm run`` will do: the command, the VM's name, its disks and leases."""

    name: str
    argv: list[str]
    disks: list[Disk]
    leases: list[lease_plan.PlannedLease]
    incoming: str | None = None
    explicit: list[str] = field(default_factory=list)

    def info(self) -> str:
        """What the daemon keeps with the QEMU pid, for ``vm status`` and ``vm migrate``."""
        by_disk = {pl.disk: str(pl.resource) for pl in self.leases if pl.disk is not None}
        return json.dumps({
            "kind": INFO_KIND, "name": self.name, "emulator": self.argv[0], "incoming": self.incoming,
            "disks": [{**asdict(d), "lease": by_disk.get(d.path)} for d in self.disks],
            "explicit_leases": self.explicit,
        }, separators=(",", ":"))


def prepare(config: QemuConfig, argv: list[str], name: str | None = None, explicit: list[str] | None = None,
            incoming: str | None = None) -> VMPlan:
    """Read the disks from QEMU's arguments and decide the leases (no I/O, no daemon)."""
    if not argv:
        raise errors.UsageError("no QEMU command given (diskpaxos vm run [OPTIONS] -- QEMU [ARGS])")
    qemu_args = argv[1:]
    disks = find_disks(qemu_args)
    already_incoming = option_values(qemu_args, "-incoming")
    if incoming is not None and already_incoming:
        raise errors.UsageError("--incoming given and QEMU's arguments already have -incoming: give one")
    incoming = incoming if incoming is not None else (already_incoming[-1] if already_incoming else None)
    command = list(argv)
    if incoming is not None:
        if not already_incoming:
            command += ["-incoming", incoming]
        if "-S" not in qemu_args:  # the destination must not run before it holds the leases
            command.append("-S")
    vm = name or vm_name(qemu_args) or _name_from_disks(disks) or f"qemu-{os.getpid()}"
    if len(vm.encode()) > MAX_NAME:
        raise errors.UsageError(f"VM name {vm!r} is longer than {MAX_NAME} bytes")
    planned = lease_plan.plan(config, disks, list(explicit or []))
    for pl in planned:
        if pl.disk is not None and not os.path.isabs(pl.disk):
            # the lease is named by the path string: "disk.img" here and "/srv/disk.img" elsewhere
            # would be two leases for one image, i.e. no protection (libvirt only has absolute paths)
            raise errors.UsageError(f"disk image {pl.disk!r} is a relative path: give its absolute path, "
                                    "the same on every host (its lease is named by the path as written)")
    return VMPlan(vm, command, disks, planned, incoming, list(explicit or []))


def needs_leases_check(qemu_args: list[str]) -> bool:
    """Whether a command line can touch a disk or wait for a migration: if not, no config or daemon is needed."""
    return bool(find_disks(qemu_args) or option_values(qemu_args, "-incoming"))


def _name_from_disks(disks: list[Disk]) -> str | None:
    return os.path.basename(disks[0].path)[:MAX_NAME] if disks else None


def ensure_joined(client: Client, config: QemuConfig) -> None:
    """The daemon holds our host id in ``__LIBVIRT__DISKS__`` (creating the lockspace file first if missing).

    Like libvirt's plugin init, but on first use: joining takes about 2 x io_timeout + 1 s.
    A daemon already joined with another host id is an error, not something to paper over.
    """
    try:
        state = client.inq_lockspace(str(lease_plan.lockspace_arg(config)))
    except DaemonError as e:
        if e.code != -errno.ENOSPC:
            raise
    else:
        if state["host_id"] != config.host_id:
            raise errors.UsageError(f"the daemon joined {lease_plan.LOCKSPACE} as host_id {state['host_id']}, "
                                    f"but {config.path or 'the config'} says host_id {config.host_id}")
        return
    lease_plan.ensure_lockspace_file(config)
    try:
        client.add_lockspace(str(lease_plan.lockspace_arg(config)), io_timeout=config.io_timeout or None)
    except DaemonError as e:
        if e.code != -errno.EEXIST:
            raise
        _wait_joined(client, config)  # another vm run is joining it: wait for that join, as libvirt does


def _wait_joined(client: Client, config: QemuConfig) -> None:
    """Until the join another process started has finished (bounded by the longest a join may take)."""
    timeouts = Timeouts(config.io_timeout or DEFAULT_IO_TIMEOUT)
    give_up = time.monotonic() + timeouts.delta_acquire_held_wait + timeouts.delta_short_delay + 4 * timeouts.io_timeout
    while True:
        try:
            client.inq_lockspace(str(lease_plan.lockspace_arg(config)))
            return
        except DaemonError as e:
            if e.code != -errno.ENOSPC or time.monotonic() > give_up:
                raise
        time.sleep(0.1)


def acquire(plan: VMPlan, config: QemuConfig, client: Client, pid: int) -> list[str]:
    """Register ``pid`` as the VM and take all its leases (none with --incoming).  Returns the lease strings."""
    if any(pl.auto for pl in plan.leases):
        ensure_joined(client, config)
        for pl in plan.leases:
            lease_plan.ensure_lease_file(config, pl)
    client.register(pid=pid, name=plan.name, info=plan.info())
    if plan.incoming is not None or not plan.leases:
        return []
    try:
        return client.acquire([str(pl.resource) for pl in plan.leases], pid=pid)
    except DaemonError as e:
        raise busy_error(client, plan, e, pid) from None


def busy_error(client: Client, plan: VMPlan, cause: DaemonError, pid: int) -> errors.DiskpaxosError:
    """One line naming the busy disk and its holder, as far as the daemon and storage tell."""
    for pl in plan.leases:
        holder = describe_holder(client, pl, exclude_pid=pid)
        if holder is not None:
            what = f"disk image {pl.disk}" if pl.disk is not None else f"lease {pl.resource}"
            return DiskBusyError(f"{what} is already in use {holder}", code=cause.code)
    return cause


def _host_name(client: Client, lockspace: str, host_id: int) -> str:
    try:
        hosts = client.host_status(lockspace)
    except DaemonError:
        return "?"
    return next((str(h["name"]) for h in hosts if h["host_id"] == host_id and h.get("name")), "?")


def describe_holder(client: Client, pl: lease_plan.PlannedLease, exclude_pid: int) -> str | None:
    """Who holds this lease against us: a VM of this daemon, else the owner host recorded on storage."""
    want = pl.resource
    status = client.status()
    for c in status["clients"]:
        if c["pid"] == exclude_pid:
            continue
        for text in c["leases"]:
            held = parse_resource(text)
            if (held.lockspace, held.name, held.path, held.offset) == (want.lockspace, want.name, want.path,
                                                                       want.offset):
                here = next((ls for ls in status["lockspaces"] if ls["lockspace"] == want.lockspace), None)
                host_id = here["host_id"] if here else 0
                host = _host_name(client, want.lockspace, host_id)
                mode = " (shared)" if held.shared else ""
                return f"by VM '{c['name'] or '?'}'{mode} (pid {c['pid']}) on host ID {host_id} '{host}'"
    try:
        owners = client.read_owners(str(want))
    except DaemonError:
        return None
    ours = next((ls["host_id"] for ls in status["lockspaces"] if ls["lockspace"] == want.lockspace), None)
    others = [o for o in owners if o["host_id"] != ours] or owners
    if not others:
        return None
    o = others[0]
    mode = "shared " if o["shared"] else ""
    host = _host_name(client, want.lockspace, int(o["host_id"]))
    extra = f" and {len(others) - 1} more host(s)" if len(others) > 1 else ""
    return (f"{mode}on host ID {o['host_id']} '{host}'{extra} (storage tells the owner's host, not its VM: "
            f"generation {o['generation']}, lver {o['lver']})")


def find_emulator(name: str = EMULATOR, exclude: str | None = None) -> str:
    """The real emulator on PATH, never ``exclude`` (the wrapper itself when it stands in for QEMU)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if exclude is None or not os.path.samefile(candidate, exclude):
                return candidate
    found = shutil.which(name)
    raise errors.UsageError(f"{name} not found on PATH" + (" (only this wrapper)" if found else ""))


def run(plan: VMPlan, config: QemuConfig, run_dir: str | None) -> None:
    """Take the leases for this process, then exec QEMU; returns only by raising."""
    if plan.leases or plan.incoming is not None:
        with Client(run_dir) as client:
            taken = acquire(plan, config, client, os.getpid())
        for lease in taken:
            log.info("VM %s holds %s", plan.name, lease)
    elif plan.disks:  # nothing to hold (read-only disks): registered only so that vm status lists it
        try:
            with Client(run_dir) as client:
                client.register(name=plan.name, info=plan.info())
        except DaemonError as e:
            log.info("VM %s needs no lease and is not listed by the daemon: %s", plan.name, e)
    logging.shutdown()
    try:
        os.execvp(plan.argv[0], plan.argv)
    except OSError as e:
        raise errors.DiskpaxosError(f"{plan.argv[0]}: cannot execute: {e.strerror}") from None


__all__ = ["VMPlan", "DiskBusyError", "prepare", "needs_leases_check", "ensure_joined", "acquire", "describe_holder", "find_emulator",
           "run", "INFO_KIND"]
