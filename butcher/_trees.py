"""Rooted trees, the index set of the Runge–Kutta order conditions (Butcher 1963).

A tree is represented canonically as the sorted tuple of its children's trees: the single node is
``()``, the tree ``[τ, τ]`` (a root with two leaves) is ``((), ())``. Two trees are isomorphic
exactly when their canonical tuples are equal, so trees can be hashed, memoised and compared
directly. Trees of order ``n`` are generated as a root above every multiset of trees whose orders
sum to ``n − 1``.

>>> [len(trees(n)) for n in range(1, 9)]    # OEIS A000081
[1, 1, 2, 4, 9, 20, 48, 115]
>>> t = ((), ((),))                         # [τ, [τ]]
>>> tree_order(t), density(t), symmetry(t), tree_str(t)
(4, 8, 1, '[t,[t]]')
"""

from __future__ import annotations

from functools import lru_cache
from math import factorial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import networkx as nx

Tree = tuple  # a sorted tuple of child trees

__all__ = ["Tree", "trees", "trees_up_to", "tree_order", "density", "symmetry", "tree_str", "as_graph"]


@lru_cache(maxsize=None)
def tree_order(tree: Tree) -> int:
    """Number of nodes ``|t|``."""
    return 1 + sum(tree_order(child) for child in tree)


@lru_cache(maxsize=None)
def density(tree: Tree) -> int:
    """Butcher's density ``γ(t) = |t| ∏ γ(children)``; the order condition reads ``Φ(t) = 1/γ(t)``."""
    value = tree_order(tree)
    for child in tree:
        value *= density(child)
    return value


@lru_cache(maxsize=None)
def symmetry(tree: Tree) -> int:
    """Symmetry factor ``σ(t)``: the order of the tree's automorphism group."""
    value = 1
    for child in set(tree):
        multiplicity = tree.count(child)
        value *= factorial(multiplicity) * symmetry(child) ** multiplicity
    return value


@lru_cache(maxsize=None)
def trees(order: int) -> tuple[Tree, ...]:
    """All rooted trees with ``order`` nodes, each once, in a fixed order."""
    if order < 1:
        raise ValueError(f"tree order must be at least 1, got {order}")
    if order == 1:
        return ((),)
    pool = trees_up_to(order - 1)
    found: list[Tree] = []

    def forests(remaining: int, start: int, chosen: list[Tree]) -> None:
        if remaining == 0:
            found.append(tuple(sorted(chosen)))
            return
        for index in range(start, len(pool)):
            size = tree_order(pool[index])
            if size > remaining:
                break  # the pool is sorted by order
            chosen.append(pool[index])
            forests(remaining - size, index, chosen)
            chosen.pop()

    forests(order - 1, 0, [])
    return tuple(sorted(found))


@lru_cache(maxsize=None)
def trees_up_to(order: int) -> tuple[Tree, ...]:
    """All trees of order ``1..order``, by increasing order."""
    return tuple(t for n in range(1, order + 1) for t in trees(n))


def tree_str(tree: Tree) -> str:
    """Butcher's bracket notation with ``t`` for the single node: ``[t,[t]]``."""
    if not tree:
        return "t"
    return "[" + ",".join(tree_str(child) for child in tree) + "]"


def as_graph(tree: Tree) -> nx.DiGraph:
    """The tree as a ``networkx.DiGraph`` with edges from parent to child; the root is node 0."""
    import networkx as nx  # here, not at import: every process that trains a cell imports butcher
    graph = nx.DiGraph()
    graph.add_node(0)

    def add(node: int, subtree: Tree) -> None:
        for child in subtree:
            index = graph.number_of_nodes()
            graph.add_edge(node, index)
            add(index, child)

    add(0, tree)
    return graph
