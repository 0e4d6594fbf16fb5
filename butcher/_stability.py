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
_ROUNDOFF = sp.Float("1e-40")  # of a sum of products computed in 50-digit arithmetic: round-off below it


def _is_rational_poly(poly: sp.Poly) -> bool:
    return poly.domain.is_QQ or poly.domain.is_ZZ


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
    real = [r for r in _numeric_roots(poly) if abs(r.imag) < 1e-25]
    return [sp.Float(mpmath.nstr(mpmath.mpf(r.real), 40), 40) for r in real]


def _numeric_roots(poly: sp.Poly) -> list:
    """Distinct complex roots (as ``mpmath.mpc``) at 60 digits. Roots at 0 and repeated roots are
    divided out first: ``polyroots`` converges slowly on multiple roots."""
    (zeros_at_origin,), poly = poly.terms_gcd()
    try:
        poly = poly.sqf_part()
    except Exception:  # a domain without gcd: keep the polynomial as it is
        pass
    roots = [mpmath.mpc(0)] if zeros_at_origin else []
    if poly.degree() < 1:
        return roots
    with mpmath.workdps(_DIGITS):
        coeffs = [mpmath.mpf(str(sp.N(c, _DIGITS))) for c in poly.all_coeffs()]
        found = mpmath.polyroots(coeffs, maxsteps=4000, extraprec=8 * _DIGITS)
    return roots + [mpmath.mpc(r) for r in found]


def _is_hurwitz(coefficients: list) -> bool:
    """All roots of ``Σ coefficients[k] z^(n−k)`` (exact, leading first, nonzero) lie in
    ``Re z < 0``, by Routh's criterion: the first column of the Routh array, ``n + 1`` entries,
    has one sign (a zero there is a root on the axis or a pair symmetric to it: not Hurwitz)."""
    upper, lower = list(coefficients[0::2]), list(coefficients[1::2])
    column = [upper[0]]
    for _ in range(len(coefficients) - 1):  # rows 1..n; entries past a row's end are zeros
        lower += [0] * (len(upper) - len(lower))
        if lower[0] == 0:
            return False
        column.append(lower[0])
        ratio = upper[0] / lower[0]
        upper, lower = lower, [upper[k + 1] - ratio * lower[k + 1] for k in range(len(upper) - 1)]
    return all((x > 0) == (column[0] > 0) for x in column)


def _rational_between(lo: float, hi: float) -> sp.Rational:
    return sp.Rational((lo + hi) / 2)


def _absolute(poly: sp.Poly) -> sp.Poly:
    return sp.Poly([abs(c) for c in poly.all_coeffs()], *poly.gens, domain=poly.domain)


def _without_roundoff(poly: sp.Poly, scale) -> sp.Poly:
    """Float coefficients that are round-off, set to zero: a coefficient of ``P² − Q²`` (or of
    ``E``) is a sum of products whose absolute values sum to the same coefficient of ``scale()``;
    in 50-digit arithmetic its error is about 1e-50 of that, and a coefficient under 1e-40 of it
    is a cancellation that is exact in the method (``P² − Q² = O(z^{p+1})`` near 0). Left as
    ±1e-50 it would put spurious roots near 0 and flip A-stability. Exact coefficients stay."""
    if not poly.domain.is_RealField or poly.is_zero:
        return poly
    ascending = poly.all_coeffs()[::-1]
    bounds = scale().all_coeffs()[::-1]  # the scale's degree is at least the polynomial's
    kept = [0 if abs(c) <= _ROUNDOFF * abs(bound) else c for c, bound in zip(ascending, bounds)]
    return sp.Poly(kept[::-1], *poly.gens, domain=poly.domain)


