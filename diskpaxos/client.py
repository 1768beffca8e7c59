"""Python client of the diskpaxos daemon (line-delimited JSON over its Unix socket).

Clients find their daemon through ``run_dir``, else ``$DISKPAXOS_RUN_DIR``,
else /run/diskpaxos, as sanlock's clients use SANLOCK_RUN_DIR.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from typing import Any

from . import errors

DEFAULT_RUN_DIR = "/run/diskpaxos"
SOCKET_NAME = "diskpaxos.sock"
VERSION = 1


class DaemonError(errors.DiskpaxosError):
    """An error reply from the daemon; ``code`` is the daemon's (sanlock-style) code."""

    template = "{reason}"


def run_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DISKPAXOS_RUN_DIR") or DEFAULT_RUN_DIR


class Client:
    """One connection to the daemon; calls are synchronous."""

    def __init__(self, run_dir_path: str | None = None, timeout: float | None = None) -> None:
        self.path = os.path.join(run_dir(run_dir_path), SOCKET_NAME)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise DaemonError(f"cannot reach the daemon at {self.path}: {e.strerror or e}",
                              code=-(e.errno or 111)) from None
        self.file = self.sock.makefile("rb")
        self._ids = itertools.count(1)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        req_id = next(self._ids)
        line = json.dumps({"v": VERSION, "id": req_id, "op": op, **{k: v for k, v in args.items() if v is not None}})
        self.sock.sendall(line.encode() + b"\n")
        reply_line = self.file.readline()
        if not reply_line:
            raise DaemonError("the daemon closed the connection", code=-104)
        reply = json.loads(reply_line)
        if not reply.get("ok"):
            raise DaemonError(reply.get("error", "error"), code=reply.get("code", -1))
        return reply

    # the operations, named as sanlock's client verbs
    def add_lockspace(self, lockspace: str, io_timeout: int | None = None, host_name: str | None = None) -> dict:
        return self.call("add_lockspace", lockspace=lockspace, io_timeout=io_timeout, host_name=host_name)

    def rem_lockspace(self, lockspace: str) -> dict:
        return self.call("rem_lockspace", lockspace=lockspace)

    def inq_lockspace(self, lockspace: str) -> dict:
        return self.call("inq_lockspace", lockspace=lockspace)

    def register(self, pid: int | None = None, name: str | None = None, info: str | None = None) -> dict:
        """Register a process (default: ourselves); ``name`` is the owner name status shows (a VM's name),
        ``info`` free text the front end keeps with it (the VM front end stores JSON)."""
        return self.call("register", pid=pid, name=name, info=info)

    def set_killpath(self, argv: list[str], pid: int | None = None) -> dict:
        return self.call("set_killpath", argv=argv, pid=pid)

    def acquire(self, resources: list[str], pid: int | None = None) -> list[str]:
        return self.call("acquire", resources=resources, pid=pid)["leases"]

    def release(self, resources: list[str] | None = None, pid: int | None = None) -> list[str]:
        return self.call("release", resources=resources, pid=pid)["released"]

    def convert(self, resource: str, shared: bool, pid: int | None = None) -> str:
        return self.call("convert", resource=resource, shared=shared, pid=pid)["lease"]

    def inquire(self, pid: int | None = None) -> list[str]:
        return self.call("inquire", pid=pid)["leases"]

    def request(self, resource: str, force_mode: int = 1) -> int:
        return self.call("request", resource=resource, force_mode=force_mode)["owner"]

    def read_owners(self, resource: str) -> list[dict]:
        return self.call("read_owners", resource=resource)["owners"]

    def status(self) -> dict:
        return self.call("status")

    def host_status(self, lockspace: str) -> list[dict]:
        return self.call("host_status", lockspace=lockspace)["hosts"]

    def renewal(self, lockspace: str) -> list[dict]:
        return self.call("renewal", lockspace=lockspace)["renewals"]

    def metrics(self) -> str:
        return self.call("metrics")["text"]

    def shutdown(self) -> dict:
        return self.call("shutdown")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
