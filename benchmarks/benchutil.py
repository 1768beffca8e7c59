"""Helpers shared by the side-by-side benchmark scripts."""

from __future__ import annotations

import subprocess
from pathlib import Path


def attach_loop(backing: Path, sector: int) -> str:
    """A loop device over ``backing`` with the given logical sector size and direct I/O."""
    return subprocess.run(["losetup", "-f", "--show", "--direct-io=on", f"--sector-size={sector}", str(backing)],
                          check=True, capture_output=True, text=True).stdout.strip()
