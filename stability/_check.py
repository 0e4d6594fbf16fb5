"""Spectral stability of a generated cell against its tableau's stability region: the report.

``check`` linearises the cell once (:mod:`stability._linearise`), runs the list of conditions
(:mod:`stability._conditions`) on it, and derives the verdict from the conditions whose role is
``"verdict"`` (:func:`verdict_of`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ._conditions import CONDITIONS, Condition, unit_disc_limit
from ._linearise import FAITHFUL, Linearisation, linearise

__all__ = ["Condition", "StabilityReport", "VERDICTS", "check", "max_stable_dt", "unit_disc_limit", "verdict_of"]

# the verdicts, mildest first, and the exit code of each; the last two are faults of the step
VERDICTS = {"stable": 0, "expanding dynamics": 3, "marginal step": 4, "unstable step": 1}
STEP_FAULTS = ("marginal step", "unstable step")
HORIZON = 100  # sequence length T of the gradient-growth condition


def verdict_of(conditions: list[Condition]) -> str:
    """The verdict from the conditions with role ``"verdict"``: ``"unstable step"`` when the step
    pushes out a large state that the exact flow pulls back (``far_field``); ``"stable"`` when the
    step is absolutely stable; else ``"unstable step"`` when it amplifies a mode beyond the exact flow
    (not faithful); else ``"marginal step"`` when a mode that the flow neither expands nor
    contracts leaves the region; else ``"expanding dynamics"``: only modes the flow itself expands
    leave it, and the step amplifies none more than the flow."""
    holds = {c.key: c.holds for c in conditions if c.role == "verdict"}
    if not holds.get("far_field", True):  # stable near the trajectory, but a large state runs away
        return "unstable step"
    if holds["absolute_stability"]:
        return "stable"
    if not holds["faithful"]:
        return "unstable step"
    return "expanding dynamics" if holds["neutral_modes"] else "marginal step"


@dataclass
class StabilityReport:
    """``conditions``: every condition judged (:class:`Condition`), and from those with role
    ``"verdict"`` the ``verdict`` (:func:`verdict_of`) with its ``exit_code`` (:data:`VERDICTS`) and
    ``stable`` (the sufficient condition: every ``hλ`` in the region). ``margin``: ``1 − max
    |R(hλ)|`` over the sampled eigenvalues (``> 0`` strictly inside the region, ``< 0`` outside);
    ``eigenvalues``: ``hλ``, the step-scaled eigenvalues that were judged; ``exact``: the Jacobian
    was the same at every sampled state (a field linear in the state), so the verdict holds at
    every state. ``expanding_directions``: eigenvalues with ``Re λ > 0`` at the worst sampled state;
    ``excess``: ``max |R(hλ)| / max(1, |e^{hλ}|)``; ``rightmost``: ``max Re λ``."""

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
    expanding_directions: int = 0
    excess: float = 1.0
    rightmost: float = 0.0  # max Re λ (unscaled)

    @property
    def verdict(self) -> str:
        return verdict_of(self.conditions)

    @property
    def stable(self) -> bool:
        return self.verdict == "stable"

    @property
    def exit_code(self) -> int:
        return VERDICTS[self.verdict]

    def condition(self, key: str) -> Condition:
        """The condition with this key (``"stiffness"``), else the first whose name starts with it."""
        found = [c for c in self.conditions if c.key == key] or [c for c in self.conditions if c.name.startswith(key)]
        if not found:
            raise KeyError(f"no condition {key!r}; conditions: {[c.key for c in self.conditions]}")
        return found[0]

    def headline(self) -> str:
        """The verdict in words, with what to do about it."""
        where = (f"{self.tableau}, step h = {self.step:g}, {self.samples} sampled states, "
                 f"{len(self.eigenvalues)} eigenvalues{', exact: linear field' if self.exact else ''}")
        expanding = (f"the learned field expands along {self.expanding_directions} direction(s) "
                     f"(max Re λ = {self.rightmost:.3g})")
        also = f"; besides, {expanding}" if self.expanding_directions else ""
        verdict = self.verdict
        if verdict == "stable":
            damped = f"; {expanding}, which the step damps" if self.expanding_directions else ""
            return f"STABLE: every step-scaled eigenvalue lies in the region, margin {self.margin:+.4g}{damped} ({where})"
        if verdict == "expanding dynamics":
            return (f"FAITHFUL STEP, EXPANDING DYNAMICS: only modes that the learned field itself expands leave the "
                    f"region: {expanding}; the tableau amplifies none of them more than the exact flow does (within "
                    f"{100 * FAITHFUL:g} %): the state stays bounded only where the nonlinearity saturates, which a "
                    f"smaller step would not change ({where})")
        if verdict == "marginal step":
            return f"MARGINAL STEP: {self.condition('neutral_modes').detail}; {self._remedy()}{also} ({where})"
        fault = self.condition("faithful")
        if fault.holds:  # stable near the trajectory: the far field failed
            far = self.condition("far_field")
            return f"UNSTABLE STEP AT LARGE STATES: {far.detail}; {far.remedy}{also} ({where})"
        return f"UNSTABLE STEP: {fault.detail} (margin {self.margin:+.4g}); {self._remedy()}{also} ({where})"

    def _remedy(self) -> str:
        """What brings the amplified modes inside: a Δ only where one exists."""
        limit = self.condition("largest_dt")
        if not limit.remedy:
            return "a tableau whose region holds every hλ brings them inside"
        if limit.value > 0:
            return f"{limit.remedy}, as does a tableau whose region holds every hλ"
        return f"{limit.remedy}; a tableau whose region holds those hλ does"

    def mark(self, condition: Condition) -> str:
        """``ok`` where the condition holds; ``FAIL`` where it does not and decides a verdict that
        faults the step; ``note`` otherwise (a diagnostic, or the expansion of the dynamics)."""
        if condition.holds:
            return "ok"
        return "FAIL" if condition.role == "verdict" and self.verdict in STEP_FAULTS else "note"

    def to_json(self) -> str:
        def pairs(values):
            return [[float(z.real), float(z.imag)] for z in values]
        data = dict(asdict(self), stable=self.stable, verdict=self.verdict)
        data["eigenvalues"] = pairs(self.eigenvalues)
        data["weight_eigenvalues"] = {k: pairs(v) for k, v in self.weight_eigenvalues.items()}
        data["step_norms"] = [float(v) for v in self.step_norms]
        data["conditions"] = [dict(asdict(c), verdict=c.holds) for c in self.conditions]  # "verdict": its old name
        return json.dumps(data, indent=1, default=float)

    def __str__(self) -> str:
        lines = [self.headline()]
        for c in self.conditions:
            lines.append(f"  [{self.mark(c)}] {c.name}: {c.value:.6g}  ({c.detail}) — {c.source}")
        if self.weight_eigenvalues:
            radii = ", ".join(f"{k} {np.abs(v).max():.3g}" for k, v in self.weight_eigenvalues.items())
            lines.append(f"  spectral radii of the recurrent matrices: {radii}")
        return "\n".join(lines)


def max_stable_dt(cell, inputs=None, samples: int = 16, seed: int = 0) -> float:
    """The largest interval Δ (with the cell's sub-steps) for which every sampled eigenvalue of
    the field's Jacobian, scaled by ``Δ/steps``, lies in the tableau's stability region (the ray
    from 0 through it stays inside up to there); for partitioned stepping, for which every
    sampled step map has spectral radius ≤ 1."""
    return linearise(cell, inputs, samples=samples, seed=seed, far=False).largest_dt


def check(cell, inputs=None, dt: float | None = None, samples: int = 16, seed: int = 0,
          horizon: int = HORIZON, progress: str | None = None) -> StabilityReport:
    """Judge the step of ``cell`` (optionally at another interval ``dt``) from the eigenvalues of
    its field's Jacobian at ``samples`` states: the zero state and states along a trajectory
    driven by ``inputs`` (``(T, B, input_size)``; random normal inputs when ``None``).
    ``horizon`` is the sequence length the gradient-growth condition extrapolates to. With a
    ``progress`` label, a progress bar on stderr (on a terminal) counts the conditions."""
    from tqdm import tqdm
    with tqdm(total=1 + len(CONDITIONS), desc=progress, unit="condition", file=sys.stderr, leave=False,
              dynamic_ncols=True, disable=None if progress else True) as bar:
        lin = linearise(cell, inputs, dt, samples, seed, horizon, progress=bar.set_postfix_str)
        bar.update()
        conditions = []
        for rule in CONDITIONS:
            conditions.append(rule(lin))
            bar.update()
    return _report(lin, [c for c in conditions if c is not None])


def _report(lin: Linearisation, conditions: list[Condition]) -> StabilityReport:
    with torch.no_grad():
        weights = {name: torch.linalg.eigvals(W.detach().to("cpu", torch.float64)).numpy()
                   for name, W in lin.cell.field.recurrent_matrices().items()}
    with np.errstate(over="ignore"):
        excess = float(np.max(lin.amplification / np.maximum(1.0, np.exp(lin.flow)))) if lin.amplification.size else 1.0
    return StabilityReport(margin=1.0 - lin.worst, conditions=conditions, eigenvalues=lin.step * lin.eigenvalues.ravel(),
                           step=lin.step, tableau=lin.cell.tableau.name or "user tableau", samples=lin.states,
                           max_stable_dt=lin.largest_dt, exact=lin.exact, weight_eigenvalues=weights,
                           step_norms=lin.token_map_singular_values[:, 0],
                           expanding_directions=lin.expanding_directions, excess=excess, rightmost=lin.rightmost)

