"""The conditions of a stability report: one function each, reading a shared
:class:`~stability._linearise.Linearisation` and returning a :class:`Condition` (or ``None`` where
the condition does not apply). The ``"verdict"`` conditions decide the report's verdict
(:func:`stability._check.verdict_of`); the ``"info"`` ones are diagnostics with advice."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from odernn import URNNField

from ._linearise import FAITHFUL, NEUTRAL, Linearisation, ray_limits, singular_values

__all__ = ["CONDITIONS", "Condition", "unit_disc_limit"]


@dataclass(frozen=True)
class Condition:
    """One condition of the report. ``key``: a stable machine name (``"absolute_stability"``, …);
    ``name``: the condition in words; ``holds``: whether it holds; ``value``: what it was judged on;
    ``source``: where the criterion comes from; ``detail``: what the value means here; ``role``:
    ``"verdict"`` when it decides the report's verdict, ``"info"`` for a diagnostic."""

    key: str
    name: str
    holds: bool
    value: float
    source: str
    detail: str = ""
    role: str = "info"
    remedy: str = ""  # what would make it hold, where something would

    @property
    def verdict(self) -> bool:
        """``holds``, under its earlier name."""
        return self.holds

    @property
    def binding(self) -> bool:
        """``role == "verdict"``, under its earlier name."""
        return self.role == "verdict"


def absolute_stability(lin: Linearisation) -> Condition:
    if lin.cell.partitioned:
        measured = (f"spectral radius of the partitioned step Π_g R(h P_g J) (blocks advanced one after another), "
                    f"{lin.where}")
    else:
        measured = f"max |R(hλ)| over {lin.eigenvalues.size} eigenvalues, {lin.where}"
    return Condition("absolute_stability", "absolute stability of the step", lin.worst <= 1 + lin.tolerance,
                     lin.worst, "Dahlquist test equation; Hairer & Wanner, Solving ODEs II (1996), §IV.2",
                     measured, role="verdict")


def faithful(lin: Linearisation) -> Condition:
    """Every unit the step amplifies is one the exact flow amplifies as much (within 0.1 %)."""
    ratios = lin.against_flow[lin.outside]
    value = float(ratios.max()) if ratios.size else 0.0
    holds = value <= 1 + FAITHFUL
    if not ratios.size:
        detail = "no mode leaves the region"
    elif holds:
        detail = f"no mode outside the region is amplified more than {100 * FAITHFUL:g} % beyond the exact flow's |e^{{hλ}}|"
    else:
        detail = (f"the step amplifies a mode {value:.4g}× as much as the exact flow does: "
                  "a discretisation fault")
    return Condition("faithful", "faithful discretisation: |R(hλ)| ≤ 1.001·|e^{hλ}| wherever |R(hλ)| > 1",
                     holds, value, "the exact flow multiplies a mode by |e^{hλ}| per step; the tableau should not "
                     "add to it", detail, role="verdict")


def neutral_modes(lin: Linearisation) -> Condition:
    """The step adds growth to no mode outside the region that the exact flow neither expands nor
    contracts (faithfully: adding more than 0.1 % is the faithfulness condition's). A mode the step
    amplifies no more than the flow grows with the dynamics, however slowly."""
    drifting = lin.outside & lin.faithful & lin.neutral & (lin.against_flow > 1 + lin.tolerance)
    value = float(lin.amplification[drifting].max()) if drifting.any() else 0.0
    if drifting.any():
        units = "sampled states' step maps" if lin.cell.partitioned else "eigenvalues"
        detail = (f"{int(drifting.sum())} of the {lin.amplification.size} {units}, which the exact flow neither expands "
                  f"nor contracts (|h·Re λ| ≤ {NEUTRAL:.2g}; h·|Im λ| up to {lin.reach[drifting].max():.3g}), are "
                  f"amplified by up to {value:.6g} per step, ×{value ** lin.horizon:.4g} over T = {lin.horizon} tokens: "
                  "growth from the discretisation alone")
    else:
        detail = "the step amplifies no mode whose amplitude the exact flow keeps"
    return Condition("neutral_modes", f"neutral modes kept: the step amplifies none that the exact flow keeps "
                     f"(|h·Re λ| ≤ {NEUTRAL:.2g}) beyond it",
                     not drifting.any(), value, "the exact flow keeps |e^{hλ}| = 1 on the imaginary axis; a region "
                     "covers it only over its imaginary stability interval (Hairer & Wanner II, §IV.2)", detail,
                     role="verdict")


