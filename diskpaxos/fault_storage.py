"""Fault injection at the syscall layer, for tests and torture runs.

A :class:`FaultPlan` holds :class:`Fault` rules and a seeded random generator;
``plan.syscalls()`` returns a :class:`~diskpaxos.io_direct.Syscalls` that a
:class:`~diskpaxos.io_direct.DirectStorage` runs in its worker thread::

    plan = FaultPlan(seed=1).add(Fault.hang(op="write", offset=4096, count=1))
    with DirectStorage(path, io_timeout=1, syscalls=plan.syscalls()) as storage:
        ...
    plan.release_all()

Faults misbehave where a disk would, on the real file descriptor, so a hang
blocks the worker (not the caller), a late write really lands, a torn write
really leaves half old and half new bytes on the disk.

Rules are checked in the order they were added and every matching rule fires,
applied as: delay, hang, error, torn_write, corrupt.  A rule matches an I/O by
``op`` ("read", "write" or None for both) and ``offset`` (a byte the I/O must
cover, or a ``(start, end)`` byte range it must overlap); it then lets
``skip`` matching I/Os pass, fires with ``probability`` and at most ``count``
times (None: unlimited).  Random draws come from the plan's seed only, so the
same seed and the same sequence of I/Os give the same faults; each firing is
recorded in ``plan.events``.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from diskpaxos.io_direct import DEFAULT_SYSCALLS, Buffers, Syscalls, aligned_buffer

log = logging.getLogger(__name__)

KINDS = ("delay", "hang", "error", "torn_write", "corrupt")
OPS = ("read", "write")


@dataclass(eq=False)
class Fault:
    """One rule: what goes wrong, and on which I/Os.  Build with the class methods."""

    kind: str
    op: str | None = None
    offset: int | tuple[int, int] | None = None
    probability: float = 1.0
    count: int | None = None
    skip: int = 0
    seconds: float = 0.0  # delay
    errno: int = _errno.EIO  # error
    keep: int = 0  # torn_write: bytes of the write that reach the disk
    positions: tuple[int, ...] | None = None  # corrupt: byte indexes in the I/O, or random
    nbytes: int = 1  # corrupt: how many random bytes when positions is None
    fired: int = field(default=0, init=False)
    seen: int = field(default=0, init=False)
    _released: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.op not in (None, *OPS):
            raise ValueError(f"op must be 'read', 'write' or None, not {self.op!r}")
        if self.kind == "torn_write" and self.op != "write":
            raise ValueError("torn_write applies to writes only")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability} is outside [0, 1]")

    # --- constructors --------------------------------------------------------

    @classmethod
    def delay(cls, seconds: float, **match: Any) -> Fault:
        """The I/O completes, ``seconds`` late (past its deadline: a timeout and a late completion)."""
        return cls("delay", seconds=seconds, **match)

    @classmethod
    def hang(cls, **match: Any) -> Fault:
        """The I/O blocks until :meth:`release`, then really happens (a late completion)."""
        return cls("hang", **match)

    @classmethod
    def error(cls, errno: int = _errno.EIO, **match: Any) -> Fault:
        """The I/O fails with ``errno`` and does not reach the disk."""
        return cls("error", errno=errno, **match)

    @classmethod
    def torn_write(cls, keep: int, **match: Any) -> Fault:
        """Only the first ``keep`` bytes of the write reach the disk; the rest keep
        their old content, and the write reports success (a crash or a lying disk
        that a later reader must catch by checksum)."""
        return cls("torn_write", keep=keep, op="write", **match)

    @classmethod
    def corrupt(cls, positions: tuple[int, ...] | list[int] | None = None, nbytes: int = 1,
                **match: Any) -> Fault:
        """Flip (xor 0xff) bytes at ``positions`` of the I/O, or at ``nbytes`` random
        positions, in the data read (the caller sees it) or written (the disk gets it)."""
        return cls("corrupt", positions=None if positions is None else tuple(positions),
                   nbytes=nbytes, **match)

    # --- control -------------------------------------------------------------

    def release(self) -> None:
        """Let hung I/Os (present and future) of this rule proceed."""
        self._released.set()

    def wait_released(self) -> None:
        """Block (the worker thread) until :meth:`release`."""
        self._released.wait()

    def matches(self, op: str, offset: int, length: int) -> bool:
        if self.op is not None and self.op != op:
            return False
        if self.offset is None:
            return True
        if isinstance(self.offset, int):
            start, end = self.offset, self.offset + 1
        else:
            start, end = self.offset
        return offset < end and start < offset + length


@dataclass(frozen=True)
class FaultEvent:
    """A fault that fired: what, on which I/O, and the random choices it made."""

    seq: int
    kind: str
    op: str
    offset: int
    length: int
    detail: tuple[int, ...] = ()


class FaultPlan:
    """An ordered list of fault rules with one seeded random generator."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.faults: list[Fault] = []
        self.events: list[FaultEvent] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> FaultPlan:
        self.faults.append(fault)
        return self

    def syscalls(self, base: Syscalls = DEFAULT_SYSCALLS) -> FaultySyscalls:
        return FaultySyscalls(self, base)

    def release_all(self) -> None:
        """Release every hang; called at the end of a test so no worker stays blocked."""
        for fault in self.faults:
            fault.release()

    def choose(self, op: str, offset: int, length: int) -> list[tuple[Fault, FaultEvent]]:
        """Decide which rules fire for this I/O; called once per I/O, in the worker."""
        fired: list[tuple[Fault, FaultEvent]] = []
        with self._lock:
            for fault in self.faults:
                if not fault.matches(op, offset, length):
                    continue
                if fault.count is not None and fault.fired >= fault.count:
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                fault.fired += 1
                detail: tuple[int, ...] = ()
                if fault.kind == "corrupt":
                    if fault.positions is not None:
                        detail = tuple(p for p in fault.positions if 0 <= p < length)
                    else:
                        detail = tuple(sorted(self._rng.sample(range(length), min(fault.nbytes, length))))
                elif fault.kind == "torn_write":
                    detail = (fault.keep,)
                event = FaultEvent(len(self.events), fault.kind, op, offset, length, detail)
                self.events.append(event)
                fired.append((fault, event))
        fired.sort(key=lambda pair: KINDS.index(pair[0].kind))
        for _, event in fired:
            log.info("injecting %s into %s of %d bytes at offset %d %s",
                     event.kind, event.op, event.length, event.offset, event.detail or "")
        return fired


