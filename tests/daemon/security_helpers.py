"""Helpers for the daemon's security tests: a real daemon process, raw socket
clients, and client processes that run as another user.

The daemon is started as ``diskpaxos daemon --run-dir D --config F`` and stopped
by pid (SIGTERM, then SIGKILL), its watchdog helper child too.  ``Agent`` is a
client process that drops root (setresuid) after importing everything it needs
(the interpreter may live where "nobody" cannot read, e.g. under /root/.pyenv)
and then speaks the daemon's line protocol on commands sent to its stdin.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from oracle import DISKPAXOS

NOBODY = 65534


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


class DaemonProc:
    """One ``diskpaxos daemon`` process with its own run dir and TOML config."""

    def __init__(self, run_dir: Path, config: dict[str, Any], timeout: float = 15) -> None:
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        run_dir.chmod(0o755)
        self.socket_path = str(run_dir / "diskpaxos.sock")
        self.config_path = run_dir.parent / f"{run_dir.name}.toml"
        self.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        self.log_path = run_dir.parent / f"{run_dir.name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([DISKPAXOS, "daemon", "--run-dir", str(run_dir), "--config",
                                      str(self.config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"diskpaxos daemon did not start: {self.log()}")
            time.sleep(0.02)
        self.helpers = self.children()  # the watchdog helper

    def children(self) -> list[int]:
        try:
            return [int(x) for x in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]
        except OSError:
            return []

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError as e:
            return f"(no log: {e})"

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def call(self, op: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        """One request as root on a fresh connection; returns the reply (ok or not)."""
        with RawConn(self.socket_path, timeout) as c:
            return c.request({"v": 1, "id": op, "op": op, **args})

    def stop(self) -> None:
        helpers = self.children() or getattr(self, "helpers", [])
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in helpers:
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()


class RawConn:
    """A raw connection to the daemon's socket: bytes out, reply lines in."""

    def __init__(self, path: str, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    @classmethod
    def wrap(cls, sock: socket.socket) -> RawConn:
        """A RawConn over an already connected socket."""
        conn = cls.__new__(cls)
        conn.sock, conn.buf = sock, b""
        return conn

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        """One reply line; b"" when the daemon closed the connection first."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def reply(self) -> dict[str, Any]:
        line = self.readline()
        assert line.endswith(b"\n"), f"no complete reply line (got {line!r})"
        return json.loads(line)

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(req).encode() + b"\n")
        return self.reply()

    def closed_by_peer(self) -> bool:
        """True when the daemon has closed its end (EOF), after any pending data."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The agent: imports first, then becomes uid/gid/groups; with "saved-root" it
# keeps 0 as its saved uid so that "drop_groups" can later leave its
# supplementary groups (the connection it made keeps the peer credentials of
# connect time).  Commands and answers are JSON lines on stdin/stdout.
AGENT_SOURCE = r"""
import json, os, select, socket, sys, traceback
uid, gid = int(sys.argv[1]), int(sys.argv[2])
groups = [int(g) for g in sys.argv[3].split(",") if g]
saved_root = sys.argv[4] == "saved-root"
os.setgroups(groups)
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, 0 if saved_root else uid)
sock = None
buf = b""

def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def read_reply(timeout):
    global buf
    while b"\n" not in buf:
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            return {"timeout": True}
        chunk = sock.recv(65536)
        if not chunk:
            return {"eof": True, "partial": buf.decode(errors="replace")}
        buf += chunk
    line, buf = buf.split(b"\n", 1)
    return {"reply": json.loads(line)}

answer({"ready": True, "pid": os.getpid(), "euid": os.geteuid(), "egid": os.getegid(), "groups": os.getgroups()})
for text in sys.stdin:
    cmd = json.loads(text)
    try:
        if cmd["cmd"] == "connect":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(cmd["path"])
                answer({"errno": 0})
            except OSError as e:
                sock.close()
                sock = None
                answer({"errno": e.errno})
        elif cmd["cmd"] == "call":
            sock.sendall(json.dumps(cmd["req"]).encode() + b"\n")
            answer(read_reply(cmd.get("timeout", 30)))
        elif cmd["cmd"] == "drop_groups":
            os.seteuid(0)
            os.setgroups([])
            os.setresuid(uid, uid, uid)
            answer({"groups": os.getgroups(), "euid": os.geteuid()})
        elif cmd["cmd"] == "exit":
            answer({"bye": True})
            break
    except Exception as e:
        answer({"exception": "".join(traceback.format_exception_only(type(e), e)).strip()})
"""


class Agent:
    """A client process running as ``uid``/``gid``/``groups``, driven from the test."""

    def __init__(self, uid: int, gid: int, groups: list[int], saved_root: bool = False,
                 cwd: str | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", AGENT_SOURCE, str(uid), str(gid),
                                      ",".join(map(str, groups)), "saved-root" if saved_root else "plain"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=cwd or "/")
        hello = self._read(30)
        assert hello.get("ready"), hello
        self.pid: int = hello["pid"]
        self.identity = hello

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"agent pid {self.proc.pid} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"agent exited: {self.proc.stderr.read()}")
        return json.loads(line)

    def command(self, timeout: float = 40, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        out = self._read(timeout)
        assert "exception" not in out, out["exception"]
        return out

    def connect(self, path: str) -> int:
        """0, or the errno of connect(2)."""
        return self.command(cmd="connect", path=path)["errno"]

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """The daemon's reply to one request (raises if there was none)."""
        out = self.command(cmd="call", req={"v": 1, "id": op, "op": op, **args})
        assert "reply" in out, f"no reply to {op}: {out}"
        return out["reply"]

    def drop_groups(self) -> None:
        out = self.command(cmd="drop_groups")
        assert out["groups"] == [] and out["euid"] != 0, out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