def far_field(lin: Linearisation) -> Condition | None:
    """Far from the sampled states the bounded nonlinearities saturate and the field's unbounded
    part decides. Where the exact flow pulls a large state back (a dissipative field), the step
    must not push it out: else a state that once leaves its range (a gate saturating, a large
    update) grows from token to token, however stable the step is near the trajectory."""
    far = lin.far
    if far is None:
        return None
    name = "large states: the step does not push out a state that the exact flow pulls back"
    source = ("dissipativity of Runge–Kutta methods: Humphries & Stuart, SIAM J. Numer. Anal. 31 (1994); "
              "Hairer & Wanner II, §IV.12")
    if far.error:
        return Condition("far_field", name, True, math.nan, source, f"not measured: {far.error}", role="verdict")
    restoring = far.flow < 1
    pushed = restoring & (far.growth > 1 + FAITHFUL)
    value = float(far.growth[restoring].max()) if restoring.any() else math.nan
    where = f"{len(far.growth)} states of norm {far.radius:.3g} driven for {far.tokens} token(s)"
    remedy = ""
    if pushed.any():
        detail = (f"from {int(pushed.sum())} of {where}, which the exact flow pulls back, the step multiplies the norm "
                  f"by up to {value:.4g} a token: a state that leaves its range runs away")
        remedy = "a smaller Δ or more steps per token"
    elif restoring.any():
        detail = f"the step pulls back, or keeps, every large state the flow pulls back ({where})"
    else:
        detail = f"the exact flow pulls back none of {where}: nothing for the step to keep"
    return Condition("far_field", name, not pushed.any(), value, source, detail, role="verdict", remedy=remedy)


def restoring_far_field(lin: Linearisation) -> Condition | None:
    """Whether the exact flow forgets a large state within the horizon: where it does not, an
    input that keeps its sign accumulates in a state carried from sequence to sequence (it drifts)."""
    far = lin.far
    if far is None or not far.flow.size:
        return None
    slowest = float(far.flow.max())
    memory = math.inf if slowest >= 1 else -1.0 / math.log(slowest)
    if memory <= lin.horizon:
        detail = f"a large state relaxes by e within {memory:.3g} tokens"
    else:
        detail = (f"the exact flow {'does not pull a large state back' if slowest >= 1 else 'pulls a large state back'}"
                  f"{'' if slowest >= 1 else f' over {memory:.3g} tokens'} (T = {lin.horizon}): an input that keeps "
                  "its sign accumulates in a state carried over longer streams, which drifts out of the range the "
                  "layers after it read")
    return Condition("restoring_far_field", f"restoring far field: the flow forgets a large state within "
                     f"T = {lin.horizon} tokens", memory <= lin.horizon, memory,
                     "input-to-state stability of a dissipative field (Sontag, 1989)", detail)


def ode_stability(lin: Linearisation) -> Condition:
    expanding = lin.expanding_directions
    detail = ("the exact flow does not amplify perturbations" if expanding == 0 else
              f"the exact flow amplifies perturbations along {expanding} direction(s) at the worst sampled state: "
              "only a tableau that over-damps them, or saturating activations, keep the cell bounded")
    return Condition("ode_stability", "stability of the ODE itself: max Re λ ≤ 0", expanding == 0, lin.rightmost,
                     "Haber & Ruthotto, Stable architectures for deep neural networks (2017), §3", detail)


