"""Every catalogue entry: derived properties equal what its literature reference states."""

import numpy as np
import pytest
import sympy as sp

import butcher


def test_catalogue_is_large_and_covers_the_required_methods():
    names = butcher.names()
    assert len(names) >= 45
    required = ["euler", "midpoint", "heun", "ralston2", "ralston3", "kutta3", "ssprk3", "ssprk104", "rk4",
                "rk38", "bs3", "rkf45", "cash-karp", "dopri5", "tsit5", "dp8", "vern8", "backward-euler",
                "implicit-midpoint", "trapezoid", "tr-bdf2", "alexander2", "alexander3", "kvaerno4"]
    for name in required:
        assert name in names
    for family in ("gauss", "radau-ia", "radau-iia"):
        for s in range(1, 6):
            assert f"{family}-{s}" in names
    for family in ("lobatto-iiia", "lobatto-iiib", "lobatto-iiic"):
        for s in range(2, 6):
            assert f"{family}-{s}" in names
    assert butcher.get("heun") == butcher.get("ssprk2")  # aliases resolve to the same entry


@pytest.mark.parametrize("name", butcher.names())
def test_entry_matches_its_reference(name, catalogue):
    entry, tab = butcher.entry(name), catalogue[name]
    assert entry.reference and tab.reference == entry.reference
    assert tab.order() == entry.order
    assert tab.embedded_order() == entry.embedded_order
    if entry.stage_order is not None:
        assert tab.stage_order() == entry.stage_order
    # exact b sums to one and the float conversion is faithful
    arrays = tab.to_numpy()
    assert abs(arrays.b.sum() - 1) < 1e-13
    assert np.all(np.isfinite(arrays.A))


@pytest.mark.parametrize("name", [n for n in butcher.names() if not n.startswith(("gauss-4", "gauss-5", "radau"))])
def test_simplifying_assumption_shortcut_agrees_with_every_tree(name, catalogue):
    tab = catalogue[name]
    assert tab.order(every_tree=True) == tab.order()
    if tab.has_embedded:
        assert tab.embedded_order(every_tree=True) == tab.embedded_order()


def test_collocation_families_have_their_classical_orders(catalogue):
    for s in range(1, 6):
        assert catalogue[f"gauss-{s}"].order() == 2 * s
        assert catalogue[f"radau-iia-{s}"].order() == 2 * s - 1
        assert catalogue[f"radau-ia-{s}"].order() == 2 * s - 1
    for s in range(2, 6):
        for kind in ("iiia", "iiib", "iiic"):
            assert catalogue[f"lobatto-{kind}-{s}"].order() == 2 * s - 2


def test_generated_nodes_are_the_quadrature_nodes():
    # Gauss nodes: roots of the shifted Legendre polynomial; c = 1/2 ± √3/6 for s = 2
    assert butcher.nodes("gauss", 2) == [sp.Rational(1, 2) - sp.sqrt(3) / 6, sp.Rational(1, 2) + sp.sqrt(3) / 6]
    assert butcher.nodes("radau2a", 3)[-1] == 1 and butcher.nodes("radau1a", 3)[0] == 0
    lobatto = butcher.nodes("lobatto", 4)
    assert lobatto[0] == 0 and lobatto[-1] == 1
    # Gauss–Legendre 2: the textbook coefficients (Hairer & Wanner II, Table IV.5.1)
    g2 = butcher.get("gauss-2")
    r3 = sp.sqrt(3)
    expected = sp.Matrix([[sp.Rational(1, 4), sp.Rational(1, 4) - r3 / 6], [sp.Rational(1, 4) + r3 / 6, sp.Rational(1, 4)]])
    assert sp.simplify(g2.A - expected) == sp.zeros(2, 2)
    # Radau IIA 2: [[5/12, −1/12], [3/4, 1/4]]
    assert butcher.get("radau-iia-2").A == sp.Matrix([[sp.Rational(5, 12), -sp.Rational(1, 12)],
                                                      [sp.Rational(3, 4), sp.Rational(1, 4)]])
    # Lobatto IIIC 3 (Hairer & Wanner II, Table IV.5.9)
    assert butcher.get("lobatto-iiic-3").A == sp.Matrix([["1/6", "-1/3", "1/6"], ["1/6", "5/12", "-1/12"],
                                                         ["1/6", "2/3", "1/6"]]).applyfunc(sp.Rational)


def test_structure_classification(catalogue):
    assert catalogue["rk4"].structure == "explicit"
    assert catalogue["gauss-2"].structure == "implicit"
    assert catalogue["alexander2"].structure == "SDIRK"
    assert catalogue["kvaerno4"].structure == "ESDIRK"
    assert catalogue["lobatto-iiib-2"].structure == "DIRK"
    assert catalogue["dopri5"].is_fsal and catalogue["bs3"].is_fsal and not catalogue["rk4"].is_fsal
    assert catalogue["radau-iia-3"].is_stiffly_accurate and not catalogue["gauss-3"].is_stiffly_accurate
    # Lobatto IIIB breaks the row-sum condition; the tableau keeps c and says so
    assert catalogue["lobatto-iiib-2"].c_mismatch and catalogue["lobatto-iiib-2"].notes
    assert not catalogue["rk4"].c_mismatch


def test_principal_error_norms_match_the_literature(catalogue):
    # Dormand & Prince (1980): ‖τ⁽⁶⁾‖₂ = 3.99e-4 for their 5(4) pair; classical RK4: 1.45e-2
    # (Butcher, Numerical Methods for ODEs, 2016, §32).
    assert catalogue["dopri5"].principal_error_norm() == pytest.approx(3.99e-4, rel=2e-3)
    assert catalogue["rk4"].principal_error_norm() == pytest.approx(1.45e-2, rel=3e-3)


def test_unknown_name_lists_close_matches():
    with pytest.raises(butcher.UnknownMethodError, match="dopri5"):
        butcher.get("dopri")
