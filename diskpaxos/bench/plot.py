"""Plots of latency distributions (matplotlib, the optional ``bench`` extra).

Imported lazily: the benchmarks run without matplotlib; only ``--plot``
needs it, and says how to get it before anything is measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .. import errors
from . import stats


class MissingExtra(errors.DiskpaxosError):
    template = "{reason}: pip install 'diskpaxos[bench]' (or make bench)"


def require() -> None:
    """Raise MissingExtra unless matplotlib can be imported (called before measuring)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtra(reason="--plot needs matplotlib") from None


def _pyplot() -> Any:
    require()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def storage(path: str, samples: Mapping[str, Sequence[float]], title: str,
            budgets_ms: Mapping[str, float] | None = None) -> None:
    """One log-scale histogram per operation, median / p99 / p99.9 marked, and the budget if given."""
    plt = _pyplot()
    ops = [op for op, xs in samples.items() if xs]
    cols = 3
    rows = max(1, math.ceil(len(ops) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, op in zip(axes.flat, ops):
        xs = [max(x, 1e-3) for x in samples[op]]
        lo, hi = min(xs), max(xs)
        edges = [lo * (hi / lo) ** (i / 40) for i in range(41)] if hi > lo else [lo * 0.9, hi * 1.1]
        ax.hist(xs, bins=edges, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        s = stats.summary(xs)
        for key, color in (("median", "tab:green"), ("p99", "tab:orange"), ("p999", "tab:red")):
            ax.axvline(s[key], color=color, linestyle="--", linewidth=1,
                       label=f"{'p99.9' if key == 'p999' else key} {s[key]:.3g} ms")
        if budgets_ms and op in budgets_ms:
            ax.axvline(budgets_ms[op], color="black", linewidth=1.5, label=f"budget {budgets_ms[op]:.4g} ms")
        _plain_log_ticks(ax.xaxis)
        ax.set_title(f"{op} (n={s['n']})", fontsize=10)
        ax.set_xlabel("ms")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(ops):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plain_log_ticks(axis: Any) -> None:
    """Tick labels like 0.5, 2, 10 on a log axis, not 5 x 10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


KIND_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")  # not the sides' colours
SIDES = (("floor", "tab:gray"), ("diskpaxos", "tab:blue"), ("sanlock", "tab:orange"))


def compare(path: str, panels: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], title: str,
            ratios: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Box plots, one panel per operation: for each storage kind, floor beside diskpaxos beside sanlock.

    ``panels``: operation -> storage kind -> side ("floor", "diskpaxos", "sanlock") -> samples (ms).
    ``ratios``: storage kind -> metric -> diskpaxos / sanlock, drawn as bars in a last panel.
    """
    plt = _pyplot()
    names = [op for op, kinds in panels.items() if any(any(v) for v in kinds.values())]
    cols = 2
    rows = max(1, math.ceil((len(names) + (1 if ratios else 0)) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.8 * rows), squeeze=False)
    for ax, op in zip(axes.flat, names):
        kinds = panels[op]
        data, positions, colors, ticks, labels = [], [], [], [], []
        for k, (kind, sides) in enumerate(kinds.items()):
            base = k * (len(SIDES) + 1)
            for i, (side, color) in enumerate(SIDES):
                xs = [max(x, 1e-3) for x in sides.get(side, [])]
                if xs:
                    data.append(xs)
                    positions.append(base + i)
                    colors.append(color)
            ticks.append(base + 1)
            labels.append(kind)
        if data:
            box = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True, showfliers=True,
                             whis=(1, 99), flierprops={"markersize": 2}, medianprops={"color": "black"})
            for patch, color in zip(box["boxes"], colors):
                patch.set_facecolor(color)
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels)
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_ylabel("ms")
        ax.set_title(op, fontsize=10)
    used = len(names)
    if ratios:
        _ratio_bars(list(axes.flat)[used], ratios)
        used += 1
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for _, c in SIDES]
    fig.legend(handles, [s for s, _ in SIDES], loc="upper right", ncol=3, fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio_bars(ax: Any, ratios: Mapping[str, Mapping[str, float]]) -> None:
    """Horizontal bars of diskpaxos / sanlock per metric, one colour per storage kind; 1 marked."""
    kinds = list(ratios)
    metrics = list(dict.fromkeys(m for r in ratios.values() for m in r))
    height = 0.8 / max(1, len(kinds))
    for k, kind in enumerate(kinds):
        ys = [i + k * height for i in range(len(metrics))]
        ax.barh(ys, [ratios[kind].get(m, math.nan) for m in metrics], height=height, label=kind,
                color=KIND_COLORS[k % len(KIND_COLORS)])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(metrics))])
    ax.set_yticklabels(metrics, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("diskpaxos / sanlock (median; < 1: diskpaxos faster)")
    ax.set_title("every metric, diskpaxos beside sanlock", fontsize=10)
    ax.legend(fontsize=7)