def imaginary_axis(lin: Linearisation) -> Condition | None:
    reach = float(lin.step * np.abs(lin.eigenvalues.imag).max())
    if reach == 0:
        return None
    beta = lin.imaginary_interval()
    if beta == 0:
        advice = ("the tableau covers no segment of the imaginary axis (forward Euler, the midpoint rule, …): "
                  "oscillatory modes stay stable only with damping, e.g. the −γI diffusion of AntisymmetricRNN "
                  "with h(γ² + ω²) ≤ 2γ for forward Euler")
    else:
        advice = f"the tableau covers the imaginary interval |Im z| ≤ {beta:.6g}"
    return Condition("imaginary_axis", "imaginary-axis coverage: h·max|Im λ| within the tableau's imaginary interval",
                     reach <= beta, reach, "Chang et al., AntisymmetricRNN (ICLR 2019), §3; Haber & Ruthotto (2017)",
                     advice)


def largest_dt(lin: Linearisation) -> Condition:
    """The largest Δ keeping every unit in the region, and a remedy only where one exists."""
    limit, cell = lin.largest_dt, lin.cell
    if limit == 0:
        remedy = f"no Δ > 0 keeps every hλ in the region: {lin.no_step_helps()}"
    elif lin.dt > limit:
        remedy = f"a Δ ≤ {limit:.6g}, or more steps per token, brings every hλ inside"
    else:
        remedy = ""
    here = f"Δ = {lin.dt:g} with {cell.steps} step(s) per token"
    return Condition("largest_dt", "largest stable Δ for these weights", lin.dt <= limit * (1 + 1e-9), limit,
                     "the spectral radius of the partitioned step map, bisected in Δ" if cell.partitioned else
                     "the ray from 0 through each hλ against the region |R| ≤ 1",
                     f"{here}; {remedy}" if remedy else here, remedy=remedy)


def gradient_growth(lin: Linearisation) -> Condition:
    """The linearised token map ``M_k = S_k^steps`` at each sampled state: the norm of their product
    along the trajectory, extrapolated to the horizon, with the bounds ``Π σ_min`` … ``Π ‖M_k‖``."""
    growth, lower, upper = token_map_growth(lin)
    if growth > 1e3:
        advice = "gradients explode: clip them, shorten BPTT, or constrain the weights"
    elif growth < 1e-3:
        advice = "gradients vanish over T: memory shorter than T"
    else:
        advice = "neither explodes nor vanishes over T"
    partitioned = "; the partitioned step's own map" if lin.cell.partitioned else ""
    return Condition("gradient_growth", f"gradient growth over T = {lin.horizon} tokens: ‖Π R(hJ_k)‖",
                     1e-3 <= growth <= 1e3, growth,
                     "Pascanu, Mikolov & Bengio, On the difficulty of training RNNs (ICML 2013), §2",
                     f"{advice}; bounds Π σ_min … Π ‖·‖ = {lower:.3g} … {upper:.3g}{partitioned}")


def token_map_growth(lin: Linearisation) -> tuple[float, float, float]:
    """``(growth, lower, upper)`` of :func:`gradient_growth` over ``lin.horizon`` tokens."""
    singular = lin.token_map_singular_values
    horizon = lin.horizon
    with np.errstate(divide="ignore", over="ignore"):
        upper = float(np.exp(horizon * np.mean(np.log(singular[:, 0]))))
        lower = float(np.exp(horizon * np.mean(np.log(singular[:, -1]))))
        M = lin.token_maps
        if len(M) < 2:
            return upper, lower, upper
        product = torch.from_numpy(M[1])
        for m in torch.from_numpy(M[2:]):  # M[0] is the zero state, not on the trajectory
            product = m @ product
        rate = np.log(singular_values(product.numpy())[0]) / (len(M) - 1)
        return float(np.exp(horizon * rate)), lower, upper


