"""Exact arithmetic on a tableau's coefficients, in the smallest SymPy domain that holds them.

Generic SymPy expressions are slow to multiply and need ``simplify`` to decide whether a result
is zero. Instead every coefficient of a tableau is converted once into one polynomial domain
(``QQ`` for rational tableaux, an algebraic number field ``QQ<θ>`` for radicals, a polynomial ring
over either for parametric tableaux). Arithmetic there is exact and canonical: an element is zero
exactly when it is represented as zero. This is what makes the order verification fast.
"""

from __future__ import annotations

import sympy as sp
from sympy.polys.constructor import construct_domain
from sympy.polys.domains import EX
from sympy.polys.matrices import DomainMatrix


class ExactCoefficients:
    """``A``, ``b``, ``c`` and ``b_hat`` of one tableau as elements of one exact domain ``K``."""

    def __init__(self, A, b, c, b_hat):
        s = len(b)
        flat = [*(x for row in A for x in row), *b, *c, *(b_hat or ())]
        try:
            self.K, elements = construct_domain(flat, extension=True)
        except Exception:  # an expression no polynomial domain holds: fall back to SymPy's EX
            self.K, elements = EX, [EX.from_sympy(x) for x in flat]
        it = iter(elements)
        self.A = [[next(it) for _ in range(s)] for _ in range(s)]
        self.b = [next(it) for _ in range(s)]
        self.c = [next(it) for _ in range(s)]
        self.b_hat = [next(it) for _ in range(s)] if b_hat is not None else None
        self.s = s
        # Sparse rows of A: explicit tableaux are mostly zeros, and the products A·g dominate.
        self.A_rows = [[(j, a) for j, a in enumerate(row) if not self.K.is_zero(a)] for row in self.A]
        self.one = self.K.one

    def is_zero(self, x) -> bool:
        return self.K.is_zero(x)

    def to_sympy(self, x) -> sp.Expr:
        value = self.K.to_sympy(x)
        return sp.radsimp(value) if value.has(sp.Pow) else value

    def matvec(self, vector):
        zero, K = self.K.zero, self.K
        out = []
        for row in self.A_rows:
            acc = zero
            for j, a in row:
                acc = acc + a * vector[j]
            out.append(acc)
        return out

    def dot(self, weights, vector):
        acc = self.K.zero
        for w, v in zip(weights, vector):
            acc = acc + w * v
        return acc

    def charpoly(self, matrix_rows) -> list:
        """Coefficients ``[1, p1, …, ps]`` of ``det(λI − M)``, computed division-free in ``K``."""
        M = DomainMatrix([list(r) for r in matrix_rows], (self.s, self.s), self.K)
        return M.charpoly()
