"""``diskpaxos bench storage`` and ``diskpaxos bench compare``: storage timing, printed.

The measuring lives in ``diskpaxos.bench``; this module parses options, draws
the progress bar, and prints tables, histograms and the recommendation.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import errors
from .lease_strings import parse_size

BAR_WIDTH = 30
T = TypeVar("T")


def _offset(value: str) -> int:
    try:
        return parse_size(value, "offset")
    except errors.UsageError as e:
        raise click.BadParameter(str(e)) from None


class ProgressBar:
    """A one-line bar on stderr, redrawn in place; only where stderr is a terminal unless forced."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = ""

    def __call__(self, what: str, fraction: float) -> None:
        if not self.enabled:
            return
        filled = int(round(fraction * BAR_WIDTH))
        line = f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}% {what:<14}"
        if line != self.last:
            sys.stderr.write(line)
            sys.stderr.flush()
            self.last = line

    def close(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\r" + " " * len(self.last) + "\r")
            sys.stderr.flush()


def with_progress(enabled: bool | None, run: Callable[[ProgressBar], T]) -> T:
    """``run(bar)`` with a progress bar (default: when stderr is a terminal), erased afterwards."""
    bar = ProgressBar(sys.stderr.isatty() if enabled is None else enabled)
    try:
        return run(bar)
    finally:
        bar.close()


def _fmt(x: float) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3f}"


def _histogram_lines(histogram: list[dict[str, Any]], width: int = 40) -> list[str]:
    top = max((b["count"] for b in histogram), default=0)
    lines = []
    for b in histogram:
        bar = "#" * (max(1, round(b["count"] / top * width)) if b["count"] else 0)
        lines.append(f"    <= {_fmt(b['le_ms']):>7} ms {bar:<{width}} {b['count']}")
    return lines


def print_storage(report: dict[str, Any]) -> None:
    t, g = report["target"], report["geometry"]
    click.echo(f"{t['path']} offset {t['offset']}: {t['type']}, {g['sector_size']}-byte sectors, "
               f"lease area {g['align_size'] >> 20}M; measured {report['elapsed_s']:.1f} s "
               f"(scratch area held {t['found']}; restored)")
    click.echo(f"{'operation':<13} {'n':>7} {'min':>8} {'median':>8} {'p99':>8} {'p99.9':>8} {'max':>8}"
               f" {'errors':>6}   (ms)")
    for op, s in report["operations"].items():
        click.echo(f"{op:<13} {s['n']:>7} {_fmt(s['min']):>8} {_fmt(s['median']):>8} {_fmt(s['p99']):>8} "
                   f"{_fmt(s['p999']):>8} {_fmt(s['max']):>8} {s['errors']:>6}")
    for op, s in report["operations"].items():
        if s["first_error"]:
            click.echo(f"{op}: first error: {s['first_error']}")
    click.echo("")
    click.echo("histograms:")
    for op, s in report["operations"].items():
        click.echo(f"  {op}: {s['description']}")
        for line in _histogram_lines(s["histogram"]):
            click.echo(line)
    r = report["recommendation"]
    click.echo("")
    if r["io_timeout"] is None:
        click.echo(f"recommendation: no io_timeout up to 255 s fits the measured tail "
                   f"(binding: {r['binding_operation']})")
    else:
        worst = min(r["checks"], key=lambda c: c["headroom_at_default"])
        click.echo(f"recommendation: io_timeout {r['io_timeout']} s (binding operation: {r['binding_operation']})")
        click.echo(f"  renew every {r['renewal_interval_s']} s, warn after {r['renewal_warn_s']} s, "
                   f"lease lost after {r['renewal_fail_s']} s without a renewal, "
                   f"other hosts see this one dead after {r['host_dead_s']} s")
        click.echo(f"  at sanlock's default io_timeout 10 the tightest budget has {worst['headroom_at_default']:.0f}x "
                   f"headroom ({worst['operation']})")
    click.echo(f"  rule: {r['rule']}")


def print_compare(report: dict[str, Any]) -> None:
    m = report["machine"]
    click.echo(f"diskpaxos {m['diskpaxos']} vs sanlock {m['sanlock']}: io_timeout {report['io_timeout']}, "
               f"{report['leases']} leases, {m['cpus']} x {m['cpu']}, kernel {m['kernel']}; "
               f"{report['elapsed_s']:.0f} s")
    for kind, k in report["storage"].items():
        g = k["geometry"]
        b = k["backing"]
        where = b.get("backing_filesystem", b)
        click.echo("")
        click.echo(f"{kind}: {g['sector_size']} B sectors, {g['align_size'] >> 20}M align, "
                   f"on {where.get('filesystem', '?')} ({where.get('mount', '?')})")
        click.echo(f"  {'median of':<38} {'floor':>9} {'diskpaxos':>10} {'sanlock':>9} {'dp/sanlock':>10}"
                   f" {'dp/floor':>9}")
        for name, row in k["metrics"].items():
            label = report["metrics"].get(name, name)
            click.echo(f"  {label:<38} {_fmt(row['floor']):>9} {_fmt(row['diskpaxos']):>10} "
                       f"{_fmt(row['sanlock']):>9} {_fmt(row['diskpaxos_vs_sanlock']):>10} "
                       f"{_fmt(row['diskpaxos_vs_floor']):>9}")


