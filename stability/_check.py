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

from odernn import URNNField

__all__ = ["Condition", "StabilityReport", "check", "max_stable_dt", "unit_disc_limit"]

_TOLERANCE = 1e-9  # |R| ≤ 1 + this counts as on the boundary, not outside
FAITHFUL = 1e-3  # a step amplifying a mode by at most this much (relative) more than the exact flow is faithful
VERDICTS = {"stable": 0, "expanding dynamics": 3, "unstable step": 1}  # the verdict and its exit code
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
    """``stable``: every binding condition holds (the sufficient condition: every ``hλ`` in the
    region); ``margin``: ``1 − max |R(hλ)|`` over the sampled eigenvalues (``> 0`` strictly inside
    the region, ``< 0`` outside); ``eigenvalues``: ``hλ``, the step-scaled eigenvalues that were
    judged; ``exact``: the Jacobian was the same at every sampled state (a field linear in the
    state), so the verdict holds at every state.

    ``verdict`` separates the two reasons a step can leave the region: ``"stable"`` (it does not);
    ``"expanding dynamics"`` (only modes the learned field itself expands, ``Re λ > 0``, leave it,
    and the tableau amplifies none more than the exact flow ``|e^{hλ}|``: the integrator is
    faithful, and the state stays bounded only where the nonlinearity saturates); ``"unstable
    step"`` (the tableau amplifies some mode beyond both 1 and the exact flow: a discretisation
    fault that a smaller step or another tableau removes). ``exit_code``: 0, 3 and 1 for them;
    ``expanding_directions``: eigenvalues with ``Re λ > 0`` at the worst sampled state;
    ``excess``: ``max |R(hλ)| / max(1, |e^{hλ}|)``, the discretisation's own amplification."""

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
    step_norms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # ‖R(hJ_k)^steps‖₂ at each sampled state
    verdict: str = "stable"
    expanding_directions: int = 0
    excess: float = 1.0
    rightmost: float = 0.0  # max Re λ (unscaled)

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]

    def headline(self) -> str:
        """The verdict in words, with what to do about it."""
        where = (f"{self.tableau}, step h = {self.step:g}, {self.samples} sampled states, "
                 f"{len(self.eigenvalues)} eigenvalues{', exact: linear field' if self.exact else ''}")
        expanding = (f"the learned field expands along {self.expanding_directions} direction(s) "
                     f"(max Re λ = {self.rightmost:.3g})")
        if self.verdict == "stable":
            damped = f"; {expanding}, which the step damps" if self.expanding_directions else ""
            return f"STABLE: every step-scaled eigenvalue lies in the region, margin {self.margin:+.4g}{damped} ({where})"
        if self.verdict == "expanding dynamics":
            than = ("amplifies every mode less than the exact flow does" if self.excess <= 1 else
                    f"amplifies no mode more than the exact flow does (within {100 * (self.excess - 1):.2g} %)")
            return (f"FAITHFUL STEP, EXPANDING DYNAMICS: {expanding}; the tableau {than}: the state stays bounded "
                    f"only where the nonlinearity saturates, which a smaller step would not change ({where})")
        also = f"; besides, {expanding}" if self.expanding_directions else ""
        return (f"UNSTABLE STEP: the tableau amplifies a mode {self.excess:.4g}× beyond both 1 and the exact flow "
                f"(margin {self.margin:+.4g}): a smaller Δ, more steps per token or a tableau whose region holds "
                f"every hλ{also} ({where})")

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
        data["step_norms"] = [float(v) for v in self.step_norms]
        data["conditions"] = [asdict(c) for c in self.conditions]
        return json.dumps(data, indent=1, default=float)

    def __str__(self) -> str:
        lines = [self.headline()]
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


_UNIT_CIRCLE = -1.0 + np.exp(1j * np.linspace(0.0, 2 * np.pi, 2881)[1:-1])  # |λ + 1| = 1 without λ = 0


