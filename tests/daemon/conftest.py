"""Fixtures for tests with real diskpaxos daemons as hosts (see daemon_hosts.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_hosts import DiskpaxosDaemon


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    """Callbacks run after the test, last registered first (holders before their daemons)."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def dp_daemon(tmp_path: Path, cleanup: contextlib.ExitStack) -> Callable[..., DiskpaxosDaemon]:
    """Factory: ``dp_daemon(name, **config)`` starts one more diskpaxos host (own run dir and config
    file under tmp_path; ready once its socket answers).  All are stopped by pid after the test:
    their holders, then SIGTERM (SIGKILL after 10 s), then their watchdog helpers, whatever the
    test's outcome."""

    def start(name: str, **config: Any) -> DiskpaxosDaemon:
        daemon = DiskpaxosDaemon(tmp_path, name, **config)
        cleanup.callback(daemon.stop)
        return daemon

    return start
