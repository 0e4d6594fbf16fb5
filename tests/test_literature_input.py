"""Coefficients as the literature prints them: trigonometric constants, roots of polynomials,
decimals, and inputs built to make the exact analysis blow up."""

import time

import mpmath
import pytest
import sympy as sp

import butcher
from butcher import BudgetError, TableauError, parse_number

from test_cli import run

mpmath.mp.dps = 50


def close(x, y, digits=45):
    return abs(sp.N(x, 60) - sp.N(y, 60)) < sp.Float(f"1e-{digits}")


# --- the grammar --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("cos(pi/3)", sp.Rational(1, 2)), ("sin(pi/4)", sp.sqrt(2) / 2), ("tan(pi/8)", sp.sqrt(2) - 1),
    ("cos(2*pi/5)", (sp.sqrt(5) - 1) / 4), ("sin(-pi/6)", -sp.Rational(1, 2)), ("cos(3*pi)", -1),
])
def test_trigonometric_constants_with_radical_values(text, value):
    assert sp.simplify(parse_number(text) - value) == 0


@pytest.mark.parametrize("text, exact", [
    ("cos(pi/18)", mpmath.cos(mpmath.pi / 18)), ("sin(pi/7)", mpmath.sin(mpmath.pi / 7)),
    ("tan(pi/9)", mpmath.tan(mpmath.pi / 9)), ("1/2 + sqrt(3)*cos(pi/18)/3", 0.5 + mpmath.sqrt(3) * mpmath.cos(mpmath.pi / 18) / 3),
])
def test_trigonometric_constants_are_exact_algebraic_numbers(text, exact):
    value = parse_number(text)
    assert not value.has(sp.cos, sp.sin, sp.tan)  # a root of a minimal polynomial, not a float
    assert abs(mpmath.mpf(str(sp.N(value, 60))) - exact) < mpmath.mpf("1e-48")


def test_cos_pi_over_18_is_a_root_of_its_minimal_polynomial():
    value = parse_number("cos(pi/18)")
    x = sp.Symbol("x")
    assert sp.minimal_polynomial(value, x) == 64 * x**6 - 96 * x**4 + 36 * x**2 - 3


@pytest.mark.parametrize("text", ['root("x^3 - 3*x^2 + 3/2*x - 1/6", 0.4358)', "root(x^3 - 3*x^2 + 3/2*x - 1/6, 0.44)",
                                  "root(6*y^3 - 18*y^2 + 9*y - 1, index=1)", "CRootOf(6*x**3 - 18*x**2 + 9*x - 1, 1)"])
def test_a_real_root_named_by_a_hint_or_an_index(text):
    value = parse_number(text)
    gamma = mpmath.findroot(lambda t: t**3 - 3 * t**2 + 1.5 * t - mpmath.mpf(1) / 6, 0.4358)
    assert abs(mpmath.mpf(str(sp.N(value, 60))) - gamma) < mpmath.mpf("1e-48")


@pytest.mark.parametrize("text, message", [
    ("root(x^2 + 1, 0)", "no real root"), ("root(x^2 - 1, 0)", "as near one real root as another"),
    ("root(x^2 - 2, index=2)", "index=2, but the polynomial has 2 real root"), ("root(x*y - 1, 1)", "exactly one variable"),
    ("root(x^2 - sqrt(2), 1)", "coefficients must be rational"), ("root(x^2 - 2)", r"root\(\) takes"),
    ("CRootOf(x^2 + 1, 0)", "not one of the polynomial's 0 real root"), ("cos(1)", "rational multiple of pi"),
    ("tan(pi/2)", "infinite"), ("pi", "not algebraic"), ("2*pi/3", "not algebraic"), ("sqrt(-2)", "not real"),
    ("exp(1)", "unknown function 'exp'"), ('"x"', "quoted string"), ("root('x^^2', 1)", "in the quoted polynomial"),
])
def test_bad_functions_name_the_problem(text, message):
    with pytest.raises(TableauError, match=message):
        parse_number(text, "A[1][0]")


# --- the literature's methods, typed as printed -------------------------------------------------

CROUZEIX = """
name = "crouzeix-as-printed"
reference = "M. Crouzeix (1975): gamma = 1/2 + cos(pi/18)/sqrt(3), the A-stable 3-stage order-4 SDIRK"
constants = {g = "1/2 + cos(pi/18)/sqrt(3)", d = "1/(6*(2*g - 1)^2)"}
A = [["g", "0", "0"], ["1/2 - g", "g", "0"], ["2*g", "1 - 4*g", "g"]]
b = ["d", "1 - 2*d", "d"]
"""

