"""The stage program of an explicit tableau and its reverse: the discrete adjoint, exactly.

Forward, one step of size ``h`` from ``y``::

    Y_i = y + h Σ_{j<i} a_ij K_j,    K_i = f(Y_i),    y⁺ = y + h Σ_i b_i K_i

Reverse, from ``λ⁺ = ∂L/∂y⁺``, for the evaluated stages ``i`` from last to first::

    κ_i = h (b_i λ⁺ + Σ_{j>i} a_ji μ_j)       (∂L/∂K_i)
    μ_i = J_f(Y_i)ᵀ κ_i                        (∂L/∂Y_i, the field's vector–Jacobian product)
    λ   = λ⁺ + Σ_i μ_i                         (∂L/∂y)

This is the discrete adjoint Runge–Kutta method (Hager 2000; Sanz-Serna 2016). Where every
``b_i ≠ 0``, substituting ``Λ_i = κ_i / (h b_i)`` turns it into the Runge–Kutta method
``(Ā, b)`` with ``ā_ij = b_j − b_j a_ji / b_i`` applied to the adjoint equation ``λ′ = −Jᵀλ``:
the symplectic partner of the tableau (:meth:`ButcherTableau.adjoint_partner`). The κ form used
here needs no division, so it also holds where some ``b_i = 0`` (the midpoint rule, Dormand–Prince).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

__all__ = ["StageProgram", "ReverseProgram"]


@dataclass(frozen=True)
class StageProgram:
    """An explicit tableau as the stages a step evaluates, with exact coefficients.

    ``stages``: ``((i, ((j, a_ij), …)), …)`` in evaluation order, only the stages the update (and,
    for an embedded pair, the error estimate) needs, only the nonzero ``a_ij``;
    ``weights``: ``((i, b_i), …)``, nonzero only; ``error_weights``: ``((i, b_i − b̂_i), …)``
    (empty unless the program was made for error control).
    """

    stages: tuple
    weights: tuple
    error_weights: tuple = ()

    @property
    def evaluations(self) -> int:
        return len(self.stages)

    def floats(self) -> "StageProgram":
        """The same program with every coefficient rounded once to a float (from 40 digits)."""
        real = lambda terms: tuple((i, _float(a)) for i, a in terms)  # noqa: E731
        return StageProgram(tuple((i, real(row)) for i, row in self.stages), real(self.weights),
                            real(self.error_weights))

    def reverse(self) -> "ReverseProgram":
        """The reverse sweep that differentiates this program (the discrete adjoint)."""
        evaluated = [i for i, _ in self.stages]
        weight = dict(self.weights)
        later = {i: [] for i in evaluated}  # later[i]: the (j, a_ji) with j > i reading K_i
        for j, row in self.stages:
            for i, a in row:
                later[i].append((j, a))
        return ReverseProgram(tuple((i, weight.get(i, 0), tuple(later[i])) for i in reversed(evaluated)))


@dataclass(frozen=True)
class ReverseProgram:
    """``stages``: ``((i, b_i, ((j, a_ji), …)), …)`` from the last evaluated stage to the first:
    ``κ_i = h (b_i λ⁺ + Σ a_ji μ_j)`` over the listed ``j``, which are reversed before ``i``."""

    stages: tuple


def _float(x) -> float:
    return x if isinstance(x, float) else float(sp.N(x, 40))


def stage_program(tableau, embedded: bool = False) -> StageProgram:
    """The :class:`StageProgram` of an explicit tableau (exact zero tests decide what is skipped)."""
    if not tableau.is_explicit:
        raise ValueError(f"{tableau.name or 'tableau'} is not explicit: it has no stage program")
    if embedded and tableau.b_hat is None:
        raise ValueError(f"{tableau.name or 'tableau'} has no embedded weights for error control")
    ex = tableau._exact
    s, A, b = tableau.stages, tableau._data[0], tableau.b
    b_hat = tableau.b_hat
    nonzero = lambda x: not ex.is_zero(x)  # noqa: E731
    needed = {i for i in range(s) if nonzero(ex.b[i]) or (embedded and nonzero(ex.b_hat[i]))}
    for i in reversed(range(s)):  # a needed stage needs the stages it reads
        if i in needed:
            needed |= {j for j in range(i) if nonzero(ex.A[i][j])}
    stages = tuple((i, tuple((j, A[i][j]) for j in range(i) if nonzero(ex.A[i][j]))) for i in range(s) if i in needed)
    weights = tuple((i, b[i]) for i in range(s) if nonzero(ex.b[i]))
    error_weights = () if not embedded else tuple(
        (i, b[i] - b_hat[i]) for i in range(s) if nonzero(ex.b[i] - ex.b_hat[i]))
    return StageProgram(stages, weights, error_weights)
