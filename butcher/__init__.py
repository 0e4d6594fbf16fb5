"""``butcher`` — exact Butcher tableaux and everything derived from them.

A Runge–Kutta method is validated data: coefficients ``A``, ``b``, ``c``, ``b_hat`` held as exact
SymPy numbers. Its order (from the rooted-tree conditions), stage order, stability function and
stability properties are derived from the coefficients, never typed in.

>>> import butcher
>>> tab = butcher.get("rk4")
>>> tab.order(), tab.stages, tab.is_explicit
(4, 4, True)
>>> tab.imaginary_stability_interval()
Interval(-2*sqrt(2), 2*sqrt(2))
"""

from ._catalogue import Entry, UnknownMethodError, entry, get, names
from ._families import family, nodes
from ._io import MAX_FILE_BYTES, MAX_NESTING, dumps_toml, load, names_a_file
from ._limits import DEADLINE, TimeLimitExceeded, time_limit
from ._parse import MAX_DEGREE, MAX_DIGITS, BudgetError, TableauError, parse_number
from ._plot import plot_stability_region
from ._tableau import Approximation, ButcherTableau, Coefficients, TableauWarning, z
from ._trees import as_graph, density, symmetry, tree_order, tree_str, trees

__all__ = [
    "DEADLINE", "MAX_DEGREE", "MAX_DIGITS", "MAX_FILE_BYTES", "MAX_NESTING", "Approximation", "BudgetError", "ButcherTableau", "Coefficients", "Entry", "TableauError", "TableauWarning", "TimeLimitExceeded", "UnknownMethodError",
    "as_graph", "density", "dumps_toml", "entry", "family", "get", "load", "names", "names_a_file", "nodes",
    "parse_number", "plot_stability_region", "symmetry", "time_limit", "tree_order", "tree_str", "trees", "z",
]
