"""The generated cell: a vector field integrated over Δ by a Butcher tableau."""

from __future__ import annotations

import contextlib
from functools import lru_cache, partial

import torch
from torch import nn
from torch.nn.utils import parametrize

import butcher

from . import limits
from ._checks import InputError, Settings, check_count, check_interval, check_positive
from ._engine import in_engine
from ._fields import GRUODEField, LSTMField, TanhRNNField, VectorField
from ._stepping import AdaptiveScheme, ExplicitScheme, ImplicitScheme, field_jacobians

__all__ = ["ODECell", "cell_from_torch"]


@lru_cache(maxsize=1)
def _euler() -> butcher.ButcherTableau:
    return butcher.get("euler")


class ODECell(Settings, nn.Module):
    """``state_{k+1}`` from ``(x_k, state_k)`` by ``steps`` equal steps of ``tableau`` on the field
    over an interval ``dt`` (a float, or one value per batch element for irregular sampling).

    With ``partitioned=True`` the blocks of a multi-block field are advanced one after the other,
    each seeing the blocks already advanced (the scheme of ``nn.LSTMCell`` and coRNN). For one block
    it is the plain method; for several it is a first-order splitting whatever the tableau, so use
    ``partitioned=False`` to get the tableau's order on the whole system.

    Attributes: ``n`` (stages), ``t`` (state blocks), ``nfe`` (field evaluations of the last call).
    ``dt`` and ``steps`` may change after construction (each call reads them); ``field``,
    ``tableau`` and ``partitioned`` may not (the stepping scheme is built from them).
    """

    _fixed = frozenset({"field", "tableau", "scheme", "partitioned"})
    _fixed_what = "stepping scheme"
    _checked = {"dt": partial(check_positive, "dt"), "steps": partial(check_count, "steps")}

    def __init__(self, field: VectorField, tableau: butcher.ButcherTableau | str = "euler", dt: float = 1.0,
                 steps: int = 1, partitioned: bool = False, tol: float | None = None,
                 rtol: float | None = None, atol: float | None = None, newton: str | None = None):
        super().__init__()
        if isinstance(tableau, str):
            tableau = butcher.get(tableau)
        self.field, self.tableau = field, tableau
        self.dt, self.steps, self.partitioned = dt, steps, bool(partitioned) and field.blocks > 1
        if newton is not None and tableau.is_explicit:
            raise ValueError(f"newton= chooses how an implicit tableau's stage equations are solved; "
                             f"{tableau.name or 'this tableau'} is explicit")
        if rtol is not None or atol is not None:  # adaptive: an embedded pair with error control
            if self.partitioned:
                raise ValueError("adaptive stepping does not combine with partitioned stepping")
            self.scheme = AdaptiveScheme(tableau, rtol=rtol if rtol is not None else 1e-6,
                                         atol=atol if atol is not None else 1e-8)
        elif tableau.is_explicit:
            self.scheme = ExplicitScheme(tableau)
        else:
            if self.partitioned:
                raise ValueError("partitioned stepping needs an explicit tableau")
            self.scheme = ImplicitScheme(tableau, tol=tol, newton="auto" if newton is None else newton)
        self._record_nfe(0)
        self.constraint = None  # the name of a parameterisation applied to the field's weights
        self._is_euler = tableau.A == _euler().A and tableau.b == _euler().b  # derived once: the tableau is fixed
        self._freeze()

    def __setstate__(self, state):
        state.setdefault("_frozen", True)
        super().__setstate__(state)
        if "_is_euler" not in state:  # pickled before it was derived at construction
            object.__setattr__(self, "_is_euler", self.tableau.A == _euler().A and self.tableau.b == _euler().b)

    @property
    def n(self) -> int:
        return self.tableau.stages

    @property
    def t(self) -> int:
        return self.field.blocks

    @property
    def input_size(self) -> int:
        return self.field.input_size

    @property
    def hidden_size(self) -> int:
        return self.field.hidden_size

    @property
    def nfe_per_token(self) -> int:
        """Field evaluations per token: exact for explicit tableaux; for implicit and adaptive ones,
        those of the last call (Newton iterations and accepted/rejected steps vary)."""
        per_step = self.scheme.evaluations * (self.t if self.partitioned else 1)
        return self.steps * per_step

    def _record_nfe(self, evaluations: int | None = None) -> None:
        """``nfe``, the field evaluations per token of the last call: ``evaluations``, or by default
        :attr:`nfe_per_token` (explicit tableaux, whichever path ran them)."""
        self.nfe = self.nfe_per_token if evaluations is None else evaluations

    def _step_size(self, dt, batch: int, like: torch.Tensor):
        if dt is None:
            return self.dt / self.steps
        number = check_interval(dt)
        if number is not None:
            return number / self.steps
        dt = torch.as_tensor(dt, dtype=like.dtype, device=like.device).reshape(-1, 1)
        if dt.shape[0] != batch:
            raise InputError(f"dt has {dt.shape[0]} entries for a batch of {batch}")
        return dt / self.steps  # (B, 1): one step size per sequence

    def forward(self, x: torch.Tensor, state=None, dt=None):
        """``x``: ``(B, input_size)``; ``state``: as the ``torch.nn`` cell (``None`` for zeros);
        ``dt``: overrides the interval, a float or a ``(B,)`` tensor of gaps."""
        # constrained weights and the recurrent map: evaluated once per token, not once per stage
        with parametrize.cached() if parametrize.is_parametrized(self.field) else contextlib.nullcontext():
            with self.field.held_structure():
                return self._forward(x, state, dt)

    def _forward(self, x, state, dt):
        """``x`` ``(B, input_size)`` or unbatched ``(input_size,)`` with the state to match, as
        ``nn.GRUCell`` takes them."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"{name}: input x must have shape (B, input_size={self.input_size}) or "
                             f"(input_size,), got {shape}" + ("; a sequence (T, B, input_size) goes to odernn.ODERNN"
                                                              if isinstance(x, torch.Tensor) and x.dim() == 3 else ""))
        dtype = next(iter(self.field.parameters()), x).dtype
        if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            raise InputError(f"{name}: input dtype ({x.dtype}) does not match weight dtype ({dtype}); convert it: "
                             f"x.to({dtype})" + (f", or the cell: cell.to({x.dtype})" if x.is_floating_point() else ""))
        unbatched = x.dim() == 1
        if unbatched:
            x = x[None]
        if state is None:
            blocks = self.field.to_blocks(self.field.initial_state(x.shape[0], x.dtype, x.device))
        else:
            if self.field.blocks > 1 and isinstance(state, torch.Tensor):
                raise InputError(f"{name}: the state of {self.field_name} is a tuple of {self.field.blocks} tensors "
                                 f"(as the cell returns it), got one tensor of shape {tuple(state.shape)}")
            blocks = self.field.to_blocks(state)
            expected = [(width,) if unbatched else (x.shape[0], width) for width in self.field.block_sizes]
            if len(blocks) != self.field.blocks or any(
                    not isinstance(b, torch.Tensor) or tuple(b.shape) != e for b, e in zip(blocks, expected)):
                got = [tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__ for b in blocks]
                shapes = self.field.from_blocks(tuple(expected)) if self.field.blocks > 1 else expected[0]
                raise InputError(f"{name}: the state must be {self.field.blocks} tensor(s) of shape {shapes} "
                                 f"for x of shape {tuple(x.shape[1:]) if unbatched else tuple(x.shape)}, got "
                                 f"{self.field.from_blocks(tuple(got)) if len(got) == self.field.blocks else got}")
            if any(b.dtype != dtype for b in blocks) and not torch.is_autocast_enabled(x.device.type):
                raise InputError(f"{name}: state dtype ({blocks[0].dtype}) does not match weight dtype ({dtype})")
            if unbatched:
                blocks = tuple(b[None] for b in blocks)
        context = self.field.project(x)  # once per token, shared by every stage
        h = self._step_size(dt, x.shape[0], x)
        out = self.integrate(context, blocks, h)
        if unbatched:
            out = tuple(b[0] for b in out)
        return self.field.from_blocks(out)

    def integrate(self, context, y: tuple[torch.Tensor, ...], h, steps: int | None = None) -> tuple[torch.Tensor, ...]:
        """The state blocks ``y`` after ``steps`` (default the cell's) steps of size ``h`` (a float,
        or ``(B, 1)``) with the input's ``context`` (``field.project(x)``): the solve of one token."""
        steps = self.steps if steps is None else steps
        if isinstance(self.scheme, AdaptiveScheme):
            if isinstance(h, torch.Tensor):
                raise InputError("adaptive cells share their steps across the batch: give dt as a number")
            y = self.scheme.integrate(lambda blocks: self.field(context, blocks), y, h * steps, h)
            self._record_nfe(self.scheme.evaluations)
            return y
        implicit = isinstance(self.scheme, ImplicitScheme)
        evaluations = 0
        for _ in range(steps):
            if implicit:
                y = self.scheme.step(self.field, context, y, h)
                evaluations += self.scheme.evaluations
            elif self.partitioned:
                for k in range(self.t):
                    def block_field(yk, k=k, y=y):
                        return (self.field(context, y[:k] + yk + y[k + 1:])[k],)
                    y = y[:k] + self.scheme.step(block_field, y[k:k + 1], h) + y[k + 1:]
            else:
                y = self.scheme.step(lambda blocks: self.field(context, blocks), y, h)
        self._record_nfe(evaluations if implicit else steps * self.nfe_per_token // self.steps)
        return y

    def jacobian(self, x: torch.Tensor, state=None) -> torch.Tensor:
        """``∂f/∂y`` of the field at each batch element ``(B, D, D)``, with ``y`` the state blocks
        concatenated in the field's block order (the linearisation the stability check uses)."""
        if state is None:
            state = self.field.initial_state(x.shape[0], x.dtype, x.device)
        blocks = self.field.to_blocks(state)
        Y = torch.cat(blocks, dim=-1)
        # the batched vector–Jacobian products hold several D × D blocks per state at once
        limits.check_memory(f"the Jacobians of {Y.shape[0]} states of size {Y.shape[-1]}",
                            8 * Y.shape[0] * Y.shape[-1] ** 2, Y.element_size())
        return field_jacobians(self.field, self.field.project(x), Y, [b.shape[-1] for b in blocks])

    @property
    def step_size(self) -> float:
        """``Δ / steps``: the step each Runge–Kutta step takes (adaptive cells: the first one)."""
        return self.dt / self.steps

    def evolve(self, state, dt):
        """The state carried over a gap ``dt`` (a float or one per batch element) with no
        observation: the field with zero input, ODE-RNN / GRU-ODE-Bayes style. Combine with a
        jump at each observation (this cell, or another one) for irregularly sampled sequences."""
        blocks = self.field.to_blocks(state)
        x = torch.zeros(blocks[0].shape[0], self.input_size, dtype=blocks[0].dtype, device=blocks[0].device)
        return self(x, state, dt=dt)

    @property
    def runs_in_engine(self) -> bool:
        """Whether ``odernn.ODERNN`` runs sequences of this cell in its engine (an explicit tableau,
        or an implicit one whose stage equations decouple, on a field with the recurrent
        structure) rather than token by token under autograd."""
        return in_engine(self)

    @property
    def torch_sequence(self) -> type | None:
        """The ``torch.nn`` sequence module (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``) whose layer update
        this cell's step equals, or ``None``: forward Euler, Δ = 1, one step (partitioned over
        several blocks), on a field whose step is torch's (``field.torch_step``) and whose
        parameters are torch's (a constrained field's are not)."""
        kind = self.field.torch_step
        if kind is None or not (self._is_euler and self.dt == 1.0 and self.steps == 1):
            return None
        if self.field.blocks > 1 and not self.partitioned:
            return None
        return None if parametrize.is_parametrized(self.field) else kind  # a constraint's weights are not torch's

    @property
    def torch_equivalent(self) -> type | None:
        """The ``torch.nn`` cell class this cell equals, or ``None``: where :attr:`torch_sequence`
        is one, and the field has only a torch cell's parameters (no cell has the LSTM's projection)."""
        return None if self.torch_sequence is None else self.field.torch_cell

    def to_torch(self) -> nn.Module:
        """The equivalent ``torch.nn`` cell with the same weights, where one exists (see
        :attr:`torch_equivalent`)."""
        kind, f = self.torch_equivalent, self.field
        if kind is None:
            raise ValueError(f"no torch.nn cell equals {self.describe()}: that needs forward Euler, dt=1, "
                             "steps=1 on the rnn, gru-ode or (partitioned) lstm field, without a projection "
                             "or a constraint")
        parameters = {name: getattr(f, name) for name in f.torch_parameter_names()}
        module = kind(f.input_size, f.hidden_size, bias="bias_ih" in parameters)
        module = module.to(dtype=parameters["weight_hh"].dtype, device=parameters["weight_hh"].device)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                parameter.copy_(parameters[name])
        return module

    @property
    def field_name(self) -> str:
        """The field's name (``VectorField.field_name``): its class's, without the ``Parametrized``
        a constraint puts in front; a field raised to order t names its base: ``TanhRNNField at order 3``."""
        return self.field.field_name

    def describe(self) -> str:
        return (f"{self.field_name} with {self.tableau.name or 'a user tableau'}, dt={self.dt}, "
                f"steps={self.steps}{', partitioned' if self.partitioned else ''}")

    def extra_repr(self) -> str:
        return (f"n={self.n}, t={self.t}, tableau={self.tableau.name!r}, dt={self.dt}, steps={self.steps}, "
                f"partitioned={self.partitioned}, nfe_per_token={self.nfe_per_token}"
                + (f", constraint={self.constraint!r}" if self.constraint else ""))


def cell_from_torch(module: nn.Module) -> ODECell:
    """The generated cell equal to an ``nn.RNNCell`` (tanh), ``nn.GRUCell`` or ``nn.LSTMCell``,
    with a copy of its weights: forward Euler, Δ = 1, on the matching field."""
    kinds = {nn.RNNCell: TanhRNNField, nn.GRUCell: GRUODEField, nn.LSTMCell: LSTMField}
    if type(module) not in kinds:
        raise TypeError("from_torch takes nn.RNNCell, nn.GRUCell, nn.LSTMCell, nn.RNN, nn.GRU or nn.LSTM, got "
                        f"{type(module).__name__}")
    if isinstance(module, nn.RNNCell) and module.nonlinearity != "tanh":
        raise ValueError("only the tanh nn.RNNCell is a forward-Euler step of the tanh-RNN field")
    field = kinds[type(module)](module.input_size, module.hidden_size, bias=module.bias)
    field = field.to(dtype=module.weight_hh.dtype, device=module.weight_hh.device)
    with torch.no_grad():
        for name in field.torch_parameter_names():  # the field's parameters that are the cell's, by torch's names
            getattr(field, name).copy_(getattr(module, name))
    return ODECell(field, "euler", dt=1.0, steps=1, partitioned=field.blocks > 1)
