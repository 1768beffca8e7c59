"""The ``diskpaxos`` and ``mklockspace`` commands (click): parse, call a layer, print.

Verbs and lease strings mirror sanlock's so a sanlock user feels at home.
A user's mistake is one line on stderr and exit status 1 (2 for usage),
never a traceback; nothing is written when an argument or a check fails.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NoReturn, TypeVar

import click

from . import direct, errors
from .cli_bench import register as register_bench_commands
from .cli_daemon import register as register_daemon_commands
from .cli_vm import register as register_vm_commands
from .dump import header as dump_header
from .dump import walk as dump_walk
from .format import Geometry, LeaderRecord, MiB, c_name, check_name
from .io_direct import FILE_SECTOR_SIZE
from .lease_strings import parse_lockspace, parse_resource, parse_size, split_unescaped
from .lockspace import Lockspace
from .observer import observe_hosts
from .runner import Runner

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1
EXIT_USAGE = 2


def fail(error: errors.DiskpaxosError) -> NoReturn:
    click.echo(f"{click.get_current_context().find_root().info_name}: {error}", err=True)
    sys.exit(EXIT_USAGE if isinstance(error, errors.UsageError) else EXIT_ERROR)


# click >= 8.2 shows the help through a UsageError when a group gets no arguments
_NoArgsIsHelp: type[Exception] = getattr(click.exceptions, "NoArgsIsHelpError", type("_Never", (Exception,), {}))


def _usage_fail(e: click.UsageError) -> NoReturn:
    """click's usage error as one line (click prints usage, a hint and the message)."""
    if isinstance(e, _NoArgsIsHelp):
        raise e
    prog = e.ctx.find_root().info_name if e.ctx is not None else "diskpaxos"
    click.echo(f"{prog}: {e.format_message()}", err=True)
    sys.exit(EXIT_USAGE)


class _OneLineErrors:
    """Turns diskpaxos errors and click's usage errors into one line and an exit status.

    Parsing happens in make_context, a command's own checks in invoke; a
    group's invoke covers its subcommands' parsing too.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # type: ignore[misc]
        except click.UsageError as e:
            _usage_fail(e)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except errors.DiskpaxosError as e:
            fail(e)
        except click.UsageError as e:
            _usage_fail(e)


class _Command(_OneLineErrors, click.Command):
    pass


class _Group(_OneLineErrors, click.Group):
    command_class = _Command
    group_class = type


def _sector_size(value: str | None) -> int | None:
    if value in (None, "auto"):
        return None
    if value not in ("512", "4096"):
        raise click.BadParameter(f"{value!r} is not 512 or 4096")
    return int(value)


def _align_size(value: str | None) -> int | None:
    if value in (None, "auto"):
        return None
    try:
        size = parse_size(value, "align")
    except errors.UsageError as e:
        raise click.BadParameter(str(e)) from None
    if size not in (MiB, 2 * MiB, 4 * MiB, 8 * MiB):
        raise click.BadParameter(f"{value!r} is not 1M, 2M, 4M or 8M")
    return size


def _check_combination(sector_size: int | None, align_size: int | None) -> None:
    """A sector size with an alignment it cannot have is a usage error (sanlock: -22)."""
    if sector_size is not None and align_size is not None:
        try:
            Geometry(sector_size, align_size)
        except errors.GeometryError as e:
            raise click.UsageError(str(e)) from None


def _usage(callback: Callable[[], Any]) -> Any:
    try:
        return callback()
    except errors.UsageError as e:
        raise click.UsageError(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="Log more (repeat for debug).")
def main(verbose: int) -> None:
    """diskpaxos: storage leases that interoperate with sanlock."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.group(cls=_Group)
def direct_group() -> None:
    """Operate on lease areas directly, without a daemon (sanlock's direct verbs)."""


main.add_command(direct_group, "direct")


