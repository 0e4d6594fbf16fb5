"""The continuous adjoint of one token's solve (Chen et al. 2018), with memory independent of the
number of solver steps.

Forward: the cell's own solve (the same values as without the adjoint), under ``no_grad``; only
the input context and the final state are kept. Backward: the augmented system, in reversed time
``s = Δ − τ``, from ``s = 0`` with ``a = ∂L/∂y(Δ)``, ``g = 0``:

    dy/ds = −f(y),   da/ds = (∂f/∂y)ᵀ a,   dg_c/ds = (∂f/∂c)ᵀ a,   dg_θ/ds = (∂f/∂θ)ᵀ a,

integrated by a tableau of its own choosing — on a fixed grid, or with error control on ``(y, a)``
(a seminorm: the gradient blocks do not feed back) — gives ``∂L/∂y(0) = a(Δ)``, ``∂L/∂c = g_c``,
``∂L/∂θ = g_θ``. The context ``c = project(x)`` is an ordinary autograd input, so the input weights
and the embedding get their gradients through it without recomputing the projection per stage.

The gradient is that of the exact flow: it differs from backpropagation through the forward steps
by the discretisation error of both solves (``O(h^p)``), and it is wrong where ``y`` cannot be
recovered backwards (a backward pass stiffer than the forward one); see ``benchmarks/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

import butcher

from ._stepping import AdaptiveScheme, ExplicitScheme, parameters_bound

__all__ = ["AdjointMethod", "adjoint", "adjoint_token"]


@dataclass(frozen=True)
class AdjointMethod:
    """The backward solve: ``tableau`` (explicit; default the cell's), ``steps`` over Δ (default
    the cell's), or error control with ``rtol``/``atol`` (an embedded pair)."""

    tableau: str | butcher.ButcherTableau | None = None
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None

    def scheme(self, cell):
        """The backward scheme, built once per (method, tableau): the backward pass runs per token."""
        return _backward_scheme(self, cell.tableau)


@lru_cache(maxsize=64)
def _backward_scheme(method: AdjointMethod, cell_tableau):
    tableau = method.tableau if method.tableau is not None else cell_tableau
    if isinstance(tableau, str):
        tableau = butcher.get(tableau)
    if not tableau.is_explicit:
        raise ValueError(f"the backward solve of the adjoint runs explicit tableaux; {tableau.name or 'this one'} "
                         "is implicit: choose one with the adjoint method (e.g. rk4, dopri5)")
    if method.rtol is not None or method.atol is not None:
        return AdaptiveScheme(tableau, rtol=method.rtol if method.rtol is not None else 1e-6,
                              atol=method.atol if method.atol is not None else 1e-8)
    return ExplicitScheme(tableau)


class _TokenAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, method, interval, context, blocks_count, *tensors):
        # tensors = state blocks, then the field's parameters: inputs only so that autograd routes
        # their gradients here; the field reads them itself
        blocks = tensors[:blocks_count]
        with torch.no_grad():
            out = cell.integrate(context, tuple(blocks), interval / cell.steps)
        ctx.cell, ctx.method, ctx.interval, ctx.blocks_count = cell, method, interval, blocks_count
        # the backward solves with what this token was solved with, whatever the cell holds by then
        ctx.parameters, ctx.steps = list(cell.field.named_parameters()), cell.steps
        ctx.save_for_backward(context, *out)
        return tuple(o.clone() for o in out)

    @staticmethod
    def backward(ctx, *grad_out):
        if torch.is_grad_enabled():  # a backward that builds a graph, to be differentiated again
            raise RuntimeError("the continuous adjoint gives first derivatives only: for second derivatives "
                               "(create_graph=True) use grad='backprop' or grad='checkpoint'")
        with parameters_bound(ctx.cell.field, ctx.parameters):
            return _TokenAdjoint._backward(ctx, *grad_out)

    @staticmethod
    def _backward(ctx, *grad_out):
        cell, n = ctx.cell, ctx.blocks_count
        context, *y = ctx.saved_tensors
        field = cell.field
        params = tuple(field.parameters())
        trainable = [p for p in params if p.requires_grad]
        with torch.enable_grad():  # the recurrent map as a function of the parameters: one chain rule at the end
            structure = field.recurrent() if field.elementwise else None
        if structure is not None:
            # the field's own vector–Jacobian products: no graph per stage; the parameter blocks of
            # the augmented system are the gradients of the recurrent map (W, b)
            W, b = structure
            recurrent = [t for t in (W, b) if t is not None]
            augmented = _structured_augmented(field, context, n, W.detach(), None if b is None else b.detach())
            gradients = tuple(torch.zeros_like(t) for t in recurrent)
        else:
            leaf = context.detach().requires_grad_()

            def augmented(blocks):
                with torch.enable_grad():
                    yv = tuple(b.detach().requires_grad_() for b in blocks[:n])
                    out = field(leaf, yv)
                    inputs = (*yv, leaf, *trainable)
                    grads = torch.autograd.grad(out, inputs, blocks[n:2 * n], allow_unused=True)
                grads = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs))
                return (*(-o.detach() for o in out), *grads)
            gradients = tuple(torch.zeros_like(p) for p in trainable)

        state = (*y, *(g if g is not None else torch.zeros_like(b) for g, b in zip(grad_out, y)),
                 torch.zeros_like(context), *gradients)
        scheme = ctx.method.scheme(cell)
        steps = ctx.method.steps or ctx.steps
        h = ctx.interval / steps
        if isinstance(scheme, AdaptiveScheme):
            state = scheme.integrate(augmented, state, ctx.interval, h, controlled=2 * n)
        else:
            for _ in range(steps):
                state = scheme.step(augmented, state, h)
        grad_blocks, grad_context, integrated = state[n:2 * n], state[2 * n], state[2 * n + 1:]
        if structure is not None and trainable:
            integrated = torch.autograd.grad(recurrent, trainable, integrated, allow_unused=True)
        by_parameter = dict(zip(map(id, trainable), integrated))
        grad_params = [by_parameter.get(id(p)) for p in params]
        return (None, None, None, grad_context, None, *grad_blocks, *grad_params)


