"""Real ``diskpaxos daemon`` processes as hosts, and the processes that hold leases through them.

A ``DiskpaxosDaemon`` is one host: its own run dir and TOML config file,
started as ``diskpaxos daemon --run-dir D --config F``, ready once its socket
answers, stopped by pid (SIGTERM, then SIGKILL) together with its watchdog
helper child (watched through a pidfd, so a reused pid is never signalled).
``Holder`` is a process that holds leases: ``diskpaxos client command -r ...
-c PROG ARGS`` or ``sanlock client command ...``; it execs PROG in the same
process, so its pid is the lease holder's and the time it exits is measured.

The fixtures ``dp_daemon`` and ``cleanup`` (conftest.py) wrap these for a
test; the scenarios that run in background threads use the classes directly
with their own ExitStack.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from oracle import DISKPAXOS, Result, run, sanlock, wait_for

from diskpaxos import direct
from diskpaxos.client import Client, DaemonError
from diskpaxos.format import LeaderRecord
from diskpaxos.timeouts import Timeouts

MiB = 1024 * 1024
IO = 1
T = Timeouts(IO)  # renew 2 s, warn 6 s, fail 8 s, host_dead 68 s
LS = "LS"
RES = "R"


def pidfd_exited(pidfd: int, timeout: float = 0.0) -> bool:
    """Whether the process behind ``pidfd`` has exited (waiting up to ``timeout`` s)."""
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# --- storage --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Area:
    """A lockspace at offset 0 (io_timeout 1 on disk) and the resource lease R at 1 MiB."""

    path: str
    name: str = LS

    def ls(self, host_id: int) -> str:
        return f"{self.name}:{host_id}:{self.path}:0"

    def res(self, suffix: str = "") -> str:
        return f"{self.name}:{RES}:{self.path}:{MiB}{suffix}"

    def leader(self) -> LeaderRecord:
        """The resource lease's leader, read now with our ``read_leader`` (O_DIRECT)."""
        got = direct.read_leader(self.path, MiB, kind="resource", space_name=self.name, resource_name=RES)
        assert got.error is None, got.error
        return got.record

    def delta(self, host_id: int) -> LeaderRecord:
        """host_id's delta lease as on storage now."""
        got = direct.read_leader(self.path, 0, host_id=host_id, kind="lockspace", space_name=self.name)
        assert got.error is None, got.error
        return got.record


def make_area(path: Path, sanlock_bin: str | None = None, name: str = LS) -> Area:
    """A fresh 16 MiB file formatted by diskpaxos (or by sanlock when ``sanlock_bin`` is given)."""
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
    area = Area(str(path), name)
    for what in (["-s", f"{name}:0:{path}:0", "-o", str(IO)], ["-r", area.res()]):
        got = sanlock(sanlock_bin, "direct", "init", *what) if sanlock_bin else \
            run([DISKPAXOS, "direct", "init", *what])
        assert got.returncode == 0 and "init done 0" in got.stdout, got
    return area


# --- lease holders --------------------------------------------------------------------------


