"""Spectral stability of a generated cell against its tableau's stability region.

Linearise the field at sampled states, ``dy/dτ ≈ J y``: one Runge–Kutta step of size ``h`` then
multiplies perturbations (and, transposed, gradients) by ``R(hJ)``, whose eigenvalues are
``R(hλ)`` for the eigenvalues ``λ`` of ``J``. The step is absolutely stable when every
``|R(hλ)| ≤ 1`` (Dahlquist's test equation; Hairer & Wanner, *Solving ODEs II*, §IV.2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["Condition", "StabilityReport", "check", "max_stable_dt"]

_TOLERANCE = 1e-9  # |R| ≤ 1 + this counts as on the boundary, not outside


@dataclass(frozen=True)
class Condition:
    """One named condition of the report, with its verdict, the value it was judged on and the
    source of the criterion."""

    name: str
    verdict: bool
    value: float
    source: str
    detail: str = ""


@dataclass
class StabilityReport:
    """``stable``: every condition holds; ``margin``: ``1 − max |R(hλ)|`` over the sampled
    eigenvalues (``> 0`` strictly inside the region, ``< 0`` outside); ``eigenvalues``: ``hλ``,
    the step-scaled eigenvalues that were judged."""

    stable: bool
    margin: float
    conditions: list[Condition]
    eigenvalues: np.ndarray
    step: float
    tableau: str
    samples: int
    max_stable_dt: float | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["eigenvalues"] = [[float(z.real), float(z.imag)] for z in self.eigenvalues]
        data["conditions"] = [asdict(c) for c in self.conditions]
        return json.dumps(data, indent=1, default=float)

    def __str__(self) -> str:
        lines = [f"{'STABLE' if self.stable else 'UNSTABLE'}: margin {self.margin:+.4g} "
                 f"({self.tableau}, step h = {self.step:g}, {self.samples} sampled states, "
                 f"{len(self.eigenvalues)} eigenvalues)"]
        for c in self.conditions:
            lines.append(f"  [{'ok' if c.verdict else 'FAIL'}] {c.name}: {c.value:.6g}  ({c.detail}) — {c.source}")
        if self.max_stable_dt is not None:
            lines.append(f"  largest stable dt for these weights: {self.max_stable_dt:.6g}")
        return "\n".join(lines)


def _sample_states(cell, inputs, samples: int, generator: torch.Generator):
    """The zero state and states along a trajectory driven by ``inputs`` ``(T, B, I)`` (random
    normal inputs when none are given); returns ``(x, state)`` batches for the Jacobian."""
    dtype = next(cell.parameters()).dtype
    if inputs is None:
        inputs = torch.randn(samples, 1, cell.input_size, generator=generator, dtype=dtype)
    inputs = torch.as_tensor(inputs, dtype=dtype)
    if inputs.dim() == 2:
        inputs = inputs[:, None, :]
    xs, states = [], []
    state = cell.field.initial_state(inputs.shape[1], dtype, inputs.device)
    with torch.no_grad():
        xs.append(torch.zeros_like(inputs[0]))
        states.append(state)
        for x in inputs[: max(samples - 1, 0)]:
            state = cell(x, state)
            xs.append(x)
            states.append(state)
    x = torch.cat(xs)
    blocks = [torch.cat([cell.field.to_blocks(s)[k] for s in states]) for k in range(cell.field.blocks)]
    return x, cell.field.from_blocks(tuple(blocks))


def _eigenvalues(cell, x, state) -> np.ndarray:
    """Eigenvalues of ``∂f/∂y`` at every sampled state (unscaled), as one complex array."""
    with torch.no_grad():
        J = cell.jacobian(x, state).detach()
    return torch.linalg.eigvals(J.to(torch.float64)).numpy().ravel()


def _ray_limits(tableau, lams: np.ndarray, grid_points: int = 1600) -> np.ndarray:
    """For each ``λ``, the largest ``s`` with ``|R(s'λ)| ≤ 1`` for every ``0 ≤ s' ≤ s`` (``inf``
    where the whole ray stays inside): a geometric scan, then bisection, for all rays at once."""
    lams = np.asarray(lams, dtype=complex)
    out = np.full(lams.shape, np.inf)
    nonzero = np.abs(lams) > 0
    lam = lams[nonzero]
    if lam.size == 0:
        return out
    # |hλ| from 1e-4 to 1e4 in steps of 1.2 %: regions of explicit methods end well inside it
    grid = np.geomspace(1e-4, 1e4, grid_points)[None, :] / np.abs(lam)[:, None]  # (N, G)
    inside = tableau.amplification(grid * lam[:, None]) <= 1 + _TOLERANCE
    leaves = ~inside.all(axis=1)
    first_out = np.argmin(inside, axis=1)
    rows = np.nonzero(leaves)[0]
    limits = np.full(lam.shape, np.inf)
    starts_outside = leaves & (first_out == 0)
    limits[starts_outside] = 0.0
    rows = rows[first_out[rows] > 0]
    lo, hi = grid[rows, first_out[rows] - 1], grid[rows, first_out[rows]]
    for _ in range(60):  # bisection to machine precision, vectorised over the rays
        mid = 0.5 * (lo + hi)
        ok = tableau.amplification(mid * lam[rows]) <= 1 + _TOLERANCE
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    limits[rows] = lo
    out[nonzero] = limits
    return out


def _largest_dt(cell, lams: np.ndarray) -> float:
    # R has real coefficients, so λ and its conjugate have the same ray: keep one of each pair
    distinct = np.unique(np.round(lams.real, 12) + 1j * np.round(np.abs(lams.imag), 12))
    limits = _ray_limits(cell.tableau, distinct)
    return float(limits.min()) * cell.steps if limits.size else math.inf


def max_stable_dt(cell, inputs=None, samples: int = 16, seed: int = 0) -> float:
    """The largest interval Δ (with the cell's sub-steps) for which every sampled eigenvalue of
    the field's Jacobian, scaled by ``Δ/steps``, lies in the tableau's stability region (the ray
    from 0 through it stays inside up to there)."""
    generator = torch.Generator().manual_seed(seed)
    x, state = _sample_states(cell, inputs, samples, generator)
    return _largest_dt(cell, _eigenvalues(cell, x, state))


def check(cell, inputs=None, dt: float | None = None, samples: int = 16, seed: int = 0) -> StabilityReport:
    """Judge the step of ``cell`` (optionally at another interval ``dt``) from the eigenvalues of
    its field's Jacobian at ``samples`` states: the zero state and states along a trajectory
    driven by ``inputs`` (``(T, B, input_size)``; random normal inputs when ``None``)."""
    dt = cell.dt if dt is None else float(dt)
    step = dt / cell.steps
    generator = torch.Generator().manual_seed(seed)
    x, state = _sample_states(cell, inputs, samples, generator)
    lams = _eigenvalues(cell, x, state)
    scaled = step * lams
    amplification = cell.tableau.amplification(scaled)
    worst = float(np.max(amplification)) if len(amplification) else 0.0
    margin = 1.0 - worst
    conditions = [Condition(
        "absolute stability of the step", worst <= 1 + _TOLERANCE, worst,
        "Dahlquist test equation; Hairer & Wanner, Solving ODEs II, §IV.2",
        f"max |R(hλ)| over {len(lams)} eigenvalues at {x.shape[0]} states")]
    # decaying modes only, and not the numerically-zero ones of saturated units (they would make
    # any ratio "stiff"): |Re λ| ≥ 1e-6 · max|Re λ|
    decay = -lams.real[lams.real < 0]
    real = decay[decay >= 1e-6 * decay.max()] if decay.size else decay
    if len(real):
        ratio = float(real.max() / real.min())
        stiff = ratio > 1e3
        advice = ("stiff: an implicit (L-stable) tableau, a smaller dt or adaptive steps" if stiff
                  else "not stiff: an explicit tableau is appropriate")
        conditions.append(Condition("stiffness ratio max|Re λ| / min|Re λ|", True, ratio,
                                    "Lambert, Numerical Methods for ODE Systems (1991), §6.2", advice))
    limit = _largest_dt(cell, lams)
    return StabilityReport(stable=all(c.verdict for c in conditions), margin=margin, conditions=conditions,
                           eigenvalues=scaled, step=step, tableau=cell.tableau.name or "user tableau",
                           samples=x.shape[0], max_stable_dt=limit)
