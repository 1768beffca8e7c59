"""``diskpaxos daemon``: the asyncio socket server in front of the manager.

One daemon per run dir (a lock file refuses a second), a Unix socket (0660,
configured group) speaking ``protocol``, peer credentials (SO_PEERCRED) to
decide who may act on which pid, pidfds watched on the event loop so a dead
client's leases are released at once, and the watchdog helper process.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from .. import errors
from . import protocol
from .config import Config
from .manager import DaemonError, Manager

log = logging.getLogger(__name__)

SOCKET_NAME = "diskpaxos.sock"
LOCK_NAME = "diskpaxos.pid"
BEAT_INTERVAL = 1.0  # seconds between watchdog heartbeats
MAX_WORKERS = 64  # blocking engine calls in flight (acquires may wait up to host_dead)


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


class Daemon:
    def __init__(self, config: Config, run_dir: str) -> None:
        self.config = config
        self.run_dir = run_dir
        self.socket_path = os.path.join(run_dir, SOCKET_NAME)
        self.manager: Manager | None = None
        self.watchdog_proc: subprocess.Popen[bytes] | None = None
        self._stopping: asyncio.Event | None = None
        self._lock_fd: int | None = None
        self._executor: Any = None

    # --- startup -------------------------------------------------------------------

    def take_lock(self) -> None:
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        path = os.path.join(self.run_dir, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DaemonError(f"{path}: another diskpaxos daemon (pid {other}) runs on this run dir",
                              code=-errno.EBUSY) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def start_watchdog(self) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "diskpaxos.daemon.watchdog", str(theirs.fileno())]
        if self.config.watchdog_device:
            argv.append(self.config.watchdog_device)
        self.watchdog_proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        return ours

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        from concurrent.futures import ThreadPoolExecutor
        self._executor = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="op")
        self._stopping = asyncio.Event()
        self.manager = Manager(self.config, self.start_watchdog())
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)  # ours: we hold the run dir's lock
        server = await asyncio.start_unix_server(self.connection, path=self.socket_path,
                                                 limit=protocol.MAX_LINE + 2)
        os.chmod(self.socket_path, 0o660)
        gid = self.config.socket_gid
        if gid is not None:
            os.chown(self.socket_path, -1, gid)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        beat = asyncio.create_task(self.heartbeat())
        notify_ready()
        log.info("diskpaxos daemon ready on %s", self.socket_path)
        async with server:
            await self._stopping.wait()
        beat.cancel()
        log.info("shutting down")
        await loop.run_in_executor(self._executor, self.manager.shutdown, True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.watchdog_proc is not None:
            assert self.manager.watchdog_sock is not None
            self.manager.watchdog_sock.close()  # nothing is protected any more: it exits quietly
            self.watchdog_proc.wait(10)
        os.unlink(self.socket_path)

    async def heartbeat(self) -> None:
        assert self.manager is not None and self.manager.watchdog_sock is not None
        while True:
            try:
                self.manager.beat()
            except OSError as e:
                log.error("watchdog helper unreachable: %s", e)
            await asyncio.sleep(BEAT_INTERVAL)

    # --- connections -----------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            writer.close()
            return
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as e:
                    if e.partial.strip():  # a line cut short by EOF: a half-closed peer can still read
                        writer.write(protocol.error(None, -errno.EINVAL, "request ends without a newline"))
                        await writer.drain()
                    return  # peer closed
                except asyncio.LimitOverrunError:
                    writer.write(protocol.error(None, -errno.E2BIG,
                                                f"request is longer than {protocol.MAX_LINE} bytes"))
                    await writer.drain()
                    return
                reply = await self.handle(line, pid, uid, gid)
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, OSError):
            return
        except asyncio.CancelledError:
            return  # the daemon is stopping (3.11's stream callback would log a cancelled handler as an error)
        finally:
            writer.close()

    def allowed(self, peer_pid: int, uid: int, gid: int, target: int) -> bool:
        """A client may act on itself; root and the socket group on any pid."""
        if target == peer_pid or uid == 0:
            return True
        group = self.config.socket_gid
        return group is not None and (gid == group or group in supplementary_groups(peer_pid))

    async def handle(self, line: bytes, peer_pid: int, uid: int, gid: int) -> bytes:
        req_id = None
        try:
            req = protocol.decode(line)
            req_id = req.get("id")
            return protocol.ok(req_id, **await self.dispatch(req, peer_pid, uid, gid))
        except protocol.ProtocolError as e:
            return protocol.error(req_id if e.req_id is None else e.req_id, e.code, str(e))
        except errors.DiskpaxosError as e:
            return protocol.error(req_id, e.code, str(e))
        except Exception as e:  # never let one request take the daemon down
            log.exception("request failed")
            return protocol.error(req_id, -errno.EIO, f"internal error: {type(e).__name__}: {e}")

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    async def dispatch(self, req: dict[str, Any], peer_pid: int, uid: int, gid: int) -> dict[str, Any]:
        m = self.manager
        assert m is not None
        op = req["op"]
        pid = req.get("pid", peer_pid)
        if "pid" in protocol.OPS[op] and not self.allowed(peer_pid, uid, gid, pid):
            raise DaemonError(f"uid {uid} may not act on pid {pid}", code=-errno.EPERM)
        privileged = op in ("add_lockspace", "rem_lockspace", "shutdown", "request")
        if privileged and not self.allowed(peer_pid, uid, gid, -1):
            raise DaemonError(f"uid {uid} may not {op}", code=-errno.EPERM)
        if op == "add_lockspace":
            return await self.call(m.add_lockspace, req["lockspace"], req.get("io_timeout"), req.get("host_name"))
        if op == "rem_lockspace":
            return await self.call(m.rem_lockspace, req["lockspace"])
        if op == "inq_lockspace":
            return m.inq_lockspace(req["lockspace"])
        if op == "register":
            client = m.register(pid, req.get("name"), req.get("info"))
            self.watch(client.pid, client.pidfd)
            return {"pid": client.pid}
        if op == "set_killpath":
            m.set_killpath(pid, req["argv"], (uid, gid))
            return {}
        if op == "acquire":
            if pid not in m.clients:
                client = m.register(pid)
                self.watch(client.pid, client.pidfd)
            return {"leases": await self.call(m.acquire, pid, req["resources"])}
        if op == "release":
            return {"released": await self.call(m.release, pid, req.get("resources"))}
        if op == "convert":
            return {"lease": await self.call(m.convert, pid, req["resource"], req["shared"])}
        if op == "inquire":
            return {"leases": m.inquire(pid)}
        if op == "request":
            return {"owner": await self.call(m.request, req["resource"], req.get("force_mode", 1))}
        if op == "read_owners":
            return {"owners": await self.call(m.read_owners, req["resource"])}
        if op == "status":
            return m.status()
        if op == "host_status":
            return {"hosts": m.host_status(req["lockspace"])}
        if op == "renewal":
            return {"renewals": m.renewal(req["lockspace"])}
        if op == "metrics":
            return {"text": m.metrics()}
        if op == "shutdown":
            await self.call(m.shutdown, False)  # refuses while clients hold leases
            assert self._stopping is not None
            self._stopping.set()
            return {}
        raise protocol.ProtocolError(f"unknown op {op!r}", -errno.EOPNOTSUPP)

    def watch(self, pid: int, pidfd: int) -> None:
        """Release the client's leases the moment its process exits (pidfd readable)."""
        loop = asyncio.get_running_loop()

        def exited() -> None:
            loop.remove_reader(pidfd)
            t0 = time.monotonic()

            def done(fut: Any) -> None:
                log.info("pid %d exit handled in %.1f ms", pid, (time.monotonic() - t0) * 1000)
            assert self.manager is not None
            loop.run_in_executor(self._executor, self.manager.client_exited, pid).add_done_callback(done)

        try:
            loop.add_reader(pidfd, exited)
        except (ValueError, OSError):
            pass  # already watched


def notify_ready() -> None:
    """Tell systemd (Type=notify) we serve, if it is listening."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    addr = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"READY=1", addr)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)


def run(config: Config, run_dir: str) -> int:
    daemon = Daemon(config, run_dir)
    daemon.take_lock()
    asyncio.run(daemon.serve())
    return 0
