"""Handing a cell's field and tableau to ``torchdiffeq`` (``odeint`` and ``odeint_adjoint``).

``TokenODE`` is the field at one token's input as torchdiffeq's ``func(t, y)`` on the blocks
concatenated into one tensor. ``torchdiffeq_method(tableau)`` names a torchdiffeq solver that runs
that exact tableau: torchdiffeq's own where it has the same coefficients, otherwise a fixed-grid
solver generated from the tableau and registered with torchdiffeq under ``"odernn:NAME"``.
"""

from __future__ import annotations

import torch
from torch import nn

import butcher

__all__ = ["TokenODE", "torchdiffeq_method"]


class TokenODE(nn.Module):
    """``dy/dτ = f(y, x)`` for a fixed input ``x``, with ``y`` the concatenated state blocks.

    The input projection is recomputed inside every evaluation so that ``odeint_adjoint`` sees
    the whole dependence on the parameters in the function it differentiates.
    """

    def __init__(self, field, x: torch.Tensor):
        super().__init__()
        self.field, self.x = field, x
        self.sizes = list(field.block_sizes)

    def pack(self, state) -> torch.Tensor:
        return torch.cat(self.field.to_blocks(state), dim=-1)

    def unpack(self, y: torch.Tensor):
        return self.field.from_blocks(tuple(y.split(self.sizes, dim=-1)))

    def forward(self, t, y):
        blocks = tuple(y.split(self.sizes, dim=-1))
        return torch.cat(self.field(self.field.project(self.x), blocks), dim=-1)


# torchdiffeq solvers with exactly the coefficients of a catalogue method
_NATIVE_FIXED = {"euler": "euler", "midpoint": "midpoint", "rk38": "rk4"}  # its "rk4" is the 3/8 rule
_NATIVE_ADAPTIVE = {"dopri5": "dopri5", "bs3": "bosh3", "heun-euler": "adaptive_heun"}


def torchdiffeq_method(tableau: butcher.ButcherTableau | str, adaptive: bool = False) -> str:
    """A ``method`` string for ``torchdiffeq.odeint`` that integrates with exactly this tableau:
    on a fixed grid (pass ``options=dict(step_size=…)``), or with torchdiffeq's own error control
    (``adaptive=True``, for the embedded pairs torchdiffeq implements)."""
    if isinstance(tableau, str):
        tableau = butcher.get(tableau)
    native = _NATIVE_ADAPTIVE if adaptive else _NATIVE_FIXED
    if tableau.name in native and tableau == butcher.get(tableau.name):
        return native[tableau.name]
    if adaptive:
        raise ValueError(f"torchdiffeq has no adaptive solver with the coefficients of {tableau.name!r}; "
                         f"it has {', '.join(_NATIVE_ADAPTIVE)} (or use a fixed grid)")
    if not tableau.is_explicit:
        raise ValueError(f"{tableau.name or 'the tableau'} is implicit; torchdiffeq runs explicit tableaux only")
    try:  # torchdiffeq has no public registry of solvers: fail clearly if its internals move
        from torchdiffeq._impl.odeint import SOLVERS
        from torchdiffeq._impl.solvers import FixedGridODESolver
    except ImportError as err:  # pragma: no cover - depends on the torchdiffeq version
        raise RuntimeError(f"this torchdiffeq version does not expose its solver registry: {err}") from None
    from ._stepping import ExplicitScheme

    name = f"odernn:{tableau.name or hash(tableau)}"
    if name not in SOLVERS:
        scheme, order = ExplicitScheme(tableau), tableau.order()

        class TableauSolver(FixedGridODESolver):
            def _step_func(self, func, t0, dt, t1, y0):
                # f0 only feeds torchdiffeq's cubic interpolation: with the default linear one it
                # would be an extra evaluation per step (a fifth of RK4's work), so it is not given
                (y1,) = scheme.step(lambda blocks: (func(t0, blocks[0]),), (y0,), dt)
                return y1 - y0, None

        TableauSolver.order = order
        TableauSolver.__name__ = f"TableauSolver[{tableau.name}]"
        SOLVERS[name] = TableauSolver
    return name
