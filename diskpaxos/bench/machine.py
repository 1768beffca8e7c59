"""What a benchmark ran on: CPU, kernel, memory, the storage under a path.

Figures mean little without the machine, so every report carries this.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

from .. import __version__


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 0.0


def _sanlock_version() -> str | None:
    exe = shutil.which("sanlock")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def storage_of(path: str) -> dict[str, Any]:
    """The filesystem (or block device) a path lives on, from /proc/self/mounts."""
    real = os.path.realpath(path)
    try:
        if stat.S_ISBLK(os.stat(real).st_mode):
            name = os.path.basename(real)
            backing = Path(f"/sys/block/{name}/loop/backing_file")
            info: dict[str, Any] = {"kind": "block device", "device": real}
            if backing.exists():
                info["loop_backing_file"] = backing.read_text().strip()
                dio = Path(f"/sys/block/{name}/loop/dio")
                info["loop_direct_io"] = dio.read_text().strip() == "1" if dio.exists() else None
            return info
    except OSError:
        pass
    best: tuple[str, str, str] = ("/", "?", "?")
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            dev, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, fstype, dev)
    except OSError:
        pass
    return {"kind": "file", "mount": best[0], "filesystem": best[1], "device": best[2]}


def describe(path: str | None = None) -> dict[str, Any]:
    """The machine, as JSON-ready data."""
    out: dict[str, Any] = {
        "node": platform.node(), "cpu": _cpu_model(), "cpus": os.cpu_count(), "memory_gib": _memory_gib(),
        "kernel": platform.release(), "python": platform.python_version(), "diskpaxos": __version__,
        "sanlock": _sanlock_version(), "loadavg": [float(x) for x in os.getloadavg()],
    }
    if path is not None:
        out["storage"] = storage_of(path)
    return out
