"""Vector fields ``dᵗh/dτᵗ = f(…, x; θ)`` written as first-order systems of state blocks.

Every field shares one interface, so that one stepper serves them all:

- ``blocks``: the number ``t`` of state blocks (``1`` for RNN/GRU fields, ``2`` for LSTM and coRNN);
- ``project(x)``: the part that depends on the input only, computed **once per token** (not once
  per stage) and passed to every evaluation as ``context``; it maps any leading shape, so a whole
  sequence ``(T, B, E)`` is projected by one matrix product;
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
weights can be copied between them without reshaping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VectorField", "TanhRNNField", "GRUODEField", "LSTMField", "AntisymmetricField", "HigherOrderField",
           "CoRNNField", "URNNField", "LipschitzField", "LEMField", "UnICORNNField", "ModuleField", "modrelu"]

# fused elementwise derivatives: grad ⊙ σ(1 − σ) and grad ⊙ (1 − tanh²) from the outputs, one kernel each
_sigmoid_backward = torch.ops.aten.sigmoid_backward
_tanh_backward = torch.ops.aten.tanh_backward


def _or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


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

    def project(self, x: torch.Tensor):
        return x

    # -- the structure the sequence engine runs (see the module docstring) ------------------------
    def recurrent(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(W, b)``: the linear map through which the state enters, or ``None`` where the field has
        no such structure (then only autograd differentiates it)."""
        return None

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

    def forward(self, context, state) -> tuple[torch.Tensor, ...]:
        W, b = self.recurrent()
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
        zeros = torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)
        return self.from_blocks(tuple(zeros for _ in range(self.blocks)))

    def recurrent_matrices(self) -> dict[str, torch.Tensor]:
        """The square ``hidden × hidden`` weight matrices acting on the state, by name (their
        spectra bound the field's Jacobian; the stability report lists them)."""
        return {}

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}"


