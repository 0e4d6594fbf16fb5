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
from sympy.polys.polyerrors import BasePolynomialError


class ExactCoefficients:
    """``A``, ``b``, ``c`` and ``b_hat`` of one tableau as elements of one exact domain ``K``."""

    def __init__(self, K, A, b, c, b_hat=None):
        self.K, self.A, self.b, self.c, self.b_hat = K, A, b, c, b_hat
        self.s = len(b)
        self.one = K.one
        # Sparse rows of A: explicit tableaux are mostly zeros, and the products A·g dominate.
        self.A_rows = [[(j, a) for j, a in enumerate(row) if not K.is_zero(a)] for row in A]

    @classmethod
    def from_sympy(cls, A, b, c, b_hat) -> "ExactCoefficients":
        """Convert SymPy entries into the smallest domain SymPy constructs for all of them."""
        s = len(b)
        flat = [*(x for row in A for x in row), *b, *c, *(b_hat or ())]
        single = _in_one_root(flat)
        if single is not None:
            K, elements = single
        else:
            try:
                K, elements = construct_domain(flat, extension=True)
            except Exception:  # an expression no polynomial domain holds: fall back to SymPy's EX
                K, elements = EX, [EX.from_sympy(x) for x in flat]
        it = iter(elements)
        A_ = [[next(it) for _ in range(s)] for _ in range(s)]
        b_ = [next(it) for _ in range(s)]
        c_ = [next(it) for _ in range(s)]
        b_hat_ = [next(it) for _ in range(s)] if b_hat is not None else None
        return cls(K, A_, b_, c_, b_hat_)

    def is_zero(self, x) -> bool:
        return self.K.is_zero(x)

    def as_rational(self, x):
        """``x`` as an element of ``QQ`` if it is rational, else ``None`` (cheap: no conversion
        of irrational numbers back to SymPy)."""
        K = self.K
        if K.is_QQ or K.is_ZZ:
            return sp.QQ.convert(x, K)
        if K.is_AlgebraicField:
            coefficients = x.to_list()
            return K.dom.convert(coefficients[-1]) if len(coefficients) <= 1 and coefficients else (
                sp.QQ.zero if not coefficients else None)
        return None

    def to_sympy(self, x) -> sp.Expr:
        value = self.K.to_sympy(x)
        return sp.radsimp(value) if value.has(sp.Pow) else value

    def matvec(self, vector):
        zero = self.K.zero
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


def _in_one_root(flat):
    """``(QQ<θ>, elements)`` when every entry is a polynomial with rational coefficients in one
    ``CRootOf`` θ (a ``root()`` constant, or a file written by :func:`butcher.dumps_toml`), else
    ``None``. The field is θ's, from its known minimal polynomial: SymPy's ``construct_domain``
    would search a primitive element by factoring over extensions, minutes at degree 24."""
    roots = set().union(*(x.atoms(sp.CRootOf) for x in flat))
    if len(roots) != 1:
        return None
    (theta,) = roots
    t = sp.Dummy("t")
    # CRootOf keeps the irreducible factor: θ's minimal polynomial, up to its leading coefficient
    minimal = sp.Poly(theta.poly.as_expr().xreplace({theta.poly.gen: t}), t, domain=sp.QQ).monic()
    polynomials = []
    for x in flat:
        try:
            p = sp.Poly(x.xreplace({theta: t}), t, domain=sp.QQ)
        except BasePolynomialError:
            return None  # θ in a denominator, another irrational, a symbol: the general path
        polynomials.append(p.rem(minimal))
    K = sp.QQ.algebraic_field(sp.AlgebraicNumber(theta, minpoly=minimal))
    return K, [K.new(p.all_coeffs()) for p in polynomials]

