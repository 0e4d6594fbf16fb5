"""The ButcherTableau type: construction, validation, parsing, files, order theory, stability."""

import json
import math
import warnings

import networkx as nx
import numpy as np
import pytest
import sympy as sp

import butcher
from butcher import ButcherTableau, TableauError, z


# --- construction and validation ---------------------------------------------------------------

def test_entries_are_exact_and_c_defaults_to_row_sums():
    tab = ButcherTableau([[0, 0], ["1/3", 0]], ["1/4", "3/4"])
    assert tab.c == (0, sp.Rational(1, 3))
    assert tab.A[1, 0] == sp.Rational(1, 3)
    tab = ButcherTableau([[0, 0], [0.5, 0]], [0.5, 0.5])  # floats are taken at their decimal value
    assert tab.A[1, 0] == sp.Rational(1, 2)


def test_immutable_hashable_comparable():
    a = ButcherTableau([[0, 0], [1, 0]], ["1/2", "1/2"], name="heun")
    b = ButcherTableau([[0, 0], ["2/2", 0]], [0.5, "0.5"], name="heun")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.name = "x"


def test_to_tensors_and_numpy():
    import torch
    coeff = butcher.get("gauss-2").to_tensors(dtype=torch.float32)
    assert coeff.A.dtype == torch.float32 and coeff.A.shape == (2, 2)
    assert coeff.c[0].item() == pytest.approx(0.5 - math.sqrt(3) / 6)
    c64 = butcher.get("gauss-2").to_numpy()
    import mpmath
    with mpmath.workdps(50):  # correctly rounded, unlike the float expression 0.5 - sqrt(3)/6
        assert c64.c[0] == float(mpmath.mpf(1) / 2 - mpmath.sqrt(3) / 6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(A=[[0, 0], [1]], b=[1, 0]), r"A row 1 has 1 entries, expected 2"),
    (dict(A=[[0, 0], []], b=[1, 0]), r"A row 1 is empty"),
    (dict(A=[], b=[]), r"A is empty"),
    (dict(A=[[0, 0], [1, 0]], b=[1]), r"b has 1 entries but A has 2 rows"),
    (dict(A=[[0, 0], [1, 0]], b=["1/2", "1/3"]), r"b sums to 5/6, not 1"),
    (dict(A=[[0, 0], ["one(2)", 0]], b=[0, 1]), r"A\[1\]\[0\].*unknown function 'one'"),
    (dict(A=[[0, 0], ["1/0", 0]], b=[0, 1]), r"division by zero"),
    (dict(A=[[0, 0], [1, 0]], b=[0, 1], c=[0]), r"c has 1 entries"),
    (dict(A=[[0, 0], ["sqrt(-1)", 0]], b=[0, 1]), r"not real"),
    (dict(A=[[0, 0], [float("nan"), 0]], b=[0, 1]), r"not finite"),
    (dict(A=[[0, 0], [True, 0]], b=[0, 1]), r"not a number"),
])
def test_malformed_tableaux_name_the_problem(kwargs, message):
    with pytest.raises(TableauError, match=message):
        ButcherTableau(**kwargs)


def test_parametric_b_sum_is_a_warning_not_an_error():
    with pytest.warns(butcher.TableauWarning, match="sums to"):
        ButcherTableau([[0, 0], ["a", 0]], ["b1", "b2"])


@pytest.mark.parametrize("text, value", [
    ("1/3", sp.Rational(1, 3)), ("-2^-1", -sp.Rational(1, 2)), ("2**3", 8), ("1e-2", sp.Rational(1, 100)),
    ("sqrt(3)/6 + 1/2", sp.sqrt(3) / 6 + sp.Rational(1, 2)), ("(1 - sqrt(2)/2)", 1 - sp.sqrt(2) / 2),
    ("3*(2+1)", 9), (".5", sp.Rational(1, 2)),
])
def test_restricted_grammar_parses_numbers(text, value):
    assert butcher.parse_number(text) == value


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/pwned')", "exp(1)", "1;2", "lambda: 1", "[1]", "1 +", "2^^3",
    "os.system", "1 if 1 else 2", "'1'", "2^(10^9)", "sqrt(2", "",
])
def test_restricted_grammar_rejects_everything_else(text):
    with pytest.raises(TableauError):
        butcher.parse_number(text)


# --- files --------------------------------------------------------------------------------------

