"""A small synchronous QMP client: enough to drive a migration and ask QEMU its state.

QMP is line-delimited JSON over a Unix socket: a greeting, ``qmp_capabilities``,
then commands answered by ``return``/``error`` objects, with asynchronous
``event`` objects interleaved (kept aside so a command's reply is never lost).
The peer's pid comes from SO_PEERCRED, which is how the migration finds the
QEMU process (and so the daemon client) behind a socket.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

from .. import errors

DEFAULT_TIMEOUT = 30.0


class QMPError(errors.DiskpaxosError):
    """QEMU answered a command with an error, or the socket failed."""

    template = "QMP {socket}: {reason}"


class QMP:
    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT, connect_wait: float = 0.0) -> None:
        """``connect_wait``: seconds to keep retrying while the socket is missing or not listening yet
        (QEMU creates the socket file a moment before it listens on it)."""
        self.path = path
        self.events: list[dict[str, Any]] = []
        give_up = time.monotonic() + connect_wait
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(path)
                break
            except OSError as e:
                self.sock.close()
                if isinstance(e, (FileNotFoundError, ConnectionRefusedError)) and time.monotonic() < give_up:
                    time.sleep(0.02)
                    continue
                raise QMPError(socket=path, reason=f"cannot connect: {e.strerror or e}") from None
        self.file = self.sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            self.close()
            raise QMPError(socket=path, reason=f"not a QMP greeting: {str(greeting)[:80]}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        try:
            line = self.file.readline()
        except OSError as e:
            raise QMPError(socket=self.path, reason=f"read failed: {e}") from None
        if not line:
            raise QMPError(socket=self.path, reason="QEMU closed the connection")
        try:
            return json.loads(line)
        except ValueError:
            raise QMPError(socket=self.path, reason=f"not JSON: {line[:80]!r}") from None

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QMPError(socket=self.path, reason=f"{command}: send failed: {e}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(socket=self.path, reason=f"{command}: {err.get('class')}: {err.get('desc')}")
            return reply.get("return")

    def status(self) -> str:
        """The run state: running, paused, inmigrate, postmigrate, prelaunch, ..."""
        return str(self.execute("query-status")["status"])

    def wait_migration(self, timeout: float, poll: float = 0.05) -> dict[str, Any]:
        """Poll query-migrate until it is completed, failed or cancelled."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.execute("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            if time.monotonic() > deadline:
                raise QMPError(socket=self.path, reason=f"migration still {info.get('status')} after {timeout:g} s")
            time.sleep(poll)

    def peer_pid(self) -> int:
        data = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", data)[0]

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["QMP", "QMPError"]
