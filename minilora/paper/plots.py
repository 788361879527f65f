"""Plot helpers shared by the claims: figures without pyplot (no GUI backend), grouped bars, error-bar lines, heatmaps."""
import os

import numpy as np

from .lab import mean_spread


def new_figure(rows=1, cols=1, width=6.0, height=None):
    """(Figure, [axes, row by row]) laid out so that titles, labels and colour bars do not overlap."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height or 3.6 * rows), layout="constrained")
    return fig, list(fig.subplots(rows, cols, squeeze=False).flat)


def save(fig, path):
    """Write the figure as a PNG atomically: a crash never leaves half a file under ``path``."""
    tmp = f"{path}.tmp"
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, path)


def bars(ax, groups, values, series, colors=None, log=False, stat=mean_spread):
    """Grouped bars: values[g][s] lists the per-seed (or per-repeat) numbers of series s in group g.

    stat(numbers) -> (height, whisker): mean and standard deviation by default,
    lab.median_iqr for timings. A dot marks each number.
    """
    n = len(series)
    width = 0.8 / n
    for s, name in enumerate(series):
        xs = np.arange(len(groups)) + (s - (n - 1) / 2) * width
        stats = [stat(values[g][s]) for g in range(len(groups))]
        ax.bar(xs, [m for m, _ in stats], width, yerr=[e for _, e in stats], capsize=3, label=name,
               color=None if colors is None else colors[s], log=log)
        for x, group in zip(xs, values):
            ax.scatter([x] * len(group[s]), group[s], s=9, color="black", zorder=3)
    ax.set_xticks(range(len(groups)), groups)
    if log:
        plain_log_ticks(ax)
    if n > 1:
        ax.legend(fontsize=8)


def plain_log_ticks(ax):
    """Label a log-scale y axis 2, 3, 20, 100 rather than 2×10⁰: timings span less than a few decades."""
    from matplotlib.ticker import LogFormatter

    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))


def error_line(ax, x, values, label, **style):
    """A line through the per-x means of ``values`` (one list of seeds per x), whiskers one standard deviation."""
    stats = [mean_spread(v) for v in values]
    ax.errorbar(x, [m for m, _ in stats], yerr=[e for _, e in stats], capsize=3, marker="o", label=label, **style)


def heatmap(ax, grid, title):
    """φ[i-1, j-1] as an image with i down and j across, both from 1, on a fixed 0..1 colour scale.

    Returns the image: give it one colour bar, ``fig.colorbar(image, ax=axes)``, since every map shares the scale.
    """
    grid = np.asarray(grid)
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest",
                      extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("j", fontsize=8)
    ax.set_ylabel("i", fontsize=8)
    ax.tick_params(labelsize=7)
    return image
