"""The independent checker: proof from the hosts' logs alone.

An exclusive holding interval opens at a host's ``USE`` line and closes at
its ``DROP`` line.  A host killed while holding (the orchestrator logs every
``KILL``) counts as holding until its lease could have expired: the kill time
plus id_renewal_fail.  Violations: two intervals that overlap; a lease version
that does not strictly increase from one holder to the next; a host that read
back someone else's record from its guarded block (``VIOLATION`` lines).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field


@dataclass
class Interval:
    host: int
    pid: int
    lver: int
    start: float
    end: float
    killed: bool = False


@dataclass
class Report:
    intervals: list[Interval] = field(default_factory=list)
    overlaps: list[tuple[Interval, Interval]] = field(default_factory=list)
    lver_errors: list[str] = field(default_factory=list)
    physical: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def violations(self) -> int:
        return len(self.overlaps) + len(self.lver_errors) + len(self.physical)


def _parse(line: str) -> tuple[float, str, dict[str, str]] | None:
    parts = line.split()
    if len(parts) < 2:
        return None
    try:
        t = float(parts[0])
    except ValueError:
        return None
    fields = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
    return t, parts[1], fields


def check(directory: str, id_renewal_fail: float, end_of_run: float) -> Report:
    report = Report()
    kills: dict[int, float] = {}  # pid -> time killed
    orchestrator = os.path.join(directory, "orchestrator.log")
    if os.path.exists(orchestrator):
        for line in open(orchestrator):
            parsed = _parse(line)
            if parsed and parsed[1] == "KILL":
                kills[int(parsed[2]["pid"])] = parsed[0]
    for path in sorted(glob.glob(os.path.join(directory, "host-*.log"))):
        open_use: dict[int, tuple[float, int, int]] = {}  # pid -> (start, lver, host)
        for line in open(path):
            parsed = _parse(line)
            if parsed is None:
                continue  # a line torn by a kill mid-write
            t, event, f = parsed
            report.counts[event] = report.counts.get(event, 0) + 1
            pid = int(f.get("pid", 0))
            if event == "USE":
                open_use[pid] = (t, int(f["lver"]), int(f["host"]))
            elif event == "DROP" and pid in open_use:
                start, lver, host = open_use.pop(pid)
                report.intervals.append(Interval(host, pid, lver, start, t))
            elif event == "VIOLATION":
                report.physical.append(f"{path}: {line.strip()}")
        for pid, (start, lver, host) in open_use.items():
            killed_at = kills.get(pid)
            end = killed_at + id_renewal_fail if killed_at is not None else end_of_run
            report.intervals.append(Interval(host, pid, lver, start, end, killed=killed_at is not None))
    ivs = sorted(report.intervals, key=lambda i: i.start)
    for i, a in enumerate(ivs):
        for b in ivs[i + 1:]:
            if b.start >= a.end:
                break
            report.overlaps.append((a, b))
    for a, b in zip(ivs, ivs[1:]):
        if b.lver <= a.lver:
            report.lver_errors.append(f"lver {b.lver} (host {b.host}) at {b.start:.3f} after lver {a.lver} "
                                      f"(host {a.host}) at {a.start:.3f}")
    return report
