"""The :class:`ButcherTableau`: exact, immutable, validated coefficients and everything derived
from them (structure, order, stage order, stability function, error coefficients)."""

from __future__ import annotations

import math
import warnings
from collections import namedtuple
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Mapping

import sympy as sp

from ._conditions import OrderConditions, ToleranceCoefficients
from ._exact import ExactCoefficients
from ._parse import MAX_DEGREE, BudgetError, TableauError, generators, to_exact
from ._program import StageProgram, stage_program
from ._trees import Tree, density, symmetry, trees

__all__ = ["Approximation", "ButcherTableau", "TableauWarning", "Coefficients", "z"]

z = sp.Symbol("z")
Coefficients = namedtuple("Coefficients", "A b c b_hat")

_KNOWN_KEYS = ("A", "b", "c", "b_hat", "name", "description", "reference", "parameters", "constants")
_DEFAULT_MAX_ORDER = 12


def _describe_sum(values) -> str:
    total = sp.Add(*values)
    text = str(total)
    if len(text) <= 30:
        return text
    return f"1 {'+' if total > 1 else '-'} {float(abs(sp.N(total - 1, 30))):.3g} (exactly {text[:20]}…)"


@dataclass(frozen=True)
class Approximation:
    """What a tableau is to a tolerance (:meth:`ButcherTableau.approximation`): the orders that
    hold with ``|γ(t) Φ(t) − 1| ≤ tol``, the largest such residual up to that order, and the
    stability function with each coefficient replaced by the simplest fraction within ``tol``
    (decimals rounded to what they approximate; where there is none, the function as typed,
    analysed in 50-digit arithmetic), with its properties."""

    tol: float
    order: int
    embedded_order: int | None
    residual: float
    stability_function: sp.Expr
    real_stability_interval: sp.Interval
    imaginary_stability_interval: sp.Interval
    is_a_stable: bool
    is_l_stable: bool
    real_stability_interval_as_typed: sp.Interval  # of the exact R, its ends to 50 digits


def _simplest_within(P: sp.Poly, Q: sp.Poly, tol: float):
    """``R = P/Q`` with every coefficient replaced by the simplest fraction within ``tol`` (1/2
    for 0.4999999999999989, as decimals from a paper give), or ``None`` where R has algebraic
    coefficients or one coefficient has no fraction of denominator up to 10^6 that close."""
    if not (P.domain == sp.QQ and Q.domain == sp.QQ):
        return None
    fractions = []
    for x in (*P.all_coeffs(), *Q.all_coeffs()):
        r = sp.nsimplify(sp.Float(x, 60), rational=True, tolerance=tol)
        if r.q > 10**6:
            return None
        fractions.append(r)
    return (sp.Poly(fractions[:P.degree() + 1], z, domain=sp.QQ),
            sp.Poly(fractions[P.degree() + 1:], z, domain=sp.QQ))


class TableauWarning(UserWarning):
    """Something about a tableau is suspicious but not invalid (e.g. a parametric ``b`` whose
    entries do not sum to 1 for every parameter value)."""


ROUNDING = sp.Rational(1, 10**50)  # the numerical analysis holds every entry to 50 digits
MAX_STAGES = 64


def _constants(table, exact: bool) -> dict:
    """A file's ``constants``: ``{name: exact value}``, each parsed with the ones before it."""
    if not isinstance(table, Mapping):
        raise TableauError("'constants' must be a table of name = value")
    names = {}
    for name, value in table.items():
        if not (isinstance(name, str) and name.isidentifier()) or name in ("pi", "x"):
            raise TableauError(f"constants: {name!r} is not a usable name (an identifier other than pi and x)")
        names[name] = to_exact(value, f"constants.{name}", names, exact)
        if names[name].free_symbols:
            raise TableauError(f"constants.{name}: uses an unknown name "
                               f"{sorted(map(str, names[name].free_symbols))[0]!r} (define it above)")
    return names


