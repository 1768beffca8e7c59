"""The real QEMU opens exactly the files find_disks reports, read-only and shared where we say.

Each case from tests/unit/qemu_cmdlines.py runs ``qemu-system-x86_64 -S`` on tiny
images and asks QMP for its block graph (``x-debug-query-block-graph`` and
``query-named-block-nodes``). QEMU's view of a file: a protocol node (file,
host_device, host_cdrom) reached from a block backend, or from a node nothing
else uses, along any edge but ``backing``; read-only if every such path passes a
read-only node; shared if every device using it shares the write permission
(``share-rw``). That view must equal ours, which proves we read the command line
as QEMU does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))  # qemu_cmdlines

from qemu_cmdlines import REAL_CASES, Case  # noqa: E402

from diskpaxos.qemu.args import find_disks  # noqa: E402
from diskpaxos.qemu.qmp import QMP, QMPError  # noqa: E402

PROTOCOL_DRIVERS = ("file", "host_device", "host_cdrom")
DEADLINE = 10.0


@pytest.fixture
def short_dir() -> Iterator[str]:
    """A directory short enough for a Unix socket path (108 bytes); removed after the test."""
    path = tempfile.mkdtemp(prefix="dpq-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_images(d: str, case: Case, qemu_img: str) -> None:
    for name, kind in case.images:
        path = os.path.join(d, name)
        if kind == "raw":
            with open(path, "wb") as f:
                f.truncate(1024 * 1024)
            continue
        backing = kind.partition(":")[2]
        cmd = [qemu_img, "create", "-q", "-f", "qcow2"]
        if backing:
            cmd += ["-b", os.path.join(d, backing), "-F", "qcow2"]
        subprocess.run([*cmd, path, "1M"], check=True, capture_output=True, timeout=30)


def qemu_block_graph(qemu: str, argv: list[str], machine: str, d: str) -> tuple[list, dict, list, set[str]]:
    """Start QEMU paused; return (graph nodes, named nodes by name, graph edges, names of the block
    backends a device uses). QEMU has exited (or been killed) when this returns."""
    sock = os.path.join(d, "qmp.sock")
    cmd = [qemu, "-machine", machine, "-accel", "tcg", "-nodefaults", "-display", "none", "-S",
           "-qmp", f"unix:{sock},server=on,wait=off", *argv]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + DEADLINE
        while not os.path.exists(sock):
            if proc.poll() is not None:
                pytest.fail(f"QEMU refused the command line: {proc.stderr.read().decode().strip()}", pytrace=False)
            assert time.monotonic() < deadline, "QEMU did not open its QMP socket"
            time.sleep(0.02)
        with QMP(sock, timeout=DEADLINE, connect_wait=DEADLINE) as qmp:  # the file exists before QEMU listens
            graph = qmp.execute("x-debug-query-block-graph")
            named = {n["node-name"]: n for n in qmp.execute("query-named-block-nodes")}
            devices = {b["device"] or b["qdev"] for b in qmp.execute("query-block") if b.get("qdev")}
            with contextlib.suppress(QMPError):  # QEMU may close the socket before it answers
                qmp.execute("quit")
        proc.wait(timeout=DEADLINE)
        return graph["nodes"], named, graph["edges"], devices
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait(timeout=DEADLINE)
        proc.stderr.close()


def qemu_view(nodes: list, named: dict, edges: list, devices: set[str]) -> dict[str, tuple[bool, bool]]:
    """{file: (readonly, shared)} as QEMU opened them; see the module docstring."""
    by_id = {n["id"]: n for n in nodes}
    children: dict[int, list[dict]] = {}
    for e in edges:
        children.setdefault(e["parent"], []).append(e)
    has_parent = {e["child"] for e in edges}
    roots = [n for n in nodes if n["type"] == "block-backend" or n["id"] not in has_parent]
    hits: dict[str, list[tuple[bool, bool | None]]] = {}

    def walk(node_id: int, read_only: bool, shared: bool | None) -> None:
        node = by_id[node_id]
        if node["type"] == "block-driver":
            info = named[node["name"]]
            read_only = read_only or info["ro"]
            if info["drv"] in PROTOCOL_DRIVERS:
                hits.setdefault(info["file"], []).append((read_only, shared))
        for e in children.get(node_id, []):
            if e["name"] == "backing":
                continue
            if node["type"] == "block-backend" and node["name"] in devices:
                shared = "write" in e["shared-perm"]  # a device's backend: share-rw decides this
            walk(e["child"], read_only, shared)

    for root in roots:
        walk(root["id"], False, None)
    view = {}
    for path, found in hits.items():
        device_uses = [sh for _, sh in found if sh is not None]
        read_only = all(ro for ro, _ in found)
        view[path] = (read_only, not read_only and bool(device_uses) and all(device_uses))
    return view


@pytest.mark.parametrize("name", sorted(REAL_CASES))
def test_qemu_opens_what_find_disks_reports(name: str, qemu_bin: str, qemu_img: str, short_dir: str) -> None:
    case = REAL_CASES[name]
    make_images(short_dir, case, qemu_img)
    argv, expected = case.expand(short_dir)
    ours = {d.path: (d.readonly, d.shared) for d in find_disks(argv)}
    assert ours == {path: (ro, sh) for path, ro, sh, _ in expected}
    assert qemu_view(*qemu_block_graph(qemu_bin, argv, case.machine, short_dir)) == ours
