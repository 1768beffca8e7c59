"""The watchdog helper: kills protected clients when the daemon can no longer vouch for them.

A separate small process (the role wdmd plays for sanlock).  The daemon hands
it a pidfd for every client that holds leases and, every second, a deadline:
the earliest local expiry of a lockspace those clients hold leases in.  If the
deadline passes without a new one, or the daemon's end of the socket closes
(the daemon died), every protected client is SIGKILLed through its pidfd: no
process may use a lease after it could have been taken elsewhere.

Messages on a SOCK_SEQPACKET socketpair: ``protect PID`` (with the pidfd as
SCM_RIGHTS), ``unprotect PID``, ``beat DEADLINE`` (CLOCK_MONOTONIC seconds,
``inf`` when nothing is protected).
"""

from __future__ import annotations

import array
import logging
import math
import os
import select
import signal
import socket
import sys
import time

log = logging.getLogger("diskpaxos.watchdog")


def send_protect(sock: socket.socket, pid: int, pidfd: int) -> None:
    sock.sendmsg([f"protect {pid}".encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]))])


def send_unprotect(sock: socket.socket, pid: int) -> None:
    sock.send(f"unprotect {pid}".encode())


def send_beat(sock: socket.socket, deadline: float) -> None:
    sock.send(f"beat {deadline!r}".encode())


def kill_all(protected: dict[int, int], why: str) -> None:
    for pid, pidfd in list(protected.items()):
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            log.error("killed client pid %d: %s", pid, why)
        except ProcessLookupError:
            pass
        os.close(pidfd)
        del protected[pid]


class Device:
    """An optional /dev/watchdog: petted while the daemon beats in time, so that if
    this helper itself dies or the daemon goes silent the hardware resets the host."""

    def __init__(self, path: str | None) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC) if path else None

    def pet(self) -> None:
        if self.fd is not None:
            os.write(self.fd, b"\0")

    def disarm(self) -> None:
        """Clean exit with nothing protected: the magic close stops the timer."""
        if self.fd is not None:
            os.write(self.fd, b"V")
            os.close(self.fd)
            self.fd = None


def serve(sock: socket.socket, device: Device | None = None) -> None:
    device = device or Device(None)
    protected: dict[int, int] = {}
    deadline = math.inf
    while True:
        wait = None if math.isinf(deadline) else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            kill_all(protected, "the daemon missed its deadline (lease expiry)")
            deadline = math.inf
            continue
        fds = array.array("i")
        msg, ancdata, _, _ = sock.recvmsg(256, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if not msg:
            if protected:
                kill_all(protected, "the daemon died")
                return  # the device (if any) is left armed: it fires unless a new daemon takes over
            device.disarm()
            return
        words = msg.decode(errors="replace").split()
        if words[:1] == ["protect"] and len(words) == 2 and fds:
            old = protected.pop(int(words[1]), None)
            if old is not None:
                os.close(old)
            protected[int(words[1])] = fds[0]
        elif words[:1] == ["unprotect"] and len(words) == 2:
            pidfd = protected.pop(int(words[1]), None)
            if pidfd is not None:
                os.close(pidfd)
        elif words[:1] == ["beat"] and len(words) == 2:
            deadline = float(words[1])
            device.pet()
        for extra in fds[1:]:
            os.close(extra)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="diskpaxos-watchdog: %(message)s", stream=sys.stderr)
    fd = int(sys.argv[1])
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the daemon's death or silence stops us
    serve(sock, Device(sys.argv[2] if len(sys.argv) > 2 else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
