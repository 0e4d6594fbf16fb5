"""Jacobian regularisation: keep the step's amplification of the linearised state near 1.

One token of a cell maps the state ``y`` to ``y⁺``; linearised, perturbations (and, transposed,
gradients) are multiplied by ``M = ∂y⁺/∂y``, which is ``R(hJ)`` (per step) for a field with a
constant Jacobian ``J``. Norms of ``M`` far from 1 along the trajectory are what makes gradients
vanish or explode over many tokens (Pascanu, Mikolov & Bengio 2013, whose regulariser pushes the
gain along the back-propagated error towards 1). Here the directions are random: for a unit
vector ``v`` drawn uniformly, ``E‖vᵀM‖² = ‖M‖_F² / D``, so the penalty pulls the root-mean-square
singular value of ``M`` towards 1 — one vector–Jacobian product per probe, differentiable
(``create_graph``), never forming ``M``.
"""

from __future__ import annotations

import torch

__all__ = ["jacobian_penalty"]


def jacobian_penalty(cell, x: torch.Tensor, state=None, probes: int = 1,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``mean over the batch and the probes of (‖vᵀ ∂y⁺/∂y‖ − 1)²`` for random unit vectors ``v``
    (all state blocks together), with ``y⁺ = cell(x, state)``: a differentiable scalar to add to
    the loss, times a weight λ. ``state``: the cell's state convention (``None`` for zeros); it is
    treated as a constant (the penalty's gradient goes to the parameters only)."""
    if probes < 1:
        raise ValueError(f"probes must be a positive integer, got {probes!r}")
    field = cell.field
    if state is None:
        state = field.initial_state(x.shape[0], x.dtype, x.device)
    blocks = tuple(b.detach().requires_grad_() for b in field.to_blocks(state))
    with torch.enable_grad():
        out = field.to_blocks(cell(x.detach(), field.from_blocks(blocks)))
        total = 0.0
        for _ in range(probes):
            v = [torch.randn(o.shape, generator=generator, dtype=o.dtype, device=o.device) for o in out]
            norm = torch.sqrt(sum(p.square().sum(dim=-1, keepdim=True) for p in v))
            v = [p / norm for p in v]
            grads = torch.autograd.grad(out, blocks, v, create_graph=True, allow_unused=True)
            gain = torch.sqrt(sum(g.square().sum(dim=-1) for g in grads if g is not None))
            total = total + (gain - 1).square().mean()
    return total / probes
