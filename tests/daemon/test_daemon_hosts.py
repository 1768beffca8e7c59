"""diskpaxos daemons as hosts: with each other and live with sanlock 3.8.5 daemons.

Every host is a real daemon process with its own run dir (``DiskpaxosDaemon``,
or tests/conftest.py's ``SanlockDaemon``), all on one lockspace formatted with
io_timeout 1 (renew every 2 s, warn 6 s, fail 8 s, host_dead 68 s) and one
resource lease R.  Leases are held by real client processes: ``client command
-r R -c sleep 600`` execs sleep in the process the daemon registered.

- a holder that dies (SIGKILL) has R released on storage within 1 s; another
  host (a diskpaxos daemon, or a sanlock daemon) then takes R at once;
- exclusion across implementations, both ways: EX refuses EX (-243), SH and SH
  coexist, EX refuses a live SH (-11) and succeeds once SH holders are gone;
- ``client command -c PROG ARGS`` passes ARGS verbatim, as sanlock does;
- a second daemon on a run dir refuses to start; status, host-status, renewal
  and metrics (valid Prometheus text) answer; shutdown refuses while leases
  are held and otherwise leaves cleanly;
- a daemon that hangs (SIGSTOP) has its client killed by the watchdog helper
  at the local lease expiry (8 s after the last renewal);
- storage lost for one host (a fault plan: I/O errors, or hangs): its client
  is killed from the warning point (6 s after its last good renewal), before
  id_renewal_fail (8 s); another host takes R only after host_dead (68 s);
- the daemon SIGKILLed with a client holding R: the watchdog helper kills the
  client at once; another host takes R only after host_dead; a new daemon on
  the run dir rejoins with the same name at once, one generation up, and with
  another name only after host_dead.

The four 68 s scenarios run in background threads from the module's first test
(see ``Scenarios``), so they overlap each other and the short tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from daemon_hosts import (
    IO,
    LS,
    RES,
    Area,
    DiskpaxosDaemon,
    MiB,
    T,
    make_area,
    sanlock_daemon_class,
    sanlock_hold,
    sanlock_join,
    sanlock_leave,
    sanlock_try,
    wait_for,
)
from oracle import DISKPAXOS, run, sanlock_read_leader
from scenarios import BackgroundScenarios

from diskpaxos import direct
from diskpaxos.daemon.manager import FENCE_MARGIN
from diskpaxos.torture import checker

pytestmark = pytest.mark.interop

EEXIST, EAGAIN = 17, 11
IDLIVE = -243  # SANLK_ACQUIRE_IDLIVE


def parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls at once (joins take 2 x io_timeout each); their results, in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(c) for c in calls]
        return [f.result(timeout=180) for f in futures]


def report(what: str, **numbers: Any) -> None:
    """Measured numbers, shown with ``-rP`` (or ``-s``)."""
    print(f"{what}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in numbers.items()))


# --- 1: a holder dies, its lease is released at once ------------------------------------------------


@pytest.mark.parametrize("other", ["diskpaxos", "sanlock"])
def test_release_when_the_holder_dies(other: str, sanlock_bin: str, sanlock_daemon: Callable[..., Any],
                                      dp_daemon: Callable[..., DiskpaxosDaemon], cleanup: contextlib.ExitStack,
                                      tmp_path: Path) -> None:
    """``client command -r R -c sleep 600`` holds R; the other host is refused (-243).  SIGKILL the
    sleep: the daemon sees its pidfd and releases R on storage (timestamp 0) within 1 s; the other
    host (host 2: a diskpaxos daemon, or a sanlock daemon) then takes R at once (lver + 1)."""
    area = make_area(tmp_path / "leases.img")
    h1 = dp_daemon("host1")
    if other == "diskpaxos":
        h2 = dp_daemon("host2")
        join2: Callable[[], Any] = lambda: h2.join(area, 2, "dpB")  # noqa: E731

        def try2() -> int:
            return h2.try_acquire(area.res())[0]

        def take2() -> None:
            got = h2.cli("command", "-r", area.res(), "-c", "/bin/true")
            assert got.returncode == 0, (got, h2.log())
    else:
        san = sanlock_daemon(host_name="sanB")
        cleanup.callback(sanlock_leave, sanlock_bin, san, area, 2)
        join2 = lambda: sanlock_join(sanlock_bin, san, area, 2)  # noqa: E731

        def try2() -> int:
            return sanlock_try(sanlock_bin, san, area.res())[0]

        def take2() -> None:
            assert try2() == 0
    parallel(lambda: h1.join(area, 1, "dpA"), join2)

    holder = h1.hold(area.res(), "sleep", "600")
    held = area.leader()
    assert (held.owner_id, held.lver) == (1, 1) and held.timestamp != 0, held
    assert try2() == IDLIVE
    assert area.leader() == held, "a refused acquire changed the leader"

    os.kill(holder.pid, signal.SIGKILL)  # our child, not yet reaped: the pid is still its own
    t_kill = time.monotonic()
    freed = wait_for(lambda: (r := area.leader()).timestamp == 0 and r, 5, "R released on storage", 0.002)
    delay = time.monotonic() - t_kill
    assert delay < 1.0, f"R released {delay:.3f} s after its holder died"
    assert (freed.owner_id, freed.lver) == (1, held.lver), freed
    assert sanlock_read_leader(sanlock_bin, "-r", area.res())["timestamp"] == 0  # the oracle agrees
    assert holder.wait(5) and holder.returncode == -signal.SIGKILL
    with h1.api() as c:
        assert c.status()["clients"] == []

    t0 = time.monotonic()
    take2()
    took = time.monotonic() - t0
    # the command has exited: its daemon releases R (at once, but after the exit)
    after = wait_for(lambda: (r := area.leader()).timestamp == 0 and r, 5, "host 2 to release R")
    assert (after.owner_id, after.lver) == (2, held.lver + 1), after
    report(f"release on exit (other host {other})", release_delay_s=delay, other_acquire_s=took)


# --- 2: exclusion across implementations, through daemons ---------------------------------------------


@pytest.fixture
def mixed(sanlock_bin: str, sanlock_daemon: Callable[..., Any], dp_daemon: Callable[..., DiskpaxosDaemon],
          cleanup: contextlib.ExitStack, tmp_path: Path) -> tuple[Area, DiskpaxosDaemon, Any]:
    """A lockspace formatted by sanlock; diskpaxos daemon host 1 ("dpA") and sanlock daemon host 2
    ("sanB") joined."""
    area = make_area(tmp_path / "leases.img", sanlock_bin)
    dp = dp_daemon("host1")
    san = sanlock_daemon(host_name="sanB")
    cleanup.callback(sanlock_leave, sanlock_bin, san, area, 2)
    parallel(lambda: dp.join(area, 1, "dpA"), lambda: sanlock_join(sanlock_bin, san, area, 2))
    return area, dp, san


def owners(dp: DiskpaxosDaemon, area: Area) -> set[tuple[int, bool]]:
    """(host_id, shared) of every holder of R on storage, as the diskpaxos daemon reads it."""
    with dp.api() as c:
        return {(o["host_id"], o["shared"]) for o in c.read_owners(area.res())}


def test_exclusive_both_ways(mixed: tuple[Area, DiskpaxosDaemon, Any], sanlock_bin: str, tmp_path: Path) -> None:
    """diskpaxos holds R EX: sanlock's acquire gets -243 and changes nothing.  sanlock holds R EX:
    diskpaxos's acquire gets -243 (``client command`` exits 1 naming host_id 2 and runs nothing).
    Each succeeds once the other's holder is gone."""
    area, dp, san = mixed
    holder = dp.hold(area.res(), "sleep", "600")
    held = area.leader()
    assert (held.owner_id, held.timestamp != 0) == (1, True), held
    assert sanlock_try(sanlock_bin, san, area.res())[0] == IDLIVE
    assert area.leader() == held
    holder.kill()
    wait_for(lambda: area.leader().timestamp == 0, 5, "diskpaxos to release R")

    sholder = sanlock_hold(sanlock_bin, san, area.res(), tmp_path / "sanlock-holder.out")
    sheld = area.leader()
    assert (sheld.owner_id, sheld.lver, sheld.timestamp != 0) == (2, held.lver + 1, True), sheld
    assert dp.try_acquire(area.res())[0] == IDLIVE
    marker = tmp_path / "ran"
    got = dp.cli("command", "-r", area.res(), "-c", "/usr/bin/touch", str(marker))
    assert got.returncode == 1 and "held by host_id 2" in got.stderr and len(got.stderr.splitlines()) == 1, got
    assert not marker.exists(), "the command ran without the lease"
    assert area.leader() == sheld
    with dp.api() as c:  # refused clients hold nothing, and are forgotten once they exit
        wait_for(lambda: c.status()["clients"] == [], 5, "the refused clients to be forgotten")

    sholder.kill()
    wait_for(lambda: area.leader().timestamp == 0, 5, "sanlock to release R")
    assert dp.try_acquire(area.res())[0] == 0
    assert (area.leader().owner_id, area.leader().lver) == (1, sheld.lver + 1)