def unit_disc_limit(tableau) -> float:
    """The largest step ``h`` for which ``h · {|λ + 1| ≤ 1}`` lies in the tableau's stability region
    (``inf`` for A-stable tableaux). The disc holds the Jacobian's spectrum of an orthogonal cell,
    ``J = D W − I`` with ``W`` orthogonal and ``0 ≤ D ≤ I``, at every state, whatever ``W`` training
    reaches. Scaling a point of the disc's interior towards 0 lengthens its ray, so the boundary
    circle decides: forward Euler 1, every two-stage second-order method 1 (``|R| = |cos θ|``
    on it), RK4 half its real interval."""
    return float(_ray_limits(tableau, _UNIT_CIRCLE).min())


def _orthogonal_conditions(cell, step: float) -> list[Condition]:
    """What an orthogonal recurrent matrix means for this tableau: stability at every state for
    every orthogonal ``W``, and how far the step's linear map is from preserving norms."""
    tableau = cell.tableau
    limit = unit_disc_limit(tableau)
    worst = float(tableau.amplification(step * _UNIT_CIRCLE).max())
    with torch.no_grad():
        W = cell.field.weight_hh.detach().to("cpu", torch.float64)
        mu = torch.linalg.eigvals(W).numpy()
    gains = tableau.amplification(step * (mu - 1.0))
    return [
        Condition("orthogonal W: stable at every state for every orthogonal W", worst <= 1 + _TOLERANCE, worst,
                  "J = D W − I, D = diag(modReLU′) with entries 0 or 1, ‖D W‖ ≤ 1: every eigenvalue in |λ + 1| ≤ 1",
                  f"max |R| on h·{{|λ + 1| = 1}}; holds for every Δ ≤ {limit * cell.steps:.6g} with "
                  f"{cell.steps} step(s) per token", binding=False),
        Condition("orthogonal W: norm preservation of the linear step R(h(W − I))", bool(gains.min() > 1 - 1e-6),
                  float(gains.min()),
                  "Lezcano-Casado & Martínez-Rubio (2019): an orthogonal recurrence neither explodes nor vanishes",
                  f"singular values |R(h(μ − 1))| over W's eigenvalues μ: {gains.min():.4g} … {gains.max():.4g} where "
                  f"every unit passes modReLU; 1 preserves norms (forward Euler at h = 1 makes it W itself), below 1 the tableau damps "
                  "the orthogonal recurrence", binding=False)]


def _step_maps(cell, J: np.ndarray, step: float) -> np.ndarray:
    """One step's linear map at each sampled Jacobian ``J`` ``(N, D, D)``: ``R(hJ)``, or for
    partitioned stepping ``Π_g R(h P_g J)`` over the blocks in their order, ``P_g J`` keeping the
    rows of block ``g`` (a Runge–Kutta step of a linear system is ``R`` of its matrix, and a block
    stepped with the others held is the system whose other rows are zero)."""
    if not cell.partitioned:
        return cell.tableau.stability_matrix(step * J)
    D, t = J.shape[-1], cell.t
    size = D // t
    S = np.broadcast_to(np.eye(D), J.shape).copy()
    for g in range(t):
        Jg = np.zeros_like(J)
        Jg[:, g * size:(g + 1) * size] = J[:, g * size:(g + 1) * size]
        S = cell.tableau.stability_matrix(step * Jg) @ S
    return S


def _spectral_radii(cell, J: np.ndarray, step: float, S: np.ndarray | None = None) -> np.ndarray:
    """The spectral radius of each step map (``S``, when already formed, else from ``J``)."""
    S = _step_maps(cell, J, step) if S is None else S
    return np.abs(np.linalg.eigvals(S)).max(axis=-1)