def _uniform_(module: nn.Module, hidden_size: int) -> None:
    """PyTorch's recurrent-cell initialisation: U(−1/√H, 1/√H) for every parameter."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class _AddsContext:
    """Activations that read ``context + y_in Wᵀ + b`` only: the sum is one fused product."""

    def preactivation(self, context, y_in, W, b):
        out = torch.addmm(context, y_in, W.T) if context.dim() == 2 and y_in.dim() == 2 else context + y_in @ W.T
        return out if b is None else out + b


class _ReversedState:
    """The user-facing state lists the blocks in reverse order: the output block first, as
    ``nn.LSTMCell``'s ``(h, c)``, coRNN's ``(y, z)`` and the order-t field's ``(h, h′, …)``, while
    partitioned stepping advances them from the other end."""

    def to_blocks(self, state):
        return tuple(reversed(tuple(state)))

    def from_blocks(self, blocks):
        return tuple(reversed(tuple(blocks)))


class _TanhActivation(_AddsContext):
    """``act = tanh(context + y_in Wᵀ)``, shared by the tanh-RNN, antisymmetric and coRNN fields."""

    def activate(self, context, pre):
        return (torch.tanh(pre),)

    def activate_vjp(self, act, grad_act):
        grad = _tanh_backward(grad_act[0], act[0])
        return grad, grad


class TanhRNNField(_TanhActivation, VectorField):
    """Leaky tanh-RNN: ``f(h) = tanh(W_ih x + b_ih + W_hh h + b_hh) − γ h`` (``γ = 1`` by default).

    Forward Euler with ``Δ = 1`` and ``γ = 1`` gives ``torch.nn.RNNCell`` (tanh) exactly.
    """

    def __init__(self, input_size, hidden_size, bias: bool = True, gamma: float = 1.0):
        super().__init__(input_size, hidden_size)
        self.gamma = float(gamma)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(hidden_size)) if bias else None
        _uniform_(self, hidden_size)

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


class GRUODEField(VectorField):
    """GRU-ODE (De Brouwer et al. 2019) with the reset gate, in ``torch.nn.GRUCell``'s layout:
    ``f(h) = (1 − z) ⊙ (n − h)`` with ``r, z = σ(W_i x + b_i + W_h h + b_h)`` and
    ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``.

    Forward Euler with ``Δ = 1`` gives ``torch.nn.GRUCell`` exactly.
    """

    def __init__(self, input_size, hidden_size, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size)) if bias else None
        _uniform_(self, hidden_size)

    def project(self, x):
        return F.linear(x, self.weight_ih, self.bias_ih)  # (…, 3H): input parts of r, z, n

    def recurrent(self):
        return self.weight_hh, self.bias_hh

    def activate(self, context, pre):
        # chunk, not slices: under autograd (the per-token cell) one split node instead of six slices
        i_r, i_z, i_n = context.chunk(3, dim=-1)
        h_r, h_z, hn = pre.chunk(3, dim=-1)  # hn = W_hn h + b_hn, which the reset gate scales
        r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
        return r, z, torch.tanh(torch.addcmul(i_n, r, hn)), hn

    def derivative(self, act, blocks, which):
        _, z, n, _ = act
        return ((1 - z) * (n - blocks[0]),)

    def derivative_vjp(self, act, blocks, grads, which):
        _, z, n, _ = act
        (g,) = grads
        grad_n = g * (1 - z)
        return (-grad_n,), (None, g * (blocks[0] - n), grad_n, None)

    def activate_vjp(self, act, grad_act):
        r, z, n, hn = act
        grad_r, grad_z, grad_n, grad_hn = grad_act
        pre_n = _tanh_backward(_or_zeros(grad_n, n), n)  # ∂/∂(W_in x + b_in + r ⊙ hn)
        grad_r = pre_n * hn if grad_r is None else torch.addcmul(grad_r, pre_n, hn)
        pre_r = _sigmoid_backward(grad_r, r)
        pre_z = _sigmoid_backward(_or_zeros(grad_z, z), z)
        pre_hn = pre_n * r if grad_hn is None else torch.addcmul(grad_hn, pre_n, r)
        return torch.cat((pre_r, pre_z, pre_n), dim=-1), torch.cat((pre_r, pre_z, pre_hn), dim=-1)

    def recurrent_matrices(self):
        return dict(zip(("W_hr", "W_hz", "W_hn"), self.weight_hh.chunk(3, dim=0)))


class LSTMField(_ReversedState, _AddsContext, VectorField):
    """The LSTM field on the blocks ``(c, h)``, in ``torch.nn.LSTMCell``'s layout (gates i, f, g, o):
    ``dc = (f − 1) ⊙ c + i ⊙ g`` and ``dh = o ⊙ tanh(c) − h``.

    Forward Euler with ``Δ = 1``, partitioned over the blocks (``c`` first, then ``h`` with the new
    ``c``), gives ``torch.nn.LSTMCell`` exactly. The user-facing state is ``(h, c)`` as
    ``LSTMCell`` returns it.
    """

    blocks = 2
    recurrent_blocks = (1,)  # the gates read h only

    def __init__(self, input_size, hidden_size, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        _uniform_(self, hidden_size)

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
        return tuple((f - 1) * c + i * g if k == 0 else o * torch.tanh(c) - h for k in which)

    def derivative_vjp(self, act, blocks, grads, which):
        i, f, g, o = act
        c, _ = blocks
        grad_c = grad_h = grad_i = grad_f = grad_g = grad_o = None
        for k, gk in zip(which, grads):
            if k == 0:
                grad_i, grad_f, grad_g, grad_c = gk * g, gk * c, gk * i, gk * (f - 1)
            else:
                tanh_c = torch.tanh(c)
                grad_o, grad_h = gk * tanh_c, -gk
                through = _tanh_backward(gk * o, tanh_c)
                grad_c = through if grad_c is None else grad_c + through
        return (grad_c, grad_h), (grad_i, grad_f, grad_g, grad_o)

    def activate_vjp(self, act, grad_act):
        i, f, g, o = act
        grad_i, grad_f, grad_g, grad_o = (_or_zeros(d, a) for d, a in zip(grad_act, act))
        grad = torch.cat((_sigmoid_backward(grad_i, i), _sigmoid_backward(grad_f, f), _tanh_backward(grad_g, g),
                          _sigmoid_backward(grad_o, o)), dim=-1)
        return grad, grad

    def recurrent_matrices(self):
        return dict(zip(("W_hi", "W_hf", "W_hg", "W_ho"), self.weight_hh.chunk(4, dim=0)))


class AntisymmetricField(_TanhActivation, VectorField):
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


def _add(total, term):
    return term if total is None else total if term is None else total + term


class HigherOrderField(_ReversedState, VectorField):
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
        # block j < t − 1 holds h⁽ᵗ⁻¹⁻ʲ⁾, damped by ε_{t−1−j}
        self._block_damping = tuple(damping[order - 2 - j] for j in range(order - 1))
        rows = base.recurrent()[0].shape[0]
        bound = 1.0 / math.sqrt(self.hidden_size)
        self.order_weights = nn.ParameterList(
            nn.Parameter(torch.empty(rows, self.hidden_size).uniform_(-bound, bound)) for _ in range(order - 1))

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
            for block, damping in zip(blocks, self._block_damping):
                if damping:
                    top = torch.add(top, block, alpha=-damping)
            out.append(top)
        return tuple(out)

    def derivative_vjp(self, act, blocks, grads, which):
        grad_blocks, grad_act = [None] * self.order, None
        for k, g in zip(which, grads):
            if k:
                grad_blocks[k - 1] = _add(grad_blocks[k - 1], g)
                continue
            (grad_h,), grad_act = self.base.derivative_vjp(act, blocks[-1:], (g,), (0,))
            grad_blocks[-1] = _add(grad_blocks[-1], grad_h)
            for j, damping in enumerate(self._block_damping):
                if damping:
                    grad_blocks[j] = _add(grad_blocks[j], g * -damping)
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


class CoRNNField(HigherOrderField):
    """Coupled oscillatory RNN (Rusch & Mishra 2021): the order-2 tanh-RNN field, on the blocks
    ``(z, y)`` with ``z = y′``: ``y′ = z``, ``z′ = tanh(W y + 𝒲 z + V x + b) − γ y − ε z``
    (``W = base.weight_hh``, ``𝒲 = order_weights[0]``, ``V = base.weight_ih``).

    Forward Euler partitioned over the blocks (``z`` first, then ``y`` with the new ``z``: the
    IMEX scheme of the paper, its eq. (3)) gives the published cell. The user-facing state is
    ``(y, z)``.
    """

    def __init__(self, input_size, hidden_size, gamma: float = 2.7, epsilon: float = 4.7, bias: bool = True):
        super().__init__(TanhRNNField(input_size, hidden_size, bias=bias, gamma=gamma), 2, damping=epsilon)
        self._register_load_state_dict_pre_hook(self._upgrade_state_dict)

    @property
    def gamma(self) -> float:
        return self.base.gamma

    @property
    def epsilon(self) -> float:
        return self.damping[0]

    @staticmethod
    def _upgrade_state_dict(state_dict, prefix, *args):
        """Checkpoints from before coRNN was the order-2 tanh-RNN: ``weight_y``, ``weight_z``,
        ``input_weight`` and one ``bias`` (the base field's second bias is then zero)."""
        old = {"weight_y": "base.weight_hh", "weight_z": "order_weights.0", "input_weight": "base.weight_ih",
               "bias": "base.bias_ih"}
        if prefix + "weight_y" not in state_dict:
            return
        for name, new in old.items():
            if prefix + name in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + name)
        if prefix + "base.bias_ih" in state_dict:
            state_dict[prefix + "base.bias_hh"] = torch.zeros_like(state_dict[prefix + "base.bias_ih"])

    def recurrent_matrices(self):
        return {"W_y": self.base.weight_hh, "W_z": self.order_weights[0]}

    def extra_repr(self):
        return VectorField.extra_repr(self) + f", gamma={self.gamma}, epsilon={self.epsilon}"


