"""Direct, deadline-bound I/O: the only code in diskpaxos that touches a disk.

Leases are only as safe as the I/O under them, so this module does what
sanlock does and no more:

- opens with ``O_DIRECT`` (and ``O_SYNC`` for writing), so every read sees the
  disk that other hosts see and every completed write is on that disk, not in
  our page cache;
- checks the alignment of offset and length against the sector size *before*
  the syscall, so a bad request fails with a message naming the field instead
  of an ``EINVAL`` from the kernel;
- gives every I/O a deadline.  The syscall runs in a worker thread
  (``os.preadv``/``os.pwritev`` release the GIL) and the caller waits for it
  with a timeout.  A hung I/O is *abandoned*, not cancelled: its worker, its
  buffer and the file descriptor stay alive until the kernel finishes it,
  because the kernel may still DMA into (or out of) that memory and may still
  write through that descriptor.

The syscalls are performed through an injectable :class:`Syscalls` object that
runs inside the worker thread, so :mod:`diskpaxos.fault_storage` can hang,
delay, fail, tear or corrupt real I/O where a real disk would.

A :class:`DirectStorage` serves one caller at a time (one renewal thread, one
command); concurrent calls are refused rather than silently sharing buffers.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from diskpaxos import errors

log = logging.getLogger(__name__)

SECTOR_SIZES = (512, 4096)
# sanlock's rule: a regular file is treated as a 512-byte sector device.
FILE_SECTOR_SIZE = 512

# <linux/fs.h>
BLKSSZGET = 0x1268  # _IO(0x12, 104): logical sector size, int
BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t): size in bytes, u64

Buffers = Sequence[memoryview]


class Syscalls:
    """The two syscalls a :class:`DirectStorage` performs, called in its worker thread.

    Replaced by the fault layer to misbehave exactly where a disk would: a
    replacement that blocks, blocks the worker, not the caller.
    """

    def preadv(self, fd: int, buffers: Buffers, offset: int) -> int:
        return os.preadv(fd, buffers, offset)

    def pwritev(self, fd: int, buffers: Buffers, offset: int) -> int:
        return os.pwritev(fd, buffers, offset)


DEFAULT_SYSCALLS = Syscalls()


def aligned_buffer(size: int) -> mmap.mmap:
    """Return a zeroed, page-aligned anonymous buffer for direct I/O.

    Anonymous mmap memory is page aligned, which satisfies any sector size.
    It is MAP_SHARED, not MAP_PRIVATE, because of fork: with a private mapping
    a fork() in any thread while a direct I/O is in flight makes the page
    copy-on-write, and the DMA may land in the page that ends up belonging to
    the child, so the parent silently reads stale data (see open(2), O_DIRECT
    notes).  A shared anonymous page is not copied on fork, so the DMA always
    lands in the memory we read.  The daemon forks helpers and tests spawn
    processes, so this matters.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)


def buffer_address(buf: Any) -> int:
    """Address of the first byte of a writable buffer (for the alignment check)."""
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data