def test_shared_both_ways(mixed: tuple[Area, DiskpaxosDaemon, Any], sanlock_bin: str, tmp_path: Path) -> None:
    """sanlock SH: diskpaxos EX gets -11.  diskpaxos SH then coexists with it (both mode blocks on
    storage, leader free); EX from a host holding SH itself gets -17 on both sides.  sanlock's SH
    gone, diskpaxos's SH alive: sanlock EX gets -11.  All gone: EX succeeds from both sides."""
    area, dp, san = mixed
    s_sh = sanlock_hold(sanlock_bin, san, area.res(":SH"), tmp_path / "sanlock-sh.out")
    assert owners(dp, area) == {(2, True)}
    assert dp.try_acquire(area.res())[0] == -EAGAIN
    assert owners(dp, area) == {(2, True)}, "a refused EX disturbed the SH holder"

    d_sh = dp.hold(area.res(":SH"), "sleep", "600")
    assert owners(dp, area) == {(1, True), (2, True)}
    assert area.leader().timestamp == 0  # shared holders leave the leader free
    status = dp.cli("status").stdout
    assert f"r {area.res()}:SH p {d_sh.pid}" in status.splitlines(), status
    assert s_sh.alive and d_sh.alive
    # EX on a host that holds R shared itself (for another process): -17 from both, as sanlock
    assert dp.try_acquire(area.res())[0] == -EEXIST
    assert sanlock_try(sanlock_bin, san, area.res())[0] == -EEXIST
    assert owners(dp, area) == {(1, True), (2, True)}

    s_sh.kill()
    wait_for(lambda: owners(dp, area) == {(1, True)}, 5, "sanlock's SH to be released")
    assert sanlock_try(sanlock_bin, san, area.res())[0] == -EAGAIN
    assert owners(dp, area) == {(1, True)} and d_sh.alive

    d_sh.kill()
    wait_for(lambda: owners(dp, area) == set(), 5, "diskpaxos's SH to be released")
    assert sanlock_try(sanlock_bin, san, area.res())[0] == 0
    assert dp.try_acquire(area.res())[0] == 0


