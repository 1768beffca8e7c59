"""Helpers for the storage-timing tests (a module of its own: ``conftest`` is not importable by name)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def read_only(device: str) -> Iterator[None]:
    """The device read-only (blockdev --setro) for the block; read-write again after it.

    The flag outlives a detach: the next loop attached on that minor would be
    read-only too, so it must be cleared before the fixture detaches.
    """
    subprocess.run(["blockdev", "--setro", device], check=True, capture_output=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["blockdev", "--setrw", device], check=True, capture_output=True, timeout=30)