def _flip(buf: memoryview, positions: tuple[int, ...]) -> None:
    for p in positions:
        buf[p] ^= 0xFF


class FaultySyscalls(Syscalls):
    """Syscalls that consult a plan before, around and after the real ones."""

    def __init__(self, plan: FaultPlan, base: Syscalls = DEFAULT_SYSCALLS) -> None:
        self.plan = plan
        self.base = base

    def preadv(self, fd: int, buffers: Buffers, offset: int) -> int:
        length = sum(len(b) for b in buffers)
        faults = self._before(self.plan.choose("read", offset, length))
        n = self.base.preadv(fd, buffers, offset)
        for fault, event in faults:
            if fault.kind == "corrupt":
                _flip(_single(buffers), tuple(p for p in event.detail if p < n))
        return n

    def pwritev(self, fd: int, buffers: Buffers, offset: int) -> int:
        length = sum(len(b) for b in buffers)
        faults = self._before(self.plan.choose("write", offset, length))
        if not faults:
            return self.base.pwritev(fd, buffers, offset)
        # Never modify the caller's buffer: build what the disk will get in our own.
        data = _single(buffers)
        out = memoryview(aligned_buffer(length))[:length]
        out[:] = data
        for fault, event in faults:
            if fault.kind == "torn_write":
                keep = min(fault.keep, length)
                old = memoryview(aligned_buffer(length))[:length]
                got = self.base.preadv(fd, [old], offset)
                # Beyond the end of a file the old content is zeros (a hole).
                out[keep:got] = old[keep:got]
                out[max(keep, got):] = bytes(length - max(keep, got))
            elif fault.kind == "corrupt":
                _flip(out, event.detail)
        return self.base.pwritev(fd, [out], offset)

    @staticmethod
    def _before(faults: list[tuple[Fault, FaultEvent]]) -> list[tuple[Fault, FaultEvent]]:
        """Apply the faults that act before the I/O; return those that act on its data."""
        rest = []
        for fault, _ in faults:
            if fault.kind == "delay":
                time.sleep(fault.seconds)
            elif fault.kind == "hang":
                fault.wait_released()
            elif fault.kind == "error":
                raise OSError(fault.errno, os.strerror(fault.errno))
            else:
                rest.append((fault, _))
        return rest


def _single(buffers: Buffers) -> memoryview:
    if len(buffers) != 1:
        raise NotImplementedError("fault injection supports one buffer per I/O")
    return buffers[0]


class TriggeredSyscalls(Syscalls):
    """Real I/O until a trigger file exists, then the plan's faults: "pull the plug" on demand.

    Lets a test make one daemon's storage fail or hang at a moment it chooses,
    from outside the process (the daemon is configured with a plan file).
    """

    def __init__(self, plan: FaultPlan, trigger: str, base: Syscalls = DEFAULT_SYSCALLS) -> None:
        self.trigger = trigger
        self.base = base
        self.faulty = plan.syscalls(base)

    def _active(self) -> Syscalls:
        return self.faulty if os.path.exists(self.trigger) else self.base

    def preadv(self, fd: int, buffers: Buffers, offset: int) -> int:
        return self._active().preadv(fd, buffers, offset)

    def pwritev(self, fd: int, buffers: Buffers, offset: int) -> int:
        return self._active().pwritev(fd, buffers, offset)


def load_plan(path: str) -> TriggeredSyscalls:
    """A plan file (JSON): {"trigger": PATH, "seed": N, "faults": [{"kind": "error", "op": "read", ...}]}.

    Each fault's keys are ``Fault``'s fields; ``offset`` may be [start, end].
    """
    import json
    with open(path) as f:
        spec = json.load(f)
    plan = FaultPlan(seed=int(spec.get("seed", 0)))
    for item in spec.get("faults", []):
        item = dict(item)
        if isinstance(item.get("offset"), list):
            item["offset"] = tuple(item["offset"])
        if "positions" in item and item["positions"] is not None:
            item["positions"] = tuple(item["positions"])
        plan.add(Fault(**item))
    return TriggeredSyscalls(plan, spec["trigger"])
