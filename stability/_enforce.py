"""Parameterisations that keep a cell inside its tableau's stability region during training.

Each one caps the spectral norm of the field's recurrent matrix at ``ρ*`` and rests on an
*enclosure*: a set of the complex plane proven to contain every eigenvalue of the field's Jacobian
at **every** state and input once that norm is ``≤ ρ``. ``ρ*`` is the largest ``ρ`` for which the
enclosure, scaled by the cell's step ``h = Δ/steps``, lies in ``{|R| ≤ 1}``, found by bisection on
a dense sampling of the enclosure. Training can then move the weights anywhere: the step stays
absolutely stable at that ``h``.

- ``spectral`` on the tanh-RNN, ``f = tanh(W h + …) − γh``: ``J = D W − γI`` with
  ``D = diag(tanh′) ∈ [0, 1]``, so ``|λ + γ| ≤ ‖D W‖ ≤ ‖W‖``: the disc of radius ``ρ`` about −γ
  (spectral normalisation, Miyato et al. 2018, with the bound taken from the tableau).
- ``antisymmetric`` on the AntisymmetricRNN field, ``f = tanh((S − γI) h + …)`` with ``S`` skew:
  ``D(S − γI)`` is similar to ``D^½(S − γI)D^½``, whose numerical range is
  ``{d(−γ + iω) : 0 ≤ d ≤ 1, |ω| ≤ ‖S‖}``: segments from 0 towards ``−γ ± iρ``. For forward Euler
  this is Chang et al.'s ``h(γ² + ρ²) ≤ 2γ``; tableaux covering an imaginary interval allow more.
- ``antisymmetric`` on the tanh-RNN: ``W = S`` skew, ``J = D S − γI``: the same segments from −γ.

Registered as entry points of the group ``odernn.constraints`` (see ``pyproject.toml``), so
``odernn.cell("rnn:rk4:dt=2:constraint=spectral", …)`` finds them without ``odernn`` importing
this package; a third-party package can register its own the same way.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from odernn import AntisymmetricField, TanhRNNField

__all__ = ["constrain", "constraints", "largest_admissible_norm", "spectral", "antisymmetric"]

_SAFETY = 0.999  # the cap sits this far inside the bisected limit: the enclosure is sampled, not exact
_RADII = np.linspace(0.0, 1.0, 17)
_ANGLES = np.exp(1j * np.linspace(0.0, 2 * np.pi, 721))


def _disc(centre: complex):
    return lambda rho: centre + rho * (_RADII[:, None] * _ANGLES[None, :]).ravel()


def _segments(centre: complex, gamma: float):
    omegas = np.linspace(-1.0, 1.0, 401)
    return lambda rho: centre + (_RADII[:, None] * (-gamma + 1j * rho * omegas[None, :])).ravel()


def largest_admissible_norm(tableau, step: float, enclosure, upper: float = 1e4) -> float:
    """The largest ``ρ ≤ upper`` with ``|R(h z)| ≤ 1`` on ``enclosure(ρ)`` (nested in ``ρ``);
    ``inf`` when even ``upper`` is admissible (an A-stable tableau, say)."""
    def admissible(rho):
        return bool(np.all(tableau.amplification(step * enclosure(rho)) <= 1 + 1e-12))
    if not admissible(0.0):
        return 0.0
    if admissible(upper):
        return math.inf
    lo, hi = 0.0, upper
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if admissible(mid) else (lo, mid)
    return lo


class NormCap(nn.Module):
    """``W ↦ W · min(1, ρ/‖W‖₂)`` (with ``skew=True`` the skew part ``(W − Wᵀ)/2`` first). The
    exact spectral norm (one SVD per evaluation; the cell evaluates it once per token) rather than
    a power-iteration estimate, which can fall below it and break the guarantee."""

    def __init__(self, rho: float, skew: bool = False):
        super().__init__()
        self.rho, self.skew = float(rho), skew

    def forward(self, W):
        if self.skew:
            W = 0.5 * (W - W.T)
        if math.isinf(self.rho):
            return W
        norm = torch.linalg.matrix_norm(W, ord=2)
        return W * torch.clamp(self.rho / norm.clamp_min(1e-30), max=1.0)

    def extra_repr(self):
        return f"rho={self.rho:.6g}, skew={self.skew}"


def _apply(cell, name: str, enclosure, parameter: str, skew: bool, norm_scale: float = 1.0) -> float:
    step = cell.dt / cell.steps
    rho = largest_admissible_norm(cell.tableau, step, enclosure)
    if rho * step < 1e-4:  # only the tolerance of the boundary test admits it: no real room
        raise ValueError(f"constraint {name!r}: with {cell.tableau.name or 'this tableau'} at step h = {step:g} "
                         "no nonzero recurrent matrix is provably stable (even its zero matrix leaves the region, "
                         "or the region holds no neighbourhood of the enclosure); lower dt, add steps, or add "
                         "diffusion (gamma > 0)")
    cap = rho * _SAFETY / norm_scale
    if parametrize.is_parametrized(cell.field, parameter):
        raise ValueError(f"the cell's {parameter} is already constrained")
    parametrize.register_parametrization(cell.field, parameter, NormCap(cap, skew=skew))
    with torch.no_grad():  # start from the projected weights, so that the raw ones mean something
        getattr(cell.field.parametrizations, parameter).original.copy_(getattr(cell.field, parameter))
    cell.constraint = name
    return cap


def spectral(cell) -> float:
    """Cap ``‖W_hh‖₂`` of a tanh-RNN cell (disc enclosure about −1); returns the cap."""
    if not isinstance(cell.field, TanhRNNField):
        raise ValueError(f"constraint 'spectral' has a proven enclosure for the rnn field only, not "
                         f"{type(cell.field).__name__}; the antisymmetric field takes constraint=antisymmetric")
    return _apply(cell, "spectral", _disc(-cell.field.gamma), "weight_hh", skew=False)


def antisymmetric(cell) -> float:
    """Make the recurrent matrix skew with a capped norm (plus the field's −γI diffusion for the
    AntisymmetricRNN field, the leak −h for the tanh-RNN); returns the cap on ``‖W‖₂``."""
    field = cell.field
    if isinstance(field, AntisymmetricField):
        # the field uses W − Wᵀ = 2·W for the skew parameterised W: cap ‖W‖ at ρ/2
        return _apply(cell, "antisymmetric", _segments(0.0, field.gamma), "weight", skew=True, norm_scale=2.0)
    if isinstance(field, TanhRNNField):
        return _apply(cell, "antisymmetric", _segments(-field.gamma, 0.0), "weight_hh", skew=True)
    raise ValueError(f"constraint 'antisymmetric' applies to the rnn and antisymmetric fields, not "
                     f"{type(field).__name__}")


_CONSTRAINTS = {"spectral": spectral, "antisymmetric": antisymmetric}
_SUMMARIES = {"spectral": "rnn: ‖W_hh‖₂ capped so the disc |λ + 1| ≤ ‖W_hh‖ stays in the region",
              "antisymmetric": "antisymmetric, rnn: skew W with a capped norm, plus the −γI diffusion / the leak"}


def constraints() -> dict[str, str]:
    """Names and one-line descriptions of the constraints this package provides."""
    return dict(_SUMMARIES)


def constrain(cell, name: str) -> float:
    """Apply the constraint ``name`` to ``cell`` in place (see the module docstring); returns the
    cap put on the recurrent matrix's spectral norm."""
    if name not in _CONSTRAINTS:
        raise ValueError(f"unknown constraint {name!r}; constraints: {', '.join(_CONSTRAINTS)}")
    return _CONSTRAINTS[name](cell)