def _largest_partitioned_dt(cell, J: np.ndarray, tolerance: float, radii: np.ndarray | None = None) -> float:
    """The largest Δ with the partitioned step map's spectral radius ≤ 1 (no ray criterion exists
    for a product of block maps): doubling or halving from the cell's Δ to a bracket, then 8
    bisections (0.4 %), on the three sampled states whose radius at the cell's Δ (``radii``) is
    largest — an eigenvalue problem of size D per state and trial, the cost of the check."""
    if radii is None:
        radii = _spectral_radii(cell, J, cell.dt / cell.steps)
    J = J[np.argsort(radii)[-3:]]

    def stable(dt):
        return bool(_spectral_radii(cell, J, dt / cell.steps).max() <= 1 + tolerance)
    lo, hi = 0.0, cell.dt
    if stable(hi):
        for _ in range(10):
            lo, hi = hi, 2 * hi
            if not stable(hi):
                break
        else:
            return math.inf
    else:
        for _ in range(20):
            if stable(hi / 2):
                lo, hi = hi / 2, hi
                break
            hi /= 2
        else:
            return 0.0
    for _ in range(8):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


def _tolerance(cell) -> float:
    # the Jacobian carries the round-off of the cell's dtype: a step on the boundary (expRNN:
    # forward Euler, h = 1, |R| = 1) is judged on it, not outside
    return max(_TOLERANCE, 64 * torch.finfo(next(cell.parameters()).dtype).eps)


def max_stable_dt(cell, inputs=None, samples: int = 16, seed: int = 0) -> float:
    """The largest interval Δ (with the cell's sub-steps) for which every sampled eigenvalue of
    the field's Jacobian, scaled by ``Δ/steps``, lies in the tableau's stability region (the ray
    from 0 through it stays inside up to there); for partitioned stepping, for which every
    sampled step map has spectral radius ≤ 1."""
    generator = torch.Generator().manual_seed(seed)
    x, state = _sample_states(cell, inputs, samples, generator)
    J, lams = _spectrum(cell, x, state)
    return _largest_partitioned_dt(cell, J, _tolerance(cell)) if cell.partitioned else _largest_dt(cell, lams)


