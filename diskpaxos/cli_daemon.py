"""``diskpaxos daemon`` and ``diskpaxos client ...``: the daemon and sanlock-style client verbs."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from . import errors
from .client import Client, DaemonError, run_dir


def _run_dir_option(f: Any) -> Any:
    return click.option("--run-dir", default=None, envvar="DISKPAXOS_RUN_DIR",
                        help="The daemon's run dir (default $DISKPAXOS_RUN_DIR or /run/diskpaxos).")(f)


def _name_of(lockspace: str) -> str:
    return lockspace.split(":", 1)[0]


def split_command_argv(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ``client command`` arguments after ``-c PATH``: the rest is the command's argv, verbatim.

    As sanlock's ``client command -c PATH ARGS``: the command's own arguments may
    look like our options (``-c /bin/sh -c 'exit 7'``) and must not be parsed.
    """
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        if arg in ("-r", "-k", "--run-dir"):
            i += 2
            continue
        if arg == "-c":
            return args[: i + 2], args[i + 2:]
        if arg.startswith("-c"):  # -cPATH
            return args[: i + 1], args[i + 1:]
        i += 1
    return args, []


def register(main: click.Group, command_class: type[click.Command], group_class: type[click.Group]) -> None:
    class CommandVerb(command_class):  # type: ignore[valid-type,misc]
        def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
            head, tail = split_command_argv(args)
            rest = super().parse_args(ctx, head)
            if tail:
                ctx.params["args"] = (*ctx.params.get("args", ()), *tail)
            return rest

    @main.command("daemon", cls=command_class)
    @click.option("--config", "config_path", default=None, help="TOML config (default /etc/diskpaxos/diskpaxos.conf).")
    @_run_dir_option
    @click.option("--foreground", is_flag=True, help="Stay in the foreground (always; for sanlock-like scripts).")
    def daemon_command(config_path: str | None, run_dir: str | None, foreground: bool) -> None:
        """The per-host lock manager: holds leases for processes, releases them when they die."""
        from .daemon import config, server
        cfg = config.load(config_path)
        logging.getLogger().setLevel(cfg.log_level.upper())
        sys.exit(server.run(cfg, run_dir_path(run_dir)))

    @main.group("client", cls=group_class)
    def client_group() -> None:
        """Talk to the local diskpaxos daemon (verbs as sanlock's ``client``)."""

    def connect(rd: str | None) -> Client:
        return Client(rd)

    def emit(data: Any, as_json: bool, text: str | None = None) -> None:
        if as_json:
            click.echo(json.dumps(data, indent=2))
        elif text is not None:
            click.echo(text)

    @client_group.command("add-lockspace", cls=command_class)
    @click.option("-s", "lockspace", required=True, metavar="LS:HOST_ID:PATH:OFFSET")
    @click.option("-o", "io_timeout", type=click.IntRange(1, 255), default=None)
    @click.option("--name", "host_name", default=None)
    @_run_dir_option
    def add_lockspace(lockspace: str, io_timeout: int | None, host_name: str | None, run_dir: str | None) -> None:
        r = connect(run_dir).add_lockspace(lockspace, io_timeout, host_name)
        click.echo(f"add_lockspace {r['lockspace']} host_id {r['host_id']} generation {r['generation']} done 0")

    @client_group.command("rem-lockspace", cls=command_class)
    @click.option("-s", "lockspace", required=True, metavar="LS:HOST_ID:PATH:OFFSET")
    @_run_dir_option
    def rem_lockspace(lockspace: str, run_dir: str | None) -> None:
        connect(run_dir).rem_lockspace(lockspace)
        click.echo("rem_lockspace done 0")

    @client_group.command("inq-lockspace", cls=command_class)
    @click.option("-s", "lockspace", required=True, metavar="LS:HOST_ID:PATH:OFFSET")
    @click.option("--json", "as_json", is_flag=True)
    @_run_dir_option
    def inq_lockspace(lockspace: str, as_json: bool, run_dir: str | None) -> None:
        r = connect(run_dir).inq_lockspace(lockspace)
        emit(r, as_json, f"inq_lockspace {r['lockspace']} host_id {r['host_id']} generation {r['generation']} "
                         f"state {r['state']} done 0")

    @client_group.command("acquire", cls=command_class)
    @click.option("-r", "resources", multiple=True, required=True, metavar="LS:RES:PATH:OFFSET[:LVER|:SH]")
    @click.option("-p", "pid", type=int, required=True)
    @_run_dir_option
    def acquire(resources: tuple[str, ...], pid: int, run_dir: str | None) -> None:
        for lease in connect(run_dir).acquire(list(resources), pid):
            click.echo(lease)

    @client_group.command("release", cls=command_class)
    @click.option("-r", "resources", multiple=True, metavar="LS:RES:PATH:OFFSET")
    @click.option("-p", "pid", type=int, required=True)
    @_run_dir_option
    def release(resources: tuple[str, ...], pid: int, run_dir: str | None) -> None:
        for lease in connect(run_dir).release(list(resources) or None, pid):
            click.echo(lease)

    @client_group.command("inquire", cls=command_class)
    @click.option("-p", "pid", type=int, required=True)
    @_run_dir_option
    def inquire(pid: int, run_dir: str | None) -> None:
        click.echo(" ".join(connect(run_dir).inquire(pid)))

    @client_group.command("command", cls=CommandVerb, context_settings={"ignore_unknown_options": True})
    @click.option("-r", "resources", multiple=True, required=True, metavar="LS:RES:PATH:OFFSET[:LVER|:SH]")
    @click.option("-k", "killpath", default=None, help="Command run (with the pid appended) before SIGTERM when fenced.")
    @click.option("-c", "command", nargs=1, required=True, metavar="PATH")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @_run_dir_option
    def command(resources: tuple[str, ...], killpath: str | None, command: str, args: tuple[str, ...],
                run_dir: str | None) -> None:
        """Register, acquire, then exec PATH ARGS in this same process: the leases are its."""
        c = connect(run_dir)
        c.register()
        if killpath:
            c.set_killpath(killpath.split())
        c.acquire(list(resources))
        c.close()
        sys.stdout.flush()
        try:
            os.execvp(command, [command, *args])
        except OSError as e:
            raise errors.DiskpaxosError(f"{command}: cannot execute: {e.strerror}") from None

    @client_group.command("status", cls=command_class)
    @click.option("--json", "as_json", is_flag=True)
    @_run_dir_option
    def status(as_json: bool, run_dir: str | None) -> None:
        r = connect(run_dir).status()
        if as_json:
            emit({k: r[k] for k in ("lockspaces", "clients")}, True)
            return
        for ls in r["lockspaces"]:
            click.echo(f"s {ls['lockspace']}:{ls['host_id']} generation {ls['generation']} {ls['state']}")
        for c in r["clients"]:
            name = f" {c['name']}" if c.get("name") else ""  # sanlock prints "p <pid> <owner name>"
            click.echo(f"p {c['pid']}{name}{' fencing' if c['fencing'] else ''}")
            for lease in c["leases"]:
                click.echo(f"r {lease} p {c['pid']}")

    @client_group.command("host-status", cls=command_class)
    @click.option("-s", "lockspace", required=True, metavar="LS")
    @click.option("--json", "as_json", is_flag=True)
    @_run_dir_option
    def host_status(lockspace: str, as_json: bool, run_dir: str | None) -> None:
        hosts = connect(run_dir).host_status(_name_of(lockspace))
        if as_json:
            emit(hosts, True)
            return
        for h in hosts:
            click.echo(f"{h['host_id']} timestamp {h['timestamp']} generation {h['generation']} {h['state']} "
                       f"{h['name']}")

    @client_group.command("renewal", cls=command_class)
    @click.option("-s", "lockspace", required=True, metavar="LS")
    @_run_dir_option
    def renewal(lockspace: str, run_dir: str | None) -> None:
        for r in connect(run_dir).renewal(_name_of(lockspace)):
            outcome = "ok" if r["ok"] else f"error {r['error_code']}"
            click.echo(f"timestamp={r['timestamp']} read_ms={r['read_ms']:.3f} write_ms={r['write_ms']:.3f} {outcome}")

    @client_group.command("metrics", cls=command_class)
    @_run_dir_option
    def metrics(run_dir: str | None) -> None:
        click.echo(connect(run_dir).metrics(), nl=False)

    @client_group.command("shutdown", cls=command_class)
    @_run_dir_option
    def shutdown(run_dir: str | None) -> None:
        connect(run_dir).shutdown()
        click.echo("shutdown done 0")


def run_dir_path(explicit: str | None) -> str:
    return run_dir(explicit)


__all__ = ["register", "DaemonError"]
