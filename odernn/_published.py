"""Published recurrent cells as vector fields: coRNN, the orthogonal RNN of expRNN, the Lipschitz
RNN, LEM and UnICORNN. Each one's published update is a step of a tableau on its field (forward
Euler, plain or partitioned over the blocks), tested against the authors' official code to 1e-12
(``tests/test_literature_cells.py``); any other tableau then gives a new cell of the same field.
They share the interface and the engine structure of :mod:`odernn._fields`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._field_toolkit import (AddsContext, ReversedState, add_or_none, gate_parameters, or_zeros, sigmoid_backward,
                             tanh_backward)
from ._fields import HigherOrderField, TanhRNNField, VectorField

__all__ = ["CoRNNField", "URNNField", "LipschitzField", "LEMField", "UnICORNNField", "modrelu"]


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

    field_name = VectorField.field_name  # a published field of its own, not the order-2 rnn field's name

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
        grad = or_zeros(grad_act[0], act[0])
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
        grad_linear, grad_tanh = (or_zeros(g, a) for g, a in zip(grad_act, act))
        inner = tanh_backward(grad_tanh, act[1])
        return inner, torch.cat((grad_linear, inner), dim=-1)

    def recurrent_matrices(self):
        return {"A": self._structured(self.weight_a), "W": self._structured(self.weight_w)}

    def extra_repr(self):
        return super().extra_repr() + f", beta={self.beta}, gamma={self.gamma}"


class LEMField(ReversedState, AddsContext, VectorField):
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
        gate_parameters(self, 4, bias, {"weight_hh_y": (3 * H, H), "weight_hh_z": (H, H)})

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
        grads = [or_zeros(g, a) for g, a in zip(grad_act, act)]
        grad = torch.cat([sigmoid_backward(g, a) for g, a in zip(grads[:2], act[:2])]
                         + [tanh_backward(g, a) for g, a in zip(grads[2:], act[2:])], dim=-1)
        return grad, grad

    def recurrent_matrices(self):
        W_dy, W_dz, W_cz = self.weight_hh_y.chunk(3, dim=0)
        return {"W_Δy": W_dy, "W_Δz": W_dz, "W_z (y → z)": W_cz, "W_y (z → y)": self.weight_hh_z}


class UnICORNNField(ReversedState, VectorField):
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
                grad_rate = add_or_none(grad_rate, -g * torch.add(force, y, alpha=self.alpha))
                grad_blocks[1] = add_or_none(grad_blocks[1], grad_force * self.alpha)
            else:
                grad_rate = add_or_none(grad_rate, g * z)
                grad_blocks[0] = add_or_none(grad_blocks[0], g * rate)
        return tuple(grad_blocks), (grad_force, grad_rate)

    def activate_vjp(self, act, grad_act):
        force, rate = act
        grad_drive = tanh_backward(or_zeros(grad_act[0], force), force)
        grad_c = sigmoid_backward(or_zeros(grad_act[1], rate), rate)
        return torch.cat((grad_drive, grad_c), dim=-1), grad_drive

    def recurrent_matrices(self):
        return {"diag(w)": torch.diag(self.weight_hh)}

    def extra_repr(self):
        return super().extra_repr() + f", alpha={self.alpha}"
