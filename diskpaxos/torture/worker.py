"""One torture host: join, then loop acquire / hold / release until killed.

Every event is appended to the host's log as one line ``T EVENT k=v ...``
with T from CLOCK_MONOTONIC (shared by every process on the machine), written
and flushed before the action it announces takes effect (``USE`` before the
first write to the resource, ``DROP`` before it stops using it), so the
checker's intervals contain every moment the host used the resource.

While holding, the host writes (host, generation, lver, seq) into its guarded
block of the data file and reads it back after a pause: the physical check
that nobody else wrote there meanwhile.
"""

from __future__ import annotations

import argparse
import errno
import logging
import mmap
import os
import random
import struct
import sys
import threading
import time

from .. import errors
from ..fault_storage import Fault, FaultPlan
from ..io_direct import DEFAULT_SYSCALLS
from ..lockspace import Lockspace

BLOCK = 4096
RECORD = struct.Struct("<QQQQQ")  # magic, host, generation, lver, seq
MAGIC = 0x544F52545552455F  # "_ERUTROT"


class Log:
    def __init__(self, path: str, host: int) -> None:
        self.f = open(path, "a", buffering=1)
        self.host = host

    def event(self, name: str, **fields: object) -> None:
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        self.f.write(f"{time.monotonic():.6f} {name} host={self.host} pid={os.getpid()} {tail}\n")
        self.f.flush()
        os.fsync(self.f.fileno())


def fault_plan(seed: int, io_timeout: int) -> FaultPlan:
    """Rare but real: I/O delayed past io_timeout, errors, torn delta-lease writes."""
    plan = FaultPlan(seed=seed)
    plan.add(Fault.delay(io_timeout * 1.5, probability=0.01))
    plan.add(Fault.error(errno.EIO, probability=0.01))
    plan.add(Fault.torn_write(100, offset=(0, 1 << 20), probability=0.002))
    return plan


class DataBlock:
    """The guarded block: O_DIRECT writes and reads of one 4 KiB block."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_DIRECT | os.O_SYNC)
        self.buf = mmap.mmap(-1, BLOCK)

    def write(self, *values: int) -> None:
        self.buf[:] = bytes(BLOCK)
        self.buf[: RECORD.size] = RECORD.pack(MAGIC, *values)
        os.pwritev(self.fd, [self.buf], 0)

    def read(self) -> tuple[int, ...]:
        os.preadv(self.fd, [self.buf], 0)
        return RECORD.unpack(self.buf[: RECORD.size])[1:]


class _NoLease:
    """The control run's stand-in for a lease: always "valid", never exclusive."""

    def __init__(self, ls: Lockspace, seq: int) -> None:
        self.ls, self.lver = ls, seq + 1

    @property
    def valid(self) -> bool:
        return self.ls.valid

    def release(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host-id", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--io-timeout", type=int, default=1)
    ap.add_argument("--hold-max", type=float, default=3.0)
    ap.add_argument("--faults", action="store_true")
    ap.add_argument("--no-lease", action="store_true",
                    help="control run: use the resource without any lease, to show the checker catches overlaps")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"host{a.host_id} %(levelname)s %(name)s: %(message)s")
    rng = random.Random(a.seed)
    log = Log(os.path.join(a.dir, f"host-{a.host_id}.log"), a.host_id)
    leases = os.path.join(a.dir, "leases.img")
    data = DataBlock(os.path.join(a.dir, "data.img"))
    lost = threading.Event()
    while True:
        plan = fault_plan(rng.randrange(1 << 30), a.io_timeout) if a.faults else None
        syscalls = plan.syscalls() if plan else DEFAULT_SYSCALLS
        lost.clear()
        try:
            ls = Lockspace.join("TORTURE", a.host_id, leases, 0, a.io_timeout,
                                on_renewal_failure=lambda _ls, why: (lost.set(), log.event("LOST", why=repr(why))),
                                syscalls=syscalls)
        except errors.DiskpaxosError as e:
            log.event("JOINFAIL", code=e.code)
            time.sleep(rng.random())
            continue
        log.event("JOINED", gen=ls.generation)
        seq = 0
        while not lost.is_set():
            try:
                lease = _NoLease(ls, seq) if a.no_lease else ls.acquire("R", leases, 1 << 20, syscalls=syscalls)
            except errors.DiskpaxosError as e:
                log.event("BUSY", code=e.code)
                time.sleep(rng.random() * 0.5)
                continue
            if not lease.valid:
                log.event("STALE", lver=lease.lver)
                lease.release()
                continue
            log.event("USE", gen=ls.generation, lver=lease.lver)
            until = time.monotonic() + rng.random() * a.hold_max
            violation = None
            while time.monotonic() < until and lease.valid:
                seq += 1
                mine = (a.host_id, ls.generation, lease.lver, seq)
                if not lease.valid:
                    break
                data.write(*mine)
                time.sleep(rng.random() * 0.2)
                if not lease.valid:
                    break
                seen = data.read()
                if seen != mine:
                    violation = seen
                    break
            log.event("DROP", lver=lease.lver, seq=seq)
            if violation is not None:
                log.event("VIOLATION", expected=f"{a.host_id}/{ls.generation}/{lease.lver}/{seq}",
                          found="/".join(map(str, violation)))
            try:
                lease.release()
                log.event("RELEASED", lver=lease.lver)
            except errors.DiskpaxosError as e:
                log.event("RELEASEFAIL", code=e.code)
            time.sleep(rng.random() * 0.5)
        ls.leave()
        log.event("LEFT")


if __name__ == "__main__":
    sys.exit(main())