@direct_group.command("init")
@click.option("-s", "lockspace", metavar="LS:0:PATH:OFFSET", help="Initialise a lockspace.")
@click.option("-r", "resource", metavar="LS:RES:PATH:OFFSET", help="Initialise a resource lease.")
@click.option("-Z", "sector_size", type=click.Choice(["512", "4096"]), help="Sector size (default: the device's).")
@click.option("-A", "align", metavar="1M|2M|4M|8M", help="Alignment (default 1M for 512, 8M for 4096).")
@click.option("-o", "io_timeout", type=click.IntRange(1, 255), default=10, show_default=True,
              help="io_timeout stored in the lockspace records.")
@click.option("-n", "num_hosts", type=click.IntRange(0, 2000), default=0, help="Resource: hosts (default: max).")
@click.option("-z", "--clear", is_flag=True, help="Resource: write a cleared lease.")
@click.option("--force", is_flag=True, help="Overwrite data that is not ours, or a lease in use.")
def direct_init(lockspace: str | None, resource: str | None, sector_size: str | None, align: str | None,
                io_timeout: int, num_hosts: int, clear: bool, force: bool) -> None:
    """Write a fresh lockspace (-s) or resource lease (-r), byte for byte as sanlock does."""
    if (lockspace is None) == (resource is None):
        raise click.UsageError("give exactly one of -s LOCKSPACE or -r RESOURCE")
    ss, al = _sector_size(sector_size), _align_size(align)
    _check_combination(ss, al)
    if lockspace is not None:
        ls = _usage(lambda: parse_lockspace(lockspace))
        result = direct.init_lockspace(ls.path, ls.offset, ls.name, sector_size=ss, align_size=al,
                                       io_timeout=io_timeout, force=force)
    else:
        res = _usage(lambda: parse_resource(resource))  # type: ignore[arg-type]
        if res.lver is not None or res.shared:
            raise click.UsageError("init -r takes no :LVER or :SH")
        result = None
        for disk in res.disks:
            result = direct.init_resource(disk.path, disk.offset, res.lockspace, res.name, sector_size=ss,
                                          align_size=al, num_hosts=num_hosts, clear=clear, force=force)
    click.echo("init done 0")
    assert result is not None
    if result.replaced:
        click.echo(f"replaced {result.replaced}", err=True)


def _c_string(name: str) -> str:
    """A name as sanlock prints it (``%.48s``): up to the first NUL, raw bytes kept."""
    return c_name(name).decode("utf8", "surrogateescape")


def leader_text(rec: LeaderRecord, kind: str, code: int) -> str:
    """``read_leader`` output, line for line as sanlock prints it."""
    w = ("extra1", "extra2", "extra3") if kind == "lockspace" else \
        ("write_id", "write_generation", "write_timestamp")
    lines = [
        f"read_leader done {code}",
        f"magic 0x{rec.magic:x}", f"version 0x{rec.version:x}", f"flags 0x{rec.flags:x}",
        f"sector_size {rec.sector_size}", f"num_hosts {rec.num_hosts}", f"max_hosts {rec.max_hosts}",
        f"owner_id {rec.owner_id}", f"owner_generation {rec.owner_generation}", f"lver {rec.lver}",
        f"space_name {_c_string(rec.space_name)}", f"resource_name {_c_string(rec.resource_name)}",
        f"timestamp {rec.timestamp}", f"checksum 0x{rec.checksum:x}", f"io_timeout {rec.io_timeout}",
        f"{w[0]} {rec.write_id}", f"{w[1]} {rec.write_generation}", f"{w[2]} {rec.write_timestamp}",
    ]
    return "\n".join(lines)


def _geometry_json(g: Geometry) -> dict[str, int]:
    return {"sector_size": g.sector_size, "align_size": g.align_size, "max_hosts": g.max_hosts}


