"""Fixtures for the storage-timing tests: scratch targets and the helpers the CLI tests use."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cli"))

MiB = 1024 * 1024


@pytest.fixture
def scratch_file(tmp_path: Path) -> Path:
    """A 32 MiB sparse file: room for the 8 MiB (512 B) or 16 MiB (4K) area at offset 0 or 1M."""
    path = tmp_path / "scratch.img"
    with open(path, "wb") as f:
        f.truncate(32 * MiB)
    return path


@pytest.fixture
def targets(scratch_file: Path, loop_device: Callable[..., str]) -> Callable[[str], str]:
    """Factory: ``targets("file" | "loop512" | "loop4k")`` -> a path of that kind, 32 MiB."""
    def make(kind: str) -> str:
        if kind == "file":
            return str(scratch_file)
        return loop_device(4096 if kind == "loop4k" else 512, 32 * MiB)
    return make


@pytest.fixture
def world_file(world_dir: Path) -> Path:
    """A 32 MiB file in a directory every user may enter, for running the CLI as nobody."""
    path = world_dir / "scratch.img"
    with open(path, "wb") as f:
        f.truncate(32 * MiB)
    return path
