"""``--plot PATH.png``: throughput per layer pass (GFLOP/s) and per network mode (images/s),
one bar per framework/backend. Matplotlib's object API with the Agg canvas: no display and no
change to pyplot's global backend."""
from __future__ import annotations

from pathlib import Path

from ..outputs import write_atomic

__all__ = ["plot_result"]


def _bars(ax, groups, series, ylabel, title):
    """groups: x labels; series: {name: [value or None per group]}."""
    n = max(len(series), 1)
    width = 0.8 / n
    for k, (name, vals) in enumerate(series.items()):
        xs = [i + (k - (n - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [v or 0 for v in vals], width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if any(v for vals in series.values() for v in vals):
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def _series(entries, key_fields, value):
    groups, series = [], {}
    for e in entries:
        g = " ".join(str(e[k]) for k in key_fields)
        if g not in groups:
            groups.append(g)
    for e in entries:
        s = series.setdefault(e["backend"] or e["framework"], [None] * len(groups))
        s[groups.index(" ".join(str(e[k]) for k in key_fields))] = value(e)
    return groups, series


def plot_result(res, path):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError(f"--plot needs matplotlib ({exc})") from exc
    panels = []
    if res["layers"]:
        panels.append(("layers", _series(res["layers"], ("layer", "pass"), lambda e: e["gflops"]),
                       "GFLOP/s (median)", "Layer passes"))
    if res["nets"]:
        panels.append(("nets", _series(res["nets"], ("net", "batch", "mode"),
                                       lambda e: e["images_per_s"]),
                       "images/s (median)", "Networks"))
    fig = Figure(figsize=(max(6.0, 0.35 * sum(len(p[1][0]) for p in panels) + 3), 5.5))
    FigureCanvasAgg(fig)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no results", ha="center")
    for i, (_, (groups, series), ylabel, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        _bars(ax, groups, series, ylabel, title)
    env = res["environment"]
    fig.suptitle(f"gpucnn bench — {env.get('backend', {}).get('describe', '?')}, "
                 f"{env['cpu_model']}", fontsize=9)
    fig.tight_layout()
    fmt = Path(path).suffix[1:].lower()  # one of those gpucnn.outputs allows for plots
    return write_atomic(path, lambda f: fig.savefig(f, format=fmt or "png", dpi=110))
