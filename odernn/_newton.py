"""Newton's method for the stage equations of an implicit step, with its two fallbacks: the one
solver both the per-token cell (:class:`~odernn.ImplicitScheme`, its linear systems by LU) and
the sequence engine (``odernn._implicit``, by GMRES) turn to where their chord iterations do not
converge.

A stage system is ``system(K, tau=1) → (G, linear)``: the residual ``G = F(K) − K`` (rows are
samples, ``(B, N)``) and what ``solve(linear, G)`` needs to return the Newton update ``δ`` with
``(I − ∂F/∂K) δ = G``; ``tau < 1`` asks for the equations of the step ``tau·h``. Three tries, each
from the caller's first guess:

1. plain Newton (full steps);
2. Newton with Armijo's backtracking line search, per sample: from a poor first guess plain
   Newton can wander for its whole budget beside a well-conditioned solution (a trained GRU-ODE
   under SDIRK, docs/results.md §9), while a line search alone can crawl where full steps get
   there — so plain Newton goes first, and every solve it finishes is as it was;
3. continuation in the step: the stage equations at ``τ·h`` for each ``τ`` of :data:`CONTINUATION`,
   each solved from the last solution (``τ → 0`` is the explicit limit, where ``F`` is nearly
   constant), to the branch at ``τ = 1``.
"""

from __future__ import annotations

import torch

HALVINGS = 10  # of a step by the line search (the second try), at most: then taken as it is
CONTINUATION = (0.25, 0.5, 0.75, 1.0)  # the third try: the stage equations at these fractions of h in turn


def largest_magnitudes(delta: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
    """``(max|δ|, max|x|)`` in one reduction and one host synchronisation (``δ`` and ``x`` of one
    shape): an implicit solve tests convergence with them once per iteration."""
    return tuple(torch.stack((delta, x)).abs().amax(dim=tuple(range(1, delta.dim() + 1))).tolist())


def relative_update(delta: torch.Tensor, x: torch.Tensor) -> float:
    """``max|δ| / (1 + max|x|)``: the convergence test of every implicit stage solve."""
    big, size = largest_magnitudes(delta, x)
    return big / (1 + size)


def newton_with_fallbacks(system, K, tol: float, budget: int, solve, eta: float = 0.0):
    """The three tries of the module's docstring, each of at most ``budget`` iterations, the linear
    solves to the relative residual ``eta`` (0: exact): ``(the solution or None, evaluations of
    ``system``, the last try's last relative update)``."""
    evaluations = 0
    for halvings in (0, HALVINGS):
        solved, count, error = newton(system, K, tol, budget, solve, eta, halvings)
        evaluations += count
        if solved is not None:
            return solved, evaluations, error
    for tau in CONTINUATION:
        K, count, error = newton(lambda Kt, tau=tau: system(Kt, tau), K, tol, budget, solve, eta, HALVINGS)
        evaluations += count
        if K is None:
            break
    return K, evaluations, error


def newton(system, K, tol: float, budget: int, solve, eta: float = 0.0, halvings: int = 0):
    """Newton's method from ``K`` for at most ``budget`` iterations, each step through
    :func:`line_search` with at most ``halvings`` (0: the full step, plain Newton):
    ``(the solution or None, evaluations of system, the last relative update)``."""
    G, linear = system(K)
    evaluations, error = 1, float("inf")
    for _ in range(budget):
        delta = solve(linear, G)
        full = K + delta
        error = relative_update(delta, full)
        if error <= tol:
            return full, evaluations, error
        if not error == error:
            break
        K, G, linear, tries = line_search(system, K, G, delta, full, tol, eta, halvings)
        evaluations += tries
    return None, evaluations, error


def line_search(system, K, G, delta, full, tol: float, eta: float, halvings: int = 0):
    """Armijo's backtracking for the (inexact) Newton step ``delta`` from ``K`` (residual ``G``;
    ``full`` is ``K + delta``), row by row: a row's step is halved (at most ``halvings`` times;
    none: the full step) until its residual norm falls by the factor ``1 − 1e-4·α·(1 − eta)``
    (Eisenstat & Walker's condition for a step solved to ``eta``), or the row's full step is
    already within the tolerance (round-off is no reason to shorten it).
    ``(the new K, its residual and linear system, evaluations)``: the full step, where every row
    takes it, costs one evaluation, which the next Newton iteration uses."""
    if not halvings:
        return (full, *system(full), 1)
    norm = G.norm(dim=-1, keepdim=True)
    settled = delta.abs().amax(dim=-1, keepdim=True) <= tol * (1 + full.abs().max())
    alpha = torch.ones_like(norm)
    for halving in range(halvings + 1):
        trial = full if halving == 0 else K + alpha * delta
        G_trial, linear = system(trial)
        enough = settled | (G_trial.norm(dim=-1, keepdim=True) <= (1 - 1e-4 * (1 - eta) * alpha) * norm)
        if bool(enough.all()) or halving == halvings:
            return trial, G_trial, linear, halving + 1
        alpha = torch.where(enough, alpha, alpha / 2)