# --- client command, and a diskpaxos-only host ---------------------------------------------------------


def test_command_args_are_passed_verbatim(dp_daemon: Callable[..., DiskpaxosDaemon], tmp_path: Path) -> None:
    """``client command -r R -c /bin/sh -c SCRIPT ARG0 ARG1``: everything after ``-c PATH`` is the
    command's argv, even words that look like our options (as sanlock's ``client command``).  The
    script sees R held by its host while it runs; its exit status is the command's."""
    area = make_area(tmp_path / "leases.img")
    h1 = dp_daemon("host1")
    h1.join(area, 1, "dpA")
    script = '"$0" direct read-leader -r "$1" | grep -qx "owner_id 1" || exit 3; exit 7'
    got = h1.cli("command", "-r", area.res(), "-c", "/bin/sh", "-c", script, DISKPAXOS, area.res())
    assert got.returncode == 7, got
    rec = wait_for(lambda: (r := area.leader()).timestamp == 0 and r, 5, "R released after the command")
    assert (rec.owner_id, rec.lver) == (1, 1), rec


def test_second_daemon_on_a_run_dir_refuses(dp_daemon: Callable[..., DiskpaxosDaemon]) -> None:
    """A second ``diskpaxos daemon`` on a run dir in use exits non-zero with one line naming the run
    dir and the running daemon's pid; the first one keeps serving."""
    h1 = dp_daemon("host1")
    got = run([DISKPAXOS, "daemon", "--run-dir", str(h1.run_dir), "--config", str(h1.config_path)], timeout=30)
    assert got.returncode != 0, got
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and str(h1.run_dir) in lines[0] and re.search(rf"\bpid {h1.pid}\b", lines[0]), got
    assert got.stdout == ""
    with h1.api() as c:
        assert c.status() is not None
    assert (h1.run_dir / "diskpaxos.sock").is_socket()


def test_shutdown_refuses_while_leases_are_held(dp_daemon: Callable[..., DiskpaxosDaemon], tmp_path: Path) -> None:
    """``client shutdown`` refuses (exit 1, one line naming the holder) while a client holds R, and
    nothing changes; with no holder it stops the daemon: exit status 0, host_id released on storage
    (timestamp 0), socket removed, watchdog helper gone."""
    area = make_area(tmp_path / "leases.img")
    h1 = dp_daemon("host1")
    h1.join(area, 1, "dpA")
    holder = h1.hold(area.res(), "sleep", "600")
    refused = h1.cli("shutdown")
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused
    assert str(holder.pid) in refused.stderr, refused
    assert holder.alive and area.leader().timestamp != 0
    holder.kill()
    wait_for(lambda: area.leader().timestamp == 0, 5, "R released")
    done = h1.cli("shutdown")
    assert done.returncode == 0 and done.stdout == "shutdown done 0\n", done
    assert h1.proc is not None and h1.proc.wait(15) == 0, h1.log()
    assert area.delta(1).timestamp == 0
    assert not (h1.run_dir / "diskpaxos.sock").exists()
    assert h1.helper_exited(5)


