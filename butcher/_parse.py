"""Exact numbers from user text, through a restricted grammar.

Coefficients typed by a user (a TOML/JSON file, the command line) never reach ``eval`` or
``sympify``: they are tokenised and parsed here by a small recursive-descent parser that knows
numbers, ``+ - * /``, ``^`` or ``**``, parentheses, named symbols and a few functions. Anything
else is a :class:`TableauError` naming the offending entry.

Grammar::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('+' | '-') unary | power
    power  := atom (('^' | '**') unary)?          # right-associative, binds tighter than unary minus
    atom   := NUMBER | NAME | STRING | NAME '(' args ')' | '(' expr ')'
    args   := arg (',' arg)*     arg := (NAME '=')? expr

Functions, every one exact:

- ``sqrt(x)``;
- ``sin(x)``, ``cos(x)``, ``tan(x)`` of a rational multiple of ``pi`` — algebraic numbers, kept as
  radicals where SymPy finds them and otherwise as the right real root of their minimal
  polynomial (``cos(pi/18)`` is the root near 0.985 of ``64x⁶ − 96x⁴ + 36x² − 3``);
- ``root(POLY, NEAR)``, ``root(POLY, index=K)``: the real root of a polynomial with rational
  coefficients in one variable nearest the number ``NEAR``, or the ``K``-th real root counting from
  the smallest (``K = 0``); ``POLY`` is an expression or a quoted string,
  ``root("x^3 - 3*x^2 + 3/2*x - 1/6", 0.4358)``;
- ``CRootOf(POLY, K)``, SymPy's own notation (what ``tableau show --toml`` writes).

**Budgets.** An exact number is only worth having if the analysis can finish: a number whose
algebraic degree may exceed :data:`MAX_DEGREE` (``2^(549/706)`` has degree 706), an integer of more
than :data:`MAX_DIGITS` digits, or an entry nested deeper than :data:`MAX_DEPTH` is refused at once,
naming the entry. Parsed with ``exact=False`` (the numerical analysis), the degree budget is lifted.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from functools import lru_cache
from numbers import Rational as _RationalABC

import sympy as sp

__all__ = ["MAX_DEGREE", "BudgetError", "TableauError", "degree_bound", "parse_number", "to_exact"]


class TableauError(ValueError):
    """A tableau (or one of its entries) is malformed; the message names what and where."""


class BudgetError(TableauError):
    """A tableau the exact analysis would not finish in reasonable time (its numbers generate too
    large a number field); the numerical analysis (``exact=False``) takes it."""


_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<string>\"[^\"]*\"|'[^']*')"
    r"|(?P<op>\*\*|[-+*/^(),=])"
    r")",
    re.ASCII,  # ASCII digits only: "٣", "３" and "𝟑" are not read as 3
)
_FUNCTIONS = ("sqrt", "sin", "cos", "tan", "root", "CRootOf")
_NOT_FINITE = {"nan", "inf", "infinity", "oo", "zoo"}
_MAX_EXPONENT = 64  # keeps "2^(10^9)" from hanging the parser
_MAX_LENGTH = 20_000  # characters of one entry: the catalogue's longest, written back, is about 5000
MAX_DEGREE = 64  # algebraic degree of one number the exact analysis accepts
MAX_DEPTH = 100  # parentheses and function calls inside one another
MAX_DIGITS = 2000  # digits of a numerator or denominator
_HINT = "analyse it numerically instead (odernn tableau check FILE --float; in Python butcher.load(path, exact=False))"


def degree_bound(value: sp.Expr) -> int:
    """An upper bound on the algebraic degree of ``value`` over the rationals: the product of the
    degrees of its radicals ``a^(p/q)`` (``q`` times the bound of ``a``) and of its ``CRootOf``
    roots. Cheap, and never below the true degree."""
    return math.prod(d for _, d in _built_from(value)[1])


def generators(value: sp.Expr) -> set:
    """``{(generator, degree bound)}``: the algebraic numbers ``value`` is built from."""
    return set(_built_from(value)[1])


@lru_cache(maxsize=4096)
def _built_from(value: sp.Basic) -> tuple[frozenset, frozenset]:
    """``(rationals, generators)`` of every subexpression of ``value``: ``value.atoms(sp.Rational)``
    and :func:`generators`, each subexpression visited once however often it recurs. The parser
    checks its budgets after every operation, on values that share their parts (a file's entries
    in powers of one named generator ``theta``, which ``atoms`` would walk again each time)."""
    if isinstance(value, sp.Rational):
        return frozenset((value,)), frozenset()
    if isinstance(value, sp.CRootOf):  # its polynomial's coefficients (not its args: SymPy rebuilds them)
        return frozenset(map(sp.Rational, value.poly.coeffs())), frozenset(((value, value.poly.degree()),))
    rationals, found = set(), set()
    for arg in value.args:
        r, g = _built_from(arg)
        rationals |= r
        found |= g
    if isinstance(value, sp.Pow) and value.exp.is_Rational and not value.exp.is_Integer:
        found.add((value, int(value.exp.q) * degree_bound(value.base)))
    return frozenset(rationals), frozenset(found)


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = text[pos:].lstrip()[:1]
            raise TableauError(f"{where}: cannot parse {text!r}: unexpected character {bad!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str, where: str, names: dict | None = None, exact: bool = True):
        self.text, self.where, self.names, self.exact = text, where, names or {}, exact
        self.toks = _tokens(text, where)
        self.i = 0
        self.depth = 0

    def fail(self, why: str, error=TableauError):
        text = self.text if len(self.text) <= 80 else self.text[:60] + "…" + self.text[-10:]
        raise error(f"{self.where}: cannot parse {text!r}: {why}")

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if tok[0] is None:
            self.fail("unexpected end of text")
        if value is not None and tok[1] != value:
            self.fail(f"expected {value!r}, found {tok[1]!r}")
        self.i += 1
        return tok

    def parse(self) -> sp.Expr:
        if not self.toks:
            self.fail("empty entry")
        value = self.expr()
        if self.peek()[0] is not None:
            self.fail(f"unexpected {self.peek()[1]!r}")
        if value.has(sp.pi):
            self.fail("pi is not algebraic: it may appear only inside sin, cos or tan")
        return value

    def expr(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} deep")
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        self.depth -= 1
        return self.checked(value)

    def term(self):
        value = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            rhs = self.unary()
            if op == "/":
                if rhs == 0:
                    self.fail("division by zero")
                value = value / rhs
            else:
                value = value * rhs
        return self.checked(value)

    def unary(self):
        if self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            self.depth += 1
            if self.depth > MAX_DEPTH:
                self.fail(f"nested more than {MAX_DEPTH} deep")
            value = self.unary()
            self.depth -= 1
            return -value if op == "-" else value
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek()[1] in ("^", "**"):
            self.take()
            exponent = self.unary()
            if not exponent.is_Rational:
                self.fail("exponents must be rational numbers")
            if abs(exponent) > _MAX_EXPONENT:
                self.fail(f"exponent {exponent} is larger than {_MAX_EXPONENT}")
            if base == 0 and exponent < 0:
                self.fail("division by zero")
            return self.checked(base**exponent)
        return base

    def checked(self, value):
        """The budgets: digits of rationals, algebraic degree (exact parsing only)."""
        rationals, found = _built_from(value)
        for number in rationals:
            if max(abs(number.p), number.q).bit_length() > MAX_DIGITS * 3.33:
                self.fail(f"a number with more than {MAX_DIGITS} digits")
        if self.exact and found:
            degree = degree_bound(value)
            if degree > MAX_DEGREE:
                self.fail(f"an algebraic number of degree up to {degree}, more than the exact analysis's "
                          f"budget of {MAX_DEGREE}; {_HINT}", BudgetError)
        return value

    def atom(self):
        kind, value = self.take()
        if kind == "number":
            digits = len(value.split("e")[0].split("E")[0])
            exponent = re.search(r"[eE]([+-]?\d+)", value)
            if digits > MAX_DIGITS or (exponent and abs(int(exponent.group(1))) > MAX_DIGITS):
                self.fail(f"a number with more than {MAX_DIGITS} digits")
            return sp.Rational(value)  # decimal text is exact: "0.1" is 1/10
        if kind == "name":
            if self.peek()[1] == "(":
                return self.call(value)
            if value in self.names:
                return self.names[value]
            if value.lower() in _NOT_FINITE:
                self.fail(f"{value!r} is not a finite number")
            if value == "pi":
                return sp.pi
            return sp.Symbol(value)
        if kind == "string":
            self.fail("a quoted string is only a polynomial inside root(...)")
        if value == "(":
            inner = self.expr()
            self.take(")")
            return inner
        self.fail(f"unexpected {value!r}")

    def call(self, function: str):
        if function not in _FUNCTIONS:
            self.fail(f"unknown function {function!r} (allowed: {', '.join(_FUNCTIONS)})")
        self.take("(")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} deep")
        args, keywords = [], {}
        while True:
            kind, value = self.peek()
            if kind == "name" and self.i + 1 < len(self.toks) and self.toks[self.i + 1][1] == "=":
                self.take()
                self.take("=")
                keywords[value] = self.expr()
            elif kind == "string":
                self.take()
                args.append(_Parser(value[1:-1], self.where, exact=self.exact).polynomial_text(self))
            else:
                args.append(self.expr())
            if self.peek()[1] != ",":
                break
            self.take(",")
        self.take(")")
        self.depth -= 1
        return self.checked(getattr(self, f"_{function.lower()}")(function, args, keywords))

    def polynomial_text(self, outer) -> sp.Expr:
        try:
            value = self.expr()
            if self.peek()[0] is not None:
                self.fail(f"unexpected {self.peek()[1]!r}")
        except TableauError as err:
            outer.fail(f"in the quoted polynomial: {str(err).split(': ', 2)[-1]}")
        return value

    def _arity(self, function, args, keywords, count, allowed=()):
        if len(args) != count or set(keywords) - set(allowed):
            self.fail(f"{function}() takes {count} argument{'s' if count > 1 else ''}"
                      + (f" (or {', '.join(k + '=' for k in allowed)})" if allowed else ""))

    # -- the functions ----------------------------------------------------------------------------
    def _sqrt(self, function, args, keywords):
        self._arity(function, args, keywords, 1)
        if args[0].is_negative:
            self.fail(f"sqrt({args[0]}) is not real")
        return sp.sqrt(args[0])

    def _sin(self, function, args, keywords):
        return self._trig(function, args, keywords)

    _cos = _tan = _sin

    def _trig(self, function, args, keywords):
        self._arity(function, args, keywords, 1)
        q = sp.expand(args[0] / sp.pi)
        if not q.is_Rational:
            self.fail(f"{function}() takes a rational multiple of pi, such as pi/18 (its value is then algebraic)")
        if function == "tan" and (q - sp.Rational(1, 2)).is_integer:
            self.fail(f"tan({q}*pi) is infinite")
        value = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan}[function](q * sp.pi)
        if not value.has(sp.sin, sp.cos, sp.tan):
            return value  # rational, or radicals: cos(pi/5) = 1/4 + sqrt(5)/4
        if not self.exact:
            return sp.N(value, 60)  # the numerical analysis rounds every entry to 50 digits
        cos_degree = _cos_degree(q)
        degree = {"cos": cos_degree, "sin": _cos_degree(sp.Rational(1, 2) - q),
                  "tan": cos_degree * _cos_degree(sp.Rational(1, 2) - q)}[function]
        if degree > MAX_DEGREE:
            self.fail(f"{function}({q}*pi) is algebraic of degree up to {degree}, more than the exact analysis's "
                      f"budget of {MAX_DEGREE}; {_HINT}", BudgetError)
        x = sp.Dummy("x")
        polynomial = sp.minimal_polynomial(value, x, polys=True)
        return _nearest_real_root(polynomial, sp.N(value, 50), self)

    def _root(self, function, args, keywords):
        if len(args) == 1 and "index" in keywords:
            polynomial = self._polynomial(args[0])
            roots = polynomial.real_roots()
            index = keywords["index"]
            if not (index.is_Integer and 0 <= index < len(roots)):
                self.fail(f"root(): index={index}, but the polynomial has {len(roots)} real root(s) "
                          f"(index 0 … {len(roots) - 1}, from the smallest)")
            return roots[int(index)]
        if len(args) == 2 and not keywords:
            if not args[1].is_Rational:
                self.fail("root(): the second argument is the number the root is nearest, such as 0.4358")
            return _nearest_real_root(self._polynomial(args[0]), args[1], self)
        self.fail("root() takes a polynomial and the number the root is nearest, or the polynomial and index=K")

    def _crootof(self, function, args, keywords):
        self._arity(function, args, keywords, 2)
        polynomial = self._polynomial(args[0])
        index = args[1]
        real = polynomial.count_roots()  # CRootOf numbers its real roots first
        if not (index.is_Integer and 0 <= index < real):
            self.fail(f"CRootOf(): index {index} is not one of the polynomial's {real} real root(s) "
                      f"(0 … {real - 1}); a tableau's entries are real")
        return sp.CRootOf(polynomial, int(index))

    def _polynomial(self, value) -> sp.Poly:
        symbols = value.free_symbols
        if len(symbols) != 1:
            self.fail("root(): the polynomial must have exactly one variable")
        polynomial = sp.Poly(value, *symbols)
        if not all(c.is_Rational for c in polynomial.coeffs()):
            self.fail("root(): the polynomial's coefficients must be rational numbers")
        degree = polynomial.degree()
        if degree < 1:
            self.fail("root(): the polynomial is constant")
        if degree > MAX_DEGREE:  # the exact analysis's budget, and root isolation's (numerical too)
            self.fail(f"root(): degree {degree} is more than the budget of {MAX_DEGREE}"
                      + (f"; {_HINT}" if self.exact else ""), BudgetError if self.exact else TableauError)
        return polynomial


def _cos_degree(q) -> int:
    """The degree of ``cos(qπ)`` over the rationals: ``φ(n)/2`` for ``qπ = 2πk/n`` in lowest terms."""
    n = sp.Rational(q, 2).q
    return 1 if n <= 2 else int(sp.totient(n)) // 2


def _nearest_real_root(polynomial: sp.Poly, near, parser: _Parser) -> sp.Expr:
    roots = polynomial.real_roots()
    if not roots:
        parser.fail("root(): the polynomial has no real root")
    near = sp.N(near, 50)
    distances = sorted((abs(sp.N(r, 50) - near), k) for k, r in enumerate(roots))
    if len(distances) > 1 and distances[1][0] - distances[0][0] < sp.Float("1e-12", 50):
        parser.fail(f"root(): {float(near)} is as near one real root as another; give a closer number or index=K")
    root = roots[distances[0][1]]
    return root if not isinstance(root, sp.CRootOf) or polynomial.degree() > 1 else sp.nsimplify(root)


def parse_number(text: str, where: str = "entry", names: dict | None = None, exact: bool = True) -> sp.Expr:
    """Parse ``text`` into an exact SymPy number without evaluating code. ``names`` maps names to
    values (a file's ``constants``); any other name (not a function, ``pi`` or ``nan``/``inf``,
    which are refused) is a SymPy symbol, the parameter of a family, and a tableau refuses those
    its file does not declare in ``parameters``. ``exact=False`` lifts the degree budget (for the
    numerical analysis, which evaluates the result to 50 digits).

    >>> parse_number("1/3")
    1/3
    >>> parse_number("sqrt(3)/6 + 1/2")
    sqrt(3)/6 + 1/2
    >>> parse_number("0.25")
    1/4
    >>> parse_number("2^-1")
    1/2
    >>> parse_number("a/2")  # a parameter: ``(a/2).free_symbols`` is {a}
    a/2
    >>> parse_number("cos(pi/3)")
    1/2
    >>> parse_number('root("x^2 - 2", 1.4)')
    sqrt(2)
    >>> parse_number("__import__(os)")
    Traceback (most recent call last):
    ...
    butcher._parse.TableauError: entry: cannot parse '__import__(os)': unknown function '__import__' (allowed: sqrt, sin, cos, tan, root, CRootOf)
    """
    if len(text) > _MAX_LENGTH:
        raise TableauError(f"{where}: entry longer than {_MAX_LENGTH} characters")
    return _Parser(text, where, names, exact).parse()


def to_exact(value, where: str = "entry", names: dict | None = None, exact: bool = True) -> sp.Expr:
    """Turn a Python or SymPy number, or a string, into an exact SymPy expression.

    Floats are taken at their shortest decimal representation (``0.1`` becomes ``1/10``), which is
    what a user who typed them meant; ``bool`` and non-finite floats are rejected.
    """
    if isinstance(value, bool):
        raise TableauError(f"{where}: {value!r} is not a number")
    if isinstance(value, str):
        return parse_number(value, where, names, exact)
    if isinstance(value, sp.Basic):
        if isinstance(value, sp.Float):
            return sp.Rational(str(value))
        if not isinstance(value, sp.Expr) or value.has(sp.Float):
            raise TableauError(f"{where}: {value!r} is not an exact number")
        if value.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
            raise TableauError(f"{where}: {value!r} is not finite")
        return value
    if isinstance(value, (int, Fraction, _RationalABC)):
        return sp.Rational(value.numerator, value.denominator)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TableauError(f"{where}: {value!r} is not finite")
        return sp.Rational(repr(value))
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return to_exact(value.item(), where)
    raise TableauError(f"{where}: {value!r} ({type(value).__name__}) is not a number")