def test_toml_and_json_round_trip(tmp_path):
    for name in ("dopri5", "gauss-2", "lobatto-iiib-3"):
        tab = butcher.get(name)
        path = tmp_path / f"{name}.toml"
        path.write_text(butcher.dumps_toml(tab))
        back = butcher.load(path)
        assert back.A == tab.A and back.b == tab.b and back.c == tab.c and back.b_hat == tab.b_hat
        jpath = tmp_path / f"{name}.json"
        jpath.write_text(json.dumps(tab.to_dict()))
        assert butcher.load(jpath).A == tab.A


@pytest.mark.parametrize("name, in_theta", [("gauss-5", True), ("radau-iia-5", True), ("tsit5", False)])
def test_catalogue_methods_written_out_read_back_within_the_budgets(tmp_path, name, in_theta, catalogue):
    """The catalogue's hardest entries: Gauss-5's nested radicals (a degree bound of 128 for a
    field of degree 8) and Radau IIA-5's (degree 24) are written as polynomials in one generator
    theta; Tsitouras' root of a sextic stays as printed (entries of about 7000 characters). Each
    reads back to the same numbers (50 digits), order and stability function. (The entries from
    the session's catalogue: on the worker that has derived them already.)"""
    tab = catalogue[name]
    path = tmp_path / f"{name}.toml"
    path.write_text(butcher.dumps_toml(tab))
    assert ("theta" in path.read_text()) == in_theta
    back = butcher.load(path)
    assert back.order() == tab.order() and back.embedded_order() == tab.embedded_order()
    assert back.stage_order() == tab.stage_order()
    for x, y in zip((*sum(back.A.tolist(), []), *back.b, *back.c), (*sum(tab.A.tolist(), []), *tab.b, *tab.c)):
        assert abs(sp.N(x - y, 60)) < 1e-50
    P, Q = (sp.Poly(part, butcher.z) for part in sp.fraction(sp.together(back.stability_function())))
    P0, Q0 = (sp.Poly(part, butcher.z) for part in sp.fraction(sp.together(tab.stability_function())))
    scale, scale0 = Q.all_coeffs()[-1], Q0.all_coeffs()[-1]  # R(0) = 1: normalise by Q(0)
    for p, p0 in ((P, P0), (Q, Q0)):
        assert p.degree() == p0.degree()
        assert all(abs(sp.N(u / scale - v / scale0, 50)) < 1e-40 for u, v in zip(p.all_coeffs(), p0.all_coeffs()))


