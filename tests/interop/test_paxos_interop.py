"""Resource (Disk Paxos) leases live against the real sanlock: one lease, two implementations.

Every test runs real sanlock 3.8.5 daemons (host 1, in their own run dirs) and
diskpaxos hosts (host 2, in-process ``Lockspace.join`` or ``diskpaxos run``)
on one lockspace and one resource lease, both formatted by sanlock with
io_timeout 1 (spec section 7: renew every 2 s, host_dead = 8 + 60 = 68 s).
sanlock holds leases through a /usr/bin/python3 child registered with its
daemon (``SanlockHolder``: acquire/release on request, its death releases);
one-shot sanlock attempts use ``sanlock client command -r ... -c /bin/true``,
whose ``acquire done N`` line gives the exact code.

- exclusive: each side refuses the other's live hold with -243 and takes the
  lease once it is released (512 B file, 4K loop devices with 1M and 8M align);
- shared: SH holders of both sides coexist; EX from either side gets -11 while
  any SH holder lives, and succeeds once all are gone;
- a holder's host dies (SIGKILL): the other side takes the lease no earlier
  than 68 s after the dead host's last renewal, and no later than 3 s after its
  own host_dead verdict is due (both directions, overlapped: see ``Takeovers``);
- lver strictly increases across alternating owners; a stale expected lver
  gets -240 from both;
- a flipped byte in the leader or in a dblock lets no acquire through (-229 /
  -214 from both) and nothing is written;
- ``diskpaxos run`` returns the command's status, and on a busy lease names the
  holder, exits 1 and does not run the command.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from oracle import DISKPAXOS, daemon_log, parse_host_status, read_area, sanlock, sanlock_read_leader, wait_for
from oracle import sanlock_client as client
from scenarios import BackgroundScenarios

from diskpaxos import errors, paxos_lease
from diskpaxos.format import DBLOCK_FL_RELEASED, MBLOCK_SHARED, Geometry, PaxosView
from diskpaxos.lockspace import Lease, Lockspace
from diskpaxos.timeouts import Timeouts

pytestmark = pytest.mark.interop

MiB = 1024 * 1024
LS = "LS"
RES = "RES"
IO = 1
FAIL_AFTER = Timeouts(IO).id_renewal_fail  # 8 s: 8 * io
DEAD_AFTER = Timeouts(IO).host_dead  # 68 s: 8 * io + 60
TAKEOVER_SLACK = 3.0  # a takeover comes at most this long after the taker's own verdict is due
SAN_NAME, DP_NAME = "sanA", "dpB"  # host names of host 1 (sanlock) and host 2 (diskpaxos)

# kind -> (sector size, align size, how the target is made)
STORAGE = {
    "file-512": (512, 1 * MiB, "file"),
    "loop4k-1M": (4096, 1 * MiB, "loop"),
    "loop4k-8M": (4096, 8 * MiB, "loop"),
}


# --- storage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Area:
    """A lockspace at offset 0 and the resource lease RES right after it (one align size in)."""

    path: str
    sector_size: int
    align_size: int

    @property
    def offset(self) -> int:
        return self.align_size

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.sector_size, self.align_size)

    def ls(self, host_id: int) -> str:
        return f"{LS}:{host_id}:{self.path}:0"

    def res(self, suffix: str = "") -> str:
        return f"{LS}:{RES}:{self.path}:{self.offset}{suffix}"

    def dblock_offset(self, host_id: int) -> int:
        return self.geometry.dblock_offset(self.offset, host_id)

    def view(self) -> PaxosView:
        """The leader and the first dblocks as on storage now (O_DIRECT)."""
        raw = read_area(self.path, self.offset, 8 * self.sector_size)
        return PaxosView.parse(bytearray(raw), self.geometry, num_hosts=6)

    def snapshot(self) -> bytes:
        """Leader, request record and the dblock sectors of hosts 1..6."""
        return read_area(self.path, self.offset, 8 * self.sector_size)


def init_area(sanlock_bin: str, path: str, kind: str) -> Area:
    """sanlock formats the lockspace (io_timeout 1) and the resource lease, both with -Z/-A."""
    sector_size, align, _ = STORAGE[kind]
    area = Area(path, sector_size, align)
    geometry = ("-Z", str(sector_size), "-A", f"{align // MiB}M")
    for what in (["-s", area.ls(0), "-o", str(IO)], ["-r", area.res()]):
        got = sanlock(sanlock_bin, "direct", "init", *what, *geometry)
        assert got.returncode == 0 and "init done 0" in got.stdout, got
    return area


def new_file(path: Path) -> str:
    with open(path, "wb") as f:
        f.truncate(24 * MiB)
    return str(path)


@pytest.fixture
def make_area(request: pytest.FixtureRequest, tmp_path: Path, sanlock_bin: str) -> Callable[[str], Area]:
    """Factory: a fresh formatted target of a STORAGE kind (loop devices detached by loop_device)."""

    def make(kind: str) -> Area:
        sector_size, align, target = STORAGE[kind]
        if target == "file":
            path = new_file(tmp_path / f"leases-{kind}.img")
        else:  # only now: a file test must not need loop devices
            path = request.getfixturevalue("loop_device")(sector_size, 2 * align + 16 * MiB)
        return init_area(sanlock_bin, path, kind)

    return make


def flip_byte(path: str, sector_offset: int, sector_size: int, index: int) -> bytes:
    """Invert one byte of a sector with an O_DIRECT read-modify-write of the whole sector.

    Returns the sector as it was before.
    """
    fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
    try:
        buf = mmap.mmap(-1, sector_size)  # page aligned, as O_DIRECT needs
        assert os.preadv(fd, [buf], sector_offset) == sector_size
        before = bytes(buf)
        buf[index] ^= 0xFF
        assert os.pwritev(fd, [buf], sector_offset) == sector_size
        return before
    finally:
        os.close(fd)


# --- sanlock --------------------------------------------------------------------------------


def sanlock_join(sanlock_bin: str, daemon: Any, area: Area, host_id: int = 1) -> None:
    got = client(sanlock_bin, daemon, "add_lockspace", "-s", area.ls(host_id), "-o", str(IO), timeout=60)
    assert got.returncode == 0 and "done 0" in got.stdout, (got.stdout, got.stderr, daemon_log(daemon))


def sanlock_leave(sanlock_bin: str, daemon: Any, area: Area, host_id: int = 1) -> None:
    """rem_lockspace, best effort (teardown): the daemon can then stop at once."""
    if daemon.proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            client(sanlock_bin, daemon, "rem_lockspace", "-s", area.ls(host_id), timeout=30)


def sanlock_try(sanlock_bin: str, daemon: Any, resource: str) -> int:
    """One sanlock acquire of ``resource`` (released at once): 0, or the code of ``acquire done N``."""
    got = client(sanlock_bin, daemon, "command", "-r", resource, "-c", "/bin/true", timeout=150)
    m = re.search(r"acquire done (-?\d+)", got.stdout)
    if got.returncode == 0 and m is None:
        return 0  # acquired, ran /bin/true, released
    assert m is not None and int(m[1]) != 0, (got.returncode, got.stdout, got.stderr, daemon_log(daemon))
    return int(m[1])


def res_leader(sanlock_bin: str, area: Area) -> dict[str, int]:
    return sanlock_read_leader(sanlock_bin, "-r", area.res())


def delta_leader(sanlock_bin: str, area: Area, host_id: int) -> dict[str, int]:
    return sanlock_read_leader(sanlock_bin, "-s", area.ls(host_id))


def host_status(sanlock_bin: str, daemon: Any) -> dict[int, dict[str, str]]:
    """``sanlock client host_status -s LS -D``: {host_id: {timestamp, last_live, last_check, ...}}."""
    got = client(sanlock_bin, daemon, "host_status", "-s", LS, "-D")
    assert got.returncode == 0, (got.stdout, got.stderr)
    return parse_host_status(got.stdout)


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    """Not running any more (exited, or a zombie waiting for a parent that is not us)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def kill_daemon(daemon: Any) -> None:
    """SIGKILL a sanlock daemon and its helper child, by pid, and reap: a host that crashed."""
    helpers = children(daemon.pid)
    sigkill(daemon.pid)
    daemon.proc.wait(timeout=10)
    for pid in helpers:
        sigkill(pid)
    wait_for(lambda: all(gone(p) for p in helpers), 10, "sanlock's helper to die", 0.02)


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process we started and its children, by pid; reap it."""
    kids = children(proc.pid)
    sigkill(proc.pid)
    proc.wait(timeout=10)
    for pid in kids:
        sigkill(pid)
    wait_for(lambda: all(gone(p) for p in kids), 10, f"the children of {proc.pid} to die", 0.02)


HOLDER_SCRIPT = r"""
import json, sys, sanlock
fd = sanlock.register()
print(json.dumps({"errno": 0, "fd": fd}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    disks = [(req["path"], req["offset"])]
    try:
        if req["op"] == "acquire":
            kwargs = {"slkfd": fd, "shared": req["shared"]}
            if req["version"] is not None:
                kwargs["version"] = req["version"]
            sanlock.acquire(req["lockspace"].encode(), req["resource"].encode(), disks, **kwargs)
        else:
            sanlock.release(req["lockspace"].encode(), req["resource"].encode(), disks, slkfd=fd)
        reply = {"errno": 0}
    except sanlock.SanlockException as e:
        reply = {"errno": e.errno, "message": str(e)}
    print(json.dumps(reply), flush=True)
"""


class SanlockHolder:
    """A /usr/bin/python3 child registered with one sanlock daemon (python3-sanlock).

    It acquires and releases on request (a JSON line on its stdin) and holds
    what it acquired until told, or until it dies: the daemon then releases.
    python3-sanlock reports sanlock codes negative and errno codes positive
    (EAGAIN is 11).
    """

    def __init__(self, python: str, daemon: Any, log_dir: Path) -> None:
        self.daemon = daemon
        self.stderr_path = log_dir / f"holder-{time.monotonic_ns()}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([python, "-u", "-c", HOLDER_SCRIPT], env=daemon.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.pid = self.proc.pid
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            assert self._reply(30)["errno"] == 0, "sanlock.register() failed"
        except BaseException:
            self.kill()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            self._replies.put(line)
        self._replies.put(None)

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"sanlock holder {self.pid} did not answer within {timeout} s") from None
        if line is None:
            raise AssertionError(f"sanlock holder {self.pid} exited: {self.stderr_path.read_text()[-2000:]}")
        return json.loads(line)

    def _call(self, op: str, area: Area, timeout: float, shared: bool = False, version: int | None = None) -> int:
        assert self.proc.stdin is not None
        req = {"op": op, "lockspace": LS, "resource": RES, "path": area.path, "offset": area.offset,
               "shared": shared, "version": version}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return int(self._reply(timeout)["errno"])

    def acquire(self, area: Area, shared: bool = False, version: int | None = None, timeout: float = 150) -> int:
        return self._call("acquire", area, timeout, shared, version)

    def release(self, area: Area) -> int:
        return self._call("release", area, 30)

    def kill(self) -> None:
        """SIGKILL by pid and reap (the daemon, if alive, releases what it held)."""
        if self.proc.poll() is None:
            sigkill(self.pid)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            with contextlib.suppress(OSError):
                f.close()  # type: ignore[union-attr]


# --- diskpaxos -------------------------------------------------------------------------------


def dp_join(area: Area, host_id: int = 2, name: str = DP_NAME) -> Lockspace:
    return Lockspace.join(LS, host_id, area.path, 0, IO, name)


def dp_try(ls: Lockspace, area: Area, **kwargs: Any) -> tuple[int, Lease | errors.DiskpaxosError]:
    """(0, lease) or (code, error) of one ``Lockspace.acquire``."""
    try:
        return 0, ls.acquire(RES, area.path, area.offset, **kwargs)
    except errors.DiskpaxosError as e:
        return e.code, e


@dataclass
class Hosts:
    """sanlock host 1 (a daemon and a holder child) and diskpaxos hosts 2, 3, ... joined."""

    area: Area
    san: Any
    holder: SanlockHolder
    dps: list[Lockspace]

    @property
    def dp(self) -> Lockspace:
        return self.dps[0]


@pytest.fixture
def hosts(make_area: Callable[[str], Area], sanlock_daemon: Callable[..., Any], sanlock_bin: str,
          sanlock_python: str, tmp_path: Path) -> Iterator[Callable[..., Hosts]]:
    """Factory ``hosts(kind, dp_hosts=1)``: all hosts join at once; all are stopped by pid after."""
    stack = contextlib.ExitStack()

    def make(kind: str, dp_hosts: int = 1) -> Hosts:
        area = make_area(kind)
        san = sanlock_daemon(host_name=SAN_NAME)
        with ThreadPoolExecutor(1 + dp_hosts) as pool:  # each join takes 2 x io_timeout
            san_joined = pool.submit(sanlock_join, sanlock_bin, san, area)
            dps = [pool.submit(dp_join, area, 2 + i, f"dp{2 + i}" if i else DP_NAME) for i in range(dp_hosts)]
            futures.wait([san_joined, *dps], timeout=60)
            stack.callback(sanlock_leave, sanlock_bin, san, area)
            for f in dps:
                if f.done() and f.exception() is None:
                    stack.callback(f.result().leave)
            joined = [f.result(timeout=0) for f in dps]
            san_joined.result(timeout=0)
        holder = SanlockHolder(sanlock_python, san, tmp_path)
        stack.callback(holder.kill)
        return Hosts(area, san, holder, joined)

    with stack:
        yield make


# --- 3: a holder's host dies; the other implementation takes over -------------------------------


@dataclass
class Attempt:
    start: float
    end: float
    code: int


def attempts_until_acquired(try_once: Callable[[], int], deadline: float) -> list[Attempt]:
    """Acquire attempts while they fail with -243 (owner still judged alive), until one does not."""
    out: list[Attempt] = []
    while True:
        t0 = time.monotonic()
        code = try_once()
        out.append(Attempt(t0, time.monotonic(), code))
        if code != -243 or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def scenario_diskpaxos_dies(sanlock_bin: str, sanlock_python: str, daemon_class: type, workdir: Path,
                            stack: contextlib.ExitStack) -> dict[str, Any]:
    """``diskpaxos run`` (host 2) holds RES and is SIGKILLed; sanlock (host 1) takes RES over."""
    area = init_area(sanlock_bin, new_file(workdir / "leases.img"), "file-512")
    san = daemon_class(sanlock_bin, workdir / "sanlock-run", SAN_NAME)
    stack.callback(san.stop)
    with ThreadPoolExecutor(1) as pool:
        san_joined = pool.submit(sanlock_join, sanlock_bin, san, area)
        stderr = open(workdir / "run.stderr", "wb")
        stack.callback(stderr.close)
        run = subprocess.Popen([DISKPAXOS, "run", "-s", area.ls(2), "-o", str(IO), "-r", area.res(),
                                "--name", DP_NAME, "--", "sleep", "600"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=stderr)
        stack.callback(lambda: run.poll() is None and kill_tree(run))
        san_joined.result(timeout=60)
    stack.callback(sanlock_leave, sanlock_bin, san, area)
    holder = SanlockHolder(sanlock_python, san, workdir)
    stack.callback(holder.kill)
    try:
        before = wait_for(lambda: (r := res_leader(sanlock_bin, area))["owner_id"] == 2 and r["timestamp"] and r,
                          30, "diskpaxos run to hold RES")
    except AssertionError as e:
        raise AssertionError(f"{e}; diskpaxos run exit {run.poll()}, stderr: "
                             f"{(workdir / 'run.stderr').read_text(errors='replace')[-2000:]}") from None
    refused_live = holder.acquire(area)

    # kill right after sanlock saw host 2's latest renewal: its verdict then comes host_dead after that
    def last_live() -> str | None:
        return host_status(sanlock_bin, san).get(2, {}).get("last_live")

    seen = last_live()
    wait_for(lambda: last_live() not in (None, seen), 10, "sanlock to see a renewal", 0.02)
    kill_tree(run)
    t_kill = time.monotonic()
    last_ts = delta_leader(sanlock_bin, area, 2)["timestamp"]
    attempts = attempts_until_acquired(lambda: holder.acquire(area), t_kill + DEAD_AFTER + 30)
    after = res_leader(sanlock_bin, area)
    # when sanlock last saw host 2's timestamp change (final now: it may have seen the last
    # renewal only at its first check after the kill)
    observed = int(host_status(sanlock_bin, san)[2]["last_live"])
    if attempts[-1].code == 0:
        assert holder.release(area) == 0
    return {"before": before, "refused_live": refused_live, "t_kill": t_kill, "last_ts": last_ts,
            "observed_last_live": observed, "attempts": [a.__dict__ for a in attempts], "after": after,
            "taker": 1}


def scenario_sanlock_dies(sanlock_bin: str, sanlock_python: str, daemon_class: type, workdir: Path,
                          stack: contextlib.ExitStack) -> dict[str, Any]:
    """sanlock (host 1) holds RES and its daemon is SIGKILLed with its helper; diskpaxos (host 2) takes over."""
    area = init_area(sanlock_bin, new_file(workdir / "leases.img"), "file-512")
    san = daemon_class(sanlock_bin, workdir / "sanlock-run", SAN_NAME)
    stack.callback(san.stop)
    with ThreadPoolExecutor(2) as pool:
        san_joined = pool.submit(sanlock_join, sanlock_bin, san, area)
        dp_joined = pool.submit(dp_join, area)
        ls = dp_joined.result(timeout=60)
        stack.callback(ls.leave)
        san_joined.result(timeout=60)
    holder = SanlockHolder(sanlock_python, san, workdir)
    stack.callback(holder.kill)
    assert holder.acquire(area) == 0
    before = res_leader(sanlock_bin, area)
    refused_live, _ = dp_try(ls, area)

    def last_live() -> float:
        seen = ls.observed(1)
        assert seen is not None
        return seen[3]

    # kill right after diskpaxos saw host 1's latest renewal
    seen = last_live()
    wait_for(lambda: last_live() != seen, 10, "diskpaxos to see a renewal", 0.02)
    kill_daemon(san)
    holder.kill()
    t_kill = time.monotonic()
    last_ts = delta_leader(sanlock_bin, area, 1)["timestamp"]
    leases: list[Lease] = []

    def once() -> int:
        code, got = dp_try(ls, area)
        if isinstance(got, Lease):
            leases.append(got)
        return code

    attempts = attempts_until_acquired(once, t_kill + DEAD_AFTER + 30)
    after = res_leader(sanlock_bin, area)
    observed = last_live()  # final: when diskpaxos last saw host 1's timestamp change
    lver = leases[0].lver if leases else None
    for lease in leases:
        lease.release()
    return {"before": before, "refused_live": refused_live, "t_kill": t_kill, "last_ts": last_ts,
            "observed_last_live": observed, "attempts": [a.__dict__ for a in attempts], "after": after,
            "taker": 2, "lease_lver": lver}


SCENARIOS = {
    "diskpaxos-dies": (scenario_diskpaxos_dies, "test_takeover_after_diskpaxos_host_dies"),
    "sanlock-dies": (scenario_sanlock_dies, "test_takeover_after_sanlock_host_dies"),
}


class Takeovers(BackgroundScenarios):
    """The two 68 s takeover scenarios, run in background threads (see tests/scenarios.py):
    the two directions overlap each other and the rest of the module, however the tests are
    distributed, and each takeover test, last in the module, waits for its own result."""

    def __init__(self, shared: Path, wanted: list[str], sanlock_bin: str, sanlock_python: str,
                 daemon_class: type) -> None:
        super().__init__(shared, wanted, SCENARIOS, (sanlock_bin, sanlock_python, daemon_class), timeout=280)


def _daemon_class(config: pytest.Config) -> type:
    """tests/conftest.py's SanlockDaemon (conftest modules are registered plugins)."""
    for plugin in config.pluginmanager.get_plugins():
        cls = getattr(plugin, "SanlockDaemon", None)
        if isinstance(cls, type):
            return cls
    raise RuntimeError("tests/conftest.py's SanlockDaemon is not loaded")


@pytest.fixture(scope="module", autouse=True)
def takeovers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, sanlock_bin: str,
              sanlock_python: str) -> Iterator[Takeovers]:
    """Starts the selected takeover scenarios with this module's first test (their 68 s waits
    overlap the other tests); the takeover tests, last in the module, collect the results."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's, for every worker
    shared = shared / "paxos-takeovers"
    shared.mkdir(exist_ok=True)
    selected = {getattr(item, "originalname", item.name) for item in request.session.items}
    wanted = [name for name, (_, test) in SCENARIOS.items() if test in selected]
    t = Takeovers(shared, wanted, sanlock_bin, sanlock_python, _daemon_class(request.config))
    t.start()
    yield t
    t.join()


# --- 1: exclusive, both ways ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(STORAGE))
def test_exclusive_both_ways(hosts: Callable[..., Hosts], sanlock_bin: str, sanlock_python: str, tmp_path: Path,
                             kind: str) -> None:
    """sanlock holds RES: diskpaxos gets -243 naming host 1 (name, generation, lver) and writes
    nothing; released, diskpaxos takes it (lver + 1).  diskpaxos holds: sanlock gets -243;
    released, sanlock takes it (lver + 1)."""
    h = hosts(kind)
    area = h.area
    assert h.holder.acquire(area) == 0
    held = res_leader(sanlock_bin, area)
    san_delta = delta_leader(sanlock_bin, area, 1)
    assert (held["owner_id"], held["lver"]) == (1, 1) and held["timestamp"] != 0, held
    untouched = area.snapshot()
    code, err = dp_try(h.dp, area)
    assert code == -243, err
    assert isinstance(err, paxos_lease.AcquireIdLive)
    assert (err.owner_id, err.owner_name, err.owner_generation, err.lver) == \
        (1, SAN_NAME, san_delta["owner_generation"], 1), err.fields
    for part in ("host_id 1", repr(SAN_NAME), f"generation {san_delta['owner_generation']}", "lver 1"):
        assert part in str(err), str(err)
    assert area.snapshot() == untouched, "a refused acquire wrote to the lease"
    assert h.dp.leases() == []

    h.holder.kill()  # the holder exits: its daemon releases RES
    wait_for(lambda: res_leader(sanlock_bin, area)["timestamp"] == 0, 10, "sanlock to release RES")
    code, lease = dp_try(h.dp, area)
    assert code == 0, lease
    assert isinstance(lease, Lease) and lease.lver == 2
    assert lease.state_string() == f"{LS}:{RES}:{area.path}:{area.offset}:2"
    ours = res_leader(sanlock_bin, area)
    assert (ours["owner_id"], ours["owner_generation"], ours["lver"]) == (2, h.dp.generation, 2), ours
    assert ours["timestamp"] != 0 and ours["write_id"] == 2, ours

    assert sanlock_try(sanlock_bin, h.san, area.res()) == -243
    assert res_leader(sanlock_bin, area) == ours, "sanlock's refused acquire changed the leader"
    lease.release()
    freed = res_leader(sanlock_bin, area)
    assert (freed["owner_id"], freed["lver"], freed["timestamp"]) == (2, 2, 0), freed
    assert area.view().dblock(2).flags & DBLOCK_FL_RELEASED

    holder = SanlockHolder(sanlock_python, h.san, tmp_path)
    try:
        assert holder.acquire(area) == 0
        again = res_leader(sanlock_bin, area)
        assert (again["owner_id"], again["lver"]) == (1, 3) and again["timestamp"] != 0, again
        code, err = dp_try(h.dp, area)
        assert code == -243 and isinstance(err, paxos_lease.AcquireIdLive) and err.lver == 3, err
    finally:
        holder.kill()


# --- 2: shared -----------------------------------------------------------------------------------


def shared_holders(area: Area) -> dict[int, int]:
    """{host_id: generation} of the SHARED mode blocks on storage now."""
    return dict(area.view().shared_holders())


def test_shared_both_ways(hosts: Callable[..., Hosts], sanlock_bin: str) -> None:
    """SH by sanlock host 1 and diskpaxos host 2 coexist (mode blocks on storage, leader free).
    EX while any SH holder lives: diskpaxos host 3 (vs 1 and 2) and host 2 (vs sanlock's SH) get
    -11 SharedHoldersLive naming the live holders; sanlock (vs diskpaxos's SH) gets -11; none is
    granted and no SH hold is disturbed.  All released: EX succeeds from both sides."""
    h = hosts("file-512", dp_hosts=2)
    area, dp3 = h.area, h.dps[1]
    san_gen = delta_leader(sanlock_bin, area, 1)["owner_generation"]
    assert h.holder.acquire(area, shared=True) == 0
    code, sh2 = dp_try(h.dp, area, shared=True)
    assert code == 0 and isinstance(sh2, Lease), sh2
    assert sh2.state_string().endswith(":SH")
    assert shared_holders(area) == {1: san_gen, 2: h.dp.generation}
    assert res_leader(sanlock_bin, area)["timestamp"] == 0

    # an EX refused for live SH holders committed a ballot and released it again: lver + 1, leader free
    # (sanlock's way, spec 6.2 and trap 13)
    lver = res_leader(sanlock_bin, area)["lver"]
    code, err = dp_try(dp3, area)  # EX against both SH holders
    assert code == -11 and isinstance(err, paxos_lease.SharedHoldersLive), err
    assert err.holders == [1, 2], err.fields
    got = res_leader(sanlock_bin, area)
    assert (got["owner_id"], got["lver"], got["timestamp"]) == (3, lver + 1, 0), got
    assert shared_holders(area) == {1: san_gen, 2: h.dp.generation}

    assert h.holder.release(area) == 0  # only diskpaxos's SH is left
    assert shared_holders(area) == {2: h.dp.generation}
    assert sanlock_try(sanlock_bin, h.san, area.res()) == -11
    got = res_leader(sanlock_bin, area)
    assert (got["owner_id"], got["lver"], got["timestamp"]) == (1, lver + 2, 0), got
    assert shared_holders(area) == {2: h.dp.generation}

    assert h.holder.acquire(area, shared=True) == 0  # sanlock SH again; diskpaxos lets go of its SH
    sh2.release()
    assert shared_holders(area) == {1: san_gen}
    lver = res_leader(sanlock_bin, area)["lver"]
    code, err = dp_try(h.dp, area)
    assert code == -11 and isinstance(err, paxos_lease.SharedHoldersLive) and err.holders == [1], err
    got = res_leader(sanlock_bin, area)
    assert (got["owner_id"], got["lver"], got["timestamp"]) == (2, lver + 1, 0), got
    assert shared_holders(area) == {1: san_gen}
    assert h.dp.leases() == []

    assert h.holder.release(area) == 0  # nobody holds it
    assert shared_holders(area) == {}
    lver = res_leader(sanlock_bin, area)["lver"]
    code, ex = dp_try(h.dp, area)
    assert code == 0 and isinstance(ex, Lease) and not ex.shared and ex.lver == lver + 1, ex
    got = res_leader(sanlock_bin, area)
    assert (got["owner_id"], got["lver"]) == (2, lver + 1) and got["timestamp"] != 0, got
    ex.release()
    assert h.holder.acquire(area) == 0
    got = res_leader(sanlock_bin, area)
    assert (got["owner_id"], got["lver"]) == (1, lver + 2) and got["timestamp"] != 0, got
    assert h.holder.release(area) == 0


# --- 4: lease versions -----------------------------------------------------------------------------


def test_lver_increases_across_owners_and_stale_lver_refused(hosts: Callable[..., Hosts], sanlock_bin: str) -> None:
    """Owners alternate sanlock, diskpaxos, sanlock, diskpaxos: each acquire sets lver to the previous
    + 1 and its owner (read by sanlock's read_leader), each release keeps lver and frees the leader.
    An acquire that expects a stale lver is refused with -240 by both (nothing written); the
    current lver is accepted by both."""
    h = hosts("file-512")
    area = h.area
    seen: list[tuple[str, int, int, int]] = []  # (event, owner, lver, timestamp)

    def record(event: str) -> dict[str, int]:
        got = res_leader(sanlock_bin, area)
        seen.append((event, got["owner_id"], got["lver"], got["timestamp"]))
        return got

    for _ in range(2):
        assert h.holder.acquire(area) == 0
        record("sanlock acquire")
        assert h.holder.release(area) == 0
        record("sanlock release")
        code, lease = dp_try(h.dp, area)
        assert code == 0 and isinstance(lease, Lease), lease
        got = record("diskpaxos acquire")
        assert lease.lver == got["lver"]
        lease.release()
        record("diskpaxos release")
    acquires = [s for s in seen if s[0].endswith("acquire")]
    assert [(s[1], s[2]) for s in acquires] == [(1, 1), (2, 2), (1, 3), (2, 4)], seen
    assert all(s[3] != 0 for s in acquires), seen
    for acq, rel in zip(seen[::2], seen[1::2]):
        assert (rel[1], rel[2], rel[3]) == (acq[1], acq[2], 0), seen

    current = seen[-1][2]
    untouched = area.snapshot()
    for stale in (current - 1, 1):
        code, err = dp_try(h.dp, area, lver=stale)
        assert code == -240 and isinstance(err, paxos_lease.AcquireLver), err
        assert (err.found, err.expected) == (current, stale)
        assert sanlock_try(sanlock_bin, h.san, area.res(f":{stale}")) == -240
        assert h.holder.acquire(area, version=stale) == -240
    assert area.snapshot() == untouched, "an acquire refused for its lver wrote to the lease"

    code, lease = dp_try(h.dp, area, lver=current)
    assert code == 0 and isinstance(lease, Lease) and lease.lver == current + 1, lease
    lease.release()
    assert h.holder.acquire(area, version=current + 1) == 0
    got = res_leader(sanlock_bin, area)
    assert (got["owner_id"], got["lver"]) == (1, current + 2), got
    assert h.holder.release(area) == 0


# --- 5: corruption --------------------------------------------------------------------------------


@pytest.mark.parametrize("record,host,index,code", [
    ("leader", None, 40, -229),   # owner_generation
    ("leader", None, 152, -229),  # timestamp (0: a flip would make a free lease look held)
    ("dblock", 1, 16, -214),      # sanlock's dblock: inp
    ("dblock", 2, 0, -214),       # diskpaxos's dblock: mbal
], ids=["leader-generation", "leader-timestamp", "dblock1-inp", "dblock2-mbal"])
def test_corruption_refused_by_both(hosts: Callable[..., Hosts], sanlock_bin: str, record: str, host: int | None,
                                    index: int, code: int) -> None:
    """After sanlock and diskpaxos each held and released RES (both dblocks written), one byte is
    inverted inside the checksummed prefix of the leader or of one host's dblock: diskpaxos refuses
    with -229 / -214, sanlock refuses with the same code, and nothing at all is written."""
    h = hosts("file-512")
    area = h.area
    assert h.holder.acquire(area) == 0 and h.holder.release(area) == 0
    code0, lease = dp_try(h.dp, area)
    assert code0 == 0 and isinstance(lease, Lease), lease
    lease.release()
    view = area.view()
    assert view.dblock(1).mbal != 0 and view.dblock(2).mbal != 0 and view.bad_dblocks() == []
    if record == "leader":
        assert index < 168  # LEADER_CHECKSUM_LEN
        where = area.offset
    else:
        assert index < 48  # DBLOCK_CHECKSUM_LEN
        where = area.dblock_offset(host)
    flip_byte(area.path, where, area.sector_size, index)
    corrupted = area.snapshot()

    got, err = dp_try(h.dp, area)
    assert got == code, err
    expected_type = errors.LeaderChecksumError if record == "leader" else errors.DblockChecksumError
    assert isinstance(err, expected_type), err
    if record == "dblock":
        assert err.host_id == host, err.fields
    assert h.dp.leases() == []
    assert sanlock_try(sanlock_bin, h.san, area.res()) == code
    assert h.holder.acquire(area) == code
    assert area.snapshot() == corrupted, "an acquire over a corrupted record wrote to the lease"


# --- diskpaxos run --------------------------------------------------------------------------------


def dp_run(area: Area, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DISKPAXOS, "run", "-s", area.ls(2), "-o", str(IO), "--name", DP_NAME, *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_run_returns_command_status_holding_the_lease(make_area: Callable[[str], Area], sanlock_bin: str,
                                                      tmp_path: Path) -> None:
    """``diskpaxos run -r RES -- CMD``: while CMD runs sanlock reads RES owned by host 2; CMD's exit
    status is returned; afterwards RES is free and host 2 has left the lockspace."""
    area = make_area("file-512")
    out = tmp_path / "during.txt"
    got = dp_run(area, "-r", area.res(), "--", "/bin/sh", "-c",
                 f"{sanlock_bin} direct read_leader -r {area.res()} > {out}; exit 7")
    assert got.returncode == 7, got
    during = dict(line.split(" ", 1) for line in out.read_text().splitlines()[1:])
    assert (during["owner_id"], during["lver"]) == ("2", "1") and during["timestamp"] != "0", during
    after = res_leader(sanlock_bin, area)
    assert (after["owner_id"], after["lver"], after["timestamp"]) == (2, 1, 0), after
    assert delta_leader(sanlock_bin, area, 2)["timestamp"] == 0


def test_run_busy_lease_names_holder_and_skips_command(hosts: Callable[..., Hosts], sanlock_bin: str,
                                                       tmp_path: Path) -> None:
    """sanlock holds RES (``sanlock client command -r RES -c /bin/sleep 600``): ``diskpaxos run``
    says on stderr that host_id 1 holds it, exits 1, never runs its command, and leaves cleanly.
    Once sanlock's holder is killed, the same run runs its command and returns its status."""
    h = hosts("file-512", dp_hosts=0)  # host 2 is ``diskpaxos run``'s
    area = h.area
    holder = subprocess.Popen([sanlock_bin, "client", "command", "-r", area.res(), "-c", "/bin/sleep", "600"],
                              env=h.san.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (r := res_leader(sanlock_bin, area))["owner_id"] == 1 and r["timestamp"], 20,
                 "sanlock to hold RES")
        marker = tmp_path / "marker"
        got = dp_run(area, "-r", area.res(), "--", "/bin/sh", "-c", f"touch {marker}; exit 5")
        assert got.returncode == 1, got
        assert "host_id 1" in got.stderr and SAN_NAME in got.stderr, got.stderr
        assert "Traceback" not in got.stderr, got.stderr
        assert not marker.exists(), "the command ran without the lease"
        assert delta_leader(sanlock_bin, area, 2)["timestamp"] == 0, "run did not leave the lockspace"
    finally:
        kill_tree(holder)
    wait_for(lambda: res_leader(sanlock_bin, area)["timestamp"] == 0, 10, "sanlock to release RES")
    got = dp_run(area, "-r", area.res(), "--", "/bin/sh", "-c", f"touch {marker}; exit 5")
    assert got.returncode == 5, got
    assert marker.exists()


def test_run_shared_beside_sanlock_shared(hosts: Callable[..., Hosts], sanlock_bin: str, tmp_path: Path) -> None:
    """sanlock holds RES shared: ``diskpaxos run --shared`` runs its command beside it (both mode
    blocks SHARED meanwhile); ``diskpaxos run -r`` (exclusive) names host 1 as a live shared holder,
    exits 1 and does not run its command."""
    h = hosts("file-512", dp_hosts=0)
    area = h.area
    assert h.holder.acquire(area, shared=True) == 0
    out = tmp_path / "during.bin"
    # the command copies the dblock sectors of hosts 1 and 2 while it runs
    dd = (f"dd if={area.path} of={out} bs={area.sector_size} skip={area.dblock_offset(1) // area.sector_size} "
          f"count=2 iflag=direct status=none")
    got = dp_run(area, "--shared", area.res(), "--", "/bin/sh", "-c", f"{dd}; exit 3")
    assert got.returncode == 3, got
    during = out.read_bytes()
    for i in range(2):
        sector = during[i * area.sector_size:(i + 1) * area.sector_size]
        assert int.from_bytes(sector[128:132], "little") & MBLOCK_SHARED, f"host {i + 1} not SHARED during the run"
    assert shared_holders(area).keys() == {1}, "the shared run left its mode block behind"

    marker = tmp_path / "marker"
    got = dp_run(area, "-r", area.res(), "--", "touch", str(marker))
    assert got.returncode == 1, got
    assert "shared by live host(s) [1]" in got.stderr, got.stderr
    assert not marker.exists()
    assert shared_holders(area).keys() == {1}
    assert res_leader(sanlock_bin, area)["timestamp"] == 0
    assert h.holder.release(area) == 0


# --- 3 (the tests): the scenarios started with the module; their verdicts ------------------------


def check_takeover(r: dict[str, Any]) -> None:
    """The measured takeover against section 7 (see the test docstrings)."""
    taker = r["taker"]
    before, after, attempts = r["before"], r["after"], [Attempt(**a) for a in r["attempts"]]
    last_ts, t_kill, observed = r["last_ts"], r["t_kill"], r["observed_last_live"]
    assert before["owner_id"] == 3 - taker and before["timestamp"] != 0, before
    assert r["refused_live"] == -243, r["refused_live"]
    # right after the kill the taker still has the holder's renewal as its latest news: -243 at once
    assert attempts[0].code == -243 and attempts[0].end - t_kill < 3, attempts
    # ... and keeps saying so only while its latest look still showed a change: it sees at most one
    # more (the last renewal, if written after its previous look), so never once the holder is FAIL
    refused, final = attempts[:-1], attempts[-1]
    assert all(a.code == -243 and a.end - t_kill < FAIL_AFTER for a in refused), attempts
    assert final.code == 0, attempts
    assert final.end - final.start > DEAD_AFTER / 2, f"the last attempt did not wait for host_dead: {attempts}"
    # never earlier than host_dead after the holder's last renewal (its timestamp is CLOCK_MONOTONIC
    # seconds of this machine, like time.monotonic(); the new leader's timestamp is the taker's clock
    # at its ballot, which started after its verdict)
    assert final.end >= last_ts + DEAD_AFTER, (final, last_ts)
    assert after["timestamp"] >= last_ts + DEAD_AFTER, (after, last_ts)
    # the taker's own rule: host_dead after it last saw the holder's timestamp change
    assert final.end >= observed + DEAD_AFTER, (final, observed)
    # and no later than a few seconds after that verdict was due
    assert final.end <= observed + DEAD_AFTER + TAKEOVER_SLACK, (final, observed)
    assert (after["owner_id"], after["lver"]) == (taker, before["lver"] + 1), after
    print(f"takeover by host {taker}: {final.end - last_ts:.1f} s after the last renewal's timestamp "
          f"{last_ts}, {final.end - t_kill:.1f} s after the kill, {final.end - observed:.1f} s after the taker "
          f"saw the last renewal; attempts {[(round(a.end - t_kill, 1), a.code) for a in attempts]}")


@pytest.mark.timeout(300)
def test_takeover_after_diskpaxos_host_dies(takeovers: Takeovers) -> None:
    """A ``diskpaxos run ... -- sleep 600`` holding RES is SIGKILLed right after sanlock saw its
    renewal.  sanlock: -243 right after; then an acquire that blocks and succeeds no earlier than
    68 s after the last renewal's timestamp and within 3 s of its own verdict; lver + 1, owner 1."""
    check_takeover(takeovers.result("diskpaxos-dies"))


@pytest.mark.timeout(300)
def test_takeover_after_sanlock_host_dies(takeovers: Takeovers) -> None:
    """A sanlock daemon holding RES (for its python3-sanlock client) is SIGKILLed with its helper and
    client right after diskpaxos saw its renewal.  diskpaxos: -243 right after (as sanlock); then
    ``Lockspace.acquire`` blocks and succeeds no earlier than 68 s after the last renewal's timestamp
    and within 3 s of its own verdict; lver + 1, owner 2."""
    r = takeovers.result("sanlock-dies")
    check_takeover(r)
    assert r["lease_lver"] == r["after"]["lver"]