def test_stopped_daemon_watchdog_kills_at_lease_expiry(dp_daemon: Callable[..., DiskpaxosDaemon],
                                                       cleanup: contextlib.ExitStack, tmp_path: Path) -> None:
    """SIGSTOP host 1's daemon (hung, not dead: its socket stays open) while its client holds R: the
    watchdog helper hears no new deadline and SIGKILLs the client at the last one it heard, the
    local lease expiry (id_renewal_fail, 8 s after the last renewal), long before host_dead."""
    area = make_area(tmp_path / "leases.img")
    h1 = dp_daemon("host1")
    h1.join(area, 1, "dpA")
    holder = h1.hold(area.res(), "sleep", "600")
    assert h1.proc is not None
    h1.proc.send_signal(signal.SIGSTOP)  # our unreaped child: the pid is its own
    cleanup.callback(lambda: h1.proc is not None and h1.proc.poll() is None and h1.proc.send_signal(signal.SIGCONT))
    assert holder.wait(T.id_renewal_fail + 5), "the watchdog helper did not kill the client"
    last = area.delta(1).timestamp  # the daemon is stopped: its last renewal
    kill_after = holder.exited_at - last  # type: ignore[operator]
    assert holder.returncode == -signal.SIGKILL
    assert T.id_renewal_fail <= kill_after < T.id_renewal_fail + 1, kill_after
    assert not h1.helper_exited(), "the helper must outlive the clients it watches"
    h1.proc.send_signal(signal.SIGCONT)
    with h1.api() as c:  # the daemon, woken, forgets the dead client
        wait_for(lambda: c.status()["clients"] == [], 10, "the daemon to see its client gone")
    report("daemon stopped", watchdog_kill_after_last_renewal_s=kill_after)


PROM_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})?'
                         r' (\S+)( -?\d+)?$')
