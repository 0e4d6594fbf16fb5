"""Exact numbers from user text, through a restricted grammar.

Coefficients typed by a user (a TOML/JSON file, the command line) never reach ``eval`` or
``sympify``: they are tokenised and parsed here by a small recursive-descent parser that knows
numbers, ``+ - * /``, ``^`` or ``**``, parentheses, ``sqrt(...)`` and named symbols. Anything else
is a :class:`TableauError` naming the offending entry.

Grammar::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('+' | '-') unary | power
    power  := atom (('^' | '**') unary)?          # right-associative, binds tighter than unary minus
    atom   := NUMBER | NAME | 'sqrt' '(' expr ')' | '(' expr ')'
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from numbers import Rational as _RationalABC

import sympy as sp

__all__ = ["TableauError", "parse_number", "to_exact"]


class TableauError(ValueError):
    """A tableau (or one of its entries) is malformed; the message names what and where."""


_TOKEN = re.compile(
    r"\s*(?:"
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>\*\*|[-+*/^()])"
    r")"
)
_FUNCTIONS = {"sqrt": sp.sqrt}
_MAX_EXPONENT = 64  # keeps "2^(10^9)" from hanging the parser
_MAX_LENGTH = 2000


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
    def __init__(self, text: str, where: str):
        self.text, self.where = text, where
        self.toks = _tokens(text, where)
        self.i = 0

    def fail(self, why: str):
        raise TableauError(f"{self.where}: cannot parse {self.text!r}: {why}")

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
        return value

    def expr(self):
        value = self.term()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

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
        return value

    def unary(self):
        if self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            value = self.unary()
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
            return base**exponent
        return base

    def atom(self):
        kind, value = self.take()
        if kind == "number":
            return sp.Rational(value)  # decimal text is exact: "0.1" is 1/10
        if kind == "name":
            if value in _FUNCTIONS:
                self.take("(")
                arg = self.expr()
                self.take(")")
                return _FUNCTIONS[value](arg)
            if self.peek()[1] == "(":
                self.fail(f"unknown function {value!r} (only {', '.join(_FUNCTIONS)} is allowed)")
            return sp.Symbol(value)
        if value == "(":
            inner = self.expr()
            self.take(")")
            return inner
        self.fail(f"unexpected {value!r}")


def parse_number(text: str, where: str = "entry") -> sp.Expr:
    """Parse ``text`` into an exact SymPy number without evaluating code.

    >>> parse_number("1/3")
    1/3
    >>> parse_number("sqrt(3)/6 + 1/2")
    sqrt(3)/6 + 1/2
    >>> parse_number("0.25")
    1/4
    >>> parse_number("2^-1")
    1/2
    >>> parse_number("__import__(os)")
    Traceback (most recent call last):
    ...
    butcher._parse.TableauError: entry: cannot parse '__import__(os)': unknown function '__import__' (only sqrt is allowed)
    """
    if len(text) > _MAX_LENGTH:
        raise TableauError(f"{where}: entry longer than {_MAX_LENGTH} characters")
    return _Parser(text, where).parse()


def to_exact(value, where: str = "entry") -> sp.Expr:
    """Turn a Python or SymPy number, or a string, into an exact SymPy expression.

    Floats are taken at their shortest decimal representation (``0.1`` becomes ``1/10``), which is
    what a user who typed them meant; ``bool`` and non-finite floats are rejected.
    """
    if isinstance(value, bool):
        raise TableauError(f"{where}: {value!r} is not a number")
    if isinstance(value, str):
        return parse_number(value, where)
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
