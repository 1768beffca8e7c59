"""Watch a lockspace's hosts from storage without joining (nothing written).

Reads the whole area once a second for a window and feeds the reads to a
``HostTable``: a host is seen live only if its timestamp changes within the
window, so the default window is long enough for every host to renew.
"""

from __future__ import annotations

import time

from . import errors
from .direct import probe_geometry
from .format import LockspaceView
from .host_table import HostInfo, HostTable
from .io_direct import DirectStorage
from .timeouts import OBSERVE_INTERVAL, Timeouts


def observe_hosts(name: str, path: str, offset: int, seconds: float | None, io_timeout: int) -> list[HostInfo]:
    """The host table after observing for ``seconds`` (None: 1.5 renewal intervals + 1 s)."""
    with DirectStorage(path, io_timeout=io_timeout, readonly=True) as storage:
        kind, geometry, first = probe_geometry(storage, offset)
        if kind != "lockspace":
            raise errors.LeaderMagicError(path=path, offset=offset, field="magic", found=first.magic,
                                          expected="a lockspace (found a resource lease)")
        table = HostTable(geometry.max_hosts, io_timeout)
        start = time.monotonic()
        window = seconds
        while True:
            now = time.monotonic()
            view = LockspaceView.parse(storage.read(offset, geometry.align_size), geometry)
            if name and view.records["space_name"][0].decode(errors="replace") != name:
                raise errors.LeaderLockspaceError(found=view.records["space_name"][0].decode(errors="replace"),
                                                  expected=name, path=path, offset=offset)
            table.observe(view, now)
            if window is None:
                held = view.records["io_timeout"][view.records["timestamp"] != 0]
                slowest = int(held.max()) if len(held) else io_timeout
                # a renewal interval and a half, plus a read: every live host renews in it,
                # even sanlock's, which renews a little after each interval
                window = Timeouts(slowest or io_timeout).id_renewal * 1.5 + OBSERVE_INTERVAL
            if now - start >= window:
                return table.hosts(now)
            time.sleep(min(OBSERVE_INTERVAL, max(0.0, start + window - now)))
