"""Which io_timeout a storage can carry, from measured latencies and spec section 7.

Every lease I/O has a deadline of io_timeout (renewal reads, paxos I/O), and an
acquire must be done within ``paxos_acquire_free_max`` (6 x io_timeout); a
renewal that misses its read deadline fails, and renewals failing for
``id_renewal_fail`` (8 x io_timeout) lose the lease.  So each measured
operation has a budget that is a function of io_timeout, taken from
``diskpaxos.timeouts`` (no formula is repeated here):

======================  ==========================  =================================
operation               budget                      why
======================  ==========================  =================================
sector write            io_timeout                  one I/O, one deadline
lease-area read         io_timeout                  the renewal read's deadline
renewal (read + write)  io_timeout                  its read's deadline, conservatively
                                                    counting the write too
acquire (uncontended)   paxos_acquire_free_max      the spec's bound for a free lease
release                 io_timeout                  three I/Os, each with that deadline
======================  ==========================  =================================

The rule: the recommended io_timeout is the smallest whole number of seconds
T (1..255) such that, for every operation, ``MARGIN_P999 x p99.9`` and
``MARGIN_MAX x max`` both fit in its budget at T.  p99.9 stands for the tail a
host meets every few hours of renewals; the max is one observation, so it gets
the smaller margin.  The renewal interval, warning, failure and dead-host times
that follow are ``Timeouts(T)``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..timeouts import DEFAULT_IO_TIMEOUT, Timeouts

MARGIN_P999 = 4.0
MARGIN_MAX = 2.0
MAX_IO_TIMEOUT = 255  # stored as a byte on disk

RULE = (f"smallest whole io_timeout T such that, for every operation, {MARGIN_P999:g} x p99.9 and "
        f"{MARGIN_MAX:g} x max fit in its budget at T (spec section 7: io_timeout per I/O and per renewal "
        "and release, paxos_acquire_free_max = 6 x io_timeout per acquire)")


@dataclass(frozen=True)
class Budget:
    name: str
    seconds: Callable[[Timeouts], float]


IO = Budget("io_timeout", lambda t: t.io_timeout)
ACQUIRE = Budget("paxos_acquire_free_max", lambda t: t.paxos_acquire_free_max)

# operation name (as in ``bench storage``'s JSON) -> its budget
BUDGETS: dict[str, Budget] = {
    "write_sector": IO, "read_1m": IO, "read_8m": IO, "renewal": IO, "acquire": ACQUIRE, "release": IO,
}


def need_seconds(summary: Mapping[str, Any]) -> float:
    """The tail, with margins, that a budget must hold (seconds)."""
    return max(MARGIN_P999 * summary["p999"], MARGIN_MAX * summary["max"]) / 1000


def _fits(t: Timeouts, needs: Mapping[str, float]) -> bool:
    return all(need <= BUDGETS[op].seconds(t) for op, need in needs.items())


def recommend(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The recommendation for measured ``summaries`` (op -> stats.summary in ms), as JSON-ready data.

    Operations without samples, or not in ``BUDGETS``, are not checked.
    """
    needs = {op: need_seconds(s) for op, s in summaries.items()
             if op in BUDGETS and s.get("n") and not math.isnan(s["max"])}
    chosen = next((T for T in range(1, MAX_IO_TIMEOUT + 1) if _fits(Timeouts(T), needs)), None)
    t = Timeouts(chosen) if chosen is not None else None
    default = Timeouts(DEFAULT_IO_TIMEOUT)
    checks = []
    for op, need in needs.items():
        budget = BUDGETS[op]
        at = budget.seconds(t) if t is not None else math.nan
        checks.append({"operation": op, "budget": budget.name, "need_s": need, "budget_s": at,
                       "headroom": at / need if need else math.inf,
                       "budget_at_default_s": budget.seconds(default),
                       "headroom_at_default": budget.seconds(default) / need if need else math.inf})
    binding = max(checks, key=lambda c: c["need_s"] / BUDGETS[c["operation"]].seconds(Timeouts(1)),
                  default=None)
    out: dict[str, Any] = {
        "io_timeout": chosen, "rule": RULE, "margin_p999": MARGIN_P999, "margin_max": MARGIN_MAX,
        "binding_operation": binding["operation"] if binding else None, "checks": checks,
    }
    if t is not None:
        out.update({"renewal_interval_s": t.id_renewal, "renewal_warn_s": t.id_renewal_warn,
                    "renewal_fail_s": t.id_renewal_fail, "host_dead_s": t.host_dead,
                    "acquire_free_max_s": t.paxos_acquire_free_max})
    return out
