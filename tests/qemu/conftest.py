"""Fixtures for the QEMU front end's tests: real QEMU, real diskpaxos daemons as hosts."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))  # daemon_hosts

from vm_hosts import VMHost  # noqa: E402


@pytest.fixture
def lease_dir(tmp_path: Path) -> Path:
    """The disk_lease_dir that all hosts of a test share (as on NFS)."""
    path = tmp_path / "sanlock"
    path.mkdir()
    return path


@pytest.fixture
def vm_host(tmp_path: Path, lease_dir: Path, qemu_bin: str) -> Iterator[Callable[..., VMHost]]:
    """Factory: ``vm_host(name, host_id, daemon_config=None, **qemu_conf)``: one more host; its VMs and daemon are stopped
    by pid after the test, VMs first."""
    with contextlib.ExitStack() as stack:
        def start(name: str, host_id: int, daemon_config: dict[str, object] | None = None,
                  **settings: object) -> VMHost:
            host = VMHost(tmp_path, name, host_id, lease_dir, daemon_config, **settings)
            stack.callback(host.stop)
            return host

        yield start


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A tiny raw disk image."""
    path = tmp_path / "extra.img"
    with open(path, "wb") as f:
        f.truncate(4 * 1024 * 1024)
    os.chmod(path, 0o600)
    return path