@pytest.mark.parametrize("content, suffix, message", [
    ('A = [["0"]\nb = [1]', ".toml", "invalid TOML"),
    ('{"A": [[0]], "b": [1],}', ".json", "invalid JSON"),
    ('b = ["1"]', ".toml", "missing 'A'"),
    ('A = [["0"]]\nb = ["1"]\nB = ["1"]', ".toml", "unknown key"),
    ('A = [["0", "0"], ["1/2"]]\nb = ["0", "1"]', ".toml", "A row 1 has 1 entries"),
    ('A = [["0"]]\nb = ["1/2"]', ".toml", "b sums to 1/2"),
    ('A = [["0", "0"], ["half", "0"]]\nb = ["0", "1"]', ".toml", r"A\[1\]\[0\]: unknown name 'half'"),
    ('A = [["0"]]\nb = ["1"]\nparameters = "a"', ".toml", "'parameters' must be a list"),
    ('A = "rk4"\nb = ["1"]', ".toml", "A must be a list"),
    ('A = [["0"]]\nb = ["1"]', ".yaml", "unknown file type"),
])
def test_bad_files_give_one_clear_error(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    with pytest.raises(TableauError, match=message):
        butcher.load(path)


def test_a_file_containing_code_is_rejected_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.toml"
    payloads = [f"__import__('os').system('touch {marker}')", "__import__(os)", "exec(1)", "eval(1)",
                "open(1).read()", "().__class__"]
    for payload in payloads:
        path.write_text(f"A = [[{json.dumps(payload)}]]\nb = [\"1\"]\n")
        with pytest.raises(TableauError, match=r"A\[0\]\[0\]: cannot parse"):
            butcher.load(path)
    assert not marker.exists()
    path.write_text('A = [["__import__(os)"]]\nb = ["1"]\n')
    with pytest.raises(TableauError, match="unknown function '__import__'"):
        butcher.load(path)


def test_declared_parameters_make_a_parametric_file(tmp_path):
    path = tmp_path / "family.toml"
    path.write_text('parameters = ["a"]\nA = [["0", "0"], ["a", "0"]]\nb = ["1 - 1/(2*a)", "1/(2*a)"]\n')
    family = butcher.load(path)
    assert family.is_parametric and family.order() == 2


def test_missing_file(tmp_path):
    with pytest.raises(TableauError, match="no such file"):
        butcher.load(tmp_path / "nope.toml")


# --- rooted trees and order conditions ------------------------------------------------------------

def test_tree_counts_are_oeis_a000081():
    assert [len(butcher.trees(n)) for n in range(1, 11)] == [1, 1, 2, 4, 9, 20, 48, 115, 286, 719]


def test_trees_are_pairwise_non_isomorphic_rooted_trees():
    for n in range(1, 8):
        graphs = [butcher.as_graph(t) for t in butcher.trees(n)]
        for g in graphs:
            assert g.number_of_nodes() == n and nx.is_tree(g.to_undirected())
            nx.set_node_attributes(g, {v: v == 0 for v in g}, "root")
        for i in range(len(graphs)):
            for j in range(i + 1, len(graphs)):
                assert not nx.is_isomorphic(graphs[i], graphs[j], node_match=lambda a, b: a["root"] == b["root"])


def test_density_and_symmetry_satisfy_the_counting_identity():
    # α(t) = n!/(σ(t)γ(t)) counts the increasing labellings of t; every increasing (recursive)
    # tree on n labelled nodes has exactly one shape, and there are (n−1)! of them.
    for n in range(1, 10):
        total = sum(math.factorial(n) // (butcher.symmetry(t) * butcher.density(t)) for t in butcher.trees(n))
        assert total == math.factorial(n - 1)


def test_parametric_two_stage_family_gives_the_known_order_two_family():
    a, w = sp.symbols("a w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", butcher.TableauWarning)
        family = ButcherTableau([[0, 0], ["a", 0]], ["1 - w", "w"])
    assert family.order() == 1  # order 1 for every parameter value
    assert family.order_conditions(1) == []
    solutions = sp.solve(family.order_conditions(2), [w], dict=True)
    assert solutions == [{w: 1 / (2 * a)}]
    # the members are midpoint (a = 1/2), Heun (a = 1) and Ralston (a = 2/3)
    for value, name in ((sp.Rational(1, 2), "midpoint"), (1, "heun"), (sp.Rational(2, 3), "ralston2")):
        member = family.subs({a: value, w: solutions[0][w].subs(a, value)})
        assert member.A == butcher.get(name).A and member.b == butcher.get(name).b
        assert member.order() == 2
    # order 3 is impossible in this family: the order-3 conditions have no solution
    assert sp.solve(family.order_conditions(3), [a, w], dict=True) == []


def test_order_conditions_of_rk4_hold_and_fail_beyond():
    rk4 = butcher.get("rk4")
    assert rk4.order_conditions(4) == []  # every condition up to order 4 holds identically
    failing = rk4.order_conditions(5)
    assert failing and all(eq is sp.false for eq in failing)


# --- stability function and its properties ---------------------------------------------------------

def test_rk4_stability_function_is_the_taylor_polynomial():
    R = butcher.get("rk4").stability_function()
    assert sp.expand(R - sum(z**k / sp.factorial(k) for k in range(5))) == 0


def test_stability_function_of_implicit_methods_is_the_pade_approximant():
    # Gauss s: (s, s) Padé approximant; Radau IIA s: (s−1, s) Padé (Ehle 1969)
    for s in (1, 2, 3):
        R = butcher.get(f"gauss-{s}").stability_function()
        num, den = sp.fraction(sp.cancel(R))
        assert sp.Poly(num, z).degree() == s and sp.Poly(den, z).degree() == s
        assert sp.series(R - sp.exp(z), z, 0, 2 * s + 1).removeO() == 0
    assert butcher.get("backward-euler").stability_function() == 1 / (1 - z)
    assert butcher.get("radau-iia-2").stability_function().equals((1 + z / 3) / (1 - 2 * z / 3 + z**2 / 6))


def test_known_stability_constants():
    assert butcher.get("euler").real_stability_interval() == sp.Interval(-2, 0)
    assert butcher.get("rk4").imaginary_stability_interval() == sp.Interval(-2 * sp.sqrt(2), 2 * sp.sqrt(2))
    assert float(butcher.get("rk4").real_stability_interval().inf) == pytest.approx(-2.785293563405282, abs=1e-12)
    assert butcher.get("euler").imaginary_stability_interval() == sp.Interval(0, 0)
    assert butcher.get("backward-euler").real_stability_interval() == sp.Interval(-sp.oo, 0)
    # Heun / midpoint: R = 1 + z + z²/2, real interval [−2, 0]; SSPRK(10,4): the large interval −13.9…
    assert butcher.get("midpoint").real_stability_interval() == sp.Interval(-2, 0)
    assert float(butcher.get("ssprk3").real_stability_interval().inf) == pytest.approx(-2.5127453266, abs=1e-9)
    assert float(butcher.get("ssprk3").imaginary_stability_interval().sup) == pytest.approx(math.sqrt(3), abs=1e-12)


def test_a_and_l_stability(catalogue):
    for s in range(1, 6):
        assert catalogue[f"gauss-{s}"].is_a_stable and not catalogue[f"gauss-{s}"].is_l_stable
        assert catalogue[f"radau-iia-{s}"].is_l_stable
        assert catalogue[f"radau-ia-{s}"].is_l_stable
    for s in range(2, 6):
        assert catalogue[f"lobatto-iiia-{s}"].is_a_stable and not catalogue[f"lobatto-iiia-{s}"].is_l_stable
        assert catalogue[f"lobatto-iiic-{s}"].is_l_stable
    for name in ("alexander2", "alexander3", "sdirk4", "tr-bdf2", "kvaerno3", "kvaerno5", "backward-euler"):
        assert catalogue[name].is_l_stable, name
    for name in ("crouzeix2", "crouzeix3", "kvaerno4", "trapezoid", "implicit-midpoint"):
        assert catalogue[name].is_a_stable and not catalogue[name].is_l_stable, name
    for name in ("euler", "rk4", "dopri5", "tsit5"):
        assert not catalogue[name].is_a_stable


@pytest.mark.parametrize("theta, a_stable, l_stable", [
    ("1/3", False, False), ("1/2", True, False), ("2/3", True, False), ("1", True, True), ("0", False, False)])
def test_a_and_l_stability_of_the_theta_method(theta, a_stable, l_stable):
    """The θ-method (A = [[θ]], b = [1]): R(z) = (1 + (1 − θ)z)/(1 − θz) is A-stable exactly for
    θ ≥ 1/2 (Hairer & Wanner II, §IV.3) and L-stable only at θ = 1 (R(∞) = −(1 − θ)/θ)."""
    tab = ButcherTableau([[theta]], [1])
    assert (tab.is_a_stable, tab.is_l_stable) == (a_stable, l_stable)


@pytest.mark.parametrize("gamma, a_stable, l_stable", [
    ("1/4", True, False), ("1/5", False, False), ("(3 + sqrt(3))/6", True, False), ("(3 - sqrt(3))/6", False, False),
    ("1 - sqrt(2)/2", True, True), ("1 + sqrt(2)/2", True, True)])
def test_a_and_l_stability_of_two_stage_sdirk_with_equal_weights(gamma, a_stable, l_stable):
    """A = [[γ, 0], [1 − 2γ, γ]], b = [1/2, 1/2], order 2 for every γ: A-stable exactly for γ ≥ 1/4
    (Hairer & Wanner II, §IV.6; the order-3 member γ = (3 + √3)/6 is, (3 − √3)/6 is not), and
    R(∞) = (2γ² − 4γ + 1)/(2γ²) vanishes at γ = 1 ± √2/2: L-stable there."""
    tab = ButcherTableau([[gamma, 0], [f"1 - 2*({gamma})", gamma]], ["1/2", "1/2"])
    assert (tab.is_a_stable, tab.is_l_stable) == (a_stable, l_stable)


def test_a_pole_left_of_the_imaginary_axis_is_not_a_stable():
    """R = 1/(1 + z) has |R(iy)| ≤ 1 on the whole axis, but a pole at −1: not A-stable (Routh's
    criterion on Q(−z), exactly), while R = 1/(1 − z) is (backward Euler's shape)."""
    from butcher._stability import StabilityAnalysis, _is_hurwitz
    one = sp.Poly(1, z, domain=sp.QQ)
    left, right = StabilityAnalysis(one, sp.Poly(1 + z, z)), StabilityAnalysis(one, sp.Poly(1 - z, z))
    assert left.imaginary_interval == right.imaginary_interval == sp.Interval(-sp.oo, sp.oo)
    assert not left.is_a_stable and right.is_a_stable and right.is_l_stable
    # Routh: z² + z + 1 (roots −1/2 ± i√3/2) and (z + 1)(2z² + z + 1) are Hurwitz; z² + 1 (±i),
    # z² − z + 1, z³ + z² + z + 2 (a₁a₂ < a₀a₃: a pair right of the axis) and z (a root at 0) are not
    assert _is_hurwitz([1, 1, 1]) and _is_hurwitz([2, 3, 2, 1])
    assert not any(_is_hurwitz(c) for c in ([1, 0, 1], [1, -1, 1], [1, 1, 1, 2], [1, 0]))


EXPLICIT_SAMPLE = ["euler", "midpoint", "heun", "ralston3", "kutta3", "ssprk3", "ssprk104", "rk4", "rk38",
                   "gill", "bs3", "rkf45", "cash-karp", "dopri5", "tsit5", "vern6", "vern7", "vern8", "dp8"]


@pytest.mark.parametrize("name", EXPLICIT_SAMPLE + ["crouzeix3", "lobatto-iiic-3", "gauss-3"])
def test_intervals_agree_with_dense_sampling_of_the_amplification(name, catalogue):
    """An independent check: |R| evaluated in floating point on a fine grid of each axis."""
    tab = catalogue[name]
    real, imag = tab.real_stability_interval(), tab.imaginary_stability_interval()
    lo, beta = float(real.inf), float(imag.sup)
    x = -np.linspace(1e-6, 30, 300001)
    inside = tab.amplification(x) <= 1 + 1e-12
    first_out = x[np.argmin(inside)] if not inside.all() else -np.inf
    assert first_out == pytest.approx(lo, abs=2e-4) if math.isfinite(lo) else first_out == -np.inf
    y = np.linspace(1e-6, 30, 300001)
    amplitude = tab.amplification(1j * y)
    if beta == 0:
        # |R(iy)| − 1 = O(y^(p+1)) is tiny near 0, but it must be positive somewhere close by
        assert (amplitude[y < 1] > 1 + 1e-14).any()
    else:
        inside = amplitude <= 1 + 1e-12
        first_out = y[np.argmin(inside)] if not inside.all() else np.inf
        assert first_out == pytest.approx(beta, abs=2e-4) if math.isfinite(beta) else first_out == np.inf


def test_amplification_and_simulation_agree_for_the_test_equation():
    """Integrating y' = λy with the tableau (a generic float stepper) grows iff |R(hλ)| > 1."""
    for name in ("euler", "rk4", "dopri5", "gauss-2", "radau-iia-3"):
        tab = butcher.get(name)
        A, b, _, _ = tab.to_numpy()
        s = tab.stages
        for hl in (-1.9, -2.1, -2.7, -2.9, 2.5j, 2.9j, -50.0):
            # one step on y' = λy: K = λ(y + h A K) → (I − hλA) K = λ y 𝟙
            K = np.linalg.solve(np.eye(s) - hl * A, np.ones(s))
            growth = abs(1 + hl * (b @ K))
            assert growth == pytest.approx(float(tab.amplification(hl)), rel=1e-9)
            y = 1.0 + 0j
            for _ in range(200):
                y = y * (1 + hl * (b @ K))
            amplification = float(tab.amplification(hl))
            if abs(amplification - 1) > 0.02:  # far enough from the boundary for 200 steps to tell
                assert (not np.isfinite(y) or abs(y) > 10) == (amplification > 1)


@pytest.mark.parametrize("name", ["euler", "rk4", "gauss-2", "radau-iia-3", "tsit5", "sdirk4"])
def test_stability_matrix_is_R_applied_to_the_eigenvalues(name):
    """R(Z) for a diagonalisable Z = V diag(μ) V⁻¹ is V diag(R(μ)) V⁻¹; the scalar R comes from
    the exact rational function, independently of the matrix Horner scheme."""
    tableau = butcher.get(name)
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(2, 5, 5)) * 0.6
    R = tableau.stability_function()

    def scalar(mu):
        return complex(sp.N(R.subs(z, sp.Float(mu.real, 30) + sp.I * sp.Float(mu.imag, 30)), 30))
    out = tableau.stability_matrix(Z)
    for k in range(2):
        mu, V = np.linalg.eig(Z[k])
        expected = V @ np.diag([scalar(m) for m in mu]) @ np.linalg.inv(V)
        assert np.abs(out[k] - expected).max() < 1e-11


@pytest.mark.parametrize("name", ["euler", "rk4", "dopri5", "ssprk104", "radau-iia-3"])
def test_the_plot_window_reaches_the_exact_stability_intervals(name):
    """The picture sizes itself from |R| in floats along both axes (the exact intervals of a large
    algebraic tableau can take minutes): that reach is the exact interval's end to the grid's 1/200
    (0 for an unbounded or empty one)."""
    from butcher._plot import _axis_reach
    tab = butcher.get(name)
    for direction, end in ((-1, -tab.real_stability_interval().inf), (1j, tab.imaginary_stability_interval().sup)):
        expected = 0.0 if end == sp.oo else float(end)
        assert expected - 0.005 <= _axis_reach(tab, direction) <= expected

