"""The catalogue of named methods.

Each method is a function whose docstring gives a one-line description and its literature
reference, registered with the properties *the reference states* (order, embedded order, stage
order). Those statements are claims to check, not data the tableau uses: every property of a
tableau is derived from its coefficients, and the test suite checks that each derived value equals
the stated one.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import sympy as sp

from ._families import _FAMILIES, family
from ._tableau import ButcherTableau

__all__ = ["get", "names", "entry", "Entry", "UnknownMethodError"]

S = sp.sqrt


class UnknownMethodError(LookupError):
    """No method of that name in the catalogue; the message lists close matches."""

    def __str__(self):
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """A catalogue entry: how to build the method and what its reference says about it."""

    name: str
    build: Callable[[], ButcherTableau]
    description: str
    reference: str
    order: int
    embedded_order: int | None = None
    stage_order: int | None = None
    aliases: tuple[str, ...] = ()


_ENTRIES: dict[str, Entry] = {}
_ALIASES: dict[str, str] = {}


def _register(entry: Entry) -> None:
    for key in (entry.name, *entry.aliases):
        if key in _ENTRIES or key in _ALIASES:
            raise RuntimeError(f"duplicate catalogue name {key!r}")
    _ENTRIES[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name


def method(name: str, *, order: int, embedded_order: int | None = None, stage_order: int | None = None,
           aliases: tuple[str, ...] = ()):
    """Register the decorated builder; its docstring is ``description\\n\\nreference``."""
    def decorate(build):
        doc = inspect.cleandoc(build.__doc__ or "")
        description, _, reference = doc.partition("\n\n")
        if not reference:
            raise RuntimeError(f"catalogue entry {name!r} has no reference in its docstring")
        _register(Entry(name, build, description.strip(), " ".join(reference.split()), order,
                        embedded_order, stage_order, aliases))
        return build
    return decorate


def explicit(rows, b, b_hat=None, c=None):
    """An explicit tableau from its strictly-lower rows (row ``i`` has ``i`` entries)."""
    s = len(b)
    rows = [[]] + [list(r) for r in rows] if len(rows) == s - 1 else [list(r) for r in rows]
    A = [r + [0] * (s - len(r)) for r in rows]
    return A, b, b_hat, c


def names() -> list[str]:
    """The canonical names of all catalogue methods, in catalogue order."""
    return list(_ENTRIES)


def entry(name: str) -> Entry:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _ENTRIES:
        # 0.7: a typo's neighbours, not any name sharing a few letters ('nosuchmethod' → 'norsett3')
        close = list(dict.fromkeys(difflib.get_close_matches(key, [*_ENTRIES, *_ALIASES], n=5, cutoff=0.7)))
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownMethodError(f"unknown method {name!r}{hint} (`odernn tableau list` shows all "
                                 f"{len(_ENTRIES)})")
    return _ENTRIES[key]


@lru_cache(maxsize=None)
def get(name: str) -> ButcherTableau:
    """The named method as an exact :class:`ButcherTableau` (aliases accepted).

    >>> get("rk4").order()
    4
    """
    e = entry(name)
    built = e.build()
    exact = None
    if isinstance(built, ButcherTableau):
        A, b, c, b_hat, exact = built.A.tolist(), built.b, built.c, built.b_hat, built._exact
    else:
        A, b, b_hat, c = built
    return ButcherTableau(A, b, c, b_hat, name=e.name, description=e.description, reference=e.reference,
                          _exact=exact)


# ---------------------------------------------------------------------------------------------
# Explicit methods
# ---------------------------------------------------------------------------------------------

@method("euler", order=1, stage_order=1, aliases=("forward-euler", "explicit-euler", "fe"))
def _euler():
    """Forward (explicit) Euler method.

    L. Euler, Institutionum calculi integralis, vol. 1 (1768), §650; Hairer, Nørsett & Wanner,
    Solving ODEs I, §I.7.
    """
    return explicit([], [1])


@method("midpoint", order=2, stage_order=1, aliases=("explicit-midpoint", "modified-euler"))
def _midpoint():
    """Explicit midpoint method (Runge's second-order method).

    C. Runge, Über die numerische Auflösung von Differentialgleichungen, Math. Ann. 46 (1895)
    167–178.
    """
    return explicit([["1/2"]], [0, 1])


@method("heun", order=2, stage_order=1, aliases=("heun2", "explicit-trapezoid", "ssprk2", "ssprk22"))
def _heun():
    """Heun's second-order method (explicit trapezoidal rule); also the optimal SSPRK(2,2).

    K. Heun, Neue Methode zur approximativen Integration der Differentialgleichungen einer
    unabhängigen Veränderlichen, Z. Math. Phys. 45 (1900) 23–38; C.-W. Shu & S. Osher, J. Comput.
    Phys. 77 (1988) 439–471.
    """
    return explicit([[1]], ["1/2", "1/2"])


@method("heun-euler", order=2, embedded_order=1, stage_order=1)
def _heun_euler():
    """Heun–Euler 2(1) pair: Heun's method with forward Euler as the embedded error estimator.

    E. Hairer, S. P. Nørsett & G. Wanner, Solving ODEs I, 2nd ed., Springer (1993), §II.4.
    """
    return explicit([[1]], ["1/2", "1/2"], b_hat=[1, 0])


@method("ralston2", order=2, stage_order=1)
def _ralston2():
    """Ralston's second-order method with minimum truncation-error bound.

    A. Ralston, Runge–Kutta methods with minimum error bounds, Math. Comp. 16 (1962) 431–437.
    """
    return explicit([["2/3"]], ["1/4", "3/4"])


@method("ralston3", order=3, stage_order=1)
def _ralston3():
    """Ralston's third-order method with minimum truncation-error bound.

    A. Ralston, Runge–Kutta methods with minimum error bounds, Math. Comp. 16 (1962) 431–437.
    """
    return explicit([["1/2"], [0, "3/4"]], ["2/9", "1/3", "4/9"])


@method("heun3", order=3, stage_order=1)
def _heun3():
    """Heun's third-order method.

    K. Heun, Z. Math. Phys. 45 (1900) 23–38; Hairer, Nørsett & Wanner, Solving ODEs I, Table II.1.1.
    """
    return explicit([["1/3"], [0, "2/3"]], ["1/4", 0, "3/4"])


@method("kutta3", order=3, stage_order=1, aliases=("rk3",))
def _kutta3():
    """Kutta's third-order method.

    W. Kutta, Beitrag zur näherungsweisen Integration totaler Differentialgleichungen, Z. Math.
    Phys. 46 (1901) 435–453.
    """
    return explicit([["1/2"], [-1, 2]], ["1/6", "2/3", "1/6"])


@method("nystrom3", order=3, stage_order=1)
def _nystrom3():
    """Nyström's third-order method.

    E. J. Nyström, Über die numerische Integration von Differentialgleichungen, Acta Soc. Sci.
    Fennicae 50 (1925) 1–55; Hairer, Nørsett & Wanner, Solving ODEs I, §II.1.
    """
    return explicit([["2/3"], [0, "2/3"]], ["1/4", "3/8", "3/8"])


@method("ssprk3", order=3, stage_order=1, aliases=("ssprk33", "shu-osher"))
def _ssprk3():
    """Optimal three-stage strong-stability-preserving method SSPRK(3,3), SSP coefficient 1.

    C.-W. Shu & S. Osher, Efficient implementation of essentially non-oscillatory shock-capturing
    schemes, J. Comput. Phys. 77 (1988) 439–471.
    """
    return explicit([[1], ["1/4", "1/4"]], ["1/6", "1/6", "2/3"])


@method("ssprk43", order=3, stage_order=1)
def _ssprk43():
    """Optimal four-stage third-order SSP method SSPRK(4,3), SSP coefficient 2.

    J. F. B. M. Kraaijevanger, Contractivity of Runge–Kutta methods, BIT 31 (1991) 482–528;
    R. J. Spiteri & S. J. Ruuth, SIAM J. Numer. Anal. 40 (2002) 469–491.
    """
    return explicit([["1/2"], ["1/2", "1/2"], ["1/6", "1/6", "1/6"]], ["1/6", "1/6", "1/6", "1/2"])


@method("ssprk104", order=4, stage_order=1, aliases=("ssprk10-4",))
def _ssprk104():
    """Ten-stage fourth-order SSP method SSPRK(10,4), SSP coefficient 6, rational coefficients.

    D. I. Ketcheson, Highly efficient strong stability-preserving Runge–Kutta methods with
    low-storage implementations, SIAM J. Sci. Comput. 30 (2008) 2113–2136.
    """
    sixth, fifteenth = sp.Rational(1, 6), sp.Rational(1, 15)
    rows = []
    for i in range(1, 10):
        if i <= 4:
            rows.append([sixth] * i)
        else:
            rows.append([fifteenth] * 5 + [sixth] * (i - 5))
    return explicit(rows, [sp.Rational(1, 10)] * 10)


@method("rk4", order=4, stage_order=1, aliases=("classical-rk4", "rk44"))
def _rk4():
    """The classical fourth-order Runge–Kutta method.

    W. Kutta, Beitrag zur näherungsweisen Integration totaler Differentialgleichungen, Z. Math.
    Phys. 46 (1901) 435–453.
    """
    return explicit([["1/2"], [0, "1/2"], [0, 0, 1]], ["1/6", "1/3", "1/3", "1/6"])


@method("rk38", order=4, stage_order=1, aliases=("three-eighths", "3/8-rule"))
def _rk38():
    """Kutta's 3/8 rule, fourth order.

    W. Kutta, Z. Math. Phys. 46 (1901) 435–453.
    """
    return explicit([["1/3"], ["-1/3", 1], [1, -1, 1]], ["1/8", "3/8", "3/8", "1/8"])


@method("gill", order=4, stage_order=1, aliases=("runge-kutta-gill",))
def _gill():
    """Gill's fourth-order method (low-storage variant of RK4, coefficients in √2).

    S. Gill, A process for the step-by-step integration of differential equations in an automatic
    digital computing machine, Proc. Cambridge Philos. Soc. 47 (1951) 96–108.
    """
    r = S(2)
    return explicit([["1/2"], [(r - 1) / 2, (2 - r) / 2], [0, -r / 2, 1 + r / 2]],
                    ["1/6", (2 - r) / 6, (2 + r) / 6, "1/6"])


@method("ralston4", order=4, stage_order=1)
def _ralston4():
    """Ralston's fourth-order method with minimum truncation-error bound (coefficients in √5).

    A. Ralston, Runge–Kutta methods with minimum error bounds, Math. Comp. 16 (1962) 431–437.
    """
    r = S(5)
    return explicit(
        [["2/5"],
         [(-2889 + 1428 * r) / 1024, (3785 - 1620 * r) / 1024],
         [(-3365 + 2094 * r) / 6040, (-975 - 3046 * r) / 2552, (467040 + 203968 * r) / 240845]],
        [(263 + 24 * r) / 1812, (125 - 1000 * r) / 3828, (3426304 + 1661952 * r) / 5924787, (30 - 4 * r) / 123])


@method("merson", order=4, embedded_order=3, stage_order=1, aliases=("merson43", "kutta-merson"))
def _merson():
    """Kutta–Merson 4(3) pair (the embedded estimate is fifth order only for linear problems).

    R. H. Merson, An operational method for the study of integration processes, Proc. Symp. Data
    Processing, Weapons Research Establishment, Salisbury, Australia (1957) 110–125.
    """
    return explicit([["1/3"], ["1/6", "1/6"], ["1/8", 0, "3/8"], ["1/2", 0, "-3/2", 2]],
                    ["1/6", 0, 0, "2/3", "1/6"], b_hat=["1/10", 0, "3/10", "2/5", "1/5"])


@method("zonneveld", order=4, embedded_order=3, stage_order=1, aliases=("zonneveld43",))
def _zonneveld():
    """Zonneveld's 4(3) pair.

    J. A. Zonneveld, Automatic numerical integration, Math. Centre Tracts 8, Amsterdam (1964).
    """
    return explicit([["1/2"], [0, "1/2"], [0, 0, 1], ["5/32", "7/32", "13/32", "-1/32"]],
                    ["1/6", "1/3", "1/3", "1/6", 0], b_hat=["-1/2", "7/3", "7/3", "13/6", "-16/3"])


@method("bs3", order=3, embedded_order=2, stage_order=1, aliases=("bogacki-shampine", "bs32", "ode23"))
def _bs3():
    """Bogacki–Shampine 3(2) pair, FSAL (MATLAB's ode23).

    P. Bogacki & L. F. Shampine, A 3(2) pair of Runge–Kutta formulas, Appl. Math. Lett. 2 (1989)
    321–325.
    """
    return explicit([["1/2"], [0, "3/4"], ["2/9", "1/3", "4/9"]],
                    ["2/9", "1/3", "4/9", 0], b_hat=["7/24", "1/4", "1/3", "1/8"])


@method("rkf45", order=4, embedded_order=5, stage_order=1, aliases=("fehlberg45", "rkf"))
def _rkf45():
    """Runge–Kutta–Fehlberg 4(5) pair: fourth-order solution, fifth-order embedded estimate.

    E. Fehlberg, Low-order classical Runge–Kutta formulas with stepsize control and their
    application to some heat transfer problems, NASA Technical Report R-315 (1969).
    """
    return explicit(
        [["1/4"], ["3/32", "9/32"], ["1932/2197", "-7200/2197", "7296/2197"],
         ["439/216", -8, "3680/513", "-845/4104"], ["-8/27", 2, "-3544/2565", "1859/4104", "-11/40"]],
        ["25/216", 0, "1408/2565", "2197/4104", "-1/5", 0],
        b_hat=["16/135", 0, "6656/12825", "28561/56430", "-9/50", "2/55"])


@method("cash-karp", order=5, embedded_order=4, stage_order=1, aliases=("ck5", "cashkarp"))
def _cash_karp():
    """Cash–Karp 5(4) pair.

    J. R. Cash & A. H. Karp, A variable order Runge–Kutta method for initial value problems with
    rapidly varying right-hand sides, ACM Trans. Math. Softw. 16 (1990) 201–222.
    """
    return explicit(
        [["1/5"], ["3/40", "9/40"], ["3/10", "-9/10", "6/5"], ["-11/54", "5/2", "-70/27", "35/27"],
         ["1631/55296", "175/512", "575/13824", "44275/110592", "253/4096"]],
        ["37/378", 0, "250/621", "125/594", 0, "512/1771"],
        b_hat=["2825/27648", 0, "18575/48384", "13525/55296", "277/14336", "1/4"])


@method("dopri5", order=5, embedded_order=4, stage_order=1, aliases=("dp5", "dormand-prince", "dp45", "ode45"))
def _dopri5():
    """Dormand–Prince 5(4) pair, FSAL (the default of MATLAB's ode45 and torchdiffeq).

    J. R. Dormand & P. J. Prince, A family of embedded Runge–Kutta formulae, J. Comput. Appl. Math.
    6 (1980) 19–26.
    """
    return explicit(
        [["1/5"], ["3/40", "9/40"], ["44/45", "-56/15", "32/9"],
         ["19372/6561", "-25360/2187", "64448/6561", "-212/729"],
         ["9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"],
         ["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84"]],
        ["35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0],
        b_hat=["5179/57600", 0, "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40"])


# ---------------------------------------------------------------------------------------------
# Implicit methods
# ---------------------------------------------------------------------------------------------

@method("backward-euler", order=1, stage_order=1, aliases=("implicit-euler", "be"))
def _backward_euler():
    """Backward (implicit) Euler method; L-stable.

    L. Euler, Institutionum calculi integralis (1768); Hairer & Wanner, Solving ODEs II, §IV.3.
    """
    return [[1]], [1], None, None


@method("implicit-midpoint", order=2, stage_order=1)
def _implicit_midpoint():
    """Implicit midpoint rule (one-stage Gauss–Legendre); A-stable, symplectic.

    Hairer, Lubich & Wanner, Geometric Numerical Integration, 2nd ed., Springer (2006), §II.1.
    """
    return [["1/2"]], [1], None, None


@method("trapezoid", order=2, stage_order=2, aliases=("crank-nicolson", "trapezoidal", "implicit-trapezoid"))
def _trapezoid():
    """Trapezoidal rule (Crank–Nicolson; two-stage Lobatto IIIA); A-stable, not L-stable.

    J. Crank & P. Nicolson, A practical method for numerical evaluation of solutions of partial
    differential equations of the heat-conduction type, Proc. Cambridge Philos. Soc. 43 (1947) 50–67.
    """
    return [[0, 0], ["1/2", "1/2"]], ["1/2", "1/2"], None, None


_FAMILY_LABEL = {"gauss": "Gauss–Legendre", "radau1a": "Radau IA", "radau2a": "Radau IIA",
                 "lobatto3a": "Lobatto IIIA", "lobatto3b": "Lobatto IIIB", "lobatto3c": "Lobatto IIIC"}
_FAMILY_NAME = {"gauss": "gauss", "radau1a": "radau-ia", "radau2a": "radau-iia",
                "lobatto3a": "lobatto-iiia", "lobatto3b": "lobatto-iiib", "lobatto3c": "lobatto-iiic"}


def _register_families():
    for key, (_, _, smallest, order_of, stage_order_of, reference) in _FAMILIES.items():
        for s in range(smallest, 6):
            name = f"{_FAMILY_NAME[key]}-{s}"
            aliases = (f"{key}{s}", f"{key}-{s}") + ((f"gauss-legendre-{s}", f"gl{s}") if key == "gauss" else ())
            _register(Entry(
                name=name, build=(lambda key=key, s=s: family(key, s)),
                description=f"{s}-stage {_FAMILY_LABEL[key]} method, generated from its defining formulas",
                reference=reference, order=order_of(s), stage_order=stage_order_of(s), aliases=aliases))


_register_families()


# ---------------------------------------------------------------------------------------------
# Methods whose exact coefficients are long literature data (kept in ``_data_*`` modules with
# their provenance and the checks made when they were transcribed).
# ---------------------------------------------------------------------------------------------

_DATA_ENTRIES = {
    # data key: (catalogue name, aliases, description)
    "tsit5": ("tsit5", ("tsitouras5",), "Tsitouras 5(4) pair, FSAL; exact: c5 is a root of a sextic, every other "
                                      "coefficient a polynomial in it (agrees with the published 85-digit values to 4e-84)"),
    "dp8": ("dp8", ("rk87", "prince-dormand8"), "Prince–Dormand 8(7) pair RK8(7)13M, rebuilt in exact rationals "
                                               "(within 5e-16 of the published ten-digit fractions, which satisfy the "
                                               "order conditions only to ~1e-17)"),
    "vern6": ("vern6", ("verner6",), "Verner's 'most efficient' 6(5) pair, FSAL"),
    "vern7": ("vern7", ("verner7",), "Verner's 'most efficient' 7(6) pair"),
    "vern8": ("vern8", ("verner8",), "Verner's 'most efficient' 8(7) pair"),
    "butcher6": ("butcher6", (), "Butcher's seven-stage sixth-order method"),
    "fehlberg78": ("fehlberg78", ("rkf78",), "Runge–Kutta–Fehlberg 7(8) pair: seventh-order solution, eighth-order estimate"),
    "trbdf2": ("tr-bdf2", ("trbdf2",), "TR-BDF2 as an ESDIRK (γ = 2 − √2), L-stable, with Hosea–Shampine's "
                                     "third-order embedded formula"),
    "alexander_sdirk2": ("alexander2", ("sdirk2",), "Alexander's two-stage L-stable SDIRK of order 2 (γ = 1 − √2/2)"),
    "alexander_sdirk3": ("alexander3", ("sdirk3",), "Alexander's three-stage L-stable SDIRK of order 3 (γ ≈ 0.4358665215)"),
    "crouzeix_sdirk2": ("crouzeix2", (), "Crouzeix's two-stage A-stable SDIRK of order 3 (γ = 1/2 + √3/6)"),
    "crouzeix_sdirk3": ("crouzeix3", ("norsett3",), "Crouzeix–Nørsett three-stage A-stable SDIRK of order 4 "
                                                  "(γ = 1/2 + cos(π/18)/√3)"),
    "hairer_wanner_sdirk4": ("sdirk4", ("hairer-wanner-sdirk4",), "Hairer–Wanner five-stage L-stable SDIRK 4(3), γ = 1/4"),
    "hairer_wanner_sdirk4_g4_15": ("sdirk4-b", (), "Hairer–Wanner five-stage L-stable SDIRK 4(3), γ = 4/15 "
                                                  "(second coefficient set of SDIRK4)"),
    "kvaerno3": ("kvaerno3", (), "Kværnø's ESDIRK 3(2), four stages, stiffly accurate, L-stable"),
    "kvaerno4": ("kvaerno4", (), "Kværnø's ESDIRK 4(3), five stages, stiffly accurate (A-stable; the "
                                 "order-3 embedded formula is the L-stable one)"),
    "kvaerno5": ("kvaerno5", (), "Kværnø's ESDIRK 5(4), seven stages, stiffly accurate, L-stable"),
    "kennedy_carpenter_ark436l2sa_esdirk": ("kencarp4", ("ark436l2sa-esdirk",),
                                            "Kennedy–Carpenter ESDIRK 4(3) (implicit part of ARK4(3)6L[2]SA), L-stable"),
    "kennedy_carpenter_esdirk436l2sa": ("esdirk436l2sa", (), "Kennedy–Carpenter ESDIRK4(3)6L[2]SA main formula, L-stable"),
}


def _from_power_basis(data) -> ButcherTableau:
    """A tableau whose entries are given as coordinates ``[q0, …, q_(d−1)]`` in the power basis of
    one algebraic number ``θ`` (``Σ q_k θ^k``): the exact arithmetic runs in ``QQ(θ)`` directly."""
    from sympy import QQ

    from ._exact import ExactCoefficients

    alg = data["algebraic"]
    theta = sp.CRootOf(sp.Poly(alg["minpoly"], sp.Symbol("x")), alg["root_index"])
    K = QQ.algebraic_field(theta)  # its generator is θ itself, so coordinates map directly
    element = lambda q: K.new([QQ(sp.Rational(x).p, sp.Rational(x).q) for x in reversed(q)])  # noqa: E731
    value = lambda q: sp.Add(*(sp.Rational(x) * theta**k for k, x in enumerate(q)))  # noqa: E731
    rows = [[]] + [list(r) for r in alg["rows_basis"][1:]]
    s = len(alg["b_basis"])
    zero = ["0"] * len(alg["minpoly"][1:])
    A = [[*r, *([zero] * (s - len(r)))] for r in rows]
    b, b_hat, c = alg["b_basis"], alg["b_hat_basis"], alg["c_basis"]
    exact = ExactCoefficients(K, [[element(q) for q in row] for row in A], [element(q) for q in b],
                              [element(q) for q in c], [element(q) for q in b_hat])
    return ButcherTableau([[value(q) for q in row] for row in A], [value(q) for q in b], [value(q) for q in c],
                          [value(q) for q in b_hat], _exact=exact)


def _register_data():
    from . import _data_dirk, _data_explicit

    for module in (_data_explicit, _data_dirk):
        for key, data in module.METHODS.items():
            name, aliases, description = _DATA_ENTRIES[key]

            def build(data=data):
                if "algebraic" in data:
                    return _from_power_basis(data)
                if "rows" in data:
                    return explicit(data["rows"], data["b"], data.get("b_hat"), data.get("c"))
                return data["A"], data["b"], data.get("b_hat"), data.get("c")

            build.__doc__ = f"{description}.\n\n{data['reference']}"
            _register(Entry(name, build, description, " ".join(data["reference"].split()), data["order"],
                            data.get("embedded_order"), data.get("stage_order"), aliases))


_register_data()
