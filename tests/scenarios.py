"""Long scenarios (68 s dead-host waits) run in background threads, once per test session.

When a module sets up, it starts every selected scenario not yet claimed by
another xdist worker (a claim is a file created with O_EXCL in a directory all
workers share).  A scenario only acts and measures, then writes its result (or
its traceback) to a JSON file there; the tests that assert on it wait for that
file.  So long scenarios overlap each other and the rest of the suite, however
the tests are distributed, and none runs twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from oracle import wait_for


class BackgroundScenarios:
    def __init__(self, shared: Path, wanted: list[str], registry: dict[str, tuple[Callable[..., Any], Any]],
                 args: tuple[Any, ...], timeout: float = 280) -> None:
        self.shared = shared
        self.wanted = wanted
        self.registry = registry
        self.args = args
        self.timeout = timeout
        self.threads: list[threading.Thread] = []
        self.started = False

    def _claim(self, name: str) -> bool:
        try:
            os.close(os.open(self.shared / f"{name}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def _run(self, name: str) -> None:
        workdir = self.shared / name
        workdir.mkdir()
        try:
            with contextlib.ExitStack() as stack:
                result: dict[str, Any] = {"ok": self.registry[name][0](*self.args, workdir, stack)}
        except BaseException:
            result = {"error": traceback.format_exc()}
        tmp = self.shared / f"{name}.json.tmp"
        tmp.write_text(json.dumps(result, default=str))
        tmp.rename(self.shared / f"{name}.json")

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        for name in self.wanted:
            if self._claim(name):
                t = threading.Thread(target=self._run, args=(name,), name=f"scenario-{name}", daemon=True)
                t.start()
                self.threads.append(t)

    def result(self, name: str) -> dict[str, Any]:
        self.start()
        path = self.shared / f"{name}.json"
        wait_for(path.exists, self.timeout, f"the {name} scenario to finish", 0.5)
        got = json.loads(path.read_text())
        if "error" in got:
            pytest.fail(f"the {name} scenario failed:\n{got['error']}\nlogs in {self.shared / name}", pytrace=False)
        return got["ok"]

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=self.timeout)
