"""Linear stability of ``R(z) = P(z)/Q(z)``: intervals on the axes, A- and L-stability.

Boundaries are roots of polynomials: on the real axis ``|R(x)| = 1`` where ``P² − Q² = 0``; on the
imaginary axis where ``E(y) = |Q(iy)|² − |P(iy)|² = 0`` (an even polynomial with real
coefficients). With rational coefficients the roots are found exactly by SymPy (radicals up to
degree 2 factors, ``CRootOf`` otherwise) and every test point between them is evaluated in exact
rational arithmetic; with algebraic coefficients (e.g. SDIRK methods with ``γ = 1 − √2/2``) the
roots come from ``mpmath.polyroots`` at 60 digits.
"""

from __future__ import annotations

from functools import cached_property

import mpmath
import numpy as np
import sympy as sp

_DIGITS = 60


def _is_rational_poly(poly: sp.Poly) -> bool:
    return all(c.is_Rational for c in poly.all_coeffs())


def _real_roots(poly: sp.Poly) -> list[sp.Expr]:
    """Distinct real roots, exact where possible."""
    if poly.is_zero or poly.degree() < 1:
        return []
    if _is_rational_poly(poly):
        out = []
        for factor, _ in sp.factor_list(poly)[1]:
            if factor.degree() <= 2:
                out += [r for r in sp.roots(factor).keys() if r.is_real]
            else:
                out += list(dict.fromkeys(factor.real_roots()))
        return list(dict.fromkeys(out))
    with mpmath.workdps(_DIGITS):
        coeffs = [mpmath.mpf(str(sp.N(c, _DIGITS))) for c in poly.all_coeffs()]
        roots = mpmath.polyroots(coeffs, maxsteps=500, extraprec=4 * _DIGITS)
        real = [r.real if isinstance(r, mpmath.mpc) else r for r in roots
                if not isinstance(r, mpmath.mpc) or abs(r.imag) < mpmath.mpf(10) ** (-_DIGITS // 2)]
        return [sp.Float(mpmath.nstr(r, 40), 40) for r in real]


def _rational_between(lo: float, hi: float) -> sp.Rational:
    return sp.Rational((lo + hi) / 2)


class StabilityAnalysis:
    def __init__(self, P: sp.Poly, Q: sp.Poly):
        self.P, self.Q = P, Q
        self.z = P.gens[0]

    def _satisfies(self, x) -> bool:
        """``|R(x)| ≤ 1`` at a real or complex test point (exact for rational coefficients)."""
        p, q = self.P.eval(x), self.Q.eval(x)
        if q == 0:
            return False
        value = sp.Abs(sp.expand(p)) ** 2 - sp.Abs(sp.expand(q)) ** 2
        return bool(sp.N(value, _DIGITS) <= 0)

    @cached_property
    def real_interval(self) -> sp.Interval:
        N = self.P**2 - self.Q**2
        critical = [r for r in _real_roots(N * self.Q) if float(r) < 0]
        critical.sort(key=lambda r: -float(r))
        end = sp.Integer(0)
        if not self._satisfies(sp.Rational(-1, 10**9)):
            return sp.Interval(0, 0)
        for r in critical:
            if not self._satisfies(_rational_between(float(end), float(r))):
                return sp.Interval(end, 0)
            end = r
        if self._satisfies(sp.Rational(float(end)) - 1):
            return sp.Interval(-sp.oo, 0)
        return sp.Interval(end, 0)

    @cached_property
    def _E(self) -> sp.Poly:
        y = sp.Symbol("y", real=True)
        at = lambda poly, arg: poly.as_expr().subs(self.z, arg)  # noqa: E731
        E = sp.expand(at(self.Q, sp.I * y) * at(self.Q, -sp.I * y) - at(self.P, sp.I * y) * at(self.P, -sp.I * y))
        return sp.Poly(E, y)

    def _E_nonnegative_at(self, y) -> bool:
        return bool(sp.N(self._E.eval(y), _DIGITS) >= 0)

    @cached_property
    def imaginary_interval(self) -> sp.Interval:
        E = self._E
        if E.is_zero:
            return sp.Interval(-sp.oo, sp.oo)
        critical = sorted((r for r in _real_roots(E) if float(r) > 0), key=float)
        beta = sp.Integer(0)
        if not self._E_nonnegative_at(sp.Rational(1, 10**9)):
            return sp.Interval(0, 0)
        for r in critical:
            if not self._E_nonnegative_at(_rational_between(float(beta), float(r))):
                return sp.Interval(-beta, beta)
            beta = r
        if self._E_nonnegative_at(sp.Rational(float(beta)) + 1):
            return sp.Interval(-sp.oo, sp.oo)
        return sp.Interval(-beta, beta)

    @cached_property
    def poles(self) -> list[complex]:
        if self.Q.degree() < 1:
            return []
        with mpmath.workdps(_DIGITS):
            coeffs = [mpmath.mpf(str(sp.N(c, _DIGITS))) for c in self.Q.all_coeffs()]
            return [complex(r) for r in mpmath.polyroots(coeffs, maxsteps=500, extraprec=4 * _DIGITS)]

    @cached_property
    def is_a_stable(self) -> bool:
        if self.P.degree() > self.Q.degree():
            return False
        if self.imaginary_interval != sp.Interval(-sp.oo, sp.oo):
            return False
        # On the axis, E ≥ 0 already excludes poles; left of it the maximum principle needs none.
        return all(p.real > 0 for p in self.poles)

    @cached_property
    def is_l_stable(self) -> bool:
        return self.is_a_stable and self.P.degree() < self.Q.degree()

    @cached_property
    def _float_coeffs(self):
        return (np.array([complex(sp.N(c, 30)) for c in self.P.all_coeffs()]),
                np.array([complex(sp.N(c, 30)) for c in self.Q.all_coeffs()]))

    def amplification(self, values):
        values = np.asarray(values, dtype=complex)
        p, q = self._float_coeffs
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(np.polyval(p, values) / np.polyval(q, values))