def _parsed(data: Mapping, names: dict, exact: bool) -> dict:
    """The entries of ``A``, ``b``, ``c``, ``b_hat`` with strings parsed (shapes are checked later)."""
    def entry(value, where):
        return to_exact(value, where, names, exact) if isinstance(value, str) else value
    out = {}
    for key in ("A", "b", "c", "b_hat"):
        value = data.get(key)
        if key == "A" and isinstance(value, list):
            if len(value) > MAX_STAGES:
                raise TableauError(f"A has {len(value)} rows; the toolkit analyses up to {MAX_STAGES} stages")
            value = [[entry(v, f"A[{i}][{j}]") for j, v in enumerate(row)] if isinstance(row, list) else row
                     for i, row in enumerate(value)]
        elif isinstance(value, list):
            value = [entry(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if value is not None:
            out[key] = value
    return out


def _rounded(value):
    """``value`` (an entry, or nested lists of them) as the rational of its 50-digit decimal."""
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    # parsed text may hold 60-digit floats already (sin/cos of pi/k are rounded in this mode)
    x = value if isinstance(value, sp.Expr) else to_exact(value)
    if x.free_symbols:
        raise TableauError(f"{x} has a free symbol: a parametric tableau has no numerical analysis")
    return sp.Rational(str(sp.N(x, 55).round(50)))


def _vector(values, name: str, size: int | None) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TableauError(f"{name} must be a list of numbers, got {values!r}")
    vec = tuple(to_exact(v, f"{name}[{i}]") for i, v in enumerate(values))
    if size is not None and len(vec) != size:
        raise TableauError(f"{name} has {len(vec)} entries but A has {size} rows")
    return vec


def _matrix(rows) -> tuple[tuple, ...]:
    if hasattr(rows, "tolist"):  # numpy arrays, sympy matrices
        rows = rows.tolist()
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise TableauError(f"A must be a list of rows, got {rows!r}")
    rows = list(rows)
    if not rows:
        raise TableauError("A is empty: a tableau needs at least one stage")
    s = len(rows)
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise TableauError(f"A row {i} must be a list of numbers, got {row!r}")
        row = list(row)
        if not row:
            raise TableauError(f"A row {i} is empty")
        if len(row) != s:
            raise TableauError(f"A row {i} has {len(row)} entries, expected {s} (A must be square)")
        out.append(tuple(to_exact(v, f"A[{i}][{j}]") for j, v in enumerate(row)))
    return tuple(out)


class ButcherTableau:
    """A Runge–Kutta method ``(A, b, c, b_hat)`` with exact SymPy coefficients.

    Entries may be numbers, exact strings (``"1/3"``, ``"sqrt(3)/6"``, ``"a"`` for a symbol of a
    parametric family) or SymPy expressions. ``c`` defaults to the row sums of ``A``; a given ``c``
    that differs is kept and reported in :attr:`notes`. All properties are derived from the
    coefficients on first use and cached; the tableau itself is immutable and hashable.

    >>> rk4 = ButcherTableau([[0, 0, 0, 0], ["1/2", 0, 0, 0], [0, "1/2", 0, 0], [0, 0, 1, 0]],
    ...                      ["1/6", "1/3", "1/3", "1/6"], name="rk4")
    >>> rk4.stages, rk4.is_explicit, rk4.order()
    (4, True, 4)
    >>> rk4.stability_function()
    z**4/24 + z**3/6 + z**2/2 + z + 1
    """

    def __init__(self, A, b, c=None, b_hat=None, name: str | None = None, *,
                 description: str | None = None, reference: str | None = None, rounding=None, _exact=None):
        A = _matrix(A)
        s = len(A)
        b = _vector(b, "b", s)
        row_sums = tuple(sp.Add(*row) for row in A)
        c = row_sums if c is None else _vector(c, "c", s)
        b_hat = None if b_hat is None else _vector(b_hat, "b_hat", s)
        for label, values in (("A", [x for row in A for x in row]), ("b", b), ("c", c), ("b_hat", b_hat or ())):
            for x in values:
                if x.is_real is False:
                    raise TableauError(f"{label}: entry {x} is not real")
        object.__setattr__(self, "_data", (A, b, c, b_hat))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "reference", reference)
        # the entries are roundings of a method's to within this (the numerical analysis): its
        # consistency is judged to that tolerance, and approximation() is what describes it
        object.__setattr__(self, "rounding", rounding)
        if _exact is not None:  # a generator that already holds the entries in a number field
            self.__dict__["_exact"] = _exact
        self._check_consistency()

    # --- immutability, equality ------------------------------------------------------------
    def __setattr__(self, key, value):
        raise AttributeError(f"ButcherTableau is immutable (cannot set {key!r})")

    def __delattr__(self, key):
        raise AttributeError(f"ButcherTableau is immutable (cannot delete {key!r})")

    def __eq__(self, other):
        if not isinstance(other, ButcherTableau):
            return NotImplemented
        return self._data == other._data and self.name == other.name

    def __hash__(self):
        return hash((self._data, self.name))

    def __repr__(self):
        label = f" {self.name!r}" if self.name else ""
        return f"<ButcherTableau{label}: {self.stages} stages, {self.structure}>"

    def _check_consistency(self):
        if self.rounding is not None:
            for label, weights in (("b", self.b), ("b_hat", self.b_hat)):
                if weights is not None and abs(sp.Add(*weights) - 1) > 100 * len(weights) * self.rounding:
                    raise TableauError(f"{self._label}: {label} sums to {_describe_sum(weights)}, not 1 "
                                       "(the method would not be consistent)")
            return
        ex = self._exact
        if not ex.is_zero(ex.dot(ex.b, [ex.one] * ex.s) - ex.one):
            if self.is_parametric:
                warnings.warn(f"{self._label}: b sums to {sp.Add(*self.b)}, which is 1 only for some "
                              "parameter values", TableauWarning, stacklevel=3)
            else:
                raise TableauError(f"{self._label}: b sums to {_describe_sum(self.b)}, not 1 "
                                   "(the method would not be consistent)")
        if ex.b_hat is not None and not self.is_parametric:
            if not ex.is_zero(ex.dot(ex.b_hat, [ex.one] * ex.s) - ex.one):
                raise TableauError(f"{self._label}: b_hat sums to {_describe_sum(self.b_hat)}, not 1")

    @property
    def _label(self) -> str:
        return f"tableau {self.name!r}" if self.name else "tableau"

    # --- coefficients ----------------------------------------------------------------------
    @property
    def A(self) -> sp.ImmutableMatrix:
        return sp.ImmutableMatrix(self._data[0])

    @property
    def b(self) -> tuple:
        return self._data[1]

    @property
    def c(self) -> tuple:
        return self._data[2]

    @property
    def b_hat(self) -> tuple | None:
        return self._data[3]

    @property
    def stages(self) -> int:
        return len(self._data[1])

    @cached_property
    def symbols(self) -> frozenset:
        """The free symbols of a parametric tableau (empty for a concrete method)."""
        A, b, c, b_hat = self._data
        return frozenset().union(*(x.free_symbols for x in (*sum(A, ()), *b, *c, *(b_hat or ()))))

    @property
    def is_parametric(self) -> bool:
        return bool(self.symbols)

    # --- structure ---------------------------------------------------------------------------
    def _zero(self, i, j) -> bool:
        """``a_ij == 0`` exactly."""
        return self._exact.is_zero(self._exact.A[i][j])

    def _row_equals_b(self, i) -> bool:
        ex = self._exact
        return all(ex.is_zero(a - w) for a, w in zip(ex.A[i], ex.b))

    @cached_property
    def is_explicit(self) -> bool:
        """``A`` is strictly lower triangular: every stage uses only earlier ones."""
        s = self.stages
        return all(self._zero(i, j) for i in range(s) for j in range(i, s))

    @cached_property
    def is_lower_triangular(self) -> bool:
        s = self.stages
        return all(self._zero(i, j) for i in range(s) for j in range(i + 1, s))

    @property
    def is_diagonally_implicit(self) -> bool:
        """Lower-triangular ``A`` with some nonzero diagonal entry (DIRK): one stage at a time."""
        return self.is_lower_triangular and not self.is_explicit

    @cached_property
    def is_singly_diagonally_implicit(self) -> bool:
        """DIRK whose nonzero diagonal entries are all equal (SDIRK; ESDIRK if ``a11 = 0``)."""
        if not self.is_diagonally_implicit:
            return False
        ex = self._exact
        diagonal = [ex.A[i][i] for i in range(self.stages)]
        if ex.is_zero(diagonal[0]) and self.stages > 1:
            diagonal = diagonal[1:]  # an explicit first stage (ESDIRK)
        return not ex.is_zero(diagonal[0]) and all(ex.is_zero(d - diagonal[0]) for d in diagonal)

    @property
    def is_fully_implicit(self) -> bool:
        return not self.is_lower_triangular

    @property
    def structure(self) -> str:
        """One of ``explicit``, ``ESDIRK``, ``SDIRK``, ``DIRK``, ``implicit``."""
        if self.is_explicit:
            return "explicit"
        if self.is_singly_diagonally_implicit:
            return "ESDIRK" if self._zero(0, 0) else "SDIRK"
        return "DIRK" if self.is_diagonally_implicit else "implicit"

    @cached_property
    def is_fsal(self) -> bool:
        """First Same As Last: the first stage is ``f(y_n)`` and the last stage is evaluated at
        ``y_{n+1}``, so a step can reuse the previous step's last evaluation."""
        s = self.stages
        return s > 1 and all(self._zero(0, j) for j in range(s)) and self._row_equals_b(s - 1)

    @cached_property
    def is_stiffly_accurate(self) -> bool:
        """The last row of ``A`` equals ``b`` (the update is the last stage value)."""
        return self._row_equals_b(self.stages - 1)

    @property
    def has_embedded(self) -> bool:
        return self.b_hat is not None

    @cached_property
    def c_mismatch(self) -> tuple[int, ...]:
        """Indices ``i`` with ``c_i ≠ Σ_j a_ij`` (the row-sum condition fails there)."""
        ex = self._exact
        row_sums = ex.matvec([ex.one] * ex.s)
        return tuple(i for i in range(ex.s) if not ex.is_zero(row_sums[i] - ex.c[i]))

    @cached_property
    def notes(self) -> tuple[str, ...]:
        """Remarks a user should see about this tableau (not errors)."""
        out = []
        if self.c_mismatch:
            rows = ", ".join(str(i) for i in self.c_mismatch)
            out.append(f"c differs from the row sums of A in row(s) {rows}; the order reported is "
                       "for autonomous problems (it uses A only)")
        if self.is_parametric:
            out.append("parametric in " + ", ".join(sorted(map(str, self.symbols))) +
                       ": properties hold for all parameter values; solve order_conditions() for a family")
        return tuple(out)

    # --- exact algebra -----------------------------------------------------------------------
    @cached_property
    def _exact(self) -> ExactCoefficients:
        self._check_budget()
        return ExactCoefficients.from_sympy(*self._data)

    def _check_budget(self) -> None:
        """The exact analysis works in one number field holding every entry; refuse at once,
        naming the entry, a tableau whose field may have a degree past :data:`MAX_DEGREE` (the
        product of its generators' degrees bounds it), rather than compute for minutes."""
        seen, degree = set(), 1
        for label, index, value in self._entries():
            for generator, bound in generators(value):
                if generator not in seen:
                    seen.add(generator)
                    degree *= bound
            if degree > MAX_DEGREE:
                raise BudgetError(f"{self._label}: {label}{index} = {str(value)[:60]}: the entries so far generate a "
                                   f"number field of degree up to {degree}, more than the exact analysis's budget "
                                   f"of {MAX_DEGREE}; analyse it numerically instead (odernn tableau check FILE "
                                   "--float; in Python butcher.load(path, exact=False))")

    @cached_property
    def _conditions(self) -> OrderConditions:
        return OrderConditions(self._exact)

    def _conditions_to(self, tol) -> OrderConditions:
        """The order conditions in 50-digit arithmetic, a residual ``|γΦ − 1| ≤ tol`` counting as zero."""
        if self.is_parametric:
            raise ValueError(f"{self._label} is parametric: an order to a tolerance needs numbers")
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        A, b, c, b_hat = self._data
        return OrderConditions(ToleranceCoefficients(A, b, c, b_hat, tol))

    def order(self, max_order: int = _DEFAULT_MAX_ORDER, *, every_tree: bool = False, tol=None) -> int:
        """Classical order for autonomous problems, from the rooted-tree conditions
        ``Φ(t) = 1/γ(t)`` checked exactly up to ``max_order`` nodes.

        Conditions already implied by the simplifying assumptions (Butcher's theorem) are not
        re-checked tree by tree unless ``every_tree=True``. Returns ``max_order`` when every
        condition up to it holds (the order is at least that). For a parametric tableau, the
        order that holds for *all* parameter values.

        ``tol``: the order to a tolerance instead, the conditions checked in 50-digit arithmetic
        with ``|γ(t) Φ(t) − 1| ≤ tol`` counting as satisfied — the order of the method that
        decimals copied from a paper approximate (see :meth:`approximation`).
        """
        conditions = self._conditions if tol is None else self._conditions_to(tol)
        return conditions.order(conditions.ex.b, max_order, not every_tree)

    def embedded_order(self, max_order: int = _DEFAULT_MAX_ORDER, *, every_tree: bool = False,
                       tol=None) -> int | None:
        """Order of the embedded weights ``b_hat`` (``None`` without them); ``tol`` as in :meth:`order`."""
        if self.b_hat is None:
            return None
        conditions = self._conditions if tol is None else self._conditions_to(tol)
        return conditions.order(conditions.ex.b_hat, max_order, not every_tree)

    def stage_order(self, max_order: int = _DEFAULT_MAX_ORDER) -> int:
        """Largest ``q`` with the simplifying assumptions ``B(q)`` and ``C(q)``:
        ``Σ b_i c_i^(k−1) = 1/k`` and ``Σ_j a_ij c_j^(k−1) = c_i^k / k`` for ``k ≤ q``."""
        ex = self._exact
        p, eta, _ = self._conditions.simplifying_assumptions(ex.b, max_order, c=ex.c)
        return min(p, eta)

    def elementary_weight(self, tree: Tree, embedded: bool = False) -> sp.Expr:
        """``Φ(t) = Σ b_i g_i(t)`` as an exact SymPy expression."""
        ex = self._exact
        weights = ex.b_hat if embedded else ex.b
        if weights is None:
            raise ValueError(f"{self._label} has no embedded weights")
        return ex.to_sympy(ex.dot(weights, self._conditions.g(tree)[0]))

    def order_conditions(self, order: int, embedded: bool = False) -> list:
        """The order conditions ``Φ(t) = 1/γ(t)`` for the trees with at most ``order`` nodes that
        do not already hold identically, as SymPy equations ready for ``sympy.solve`` on a
        parametric tableau (an empty list: the order is at least ``order``; ``sympy.false`` in the
        list: that order is impossible).

        >>> import sympy as sp
        >>> a, w = sp.symbols("a w")
        >>> family = ButcherTableau([[0, 0], [a, 0]], [1 - w, w])
        >>> family.order_conditions(2)
        [Eq(a*w, 1/2)]
        >>> sp.solve(family.order_conditions(2), [w], dict=True)
        [{w: 1/(2*a)}]
        """
        out = []
        for tree in (t for n in range(1, order + 1) for t in trees(n)):
            condition = sp.Eq(self.elementary_weight(tree, embedded), sp.Rational(1, density(tree)))
            if condition is not sp.true:
                out.append(condition)
        return out

    def error_coefficients(self, order: int | None = None, embedded: bool = False) -> dict:
        """Error coefficients ``τ(t) = (Φ(t) − 1/γ(t)) / σ(t)`` of the trees with ``order`` nodes
        (default: ``p + 1``, the principal error coefficients), keyed by tree."""
        if order is None:
            order = (self.embedded_order() if embedded else self.order()) + 1
        return {t: (self.elementary_weight(t, embedded) - sp.Rational(1, density(t))) / symmetry(t)
                for t in trees(order)}

    def principal_error_norm(self, embedded: bool = False) -> float:
        """``‖τ^(p+1)‖₂`` (Dormand & Prince 1980): the size of the leading local error term, from
        the :meth:`error_coefficients` ``τ(t) = (γ(t)Φ(t) − 1)/(γ(t)σ(t))`` evaluated in 50-digit
        arithmetic (a float is the result: in Radau IIA-5's number field of degree 24 the exact
        ones took 20 s, 50 digits take 2)."""
        order = (self.embedded_order() if embedded else self.order()) + 1
        conditions = self._conditions_to(tol=1e-10)  # the tolerance decides no zero here
        weights = conditions.ex.b_hat if embedded else conditions.ex.b
        return math.sqrt(sum((float(conditions.residual(t, weights)) / (density(t) * symmetry(t))) ** 2
                             for t in trees(order)))

    # --- the stage program and its reverse (the discrete adjoint) ------------------------------
    def stage_program(self, embedded: bool = False) -> StageProgram:
        """The stages one explicit step evaluates, from the exact coefficients: unused stages
        (Dormand–Prince's FSAL stage) and zero entries are left out. With ``embedded=True`` the
        stages the embedded weights need are kept too, and ``error_weights`` are ``b − b̂``.
        :meth:`StageProgram.reverse` is the reverse sweep that differentiates it.

        >>> program = ButcherTableau([[0, 0], ["1/2", 0]], [0, 1], name="midpoint").stage_program()
        >>> program.stages               # stage 1 at y; stage 2 at y + ½ h K₁
        ((0, ()), (1, ((0, 1/2),)))
        >>> program.weights              # y⁺ = y + h K₂
        ((1, 1),)
        >>> program.reverse().stages   # κ₂ = h λ⁺;  κ₁ = h (0·λ⁺ + ½ μ₂)
        ((1, 1, ()), (0, 0, ((1, 1/2),)))
        """
        return stage_program(self, embedded)

    def adjoint_partner(self) -> "ButcherTableau":
        """The Runge–Kutta method ``(Ā, b)`` with ``ā_ij = b_j − b_j a_ji / b_i`` that the discrete
        adjoint of this method applies to ``λ′ = −Jᵀλ`` (Sanz-Serna 2016): the pair ``(A, Ā)`` is
        symplectic, ``b_i ā_ij + b_j a_ji = b_i b_j``. Defined where every ``b_i ≠ 0``.

        >>> euler = ButcherTableau([[0]], [1], name="euler")
        >>> euler.adjoint_partner().A      # forward Euler's partner is backward Euler
        Matrix([[1]])
        """
        ex = self._exact
        if self.is_parametric:
            raise ValueError(f"{self._label} is parametric: substitute values before forming its adjoint partner")
        zeros = [i for i in range(ex.s) if ex.is_zero(ex.b[i])]
        if zeros:
            raise ValueError(f"{self._label} has b_{zeros[0] + 1} = 0: its discrete adjoint is no Runge–Kutta "
                             "method of its own (use stage_program().reverse(), which needs no division)")
        K = ex.K
        A_bar = [[ex.to_sympy(ex.b[j] - K.quo(ex.b[j] * ex.A[j][i], ex.b[i])) for j in range(ex.s)]
                 for i in range(ex.s)]
        name = f"{self.name}-adjoint" if self.name else None
        return ButcherTableau(A_bar, self.b, self.c, name=name)

    # --- stability ---------------------------------------------------------------------------
    @cached_property
    def _stability_polys(self) -> tuple[sp.Poly, sp.Poly]:
        ex = self._exact
        # det(I − zA) = Σ_k p_k z^k where det(λI − A) = Σ_k p_k λ^(s−k).
        q = ex.charpoly(ex.A)
        shifted = [[ex.A[i][j] - ex.b[j] for j in range(ex.s)] for i in range(ex.s)]  # A − 𝟙bᵀ
        p = ex.charpoly(shifted)
        rational = [ex.as_rational(x) for x in (*p, *q)]
        if all(x is not None for x in rational):  # the usual case, even for irrational tableaux
            domain, p, q = sp.QQ, rational[:len(p)], rational[len(p):]
        else:
            domain = ex.K
        P = sp.Poly.from_list(list(reversed(p)), z, domain=domain)
        Q = sp.Poly.from_list(list(reversed(q)), z, domain=domain)
        common = P.gcd(Q)
        if common.degree() > 0:
            P, Q = P.exquo(common), Q.exquo(common)
        lead = Q.eval(0)  # normalise so that Q(0) = 1
        return P.quo_ground(lead), Q.quo_ground(lead)

    def stability_function(self) -> sp.Expr:
        """``R(z) = 1 + z bᵀ(I − zA)⁻¹𝟙 = det(I − zA + z𝟙bᵀ) / det(I − zA)``, exact, in lowest
        terms, in the symbol ``z``."""
        P, Q = self._stability_polys
        return P.as_expr() / Q.as_expr() if Q.degree() > 0 else P.as_expr()

    def stability_polynomials(self) -> tuple[sp.Poly, sp.Poly]:
        """Numerator and denominator ``(P, Q)`` of ``R = P/Q`` with ``Q(0) = 1``."""
        return self._stability_polys

    def approximation(self, tol: float = 1e-10, max_order: int = _DEFAULT_MAX_ORDER) -> Approximation:
        """The method these coefficients approximate to ``tol``: decimals copied from a paper
        satisfy the order conditions only to their rounding, so their exact order is usually 1;
        here the conditions are checked in 50-digit arithmetic against ``tol``.

        >>> decimals = ButcherTableau([[0, 0], ["0.822875655532364", 0]],
        ...                           ["0.392374781489287", "0.607625218510713"])
        >>> decimals.order(), decimals.approximation(1e-12).order   # NodePy's SSPRK22star, as printed
        (1, 2)
        """
        conditions = self._conditions_to(tol)
        ex = conditions.ex
        order = conditions.order(ex.b, max_order)
        embedded = None if ex.b_hat is None else conditions.order(ex.b_hat, max_order)
        residual = conditions.largest_residual(ex.b, min(order, 6))  # trees past 6 nodes: thousands
        from ._stability import StabilityAnalysis
        P, Q = self._stability_polys
        digits = sp.RealField(dps=50)

        def numeric(poly):  # exact root-finding on rationals of hundreds of digits is slow: 50 digits
            return sp.Poly([sp.N(x, 55) for x in poly.all_coeffs()], z, domain=digits)
        typed = StabilityAnalysis(numeric(P), numeric(Q))
        rounded = _simplest_within(P, Q, tol)
        if rounded is None:  # no simpler function within tol: R is the one typed
            analysis, R = typed, self.stability_function()
        else:
            P, Q = rounded
            analysis = StabilityAnalysis(P, Q)
            R = P.as_expr() / Q.as_expr() if Q.degree() > 0 else P.as_expr()
        return Approximation(tol, order, embedded, residual, R, analysis.real_interval,
                             analysis.imaginary_interval, analysis.is_a_stable, analysis.is_l_stable,
                             typed.real_interval)

    def embedded_stability_function(self) -> sp.Expr | None:
        if self.b_hat is None:
            return None
        return ButcherTableau(self._data[0], self.b_hat, self.c).stability_function()

    @cached_property
    def _stability(self):
        from ._stability import StabilityAnalysis
        if self.is_parametric:
            raise ValueError(f"{self._label} is parametric in {sorted(map(str, self.symbols))}: "
                             "substitute values with .subs() before analysing its stability")
        return StabilityAnalysis(*self._stability_polys)

    @property
    def is_a_stable(self) -> bool:
        """``|R(z)| ≤ 1`` on the whole closed left half-plane."""
        return self._stability.is_a_stable

    @property
    def is_l_stable(self) -> bool:
        """A-stable and ``R(z) → 0`` as ``z → ∞``."""
        return self._stability.is_l_stable

    def real_stability_interval(self) -> sp.Interval:
        """The interval ``[−r, 0]`` of the negative real axis (through 0) where ``|R| ≤ 1``;
        ``r`` is exact where SymPy can isolate it, else accurate to far below 1e-10."""
        return self._stability.real_interval

    def imaginary_stability_interval(self) -> sp.Interval:
        """The interval ``[−β, β]`` of the imaginary axis (in units of ``i``) where ``|R| ≤ 1``."""
        return self._stability.imaginary_interval

    def amplification(self, values):
        """``|R(λ)|`` at complex numbers ``λ`` (numpy array in, numpy array out)."""
        return self._stability.amplification(values)

    def stability_matrix(self, Z):
        """``R(Z)`` for square matrices ``Z`` (numpy, ``(..., D, D)``): the linear map one step of
        the method applies to ``y' = J y`` when ``Z = hJ``."""
        return self._stability.matrix(Z)

    # --- conversion ----------------------------------------------------------------------------
    def subs(self, *args, **values) -> "ButcherTableau":
        """A new tableau with symbols replaced: ``family.subs(a=sp.Rational(1, 2))``."""
        mapping = dict(*args)
        mapping.update({sp.Symbol(k): v for k, v in values.items()})
        mapping = {k: to_exact(v, f"value of {k}") for k, v in mapping.items()}
        A, b, c, b_hat = self._data
        f = lambda vec: [sp.simplify(x.subs(mapping)) for x in vec]  # noqa: E731
        return ButcherTableau([f(row) for row in A], f(b), f(c),
                              None if b_hat is None else f(b_hat), name=self.name)

    def _floats(self, values) -> list[float]:
        if self.is_parametric:
            raise ValueError(f"{self._label} is parametric in {sorted(map(str, self.symbols))}: "
                             "substitute values with .subs() before converting to floats")
        return [float(sp.N(x, 40)) for x in values]

    def to_numpy(self, dtype=None) -> Coefficients:
        """Float coefficients as numpy arrays: ``Coefficients(A, b, c, b_hat)``."""
        import numpy as np
        dtype = dtype or np.float64
        A, b, c, b_hat = self._data
        s = self.stages
        arr = lambda v, shape: np.array(self._floats(v), dtype=np.float64).reshape(shape).astype(dtype)  # noqa: E731
        return Coefficients(arr(sum(A, ()), (s, s)), arr(b, (s,)), arr(c, (s,)),
                            None if b_hat is None else arr(b_hat, (s,)))

    def to_tensors(self, dtype=None, device=None) -> Coefficients:
        """Float coefficients as torch tensors (torch is imported only here, on request)."""
        import torch
        dtype = dtype or torch.float64
        arrays = self.to_numpy()
        conv = lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64).to(dtype=dtype, device=device)  # noqa: E731
        return Coefficients(*(conv(a) for a in arrays))

    def to_dict(self) -> dict:
        """A plain dict of strings that :meth:`from_dict` (and the file loaders) read back to the
        same numbers. Entries are written as SymPy prints them; where that text would not read back
        within the parser's budgets (nested radicals whose degree bound overshoots the field's
        degree; a root of a sextic repeated in every power), as polynomials in one generator
        ``theta`` of their number field, defined once in ``constants`` by its minimal polynomial."""
        out = self._text_dict(str)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ButcherTableau.from_dict(out)._check_budget()
        except TableauError:
            out = self._field_generator_dict() or out
        return out

    def _text_dict(self, text) -> dict:
        A, b, c, b_hat = self._data
        out = {"A": [[text(x) for x in row] for row in A], "b": [text(x) for x in b]}
        if self.c_mismatch:
            out["c"] = [text(x) for x in c]
        if b_hat is not None:
            out["b_hat"] = [text(x) for x in b_hat]
        for key in ("name", "description", "reference"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.is_parametric:
            out["parameters"] = sorted(map(str, self.symbols))
        return out

    def _field_generator_dict(self) -> dict | None:
        """The entries as polynomials with rational coefficients in a primitive element ``theta``
        of the number field that holds them all; ``None`` for entries in no real number field."""
        ex = self._exact
        K = ex.K
        if not K.is_AlgebraicField:
            return None
        x, theta = sp.Symbol("x"), sp.Symbol("theta")
        minimal = sp.Poly(K.mod.to_list(), x, domain=sp.QQ)
        value = sp.N(K.ext.as_expr(), 60)
        if abs(sp.im(value)) > sp.Rational(1, 10**50):
            return None
        # CRootOf numbers the real roots in increasing order, as the isolating intervals come
        isolated = minimal.intervals(eps=sp.Rational(1, 10**40))
        index = min(range(len(isolated)), key=lambda i: abs(sum(isolated[i][0]) / 2 - sp.re(value)))
        polynomial = lambda e: sp.sstr(sp.Add(*(K.dom.to_sympy(q) * theta**k  # noqa: E731
                                                for k, q in enumerate(reversed(e.to_list())))))
        A, b, c, b_hat = self._data
        in_theta = {}  # each SymPy entry → its text in theta
        for entries, elements in ((sum(A, ()), sum(map(tuple, ex.A), ())), (b, ex.b), (c, ex.c),
                                  (b_hat or (), ex.b_hat or ())):
            in_theta.update((entry, polynomial(e)) for entry, e in zip(entries, elements))
        out = self._text_dict(in_theta.__getitem__)
        return {"constants": {"theta": f"CRootOf({sp.sstr(minimal.as_expr())}, {index})"}, **out}

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "dict", exact: bool = True) -> "ButcherTableau":
        """Build a tableau from ``{"A": ..., "b": ..., "c"?: ..., "b_hat"?: ..., "name"?: ...,
        "parameters"?: [...], "constants"?: {...}}``. Names in entries must be declared in
        ``parameters`` (so that a typo such as ``"half"`` is an error, not a silent parametric
        family) or defined in ``constants``, a table of named exact values that entries (and later
        constants) may use: ``constants = {g = 'root("x^3 - 3*x^2 + 3/2*x - 1/6", 0.4358)'}``.

        ``exact=False`` is the numerical analysis of a tableau too large for the exact one: every
        entry is evaluated to 50 digits (no degree budget) and the tableau holds those roundings
        (``tab.rounding``); its :meth:`approximation` is then what to read."""
        if not isinstance(data, Mapping):
            raise TableauError(f"{source}: expected a table of keys A, b, c, b_hat, name")
        unknown = sorted(set(data) - set(_KNOWN_KEYS))
        if unknown:
            raise TableauError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))} "
                               f"(allowed: {', '.join(_KNOWN_KEYS)})")
        for key in ("A", "b"):
            if key not in data:
                raise TableauError(f"{source}: missing {key!r}")
        for key in ("name", "description", "reference"):
            if key in data and not isinstance(data[key], str):
                raise TableauError(f"{source}: {key!r} must be a string")
        declared = data.get("parameters", [])
        if not isinstance(declared, list) or not all(isinstance(p, str) and p.isidentifier() for p in declared):
            raise TableauError(f"{source}: 'parameters' must be a list of names")
        try:
            names = _constants(data.get("constants", {}), exact)
            entries = _parsed(data, names, exact)
            if not exact:  # the numerical analysis: every entry rounded to 50 digits
                entries = {key: _rounded(value) for key, value in entries.items()}
            tab = cls(entries["A"], entries["b"], entries.get("c"), entries.get("b_hat"), name=data.get("name"),
                      description=data.get("description"), reference=data.get("reference"),
                      rounding=None if exact else ROUNDING)
        except TableauError as err:
            raise type(err)(f"{source}: {err}") from None
        undeclared = {str(x) for x in tab.symbols} - set(declared)
        if undeclared:
            name = sorted(undeclared)[0]
            where = next(f"{label}{index}" for label, index, value in tab._entries() if sp.Symbol(name) in value.free_symbols)
            raise TableauError(f"{source}: {where}: unknown name {name!r} (numbers, + - * / ^, parentheses "
                               f"and sqrt() are allowed; declare a symbol with parameters = [\"{name}\"])")
        return tab

    def _entries(self):
        """``(label, index, value)`` for every coefficient, for messages."""
        A, b, c, b_hat = self._data
        for i, row in enumerate(A):
            for j, value in enumerate(row):
                yield "A", f"[{i}][{j}]", value
        for label, vector in (("b", b), ("c", c), ("b_hat", b_hat or ())):
            for i, value in enumerate(vector):
                yield label, f"[{i}]", value

    def pretty(self, max_width: int = 24) -> str:
        """The tableau as text, ``c | A`` above ``| b`` (and ``| b_hat``); entries longer than
        ``max_width`` characters are shown as ``~float``."""
        A, b, c, b_hat = self._data

        def text(x):  # long irrational entries read better as floats; to_dict() keeps them exact
            exact = str(x)
            if len(exact) <= max_width or x.free_symbols:
                return exact
            return f"~{float(sp.N(x, 30)):.12g}"

        rows = [[text(ci), *map(text, row)] for ci, row in zip(c, A)]
        rows.append(["", *map(text, b)])
        if b_hat is not None:
            rows.append(["", *map(text, b_hat)])
        widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
        lines = []
        for n, row in enumerate(rows):
            if n == self.stages:
                lines.append("-" * widths[0] + "-+-" + "-" * (sum(widths[1:]) + 2 * (len(widths) - 2)))
            cells = "  ".join(x.rjust(w) for x, w in zip(row[1:], widths[1:]))
            lines.append(f"{row[0].rjust(widths[0])} | {cells}")
        return "\n".join(lines)

