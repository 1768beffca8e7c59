"""``diskpaxos vm run|migrate|status`` and the ``diskpaxos-qemu`` emulator wrapper."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from . import errors
from .client import Client
from .qemu import config as qemu_config
from .qemu import vm as qemu_vm
from .qemu.migrate import migrate as qemu_migrate
from .qemu.status import format_status, vm_status

EMULATOR_ENV = "DISKPAXOS_EMULATOR"


def _run_dir_option(f: Any) -> Any:
    return click.option("--run-dir", default=None, envvar="DISKPAXOS_RUN_DIR",
                        help="The daemon's run dir (default $DISKPAXOS_RUN_DIR or /run/diskpaxos).")(f)


def register(main: click.Group, command_class: type[click.Command], group_class: type[click.Group]) -> None:
    @main.group("vm", cls=group_class)
    def vm_group() -> None:
        """Run QEMU/KVM VMs whose disks are protected by leases (libvirt sanlock-compatible names)."""

    @vm_group.command("run", cls=command_class,
                      context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    @click.option("--name", default=None, help="The VM's name (default: QEMU's -name, else the first disk's).")
    @click.option("--config", "config_path", default=None,
                  help=f"qemu-sanlock.conf-style config (default ${qemu_config.ENV} or {qemu_config.DEFAULT_PATH}).")
    @click.option("--lease", "leases", multiple=True, metavar="LS:KEY:PATH:OFFSET",
                  help="An explicit exclusive lease, as libvirt's <lease> (repeatable).")
    @click.option("--incoming", default=None, metavar="URI",
                  help="Start as a migration destination: QEMU gets -incoming URI and -S, and no lease until "
                       "'vm migrate' hands them over.")
    @_run_dir_option
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    def run(name: str | None, config_path: str | None, leases: tuple[str, ...], incoming: str | None,
            run_dir: str | None, command: tuple[str, ...]) -> None:
        """Take every disk lease, then exec QEMU (diskpaxos vm run [OPTIONS] -- QEMU [ARGS])."""
        cfg = qemu_config.load(config_path)
        plan = qemu_vm.prepare(cfg, list(command), name, list(leases), incoming)
        qemu_vm.run(plan, cfg, run_dir)

    @vm_group.command("migrate", cls=command_class)
    @click.option("--from", "source", required=True, metavar="QMP_SOCKET", help="The source QEMU's QMP socket.")
    @click.option("--to", "destination", required=True, metavar="QMP_SOCKET",
                  help="The destination QEMU's QMP socket (started by 'vm run --incoming').")
    @click.option("--uri", default=None, help="Migration URI (default: the destination's -incoming URI).")
    @click.option("--from-run-dir", default=None, envvar="DISKPAXOS_RUN_DIR",
                  help="The source host's daemon run dir.")
    @click.option("--to-run-dir", default=None, help="The destination host's daemon run dir (default: the source's).")
    @click.option("--timeout", default=600.0, show_default=True, help="Seconds the QEMU migration may take.")
    @click.option("--json", "as_json", is_flag=True)
    def migrate(source: str, destination: str, uri: str | None, from_run_dir: str | None, to_run_dir: str | None,
                timeout: float, as_json: bool) -> None:
        """Live-migrate a VM; the destination holds no lease until the source has stopped and released."""
        result = qemu_migrate(source, destination, uri=uri, source_run_dir=from_run_dir,
                              destination_run_dir=to_run_dir or from_run_dir, timeout=timeout)
        if as_json:
            click.echo(json.dumps(result.as_dict(), indent=2))
            return
        for step in result.steps:
            click.echo(f"{step[0]:8.3f}s  {step[1]}")
        click.echo(f"VM '{result.vm}' now runs as pid {result.destination_pid}")

    @vm_group.command("status", cls=command_class)
    @click.option("--json", "as_json", is_flag=True)
    @_run_dir_option
    def status(as_json: bool, run_dir: str | None) -> None:
        """VMs on this host, their disks, leases and lease versions."""
        with Client(run_dir) as client:
            result = vm_status(client)
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        for line in format_status(result):
            click.echo(line)


def qemu_main() -> None:
    """``diskpaxos-qemu``: QEMU's own arguments; leases as ``vm run`` takes them, then the real emulator.

    Usable as libvirt's ``<emulator>``.  The emulator is ``$DISKPAXOS_EMULATOR`` or
    ``qemu-system-x86_64`` on PATH (never this wrapper); the config comes from
    ``$DISKPAXOS_QEMU_CONF`` or /etc/diskpaxos/qemu.conf, the daemon from ``$DISKPAXOS_RUN_DIR``.
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = "diskpaxos-qemu"
    emulator = os.environ.get(EMULATOR_ENV) or ""
    try:
        if not emulator:
            emulator = qemu_vm.find_emulator(exclude=sys.argv[0] if os.path.exists(sys.argv[0]) else None)
        argv = [emulator, *sys.argv[1:]]
        if not qemu_vm.needs_leases_check(argv[1:]):  # libvirt's probes (-version, -machine none ...): no disk
            os.execv(emulator, argv)
        cfg = qemu_config.load(None)
        plan = qemu_vm.prepare(cfg, argv)
        qemu_vm.run(plan, cfg, None)
    except OSError as e:
        print(f"{prog}: {emulator}: cannot execute: {e.strerror}", file=sys.stderr)
        sys.exit(1)
    except errors.DiskpaxosError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2 if isinstance(e, errors.UsageError) else 1)


__all__ = ["register", "qemu_main"]
