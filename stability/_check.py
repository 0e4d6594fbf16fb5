"""Spectral stability of a generated cell against its tableau's stability region.

Linearise the field at sampled states, ``dy/dτ ≈ J y``: one Runge–Kutta step of size ``h`` then
multiplies perturbations (and, transposed, gradients) by ``R(hJ)``, whose eigenvalues are
``R(hλ)`` for the eigenvalues ``λ`` of ``J``. The step is absolutely stable when every
``|R(hλ)| ≤ 1`` (Dahlquist's test equation; Hairer & Wanner, *Solving ODEs II*, §IV.2).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

__all__ = ["Condition", "StabilityReport", "check", "max_stable_dt"]

_TOLERANCE = 1e-9  # |R| ≤ 1 + this counts as on the boundary, not outside
HORIZON = 100  # sequence length T of the gradient-growth condition


@dataclass(frozen=True)
class Condition:
    """One named condition of the report: its verdict, the value it was judged on and the source
    of the criterion. ``binding`` conditions decide the report's verdict; the others are
    diagnostics with advice."""

    name: str
    verdict: bool
    value: float
    source: str
    detail: str = ""
    binding: bool = True


@dataclass
class StabilityReport:
    """``stable``: every binding condition holds; ``margin``: ``1 − max |R(hλ)|`` over the sampled
    eigenvalues (``> 0`` strictly inside the region, ``< 0`` outside); ``eigenvalues``: ``hλ``,
    the step-scaled eigenvalues that were judged; ``exact``: the Jacobian was the same at every
    sampled state (a field linear in the state), so the verdict holds at every state."""

    stable: bool
    margin: float
    conditions: list[Condition]
    eigenvalues: np.ndarray
    step: float
    tableau: str
    samples: int
    max_stable_dt: float | None = None
    exact: bool = False
    weight_eigenvalues: dict[str, np.ndarray] = field(default_factory=dict)

    def condition(self, name: str) -> Condition:
        """The condition whose name starts with ``name``."""
        for c in self.conditions:
            if c.name.startswith(name):
                return c
        raise KeyError(f"no condition {name!r}; conditions: {[c.name for c in self.conditions]}")

    def to_json(self) -> str:
        def pairs(values):
            return [[float(z.real), float(z.imag)] for z in values]
        data = asdict(self)
        data["eigenvalues"] = pairs(self.eigenvalues)
        data["weight_eigenvalues"] = {k: pairs(v) for k, v in self.weight_eigenvalues.items()}
        data["conditions"] = [asdict(c) for c in self.conditions]
        return json.dumps(data, indent=1, default=float)

    def __str__(self) -> str:
        lines = [f"{'STABLE' if self.stable else 'UNSTABLE'}: margin {self.margin:+.4g} "
                 f"({self.tableau}, step h = {self.step:g}, {self.samples} sampled states, "
                 f"{len(self.eigenvalues)} eigenvalues{', exact: linear field' if self.exact else ''})"]
        for c in self.conditions:
            mark = ("ok" if c.verdict else "FAIL") if c.binding else ("ok" if c.verdict else "note")
            lines.append(f"  [{mark}] {c.name}: {c.value:.6g}  ({c.detail}) — {c.source}")
        if self.weight_eigenvalues:
            radii = ", ".join(f"{k} {np.abs(v).max():.3g}" for k, v in self.weight_eigenvalues.items())
            lines.append(f"  spectral radii of the recurrent matrices: {radii}")
        return "\n".join(lines)


def _sample_states(cell, inputs, samples: int, generator: torch.Generator):
    """The zero state and states along a trajectory driven by ``inputs`` ``(T, B, I)`` (random
    normal inputs when none are given); returns ``(x, state)`` batches for the Jacobian."""
    reference = next(cell.parameters())
    dtype, device = reference.dtype, reference.device
    if inputs is None:
        inputs = torch.randn(samples, 1, cell.input_size, generator=generator, dtype=dtype)
    inputs = torch.as_tensor(inputs).to(device, dtype)
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


def _spectrum(cell, x, state) -> tuple[np.ndarray, np.ndarray]:
    """``∂f/∂y`` at every sampled state ``(N, D, D)`` and its eigenvalues ``(N·D,)``, float64."""
    with torch.no_grad():
        J = cell.jacobian(x, state).detach().to("cpu", torch.float64)
        return J.numpy(), torch.linalg.eigvals(J).numpy().ravel()


def _ray_limits(tableau, lams: np.ndarray, grid_points: int = 400) -> np.ndarray:
    """For each ``λ``, the largest ``s`` with ``|R(s'λ)| ≤ 1`` for every ``0 ≤ s' ≤ s`` (``inf``
    where the whole ray stays inside): a geometric scan, then bisection, for all rays at once."""
    lams = np.asarray(lams, dtype=complex)
    out = np.full(lams.shape, np.inf)
    nonzero = np.abs(lams) > 0
    lam = lams[nonzero]
    if lam.size == 0:
        return out
    # |hλ| from 1e-4 to 1e4 in steps of 4.7 %: regions of explicit methods end well inside it, and
    # their boundaries are smooth curves that a ray crosses, not grazes
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
    return _largest_dt(cell, _spectrum(cell, x, state)[1])


def _gradient_growth(cell, J: np.ndarray, step: float, horizon: int):
    """The linearised token map ``M_k = R(hJ_k)^steps`` at each sampled state: the norm of their
    product along the trajectory, extrapolated to ``horizon`` tokens, and the bounds
    ``Π σ_min(M_k)`` and ``Π ‖M_k‖`` at the same per-token rate."""
    M = np.linalg.matrix_power(cell.tableau.stability_matrix(step * J), cell.steps)
    with np.errstate(divide="ignore", over="ignore"):
        singular = np.linalg.svd(M, compute_uv=False)
        upper = float(np.exp(horizon * np.mean(np.log(singular[:, 0]))))
        lower = float(np.exp(horizon * np.mean(np.log(singular[:, -1]))))
        if len(M) < 2:
            return upper, lower, upper
        product = M[1]
        for m in M[2:]:  # M[0] is the zero state, not on the trajectory
            product = m @ product
        rate = np.log(np.linalg.norm(product, 2)) / (len(M) - 1)
        return float(np.exp(horizon * rate)), lower, upper


def check(cell, inputs=None, dt: float | None = None, samples: int = 16, seed: int = 0,
          horizon: int = HORIZON) -> StabilityReport:
    """Judge the step of ``cell`` (optionally at another interval ``dt``) from the eigenvalues of
    its field's Jacobian at ``samples`` states: the zero state and states along a trajectory
    driven by ``inputs`` (``(T, B, input_size)``; random normal inputs when ``None``).
    ``horizon`` is the sequence length the gradient-growth condition extrapolates to."""
    dt = cell.dt if dt is None else float(dt)
    step = dt / cell.steps
    tableau = cell.tableau
    generator = torch.Generator().manual_seed(seed)
    x, state = _sample_states(cell, inputs, samples, generator)
    J, lams = _spectrum(cell, x, state)
    scaled = step * lams
    amplification = tableau.amplification(scaled)
    worst = float(np.max(amplification)) if len(amplification) else 0.0
    exact = bool(np.allclose(J, J[0], rtol=0, atol=1e-12 * max(1.0, np.abs(J).max())))
    where = "exact: the Jacobian is the same at every state" if exact else f"sampled at {x.shape[0]} states"
    conditions = [Condition(
        "absolute stability of the step", worst <= 1 + _TOLERANCE, worst,
        "Dahlquist test equation; Hairer & Wanner, Solving ODEs II (1996), §IV.2",
        f"max |R(hλ)| over {len(lams)} eigenvalues, {where}")]

    rightmost = float(lams.real.max())
    conditions.append(Condition(
        "stability of the ODE itself: max Re λ ≤ 0", rightmost <= 1e-12, rightmost,
        "Haber & Ruthotto, Stable architectures for deep neural networks (2017), §3",
        "the exact flow does not amplify perturbations" if rightmost <= 1e-12 else
        "the exact flow amplifies some perturbations: only a tableau that over-damps them keeps the cell bounded",
        binding=False))

    reach = float(step * np.abs(lams.imag).max())
    if reach > 0:
        beta = float(tableau.imaginary_stability_interval().sup)
        if beta == 0:
            advice = ("the tableau covers no segment of the imaginary axis (forward Euler, the midpoint "
                      "rule, …): oscillatory modes stay stable only with damping, e.g. the −γI diffusion "
                      "of AntisymmetricRNN with h(γ² + ω²) ≤ 2γ for forward Euler")
        else:
            advice = f"the tableau covers the imaginary interval |Im z| ≤ {beta:.6g}"
        conditions.append(Condition(
            "imaginary-axis coverage: h·max|Im λ| within the tableau's imaginary interval", reach <= beta, reach,
            "Chang et al., AntisymmetricRNN (ICLR 2019), §3; Haber & Ruthotto (2017)", advice, binding=False))

    limit = _largest_dt(cell, lams)
    conditions.append(Condition(
        "largest stable Δ for these weights", dt <= limit * (1 + 1e-9), limit,
        "the ray from 0 through each hλ against the region |R| ≤ 1",
        f"Δ = {dt:g} with {cell.steps} step(s) per token" + (
            "; smaller Δ or more steps per token bring every hλ inside" if dt > limit else ""),
        binding=False))

    growth, lower, upper = _gradient_growth(cell, J, step, horizon)
    if growth > 1e3:
        advice = "gradients explode: clip them, shorten BPTT, or constrain the weights"
    elif growth < 1e-3:
        advice = "gradients vanish over T: memory shorter than T"
    else:
        advice = "neither explodes nor vanishes over T"
    partitioned = "; partitioned stepping is linearised as the plain method" if cell.partitioned else ""
    conditions.append(Condition(
        f"gradient growth over T = {horizon} tokens: ‖Π R(hJ_k)‖", 1e-3 <= growth <= 1e3, growth,
        "Pascanu, Mikolov & Bengio, On the difficulty of training RNNs (ICML 2013), §2",
        f"{advice}; bounds Π σ_min … Π ‖·‖ = {lower:.3g} … {upper:.3g}{partitioned}", binding=False))

    # decaying modes only, and not the numerically-zero ones of saturated units (they would make
    # any ratio "stiff"): |Re λ| ≥ 1e-6 · max|Re λ|
    decay = -lams.real[lams.real < 0]
    real = decay[decay >= 1e-6 * decay.max()] if decay.size else decay
    if len(real):
        ratio = float(real.max() / real.min())
        stiff = ratio > 1e3
        advice = ("stiff: an implicit (L-stable) tableau, a smaller dt or adaptive steps" if stiff
                  else "not stiff: an explicit tableau is appropriate")
        conditions.append(Condition("stiffness ratio max|Re λ| / min|Re λ|", not stiff, ratio,
                                    "Lambert, Numerical Methods for ODE Systems (1991), §6.2", advice,
                                    binding=False))

    with torch.no_grad():
        weights = {name: torch.linalg.eigvals(W.detach().to("cpu", torch.float64)).numpy()
                   for name, W in cell.field.recurrent_matrices().items()}
    return StabilityReport(stable=all(c.verdict for c in conditions if c.binding), margin=1.0 - worst,
                           conditions=conditions, eigenvalues=scaled, step=step,
                           tableau=tableau.name or "user tableau", samples=x.shape[0], max_stable_dt=limit,
                           exact=exact, weight_eigenvalues=weights)