def show(report: dict[str, Any], as_json: bool, printer: Callable[[dict[str, Any]], None],
         plot_path: str | None) -> None:
    """The report as JSON, or as text followed by where the plot went."""
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    printer(report)
    if plot_path:
        click.echo(f"plot: {plot_path}")


def register(main: click.Group, command_class: type[click.Command], group_class: type[click.Group]) -> None:
    @main.group("bench", cls=group_class)
    def bench_group() -> None:
        """Storage timing: lease I/O latency, a recommended io_timeout, diskpaxos beside sanlock."""

    @bench_group.command("storage", cls=command_class)
    @click.argument("path")
    @click.option("--offset", default="0", show_default=True, help="Start of the scratch area (1M-style suffixes).")
    @click.option("--sector-size", type=click.Choice(["auto", "512", "4096"]), default="auto", show_default=True,
                  help="Lease sector size (auto: the device's).")
    @click.option("--duration", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True,
                  help="Seconds of measuring, shared equally by the operations.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema in the README).")
    @click.option("--plot", "plot_path", metavar="FILE.png", help="Write latency histograms (needs matplotlib).")
    @click.option("--force", is_flag=True, help="Run over data that is not zeros or an idle lease area.")
    @click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal).")
    def storage_command(path: str, offset: str, sector_size: str, duration: float, as_json: bool,
                        plot_path: str | None, force: bool, progress: bool | None) -> None:
        """Measure the I/O leases do on PATH and recommend an io_timeout.

        Writes only a scratch area at --offset (8 MiB for 512-byte sectors,
        16 MiB for 4K) and puts back what it held; refuses an area holding
        anything but zeros or idle sanlock/diskpaxos leases unless --force.
        """
        from .bench import plot, storage
        if plot_path:
            plot.require()
        result = with_progress(progress, lambda bar: storage.run(
            path, _offset(offset), sector_size=None if sector_size == "auto" else int(sector_size),
            duration=duration, force=force, progress=bar))
        report = result.to_json()
        if plot_path:
            budgets = {c["operation"]: c["budget_s"] * 1000 for c in report["recommendation"]["checks"]
                       if c["budget_s"] == c["budget_s"] and c["budget_s"] * 1000 < 50 * max(
                           report["operations"][c["operation"]]["max"], 1e-3)}
            plot.storage(plot_path, {op: s.wall_ms for op, s in result.samples.items()},
                         f"diskpaxos bench storage: {path} ({report['target']['type']}, "
                         f"{report['geometry']['sector_size']} B sectors)", budgets)
        show(report, as_json, print_storage, plot_path)

    @bench_group.command("compare", cls=command_class)
    @click.option("--storage", "kinds", multiple=True, type=click.Choice(["file", "loop512", "loop4k", "tmpfs"]),
                  help="Storage kinds (repeat; default: all four).")
    @click.option("--leases", type=click.IntRange(4, 100_000), default=1000, show_default=True,
                  help="Resource leases in the boot storm.")
    @click.option("--rounds", type=click.IntRange(1), default=300, show_default=True,
                  help="Renewals and acquire + release rounds per side.")
    @click.option("--kills", type=click.IntRange(1), default=15, show_default=True,
                  help="Release-on-exit repetitions per daemon.")
    @click.option("--renewal-seconds", type=click.FloatRange(2), default=20.0, show_default=True,
                  help="Window over which the daemons' renewal CPU is measured.")
    @click.option("--dir", "work_dir", default="/var/tmp", show_default=True,
                  help="Where file and loop backing files live (a filesystem with O_DIRECT).")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema in the README).")
    @click.option("--output", "output", metavar="FILE.json", help="Also write the JSON report to FILE.")
    @click.option("--plot", "plot_path", metavar="FILE.png", help="Write latency box plots (needs matplotlib).")
    @click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal).")
    def compare_command(kinds: tuple[str, ...], leases: int, rounds: int, kills: int, renewal_seconds: float,
                        work_dir: str, as_json: bool, output: str | None, plot_path: str | None,
                        progress: bool | None) -> None:
        """Run the same scenarios with diskpaxos and the real sanlock, beside the raw I/O floor.

        Needs root, sanlock, python3-sanlock and strace; takes about a minute
        and a half per storage kind with the defaults.
        """
        from .bench import compare, plot
        if plot_path:
            plot.require()
        options = compare.Options(storage=kinds or compare.KINDS, leases=leases, rounds=rounds, kills=kills,
                                  renewal_seconds=renewal_seconds, dir=work_dir)
        # SIGTERM (a CI timeout, kill PID) must still stop the daemons and detach the loop devices
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        result = with_progress(progress, lambda bar: compare.run(options, progress=bar))
        report = result.to_json()
        if output:
            with open(output, "w") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
        if plot_path:
            panels = {compare.METRICS[name]: {kind: r.samples.get(name, {}) for kind, r in result.kinds.items()}
                      for name in ("renewal_wall_ms", "acquire_release_ms", "release_on_exit_ms")}
            m = report["machine"]
            ratios = {kind: {report["metrics"][name]: row["diskpaxos_vs_sanlock"] for name, row in k["metrics"].items()}
                      for kind, k in report["storage"].items()}
            plot.compare(plot_path, panels, f"diskpaxos {m['diskpaxos']} beside sanlock {m['sanlock']} and the "
                                            f"raw I/O floor ({m['cpus']} CPUs, kernel {m['kernel']})", ratios)
        show(report, as_json, print_compare, plot_path)

