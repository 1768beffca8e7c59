"""Delta leases live against the real sanlock: mixed lockspaces of sanlock daemons and diskpaxos hosts.

Every test runs real sanlock 3.8.5 daemons (one per "host", each in its own run
dir) and diskpaxos hosts, in-process (``Lockspace.join``) or as a separate
``diskpaxos lockspace join`` process, in one lockspace formatted with
io_timeout 1 (spec section 7: renew every 2 s, FAIL after 8 s, DEAD after
8 + 60 = 68 s, a held host_id waits 68 s before it is taken).

- both sides see each other LIVE (2 and 3 hosts, a file and a 4K loop device);
- neither side takes a host_id the other keeps renewing (SANLK_HOSTID_BUSY);
- a host that stops renewing is FAIL then DEAD for the other implementation at
  the section 7 times, measured from its last written timestamp;
- a join after a clean leave is short (2 x io_timeout), after a crash it waits
  host_dead, and each join's generation is what sanlock reads.

Timing: a host's ``timestamp`` is CLOCK_MONOTONIC seconds of this machine
(truncated), so ``time.monotonic()`` here is directly comparable with it.  An
observer learns of a renewal only at its own next read (sanlock: every ~2.5 s,
noted up to a second later, in whole seconds; diskpaxos: every 2 s), so its
verdicts can lag a renewal by up to ~4 s.  The crash tests therefore kill a
host right after the observer has seen its last renewal at most one second
(sanlock's whole seconds) or 1.2 s (diskpaxos) after its timestamp: the
measured delay is then the threshold rule itself, and "never earlier than the
threshold, at most 2 s later" is asserted from the killed host's last
timestamp, read back from storage with sanlock's read_leader.

The long waits overlap: the crash tests time the 68 s rejoin while watching
FAIL -> DEAD; the busy test runs sanlock's and diskpaxos's refused joins at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from oracle import DISKPAXOS, daemon_log, parse_host_status, py_sanlock, sanlock
from oracle import sanlock_client as client

from diskpaxos import delta_lease
from diskpaxos.format import HostState
from diskpaxos.lockspace import Lockspace, State

pytestmark = pytest.mark.interop

MiB = 1024 * 1024
LS = "LS"
IO = 1
# spec section 7, written out here rather than taken from diskpaxos.timeouts (the code under test)
FAIL_AFTER = 8 * IO  # id_renewal_fail: FAIL when not seen renewing for longer
DEAD_AFTER = 8 * IO + 60  # host_dead (watchdog fire timeout 60 in 3.8.5): DEAD after
SHORT_DELAY = 2 * IO  # delta_short_delay: a join waits this after writing its record
HELD_WAIT = max(DEAD_AFTER, 2 * IO + 6 * IO)  # a join of a host_id held under another name waits first
HELD_MAX = DEAD_AFTER + 2 * IO + 4 * IO  # delta_acquire_held max
SLACK = 2.0  # a verdict may come this much after its threshold, never before
POLL = 0.25

# sanlock's host flags (get_hosts "flags" & SANLK_HOST_MASK)
UNKNOWN, FREE, LIVE, FAIL, DEAD = 1, 2, 3, 4, 5
FLAG_NAMES = {UNKNOWN: "UNKNOWN", FREE: "FREE", LIVE: "LIVE", FAIL: "FAIL", DEAD: "DEAD"}

STORAGE = {
    "file-512": ("file", ()),
    "loop4k-1M": ("loop4k", ("-Z", "4096", "-A", "1M")),
    "loop4k-8M": ("loop4k", ()),  # sanlock's default for a 4K device: 8M alignment
}


# --- storage and sanlock helpers --------------------------------------------------------


@pytest.fixture
def make_lockspace(tmp_path: Path, loop_device: Callable[..., str],
                   sanlock_bin: str) -> Callable[[str], str]:
    """Factory: a fresh target of the given STORAGE kind, formatted by sanlock with ``-o 1``."""

    def make(kind: str) -> str:
        target, geometry = STORAGE[kind]
        if target == "file":
            path = tmp_path / "lockspace.img"
            with open(path, "wb") as f:
                f.truncate(16 * MiB)
            path_s = str(path)
        else:
            path_s = loop_device(4096, 32 * MiB)
        got = sanlock(sanlock_bin, "direct", "init", "-s", f"{LS}:0:{path_s}:0", "-o", str(IO), *geometry)
        assert got.returncode == 0 and "init done 0" in got.stdout, got
        return path_s

    return make


def spec(host_id: int, path: str) -> str:
    return f"{LS}:{host_id}:{path}:0"


def sanlock_join(sanlock_bin: str, daemon: Any, host_id: int, path: str) -> float:
    """add_lockspace (blocks until joined); returns how long it took."""
    t0 = time.monotonic()
    got = client(sanlock_bin, daemon, "add_lockspace", "-s", spec(host_id, path), "-o", str(IO), timeout=60)
    took = time.monotonic() - t0
    assert got.returncode == 0 and "done 0" in got.stdout, (got.stdout, got.stderr, daemon_log(daemon))
    return took


def sanlock_leave(sanlock_bin: str, daemon: Any, host_id: int, path: str) -> None:
    """rem_lockspace, best effort (teardown): lets the daemon stop at once."""
    if daemon.proc.poll() is None:
        try:
            client(sanlock_bin, daemon, "rem_lockspace", "-s", spec(host_id, path), timeout=30)
        except subprocess.TimeoutExpired:
            pass


def kill_daemon(daemon: Any) -> None:
    """SIGKILL a sanlock daemon and its helper child, by pid: a host that crashed."""
    helpers = daemon._children()
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.wait(timeout=10)
    for pid in helpers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def get_hosts(sanlock_python: str, daemon: Any, host_id: int = 0) -> dict[int, dict[str, int]]:
    """python3-sanlock's ``get_hosts`` through the daemon: {host_id: {flags, generation, timestamp, ...}}.

    Empty until the daemon has checked the other hosts once (EAGAIN).
    """
    got = py_sanlock(sanlock_python, f"result = sanlock.get_hosts(b'{LS}', {host_id})", env=daemon.env)
    if isinstance(got, dict):
        assert got == {"errno": 11}, got  # EAGAIN: no check of other hosts yet
        return {}
    assert isinstance(got, list)
    return {h["host_id"]: dict(h, flags=h["flags"] & 0xF) for h in got}


def host_status(sanlock_bin: str, daemon: Any) -> dict[int, dict[str, str]]:
    """``sanlock client host_status -s LS -D``: {host_id: {timestamp, last_live, owner_name, ...}}."""
    got = client(sanlock_bin, daemon, "host_status", "-s", LS, "-D")
    assert got.returncode == 0, (got.stdout, got.stderr)
    return parse_host_status(got.stdout)


def read_leader(sanlock_bin: str, path: str, host_id: int) -> dict[str, str]:
    """The delta lease of host_id as the real sanlock reads it from storage."""
    got = sanlock(sanlock_bin, "direct", "read_leader", "-s", spec(host_id, path))
    assert "read_leader done 0" in got.stdout, got
    return dict(line.split(" ", 1) for line in got.stdout.splitlines()[1:] if " " in line)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = POLL) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- diskpaxos as a separate process ----------------------------------------------------


class JoinProcess:
    """``diskpaxos lockspace join`` in its own process; its stdout lines are timed as they arrive."""

    def __init__(self, host_id: int, path: str, log_dir: Path, name: str | None = None) -> None:
        self.path = path
        argv = [DISKPAXOS, "lockspace", "join", "-s", spec(host_id, path), "-o", str(IO)]
        if name is not None:
            argv += ["--name", name]
        self.stderr_path = log_dir / f"join-{host_id}-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._eof = False
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL,
                                     text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            out = "\n".join(f"{t:.2f} {line}" for t, line in self.lines)
        return f"stdout:\n{out}\nstderr:\n{self.stderr_path.read_text(errors='replace')[-2000:]}"

    def wait_line(self, pattern: str, timeout: float) -> tuple[float, re.Match[str]]:
        """(arrival time, match) of the first stdout line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in self.lines:
                    m = re.search(pattern, line)
                    if m:
                        return t, m
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    break
                self._cond.wait(min(left, 0.5))
        pytest.fail(f"diskpaxos join (pid {self.pid}) printed no line matching {pattern!r} "
                    f"within {timeout} s (exit {self.proc.poll()}):\n{self.output()}")

    def join_time(self, timeout: float) -> tuple[float, int, str]:
        """Wait until joined: (seconds from "joining" to "joined", generation, host name)."""
        t_joined, m = self.wait_line(r"^joined \S+ host_id \d+ generation (\d+) name (.*)$", timeout)
        t_joining, _ = self.wait_line(r"^joining ", 0)
        return t_joined - t_joining, int(m[1]), m[2]

    def last_renewal(self) -> int | None:
        """The timestamp of its latest successful renewal, as it printed it."""
        with self._cond:
            for _, line in reversed(self.lines):
                m = re.match(r"^timestamp=(\d+) .* ok$", line)
                if m:
                    return int(m[1])
        return None

    def sigkill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM: the clean leave; returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Teardown, whatever happened: SIGTERM, then SIGKILL by pid."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)  # in case a failed test left it frozen
            try:
                self.terminate(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        self._stderr.close()


@pytest.fixture
def join_process(tmp_path: Path) -> Iterator[Callable[..., JoinProcess]]:
    """Factory for ``JoinProcess``; every process it started is stopped by pid after the test."""
    started: list[JoinProcess] = []

    def start(host_id: int, path: str, name: str | None = None) -> JoinProcess:
        p = JoinProcess(host_id, path, tmp_path, name)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


# --- a diskpaxos host either way, for the "both see each other" tests --------------------


@dataclass
class DiskpaxosHost:
    generation: int
    name: str
    table: Callable[[], dict[int, dict[str, Any]]]  # diskpaxos's host table: {host_id: {state, generation, ...}}


@contextmanager
def diskpaxos_host(mode: str, host_id: int, path: str, name: str,
                   join_process: Callable[..., JoinProcess]) -> Iterator[DiskpaxosHost]:
    """Host ``host_id`` run by diskpaxos in this process (its ``hosts()``) or as a
    ``lockspace join`` process (its view read back with ``lockspace hosts``)."""
    if mode == "inproc":
        ls = Lockspace.join(LS, host_id, path, 0, IO, name)
        try:
            yield DiskpaxosHost(ls.generation, ls.host_name,
                                lambda: {h.host_id: h.as_dict() for h in ls.hosts()})
        finally:
            ls.leave()
        assert ls.state is State.LEFT
        return

    p = join_process(host_id, path, name)
    _, generation, joined_name = p.join_time(timeout=30)

    def observed() -> dict[int, dict[str, Any]]:
        got = subprocess.run([DISKPAXOS, "lockspace", "hosts", "-s", spec(0, path), "-o", str(IO), "--json"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert got.returncode == 0, got.stderr
        return {h["host_id"]: h for h in json.loads(got.stdout)}

    yield DiskpaxosHost(generation, joined_name, observed)
    assert p.terminate() == 0, p.output()
    p.wait_line(r"^left ", 5)


def assert_sanlock_sees_live(sanlock_bin: str, sanlock_python: str, daemons: list[Any], host_id: int,
                             generation: int, name: str, renewals: int = 2) -> None:
    """Each daemon's get_hosts shows host_id LIVE (flags 3) with this generation and io_timeout,
    and its host_status shows the name written and the timestamp advancing ``renewals`` times."""
    for daemon in daemons:
        wait_for(lambda: get_hosts(sanlock_python, daemon).get(host_id, {}).get("flags") == LIVE, 20,
                 f"sanlock to see host {host_id} LIVE")
    stamps: list[list[int]] = [[] for _ in daemons]

    def advanced() -> bool:
        for daemon, seen in zip(daemons, stamps):
            hs = host_status(sanlock_bin, daemon)[host_id]
            assert hs["owner_name"] == name and int(hs["owner_generation"]) == generation, hs
            host = get_hosts(sanlock_python, daemon)[host_id]
            assert (host["flags"], host["generation"], host["io_timeout"]) == (LIVE, generation, IO), host
            if not seen or int(hs["timestamp"]) != seen[-1]:
                seen.append(int(hs["timestamp"]))
        return all(len(seen) > renewals for seen in stamps)

    wait_for(advanced, 4 * renewals + 10, f"sanlock to see host {host_id} renew {renewals} times", interval=0.5)
    for seen in stamps:
        assert seen == sorted(seen), seen


def assert_diskpaxos_sees_live(dp: DiskpaxosHost, expected: dict[int, tuple[str, int]]) -> None:
    """diskpaxos's host table shows every {host_id: (name, generation)} LIVE, with io_timeout 1."""
    def all_live() -> dict[int, dict[str, Any]] | None:
        table = dp.table()
        return table if all(table.get(h, {}).get("state") == "LIVE" for h in expected) else None

    table = wait_for(all_live, 20, f"diskpaxos to see hosts {sorted(expected)} LIVE")
    for host_id, (name, generation) in expected.items():
        h = table[host_id]
        assert (h["state"], h["name"], h["generation"], h["io_timeout"]) == ("LIVE", name, generation, IO), h


# --- watching a host's state over time --------------------------------------------------


@dataclass
class Sample:
    before: float  # local monotonic time just before the state was sampled
    after: float  # ... and just after
    state: str
    generation: int


def watch_states(sample: Callable[[], tuple[str, int]], done: Callable[[list[Sample]], bool], timeout: float,
                 on_first: dict[str, Callable[[], None]] | None = None) -> list[Sample]:
    """Sample a host's (state, generation) every POLL seconds until ``done(samples)``.

    ``on_first[state]`` is called once, when that state is first sampled.
    """
    on_first = dict(on_first or {})
    samples: list[Sample] = []
    deadline = time.monotonic() + timeout
    while True:
        t0 = time.monotonic()
        state, generation = sample()
        samples.append(Sample(t0, time.monotonic(), state, generation))
        if state in on_first:
            on_first.pop(state)()
        if done(samples):
            return samples
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s; states seen: {runs_text(samples, samples[0].before)}")
        time.sleep(max(0.0, t0 + POLL - time.monotonic()))


def runs(samples: list[Sample]) -> list[list[Sample]]:
    """Consecutive samples of the same (state, generation)."""
    out: list[list[Sample]] = []
    for s in samples:
        if out and (out[-1][0].state, out[-1][0].generation) == (s.state, s.generation):
            out[-1].append(s)
        else:
            out.append([s])
    return out


def runs_text(samples: list[Sample], since: float) -> str:
    return ", ".join(f"{r[0].state}/gen {r[0].generation} from +{r[0].before - since:.2f}..+{r[0].after - since:.2f}"
                     for r in runs(samples))


def assert_fail_then_dead(samples: list[Sample], last_renewal: int, generation: int,
                          whole_seconds: bool) -> dict[str, float]:
    """The crashed host was LIVE, then FAIL, then DEAD; each verdict came after its threshold
    from ``last_renewal`` (never earlier: the first sample showing it was taken after the
    threshold) and at most SLACK later.  Returns {state: seconds from last_renewal to the verdict}.

    When the verdict is reached is known to within one poll: after the last sample of the old
    state began, by the end of the first sample of the new one.  sanlock compares whole seconds
    of CLOCK_MONOTONIC (``whole_seconds``), so after a crash its verdict can only change when
    that clock ticks: the tick inside that window is exactly when it changed.
    """
    seen = runs(samples)
    text = runs_text(samples, last_renewal)
    assert [(r[0].state, r[0].generation) for r in seen[:3]] == \
        [("LIVE", generation), ("FAIL", generation), ("DEAD", generation)], text
    elapsed = {}
    for i, threshold in ((1, FAIL_AFTER), (2, DEAD_AFTER)):
        before, first = seen[i - 1][-1], seen[i][0]
        assert first.before - last_renewal > threshold, f"{first.state} too early: {text}"
        if whole_seconds:
            ticks = [t for t in range(math.ceil(before.before), math.floor(first.after) + 1)
                     if before.before < t <= first.after]
            assert ticks, f"sanlock's verdict changed between clock ticks? {text}"
            at = float(ticks[-1])
        else:
            at = first.after
        assert at - last_renewal <= threshold + SLACK, f"{first.state} too late: {text}"
        elapsed[first.state] = at - last_renewal
    return elapsed


def sanlock_state(sanlock_python: str, daemon: Any, host_id: int) -> Callable[[], tuple[str, int]]:
    def sample() -> tuple[str, int]:
        host = get_hosts(sanlock_python, daemon, host_id)[host_id]
        return FLAG_NAMES.get(host["flags"], str(host["flags"])), host["generation"]
    return sample


def diskpaxos_state(ls: Lockspace, host_id: int) -> Callable[[], tuple[str, int]]:
    def sample() -> tuple[str, int]:
        host = {h.host_id: h for h in ls.hosts(include_free=True)}[host_id]
        return host.state.name, host.generation
    return sample


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result or the exception raised)."""
    t0 = time.monotonic()
    try:
        result: Any = fn()
    except Exception as e:  # the caller asserts on it
        result = e
    return time.monotonic() - t0, result


def assert_short_join(took: float) -> None:
    """A free host_id: write, wait delta_short_delay (2 x io_timeout on disk), re-read: ~2 s."""
    assert SHORT_DELAY <= took <= SHORT_DELAY + IO, f"join took {took:.2f} s"


def assert_long_join(took: float) -> None:
    """A host_id last held under another name: wait host_dead, re-read, write, short delay."""
    assert HELD_WAIT + SHORT_DELAY <= took <= HELD_MAX, f"join took {took:.2f} s"


def assert_sanlock_reads(sanlock_bin: str, path: str, host_id: int, generation: int, name: str) -> dict[str, str]:
    rec = read_leader(sanlock_bin, path, host_id)
    assert (rec["owner_id"], rec["owner_generation"], rec["resource_name"], rec["io_timeout"]) == \
        (str(host_id), str(generation), name, str(IO)), rec
    return rec


# --- 2: a host_id renewed by one implementation is busy for the other ---------------------


@pytest.mark.timeout(240)
def test_live_host_id_is_busy_for_the_other_implementation(sanlock_bin: str, sanlock_python: str,
                                                           sanlock_daemon, make_lockspace) -> None:
    """While sanlock renews host 1 and diskpaxos renews host 2 (4K device), a diskpaxos join of
    host 1 and a sanlock add_lockspace of host 2 (another daemon) both wait host_dead (68 s, at
    once), see the timestamp moved, and fail with SANLK_HOSTID_BUSY; nothing changes on storage."""
    path = make_lockspace("loop4k-1M")
    san_a = sanlock_daemon(host_name="sanA")
    san_c = sanlock_daemon(host_name="sanC")
    sanlock_join(sanlock_bin, san_a, 1, path)
    stray: list[Lockspace] = []
    try:
        with Lockspace.join(LS, 2, path, 0, IO, "dpB") as dp:
            wait_for(lambda: get_hosts(sanlock_python, san_a).get(2, {}).get("flags") == LIVE, 20, "sanlock sees 2")
            wait_for(lambda: dp.host_state(1) is HostState.LIVE, 20, "diskpaxos sees 1")

            def dp_join_1() -> Any:
                ls = Lockspace.join(LS, 1, path, 0, IO, "dpX")
                stray.append(ls)
                return ls

            with ThreadPoolExecutor(2) as pool:
                dp_try = pool.submit(timed, dp_join_1)
                san_try = pool.submit(timed, lambda: client(sanlock_bin, san_c, "add_lockspace", "-s",
                                                            spec(2, path), "-o", str(IO), timeout=150))
                dp_took, dp_err = dp_try.result(timeout=200)
                san_took, san_got = san_try.result(timeout=200)

            # diskpaxos: HostIdBusy naming the host id, sanlock's host name and generation
            assert isinstance(dp_err, delta_lease.HostIdBusy), dp_err
            assert dp_err.code == -262
            assert (dp_err.host_id, dp_err.holder, dp_err.generation) == (1, "sanA", 1)
            message = str(dp_err)
            assert "host_id 1" in message and "'sanA'" in message and "generation 1" in message, message
            assert HELD_WAIT <= dp_took <= HELD_WAIT + 3 * IO, dp_took

            # sanlock: add_lockspace fails with -262 after its own host_dead wait
            assert san_got.returncode != 0 and "add_lockspace_timeout done -262" in san_got.stdout, \
                (san_got, daemon_log(san_c))
            assert HELD_WAIT <= san_took, san_took
            assert f"s {LS}:" not in client(sanlock_bin, san_c, "status").stdout

            # the holders never noticed: same owners and generations, still renewing
            assert_sanlock_reads(sanlock_bin, path, 1, 1, "sanA")
            assert_sanlock_reads(sanlock_bin, path, 2, 1, "dpB")
            assert dp.state is State.JOINED and dp.valid
            assert all(r.ok for r in dp.renewal_history())
            assert dp.host_state(1) is HostState.LIVE
            hosts = get_hosts(sanlock_python, san_a)
            assert {h: (v["flags"], v["generation"]) for h, v in hosts.items()} == {1: (LIVE, 1), 2: (LIVE, 1)}
            print(f"\nbusy: diskpaxos refused after {dp_took:.2f} s ({dp_err}); "
                  f"sanlock refused after {san_took:.2f} s: {san_got.stdout.strip()!r}")
    finally:
        for ls in stray:
            ls.leave()
        sanlock_leave(sanlock_bin, san_a, 1, path)


# --- 3 and 4: crashes judged by the other side; rejoin after a clean leave and after a crash -------


def kill_when_sanlock_saw(p: JoinProcess, sanlock_bin: str, daemon: Any, host_id: int) -> int:
    """SIGKILL the diskpaxos process once sanlock noticed its last renewal within a second.

    Right after a renewal the process is frozen (SIGSTOP: nothing more is written, no race with
    its next renewal); if sanlock notices that renewal with a last_live (whole seconds) at most
    one second after its timestamp, the process is killed; otherwise it is thawed before its next
    renewal is due (last + 2 x io_timeout), so its schedule is untouched, and the next is tried.
    Returns the timestamp of its last renewal.
    """
    deadline = time.monotonic() + 60
    tried: set[int] = set()
    while time.monotonic() < deadline:
        last = p.last_renewal()
        if last is None or last in tried or time.monotonic() > last + 0.5 * IO:
            time.sleep(0.02)
            continue
        tried.add(last)
        thaw_by = last + 1.9 * IO
        os.kill(p.pid, signal.SIGSTOP)
        try:
            if read_leader(sanlock_bin, p.path, host_id)["timestamp"] != str(last):
                continue  # it renewed again already: try the next one
            while time.monotonic() < thaw_by:
                hs = host_status(sanlock_bin, daemon).get(host_id, {})
                if hs.get("timestamp") == str(last):
                    if int(hs["last_live"]) - last <= IO:
                        p.sigkill()
                        return last
                    break
                time.sleep(0.02)
        finally:
            if p.proc.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
    pytest.fail(f"sanlock never saw a renewal of host {host_id} within a second:\n{p.output()}")


def kill_when_diskpaxos_saw(ls: Lockspace, daemon: Any, host_id: int) -> int:
    """SIGKILL the sanlock daemon (and its helper) right after diskpaxos noticed its latest
    renewal within 1.2 s of its timestamp, before sanlock's next renewal (>= 2 s after it)."""
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        host = {h.host_id: h for h in ls.hosts()}.get(host_id)
        if host is not None and host.state is HostState.LIVE and host.last_live is not None \
                and host.last_live - host.timestamp <= 1.2 and time.monotonic() < host.timestamp + 1.5:
            kill_daemon(daemon)
            return host.timestamp
        time.sleep(0.05)
    pytest.fail(f"diskpaxos never saw a renewal of host {host_id} within 1.2 s of its timestamp")


@pytest.mark.timeout(240)
def test_diskpaxos_crash_judged_by_sanlock_and_rejoin_waits_host_dead(sanlock_bin: str, sanlock_python: str,
                                                                      sanlock_daemon, make_lockspace,
                                                                      join_process) -> None:
    """A ``diskpaxos lockspace join`` process (random host names) next to sanlock host 1:

    join on a fresh lockspace and after a clean leave take the short path (~2 s); SIGKILLed, it
    is FAIL for sanlock after 8 s and DEAD after 68 s from its last renewal; a rejoin (started
    when sanlock says FAIL) waits host_dead.  Generations 1, 2, 3 are what sanlock reads."""
    path = make_lockspace("file-512")
    san = sanlock_daemon(host_name="sanA")
    sanlock_join(sanlock_bin, san, 1, path)
    try:
        def sanlock_sees(generation: int, name: str) -> None:
            wait_for(lambda: get_hosts(sanlock_python, san).get(2, {}).get("flags") == LIVE
                     and get_hosts(sanlock_python, san)[2]["generation"] == generation, 20,
                     f"sanlock to see host 2 LIVE with generation {generation}")
            assert_sanlock_reads(sanlock_bin, path, 2, generation, name)

        p1 = join_process(2, path)
        took1, gen1, name1 = p1.join_time(timeout=30)
        assert_short_join(took1)
        assert gen1 == 1
        sanlock_sees(1, name1)

        assert p1.terminate() == 0, p1.output()  # the clean leave: timestamp 0
        wait_for(lambda: get_hosts(sanlock_python, san, 2)[2]["flags"] == FREE, 10, "host 2 FREE after leaving")
        assert read_leader(sanlock_bin, path, 2)["timestamp"] == "0"

        p2 = join_process(2, path)
        took2, gen2, name2 = p2.join_time(timeout=30)
        assert name2 != name1  # a new random name, yet no wait: the record was free
        assert_short_join(took2)
        assert gen2 == 2
        sanlock_sees(2, name2)

        last = kill_when_sanlock_saw(p2, sanlock_bin, san, 2)
        assert read_leader(sanlock_bin, path, 2)["timestamp"] == str(last)  # really its last renewal

        rejoin: list[JoinProcess] = []

        def joined_again(samples: list[Sample]) -> bool:
            return bool(rejoin) and samples[-1].generation == 3 and samples[-1].state == "LIVE"

        samples = watch_states(sanlock_state(sanlock_python, san, 2), joined_again, timeout=120,
                               on_first={"FAIL": lambda: rejoin.append(join_process(2, path))})
        elapsed = assert_fail_then_dead(samples, last, 2, whole_seconds=True)
        assert [(r[0].state, r[0].generation) for r in runs(samples)][3:] == [("LIVE", 3)], \
            runs_text(samples, last)

        took3, gen3, name3 = rejoin[0].join_time(timeout=SHORT_DELAY + 5)  # sanlock saw its write
        assert_long_join(took3)
        assert gen3 == 3 and name3 not in (name1, name2)
        sanlock_sees(3, name3)
        print(f"\ndiskpaxos crash seen by sanlock: FAIL at +{elapsed['FAIL']:.2f} s, DEAD at "
              f"+{elapsed['DEAD']:.2f} s after its last renewal; joins {took1:.2f} s, after clean leave "
              f"{took2:.2f} s, after crash {took3:.2f} s; generations {gen1}, {gen2}, {gen3}\n"
              f"{runs_text(samples, last)}")
    finally:
        sanlock_leave(sanlock_bin, san, 1, path)


@pytest.mark.timeout(240)
def test_sanlock_crash_judged_by_diskpaxos_and_host_id_taken_over(sanlock_bin: str, sanlock_python: str,
                                                                  sanlock_daemon, make_lockspace) -> None:
    """sanlock host 1 is SIGKILLed (daemon and helper): diskpaxos host 2 judges it FAIL after 8 s
    and DEAD after 68 s from its last renewal; a diskpaxos join of host 1 (started at FAIL) waits
    host_dead, takes generation 2, and sanlock reads that generation and name."""
    path = make_lockspace("file-512")
    san = sanlock_daemon(host_name="sanA")
    sanlock_join(sanlock_bin, san, 1, path)
    takeover: list[Any] = []
    pool = ThreadPoolExecutor(1)
    abort = threading.Event()
    try:
        with Lockspace.join(LS, 2, path, 0, IO, "dpB") as dp:
            wait_for(lambda: dp.host_state(1) is HostState.LIVE, 20, "diskpaxos to see host 1 LIVE")
            wait_for(lambda: get_hosts(sanlock_python, san).get(2, {}).get("flags") == LIVE, 20, "sanlock sees 2")

            last = kill_when_diskpaxos_saw(dp, san, 1)
            rec = assert_sanlock_reads(sanlock_bin, path, 1, 1, "sanA")
            assert rec["timestamp"] == str(last), rec  # really its last renewal

            def start_takeover() -> None:
                takeover.append(pool.submit(timed, lambda: Lockspace.join(LS, 1, path, 0, IO, "dpC", abort=abort)))

            def taken_over(samples: list[Sample]) -> bool:
                return samples[-1].generation == 2 and samples[-1].state == "LIVE"

            samples = watch_states(diskpaxos_state(dp, 1), taken_over, timeout=120, on_first={"FAIL": start_takeover})
            elapsed = assert_fail_then_dead(samples, last, 1, whole_seconds=False)
            assert [(r[0].state, r[0].generation) for r in runs(samples)][3:] == [("LIVE", 2)], \
                runs_text(samples, last)

            took, new = takeover[0].result(timeout=30)
            assert isinstance(new, Lockspace), new
            with new:
                assert_long_join(took)
                assert (new.generation, new.host_name) == (2, "dpC")
                assert_sanlock_reads(sanlock_bin, path, 1, 2, "dpC")
                host = {h.host_id: h for h in dp.hosts()}[1]
                assert (host.state, host.generation, host.name) == (HostState.LIVE, 2, "dpC")
                assert dp.state is State.JOINED and all(r.ok for r in dp.renewal_history())
            print(f"\nsanlock crash seen by diskpaxos: FAIL at +{elapsed['FAIL']:.2f} s, DEAD at "
                  f"+{elapsed['DEAD']:.2f} s after its last renewal; takeover join {took:.2f} s\n"
                  f"{runs_text(samples, last)}")
    finally:
        abort.set()  # a takeover still waiting gives up at once
        for future in takeover:
            got = future.result(timeout=30)[1]
            if isinstance(got, Lockspace):
                got.leave()
        pool.shutdown()
        sanlock_leave(sanlock_bin, san, 1, path)


# --- 1: both sides see each other live ---------------------------------------------------


@pytest.mark.parametrize("storage,mode", [
    ("file-512", "inproc"), ("file-512", "process"), ("loop4k-1M", "inproc"), ("loop4k-8M", "process"),
])
def test_sanlock_and_diskpaxos_see_each_other_live(sanlock_bin: str, sanlock_python: str, sanlock_daemon,
                                                   make_lockspace, join_process, storage: str, mode: str) -> None:
    """sanlock host 1 + diskpaxos host 2: sanlock reports host 2 LIVE (flags 3) and renewing;
    diskpaxos reports host 1 LIVE with sanlock's name and generation."""
    path = make_lockspace(storage)
    san = sanlock_daemon(host_name="sanA")
    sanlock_join(sanlock_bin, san, 1, path)
    try:
        with diskpaxos_host(mode, 2, path, "dpB", join_process) as dp:
            assert (dp.generation, dp.name) == (1, "dpB")
            assert_sanlock_sees_live(sanlock_bin, sanlock_python, [san], 2, 1, "dpB")
            assert_diskpaxos_sees_live(dp, {1: ("sanA", 1)})
            assert get_hosts(sanlock_python, san)[1]["flags"] == LIVE  # itself
        # a clean leave: sanlock sees host 2 free
        wait_for(lambda: get_hosts(sanlock_python, san, 2)[2]["flags"] == FREE, 10, "host 2 FREE after leaving")
        assert read_leader(sanlock_bin, path, 2)["timestamp"] == "0"
    finally:
        sanlock_leave(sanlock_bin, san, 1, path)


@pytest.mark.parametrize("storage,mode", [("file-512", "process"), ("loop4k-1M", "inproc")])
def test_three_hosts_two_sanlock_one_diskpaxos(sanlock_bin: str, sanlock_python: str, sanlock_daemon,
                                               make_lockspace, join_process, storage: str, mode: str) -> None:
    """sanlock hosts 1 and 3, diskpaxos host 2: every host sees both others LIVE."""
    path = make_lockspace(storage)
    san_a, san_c = sanlock_daemon(host_name="sanA"), sanlock_daemon(host_name="sanC")
    try:
        with ThreadPoolExecutor(2) as pool:  # both joins at once: each takes 2 x io_timeout
            for joined in [pool.submit(sanlock_join, sanlock_bin, d, h, path) for d, h in ((san_a, 1), (san_c, 3))]:
                joined.result(timeout=60)
        with diskpaxos_host(mode, 2, path, "dpB", join_process) as dp:
            assert_sanlock_sees_live(sanlock_bin, sanlock_python, [san_a, san_c], 2, 1, "dpB")
            wait_for(lambda: get_hosts(sanlock_python, san_a).get(3, {}).get("flags") == LIVE, 20, "A sees C")
            wait_for(lambda: get_hosts(sanlock_python, san_c).get(1, {}).get("flags") == LIVE, 20, "C sees A")
            assert_diskpaxos_sees_live(dp, {1: ("sanA", 1), 3: ("sanC", 1)})
    finally:
        sanlock_leave(sanlock_bin, san_a, 1, path)
        sanlock_leave(sanlock_bin, san_c, 3, path)