def _gradient_growth(cell, S: np.ndarray, horizon: int):
    """The linearised token map ``M_k = S_k^steps`` (``S_k`` one step's map, :func:`_step_maps`)
    at each sampled state: the norm of their product along the trajectory, extrapolated to
    ``horizon`` tokens, the bounds ``Π σ_min(M_k)`` and ``Π ‖M_k‖`` at the same per-token rate,
    and the norms ``‖M_k‖``."""
    M = np.linalg.matrix_power(S, cell.steps)
    with np.errstate(divide="ignore", over="ignore"):
        singular = np.linalg.svd(M, compute_uv=False)
        upper = float(np.exp(horizon * np.mean(np.log(singular[:, 0]))))
        lower = float(np.exp(horizon * np.mean(np.log(singular[:, -1]))))
        if len(M) < 2:
            return upper, lower, upper, singular[:, 0]
        product = M[1]
        for m in M[2:]:  # M[0] is the zero state, not on the trajectory
            product = m @ product
        rate = np.log(np.linalg.norm(product, 2)) / (len(M) - 1)
        return float(np.exp(horizon * rate)), lower, upper, singular[:, 0]


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
    exact = bool(np.allclose(J, J[0], rtol=0, atol=1e-12 * max(1.0, np.abs(J).max())))
    where = "exact: the Jacobian is the same at every state" if exact else f"sampled at {x.shape[0]} states"
    tolerance = _tolerance(cell)
    S = _step_maps(cell, J, step)  # one step's linear map at each state, for the verdict and the growth
    radii = None
    if cell.partitioned:  # a product of block maps: its own spectral radius, not R on J's eigenvalues
        radii = _spectral_radii(cell, J, step, S)
        worst = float(radii.max())
        measured = (f"spectral radius of the partitioned step Π_g R(h P_g J) (blocks advanced one after "
                    f"another), {where}")
    else:
        amplification = tableau.amplification(scaled)
        worst = float(np.max(amplification)) if len(amplification) else 0.0
        measured = f"max |R(hλ)| over {len(lams)} eigenvalues, {where}"
    conditions = [Condition(
        "absolute stability of the step", worst <= 1 + tolerance, worst,
        "Dahlquist test equation; Hairer & Wanner, Solving ODEs II (1996), §IV.2", measured)]

    rightmost = float(lams.real.max())
    per_state = lams.reshape(x.shape[0], -1)  # (N, D)
    expanding = int((per_state.real > tolerance * max(1.0, float(np.abs(lams).max()))).sum(axis=1).max())
    if cell.partitioned:  # the step map's radius against the flow's largest growth at each state
        excess = float(np.max(radii / np.maximum(1.0, np.exp(step * per_state.real.max(axis=1)))))
    else:
        excess = float(np.max(amplification / np.maximum(1.0, np.exp(scaled.real)))) if len(lams) else 1.0
    if worst <= 1 + tolerance:
        verdict = "stable"
    elif excess <= 1 + FAITHFUL:
        verdict = "expanding dynamics"
    else:
        verdict = "unstable step"
    conditions.append(Condition(
        "faithful discretisation: |R(hλ)| ≤ max(1, |e^{hλ}|)", excess <= 1 + FAITHFUL, excess,
        "the exact flow multiplies a mode by |e^{hλ}| per step; the tableau should not add to it",
        "the step amplifies no mode beyond the region and the flow" if excess <= 1 + FAITHFUL else
        "the step amplifies a mode beyond both the region and the exact flow: a discretisation fault",
        binding=False))
    conditions.append(Condition(
        "stability of the ODE itself: max Re λ ≤ 0", expanding == 0, rightmost,
        "Haber & Ruthotto, Stable architectures for deep neural networks (2017), §3",
        "the exact flow does not amplify perturbations" if expanding == 0 else
        f"the exact flow amplifies perturbations along {expanding} direction(s) at the worst sampled state: only a "
        "tableau that over-damps them, or saturating activations, keep the cell bounded",
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

    limit = (_largest_partitioned_dt(cell, J, tolerance, radii if dt == cell.dt else None) if cell.partitioned
             else _largest_dt(cell, lams))
    conditions.append(Condition(
        "largest stable Δ for these weights", dt <= limit * (1 + 1e-9), limit,
        "the spectral radius of the partitioned step map, bisected in Δ" if cell.partitioned else
        "the ray from 0 through each hλ against the region |R| ≤ 1",
        f"Δ = {dt:g} with {cell.steps} step(s) per token" + (
            "; smaller Δ or more steps per token bring every hλ inside" if dt > limit else ""),
        binding=False))

    growth, lower, upper, step_norms = _gradient_growth(cell, S, horizon)
    if growth > 1e3:
        advice = "gradients explode: clip them, shorten BPTT, or constrain the weights"
    elif growth < 1e-3:
        advice = "gradients vanish over T: memory shorter than T"
    else:
        advice = "neither explodes nor vanishes over T"
    partitioned = "; the partitioned step's own map" if cell.partitioned else ""
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

    if isinstance(cell.field, URNNField):
        conditions.extend(_orthogonal_conditions(cell, step))

    with torch.no_grad():
        weights = {name: torch.linalg.eigvals(W.detach().to("cpu", torch.float64)).numpy()
                   for name, W in cell.field.recurrent_matrices().items()}
    return StabilityReport(stable=all(c.verdict for c in conditions if c.binding), margin=1.0 - worst,
                           conditions=conditions, eigenvalues=scaled, step=step,
                           tableau=tableau.name or "user tableau", samples=x.shape[0], max_stable_dt=limit,
                           exact=exact, weight_eigenvalues=weights, step_norms=step_norms, verdict=verdict,
                           expanding_directions=expanding, excess=excess, rightmost=rightmost)