PROM_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_prometheus(text: str) -> dict[tuple[str, str], float]:
    """Samples of Prometheus text exposition (0.0.4), checked as a scraper would: every line a
    comment or a sample, a TYPE line at most once per metric and before its samples, all samples of
    a metric in one group, no sample twice.  Returns {(name, labels): value}."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    samples: dict[tuple[str, str], float] = {}
    typed: dict[str, str] = {}
    finished: set[str] = set()
    current: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] == "TYPE":
                name = parts[2]
                assert len(parts) == 4 and parts[3] in PROM_TYPES, f"line {n}: bad TYPE: {line!r}"
                assert name not in typed, f"line {n}: second TYPE for {name}"
                assert name not in finished and name != current, f"line {n}: TYPE after samples of {name}"
                typed[name] = parts[3]
            continue
        m = PROM_SAMPLE.match(line)
        assert m, f"line {n}: not a sample: {line!r}"
        name, labels, value = m[1], m[2] or "", m[3]
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in typed:
                family = name[: -len(suffix)]
        if family != current:
            assert family not in finished, f"line {n}: samples of {family} are not in one group"
            if current is not None:
                finished.add(current)
            current = family
        assert (name, labels) not in samples, f"line {n}: duplicate sample {name}{labels}"
        samples[(name, labels)] = float(value)
        if typed.get(family) == "counter":
            assert samples[(name, labels)] >= 0 and not math.isnan(samples[(name, labels)])
    return samples


def test_status_host_status_renewal_metrics(dp_daemon: Callable[..., DiskpaxosDaemon], tmp_path: Path) -> None:
    """Two diskpaxos hosts on LS, host 1 also in LS2 and holding R for a client: ``client status``
    (text and --json), ``host-status`` (both hosts LIVE, names, generations), ``renewal`` (ok
    renewals every 2 s) and ``metrics`` (valid Prometheus text with both lockspaces) say so."""
    area = make_area(tmp_path / "leases.img")
    area2 = make_area(tmp_path / "leases2.img", name="LS2")
    h1, h2 = dp_daemon("host1"), dp_daemon("host2")
    gen1, gen2, gen1b = parallel(lambda: h1.join(area, 1, "dpA"), lambda: h2.join(area, 2, "dpB"),
                                 lambda: h1.join(area2, 1, "dpA"))
    holder = h1.hold(area.res(), "sleep", "600")
    lease = f"{area.res()}:1"

    got = h1.cli("status", "--json")
    assert got.returncode == 0, got
    st = json.loads(got.stdout)
    assert sorted(st["lockspaces"], key=lambda x: x["lockspace"]) == [
        {"lockspace": LS, "host_id": 1, "generation": gen1, "state": "joined", "valid": True, "io_timeout": IO},
        {"lockspace": "LS2", "host_id": 1, "generation": gen1b, "state": "joined", "valid": True,
         "io_timeout": IO}]
    assert st["clients"] == [{"pid": holder.pid, "name": "", "info": "", "leases": [lease], "fencing": False}]
    text = h1.cli("status").stdout.splitlines()
    assert f"s {LS}:1 generation {gen1} joined" in text and f"p {holder.pid}" in text, text
    assert f"r {lease} p {holder.pid}" in text, text

    def both_live() -> list[dict[str, Any]] | None:
        got = h1.cli("host-status", "-s", LS, "--json")
        assert got.returncode == 0, got
        hosts = json.loads(got.stdout)
        return hosts if {h["host_id"]: h["state"] for h in hosts} == {1: "LIVE", 2: "LIVE"} else None

    hosts = {h["host_id"]: h for h in wait_for(both_live, 15, "host 1 to see host 2 LIVE", 0.5)}
    assert (hosts[1]["name"], hosts[1]["generation"], hosts[1]["io_timeout"]) == ("dpA", gen1, IO)
    assert (hosts[2]["name"], hosts[2]["generation"], hosts[2]["io_timeout"]) == ("dpB", gen2, IO)
    assert 0 < hosts[2]["timestamp"] <= area.delta(2).timestamp
    lines = h1.cli("host-status", "-s", LS).stdout.splitlines()
    assert any(re.fullmatch(rf"2 timestamp \d+ generation {gen2} LIVE dpB", line) for line in lines), lines

    wait_for(lambda: len(h1.cli("renewal", "-s", LS).stdout.splitlines()) >= 3, 15, "three renewals", 0.5)
    renewals = h1.cli("renewal", "-s", LS).stdout.splitlines()
    parsed = [re.fullmatch(r"timestamp=(\d+) read_ms=(\d+\.\d{3}) write_ms=(\d+\.\d{3}) ok", r) for r in renewals]
    assert all(parsed), renewals
    stamps = [int(m[1]) for m in parsed if m]
    assert all(T.id_renewal <= b - a <= T.id_renewal + 1 for a, b in zip(stamps, stamps[1:])), stamps
    assert stamps[-1] <= area.delta(1).timestamp

    got = h1.cli("metrics")
    assert got.returncode == 0, got
    samples = parse_prometheus(got.stdout)
    for name, value in (("diskpaxos_lockspaces", 2), ("diskpaxos_clients", 1), ("diskpaxos_leases", 1),
                        ("diskpaxos_acquires_total", 1), ("diskpaxos_acquire_failures_total", 0),
                        ("diskpaxos_fenced_total", 0)):
        assert samples.get((name, "")) == value, (name, got.stdout)
    for ls in (LS, "LS2"):
        assert samples[("diskpaxos_lockspace_valid", f'{{lockspace="{ls}"}}')] == 1
        for io in ("read", "write"):
            assert samples[("diskpaxos_renewal_ms", f'{{lockspace="{ls}",io="{io}"}}')] >= 0

    bad = h1.cli("host-status", "-s", "NOPE")
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "NOPE" in bad.stderr, bad


# --- the long scenarios (68 s each), in background threads -------------------------------------------------


class LeaderWatch:
    """Polls R's leader on storage every 10 ms: the last time it was still ``held`` and the first
    time it was anything else bracket the moment another host took R."""

    POLL = 0.01

    def __init__(self, area: Area) -> None:
        self.area = area
        self.held = area.leader()
        self.last_unchanged = time.monotonic()
        self.first_changed: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="leader-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            got = direct.read_leader(self.area.path, MiB, kind="resource", space_name=LS, resource_name=RES)
            now = time.monotonic()
            if got.error is not None:  # a sector read while being rewritten: look again
                continue
            if got.record == self.held:
                self.last_unchanged = now
            else:
                self.first_changed = now
                return
            self._stop.wait(self.POLL)

    def stop(self) -> None:
        """Called once the taker says it acquired: first let the watcher see the change."""
        deadline = time.monotonic() + 2
        while self.first_changed is None and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(self.POLL)
        self._stop.set()
        self._thread.join(5)


def attempts_until_acquired(try_once: Callable[[], tuple[int, float]], give_up: float) -> list[dict[str, Any]]:
    """Acquire attempts while they fail with -243 (the owner still counts as alive)."""
    out: list[dict[str, Any]] = []
    while True:
        start = time.monotonic()
        code, end = try_once()
        out.append({"start": start, "end": end, "code": code})
        if code != IDLIVE or end > give_up:
            return out
        time.sleep(0.5)


def fault_plan(workdir: Path, kind: str) -> tuple[Path, Path]:
    """A plan file making every lease read and write fail (kind "error") or hang ("hang") once the
    trigger file exists; returns (plan, trigger)."""
    trigger = workdir / "pull-the-plug"
    plan = workdir / "plan.json"
    plan.write_text(json.dumps({"trigger": str(trigger), "seed": 0,
                                "faults": [{"kind": kind, "op": "read"}, {"kind": kind, "op": "write"}]}))
    return plan, trigger


def other_host(taker: str, workdir: Path, area: Area, sanlock_bin: str, san_cls: type,
               stack: contextlib.ExitStack) -> tuple[Callable[[], Any], Callable[[], tuple[int, float]]]:
    """Host 2 (a diskpaxos or a sanlock daemon): (join, one acquire attempt)."""
    if taker == "diskpaxos":
        h2 = DiskpaxosDaemon(workdir, "host2")
        stack.callback(h2.stop)
        return (lambda: h2.join(area, 2, "dpB")), (lambda: h2.try_acquire(area.res()))
    san = san_cls(sanlock_bin, workdir / "sanlock-run", "sanB")
    stack.callback(san.stop)
    stack.callback(sanlock_leave, sanlock_bin, san, area, 2)
    return (lambda: sanlock_join(sanlock_bin, san, area, 2)), (lambda: sanlock_try(sanlock_bin, san, area.res()))


def scenario_storage_lost(fault: str, taker: str, sanlock_bin: str, san_cls: type, workdir: Path,
                          stack: contextlib.ExitStack) -> dict[str, Any]:
    """Host 1 (diskpaxos, with a fault plan) holds R for ``sleep 600``; its storage goes (errors or
    hangs on every lease I/O); host 2 tries to take R until it can."""
    area = make_area(workdir / "leases.img")
    plan, trigger = fault_plan(workdir, fault)
    h1 = DiskpaxosDaemon(workdir, "host1", fault_plan=str(plan))
    stack.callback(h1.stop)
    join2, try2 = other_host(taker, workdir, area, sanlock_bin, san_cls, stack)
    parallel(lambda: h1.join(area, 1, "dpA"), join2)
    holder = h1.hold(area.res(), "sleep", "600")
    t_held = time.monotonic()
    held = area.leader()
    refused_live = try2()[0]

    watch = LeaderWatch(area)
    stack.callback(watch.stop)
    t_trigger = time.monotonic()
    trigger.touch()
    killed = holder.wait(T.id_renewal_fail + 10)
    # the lockspace fails locally at id_renewal_fail; the daemon then says so
    with h1.api() as c:
        wait_for(lambda: not c.inq_lockspace(area.ls(1))["valid"], T.id_renewal_fail + 5,
                 "host 1's lockspace to fail")
        t_invalid = time.monotonic()
        status = c.status()
        renewals = c.renewal(LS)
        metrics = c.metrics()
    attempts = attempts_until_acquired(try2, t_trigger + T.host_dead + 40)
    watch.stop()
    return {"held": held.__dict__, "t_held": t_held, "holder_pid": holder.pid, "refused_live": refused_live,
            "t_trigger": t_trigger, "killed": killed, "t_kill": holder.exited_at, "kill_rc": holder.returncode,
            "t_invalid": t_invalid, "status": status, "renewals": renewals, "metrics": metrics,
            "attempts": attempts, "last_unchanged": watch.last_unchanged, "first_changed": watch.first_changed,
            "after": area.leader().__dict__,
            # host 1 can write no more: its record holds its last good renewal
            "last_ts": area.delta(1).timestamp}


def scenario_daemon_killed(sanlock_bin: str, san_cls: type, workdir: Path,
                           stack: contextlib.ExitStack) -> dict[str, Any]:
    """Host 1's daemon is SIGKILLed while its client holds R; host 2 (diskpaxos) takes R when it
    can; then a new daemon on host 1's run dir rejoins with the same name."""
    area = make_area(workdir / "leases.img")
    h1 = DiskpaxosDaemon(workdir, "host1")
    stack.callback(h1.stop)
    join2, try2 = other_host("diskpaxos", workdir, area, sanlock_bin, san_cls, stack)
    gen1, _ = parallel(lambda: h1.join(area, 1, "dpA"), join2)
    holder = h1.hold(area.res(), "sleep", "600")
    held = area.leader()
    refused_live = try2()[0]

    watch = LeaderWatch(area)
    stack.callback(watch.stop)
    t_kill = time.monotonic()
    h1.kill()
    client_dead = holder.wait(10)
    helper_exited = h1.helper_exited(10)
    t_helper = time.monotonic()
    attempts = attempts_until_acquired(try2, t_kill + T.host_dead + 40)
    watch.stop()
    after = area.leader()
    last_ts = area.delta(1).timestamp

    t0 = time.monotonic()
    h1.start()
    gen2 = h1.join(area, 1, "dpA")
    rejoin_s = time.monotonic() - t0
    with h1.api() as c:
        restarted = c.status()
    return {"gen1": gen1, "gen2": gen2, "held": held.__dict__, "refused_live": refused_live, "t_kill": t_kill,
            "client_dead": client_dead, "t_client_dead": holder.exited_at, "client_rc": holder.returncode,
            "helper_exited": helper_exited, "t_helper": t_helper, "attempts": attempts,
            "last_unchanged": watch.last_unchanged, "first_changed": watch.first_changed,
            "after": after.__dict__, "last_ts": last_ts, "rejoin_s": rejoin_s, "restarted": restarted,
            "after_restart": h1.try_acquire(area.res())[0]}