def _structured_augmented(field, context, n: int, W, b):
    """The augmented system ``(−f, (∂f/∂y)ᵀa, (∂f/∂c)ᵀa, (∂f/∂W)ᵀa, (∂f/∂b)ᵀa)`` from the field's
    structure (``odernn._fields``): one product with ``W`` forward, one back, one for ``∂f/∂W``."""
    which = tuple(range(n))
    widths = None

    def augmented(blocks):
        nonlocal widths
        y, a = blocks[:n], blocks[n:2 * n]
        y_in = field.recurrent_input(y)
        act = field.activate(context, field.preactivation(context, y_in, W, b))
        f = field.derivative(act, y, which)
        grads, grad_act = field.derivative_vjp(act, y, a, which)
        grad_context, grad_pre = field.activate_vjp(act, grad_act)
        grads = [torch.zeros_like(block) if g is None else g for g, block in zip(grads, y)]
        widths = widths or [y[k].shape[-1] for k in field.recurrent_blocks]
        for k, part in zip(field.recurrent_blocks, (grad_pre @ W).split(widths, dim=-1)):
            grads[k] = grads[k] + part
        out = (*(-d for d in f), *grads, grad_context, grad_pre.T @ y_in)
        return out if b is None else (*out, grad_pre.sum(dim=0))
    return augmented


def adjoint_token(cell, context, blocks: tuple, interval: float, method: AdjointMethod | None = None) -> tuple:
    """The state blocks after one token of input ``context`` (``field.project(x)``, computed once
    for a whole sequence by the caller) over ``interval``, with the continuous adjoint's gradient."""
    return _TokenAdjoint.apply(cell, method or AdjointMethod(), float(interval), context, len(blocks), *blocks,
                               *cell.field.parameters())


def adjoint(cell, x: torch.Tensor, state=None, method: AdjointMethod | None = None):
    """``cell(x, state)`` with the gradient of the continuous adjoint (see the module docstring)."""
    field = cell.field
    if state is None:
        state = field.initial_state(x.shape[0], x.dtype, x.device)
    out = adjoint_token(cell, field.project(x), field.to_blocks(state), cell.dt, method)
    return field.from_blocks(tuple(out))
