"""The rooted-tree order conditions of a tableau, over any domain of its coefficients.

:class:`OrderConditions` evaluates ``γ(t) Φ(t) − 1`` tree by tree, each subtree's stage vector
computed once (``g(t) = ∏_children A·g(child)``), and Butcher's simplifying assumptions. It asks
only ``is_zero``, ``matvec``, ``dot`` and the domain's ``convert`` of its coefficients, so the same
code decides the exact order (``ExactCoefficients``: zero is zero) and the order to a tolerance
(:class:`ToleranceCoefficients`: 50-digit floating point, zero is ``|x| ≤ tol``).
"""

from __future__ import annotations

import sympy as sp
from sympy.polys.domains import RealField

from ._exact import ExactCoefficients
from ._trees import density, trees

__all__ = ["OrderConditions", "ToleranceCoefficients", "DIGITS"]

DIGITS = 50


class ToleranceCoefficients(ExactCoefficients):
    """``A``, ``b``, ``c``, ``b_hat`` in ``DIGITS``-digit floating point; a value counts as zero
    when its magnitude is at most ``tol``."""

    def __init__(self, A, b, c, b_hat, tol):
        K = RealField(dps=DIGITS)

        def real(x):
            return K.from_sympy(sp.N(x, DIGITS + 10))
        super().__init__(K, [[real(x) for x in row] for row in A], [real(x) for x in b], [real(x) for x in c],
                         None if b_hat is None else [real(x) for x in b_hat])
        self.tol = K.convert(sp.Float(tol, DIGITS))

    def is_zero(self, x) -> bool:
        return abs(x) <= self.tol


class OrderConditions:
    """The order conditions of the coefficients ``ex`` (``ExactCoefficients`` or a subclass)."""

    def __init__(self, ex: ExactCoefficients):
        self.ex = ex
        leaf = [ex.one] * ex.s
        self.memo = {(): (leaf, ex.matvec(leaf))}  # tree -> (g(t), A·g(t))

    def g(self, tree):
        if tree not in self.memo:
            vector = None
            for child in tree:
                factor = self.g(child)[1]
                vector = factor if vector is None else [x * y for x, y in zip(vector, factor)]
            self.memo[tree] = (vector, self.ex.matvec(vector))
        return self.memo[tree]

    def residual(self, tree, weights):
        """``γ(t) Φ(t) − 1`` (zero iff the order condition of ``t`` holds)."""
        ex = self.ex
        return ex.dot(weights, self.g(tree)[0]) * ex.K.convert(density(tree)) - ex.one

    def simplifying_assumptions(self, weights, limit: int, c=None) -> tuple[int, int, int]:
        """Largest ``(p, η, ζ)`` with ``B(p)``, ``C(η)``, ``D(ζ)`` for ``weights`` and ``c``
        (default ``A𝟙``, the row sums the autonomous order theory uses):

        - ``B(p)``: ``Σ_i b_i c_i^(k−1) = 1/k`` for ``k ≤ p``;
        - ``C(η)``: ``Σ_j a_ij c_j^(k−1) = c_i^k / k`` for ``k ≤ η``;
        - ``D(ζ)``: ``Σ_i b_i c_i^(k−1) a_ij = b_j (1 − c_j^k) / k`` for ``k ≤ ζ``.
        """
        ex = self.ex
        c = ex.matvec([ex.one] * ex.s) if c is None else c
        K, one = ex.K, ex.one

        def B(kk, power, next_power):
            return ex.is_zero(ex.dot(weights, power) * kk - one)

        def C(kk, power, next_power):
            return all(ex.is_zero(x * kk - y) for x, y in zip(ex.matvec(power), next_power))

        def D(kk, power, next_power):
            bc = [w * x for w, x in zip(weights, power)]
            return all(ex.is_zero(ex.dot(bc, [row[j] for row in ex.A]) * kk - weights[j] * (one - next_power[j]))
                       for j in range(ex.s))

        levels, alive = [0, 0, 0], [True, True, True]
        power = [one] * ex.s  # c^(k-1)
        for k in range(1, limit + 1):
            next_power = [x * ci for x, ci in zip(power, c)]
            for index, holds in enumerate((B, C, D)):
                if alive[index] and holds(K.convert(k), power, next_power):
                    levels[index] = k
                else:
                    alive[index] = False
            if not any(alive):
                break
            power = next_power
        return tuple(levels)

    def order(self, weights, max_order: int, use_simplifying: bool = True) -> int:
        # Butcher (1964): B(p), C(η), D(ζ) with p ≤ η + ζ + 1 and p ≤ 2η + 2 imply every order
        # condition up to p, so only trees beyond that bound are checked one by one. For
        # collocation methods this skips thousands of trees (all of them, for Gauss–Legendre).
        proven = 0
        if use_simplifying:
            p, eta, zeta = self.simplifying_assumptions(weights, max_order)
            proven = min(p, eta + zeta + 1, 2 * eta + 2)
        for order in range(proven + 1, max_order + 1):
            for tree in trees(order):
                if not self.ex.is_zero(self.residual(tree, weights)):
                    return order - 1
        return max_order

    def largest_residual(self, weights, order: int) -> float:
        """``max |γ(t) Φ(t) − 1|`` over the trees of at most ``order`` nodes."""
        return max((float(abs(self.residual(t, weights))) for n in range(1, order + 1) for t in trees(n)),
                   default=0.0)