def scenario_rejoin_renamed(sanlock_bin: str, san_cls: type, workdir: Path,
                            stack: contextlib.ExitStack) -> dict[str, Any]:
    """Host 1's daemon is SIGKILLed; a new daemon on its run dir joins under another host name: it
    must wait host_dead before taking host_id 1 back (the old incarnation may still be alive)."""
    area = make_area(workdir / "leases.img")
    h1 = DiskpaxosDaemon(workdir, "host1")
    stack.callback(h1.stop)
    gen1 = h1.join(area, 1, "dpA")
    h1.kill()
    h1.start()
    t0 = time.monotonic()
    gen2 = h1.join(area, 1)  # the default: a new <uuid>.<node> name per join
    return {"gen1": gen1, "gen2": gen2, "join_s": time.monotonic() - t0, "name": area.delta(1).resource_name}


SCENARIOS: dict[str, tuple[Callable[..., dict[str, Any]], str]] = {
    "lost-errors": (lambda *a: scenario_storage_lost("error", "diskpaxos", *a), "test_storage_lost_io_errors"),
    "lost-hangs": (lambda *a: scenario_storage_lost("hang", "sanlock", *a), "test_storage_lost_io_hangs"),
    "daemon-killed": (scenario_daemon_killed, "test_daemon_killed_while_a_client_holds"),
    "rejoin-renamed": (scenario_rejoin_renamed, "test_rejoin_under_another_name_waits_host_dead"),
}