class Holder:
    """A ``client command`` process: acquires, then execs the command in the same pid.

    A thread waits for it, so ``exited_at`` (CLOCK_MONOTONIC) is when it died.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None, log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.exited_at: float | None = None
        self.returncode: int | None = None
        self._done = threading.Event()
        threading.Thread(target=self._wait, daemon=True, name=f"holder-{self.pid}").start()

    def _wait(self) -> None:
        rc = self.proc.wait()
        self.exited_at = time.monotonic()
        self.returncode = rc
        self._done.set()
        self._log.close()

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (within ``timeout`` s)."""
        return self._done.wait(timeout)

    @property
    def alive(self) -> bool:
        return not self._done.is_set()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError as e:
            return f"(no output: {e})"

    def kill(self) -> None:
        """SIGKILL by pid (Popen reaps it, so the pid cannot be reused meanwhile) and wait."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self._done.wait(10)


# --- the daemon -------------------------------------------------------------------------------


class DiskpaxosDaemon:
    """One ``diskpaxos daemon`` host: own run dir and config file, stopped by pid."""

    def __init__(self, workdir: Path, name: str, *, run_dir: Path | None = None, io_timeout: int = IO,
                 **config: Any) -> None:
        self.name = name
        self.workdir = workdir
        self.run_dir = run_dir or workdir / f"{name}-run"
        self.config_path = workdir / f"{name}.toml"
        settings = {"io_timeout": io_timeout, "log_level": "info", **config}
        self.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()
                                            if v is not None))
        self.log_path = workdir / f"{name}.log"
        self.holders: list[Holder] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.helper_pid: int | None = None
        self.helper_pidfd: int | None = None
        self.start()

    # lifecycle

    def start(self, timeout: float = 20) -> None:
        """Start the daemon (again, on the same run dir and config) and wait until it answers."""
        if self.helper_pidfd is not None:  # a restart: the previous run's helper
            os.close(self.helper_pidfd)
            self.helper_pidfd = None
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([DISKPAXOS, "daemon", "--run-dir", str(self.run_dir), "--config",
                                      str(self.config_path)], stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"diskpaxos daemon {self.name} exited {self.proc.returncode}: {self.log()}")
            try:
                with Client(str(self.run_dir), timeout=5) as c:
                    c.status()
                break
            except (DaemonError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"diskpaxos daemon {self.name} did not answer in {timeout} s: "
                                       f"{self.log()}") from None
                time.sleep(0.05)
        # the watchdog helper is started before the socket exists
        helpers = [p for p in children(self.pid) if "diskpaxos.daemon.watchdog" in _cmdline(p)]
        assert len(helpers) == 1, f"daemon {self.pid}: watchdog helpers {helpers}"
        self.helper_pid = helpers[0]
        self.helper_pidfd = os.pidfd_open(self.helper_pid)

    def helper_exited(self, timeout: float = 0.0) -> bool:
        assert self.helper_pidfd is not None
        return pidfd_exited(self.helper_pidfd, timeout)

    def kill(self) -> None:
        """SIGKILL the daemon alone (a crash) and reap it; its helper is left to react."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        """Holders, then the daemon (SIGTERM, SIGKILL after 10 s), then its watchdog helper."""
        for holder in self.holders:
            holder.kill()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        if self.helper_pidfd is not None:
            if not self.helper_exited(5):
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self.helper_pidfd, signal.SIGKILL)
                self.helper_exited(5)
            os.close(self.helper_pidfd)
            self.helper_pidfd = None
        with contextlib.suppress(AttributeError):
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError as e:
            return f"(no log: {e})"

    # talking to it

    def cli(self, verb: str, *args: str, timeout: float = 150) -> Result:
        """``diskpaxos client VERB --run-dir D ARGS`` (the run dir before ``-c``: all after it is argv)."""
        return run([DISKPAXOS, "client", verb, "--run-dir", str(self.run_dir), *args], timeout=timeout)

    def api(self, timeout: float | None = 30) -> Client:
        return Client(str(self.run_dir), timeout=timeout)

    def join(self, area: Area, host_id: int, host_name: str | None = None) -> int:
        """``client add-lockspace``; returns the generation it printed."""
        args = ["-s", area.ls(host_id), "-o", str(IO)] + (["--name", host_name] if host_name else [])
        got = self.cli("add-lockspace", *args, timeout=150)
        m = re.fullmatch(rf"add_lockspace {area.name} host_id {host_id} generation (\d+) done 0\n", got.stdout)
        assert got.returncode == 0 and m, (got, self.log())
        return int(m[1])

    def hold(self, resource: str, *command: str) -> Holder:
        """``client command -r RESOURCE -c COMMAND...``, returned once the daemon lists the lease for it."""
        holder = Holder([DISKPAXOS, "client", "command", "--run-dir", str(self.run_dir), "-r", resource,
                         "-c", *command], None, self.workdir / f"{self.name}-holder{len(self.holders)}.out")
        self.holders.append(holder)

        def held() -> bool:
            if not holder.alive:
                raise AssertionError(f"holder {holder.pid} exited {holder.returncode}: {holder.output()}")
            with self.api() as c:
                return any(cl["pid"] == holder.pid and cl["leases"] for cl in c.status()["clients"])

        wait_for(held, 30, f"{self.name} to hold {resource} for pid {holder.pid}")
        return holder

    def try_acquire(self, resource: str) -> tuple[int, float]:
        """One acquire through this daemon for a scratch process (released at once).

        Returns (0 or the daemon's error code, CLOCK_MONOTONIC when the acquire returned).
        """
        scratch = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL)
        try:
            with self.api(timeout=None) as c:
                try:
                    c.acquire([resource], pid=scratch.pid)
                    code = 0
                except DaemonError as e:
                    code = e.code
                done = time.monotonic()
                if code == 0:
                    c.release(pid=scratch.pid)
            return code, done
        finally:
            scratch.kill()
            scratch.wait()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --- sanlock as another host -----------------------------------------------------------------


def sanlock_client(sanlock_bin: str, daemon: Any, *args: str, timeout: float = 150) -> Result:
    return run([sanlock_bin, "client", *args], timeout=timeout, env=daemon.env)


def sanlock_join(sanlock_bin: str, daemon: Any, area: Area, host_id: int) -> None:
    got = sanlock_client(sanlock_bin, daemon, "add_lockspace", "-s", area.ls(host_id), "-o", str(IO))
    assert got.returncode == 0 and "done 0" in got.stdout, (got, daemon.log_path.read_text()[-3000:])


def sanlock_leave(sanlock_bin: str, daemon: Any, area: Area, host_id: int) -> None:
    """rem_lockspace, best effort (teardown): the daemon then stops at once on SIGTERM."""
    if daemon.proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            sanlock_client(sanlock_bin, daemon, "rem_lockspace", "-s", area.ls(host_id), timeout=30)


def sanlock_try(sanlock_bin: str, daemon: Any, resource: str) -> tuple[int, float]:
    """One ``sanlock client command -r RESOURCE -c /bin/true``: (0 or the code of ``acquire done N``,
    CLOCK_MONOTONIC when it returned)."""
    got = sanlock_client(sanlock_bin, daemon, "command", "-r", resource, "-c", "/bin/true")
    done = time.monotonic()
    m = re.search(r"acquire done (-?\d+)", got.stdout)
    if got.returncode == 0 and m is None:
        return 0, done
    assert m is not None and int(m[1]) != 0, (got, daemon.log_path.read_text()[-3000:])
    return int(m[1]), done


def sanlock_hold(sanlock_bin: str, daemon: Any, resource: str, log_path: Path) -> Holder:
    """``sanlock client command -r RESOURCE -c /bin/sleep 600``, returned once sanlock lists it."""
    holder = Holder([sanlock_bin, "client", "command", "-r", resource, "-c", "/bin/sleep", "600"], daemon.env,
                    log_path)

    def held() -> bool:
        if not holder.alive:
            raise AssertionError(f"sanlock holder exited {holder.returncode}: {holder.output()}")
        status = sanlock_client(sanlock_bin, daemon, "status", timeout=30).stdout
        return any(line.startswith("r ") and line.endswith(f" p {holder.pid}") for line in status.splitlines())

    wait_for(held, 30, f"sanlock to hold {resource} for pid {holder.pid}")
    return holder


def sanlock_daemon_class(config: pytest.Config) -> type:
    """tests/conftest.py's SanlockDaemon (conftest modules are registered plugins)."""
    for plugin in config.pluginmanager.get_plugins():
        cls = getattr(plugin, "SanlockDaemon", None)
        if isinstance(cls, type):
            return cls
    raise RuntimeError("tests/conftest.py's SanlockDaemon is not loaded")
