"""Pictures of stability regions ``{z : |R(z)| ≤ 1}`` (matplotlib, an optional dependency)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ._tableau import ButcherTableau

__all__ = ["plot_stability_region", "default_window", "legend_labels"]


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("plotting needs matplotlib: pip install 'odernn[plot]'") from None
    return plt


def _axis_reach(tab: ButcherTableau, direction: complex, limit: float = 60.0) -> float:
    """How far from 0 along ``direction`` ``|R| ≤ 1`` holds, on a grid of 1/200 up to ``limit``
    (0 past it: unbounded). The picture's own float precision: the exact intervals of a tableau
    with large algebraic coefficients can take minutes, and a window needs no exact end."""
    t = np.linspace(0.0, limit, int(200 * limit) + 1)[1:]
    outside = np.flatnonzero(tab.amplification(direction * t) > 1 + 1e-12)
    return 0.0 if not outside.size else float(t[outside[0] - 1]) if outside[0] else 0.0


def _region_box(tab: ButcherTableau, reach: float):
    """The bounding box ``(x0, x1, y0, y1)`` of ``|R| ≤ 1`` on a grid over ``[−reach, reach]²``, or
    ``None`` where the region reaches the grid's edge (unbounded, as for A-stable tableaux)."""
    g = np.linspace(-reach, reach, 401)
    inside = tab.amplification(g[None, :] + 1j * g[:, None]) <= 1 + 1e-12
    if not inside.any() or inside[[0, -1], :].any() or inside[:, [0, -1]].any():
        return None
    ys, xs = np.nonzero(inside)
    return g[xs].min(), g[xs].max(), g[ys].min(), g[ys].max()


def default_window(tableaux: Sequence[ButcherTableau], points=None) -> tuple[tuple, tuple]:
    """A window that holds every bounded region whole (Dormand–Prince's lobes right of the
    imaginary axis too) and every point."""
    reach = 3.0
    for tab in tableaux:
        for direction in (-1, 1j):  # the negative real and the imaginary axis
            reach = max(reach, 1.2 * _axis_reach(tab, direction))
    reach = min(reach, 60.0)
    left, right, top = -reach, 0.35 * reach, 0.9 * reach
    boxes = [box for box in (_region_box(tab, 1.6 * reach) for tab in tableaux) if box is not None]
    if boxes:
        left = min(left, 1.1 * min(b[0] for b in boxes))
        right = max(right, 1.1 * max(b[1] for b in boxes) + 0.05 * reach)
        top = max(top, 1.1 * max(max(abs(b[2]), abs(b[3])) for b in boxes))
    if points is not None and len(points):
        p = np.asarray(points, dtype=complex)
        left = min(left, 1.1 * float(p.real.min()))
        right = max(right, 1.1 * float(p.real.max()))
        top = max(top, 1.1 * float(np.abs(p.imag).max()))
    return (left, right), (-top, top)


def legend_labels(tableaux: Sequence[ButcherTableau], sources: Sequence[str] | None = None) -> list[str]:
    """One label per tableau, all distinct: its name (else its source, else ``tableau k``);
    where names repeat, each followed by its source (where it came from: ``catalogue``, a file's
    path); where those repeat too, by its position.

    >>> euler = ButcherTableau([[0]], [1], name="euler")
    >>> legend_labels([euler, euler], ["catalogue", "mine.toml"])
    ['euler (catalogue)', 'euler (mine.toml)']
    >>> legend_labels([euler, euler])
    ['euler [1]', 'euler [2]']
    """
    sources = list(sources) if sources is not None else [None] * len(tableaux)
    names = [tab.name or source or f"tableau {k + 1}" for k, (tab, source) in enumerate(zip(tableaux, sources))]
    labels = [f"{name} ({source})" if names.count(name) > 1 and source and source != name else name
              for name, source in zip(names, sources)]
    return [f"{label} [{k + 1}]" if labels.count(label) > 1 else label for k, label in enumerate(labels)]


def plot_stability_region(tableaux: ButcherTableau | Iterable[ButcherTableau], points=None, *,
                          xlim=None, ylim=None, resolution: int = 600, ax=None, point_label="points",
                          sources: Sequence[str] | None = None):
    """Draw the stability region of one or several tableaux, optionally with points overlaid
    (e.g. the step-scaled eigenvalues ``Δλ`` of a cell's Jacobian). Returns the figure. The legend
    names each tableau by :func:`legend_labels` (``sources``: where each came from, to tell apart
    tableaux of the same name).

    Regions are filled and outlined by the contour ``|R(z)| = 1``; points inside the regions show
    as dots, points outside as crosses (outside *every* drawn region). Many points are drawn small
    and translucent, so that their density shows.
    """
    plt = _pyplot()
    tableaux = [tableaux] if isinstance(tableaux, ButcherTableau) else list(tableaux)
    if not tableaux:
        raise ValueError("nothing to plot: give at least one tableau")
    if xlim is None or ylim is None:
        auto_x, auto_y = default_window(tableaux, points)
        xlim, ylim = xlim or auto_x, ylim or auto_y
    x = np.linspace(*xlim, resolution)
    y = np.linspace(*ylim, resolution)
    Z = x[None, :] + 1j * y[:, None]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=120)
    else:
        fig = ax.figure
    labels = legend_labels(tableaux, sources)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    inside_any = np.zeros(0, dtype=bool)
    for k, tab in enumerate(tableaux):
        color = colors[k % len(colors)]
        amp = tab.amplification(Z)
        amp = np.where(np.isfinite(amp), amp, 1e6)
        ax.contourf(x, y, amp, levels=[0, 1], colors=[color], alpha=0.18)
        ax.contour(x, y, amp, levels=[1], colors=[color], linewidths=1.4)
        handles.append(plt.Line2D([], [], color=color, lw=2, label=labels[k]))
    if points is not None and len(points):
        p = np.asarray(points, dtype=complex).ravel()
        inside_any = np.zeros(p.shape, dtype=bool)
        for tab in tableaux:
            inside_any |= tab.amplification(p) <= 1 + 1e-12
        many = len(p) > 200
        ax.scatter(p[inside_any].real, p[inside_any].imag, s=5 if many else 14, c="k", marker="o",
                   alpha=0.25 if many else 0.9, linewidths=0, zorder=3)
        ax.scatter(p[~inside_any].real, p[~inside_any].imag, s=14 if many else 30, c="crimson", marker="x",
                   alpha=0.5 if many else 1.0, zorder=3)
        where = (f"the region of {tableaux[0].name or 'the tableau'}" if len(tableaux) == 1
                 else "at least one drawn region")
        handles.append(plt.Line2D([], [], color="k", marker="o", ls="",
                                  label=f"{point_label} inside {where} ({int(inside_any.sum())})"))
        if (~inside_any).any():
            handles.append(plt.Line2D([], [], color="crimson", marker="x", ls="",
                                      label=f"{point_label} outside {'it' if len(tableaux) == 1 else 'every region'} "
                                            f"({int((~inside_any).sum())})"))
    ax.axhline(0, color="0.5", lw=0.6)
    ax.axvline(0, color="0.5", lw=0.6)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_aspect("equal")
    ax.set_xlabel("Re z")
    ax.set_ylabel("Im z")
    ax.set_title("Stability region |R(z)| ≤ 1")
    # below the axes: inside them a legend hides parts of the regions (Dormand–Prince's lobes)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, framealpha=0.9,
              ncol=2 if len(handles) > 3 else 1)
    fig.tight_layout()
    return fig