KVAERNO3 = """
name = "kvaerno3-by-root"
reference = "A. Kvaerno, BIT 44 (2004) 489-502: ESDIRK 3(2); g the root near 0.4358 of x^3 - 3x^2 + 3x/2 - 1/6"
constants = {g = 'root("x^3 - 3*x^2 + 3/2*x - 1/6", 0.4358)'}
A = [["0", "0", "0", "0"],
     ["g", "g", "0", "0"],
     ["-3/4 + 7/2*g - 3/2*g^2", "7/4 - 9/2*g + 3/2*g^2", "g", "0"],
     ["-1/4 + 3/2*g - 1/2*g^2", "1/4 + 7/2*g - 3/2*g^2", "1 - 6*g + 2*g^2", "g"]]
b = ["-1/4 + 3/2*g - 1/2*g^2", "1/4 + 7/2*g - 3/2*g^2", "1 - 6*g + 2*g^2", "g"]
b_hat = ["-3/4 + 7/2*g - 3/2*g^2", "7/4 - 9/2*g + 3/2*g^2", "g", "0"]
"""


def test_crouzeix_sdirk_with_cos_pi_over_18_has_order_4(tmp_path):
    path = tmp_path / "crouzeix.toml"
    path.write_text(CROUZEIX)
    tab = butcher.load(path)
    assert tab.order() == 4 and tab.structure == "SDIRK" and tab.is_a_stable
    catalogue = butcher.get("crouzeix3")  # the same method, held as a CRootOf of a cubic
    for row, other in zip(tab.A.tolist(), catalogue.A.tolist()):
        assert all(close(x, y) for x, y in zip(row, other))
    code, out, err = run("tableau", "check", str(path))
    assert code == 0 and "order 4" in out, err
    assert "note:" not in out  # exact: nothing changes to a tolerance, so nothing more to say


def test_kvaerno_method_given_by_a_root_has_its_published_orders(tmp_path):
    path = tmp_path / "kvaerno3.toml"
    path.write_text(KVAERNO3)
    tab = butcher.load(path)
    assert (tab.order(), tab.embedded_order(), tab.stage_order()) == (3, 2, 2)  # Kværnø 2004, Table 1
    assert tab.is_l_stable
    shown = tmp_path / "shown.toml"  # what 'tableau show --toml' writes (CRootOf) reads back
    code, out, _ = run("tableau", "show", str(path), "--toml")
    shown.write_text(out)
    assert butcher.load(shown).order() == 3


