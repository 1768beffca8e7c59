"""Run a torture: N worker hosts, random kills and freezes, the watchdog, the checker.

The orchestrator is also the watchdog (what a watchdog device and wdmd are to
sanlock): it reads each host's delta lease from storage and kills a host
whose lease has expired (timestamp + id_renewal_fail passed on this machine's
monotonic clock, which every host here writes) while its log shows it holding
the resource.  A frozen holder is therefore dead before its lease can be
taken, which is the premise every lease manager's safety rests on.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import direct
from ..format import Geometry, LockspaceView
from ..io_direct import DirectStorage
from ..timeouts import Timeouts
from . import checker


@dataclass
class Host:
    host_id: int
    seed: int
    proc: subprocess.Popen[bytes] | None = None
    frozen_until: float = 0.0
    incarnations: int = 0


@dataclass
class Stats:
    kills: int = 0
    freezes: int = 0
    watchdog_kills: int = 0
    restarts: int = 0
    worker_errors: int = 0  # workers that exited by themselves: a bug in the host, reported
    events: dict[str, int] = field(default_factory=dict)


class Torture:
    def __init__(self, directory: str, hosts: int, duration: float, seed: int, io_timeout: int = 1,
                 faults: bool = True, kill_rate: float = 0.004, freeze_rate: float = 0.001,
                 progress: Callable[[float, Stats], None] | None = None, control_no_lease: bool = False) -> None:
        self.dir = directory
        self.rng = random.Random(seed)
        self.hosts = [Host(i + 1, self.rng.randrange(1 << 30)) for i in range(hosts)]
        self.duration = duration
        self.io_timeout = io_timeout
        self.timeouts = Timeouts(io_timeout)
        self.faults = faults
        self.kill_rate = kill_rate  # per host per second
        self.freeze_rate = freeze_rate
        self.progress = progress
        self.stats = Stats()
        self.control_no_lease = control_no_lease
        self.log = open(os.path.join(directory, "orchestrator.log"), "a", buffering=1)

    def event(self, name: str, **fields: object) -> None:
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        self.log.write(f"{time.monotonic():.6f} {name} {tail}\n")
        self.log.flush()
        os.fsync(self.log.fileno())

    def setup(self) -> None:
        leases = os.path.join(self.dir, "leases.img")
        with open(leases, "wb") as f:
            f.truncate(4 << 20)
        with open(os.path.join(self.dir, "data.img"), "wb") as f:
            f.truncate(1 << 20)
        direct.init_lockspace(leases, 0, "TORTURE", io_timeout=self.io_timeout)
        direct.init_resource(leases, 1 << 20, "TORTURE", "R")

    def start(self, host: Host) -> None:
        argv = [sys.executable, "-m", "diskpaxos.torture.worker", "--dir", self.dir, "--host-id", str(host.host_id),
                "--seed", str(host.seed + host.incarnations), "--io-timeout", str(self.io_timeout)]
        if self.faults:
            argv.append("--faults")
        if self.control_no_lease:
            argv.append("--no-lease")
        err = open(os.path.join(self.dir, f"host-{host.host_id}.stderr"), "ab")
        host.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        host.incarnations += 1
        self.event("START", host=host.host_id, pid=host.proc.pid)

    def kill(self, host: Host, why: str) -> None:
        assert host.proc is not None
        self.event("KILL", host=host.host_id, pid=host.proc.pid, why=why)
        host.proc.kill()
        host.proc.wait()
        host.proc = None
        host.frozen_until = 0.0

    def holding(self, host: Host) -> bool:
        """Whether the host's log says it is using the resource (its last USE has no DROP)."""
        assert host.proc is not None
        path = os.path.join(self.dir, f"host-{host.host_id}.log")
        if not os.path.exists(path):
            return False
        state = False
        pid = f"pid={host.proc.pid}"
        for line in open(path):
            if pid in line:
                if " USE " in line:
                    state = True
                elif " DROP " in line:
                    state = False
        return state

    def watchdog(self, storage: DirectStorage, geometry: Geometry) -> None:
        view = LockspaceView.parse(storage.read(0, geometry.align_size), geometry)
        now = time.monotonic()
        for host in self.hosts:
            if host.proc is None:
                continue
            ts = int(view.records["timestamp"][host.host_id - 1])
            if ts and now > ts + self.timeouts.id_renewal_fail and self.holding(host):
                self.stats.watchdog_kills += 1
                self.kill(host, "watchdog")

    def run(self) -> checker.Report:
        self.setup()
        for host in self.hosts:
            self.start(host)
        storage = DirectStorage(os.path.join(self.dir, "leases.img"), io_timeout=self.io_timeout, readonly=True)
        geometry = Geometry(512, 1 << 20)
        start = time.monotonic()
        tick = 0.25
        try:
            while (elapsed := time.monotonic() - start) < self.duration:
                time.sleep(tick)
                now = time.monotonic()
                for host in self.hosts:
                    if host.proc is not None and host.proc.poll() is not None:
                        self.stats.worker_errors += 1
                        self.event("EXITED", host=host.host_id, pid=host.proc.pid, status=host.proc.returncode)
                        host.proc = None
                    if host.proc is None:
                        self.stats.restarts += 1
                        self.start(host)
                        continue
                    if host.frozen_until and now >= host.frozen_until:
                        host.proc.send_signal(signal.SIGCONT)
                        host.frozen_until = 0.0
                        self.event("THAW", host=host.host_id, pid=host.proc.pid)
                    elif not host.frozen_until and self.rng.random() < self.kill_rate * tick:
                        self.stats.kills += 1
                        self.kill(host, "random")
                    elif not host.frozen_until and self.rng.random() < self.freeze_rate * tick:
                        self.stats.freezes += 1
                        host.frozen_until = now + self.timeouts.host_dead + 2
                        host.proc.send_signal(signal.SIGSTOP)
                        self.event("FREEZE", host=host.host_id, pid=host.proc.pid)
                self.watchdog(storage, geometry)
                if self.progress:
                    self.progress(min(1.0, elapsed / self.duration), self.stats)
        finally:
            for host in self.hosts:
                if host.proc is not None:
                    self.kill(host, "end")
            storage.close()
            self.event("END")
        return checker.check(self.dir, self.timeouts.id_renewal_fail, time.monotonic())


__all__ = ["Torture", "Stats"]