class Scenarios(BackgroundScenarios):
    """The 68 s scenarios, run in background threads.

    When a worker sets this module up (its first test here), it starts every
    selected scenario not yet claimed by another worker (a claim is a file
    created with O_EXCL in a directory all workers of the session share).  A
    scenario acts and measures, then writes its numbers (or its traceback) to a
    JSON file there; its test, placed last in the module, waits for that file
    and asserts.  So the scenarios overlap each other and the short tests,
    however xdist distributes the tests, and none runs twice.
    """

    def __init__(self, shared: Path, wanted: list[str], sanlock_bin: str, san_cls: type) -> None:
        super().__init__(shared, wanted, SCENARIOS, (sanlock_bin, san_cls), timeout=270)


@pytest.fixture(scope="module", autouse=True)
def scenarios(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              sanlock_bin: str) -> Iterator[Scenarios]:
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "daemon-scenarios"
    shared.mkdir(exist_ok=True)
    selected = {getattr(item, "originalname", item.name) for item in request.session.items}
    wanted = [name for name, (_, test) in SCENARIOS.items() if test in selected]
    s = Scenarios(shared, wanted, sanlock_bin, sanlock_daemon_class(request.config))
    s.start()
    yield s
    s.join()


def check_storage_lost(r: dict[str, Any]) -> dict[str, float]:
    """The timing rules of a lost host, from the scenario's measurements."""
    last = r["last_ts"]  # whole seconds of CLOCK_MONOTONIC: the last good renewal was in [last, last + 1)
    assert r["refused_live"] == IDLIVE, r["refused_live"]
    assert r["t_trigger"] >= last, "the last good renewal must precede pulling the plug"
    # host 1 could not renew after the trigger: every renewal since failed
    since = [x for x in r["renewals"] if x["local_time"] > r["t_trigger"] + 0.1]
    assert len(since) >= 2 and not any(x["ok"] for x in since), since
    # fenced from the warning point (SIGTERM: the daemon's doing, not the watchdog's SIGKILL at expiry)
    assert r["killed"], "the client survived its lockspace's failure"
    kill_after = r["t_kill"] - last
    assert r["kill_rc"] == -signal.SIGTERM, r["kill_rc"]
    assert T.id_renewal_warn <= kill_after < T.id_renewal_fail - FENCE_MARGIN, kill_after
    assert r["t_invalid"] - last >= T.id_renewal_fail
    assert r["status"]["clients"] == [] and r["status"]["lockspaces"][0]["valid"] is False, r["status"]
    assert re.search(r"^diskpaxos_fenced_total 1$", r["metrics"], re.M), r["metrics"]
    # host 2 took R only after host_dead: R's leader stayed host 1's until then
    attempts = r["attempts"]
    assert attempts[-1]["code"] == 0, attempts
    assert all(a["code"] == IDLIVE for a in attempts[:-1]), attempts
    assert r["first_changed"] is not None
    take_after = r["first_changed"] - last
    assert take_after >= T.host_dead, f"R taken {take_after:.3f} s after host 1's last renewal"
    assert r["last_unchanged"] - last >= T.host_dead - 0.5  # the bracket is tight
    assert take_after <= T.paxos_acquire_held_max + 1, take_after
    held, after = r["held"], r["after"]
    assert (after["owner_id"], after["lver"]) == (2, held["lver"] + 1), after
    return {"kill_after_last_renewal_s": kill_after, "lockspace_failed_after_s": r["t_invalid"] - last,
            "takeover_after_last_renewal_s": take_after, "attempts": len(attempts)}