class _Buffer:
    """An aligned buffer, its address and a memoryview to slice per I/O."""

    __slots__ = ("mem", "view", "address", "size")

    def __init__(self, size: int) -> None:
        size = max(mmap.PAGESIZE, -(-size // mmap.PAGESIZE) * mmap.PAGESIZE)
        self.mem = aligned_buffer(size)
        self.view = memoryview(self.mem)
        self.address = buffer_address(self.mem)
        self.size = size


class _Request:
    """One syscall handed to a worker; completion is signalled by releasing ``done``.

    A timed-out request keeps references to its storage and buffer until the
    syscall returns, which keeps the memory mapped and the fd open that long.
    """

    __slots__ = ("func", "fd", "buffer", "offset", "op", "length", "storage",
                 "done", "finished", "abandoned", "result", "error", "submitted")

    def __init__(self, func: Callable[[int, Buffers, int], int], fd: int, buffer: _Buffer,
                 offset: int, op: str, length: int, storage: DirectStorage) -> None:
        self.func = func
        self.fd = fd
        self.buffer = buffer
        self.offset = offset
        self.op = op
        self.length = length
        self.storage: DirectStorage | None = storage
        self.done = threading.Lock()
        self.done.acquire()
        self.finished = False
        self.abandoned = False
        self.result = 0
        self.error: BaseException | None = None
        self.submitted = time.monotonic()

    def run(self) -> None:
        try:
            self.result = self.func(self.fd, [self.buffer.view[:self.length]], self.offset)
        except BaseException as e:  # reported to the caller, or logged if abandoned
            self.error = e
        try:
            storage = self.storage
            assert storage is not None
            storage._complete(self)
        finally:
            self.done.release()


class _Worker:
    """A long-lived thread running one request at a time for one storage.

    It holds no reference to the storage between requests, so an unused
    storage can be collected.  Replaced (and told to exit after its current
    request) when a request hangs.
    """

    def __init__(self, name: str) -> None:
        self.queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, args=(self.queue,), name=name, daemon=True)
        self.thread.start()

    @staticmethod
    def _run(q: queue.SimpleQueue[_Request | None]) -> None:
        while True:
            request = q.get()
            if request is None:
                return
            request.run()
            del request

    def submit(self, request: _Request) -> None:
        self.queue.put(request)

    def stop(self) -> None:
        """Exit after the request in progress, if any; never waits."""
        self.queue.put(None)


def _ioctl_int(fd: int, request: int, fmt: str) -> int:
    buf = fcntl.ioctl(fd, request, bytes(struct.calcsize(fmt)))
    return int(struct.unpack(fmt, buf)[0])


class DirectStorage:
    """A file or block device opened for direct I/O with a deadline per I/O.

    ``sector_size`` is detected (BLKSSZGET for block devices, 512 for regular
    files) unless given: a leader record on disk states the sector size the
    lockspace was made with, and the layer that reads it knows better than the
    device.  Only 512 and 4096 are valid; a size smaller than a block device's
    logical sector size is refused because no I/O could succeed.
    """

    def __init__(self, path: str | os.PathLike[str], *, io_timeout: float,
                 sector_size: int | None = None, readonly: bool = False,
                 syscalls: Syscalls = DEFAULT_SYSCALLS) -> None:
        self.path = os.fspath(path)
        if not io_timeout > 0:
            raise errors.UsageError(f"io_timeout must be positive, got {io_timeout}")
        if sector_size is not None and sector_size not in SECTOR_SIZES:
            raise errors.UsageError(
                f"sector size {sector_size} is not supported (use 512 or 4096)", path=self.path)
        self.io_timeout = float(io_timeout)
        self.readonly = readonly
        self.syscalls = syscalls
        # Counters, for logs, status and tests.
        self.reads = 0
        self.writes = 0
        self.abandoned_ios = 0
        self.late_completions = 0
        self.workers_started = 0

        self._lock = threading.Lock()  # guards completion/abandonment and the fd lifetime
        self._idle = threading.Condition(self._lock)
        self._in_flight_abandoned = 0
        self._abandoned_writes = 0  # of those, writes: later I/O waits for them (ordering)
        self._closing = False
        self._fd_closed = True  # until open() succeeds
        self._caller = threading.Lock()  # one caller at a time
        self._worker: _Worker | None = None
        self._read_buf: _Buffer | None = None
        self._write_buf: _Buffer | None = None

        self._fd = self._open()
        self._fd_closed = False
        try:
            st = os.fstat(self._fd)
            if stat.S_ISBLK(st.st_mode):
                self.is_block_device = True
                detected = _ioctl_int(self._fd, BLKSSZGET, "i")
            elif stat.S_ISREG(st.st_mode):
                self.is_block_device = False
                detected = FILE_SECTOR_SIZE
            else:
                raise errors.OpenError(path=self.path, reason="not a regular file or block device")
            # What the device itself requires, whatever sector size is in use.
            self.device_sector_size: int = detected
            if sector_size is None:
                if detected not in SECTOR_SIZES:
                    raise errors.OpenError(
                        path=self.path, reason=f"unsupported logical sector size {detected}")
                sector_size = detected
            elif sector_size < detected:
                raise errors.UsageError(
                    f"sector size {sector_size} is smaller than the device's logical "
                    f"sector size {detected}", path=self.path)
            self.sector_size: int = sector_size
        except BaseException:
            os.close(self._fd)
            self._fd_closed = True
            raise
        log.debug("opened %s (%s, sector size %d, %s)", self.path,
                  "block device" if self.is_block_device else "file", self.sector_size,
                  "read-only" if readonly else "read-write")

    def _open(self) -> int:
        flags = os.O_DIRECT | os.O_CLOEXEC
        flags |= os.O_RDONLY if self.readonly else os.O_RDWR | os.O_SYNC
        try:
            return os.open(self.path, flags)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            if e.errno == errno.EINVAL:
                raise errors.NotDirectIOCapable(path=self.path, reason=reason, errno=e.errno) from None
            raise errors.OpenError(path=self.path, reason=reason, errno=e.errno) from None

    # --- properties ---------------------------------------------------------

    @property
    def size(self) -> int:
        """Current size in bytes (a file grows when written past its end)."""
        self._check_open()
        if self.is_block_device:
            return _ioctl_int(self._fd, BLKGETSIZE64, "Q")
        return os.fstat(self._fd).st_size

    @property
    def closed(self) -> bool:
        """True once close() was called (the fd itself may still be open, see fd_closed)."""
        return self._closing

    @property
    def fd_closed(self) -> bool:
        """True once the file descriptor is really closed."""
        return self._fd_closed

    @property
    def abandoned_in_flight(self) -> int:
        """Abandoned I/Os the kernel has not finished yet."""
        return self._in_flight_abandoned

    # --- I/O ------------------------------------------------------------------

    def read(self, offset: int, length: int, timeout: float | None = None) -> npt.NDArray[np.uint8]:
        """Read ``length`` bytes at ``offset``; return a read-only uint8 view.

        The view is of a buffer this object owns and reuses: its contents are
        valid until the next read on this object.  Copy what must outlive it.
        """
        self._check_request(offset, length)
        self._enter()
        try:
            buf = self._read_buf
            if buf is None or buf.size < length:
                buf = self._read_buf = _Buffer(length)
            self._check_buffer(buf, offset)
            self._submit("read", self.syscalls.preadv, buf, offset, length, timeout)
            self.reads += 1
        finally:
            self._caller.release()
        view = np.frombuffer(buf.mem, dtype=np.uint8, count=length)
        view.flags.writeable = False
        return view

    def write(self, offset: int, data: bytes | bytearray | memoryview | npt.NDArray[Any],
              timeout: float | None = None) -> None:
        """Write all of ``data`` at ``offset``; return when it is on the disk (O_SYNC).

        ``data`` is copied into an aligned buffer owned by this object, so any
        bytes-like object or contiguous array is accepted.
        """
        if isinstance(data, np.ndarray):
            source = memoryview(np.ascontiguousarray(data)).cast("B")
        else:
            source = memoryview(data).cast("B")
        length = source.nbytes
        self._check_request(offset, length)
        if self.readonly:
            raise errors.UsageError("storage was opened read-only", path=self.path, offset=offset)
        self._enter()
        try:
            buf = self._write_buf
            if buf is None or buf.size < length:
                buf = self._write_buf = _Buffer(length)
            self._check_buffer(buf, offset)
            buf.view[:length] = source
            self._submit("write", self.syscalls.pwritev, buf, offset, length, timeout)
            self.writes += 1
        finally:
            self._caller.release()

    def close(self) -> None:
        """Stop the worker and close the fd, or defer the close while an abandoned I/O runs.

        Closing the fd under an in-flight I/O would free its number for the
        next open(); a late write would then land in whatever file got it.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            worker, self._worker = self._worker, None
            pending = self._in_flight_abandoned
            if not pending:
                self._close_fd_locked()
        if worker is not None:
            worker.stop()
        if pending:
            log.warning("%s: closing with %d abandoned I/O(s) in flight; the fd stays open "
                        "until they complete", self.path, pending)

    @property
    def abandoned_writes_in_flight(self) -> int:
        """Writes abandoned at their deadline that may still land."""
        with self._lock:
            return self._abandoned_writes

    def wait_abandoned(self, timeout: float) -> bool:
        """Wait until no abandoned I/O is in flight; True if none is left.

        Called by orderly shutdown and tests that want to observe late completions.
        """
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight_abandoned == 0, timeout)

    def __enter__(self) -> DirectStorage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        # In-flight requests hold a reference to us, so here nothing is in flight.
        if not getattr(self, "_fd_closed", True):
            self.close()

    def __repr__(self) -> str:
        return (f"<DirectStorage {self.path!r} sector_size={getattr(self, 'sector_size', None)} "
                f"io_timeout={self.io_timeout} closed={self._closing}>")

    # --- internals --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise errors.UsageError("storage is closed", path=self.path)

    def _check_request(self, offset: int, length: int) -> None:
        self._check_open()
        ss = self.sector_size
        if offset < 0 or offset % ss:
            raise errors.AlignmentError(path=self.path, offset=offset, field="offset",
                                        value=offset, sector_size=ss)
        if length <= 0 or length % ss:
            raise errors.AlignmentError(path=self.path, offset=offset, field="length",
                                        value=length, sector_size=ss)

    def _check_buffer(self, buf: _Buffer, offset: int) -> None:
        if buf.address % self.sector_size:
            raise errors.AlignmentError(path=self.path, offset=offset, field="buffer address",
                                        value=hex(buf.address), sector_size=self.sector_size)

    def _enter(self) -> None:
        """Refuse a second concurrent caller instead of letting two I/Os share a buffer."""
        if not self._caller.acquire(blocking=False):
            raise errors.UsageError("concurrent I/O on one DirectStorage; use one per thread",
                                    path=self.path)

    def _submit(self, op: str, func: Callable[[int, Buffers, int], int], buf: _Buffer,
                offset: int, length: int, timeout: float | None) -> None:
        """Run one syscall in the worker and wait for it with a deadline."""
        if timeout is None:
            timeout = self.io_timeout
        # Order after late writes: an abandoned write may still land, and must never land after
        # an I/O issued later (a late leader or dblock write would undo a newer one).
        with self._lock:
            if self._abandoned_writes and not self._idle.wait_for(lambda: self._abandoned_writes == 0, timeout):
                raise errors.WriteStillInFlight(path=self.path, offset=offset, op=op, length=length,
                                                timeout=timeout)
        worker = self._worker
        if worker is None:
            worker = self._worker = _Worker(f"diskpaxos-io {self.path}")
            self.workers_started += 1
        request = _Request(func, self._fd, buf, offset, op, length, self)
        worker.submit(request)
        if not request.done.acquire(timeout=timeout):
            with self._lock:
                if not request.finished:
                    self._abandon_locked(request, worker)
                    raise errors.IOTimeout(path=self.path, offset=offset, op=op,
                                           length=length, timeout=timeout)
            # Finished between the timeout and taking the lock: not a timeout.
        self._check_result(request)

    def _abandon_locked(self, request: _Request, worker: _Worker) -> None:
        request.abandoned = True
        self.abandoned_ios += 1
        self._in_flight_abandoned += 1
        if request.op == "write":
            self._abandoned_writes += 1
        # Never touch the worker or the buffer again: the kernel may still use them.
        self._worker = None
        worker.stop()
        if request.buffer is self._read_buf:
            self._read_buf = None
        if request.buffer is self._write_buf:
            self._write_buf = None
        log.warning("%s: %s of %d bytes at offset %d did not complete within its deadline; "
                    "abandoned (worker and buffer replaced, %d abandoned in flight)",
                    self.path, request.op, request.length, request.offset,
                    self._in_flight_abandoned)

    def _complete(self, request: _Request) -> None:
        """Called in the worker when the syscall returns, before ``done`` is released."""
        with self._lock:
            request.finished = True
            if request.abandoned:
                self.late_completions += 1
                self._in_flight_abandoned -= 1
                if request.op == "write":
                    self._abandoned_writes -= 1
                    self._idle.notify_all()
                outcome = "failed: %r" % request.error if request.error else f"returned {request.result}"
                log.warning("%s: abandoned %s at offset %d completed late after %.3f s and %s",
                            self.path, request.op, request.offset,
                            time.monotonic() - request.submitted, outcome)
                if self._closing and not self._in_flight_abandoned:
                    self._close_fd_locked()
                if not self._in_flight_abandoned:
                    self._idle.notify_all()
        if request.abandoned:
            request.storage = None
            request.buffer = None  # type: ignore[assignment]

    def _close_fd_locked(self) -> None:
        if not self._fd_closed:
            os.close(self._fd)
            self._fd_closed = True
            log.debug("closed %s", self.path)

    def _check_result(self, request: _Request) -> None:
        request.storage = None
        op, offset, length = request.op, request.offset, request.length
        error = request.error
        if error is not None:
            if isinstance(error, OSError):
                if error.errno == errno.ENOSPC and self.is_block_device:
                    # Linux's answer to a write starting at or past the end of a block device.
                    raise errors.ShortIOError(path=self.path, offset=offset, op=op,
                                              length=length, done=0) from None
                reason = os.strerror(error.errno) if error.errno else str(error)
                raise errors.IOFailed(path=self.path, offset=offset, op=op, length=length,
                                      reason=reason, errno=error.errno) from None
            raise error
        if request.result != length:
            raise errors.ShortIOError(path=self.path, offset=offset, op=op, length=length,
                                      done=request.result)

