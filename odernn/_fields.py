"""Vector fields ``dᵗh/dτᵗ = f(…, x; θ)`` written as first-order systems of state blocks.

Every field shares one interface, so that one stepper serves them all:

- ``blocks``: the number ``t`` of state blocks (``1`` for RNN/GRU fields, ``2`` for LSTM and coRNN);
- ``project(x)``: the part that depends on the input only, computed **once per token** (not once
  per stage) and passed to every evaluation as ``context``;
- ``forward(context, state) -> derivatives``: the time derivative of each block, as a tuple;
- ``to_blocks(state)`` / ``from_blocks(blocks)``: the user-facing state convention (the one of the
  ``torch.nn`` cell the field generalises) to and from the tuple of blocks the stepper works on.

Parameter names and layouts follow ``torch.nn.RNNCell``, ``GRUCell`` and ``LSTMCell`` exactly, so
weights can be copied between them without reshaping.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["VectorField", "TanhRNNField", "GRUODEField", "LSTMField", "AntisymmetricField", "CoRNNField",
           "ModuleField"]


class VectorField(nn.Module):
    """Base class: a field on ``blocks`` state blocks of width ``hidden_size`` each."""

    blocks = 1

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(f"input_size and hidden_size must be positive, got {input_size}, {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size

    def project(self, x: torch.Tensor):
        return x

    def forward(self, context, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def to_blocks(self, state) -> tuple[torch.Tensor, ...]:
        return (state,) if isinstance(state, torch.Tensor) else tuple(state)

    def from_blocks(self, blocks: tuple[torch.Tensor, ...]):
        return blocks[0] if self.blocks == 1 else blocks

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


class TanhRNNField(VectorField):
    """Leaky tanh-RNN: ``f(h) = tanh(W_ih x + b_ih + W_hh h + b_hh) − h``.

    Forward Euler with ``Δ = 1`` gives ``torch.nn.RNNCell`` (tanh) exactly.
    """

    def __init__(self, input_size, hidden_size, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(hidden_size)) if bias else None
        _uniform_(self, hidden_size)

    def project(self, x):
        out = x @ self.weight_ih.T  # (B, H)
        if self.bias_ih is not None:
            out = out + (self.bias_ih + self.bias_hh)
        return out

    def forward(self, context, state):
        (h,) = state
        return (torch.tanh(context + h @ self.weight_hh.T) - h,)

    def recurrent_matrices(self):
        return {"W_hh": self.weight_hh}


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
        out = x @ self.weight_ih.T  # (B, 3H): input parts of r, z, n
        return out + self.bias_ih if self.bias_ih is not None else out

    def forward(self, context, state):
        (h,) = state
        gh = h @ self.weight_hh.T  # (B, 3H)
        if self.bias_hh is not None:
            gh = gh + self.bias_hh
        i_r, i_z, i_n = context.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return ((1 - z) * (n - h),)

    def recurrent_matrices(self):
        return dict(zip(("W_hr", "W_hz", "W_hn"), self.weight_hh.chunk(3, dim=0)))


class LSTMField(VectorField):
    """The LSTM field on the blocks ``(c, h)``, in ``torch.nn.LSTMCell``'s layout (gates i, f, g, o):
    ``dc = (f − 1) ⊙ c + i ⊙ g`` and ``dh = o ⊙ tanh(c) − h``.

    Forward Euler with ``Δ = 1``, partitioned over the blocks (``c`` first, then ``h`` with the new
    ``c``), gives ``torch.nn.LSTMCell`` exactly. The user-facing state is ``(h, c)`` as
    ``LSTMCell`` returns it.
    """

    blocks = 2

    def __init__(self, input_size, hidden_size, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        _uniform_(self, hidden_size)

    def project(self, x):
        out = x @ self.weight_ih.T  # (B, 4H)
        if self.bias_ih is not None:
            out = out + (self.bias_ih + self.bias_hh)
        return out

    def forward(self, context, state):
        c, h = state
        gates = context + h @ self.weight_hh.T
        i, f, g, o = gates.chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        return ((f - 1) * c + i * g, o * torch.tanh(c) - h)

    def recurrent_matrices(self):
        return dict(zip(("W_hi", "W_hf", "W_hg", "W_ho"), self.weight_hh.chunk(4, dim=0)))

    def to_blocks(self, state):
        h, c = state
        return (c, h)

    def from_blocks(self, blocks):
        c, h = blocks
        return (h, c)


class AntisymmetricField(VectorField):
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
        out = x @ self.input_weight.T
        return out + self.bias if self.bias is not None else out

    def forward(self, context, state):
        (h,) = state
        return (torch.tanh(h @ self.recurrent_matrix().T + context),)

    def recurrent_matrices(self):
        return {"W − Wᵀ − γI": self.recurrent_matrix()}

    def extra_repr(self):
        return super().extra_repr() + f", gamma={self.gamma}"


class CoRNNField(VectorField):
    """Coupled oscillatory RNN (Rusch & Mishra 2021), second order, on the blocks ``(z, y)`` with
    ``z = y′``: ``y′ = z``, ``z′ = tanh(W y + 𝒲 z + V x + b) − γ y − ε z``.

    Forward Euler partitioned over the blocks (``z`` first, then ``y`` with the new ``z``: the
    symplectic-Euler scheme of the paper's explicit variant) gives the published cell. The
    user-facing state is ``(y, z)``.
    """

    blocks = 2

    def __init__(self, input_size, hidden_size, gamma: float = 2.7, epsilon: float = 4.7, bias: bool = True):
        super().__init__(input_size, hidden_size)
        self.gamma, self.epsilon = float(gamma), float(epsilon)
        self.weight_y = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.weight_z = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.input_weight = nn.Parameter(torch.empty(hidden_size, input_size))
        self.bias = nn.Parameter(torch.empty(hidden_size)) if bias else None
        _uniform_(self, hidden_size)

    def project(self, x):
        out = x @ self.input_weight.T
        return out + self.bias if self.bias is not None else out

    def forward(self, context, state):
        z, y = state
        drive = torch.tanh(y @ self.weight_y.T + z @ self.weight_z.T + context)
        return (drive - self.gamma * y - self.epsilon * z, z)

    def recurrent_matrices(self):
        return {"W_y": self.weight_y, "W_z": self.weight_z}

    def to_blocks(self, state):
        y, z = state
        return (z, y)

    def from_blocks(self, blocks):
        z, y = blocks
        return (y, z)

    def extra_repr(self):
        return super().extra_repr() + f", gamma={self.gamma}, epsilon={self.epsilon}"


class ModuleField(VectorField):
    """A user-supplied ``nn.Module`` ``f(h, x) -> dh/dτ`` (one block) as a vector field."""

    def __init__(self, module: nn.Module, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.module = module

    def forward(self, context, state):
        (h,) = state
        return (self.module(h, context),)