@pytest.mark.timeout(300)
def test_storage_lost_io_errors(scenarios: Scenarios, tmp_path: Path) -> None:
    """Every lease I/O of host 1 fails (EIO) from the trigger on: its client is SIGTERMed from the
    warning point (6 s after the last good renewal), before id_renewal_fail (8 s); diskpaxos host 2
    takes R only 68 s (host_dead) after host 1's last renewal.  The holders' intervals, in the
    torture checker's terms, do not overlap."""
    r = scenarios.result("lost-errors")
    numbers = check_storage_lost(r)
    report("storage lost (I/O errors), diskpaxos taker", **numbers)
    # the same story as holder logs for the independent checker: host 1 holds from when the
    # daemon listed its client until its kill (+ id_renewal_fail: the checker's margin for a kill);
    # host 2 holds from its acquire's return until it released
    take = r["attempts"][-1]
    (tmp_path / "host-1.log").write_text(f"{r['t_held']:.6f} USE host=1 pid={r['holder_pid']} "
                                         f"lver={r['held']['lver']}\n")
    (tmp_path / "orchestrator.log").write_text(f"{r['t_kill']:.6f} KILL host=1 pid={r['holder_pid']} why=fenced\n")
    # (host 2's holder was a scratch process released at once: pid 0 stands for it)
    (tmp_path / "host-2.log").write_text(f"{take['end']:.6f} USE host=2 pid=0 lver={r['after']['lver']}\n"
                                         f"{take['end'] + 0.05:.6f} DROP host=2 pid=0 lver={r['after']['lver']}\n")
    got = checker.check(str(tmp_path), T.id_renewal_fail, time.monotonic())
    assert len(got.intervals) == 2 and got.violations == 0, (got.overlaps, got.lver_errors)


@pytest.mark.timeout(300)
def test_storage_lost_io_hangs(scenarios: Scenarios) -> None:
    """Every lease I/O of host 1 hangs from the trigger on: the same fencing times; sanlock host 2
    takes R only after host_dead."""
    r = scenarios.result("lost-hangs")
    report("storage lost (I/O hangs), sanlock taker", **check_storage_lost(r))


@pytest.mark.timeout(300)
def test_daemon_killed_while_a_client_holds(scenarios: Scenarios) -> None:
    """SIGKILL host 1's daemon while its client holds R: the watchdog helper SIGKILLs the client
    within 1 s and exits; host 2 takes R only after host_dead.  A new daemon on host 1's run dir
    takes host_id 1 back at once under the same name, one generation up, and serves."""
    r = scenarios.result("daemon-killed")
    last = r["last_ts"]
    assert r["refused_live"] == IDLIVE
    assert r["client_dead"] and r["client_rc"] == -signal.SIGKILL, r
    kill_delay = r["t_client_dead"] - r["t_kill"]
    assert kill_delay < 1.0, f"the client outlived its daemon by {kill_delay:.3f} s"
    assert r["helper_exited"] and r["t_helper"] - r["t_kill"] < 5
    attempts = r["attempts"]
    assert attempts[-1]["code"] == 0 and all(a["code"] == IDLIVE for a in attempts[:-1]), attempts
    take_after = r["first_changed"] - last
    assert take_after >= T.host_dead, f"R taken {take_after:.3f} s after host 1's last renewal"
    assert r["last_unchanged"] - last >= T.host_dead - 0.5
    assert take_after <= T.paxos_acquire_held_max + 1, take_after
    assert (r["after"]["owner_id"], r["after"]["lver"]) == (2, r["held"]["lver"] + 1), r["after"]
    assert r["gen2"] == r["gen1"] + 1, (r["gen1"], r["gen2"])
    assert r["rejoin_s"] < T.host_dead / 4, f"rejoin under the same name took {r['rejoin_s']:.1f} s"
    assert r["restarted"]["clients"] == [] and r["restarted"]["lockspaces"][0]["generation"] == r["gen2"]
    assert r["after_restart"] == 0  # the new daemon acquires again
    report("daemon SIGKILLed", client_killed_after_s=kill_delay, helper_exit_s=r["t_helper"] - r["t_kill"],
           kill_after_last_renewal_s=r["t_kill"] - last, takeover_after_last_renewal_s=take_after,
           rejoin_s=r["rejoin_s"], generations=f"{r['gen1']}->{r['gen2']}")


@pytest.mark.timeout(300)
def test_rejoin_under_another_name_waits_host_dead(scenarios: Scenarios) -> None:
    """After a crash, a join under a new host name waits host_dead before taking host_id 1 (the
    record it finds is another name's), then holds it one generation up under the new name."""
    r = scenarios.result("rejoin-renamed")
    assert r["join_s"] >= T.host_dead, r
    assert r["gen2"] == r["gen1"] + 1 and r["name"] != "dpA", r
    report("rejoin under another name", join_s=r["join_s"])
