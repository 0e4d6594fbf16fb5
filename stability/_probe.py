"""A cheap stability probe for the training loop.

Every ``every`` calls it takes one state of the current batch, finds a few eigenvalues of the
field's Jacobian there **without forming it** — ARPACK's implicitly restarted Arnoldi method
(``scipy.sparse.linalg.eigs``) on Jacobian–vector products — and judges them against the
tableau's region. The eigenvalues that leave a stability region first are the largest in modulus
(explicit tableaux have bounded regions) and the rightmost (``Re λ > 0`` is outside every region
near 0), so it asks ARPACK for both kinds.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Probe", "ProbeResult", "StabilityWarning", "token_map_eigenvalues", "top_eigenvalues"]

log = logging.getLogger("stability")


class StabilityWarning(RuntimeWarning):
    """The probe found step-scaled eigenvalues outside the tableau's stability region."""


@dataclass(frozen=True)
class ProbeResult:
    step: int
    margin: float  # 1 − max |R(hλ)| over the eigenvalues found (partitioned: 1 − the step map's radius)
    eigenvalues: np.ndarray  # hλ (partitioned stepping: the eigenvalues of the token's map)


def top_eigenvalues(cell, x: torch.Tensor, state, k: int = 6, tol: float = 1e-3) -> np.ndarray:
    """``k`` largest-modulus and ``k`` rightmost eigenvalues of ``∂f/∂y`` at the first element of
    the batch ``(x, state)``, to relative accuracy ``tol``, matrix-free: ARPACK on ``v ↦ Jᵀv``
    (same eigenvalues as ``J``), one vector–Jacobian product through a retained one-evaluation
    graph per Arnoldi step. Fields with ``D ≤ 2k + 2`` get the dense Jacobian instead."""
    field = cell.field
    return _extreme_eigenvalues(cell, x, state, lambda context, blocks: field(context, blocks), k, tol, ("LM", "LR"))


def token_map_eigenvalues(cell, x: torch.Tensor, state, k: int = 6, tol: float = 1e-3) -> np.ndarray:
    """``k`` largest-modulus eigenvalues of one token's map ``∂y⁺/∂y`` (all its steps, as the cell
    runs them: partitioned stepping included) at the first element of the batch, matrix-free in
    the same way."""
    h = cell.dt / cell.steps
    return _extreme_eigenvalues(cell, x, state, lambda context, blocks: cell.integrate(context, blocks, h), k, tol,
                                ("LM",))


def _extreme_eigenvalues(cell, x, state, function, k: int, tol: float, kinds) -> np.ndarray:
    """Eigenvalues of the Jacobian of ``function(context, blocks) -> blocks`` in the blocks at the
    first batch element: ARPACK's ``kinds`` (``LM`` largest modulus, ``LR`` rightmost) on VJPs, or
    all of them from the dense Jacobian when ``D ≤ 2k + 2``."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    field = cell.field
    x = x[:1].detach()
    blocks = tuple(b[:1].detach() for b in field.to_blocks(state))
    sizes = [b.shape[-1] for b in blocks]
    D = sum(sizes)
    y = torch.cat(blocks, dim=-1).requires_grad_()
    with torch.enable_grad():
        out = torch.cat(function(field.project(x), tuple(y.split(sizes, dim=-1))), dim=-1)
    if D <= 2 * k + 2:
        rows = [torch.autograd.grad(out[0, i], y, retain_graph=True)[0][0] for i in range(D)]
        J = torch.stack(rows).detach().to("cpu", torch.float64)
        return torch.linalg.eigvals(J).numpy()

    def matvec(v):  # ARPACK's real driver: real vectors in, real vectors out
        cotangent = torch.as_tensor(np.asarray(v, dtype=np.float64).reshape(1, D)).to(out.device, out.dtype)
        (grad,) = torch.autograd.grad(out, y, cotangent, retain_graph=True)
        return grad.to("cpu", torch.float64).numpy().ravel()

    operator = LinearOperator((D, D), matvec=matvec, dtype=np.float64)
    # a fixed start vector: ARPACK's own is drawn from a generator that advances with every call in
    # the process, so the same state would give eigenvalues that differ run to run within tol
    start = np.random.default_rng(0).standard_normal(D)
    found = []
    for which in kinds:
        try:
            # a wide Krylov space (ncv ≥ 30, not ARPACK's 2k + 1): the spectra of gated fields are
            # clustered, and the default restarts ten times as often (3,300 vs 290 products at D = 1024)
            found.append(eigs(operator, k=k, which=which, ncv=min(D - 1, max(2 * k + 1, 30)),
                              return_eigenvectors=False, tol=tol, maxiter=20 * D, v0=start))
        except ArpackNoConvergence as err:  # keep what converged
            found.append(err.eigenvalues)
    return np.concatenate(found)


class Probe:
    """Call it every training step with the current batch; every ``every`` steps it measures the
    margin ``1 − max |R(hλ)|`` of the ``k`` largest and ``k`` rightmost eigenvalues, logs it
    (logger ``"stability"``), keeps it in :attr:`history` and warns (:class:`StabilityWarning`)
    when it is negative.

    >>> import torch, odernn, stability
    >>> cell = odernn.cell("gru-ode:rk4", 3, 32)
    >>> probe = stability.Probe(cell, every=1)
    >>> result = probe(0, torch.randn(4, 3), torch.zeros(4, 32))
    >>> result.margin > 0, len(probe.history)
    (True, 1)
    """

    def __init__(self, cell, every: int = 100, k: int = 6, warn: bool = True):
        if every < 1 or k < 1:
            raise ValueError("every and k must be positive")
        self.cell, self.every, self.k, self.warn = cell, every, k, warn
        self.history: list[ProbeResult] = []

    def __call__(self, step: int, x: torch.Tensor, state) -> ProbeResult | None:
        if step % self.every:
            return None
        cell = self.cell
        h = cell.dt / cell.steps
        if cell.partitioned:  # the blocks advanced one after another: the token map's own spectrum
            scaled = token_map_eigenvalues(cell, x, state, self.k)
            margin = 1.0 - float(np.abs(scaled).max()) ** (1 / cell.steps) if scaled.size else 1.0
        else:
            scaled = h * top_eigenvalues(cell, x, state, self.k)
            margin = 1.0 - float(np.max(cell.tableau.amplification(scaled))) if scaled.size else 1.0
        result = ProbeResult(step, margin, scaled)
        self.history.append(result)
        log.info("step %d: stability margin %+.4g (%s, h = %g)", step, margin, cell.tableau.name, h)
        if margin < -1e-9 and self.warn:
            warnings.warn(f"step {step}: the cell left its stability region (margin {margin:+.4g}: some "
                          f"|R(hλ)| > 1 with {cell.tableau.name or 'the tableau'}, h = {h:g}); lower dt, add "
                          "steps, or train with a constraint (odernn.constraints())", StabilityWarning,
                          stacklevel=2)
        return result
