"""Vector fields ``dᵗh/dτᵗ = f(…, x; θ)`` written as first-order systems of state blocks.

Every field shares one interface, so that one stepper serves them all:

- ``blocks``: the number ``t`` of state blocks (``1`` for RNN/GRU fields, ``2`` for LSTM and coRNN,
  ``t`` for a field raised to order ``t``);
- ``project(x)``: the part that does not depend on the state, computed **once per token** (not
  once per stage) and passed to every evaluation as ``context``: the input's projection, and any
  parameter the elementwise activations read (modReLU's bias), so that the engine differentiates
  it with the context; it maps any leading shape, so a whole sequence ``(T, B, E)`` is projected by
  one matrix product;
- ``forward(context, state) -> derivatives``: the time derivative of each block, as a tuple;
- ``to_blocks(state)`` / ``from_blocks(blocks)``: the user-facing state convention (the one of the
  ``torch.nn`` cell the field generalises) to and from the tuple of blocks the stepper works on.

The built-in fields share one more structure, which the sequence engine (``odernn.ODERNN``) runs
without autograd: the state enters through **one linear map**, then elementwise work::

    pre = y_in Wᵀ + b                   y_in: the blocks ``recurrent_blocks``, concatenated
    act = activate(context, pre)        elementwise gates and nonlinearities
    dy  = derivative(act, blocks)       elementwise in the activations and the state

with ``(W, b) = recurrent()``. Fields whose activations read ``context + pre`` only (all but the
GRU, whose reset gate scales part of ``pre``) add the context inside the matrix product
(``preactivation``: one ``addmm``), and their ``pre`` includes it. Each field supplies the vector–Jacobian products of its two
elementwise parts (``derivative_vjp``, ``activate_vjp``); the engine does the matrix products and
the weight gradients, over a whole sequence at once. ``forward`` is this same composition, so the
per-token cells and the engine evaluate one definition. A field whose ``recurrent()`` is ``None``
(``ModuleField``) is differentiated by autograd instead.

Parameter names and layouts follow ``torch.nn.RNNCell``, ``GRUCell`` and ``LSTMCell`` exactly, so
weights can be copied between them without reshaping. The published cells of the literature
(coRNN, expRNN's orthogonal RNN, Lipschitz RNN, LEM, UnICORNN) are in :mod:`odernn._published`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._field_toolkit import (AddsContext, ReversedState, TanhActivation, TorchLayout, add_or_none, gate_parameters,
                             or_zeros, sigmoid_backward, tanh_backward, uniform_)

__all__ = ["VectorField", "TanhRNNField", "GRUODEField", "LSTMField", "AntisymmetricField", "HigherOrderField",
           "ModuleField"]

# the torch.nn cell of each torch.nn sequence module, and the parameters such a cell has
_TORCH_CELLS = {nn.RNN: nn.RNNCell, nn.GRU: nn.GRUCell, nn.LSTM: nn.LSTMCell}
_TORCH_CELL_PARAMETERS = frozenset({"weight_ih", "weight_hh", "bias_ih", "bias_hh"})


class VectorField(nn.Module):
    """Base class: a field on ``blocks`` state blocks of width ``hidden_size`` each."""

    blocks = 1
    recurrent_blocks: tuple[int, ...] = (0,)  # the blocks the recurrent matrix reads, in its column order
    activation_free_blocks: tuple[int, ...] = ()  # blocks whose derivative never reads the activations

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self._held = None  # recurrent() held for one token's evaluations (held_structure)

    @property
    def block_sizes(self) -> tuple[int, ...]:
        """The width of each state block, in block order (``hidden_size`` each, but for the
        LSTM's projected ``h``)."""
        return (self.hidden_size,) * self.blocks

    @property
    def output_size(self) -> int:
        """The width of the block a layer outputs."""
        return self.block_sizes[self.output_block]

    # -- what the field is: asked by the cells and layers, which never read its attributes --------
    # the torch.nn sequence module (nn.RNN, nn.GRU, nn.LSTM) whose layers' update one forward-Euler
    # step of this field (Δ = 1, partitioned over several blocks) equals, with the same parameters
    torch_step: type | None = None

    @property
    def torch_cell(self) -> type | None:
        """The ``torch.nn`` cell (``nn.RNNCell``, ``nn.GRUCell``, ``nn.LSTMCell``) that one
        forward-Euler step of this field equals with the same parameters: the cell of
        :attr:`torch_step`'s layers, where the field has no parameter such a cell lacks (no cell
        has ``nn.LSTM``'s projection)."""
        extra = {name for name, value in self._parameters.items() if value is not None} - _TORCH_CELL_PARAMETERS
        return None if extra else _TORCH_CELLS.get(self.torch_step)

    def torch_parameter_names(self) -> tuple[str, ...]:
        """The names of the field's parameters that are :attr:`torch_step`'s, which are torch's
        names too, in the order torch's kernels take them (``weight_ih``, ``weight_hh``, ``bias_ih``,
        ``bias_hh``, then ``nn.LSTM``'s ``weight_hr``); empty where :attr:`torch_step` is ``None``."""
        return ()

    @property
    def field_name(self) -> str:
        """The field's class name, without the ``Parametrized`` a constraint puts in front."""
        return type(self).__name__.removeprefix("Parametrized")

    def project(self, x: torch.Tensor):
        return x

    # -- the structure the sequence engine runs (see the module docstring) ------------------------
    def recurrent(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(W, b)``: the linear map through which the state enters, or ``None`` where the field has
        no such structure (then only autograd differentiates it)."""
        return None

    @property
    def elementwise(self) -> bool:
        """Whether everything after ``recurrent()`` is elementwise — unit ``j`` of every block's
        derivative reads only unit ``j`` of ``pre`` (in each gate) and of the blocks — so that
        ``derivative_vjp`` and ``activate_vjp`` carry every gradient but the recurrent map's (what
        the sequence engine and the structured adjoint need) and give the Jacobian's diagonals (the
        implicit engine's ``FieldLinearisation``; tests/test_implicit_engine.py checks each field)."""
        return True

    def recurrent_input(self, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        parts = [blocks[k] for k in self.recurrent_blocks]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def preactivation(self, context, y_in, W, b) -> torch.Tensor:
        """``pre``, the argument of :meth:`activate`: ``y_in Wᵀ + b``."""
        return F.linear(y_in, W, b)

    def activate(self, context, pre) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def derivative(self, act, blocks, which: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """The derivatives of the blocks ``which`` (in that order)."""
        raise NotImplementedError

    def derivative_vjp(self, act, blocks, grads, which):
        """``(grad_blocks, grad_act)`` of ``Σ ⟨grads, derivative(act, blocks, which)⟩``: one entry per
        block and per activation, ``None`` where the gradient is zero."""
        raise NotImplementedError

    def activate_vjp(self, act, grad_act) -> tuple[torch.Tensor, torch.Tensor]:
        """``(grad_context, grad_pre)`` from the activations' gradients (``None`` entries are zero)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def held_structure(self):
        """``recurrent()`` built once for every evaluation inside (a token's stages, Newton
        iterations, sub-steps) rather than once per evaluation: structured matrices such as
        Lipschitz's ``β·skew + (1 − β)·sym − γI`` or the order-t concatenation cost a pass over
        ``W`` each time."""
        self._held = self.recurrent()
        try:
            yield
        finally:
            self._held = None

    def forward(self, context, state) -> tuple[torch.Tensor, ...]:
        W, b = self._held if self._held is not None else self.recurrent()
        pre = self.preactivation(context, self.recurrent_input(state), W, b)
        return self.derivative(self.activate(context, pre), state, tuple(range(self.blocks)))

    # -- state conventions ------------------------------------------------------------------------
    def to_blocks(self, state) -> tuple[torch.Tensor, ...]:
        return (state,) if isinstance(state, torch.Tensor) else tuple(state)

    def from_blocks(self, blocks: tuple[torch.Tensor, ...]):
        return blocks[0] if self.blocks == 1 else blocks

    @property
    def output_block(self) -> int:
        """The block a layer outputs: the first of the user-facing state (``h`` of ``(h, c)``)."""
        order = self.from_blocks(tuple(range(self.blocks)))
        return order if isinstance(order, int) else order[0]

    def initial_state(self, batch: int, dtype, device):
        return self.from_blocks(tuple(torch.zeros(batch, width, dtype=dtype, device=device)
                                      for width in self.block_sizes))

    def recurrent_matrices(self) -> dict[str, torch.Tensor]:
        """The square ``hidden × hidden`` weight matrices acting on the state, by name (their
        spectra bound the field's Jacobian; the stability report lists them)."""
        return {}

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


class TanhRNNField(TorchLayout, TanhActivation, VectorField):
    """Leaky tanh-RNN: ``f(h) = tanh(W_ih x + b_ih + W_hh h + b_hh) − γ h`` (``γ = 1`` by default).

    Forward Euler with ``Δ = 1`` and ``γ = 1`` gives ``torch.nn.RNNCell`` (tanh) exactly.
    """

    def __init__(self, input_size, hidden_size, bias: bool = True, gamma: float = 1.0):
        super().__init__(input_size, hidden_size)
        self.gamma = float(gamma)
        gate_parameters(self, 1, bias)

    @property
    def torch_step(self):
        return nn.RNN if self.gamma == 1.0 else None  # the leak −h is torch's

    def project(self, x):
        if self.bias_ih is None:
            return x @ self.weight_ih.T  # (…, H)
        return F.linear(x, self.weight_ih, self.bias_ih + self.bias_hh)

    def recurrent(self):
        return self.weight_hh, None

    def derivative(self, act, blocks, which):
        return (act[0] - blocks[0] if self.gamma == 1.0 else torch.add(act[0], blocks[0], alpha=-self.gamma),)

    def derivative_vjp(self, act, blocks, grads, which):
        return (-grads[0] if self.gamma == 1.0 else grads[0] * -self.gamma,), (grads[0],)

    def recurrent_matrices(self):
        return {"W_hh": self.weight_hh}

    def extra_repr(self):
        return super().extra_repr() + ("" if self.gamma == 1.0 else f", gamma={self.gamma}")


class GRUODEField(TorchLayout, VectorField):
    """GRU-ODE (De Brouwer et al. 2019) with the reset gate, in ``torch.nn.GRUCell``'s layout:
    ``f(h) = (1 − z) ⊙ (n − h)`` with ``r, z = σ(W_i x + b_i + W_h h + b_h)`` and
    ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``.

    Forward Euler with ``Δ = 1`` gives ``torch.nn.GRUCell`` exactly.
    """

    torch_step = nn.GRU

    def __init__(self, input_size, hidden_size, bias: bool = True):
        super().__init__(input_size, hidden_size)
        gate_parameters(self, 3, bias)

    def project(self, x):
        return F.linear(x, self.weight_ih, self.bias_ih)  # (…, 3H): input parts of r, z, n

    def recurrent(self):
        return self.weight_hh, self.bias_hh

    def activate(self, context, pre):
        # splits, not slices (under autograd, the per-token cell, one node each), and both gates in
        # one sigmoid: the implicit engine evaluates a field several times per token, and at
        # these sizes each operation costs its dispatch more than its arithmetic
        H = self.hidden_size
        i_rz, i_n = context.split((2 * H, H), dim=-1)
        h_rz, hn = pre.split((2 * H, H), dim=-1)  # hn = W_hn h + b_hn, which the reset gate scales
        r, z = torch.sigmoid(i_rz + h_rz).chunk(2, dim=-1)
        return r, z, torch.tanh(torch.addcmul(i_n, r, hn)), hn

    def derivative(self, act, blocks, which):
        _, z, n, _ = act
        gap = n - blocks[0]
        return (torch.addcmul(gap, z, gap, value=-1),)  # (1 − z)(n − h) in two operations, not three

    def derivative_vjp(self, act, blocks, grads, which):
        _, z, n, _ = act
        (g,) = grads
        grad_n = g * (1 - z)
        return (-grad_n,), (None, g * (blocks[0] - n), grad_n, None)

    def activate_vjp(self, act, grad_act):
        r, z, n, hn = act
        grad_r, grad_z, grad_n, grad_hn = grad_act
        pre_n = tanh_backward(or_zeros(grad_n, n), n)  # ∂/∂(W_in x + b_in + r ⊙ hn)
        grad_r = pre_n * hn if grad_r is None else torch.addcmul(grad_r, pre_n, hn)
        pre_r = sigmoid_backward(grad_r, r)
        pre_z = sigmoid_backward(or_zeros(grad_z, z), z)
        pre_hn = pre_n * r if grad_hn is None else torch.addcmul(grad_hn, pre_n, r)
        return torch.cat((pre_r, pre_z, pre_n), dim=-1), torch.cat((pre_r, pre_z, pre_hn), dim=-1)

    def recurrent_matrices(self):
        return dict(zip(("W_hr", "W_hz", "W_hn"), self.weight_hh.chunk(3, dim=0)))


class LSTMField(TorchLayout, ReversedState, AddsContext, VectorField):
    """The LSTM field on the blocks ``(c, h)``, in ``torch.nn.LSTMCell``'s layout (gates i, f, g, o):
    ``dc = (f − 1) ⊙ c + i ⊙ g`` and ``dh = o ⊙ tanh(c) − h``.

    Forward Euler with ``Δ = 1``, partitioned over the blocks (``c`` first, then ``h`` with the new
    ``c``), gives ``torch.nn.LSTMCell`` exactly. The user-facing state is ``(h, c)`` as
    ``LSTMCell`` returns it.

    With ``proj_size = P > 0`` (``nn.LSTM``'s projection), ``h`` has ``P`` entries and
    ``dh = W_hr (o ⊙ tanh(c)) − h`` with ``W_hr`` ``(P, H)`` (``weight_hr``): the same partitioned
    Euler step gives the layer update of ``nn.LSTM(proj_size=P)``. The projection is a matrix
    product after the gates, outside the engine's elementwise structure, so such a field runs token
    by token under autograd (or on PyTorch's kernel where it equals ``nn.LSTM``).
    """

    blocks = 2
    recurrent_blocks = (1,)  # the gates read h only
    torch_step = nn.LSTM

    def __init__(self, input_size, hidden_size, bias: bool = True, proj_size: int = 0):
        super().__init__(input_size, hidden_size)
        if not isinstance(proj_size, int) or not 0 <= proj_size < hidden_size:
            raise ValueError(f"proj_size must be an integer in [0, hidden_size={hidden_size}), got {proj_size!r}")
        self.proj_size = proj_size
        gate_parameters(self, 4, bias, {"weight_hh": (4 * hidden_size, proj_size or hidden_size)})
        self.weight_hr = nn.Parameter(torch.empty(proj_size, hidden_size)) if proj_size else None
        if proj_size:  # drawn after the gates', as nn.LSTM draws it
            uniform_((self.weight_hr,), hidden_size)

    def __setstate__(self, state):
        state.setdefault("proj_size", 0)  # pickled before the projection existed
        state["_parameters"].setdefault("weight_hr", None)
        super().__setstate__(state)

    @property
    def block_sizes(self):
        return (self.hidden_size, self.proj_size or self.hidden_size)

    def torch_parameter_names(self):
        return super().torch_parameter_names() + (("weight_hr",) if self.proj_size else ())

    @property
    def elementwise(self):
        return not self.proj_size

    def project(self, x):
        if self.bias_ih is None:
            return x @ self.weight_ih.T  # (…, 4H)
        return F.linear(x, self.weight_ih, self.bias_ih + self.bias_hh)

    def recurrent(self):
        return self.weight_hh, None

    def activate(self, context, gates):
        H = self.hidden_size
        # one sigmoid over all gates, and tanh on a contiguous copy of g: faster than three strided calls
        i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)
        return i, f, torch.tanh(gates[..., 2 * H:3 * H].contiguous()), o

    def derivative(self, act, blocks, which):
        i, f, g, o = act
        c, h = blocks
        return tuple((f - 1) * c + i * g if k == 0 else self._project(o * torch.tanh(c)) - h for k in which)

    def _project(self, m):
        return m if self.weight_hr is None else m @ self.weight_hr.T  # (…, P)

    def derivative_vjp(self, act, blocks, grads, which):
        """(With a projection, the gradient of ``weight_hr`` is not among them: see :attr:`elementwise`.)"""
        i, f, g, o = act
        c, _ = blocks
        grad_c = grad_h = grad_i = grad_f = grad_g = grad_o = None
        for k, gk in zip(which, grads):
            if k == 0:
                grad_i, grad_f, grad_g, grad_c = gk * g, gk * c, gk * i, gk * (f - 1)
            else:
                tanh_c = torch.tanh(c)
                grad_h, gk = -gk, (gk if self.weight_hr is None else gk @ self.weight_hr)  # ∂/∂(o ⊙ tanh c)
                grad_o = gk * tanh_c
                through = tanh_backward(gk * o, tanh_c)
                grad_c = through if grad_c is None else grad_c + through
        return (grad_c, grad_h), (grad_i, grad_f, grad_g, grad_o)

    def activate_vjp(self, act, grad_act):
        i, f, g, o = act
        grad_i, grad_f, grad_g, grad_o = (or_zeros(d, a) for d, a in zip(grad_act, act))
        grad = torch.cat((sigmoid_backward(grad_i, i), sigmoid_backward(grad_f, f), tanh_backward(grad_g, g),
                          sigmoid_backward(grad_o, o)), dim=-1)
        return grad, grad

    def recurrent_matrices(self):
        gates = self.weight_hh.chunk(4, dim=0)
        if self.weight_hr is None:
            return dict(zip(("W_hi", "W_hf", "W_hg", "W_ho"), gates))
        # with a projection the square maps are o ⊙ tanh(c) → h → gate: W_h· W_hr
        return {f"{name}·W_hr": W @ self.weight_hr for name, W in zip(("W_hi", "W_hf", "W_hg", "W_ho"), gates)}

    def extra_repr(self):
        return super().extra_repr() + (f", proj_size={self.proj_size}" if self.proj_size else "")


class AntisymmetricField(TanhActivation, VectorField):
    """AntisymmetricRNN (Chang et al. 2019): ``f(h) = tanh((W − Wᵀ − γI) h + V x + b)``.

    The Jacobian at ``h`` is ``diag(tanh′)(W − Wᵀ − γI)``: eigenvalues near the imaginary axis,
    pushed left by the diffusion ``γ``; forward Euler with step ``ε`` is the published cell.
    """

    def __init__(self, input_size, hidden_size, gamma: float = 0.01, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.gamma = float(gamma)
        self.weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.input_weight = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(hidden_size))
        nn.init.normal_(self.input_weight, std=1.0 / math.sqrt(input_size))

    def recurrent_matrix(self) -> torch.Tensor:
        eye = torch.eye(self.hidden_size, dtype=self.weight.dtype, device=self.weight.device)
        return self.weight - self.weight.T - self.gamma * eye

    def project(self, x):
        return F.linear(x, self.input_weight, self.bias)

    def recurrent(self):
        return self.recurrent_matrix(), None

    def derivative(self, act, blocks, which):
        return act

    def derivative_vjp(self, act, blocks, grads, which):
        return (None,), tuple(grads)

    def recurrent_matrices(self):
        return {"W − Wᵀ − γI": self.recurrent_matrix()}

    def extra_repr(self):
        return super().extra_repr() + f", gamma={self.gamma}"


class HigherOrderField(ReversedState, VectorField):
    """A one-block field ``f`` raised to derivative order ``t``:
    ``h⁽ᵗ⁾ = f(h, x; W₀h + W₁h′ + … + W_{t−1}h⁽ᵗ⁻¹⁾) − ε₁h′ − … − ε_{t−1}h⁽ᵗ⁻¹⁾``.

    The state enters ``f`` through its recurrent map, which now reads every derivative: ``W₀`` is
    the base field's matrix and each order adds one more of the same shape (the parameters grow
    linearly in ``t``). The damping ``ε_k ≥ 0`` of the derivatives is fixed, as coRNN's ``ε``: one
    number for every order, a sequence of ``t − 1``, or ``"critical"`` (the default), the binomial
    coefficients ``ε_k = C(t, k)``, which with the base's restoring ``−h`` make the linear part
    ``(d/dτ + 1)ᵗ``, every root at −1. Without damping the linear part of ``h‴ = −h`` already has
    roots with ``Re λ = +½``: for ``t ≥ 3`` some damping is needed for a stable ODE (for ``t = 3``
    and one ``ε``, Routh–Hurwitz asks ``ε² > 1``).

    As a first-order system the ``t`` blocks are ``(h⁽ᵗ⁻¹⁾, …, h′, h)`` with ``(h⁽ᵏ⁾)′ = h⁽ᵏ⁺¹⁾``,
    so partitioned stepping advances the highest derivative first and each lower one with the new
    value above it (for ``t = 2`` and forward Euler, coRNN's IMEX scheme). The user-facing state is
    ``(h, h′, …, h⁽ᵗ⁻¹⁾)``. ``t = 2`` on the tanh-RNN field is coRNN (:class:`CoRNNField`).
    """

    def __init__(self, base: VectorField, order: int, damping="critical"):
        if not isinstance(order, int) or order < 2:
            raise ValueError(f"order must be an integer ≥ 2 (order 1 is the field itself), got {order!r}")
        if base.blocks != 1 or base.recurrent() is None:
            raise ValueError(f"order= raises a one-block field with a recurrent matrix; {type(base).__name__} "
                             f"has {base.blocks} block(s)" + ("" if base.blocks != 1 else " and no recurrent matrix"))
        if isinstance(damping, str):
            if damping != "critical":
                raise ValueError(f"damping is a number ≥ 0, {order - 1} of them, or 'critical'; got {damping!r}")
            damping = tuple(float(math.comb(order, k)) for k in range(1, order))
        elif isinstance(damping, (int, float)):
            damping = (float(damping),) * (order - 1)
        damping = tuple(float(d) for d in damping)
        if len(damping) != order - 1 or not all(d >= 0 for d in damping):
            raise ValueError(f"damping for order {order}: {order - 1} numbers ≥ 0 (h′ … h⁽ᵗ⁻¹⁾), got {damping!r}")
        super().__init__(base.input_size, base.hidden_size)
        self.base, self.order, self.damping = base, order, damping
        self.blocks = order
        self.recurrent_blocks = tuple(range(order - 1, -1, -1))  # [h, h′, …] against [W₀ | W₁ | …]
        self.activation_free_blocks = tuple(range(1, order))
        rows = base.recurrent()[0].shape[0]
        bound = 1.0 / math.sqrt(self.hidden_size)
        self.order_weights = nn.ParameterList(
            nn.Parameter(torch.empty(rows, self.hidden_size).uniform_(-bound, bound)) for _ in range(order - 1))

    @property
    def field_name(self):
        return f"{self.base.field_name} at order {self.order}"

    def project(self, x):
        return self.base.project(x)

    def recurrent(self):
        W, b = self.base.recurrent()
        return torch.cat((W, *self.order_weights), dim=1), b

    def preactivation(self, context, y_in, W, b):
        return self.base.preactivation(context, y_in, W, b)

    def activate(self, context, pre):
        return self.base.activate(context, pre)

    def activate_vjp(self, act, grad_act):
        return self.base.activate_vjp(act, grad_act)

    def derivative(self, act, blocks, which):
        out = []
        for k in which:
            if k:  # (h⁽ʲ⁾)′ = h⁽ʲ⁺¹⁾: block k holds h⁽ᵗ⁻¹⁻ᵏ⁾, its derivative is block k − 1
                out.append(blocks[k - 1])
                continue
            top = self.base.derivative(act, blocks[-1:], (0,))[0]
            # block j < t − 1 holds h⁽ᵗ⁻¹⁻ʲ⁾, damped by ε_{t−1−j}: the damping in reverse
            for block, damping in zip(blocks, reversed(self.damping)):
                if damping:
                    top = torch.add(top, block, alpha=-damping)
            out.append(top)
        return tuple(out)

    def derivative_vjp(self, act, blocks, grads, which):
        grad_blocks, grad_act = [None] * self.order, None
        for k, g in zip(which, grads):
            if k:
                grad_blocks[k - 1] = add_or_none(grad_blocks[k - 1], g)
                continue
            (grad_h,), grad_act = self.base.derivative_vjp(act, blocks[-1:], (g,), (0,))
            grad_blocks[-1] = add_or_none(grad_blocks[-1], grad_h)
            for j, damping in enumerate(reversed(self.damping)):
                if damping:
                    grad_blocks[j] = add_or_none(grad_blocks[j], g * -damping)
        return tuple(grad_blocks), grad_act

    def recurrent_matrices(self):
        matrices = dict(self.base.recurrent_matrices())
        H = self.hidden_size
        for k, W in enumerate(self.order_weights, start=1):
            parts = W.split(H, dim=0)
            matrices.update({f"W_{k}" if len(parts) == 1 else f"W_{k}[{i}]": part for i, part in enumerate(parts)})
        return matrices

    def extra_repr(self):
        return f"order={self.order}, damping={self.damping}"


class ModuleField(VectorField):
    """A user-supplied ``nn.Module`` ``f(h, x) -> dh/dτ`` (one block) as a vector field."""

    def __init__(self, module: nn.Module, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.module = module

    def forward(self, context, state):
        (h,) = state
        return (self.module(h, context),)