@direct_group.command("read-leader")
@click.option("-s", "lockspace", metavar="LS:HOST_ID:PATH:OFFSET", help="Read a host_id's delta lease.")
@click.option("-r", "resource", metavar="LS:RES:PATH:OFFSET", help="Read a resource lease's leader.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def direct_read_leader(lockspace: str | None, resource: str | None, as_json: bool) -> None:
    """Print one leader record and whether it verifies (as sanlock's read_leader)."""
    if (lockspace is None) == (resource is None):
        raise click.UsageError("give exactly one of -s LOCKSPACE or -r RESOURCE")
    if lockspace is not None:
        ls = _usage(lambda: parse_lockspace(lockspace))
        if ls.host_id == 0:
            raise click.UsageError(f"lockspace {lockspace!r}: host_id must be 1 or more to read its record")
        result = direct.read_leader(ls.path, ls.offset, host_id=ls.host_id, kind="lockspace",
                                    space_name=ls.name)
    else:
        res = _usage(lambda: parse_resource(resource))  # type: ignore[arg-type]
        result = direct.read_leader(res.path, res.offset, kind="resource", space_name=res.lockspace,
                                    resource_name=res.name)
    code = result.error.code if result.error else 0
    if as_json:
        out = {"path": result.path, "offset": result.offset, "kind": result.kind, "ok": result.ok,
               "code": code, "error": str(result.error) if result.error else None,
               "geometry": _geometry_json(result.geometry), "leader": asdict(result.record)}
        click.echo(json.dumps(out, indent=2))
    else:
        # names are raw bytes from storage: write them back byte for byte, as sanlock does
        sys.stdout.buffer.write(leader_text(result.record, result.kind, code).encode("utf8", "surrogateescape")
                                + b"\n")
        sys.stdout.flush()
    if result.error is not None:
        fail(result.error)


@direct_group.command("dump")
@click.argument("target", metavar="PATH[:OFFSET[:SIZE]]")
@click.option("-f", "flags", default="0", metavar="N",
              help="0: records; non-zero: also request lver/mode, bitmaps, rindex entries; >1: also dblocks.")
@click.option("-Z", "sector_size", type=click.Choice(["512", "4096"]), help="Sector size (default: probed).")
@click.option("-A", "align", metavar="1M|2M|4M|8M", help="Alignment (default: probed).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every record, decoded).")
def direct_dump(target: str, flags: str, sector_size: str | None, align: str | None, as_json: bool) -> None:
    """Print the lease areas at PATH as sanlock's ``direct dump`` does, line for line."""
    parts = split_unescaped(target)
    if len(parts) > 3:
        raise click.UsageError(f"{target!r} is not PATH[:OFFSET[:SIZE]]")
    path = parts[0]
    offset = _usage(lambda: parse_size(parts[1], "offset")) if len(parts) > 1 and parts[1] else 0
    size = _usage(lambda: parse_size(parts[2], "size")) if len(parts) > 2 and parts[2] else 0
    try:
        level = int(flags, 0)
    except ValueError:
        raise click.BadParameter(f"{flags!r} is not a number", param_hint="-f") from None
    geometry = None
    if sector_size or align:
        if not (sector_size and align):
            raise click.UsageError("give -Z and -A together (or neither, to probe)")
        geometry = _usage(lambda: Geometry(int(sector_size), _align_size(align)))  # type: ignore[arg-type]
    geo, areas = dump_walk(path, offset, size, level, geometry)
    if as_json:
        out = {"path": path, "offset": offset, "size": size, "sector_size": geo.sector_size,
               "align_size": geo.align_size, "areas": [{"offset": a.offset, "kind": a.kind, **a.data}
                                                       for a in areas]}
        click.echo(json.dumps(out, indent=2))
        return
    out_bytes = sys.stdout.buffer
    out_bytes.write(dump_header(level) + b"\n")
    for area in areas:
        for line in area.lines:
            out_bytes.write(line + b"\n")
    out_bytes.flush()


# --- lockspace ----------------------------------------------------------------------


@main.group(cls=_Group)
def lockspace_group() -> None:
    """Join a lockspace, or watch its hosts from storage."""


main.add_command(lockspace_group, "lockspace")


@lockspace_group.command("join")
@click.option("-s", "lockspace", required=True, metavar="LS:HOST_ID:PATH:OFFSET")
@click.option("-o", "io_timeout", type=click.IntRange(1, 255), default=10, show_default=True)
@click.option("--name", "host_name", default=None, help="Host name stored in the lease (default: <uuid>.<node>).")
def lockspace_join(lockspace: str, io_timeout: int, host_name: str | None) -> None:
    """Join and renew in the foreground until SIGINT/SIGTERM, then leave cleanly.

    Prints one line per renewal; exits 1 if the lease is lost.
    """
    ls_arg = _usage(lambda: parse_lockspace(lockspace))
    if ls_arg.host_id == 0:
        raise click.UsageError(f"lockspace {lockspace!r}: give a host_id of 1 or more to join")
    stop = threading.Event()
    lost: list[str] = []

    def on_failure(_ls: Lockspace, reason: str) -> None:
        lost.append(reason)
        stop.set()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    click.echo(f"joining {ls_arg.name} as host_id {ls_arg.host_id} (io_timeout {io_timeout})")
    ls = Lockspace.join(ls_arg.name, ls_arg.host_id, ls_arg.path, ls_arg.offset, io_timeout, host_name,
                        on_renewal_failure=on_failure, abort=stop)
    click.echo(f"joined {ls.name} host_id {ls.host_id} generation {ls.generation} name {ls.host_name}")
    printed = float("-inf")

    def print_new() -> None:
        nonlocal printed
        for renewal in ls.renewal_history():
            if renewal.local_time > printed:
                click.echo(renewal.line())
                printed = renewal.local_time

    try:
        while not stop.wait(0.2):
            print_new()
        print_new()
    finally:
        ls.leave()
    if lost:
        click.echo(f"{ls.name}:{ls.host_id}: lease lost: {lost[0]}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(f"left {ls.name} host_id {ls.host_id}")


@lockspace_group.command("hosts")
@click.option("-s", "lockspace", required=True, metavar="LS:0:PATH:OFFSET")
@click.option("--watch", "seconds", type=click.FloatRange(0), default=None,
              help="Observe this long (default: long enough to see every host renew).")
@click.option("-o", "io_timeout", type=click.IntRange(1, 255), default=10, show_default=True,
              help="Our io_timeout: judges hosts whose record stores none.")
@click.option("--json", "as_json", is_flag=True)
def lockspace_hosts(lockspace: str, seconds: float | None, io_timeout: int, as_json: bool) -> None:
    """The host table as observed from storage alone (no join, nothing written)."""
    ls_arg = _usage(lambda: parse_lockspace(lockspace))
    table = observe_hosts(ls_arg.name, ls_arg.path, ls_arg.offset, seconds, io_timeout)
    if as_json:
        click.echo(json.dumps([h.as_dict() for h in table], indent=2))
        return
    click.echo(f"{'host_id':>7} {'generation':>10} {'timestamp':>10} {'state':<7} {'io':>3}  name")
    for h in table:
        click.echo(f"{h.host_id:>7} {h.generation:>10} {h.timestamp:>10} {h.state.name:<7} {h.io_timeout:>3}  {h.name}")


@main.command("run", context_settings={"ignore_unknown_options": True})
@click.option("-s", "lockspace", required=True, metavar="LS:HOST_ID:PATH:OFFSET")
@click.option("-r", "resources", multiple=True, metavar="LS:RES:PATH:OFFSET[:LVER|:SH]")
@click.option("--shared", "shared", multiple=True, metavar="LS:RES:PATH:OFFSET", help="A resource held shared.")
@click.option("-o", "io_timeout", type=click.IntRange(1, 255), default=10, show_default=True)
@click.option("--name", "host_name", default=None, help="Host name stored in the lease (default: <uuid>.<node>).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run_command(lockspace: str, resources: tuple[str, ...], shared: tuple[str, ...], io_timeout: int,
                host_name: str | None, command: tuple[str, ...]) -> None:
    """Join, acquire every resource (all or nothing), run COMMAND while holding them.

    Releases and leaves when COMMAND exits and returns its exit status; if a
    lease cannot be had, says who holds it, exits 1 and never runs COMMAND.
    """
    ls_arg = _usage(lambda: parse_lockspace(lockspace))
    if ls_arg.host_id == 0:
        raise click.UsageError(f"lockspace {lockspace!r}: give a host_id of 1 or more")
    res = [_usage(lambda r=r: parse_resource(r)) for r in resources]
    for text in shared:
        r = _usage(lambda t=text: parse_resource(t))
        res.append(r if r.shared else type(r)(r.lockspace, r.name, r.disks, None, True))
    if not res:
        raise click.UsageError("give at least one -r RESOURCE or --shared RESOURCE")
    runner = _usage(lambda: Runner(ls_arg, res, command, io_timeout, host_name))
    for sig in (signal.SIGINT, signal.SIGTERM):  # the command gets them; we wait for it to exit
        signal.signal(sig, lambda *_: None)
    sys.exit(runner.run())


@main.command("torture")
@click.option("--hosts", type=click.IntRange(2, 64), default=4, show_default=True)
@click.option("--duration", default="2m", show_default=True, help="e.g. 90s, 10m")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("-o", "io_timeout", type=click.IntRange(1, 255), default=1, show_default=True)
@click.option("--no-faults", is_flag=True, help="No injected I/O faults (kills and freezes still happen).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Where the lease file, data file and logs go (default: a new temp dir, kept).")
@click.option("--control-no-lease", is_flag=True,
              help="Control run: hosts use the resource with no lease; the checker must report violations.")
@click.option("--json", "as_json", is_flag=True)
def torture_command(hosts: int, duration: str, seed: int, io_timeout: int, no_faults: bool,
                    directory: str | None, control_no_lease: bool, as_json: bool) -> None:
    """N hosts fight over one lease through crashes, freezes and bad I/O; prove no overlap."""
    import tempfile

    from .torture.orchestrator import Torture
    seconds = _usage(lambda: parse_duration(duration))
    directory = directory or tempfile.mkdtemp(prefix="diskpaxos-torture-")
    os.makedirs(directory, exist_ok=True)

    def progress(done: float, stats: Any) -> None:
        if as_json or not sys.stderr.isatty():
            return
        bar = "#" * int(done * 30)
        click.echo(f"\r[{bar:<30}] {done * 100:5.1f}% kills {stats.kills} freezes {stats.freezes} "
                   f"watchdog {stats.watchdog_kills}", err=True, nl=False)

    t = Torture(directory, hosts, seconds, seed, io_timeout, faults=not no_faults, progress=progress,
                control_no_lease=control_no_lease)
    report = t.run()
    if not as_json and sys.stderr.isatty():
        click.echo("", err=True)
    summary = {"dir": directory, "hosts": hosts, "seconds": seconds, "seed": seed,
               "operations": sum(report.counts.values()), "acquisitions": report.counts.get("USE", 0),
               "busy": report.counts.get("BUSY", 0), "lost": report.counts.get("LOST", 0),
               "kills": t.stats.kills, "freezes": t.stats.freezes, "watchdog_kills": t.stats.watchdog_kills,
               "restarts": t.stats.restarts, "worker_errors": t.stats.worker_errors,
               "overlaps": len(report.overlaps),
               "lver_errors": len(report.lver_errors), "physical_violations": len(report.physical),
               "violations": report.violations}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            click.echo(f"{k:<20} {v}")
        for a, b in report.overlaps[:10]:
            click.echo(f"OVERLAP host {a.host} lver {a.lver} [{a.start:.3f}, {a.end:.3f}] and host {b.host} "
                       f"lver {b.lver} [{b.start:.3f}, {b.end:.3f}]")
        for text in report.lver_errors[:10] + report.physical[:10]:
            click.echo(f"VIOLATION {text}")
    if not report.counts.get("USE"):
        click.echo("no host ever held the lease: the run proves nothing", err=True)
    failed = report.violations or t.stats.worker_errors or not report.counts.get("USE")
    sys.exit(EXIT_ERROR if failed else 0)


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise errors.UsageError(f"duration {text!r} is not like 90s, 10m or 1h") from None


# --- mklockspace ------------------------------------------------------------------


@click.command(cls=_Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("path", type=click.Path(dir_okay=False, readable=False))  # open() reports EACCES
@click.option("--name", required=True, help="Lockspace name (at most 48 bytes).")
@click.option("--sector-size", "sector_size", default="auto", show_default=True,
              type=click.Choice(["auto", "512", "4096"]))
@click.option("--align", default="auto", show_default=True, metavar="auto|1M|2M|4M|8M")
@click.option("--offset", default="0", show_default=True, help="Byte offset (suffixes: 1M ...).")
@click.option("--io-timeout", "io_timeout", type=click.IntRange(1, 255), default=10, show_default=True)
@click.option("--size", default=None, help="Create PATH as a new file of this size (e.g. 1G).")
@click.option("--force", is_flag=True, help="Overwrite whatever is there.")
def mklockspace(path: str, name: str, sector_size: str, align: str, offset: str, io_timeout: int,
                size: str | None, force: bool) -> None:
    """Format a lockspace on a shared LUN or in a file, refusing to destroy data.

    PATH must hold zeros (or this very lockspace, with no host joined) where
    the lockspace goes, unless --force.  Prints the resulting geometry.
    """
    ss, al = _sector_size(sector_size), _align_size(align)
    _check_combination(ss, al)
    _usage(lambda: check_name("lockspace name", name))  # arguments first, before looking at PATH
    off = _usage(lambda: parse_size(offset, "offset"))
    if size is not None:
        nbytes = _usage(lambda: parse_size(size, "size"))
        if os.path.lexists(path):
            raise errors.DiskpaxosError(path=path, reason="already exists; --size only creates a new file")
        # a new file has 512-byte sectors unless told otherwise (the geometry init will choose)
        file_ss = ss or FILE_SECTOR_SIZE
        needed = off + (al or Geometry.default_for(file_ss).align_size)
        if nbytes < needed:
            raise click.UsageError(f"--size {size} is too small: the lockspace needs {needed} bytes")
        try:
            with open(path, "xb") as f:
                f.truncate(nbytes)
        except OSError as e:
            raise errors.StorageError(path=path, reason=f"cannot create: {e.strerror}", errno=e.errno) from None
        created = True
    elif not os.path.lexists(path):
        raise errors.OpenError(path=path, reason="No such file or directory (give --size to create a file)")
    else:
        created = False
    try:
        result = direct.init_lockspace(path, off, name, sector_size=ss, align_size=al,
                                       io_timeout=io_timeout, force=force)
    except BaseException:
        if created:
            os.unlink(path)  # leave nothing behind for a file we made
        raise
    g = result.geometry
    click.echo(f"formatted lockspace {name!r} on {path}")
    for key, value in (("offset", result.offset), ("sector size", g.sector_size),
                       ("align", f"{g.align_size // MiB}M"), ("max hosts", g.max_hosts),
                       ("io_timeout", io_timeout),
                       ("area", f"{result.offset}..{result.offset + g.align_size}"),
                       ("next free offset", result.offset + g.align_size)):
        click.echo(f"  {key:<17} {value}")
    if result.replaced:
        click.echo(f"  replaced          {result.replaced}")


register_bench_commands(main, _Command, _Group)
register_daemon_commands(main, _Command, _Group)
register_vm_commands(main, _Command, _Group)


def mklockspace_main() -> None:
    mklockspace(prog_name="mklockspace")


if __name__ == "__main__":
    main()
