"""Cross-checks of the exact machinery against independent, naive computations."""

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import butcher
from butcher import ButcherTableau, z

fractions = st.fractions(min_value=-2, max_value=2, max_denominator=6)


@st.composite
def explicit_tableaux(draw):
    s = draw(st.integers(2, 4))
    A = [[0] * s for _ in range(s)]
    for i in range(s):
        for j in range(i):
            A[i][j] = draw(fractions)
    b = [draw(fractions) for _ in range(s - 1)]
    b.append(1 - sum(b))
    return ButcherTableau(A, b)


def naive_elementary_weight(tab, tree):
    """Φ(t) from the textbook recursion with plain SymPy matrices (no domains, no memo)."""
    A = sp.Matrix(tab.A)

    def g(t):
        v = sp.ones(tab.stages, 1)
        for child in t:
            v = v.multiply_elementwise(A * g(child))
        return v
    return sp.expand((sp.Matrix([tab.b]) * g(tree))[0])


@settings(max_examples=40, deadline=None)
@given(explicit_tableaux())
def test_exact_engine_agrees_with_naive_sympy(tab):
    for n in range(1, 5):
        for tree in butcher.trees(n):
            assert tab.elementary_weight(tree) == naive_elementary_weight(tab, tree)
    assert tab.order(6) == tab.order(6, every_tree=True)
    # explicit: R(z) = 1 + Σ_k bᵀ A^(k−1) 𝟙 z^k
    A, b, one = sp.Matrix(tab.A), sp.Matrix([tab.b]), sp.ones(tab.stages, 1)
    expected = 1 + sum((b * A ** (k - 1) * one)[0] * z**k for k in range(1, tab.stages + 1))
    assert sp.expand(tab.stability_function() - expected) == 0


def test_stability_function_matches_its_definition_for_implicit_methods():
    for name in ("gauss-2", "radau-iia-3", "lobatto-iiic-3", "alexander2", "sdirk4", "kvaerno3"):
        tab = butcher.get(name)
        A, b, _, _ = tab.to_numpy()
        s = tab.stages
        for value in (-0.7 + 0.3j, -3.0, 1.5j, 0.2):
            direct = 1 + value * b @ np.linalg.solve(np.eye(s) - value * A, np.ones(s))
            assert complex(tab.stability_function().subs(z, value).evalf(30)) == pytest.approx(direct, rel=1e-12)


def _integrate(tab, f, y0, T, steps):
    """Generic float Runge–Kutta stepper; implicit stages solved by fixed-point iteration to
    round-off (the step sizes here make it a contraction)."""
    A, b, _, _ = tab.to_numpy()
    s, h, y = tab.stages, T / steps, np.array(y0, dtype=float)
    for _ in range(steps):
        K = np.tile(f(y), (s, 1))
        if tab.is_explicit:
            for i in range(1, s):
                K[i] = f(y + h * A[i, :i] @ K[:i])
        else:
            for _ in range(100):
                new = np.array([f(y + h * A[i] @ K) for i in range(s)])
                done = np.abs(new - K).max() <= 1e-16 * (1 + np.abs(K).max())
                K = new
                if done:
                    break
        y = y + h * b @ K
    return y


def _field(y):
    """A generic nonlinear field: every elementary differential is nonzero, so no method
    converges faster than its order by luck (a linear or Riccati test problem would let them)."""
    return np.array([y[1] * y[2] + np.sin(y[0]), np.cos(y[2]) - y[0] * y[1], 0.5 * y[0] ** 2 - y[2]])


@pytest.fixture(scope="module")
def reference():
    # an eighth-order method with 20× more steps than any test run: error far below theirs
    return _integrate(butcher.get("dp8"), _field, np.array([0.3, -0.2, 0.5]), 1.0, 800)


@pytest.mark.parametrize("name", ["euler", "midpoint", "heun", "ralston3", "kutta3", "ssprk3", "rk4", "rk38",
                                  "gill", "ralston4", "bs3", "rkf45", "cash-karp", "dopri5", "butcher6",
                                  "implicit-midpoint", "trapezoid", "gauss-2", "radau-iia-2", "radau-ia-2",
                                  "lobatto-iiic-3", "alexander3", "crouzeix3"])
def test_measured_convergence_order_equals_the_derived_order(name, reference):
    tab = butcher.get(name)
    p = tab.order()
    base = {1: 40, 2: 20, 3: 16, 4: 10, 5: 8, 6: 8}[p]
    errors = [np.abs(_integrate(tab, _field, np.array([0.3, -0.2, 0.5]), 1.0, base * 2**k) - reference).max()
              for k in range(3)]
    slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert slopes[-1] == pytest.approx(p, abs=0.3), (errors, slopes)
