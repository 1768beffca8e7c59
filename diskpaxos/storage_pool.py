"""Open storage kept for reuse, lent to one caller at a time.

A ``DirectStorage`` owns a descriptor, a worker thread and aligned buffers;
opening one per lease operation costs more than the I/O itself (a boot storm
acquires a thousand leases in one file).  The pool keeps idle ones per path
and lends each to a single caller, which is what ``DirectStorage`` requires.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from . import errors
from .io_direct import DEFAULT_SYSCALLS, DirectStorage, Syscalls


class StoragePool:
    def __init__(self, io_timeout: float, readonly: bool = False) -> None:
        self.io_timeout = io_timeout
        self.readonly = readonly
        self._idle: dict[tuple[str, int], list[DirectStorage]] = {}
        self._lent: set[DirectStorage] = set()
        self._all: dict[tuple[str, int], list[DirectStorage]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def borrow(self, path: str, syscalls: Syscalls = DEFAULT_SYSCALLS) -> Iterator[DirectStorage]:
        """One storage for ``path``, for this caller alone until the block ends.

        A write abandoned at its deadline may still land; every storage of the
        path waits for it first (up to io_timeout), so it can never land after
        a write issued later through another storage of the same path.
        """
        key = (os.path.realpath(path), id(syscalls))
        with self._lock:
            if self._closed:
                raise RuntimeError("storage pool is closed")
            pending = [s for s in self._all.get(key, ()) if s.abandoned_writes_in_flight]
        for other in pending:
            if not other.wait_abandoned(self.io_timeout):
                raise errors.WriteStillInFlight(path=path, op="I/O", length=0, timeout=self.io_timeout)
        with self._lock:
            idle = self._idle.setdefault(key, [])
            storage = idle.pop() if idle else None
        if storage is None:
            storage = DirectStorage(path, io_timeout=self.io_timeout, readonly=self.readonly, syscalls=syscalls)
            with self._lock:
                self._all.setdefault(key, []).append(storage)
        with self._lock:
            self._lent.add(storage)
        try:
            yield storage
        finally:
            with self._lock:
                self._lent.discard(storage)
                if self._closed:
                    storage.close()
                else:
                    self._idle.setdefault(key, []).append(storage)

    def close(self) -> None:
        """Close every idle storage; ones still lent close when they come back."""
        with self._lock:
            self._closed = True
            idle = [s for group in self._idle.values() for s in group]
            self._idle.clear()
        for storage in idle:
            storage.close()
