"""The empirical counterpart of the spectral check: run the cell and see."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Simulation", "simulate"]


@dataclass(frozen=True)
class Simulation:
    peak: float  # the largest |state| entry seen (inf once a state is not finite)
    gradient: float  # ‖∂⟨v, state_T⟩/∂state_0‖ for a random v

    def blew_up(self, limit: float = 1e3) -> bool:
        return not (self.peak < limit and self.gradient < limit)


def simulate(cell, steps: int = 300, batch: int = 4, seed: int = 1) -> Simulation:
    """Drive ``cell`` from the zero state with random normal inputs for ``steps`` tokens and
    backpropagate a random projection of the last state to the first (in the cell's dtype)."""
    reference = next(cell.parameters())
    dtype, device = reference.dtype, reference.device
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same inputs on every device
    xs = torch.randn(steps, batch, cell.input_size, generator=g, dtype=dtype).to(device)
    blocks0 = tuple(b.requires_grad_() for b in cell.field.to_blocks(cell.field.initial_state(batch, dtype, device)))
    state, peak = cell.field.from_blocks(blocks0), 0.0
    for x in xs:
        state = cell(x, state)
        blocks = cell.field.to_blocks(state)
        finite = all(torch.isfinite(b).all() for b in blocks)
        peak = max(peak, *(b.detach().abs().max().item() for b in blocks)) if finite else math.inf
    blocks = cell.field.to_blocks(state)
    projection = sum((b * torch.randn(b.shape, generator=g, dtype=dtype).to(device)).sum() for b in blocks)
    grads = torch.autograd.grad(projection, blocks0)
    return Simulation(peak, math.sqrt(sum(float(gr.pow(2).sum()) for gr in grads)))