def stiffness(lin: Linearisation) -> Condition | None:
    # decaying modes only, and not the numerically-zero ones of saturated units (they would make
    # any ratio "stiff"): |Re λ| ≥ 1e-6 · max|Re λ|
    real = lin.eigenvalues.real.ravel()
    decay = -real[real < 0]
    decay = decay[decay >= 1e-6 * decay.max()] if decay.size else decay
    if not decay.size:
        return None
    ratio = float(decay.max() / decay.min())
    stiff = ratio > 1e3
    advice = ("stiff: an implicit (L-stable) tableau, a smaller dt or adaptive steps" if stiff
              else "not stiff: an explicit tableau is appropriate")
    return Condition("stiffness", "stiffness ratio max|Re λ| / min|Re λ|", not stiff, ratio,
                     "Lambert, Numerical Methods for ODE Systems (1991), §6.2", advice)


_UNIT_CIRCLE = -1.0 + np.exp(1j * np.linspace(0.0, 2 * np.pi, 2881)[1:-1])  # |λ + 1| = 1 without λ = 0


def unit_disc_limit(tableau) -> float:
    """The largest step ``h`` for which ``h · {|λ + 1| ≤ 1}`` lies in the tableau's stability region
    (``inf`` for A-stable tableaux). The disc holds the Jacobian's spectrum of an orthogonal cell,
    ``J = D W − I`` with ``W`` orthogonal and ``0 ≤ D ≤ I``, at every state, whatever ``W`` training
    reaches. Scaling a point of the disc's interior towards 0 lengthens its ray, so the boundary
    circle decides: forward Euler 1, every two-stage second-order method 1 (``|R| = |cos θ|``
    on it), RK4 half its real interval."""
    return float(ray_limits(tableau, _UNIT_CIRCLE).min())


def orthogonal_stability(lin: Linearisation) -> Condition | None:
    """Stability at every state for every orthogonal ``W`` (orthogonal cells only)."""
    if not isinstance(lin.cell.field, URNNField):
        return None
    worst = float(lin.cell.tableau.amplification(lin.step * _UNIT_CIRCLE).max())
    return Condition("orthogonal_stability", "orthogonal W: stable at every state for every orthogonal W",
                     worst <= 1 + lin.tolerance, worst,
                     "J = D W − I, D = diag(modReLU′) with entries 0 or 1, ‖D W‖ ≤ 1: every eigenvalue in |λ + 1| ≤ 1",
                     f"max |R| on h·{{|λ + 1| = 1}}; holds for every Δ ≤ "
                     f"{unit_disc_limit(lin.cell.tableau) * lin.cell.steps:.6g} with {lin.cell.steps} step(s) per token")


def orthogonal_norms(lin: Linearisation) -> Condition | None:
    """How far the step's linear map is from preserving norms (orthogonal cells only)."""
    if not isinstance(lin.cell.field, URNNField):
        return None
    with torch.no_grad():
        mu = torch.linalg.eigvals(lin.cell.field.weight_hh.detach().to("cpu", torch.float64)).numpy()
    gains = lin.cell.tableau.amplification(lin.step * (mu - 1.0))
    return Condition("orthogonal_norms", "orthogonal W: norm preservation of the linear step R(h(W − I))",
                     bool(gains.min() > 1 - 1e-6), float(gains.min()),
                     "Lezcano-Casado & Martínez-Rubio (2019): an orthogonal recurrence neither explodes nor vanishes",
                     f"singular values |R(h(μ − 1))| over W's eigenvalues μ: {gains.min():.4g} … {gains.max():.4g} where "
                     f"every unit passes modReLU; 1 preserves norms (forward Euler at h = 1 makes it W itself), below 1 "
                     "the tableau damps the orthogonal recurrence")


# the report's conditions in their order; the first four decide the verdict
CONDITIONS = (absolute_stability, faithful, neutral_modes, far_field, ode_stability, restoring_far_field,
              imaginary_axis, largest_dt, gradient_growth, stiffness, orthogonal_stability, orthogonal_norms)
