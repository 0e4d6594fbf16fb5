"""The parts the vector fields of :mod:`odernn._fields` and :mod:`odernn._published` are built from:
the elementwise derivatives the vector–Jacobian products use, the mixins that give a field its
``preactivation``, state order or activation, and the parameter setup and initialisation of
``torch.nn``'s recurrent cells. Shared within ``odernn``; the fields themselves are the public
names.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["AddsContext", "ReversedState", "TanhActivation", "TorchLayout", "add_or_none", "gate_parameters", "or_zeros",
           "sigmoid_backward", "tanh_backward", "uniform_"]

# fused elementwise derivatives: grad ⊙ σ(1 − σ) and grad ⊙ (1 − tanh²) from the outputs, one kernel each
sigmoid_backward = torch.ops.aten.sigmoid_backward
tanh_backward = torch.ops.aten.tanh_backward


def or_zeros(grad, like):
    """``grad``, or zeros shaped as ``like`` where the gradient is ``None`` (zero)."""
    return torch.zeros_like(like) if grad is None else grad


def add_or_none(total, term):
    """``total + term`` where either may be ``None`` (zero)."""
    return term if total is None else total if term is None else total + term


def uniform_(parameters: Iterable[torch.Tensor], hidden_size: int) -> None:
    """PyTorch's recurrent-cell initialisation: U(−1/√H, 1/√H) for each parameter, in order."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in parameters:
        nn.init.uniform_(p, -bound, bound)


def gate_parameters(field: nn.Module, gates: int, bias: bool, recurrent: dict | None = None) -> None:
    """``torch.nn``'s recurrent-cell parameters on ``field``, in its layout and order and with its
    initialisation: ``weight_ih`` ``(gates·H, E)``, the recurrent matrices (``recurrent``: name →
    shape; by default ``weight_hh`` ``(gates·H, H)``), then ``bias_ih`` and ``bias_hh`` ``(gates·H)``
    (``None`` without ``bias``), each U(−1/√H, 1/√H)."""
    rows, H = gates * field.hidden_size, field.hidden_size
    field.weight_ih = nn.Parameter(torch.empty(rows, field.input_size))
    for name, shape in (recurrent or {"weight_hh": (rows, H)}).items():
        setattr(field, name, nn.Parameter(torch.empty(shape)))
    field.bias_ih = nn.Parameter(torch.empty(rows)) if bias else None
    field.bias_hh = nn.Parameter(torch.empty(rows)) if bias else None
    uniform_(field.parameters(), H)


class AddsContext:
    """Activations that read ``context + y_in Wᵀ + b`` only: the sum is one fused product."""

    def preactivation(self, context, y_in, W, b):
        out = torch.addmm(context, y_in, W.T) if context.dim() == 2 and y_in.dim() == 2 else context + y_in @ W.T
        return out if b is None else out + b


class ReversedState:
    """The user-facing state lists the blocks in reverse order: the output block first, as
    ``nn.LSTMCell``'s ``(h, c)``, coRNN's ``(y, z)`` and the order-t field's ``(h, h′, …)``, while
    partitioned stepping advances them from the other end."""

    def to_blocks(self, state):
        return tuple(reversed(tuple(state)))

    def from_blocks(self, blocks):
        return tuple(reversed(tuple(blocks)))


class TanhActivation(AddsContext):
    """``act = tanh(context + y_in Wᵀ)``, shared by the tanh-RNN, antisymmetric and coRNN fields."""

    def activate(self, context, pre):
        return (torch.tanh(pre),)

    def activate_vjp(self, act, grad_act):
        grad = tanh_backward(grad_act[0], act[0])
        return grad, grad


class TorchLayout:
    """A field whose parameters :func:`gate_parameters` made are those of its ``torch_step``: the
    names and the order are torch's."""

    def torch_parameter_names(self) -> tuple[str, ...]:
        if self.torch_step is None:
            return ()
        # a key, whatever it holds: a layer binds its call's tensor there (none once released)
        return ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if "bias_ih" in self._parameters else ())