class StabilityAnalysis:
    def __init__(self, P: sp.Poly, Q: sp.Poly):
        self.P, self.Q = P, Q
        self.z = P.gens[0]

    def _satisfies(self, x) -> bool:
        """``|R(x)| ≤ 1`` at a real test point: ``P(x)² − Q(x)² ≤ 0`` (exact for rational coefficients)."""
        if self.Q.eval(x) == 0:
            return False
        return bool(sp.N(self._N.eval(x), _DIGITS) <= 0)

    @cached_property
    def _N(self) -> sp.Poly:
        """``P² − Q²``: ``|R| ≤ 1`` on the real axis where it is ≤ 0."""
        return _without_roundoff(self.P**2 - self.Q**2, lambda: _absolute(self.P)**2 + _absolute(self.Q)**2)

    @cached_property
    def real_interval(self) -> sp.Interval:
        N = self._N
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
        """``E(y) = |Q(iy)|² − |P(iy)|²`` for real coefficients: with ``F(iy) = F_even(y) + i F_odd(y)``,
        ``|F(iy)|² = F_even² + F_odd²``, computed in the coefficients' own domain."""
        y = sp.Symbol("y", real=True)

        def squared_modulus(poly: sp.Poly) -> sp.Poly:
            K = poly.domain
            coefficients = poly.rep.to_list()[::-1]  # ascending, in the domain
            signed = [c if k % 4 < 2 else K.zero - c for k, c in enumerate(coefficients)]  # i^k up to i
            even = [c if k % 2 == 0 else K.zero for k, c in enumerate(signed)]
            odd = [c if k % 2 == 1 else K.zero for k, c in enumerate(signed)]
            as_poly = lambda cs: sp.Poly.from_list(cs[::-1] or [K.zero], y, domain=K)  # noqa: E731
            return as_poly(even) ** 2 + as_poly(odd) ** 2

        return _without_roundoff(squared_modulus(self.Q) - squared_modulus(self.P),
                                 lambda: squared_modulus(_absolute(self.Q)) + squared_modulus(_absolute(self.P)))

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
        return [complex(r) for r in _numeric_roots(self.Q)] if self.Q.degree() >= 1 else []

    @cached_property
    def _poles_right_of_axis(self) -> bool:
        """Every root of ``Q`` has ``Re z > 0``: exactly (Routh's criterion on ``Q(−z)``) for
        rational coefficients, from the roots at 60 digits otherwise."""
        if _is_rational_poly(self.Q):
            mirrored = [c if k % 2 == 0 else -c for k, c in enumerate(reversed(self.Q.all_coeffs()))]
            return _is_hurwitz([sp.Rational(c) for c in reversed(mirrored)])
        return all(p.real > 0 for p in self.poles)

    @cached_property
    def is_a_stable(self) -> bool:
        """``|R(z)| ≤ 1`` on ``Re z ≤ 0``: bounded at infinity (``deg P ≤ deg Q``), ``E(y) ≥ 0``
        on the whole imaginary axis, and no pole left of it (there the maximum principle carries
        the bound from the axis; on the axis ``E ≥ 0`` already excludes poles)."""
        if self.P.degree() > self.Q.degree():
            return False
        if self.imaginary_interval != sp.Interval(-sp.oo, sp.oo):
            return False
        return self._poles_right_of_axis

    @cached_property
    def is_l_stable(self) -> bool:
        return self.is_a_stable and self.P.degree() < self.Q.degree()

    @cached_property
    def _float_coeffs(self):
        return (np.array([complex(sp.N(c, 30)) for c in self.P.all_coeffs()]),
                np.array([complex(sp.N(c, 30)) for c in self.Q.all_coeffs()]))

    def matrix(self, Z):
        """``R(Z) = Q(Z)⁻¹ P(Z)`` for square matrices ``Z`` (``(..., D, D)``, complex or real):
        Horner's scheme on matrices, one solve for the denominator."""
        Z = np.asarray(Z)
        p, q = (np.real_if_close(c) for c in self._float_coeffs)
        eye = np.broadcast_to(np.eye(Z.shape[-1], dtype=np.result_type(Z, p, q)), Z.shape)

        def horner(coeffs):
            out = eye * coeffs[0]
            for c in coeffs[1:]:
                out = out @ Z + eye * c
            return out
        numerator = horner(p)
        return numerator if len(q) == 1 else np.linalg.solve(horner(q), numerator)

    def amplification(self, values):
        values = np.asarray(values, dtype=complex)
        p, q = self._float_coeffs
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(np.polyval(p, values) / np.polyval(q, values))