def test_constants_must_be_defined_before_use(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('constants = {d = "2*g", g = "1/3"}\nA = [["0", "0"], ["d", "0"]]\nb = ["0", "1"]\n')
    with pytest.raises(TableauError, match="constants.d: uses an unknown name 'g'"):
        butcher.load(path)


# --- decimals ------------------------------------------------------------------------------------

SSPRK22_STAR = 'name = "SSPRK22star"\nA = [["0", "0"], ["0.822875655532364", "0"]]\nb = ["0.392374781489287", "0.607625218510713"]\n'


def test_decimals_report_their_exact_order_and_the_order_they_approximate(tmp_path):
    """NodePy's SSPRK22star as it prints it: order 1 exactly, an order-2 method to ~1e-15."""
    path = tmp_path / "ssprk22star.toml"
    path.write_text(SSPRK22_STAR)
    tab = butcher.load(path)
    assert tab.order() == 1 and tab.order(tol=1e-12) == 2 and tab.order(tol=1e-16) == 1
    approx = tab.approximation(1e-10)
    assert 1e-16 < approx.residual < 1e-14
    assert approx.stability_function == 1 + butcher.z + butcher.z**2 / 2
    assert approx.real_stability_interval == sp.Interval(-2, 0) != tab.real_stability_interval()
    code, out, _ = run("tableau", "check", str(path))
    assert code == 0 and "order 1 exactly; order 2 to about 1e-15" in out
    assert "real stability interval to 1e-10: [-2, 0] (exactly as typed: [-2.0000000000000044, 0.0])" in out


def test_the_tolerance_order_of_an_exact_method_is_its_order():
    for name in ("rk4", "dopri5", "radau-iia-3", "gauss-2"):
        tab = butcher.get(name)
        assert tab.order(tol=1e-30) == tab.order() and tab.embedded_order(tol=1e-30) == tab.embedded_order()



@pytest.mark.parametrize("name", ["kvaerno5", "kvaerno4", "radau-iia-3", "gauss-3", "crouzeix3"])
def test_stability_to_a_tolerance_of_an_exact_method_is_its_exact_stability(name):
    """No simpler function is within tol of these R(z) (denominators past 10^6, or algebraic
    coefficients): R to tol is R, and its 50-digit analysis agrees with the exact one. (Before
    round-off was told from cancellation, kvaerno5 came out not A-stable: E(y)'s exactly
    cancelling coefficients were ±1e-50, with spurious roots near 0.)"""
    tab = butcher.get(name)
    approx = tab.approximation(1e-10)
    assert approx.stability_function == tab.stability_function()
    assert (approx.is_a_stable, approx.is_l_stable) == (tab.is_a_stable, tab.is_l_stable)
    assert approx.real_stability_interval == tab.real_stability_interval()

# --- budgets instead of hangs -------------------------------------------------------------------

BOMB = 'A = [["0", "0"], ["2^(549/706)*3^(319/353)/4900", "0"]]\nb = ["1/2", "1/2"]\n'


def test_the_exponent_bomb_answers_at_once_and_then_numerically(tmp_path):
    path = tmp_path / "bomb.toml"
    path.write_text(BOMB)
    start = time.perf_counter()
    code, out, err = run("tableau", "check", str(path))
    assert time.perf_counter() - start < 10
    assert code == 2 and err.count("\n") == 1 and "A[1][0]" in err and "budget of 64" in err and "--float" in err
    code, out, err = run("tableau", "check", str(path), "--float")
    assert code == 0 and "numerical analysis" in out and "order 1" in out
    assert "real stability interval to 1e-10: [-2.00189194491" in out  # |1 + z + a z²| ≤ 1 with a = 4.72e-4


@pytest.mark.parametrize("entries, where", [
    (["sqrt(2)/9", "sqrt(3)/9", "sqrt(5)/9", "sqrt(7)/9", "sqrt(11)/9", "sqrt(13)/9", "sqrt(17)/9"], "A[7][6]"),
    (["cos(pi/997)/9"], "A[1][0]"), (["3^(1/65)/9"], "A[1][0]"),
])
def test_number_fields_past_the_budget_are_refused_naming_the_entry(tmp_path, entries, where):
    s = len(entries) + 1
    A = [["0"] * s for _ in range(s)]
    for k, text in enumerate(entries):
        A[k + 1][k] = text
    b = ['"0"'] * (s - 1) + ['"1"']
    path = tmp_path / "big.toml"
    path.write_text("A = [" + ", ".join("[" + ", ".join(f'"{x}"' for x in row) + "]" for row in A) + "]\n"
                    f"b = [{', '.join(b)}]\n")
    start = time.perf_counter()
    with pytest.raises(BudgetError, match=rf"{where.replace('[', '.').replace(']', '.')}.*budget of 64"):
        butcher.load(path)
    assert time.perf_counter() - start < 5
    tab = butcher.load(path, exact=False)  # the numerical analysis takes it
    assert tab.approximation(1e-10).order == 1


def test_roots_of_polynomials_past_the_budget_are_refused_in_both_analyses():
    with pytest.raises(BudgetError, match="degree 72 is more than the budget of 64; analyse it numerically"):
        parse_number("root((x^8)^9 - x - 1, 1.0)")
    with pytest.raises(TableauError, match="degree 72 is more than the budget of 64$"):
        parse_number("root((x^8)^9 - x - 1, 1.0)", exact=False)


def test_the_deadline_stops_any_slow_exact_analysis_with_one_line(tmp_path, monkeypatch):
    from textlm.cli import _tableau
    monkeypatch.setattr(_tableau, "DEADLINE", 1e-3)
    path = tmp_path / "crouzeix.toml"
    path.write_text(CROUZEIX)
    for command in ("check", "show", "plot"):
        extra = ["-o", str(tmp_path / "r.png")] if command == "plot" else []
        code, _, err = run("tableau", command, str(path), *extra)
        assert code == 2 and err.count("\n") == 1 and "did not finish within 0.001 s" in err and "--float" in err
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("command", ["check", "show"])
def test_float_answers_where_the_deadline_stopped_the_exact_analysis(tmp_path, monkeypatch, command):
    """What the deadline's message offers works: --float analyses the entries rounded to 50 digits
    (Crouzeix's method: order 4 to 1e-10, A-stable), on check and on show; with --float the exact attempt has half the deadline."""
    from textlm.cli import _tableau
    monkeypatch.setattr(_tableau, "DEADLINE", 2.0)
    slow = lambda self: time.sleep(5) if self.rounding is None else None  # noqa: E731 (a slow exact field)
    monkeypatch.setattr(butcher.ButcherTableau, "_check_budget", slow)
    path = tmp_path / "crouzeix.toml"
    path.write_text(CROUZEIX)
    code, out, err = run("tableau", command, str(path), "--float")
    assert code == 0, err
    assert "numerical analysis: the exact one did not finish within 1 s" in out
    assert "order 4 to about" in out and "A-stable to 1e-10: True" in out