def modrelu(z: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``modReLU_b(z) = sign(z) · ReLU(|z| + b)`` on real ``z`` (Arjovsky et al. 2016, in the real
    form of expRNN's code): ``b < 0`` zeroes the band ``|z| ≤ −b``, and ``modReLU(0) = 0``."""
    return torch.sign(z) * F.relu(z.abs() + bias)


class URNNField(VectorField):
    """Orthogonal RNN: ``f(h) = modReLU_b(W h + V x) − h`` with ``W`` orthogonal, ``W = exp(S)``
    (or the Cayley map of ``S``) of a skew-symmetric ``S``, by
    ``torch.nn.utils.parametrizations.orthogonal`` without its trivialisation base: the
    unconstrained parameter is ``parametrizations.weight_hh.original``, ``S`` its strict lower
    triangle minus its transpose.

    Forward Euler with ``Δ = 1`` is ``h⁺ = modReLU_b(W h + V x)``: expRNN (Lezcano-Casado &
    Martínez-Rubio 2019) exactly, whose only bias is modReLU's. At every state the Jacobian is
    ``D W − I`` with ``D`` diagonal in {0, 1}, so its eigenvalues lie in the disc ``|λ + 1| ≤ 1``
    whatever ``W`` training reaches (``stability.check`` reports what that means for the tableau).

    ``init``: ``henaff`` (``S`` block-diagonal with 2 × 2 blocks of angles ``U(−π, π)``) or
    ``cayley`` (angles ``u ~ U(0, π/2)`` entered as ``−tan(u/2)``), expRNN's two
    initialisations; ``V`` by Kaiming normal, ``b ~ U(−0.01, 0.01)`` as in expRNN.

    modReLU's bias is not a function of the state, so it travels in ``project(x)``'s output next to
    ``V x`` (the engine differentiates the context, and through it the bias).
    """

    MAPS = {"exp": "matrix_exp", "cayley": "cayley"}

    def __init__(self, input_size, hidden_size, bias: bool = True, map: str = "exp", init: str = "henaff"):
        super().__init__(input_size, hidden_size)
        if map not in self.MAPS:
            raise ValueError(f"map must be one of {', '.join(self.MAPS)}, got {map!r}")
        if init not in ("henaff", "cayley"):
            raise ValueError(f"init must be henaff or cayley, got {init!r}")
        self.map, self.init = map, init
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        nn.init.kaiming_normal_(self.weight_ih, nonlinearity="relu")
        self.bias = nn.Parameter(torch.empty(hidden_size).uniform_(-0.01, 0.01)) if bias else None
        angles = (torch.empty(hidden_size // 2).uniform_(-math.pi, math.pi) if init == "henaff"
                  else -torch.tan(torch.empty(hidden_size // 2).uniform_(0, math.pi / 2) / 2))
        skew = torch.zeros(hidden_size, hidden_size)
        index = torch.arange(hidden_size // 2) * 2
        skew[index + 1, index] = angles  # the strict lower triangle is the parameter
        self.weight_hh = nn.Parameter(skew)
        nn.utils.parametrizations.orthogonal(self, "weight_hh", orthogonal_map=self.MAPS[map], use_trivialization=False)

    def project(self, x):
        vx = x @ self.weight_ih.T
        return vx if self.bias is None else torch.cat((vx, self.bias.expand_as(vx)), dim=-1)

    def recurrent(self):
        return self.weight_hh, None

    def activate(self, context, pre):
        if self.bias is None:  # modReLU with no bias is the identity
            return (context + pre,)
        vx, b = context.chunk(2, dim=-1)
        z = vx + pre
        shifted = z.abs() + b
        slope = torch.sign(z) * (shifted > 0)  # ∂ modReLU/∂b, and ∂/∂z = slope²
        return slope * shifted, slope

    def derivative(self, act, blocks, which):
        return (act[0] - blocks[0],)

    def derivative_vjp(self, act, blocks, grads, which):
        return (-grads[0],), (grads[0],) + (None,) * (len(act) - 1)

    def activate_vjp(self, act, grad_act):
        grad = _or_zeros(grad_act[0], act[0])
        if self.bias is None:
            return grad, grad
        slope = act[1]
        grad_b = grad * slope
        grad_z = grad_b * slope
        return torch.cat((grad_z, grad_b), dim=-1), grad_z

    def recurrent_matrices(self):
        return {"W (orthogonal)": self.weight_hh}

    def extra_repr(self):
        return super().extra_repr() + f", map={self.map}"


class LipschitzField(VectorField):
    """Lipschitz RNN (Erichson et al. 2021): ``f(h) = A h + tanh(W h + U x + b)`` with
    ``A = β(M_A − M_Aᵀ) + (1 − β)(M_A + M_Aᵀ) − γI`` and ``W`` the same of ``M_W``: a skew
    part that rotates, a symmetric part scaled by ``1 − β`` and a shift ``−γ`` to the left.

    Forward Euler with step ``ε`` (``dt``) is the published cell. One ``β`` and one ``γ`` serve
    ``A`` and ``W``, as in the official code; ``M_A``, ``M_W`` start ``N(0, (init_std/H)²)``
    (its ``gaussian_init_``), ``U`` and ``b`` as ``nn.Linear``. Defaults: the official model's.
    """

    def __init__(self, input_size, hidden_size, beta: float = 0.8, gamma: float = 0.01, init_std: float = 1.0,
                 bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.beta, self.gamma = float(beta), float(gamma)
        self.weight_a = nn.Parameter(torch.randn(hidden_size, hidden_size) * (init_std / hidden_size))
        self.weight_w = nn.Parameter(torch.randn(hidden_size, hidden_size) * (init_std / hidden_size))
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(hidden_size)) if bias else None
        bound = 1.0 / math.sqrt(input_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _structured(self, M):
        eye = torch.eye(self.hidden_size, dtype=M.dtype, device=M.device)
        return self.beta * (M - M.T) + (1 - self.beta) * (M + M.T) - self.gamma * eye

    def project(self, x):
        return F.linear(x, self.weight_ih, self.bias)

    def recurrent(self):
        return torch.cat((self._structured(self.weight_a), self._structured(self.weight_w))), None

    def activate(self, context, pre):
        linear, inner = pre.chunk(2, dim=-1)
        return linear, torch.tanh(inner + context)

    def derivative(self, act, blocks, which):
        return (act[0] + act[1],)

    def derivative_vjp(self, act, blocks, grads, which):
        return (None,), (grads[0], grads[0])

    def activate_vjp(self, act, grad_act):
        grad_linear, grad_tanh = (_or_zeros(g, a) for g, a in zip(grad_act, act))
        inner = _tanh_backward(grad_tanh, act[1])
        return inner, torch.cat((grad_linear, inner), dim=-1)

    def recurrent_matrices(self):
        return {"A": self._structured(self.weight_a), "W": self._structured(self.weight_w)}

    def extra_repr(self):
        return super().extra_repr() + f", beta={self.beta}, gamma={self.gamma}"


class LEMField(_ReversedState, _AddsContext, VectorField):
    """Long Expressive Memory (Rusch et al. 2022) on the blocks ``(z, y)``:
    ``z′ = σ(Δ_z) ⊙ (tanh(W_z y + V_z x + b_z) − z)`` and ``y′ = σ(Δ_y) ⊙ (tanh(W_y z + V_y x + b_y) − y)``
    with the time-step gates ``Δ_• = W_• y + V_• x + b_•`` (sigmoid σ) reading ``y`` only.

    Forward Euler partitioned over the blocks with step ``Δt`` (``z`` first, then ``y`` with the
    new ``z``, both gates at the old ``y``) is the published LEM step
    ``z⁺ = (1 − Δt σ(Δ_z)) ⊙ z + Δt σ(Δ_z) ⊙ tanh(…)`` and likewise ``y⁺``.
    Rows of ``weight_ih`` (and of the recurrent map): ``[Δ_y, Δ_z, z-candidate, y-candidate]``;
    ``weight_hh_y`` maps ``y`` to the first three, ``weight_hh_z`` maps ``z`` to the last. Every
    parameter starts ``U(−1/√H, 1/√H)`` as in the official code. The user-facing state is ``(y, z)``.
    """

    blocks = 2
    recurrent_blocks = (1, 0)  # [y, z] against block_diag(weight_hh_y, weight_hh_z)

    def __init__(self, input_size, hidden_size, bias: bool = True):
        super().__init__(input_size, hidden_size)
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh_y = nn.Parameter(torch.empty(3 * H, H))
        self.weight_hh_z = nn.Parameter(torch.empty(H, H))
        self.bias_ih = nn.Parameter(torch.empty(4 * H)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * H)) if bias else None
        _uniform_(self, hidden_size)

    def project(self, x):
        return F.linear(x, self.weight_ih, self.bias_ih)

    def recurrent(self):
        return torch.block_diag(self.weight_hh_y, self.weight_hh_z), self.bias_hh

    def activate(self, context, pre):
        gates, candidates = pre.chunk(2, dim=-1)
        gate_y, gate_z = torch.sigmoid(gates).chunk(2, dim=-1)
        candidate_z, candidate_y = torch.tanh(candidates).chunk(2, dim=-1)
        return gate_y, gate_z, candidate_z, candidate_y

    def derivative(self, act, blocks, which):
        gate_y, gate_z, candidate_z, candidate_y = act
        z, y = blocks
        return tuple(gate_z * (candidate_z - z) if k == 0 else gate_y * (candidate_y - y) for k in which)

    def derivative_vjp(self, act, blocks, grads, which):
        gate_y, gate_z, candidate_z, candidate_y = act
        z, y = blocks
        grad_blocks, grad_act = [None, None], [None] * 4
        for k, g in zip(which, grads):
            gate, candidate, block = (gate_z, candidate_z, z) if k == 0 else (gate_y, candidate_y, y)
            through = g * gate
            grad_blocks[k] = -through
            grad_act[1 if k == 0 else 0] = g * (candidate - block)
            grad_act[2 if k == 0 else 3] = through
        return tuple(grad_blocks), tuple(grad_act)

    def activate_vjp(self, act, grad_act):
        grads = [_or_zeros(g, a) for g, a in zip(grad_act, act)]
        grad = torch.cat([_sigmoid_backward(g, a) for g, a in zip(grads[:2], act[:2])]
                         + [_tanh_backward(g, a) for g, a in zip(grads[2:], act[2:])], dim=-1)
        return grad, grad

    def recurrent_matrices(self):
        W_dy, W_dz, W_cz = self.weight_hh_y.chunk(3, dim=0)
        return {"W_Δy": W_dy, "W_Δz": W_dz, "W_z (y → z)": W_cz, "W_y (z → y)": self.weight_hh_z}


class UnICORNNField(_ReversedState, VectorField):
    """UnICORNN (Rusch & Mishra 2021), undamped independent oscillators on the blocks ``(z, y)``:
    ``y′ = σ(c) ⊙ z``, ``z′ = −σ(c) ⊙ (tanh(w ⊙ y + V x + b) + α y)`` with a diagonal recurrent
    weight ``w`` and a learned time scale ``σ(c)`` per unit (sigmoid σ).

    Forward Euler partitioned over the blocks (``z`` first, then ``y`` with the new ``z``: the
    symplectic Euler scheme of the paper) with step ``Δt`` is the published cell. Initialisation
    as the official code: ``w ~ U(0, 1)``, ``c ~ U(−0.1, 0.1)``, ``V`` Kaiming uniform (``a = 8``),
    ``b = 0``. The user-facing state is ``(y, z)``.

    The engine runs ``w ⊙ y`` as a product with ``diag(w)`` (an ``H × H`` matrix where the
    published CUDA kernel is elementwise); the time scale ``c`` travels in ``project(x)``'s output
    (it does not depend on the state), so the engine differentiates it through the context.
    """

    blocks = 2
    recurrent_blocks = (1,)  # y only

    def __init__(self, input_size, hidden_size, alpha: float = 30.65, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.alpha = float(alpha)
        self.weight_hh = nn.Parameter(torch.rand(hidden_size))
        self.c = nn.Parameter(torch.empty(hidden_size).uniform_(-0.1, 0.1))
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        nn.init.kaiming_uniform_(self.weight_ih, a=8)
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def project(self, x):
        drive = F.linear(x, self.weight_ih, self.bias)
        return torch.cat((drive, self.c.expand_as(drive)), dim=-1)

    def recurrent(self):
        return torch.diag(self.weight_hh), None

    def activate(self, context, pre):
        drive, c = context.chunk(2, dim=-1)
        return torch.tanh(pre + drive), torch.sigmoid(c)

    def derivative(self, act, blocks, which):
        force, rate = act
        z, y = blocks
        return tuple(-rate * torch.add(force, y, alpha=self.alpha) if k == 0 else rate * z for k in which)

    def derivative_vjp(self, act, blocks, grads, which):
        force, rate = act
        z, y = blocks
        grad_blocks, grad_force, grad_rate = [None, None], None, None
        for k, g in zip(which, grads):
            if k == 0:
                grad_force = -g * rate
                grad_rate = _add(grad_rate, -g * torch.add(force, y, alpha=self.alpha))
                grad_blocks[1] = _add(grad_blocks[1], grad_force * self.alpha)
            else:
                grad_rate = _add(grad_rate, g * z)
                grad_blocks[0] = _add(grad_blocks[0], g * rate)
        return tuple(grad_blocks), (grad_force, grad_rate)

    def activate_vjp(self, act, grad_act):
        force, rate = act
        grad_drive = _tanh_backward(_or_zeros(grad_act[0], force), force)
        grad_c = _sigmoid_backward(_or_zeros(grad_act[1], rate), rate)
        return torch.cat((grad_drive, grad_c), dim=-1), grad_drive

    def recurrent_matrices(self):
        return {"diag(w)": torch.diag(self.weight_hh)}

    def extra_repr(self):
        return super().extra_repr() + f", alpha={self.alpha}"


class ModuleField(VectorField):
    """A user-supplied ``nn.Module`` ``f(h, x) -> dh/dτ`` (one block) as a vector field."""

    def __init__(self, module: nn.Module, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.module = module

    def forward(self, context, state):
        (h,) = state
        return (self.module(h, context),)
