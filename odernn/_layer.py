"""``ODERNN``: whole-sequence recurrent layers from a cell spec, with ``torch.nn.GRU``'s conventions."""

from __future__ import annotations

import contextlib
import warnings
from functools import cached_property, partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import limits
from ._adjoint import AdjointMethod
from ._cell import ODECell, cell_from_torch
from ._checks import (InputError, Settings, check_bool, check_count, check_dropout, check_interval, check_proj_size,
                      check_size)
from ._engine import run_sequence
from ._graphs import SequenceGraphs
from ._spec import cell as make_cell
from ._stepping import ExplicitScheme

__all__ = ["ODERNN", "GRAD_MODES", "InputError", "from_torch"]

GRAD_MODES = ("backprop", "checkpoint", "adjoint")

# the torch.nn sequence modules, the spec each equals (forward Euler, Δ = 1), and their cells
_TORCH = {nn.RNN: "rnn:euler", nn.GRU: "gru-ode:euler", nn.LSTM: "lstm:euler"}


def _flat_name(path: str, suffix: str) -> str:
    """A field parameter's path → the layer's name: ``weight_hh`` → ``weight_hh_l0``; a constrained
    weight's ``parametrizations.weight_hh.original`` → ``weight_hh_original_l0``."""
    parts = [p for p in path.split(".") if p != "parametrizations"]
    return "_".join(parts) + suffix


def _check_grad(value) -> str:
    if value not in GRAD_MODES:
        raise ValueError(f"unknown gradient mode {value!r}; modes: {', '.join(GRAD_MODES)}")
    return value


class ODERNN(Settings, nn.Module):
    """``num_layers`` layers of a generated cell over whole sequences: a drop-in ``nn.GRU``,
    ``nn.LSTM`` or ``nn.RNN`` for any field and tableau.

    ``forward(input, hx=None, dt=None, lengths=None) -> (output, h_n)`` with ``nn.GRU``'s
    conventions: ``input`` ``(T, B, E)`` (``(B, T, E)`` with ``batch_first``), unbatched
    ``(T, E)``, or a ``PackedSequence``; ``hx`` ``(num_layers · directions, B, H)``, a tuple of
    such tensors for two-block fields in the cell's state order (``(h, c)`` as ``nn.LSTM``);
    ``output`` ``(T, B, directions · H)``. Beyond ``nn.GRU``: ``dt``, the interval each token
    integrates over (a float, or a tensor of gaps laid out as the input's first two dimensions,
    ``(T, B)``, ``(B, T)`` with ``batch_first``, for irregular sampling; default the
    spec's ``dt``); ``lengths``, the valid length of each sequence of a padded batch (the state of
    a finished sequence is carried unchanged and its outputs are zero, as with a packed input).
    Input that does not fit raises :class:`odernn.InputError` (a ``ValueError`` and a
    ``RuntimeError``), whichever path runs.

    Explicit tableaux on the built-in fields run in the sequence engine (``odernn._engine``): one
    input projection for all tokens, the backward pass generated from the tableau, the weight
    gradients as products over the whole sequence; the backward is itself differentiable
    (``create_graph=True``: gradient penalties, Hessian–vector products). ``grad`` chooses how
    gradients are obtained: ``backprop`` (stored stages), ``checkpoint`` (each token's stages
    recomputed in the backward pass: memory flat in the steps per token) or ``adjoint`` (the
    continuous adjoint, with ``adjoint``'s backward solver; first derivatives only). Other fields
    (``ModuleField``), implicit and adaptive tableaux run token by token under autograd: correct,
    not fast. Where the layers equal ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` (forward Euler, Δ = 1,
    one step; no ``dt`` or ``lengths`` given; ``backprop``), ``fused=True`` runs them on PyTorch's
    own fused kernel instead (oneDNN on a CPU, cuDNN on a GPU); ``fused=False`` keeps them in the
    engine. Both are tested equal.

    Every path reads the module's attributes when it runs: ``batch_first``, ``dropout``, ``grad``,
    ``fused``, training mode, and the parameters as they are then — replaced, loaded with
    ``assign=True``, swapped by ``torch.func.functional_call``, or parametrised
    (``torch.nn.utils.parametrizations.weight_norm(rnn, "weight_hh_l0")``: evaluated once per
    call). The arguments that fix the parameters' layout (``spec``, sizes, ``num_layers``,
    ``bias``, ``bidirectional``, ``proj_size``) cannot change after construction. Under
    ``torch.compile`` the layer is one opaque call (as ``nn.GRU`` is to Dynamo); ``torch.jit.script``
    is refused with a message that says so.

    Speed on a GPU: ``compile_elementwise=True`` fuses each evaluation's elementwise math (activations,
    derivative, their vector–Jacobian products) into single kernels with ``torch.compile`` (the
    state products stay on cuBLAS); ``cuda_graphs=True`` captures the forward and backward passes of
    CUDA inputs in CUDA graphs and replays them (``odernn._graphs``: one graph per shape and mode,
    captured the second time a shape occurs). Both are tested equal to the plain engine.

    Parameters are the field's, named as in ``nn.GRU``: ``weight_hh_l0``, ``bias_ih_l1_reverse``,
    so the state_dict of an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` loads into the matching field;
    ``device=`` and ``dtype=`` place and type them as ``nn.GRU``'s factory keywords do.

    ``spec`` is a cell spec (``"gru-ode:rk4:steps=2"``, see :func:`odernn.cell`) or a factory
    ``(input_size, hidden_size) -> ODECell`` for cells a spec cannot name, such as a
    ``ModuleField`` of your own (``bias`` then is the factory's business).

    >>> import torch, odernn
    >>> rnn = odernn.ODERNN("gru-ode:rk4", input_size=8, hidden_size=16, num_layers=2)
    >>> output, h_n = rnn(torch.randn(5, 3, 8))      # (T, B, E) → (T, B, H), (layers, B, H)
    >>> output.shape, h_n.shape
    (torch.Size([5, 3, 16]), torch.Size([2, 3, 16]))
    >>> gru = torch.nn.GRU(8, 16, num_layers=2)
    >>> same = odernn.from_torch(gru)                 # gru-ode:euler with gru's weights
    >>> x = torch.randn(5, 3, 8)
    >>> bool((same(x)[0] - gru(x)[0]).abs().max() < 1e-5)
    True
    """

    _fixed = frozenset({"spec", "input_size", "hidden_size", "num_layers", "bias", "bidirectional", "proj_size"})
    _checked = {"batch_first": partial(check_bool, "batch_first"), "dropout": check_dropout, "grad": _check_grad,
                "fused": partial(check_bool, "fused"), "compile_elementwise": partial(check_bool, "compile_elementwise"),
                "cuda_graphs": partial(check_bool, "cuda_graphs")}

    def __init__(self, spec, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, grad: str = "backprop", adjoint: AdjointMethod | None = None,
                 fused: bool = True, compile_elementwise: bool = False, cuda_graphs: bool = False):
        super().__init__()
        # nn.GRU's checks, in its order and with its exception types
        check_dropout(dropout, num_layers)
        check_bool("bias", bias)
        check_bool("batch_first", batch_first)
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        check_count("num_layers", num_layers)
        check_bool("bidirectional", bidirectional)
        check_proj_size(proj_size, hidden_size)
        directions = 2 if bidirectional else 1
        limits.check_memory(f"{num_layers} layer(s) of hidden_size={hidden_size}",  # four gates at most
                            num_layers * directions * 4 * hidden_size * (max(input_size, hidden_size * directions)
                                                                         + hidden_size))
        if proj_size and callable(spec):
            raise ValueError("proj_size with a cell factory: give the projection to the factory's lstm field")
        self.spec, self.input_size, self.hidden_size = spec, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = dropout, bidirectional, proj_size
        self.grad, self.adjoint = grad, adjoint or AdjointMethod()
        options = {**({} if bias else {"bias": False}), **({"proj_size": proj_size} if proj_size else {})}
        # One cell per layer and direction. The cells are not submodules: their parameters are
        # registered here under torch's names, and bound back into the cells before each use.
        cells, names, weights = [], [], []
        with torch.device(device) if device is not None else contextlib.nullcontext():
            for layer in range(num_layers):
                for direction in range(directions):
                    width = input_size if layer == 0 else cells[-1].field.output_size * directions
                    made = spec(width, hidden_size) if callable(spec) else make_cell(spec, width, hidden_size, **options)
                    if not isinstance(made, ODECell):
                        raise TypeError(f"ODERNN: the cell factory returned {type(made).__name__}, not an "
                                        "odernn.ODECell")
                    suffix = f"_l{layer}" + ("_reverse" if direction else "")
                    pairs, own = [], []
                    for path, p in made.field.named_parameters():
                        self.register_parameter(_flat_name(path, suffix), p)
                        pairs.append((path, _flat_name(path, suffix)))
                        own.append(_flat_name(path, suffix))
                    for path, buf in made.field.named_buffers():
                        self.register_buffer(_flat_name(path, suffix), buf)
                        pairs.append((path, _flat_name(path, suffix)))
                    cells.append(made)
                    names.append(pairs)
                    weights.append(own)
        self._cells, self._names, self._weight_names = cells, names, weights
        if dtype is not None:
            self.to(dtype=dtype)
        self.fused, self.compile_elementwise, self.cuda_graphs = fused, compile_elementwise, cuda_graphs
        object.__setattr__(self, "graphs", SequenceGraphs())  # not a submodule: it refers back to this one
        self._freeze()
        self._check("grad", grad)  # an unusable backward solver fails now, not at the first backward

    def _check(self, name, value):
        value = super()._check(name, value)
        if name == "adjoint" and not isinstance(value, AdjointMethod):
            raise TypeError(f"adjoint should be an odernn.AdjointMethod, got: {type(value).__name__}")
        if name in ("grad", "adjoint") and self.__dict__.get("_frozen"):
            grad, method = (value, self.adjoint) if name == "grad" else (self.grad, value)
            if grad == "adjoint":
                method.scheme(self._cells[0])  # raises for a backward solver it cannot run
        return value

    def __setstate__(self, state):
        # a module pickled before these attributes existed: derive them
        state.pop("_torch_twin", None)
        state.setdefault("proj_size", 0)
        state.setdefault("_frozen", True)
        if "_weight_names" not in state:
            state["_weight_names"] = [[name for path, name in pairs if path in dict(made.field.named_parameters())]
                                      for made, pairs in zip(state["_cells"], state["_names"])]
        super().__setstate__(state)
        self._bind_registered()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def cells(self) -> list[ODECell]:
        """The cell of each layer and direction (index ``layer · directions + direction``): for
        stability checks, ``to_torch``, single steps. Reading it changes nothing. The cells hold
        this module's registered tensors, kept so by every change of them (assignment,
        ``load_state_dict(assign=True)``, ``.to()``, unpickling); a call binds its own tensors for its
        duration only. A parametrisation registered on the layer computes its weight on every
        read, which no cell can hold: there the cells hold the raw tensor until
        :meth:`bind_cells` puts the evaluated one in."""
        return list(self._cells)

    def bind_cells(self) -> list[ODECell]:
        """The explicit binding step: put this module's tensors as they evaluate now into its cells
        (each parametrisation evaluated once) and return the cells, e.g. to stability-check a
        parametrised layer. A call binds its own tensors the same way for its duration."""
        self._bind_cells(self._weights())
        return list(self._cells)

    def _weights(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer by its flat name as the module holds it now: after ``.to()``,
        ``load_state_dict(assign=True)``, ``functional_call``, and evaluated where parametrised."""
        return {name: getattr(self, name) for pairs in self._names for _, name in pairs}

    def _registered(self) -> dict[str, torch.Tensor | None]:
        """Every parameter and buffer by its flat name as registered: nothing a call computed or was
        given (a parametrisation's value, a ``functional_call``'s tensors); ``None`` for a
        parametrised name."""
        return {name: self._parameters.get(name, self._buffers.get(name)) for pairs in self._names
                for _, name in pairs}

    def _slots(self):
        """``(flat name, the dict that holds it in its cell's field, key)`` for every tensor."""
        for made, pairs in zip(self._cells, self._names):
            for path, name in pairs:
                owner, _, leaf = path.rpartition(".")
                module = made.field.get_submodule(owner) if owner else made.field
                yield name, (module._buffers if leaf in module._buffers else module._parameters), leaf

    def _bind_cells(self, tensors: dict) -> None:
        """The one step that puts tensors into the cells' fields, by flat name (the names in
        ``tensors`` only): a call's (:meth:`_weights`, for the call's duration), or the registered
        ones (:meth:`_registered`) after a change of them, and before a copy or a pickle."""
        for name, slots, leaf in self._slots():
            if name in tensors:
                slots[leaf] = tensors[name]

    @contextlib.contextmanager
    def _bound(self, tensors: dict):
        """The cells holding ``tensors`` (a call's) inside, and what they held before after: a
        ``functional_call`` restores the module's tensors behind its back, so the ones before the
        call, not the registered ones at its end, are the module's own."""
        before = {name: slots.get(leaf) for name, slots, leaf in self._slots()}
        self._bind_cells(tensors)
        try:
            yield
        finally:
            self._bind_cells(before)

    def _bind_registered(self, name: str | None = None) -> None:
        """Keep the cells holding the registered tensors (of ``name``, or all) after they changed; a
        name parametrised on the layer keeps what the cells hold."""
        if not self.__dict__.get("_frozen"):  # in __init__ the cells and the module share them by construction
            return
        if name is not None and name not in self._flat_names:  # (every attribute assignment passes here)
            return
        registered = self._registered()
        self._bind_cells({key: value for key, value in registered.items() if value is not None and name in (None, key)})

    @cached_property
    def _flat_names(self) -> frozenset:
        """The flat names of the cells' tensors (the layout is fixed: derived once)."""
        return frozenset(name for pairs in self._names for _, name in pairs)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        self._bind_registered(name)

    def register_parameter(self, name, param):
        super().register_parameter(name, param)
        self._bind_registered(name)

    def register_buffer(self, name, tensor, persistent=True):
        super().register_buffer(name, tensor, persistent)
        self._bind_registered(name)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)  # a buffer (and, with the overwrite flag, a parameter) is a new tensor
        self._bind_registered()
        return self

    def __getstate__(self):
        self._bind_cells(self._registered())  # a copy or a pickle holds the registered tensors, never a call's
        return super().__getstate__()

    @property
    def _has_bias(self) -> bool:
        """Whether the layers have biases, as torch's kernel takes it (the fields say)."""
        return "bias_ih" in self._cells[0].field.torch_parameter_names()

    @cached_property
    def _torch_weight_names(self) -> list[str]:
        """The flat names of the parameters torch's kernel takes, in its order: layer by layer and
        direction by direction, each as its field names its torch parameters (the layout is fixed:
        derived once, not on every fused call)."""
        names = []
        for made, pairs in zip(self._cells, self._names):
            flat = dict(pairs)
            names += [flat[path] for path in made.field.torch_parameter_names()]
        return names

    @property
    def all_weights(self) -> list[list[torch.Tensor]]:
        """The parameters of each layer and direction, as ``nn.GRU.all_weights`` lists them."""
        return [[getattr(self, name) for name in names] for names in self._weight_names]

    def flatten_parameters(self) -> None:
        """A no-op, for code written for ``nn.GRU`` (which packs its weights into one cuDNN buffer
        here; the engine reads each parameter where it is)."""

    def __prepare_scriptable__(self):
        raise RuntimeError("odernn.ODERNN cannot be compiled by torch.jit.script (its engine is Python); use "
                           "torch.compile, which runs the layer as one opaque call inside the compiled model")

    # -- forward ------------------------------------------------------------------------------------
    @torch.compiler.disable(reason="odernn.ODERNN runs as one opaque call, as Dynamo treats nn.GRU")
    def forward(self, input, hx=None, dt=None, lengths=None):
        if (self.cuda_graphs and self.graphable and isinstance(input, torch.Tensor) and input.is_cuda
                and lengths is None and not isinstance(dt, torch.Tensor)):
            return self.graphs(self, input, hx, dt)
        return self.eager_forward(input, hx, dt, lengths)

    @property
    def graphable(self) -> bool:
        """Whether CUDA graphs can capture these layers: every cell runs in the engine (implicit and
        adaptive cells synchronise with the host to decide convergence, which a capture forbids)
        and gradients are not the continuous adjoint's (its solve runs outside the engine)."""
        return self.grad != "adjoint" and all(cell.runs_in_engine and isinstance(cell.scheme, ExplicitScheme)
                                              for cell in self._cells)

    def eager_forward(self, input, hx=None, dt=None, lengths=None):
        """:meth:`forward` without CUDA graphs."""
        weights = self._weights()  # the parameters as they are now, each parametrisation evaluated once
        field = self._cells[0].field
        dtype = next(iter(weights.values()), None)
        dtype = dtype.dtype if dtype is not None else None
        T, B, unbatched, lengths = self._check_input(input, lengths, dtype)
        initial = self._initial_state(hx, B, input.data if isinstance(input, PackedSequence) else input, unbatched,
                                      field, dtype)
        # Under autocast the engine runs, not PyTorch's kernel: autocast's wrapper for cuDNN RNNs
        # casts to float16 whatever the autocast dtype, and oneDNN builds no bfloat16 LSTM without
        # AVX512-BF16; the engine keeps its own rule (products in the autocast dtype, state float32)
        autocast = isinstance(input, torch.Tensor) and torch.is_autocast_enabled(input.device.type)
        kind = self.torch_equivalent if self.fused and dt is None and lengths is None else None
        if kind is not None and self.grad == "backprop" and not autocast:
            return self._fused(kind, weights, input, initial, unbatched)
        with self._bound(weights):  # the engine and the token path read the cells (the fused kernel does not)
            return self._run(input, initial, T, B, unbatched, dt, lengths)

    def _run(self, input, initial, T, B, unbatched, dt, lengths):
        """The layers in the engine, or token by token, with the cells holding this call's tensors."""
        field = self._cells[0].field
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            x, lengths = pad_packed_sequence(packed)  # (T, B, E) in the original batch order
        else:
            x = input.unsqueeze(1) if unbatched else input.transpose(0, 1) if self.batch_first else input
        dt = self._gaps(dt, T, B, unbatched, x)
        mask = None
        if lengths is not None:
            mask = torch.arange(T, device=x.device)[:, None] < lengths.to(x.device)[None, :]  # (T, B)
        finals = []
        for layer in range(self.num_layers):
            x, last = self._layer(layer, x, initial, dt, mask)
            finals.extend(last)
            if layer < self.num_layers - 1 and self.dropout and self.training:
                x = F.dropout(x, self.dropout, training=True)
        if mask is not None:
            x = x * mask[..., None].to(x.dtype)
        h_n = field.from_blocks(tuple(torch.stack(block) for block in zip(*finals)))
        if unbatched:
            x = x.squeeze(1)
            h_n = h_n.squeeze(1) if isinstance(h_n, torch.Tensor) else tuple(b.squeeze(1) for b in h_n)
        elif packed is not None:
            x = self._repack(x, lengths, packed)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, h_n

    def _fused(self, kind, weights, input, initial, unbatched):
        """The layers on PyTorch's fused kernel (oneDNN, cuDNN), called as ``nn.GRU.forward`` calls
        it, with this module's tensors and settings as they are now (nothing shared is changed: any
        number of threads may call it at once)."""
        for cell in self._cells:
            cell._record_nfe()  # forward Euler: one evaluation per token, fused or not
        flat = [weights[name] for name in self._torch_weight_names]
        state = self._cells[0].field.from_blocks(initial) if len(initial) > 1 else initial[0]  # (h, c) for nn.LSTM
        options = (self._has_bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        kernel = {nn.RNN: torch.rnn_tanh, nn.GRU: torch.gru, nn.LSTM: torch.lstm}[kind]
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if sorted_indices is not None:  # hx is in the caller's batch order
                state = _permute(state, sorted_indices)
            output, *hidden = kernel(data, batch_sizes, state, flat, *options)
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                hidden = [_permute(h, unsorted_indices) for h in hidden]
        else:
            x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
            output, *hidden = kernel(x, state, flat, *options, self.batch_first)
            if unbatched:
                output, hidden = output.squeeze(0 if self.batch_first else 1), [h.squeeze(1) for h in hidden]
        return output, (tuple(hidden) if len(hidden) > 1 else hidden[0])

    # -- what a call may pass: one check for every path, InputError naming the argument ------------
    def _check_input(self, input, lengths, dtype) -> tuple[int, int, bool, torch.Tensor | None]:
        """``(T, B, unbatched, lengths)`` of a valid ``input``, with ``lengths`` checked against it
        (one integer in 1..T per sequence) as an int64 tensor."""
        name = type(self).__name__.removeprefix("Parametrized")
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise InputError(f"{name}: a PackedSequence carries its lengths: do not also pass lengths=")
            data = input.data
            if data.dim() != 2:
                raise InputError(f"{name}: a PackedSequence's data must be 2-D (tokens, input_size), got "
                                 f"{tuple(data.shape)}")
            T, B, unbatched = len(input.batch_sizes), int(input.batch_sizes[0]) if len(input.batch_sizes) else 0, False
        elif isinstance(input, torch.Tensor):
            data = input
            if input.dim() not in (2, 3):
                layout = "(B, T, E)" if self.batch_first else "(T, B, E)"
                raise InputError(f"{name}: expected input to be 2-D (T, E) or 3-D {layout}, got {input.dim()}-D "
                                 f"of shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            T = input.shape[1] if self.batch_first and not unbatched else input.shape[0]
            B = 1 if unbatched else input.shape[0] if self.batch_first else input.shape[1]
        else:
            raise InputError(f"{name}: input must be a tensor or a PackedSequence, got {type(input).__name__}")
        if data.shape[-1] != self.input_size:
            raise InputError(f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                             f"got {data.shape[-1]}")
        if dtype is not None and data.dtype != dtype and not torch.is_autocast_enabled(data.device.type):
            raise InputError(f"{name}: input dtype ({data.dtype}) does not match weight dtype ({dtype}). Convert "
                             f"input: input.to({dtype})" + (f", or convert model: model.to({data.dtype})"
                                                             if data.is_floating_point() else ""))
        if T == 0:
            raise InputError(f"{name}: expected sequence length to be larger than 0, got input of shape "
                             f"{tuple(data.shape)}")
        if lengths is not None:
            lengths = _integers(lengths, f"{name}: lengths must be {B} integers in 1..{T}, one per sequence", B)
            if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
                raise InputError(f"{name}: lengths must be {B} integers in 1..{T}, one per sequence; got "
                                 f"{_shown(lengths)}")
        return T, B, unbatched, lengths

    def _gaps(self, dt, T, B, unbatched, like):
        """``dt`` as ``None`` (each cell's own Δ), a float, or a time-major ``(T, B)`` tensor (given
        ``(B, T)`` with ``batch_first``)."""
        if dt is None:
            return None
        number = check_interval(dt, "ODERNN: ")
        if number is not None:
            return number
        expected = (T,) if unbatched else ((B, T) if self.batch_first else (T, B))
        what = (f"ODERNN: dt must be a float or a tensor of shape {expected} (one gap per token"
                f"{'' if unbatched else ' and sequence'}) of finite numbers greater than zero")
        try:
            dt = torch.as_tensor(dt, device=like.device)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"{what}; got {type(dt).__name__}") from None
        if tuple(dt.shape) != expected or dt.dtype == torch.bool or dt.is_complex():
            raise InputError(f"{what}; got shape {tuple(dt.shape)}, dtype {dt.dtype}")
        with torch.no_grad():
            if not bool((torch.isfinite(dt) & (dt > 0)).all()):
                raise InputError(f"{what}; got {_shown(dt)}")
        if unbatched:
            return dt[:, None]
        return dt.T if self.batch_first else dt

    def _initial_state(self, hx, B, x, unbatched, field, dtype=None):
        """``hx`` as a tuple over the field's blocks of ``(L·D, B, width)`` tensors (zeros if ``None``)."""
        shapes = [(self.num_layers * self.num_directions, B, width) for width in field.block_sizes]
        if hx is None:  # in the weights' dtype: under autocast the input may be bfloat16, the state is not
            return tuple(x.new_zeros(shape, dtype=dtype or x.dtype) for shape in shapes)
        name = type(self).__name__.removeprefix("Parametrized")
        shapes = [shape[:1] + shape[2:] if unbatched else shape for shape in shapes]
        user = field.from_blocks(tuple(shapes)) if field.blocks > 1 else shapes[0]  # in the caller's order
        what = (f"a tensor of shape {user}" if field.blocks == 1 else
                f"a tuple of {field.blocks} tensors of shapes {', '.join(map(str, user))}")
        if field.blocks == 1 and not isinstance(hx, torch.Tensor):
            raise InputError(f"{name}: hx for the {self._cells[0].field_name} is {what}, got {type(hx).__name__}")
        if field.blocks > 1 and (not isinstance(hx, (tuple, list)) or len(hx) != field.blocks
                                 or not all(isinstance(b, torch.Tensor) for b in hx)):
            got = (f"a tensor of shape {tuple(hx.shape)}" if isinstance(hx, torch.Tensor) else
                   f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__)
            raise InputError(f"{name}: hx for the {self._cells[0].field_name} is {what} (in the cell's state "
                             f"order), got {got}")
        out = []
        order = field.to_blocks(tuple(range(field.blocks))) if field.blocks > 1 else (0,)
        for k, block in enumerate(field.to_blocks(hx)):
            if tuple(block.shape) != shapes[k]:
                which = "hx" if field.blocks == 1 else f"hx[{order[k]}]"
                raise InputError(f"{name}: {which} must have shape {shapes[k]} for "
                                 f"{'unbatched' if unbatched else 'batched'} input, got {tuple(block.shape)}")
            if dtype is not None and block.dtype != dtype and not torch.is_autocast_enabled(block.device.type):
                raise InputError(f"{name}: hx dtype ({block.dtype}) does not match weight dtype ({dtype})")
            out.append(block.unsqueeze(1) if unbatched else block)
        return tuple(out)

    def _layer(self, layer: int, x, initial, dt, mask):
        """One layer, every direction: ``(output (T, B, D·H), [final blocks of each direction])``."""
        outputs, finals = [], []
        for direction in range(self.num_directions):
            index = layer * self.num_directions + direction
            cell = self._cells[index]
            flip = (lambda v: v.flip(0)) if direction else (lambda v: v)
            y0 = tuple(block[index] for block in initial)
            with parametrize.cached() if parametrize.is_parametrized(cell.field) else contextlib.nullcontext():
                gaps = cell.dt if dt is None else (flip(dt) if isinstance(dt, torch.Tensor) else dt)
                out, y = run_sequence(cell, flip(x), y0, gaps, None if mask is None else flip(mask), self.grad,
                                      self.adjoint, self.compile_elementwise)
            outputs.append(flip(out))
            finals.append(y)
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)), finals

    @torch.no_grad()
    def layer_inputs(self, input) -> list[torch.Tensor]:
        """What each layer reads ``(T, B, ·)`` when the stack runs ``input`` ``(T, B, E)`` from the
        zero state without dropout: ``input`` for the first, the previous layer's output for the
        others (the inputs a stability check drives each layer's cells with)."""
        with self._bound(self._weights()):
            x = input
            initial = self._initial_state(None, x.shape[1], x, False, self._cells[0].field,
                                          next(self.parameters()).dtype)
            out = []
            for layer in range(self.num_layers):
                out.append(x)
                x, _ = self._layer(layer, x, initial, None, None)
            return out

    @staticmethod
    def _repack(x, lengths, packed: PackedSequence) -> PackedSequence:
        """The padded output packed as ``nn.GRU`` packs it: the input's batch order and sizes."""
        order = packed.sorted_indices
        if order is not None:
            x, lengths = x.index_select(1, order), lengths[order.to(lengths.device)]
        data = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=True).data
        return PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)

    # -- conversion ---------------------------------------------------------------------------------
    @property
    def torch_equivalent(self) -> type | None:
        """The ``torch.nn`` sequence module (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``) these layers equal,
        or ``None`` (see ``ODECell.torch_equivalent``)."""
        kinds = {cell.torch_sequence for cell in self._cells}  # a factory may make unequal layers
        return kinds.pop() if len(kinds) == 1 else None

    def to_torch(self) -> nn.Module:
        """The equal ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` with the same weights, where one exists
        (forward Euler, Δ = 1, one step, on the tanh-RNN, GRU-ODE or partitioned LSTM field), and
        the same ``batch_first`` and ``dropout``. A parametrised weight is copied as it evaluates now."""
        kind = self.torch_equivalent
        if kind is None:
            for cell in self._cells:
                cell.to_torch()  # raises, naming what is missing
            raise ValueError("ODERNN: its layers are not all the same torch.nn cell")
        weights = self._weights()
        reference = next(iter(weights.values()))
        with warnings.catch_warnings():  # nn.GRU's one-layer dropout warning was this module's to give
            warnings.simplefilter("ignore")
            module = self._torch_module(kind, reference.device).to(reference.dtype)
        module.load_state_dict(weights)
        return module

    def _torch_module(self, kind, device) -> nn.Module:
        projection = {"proj_size": self.proj_size} if self.proj_size else {}
        return kind(self.input_size, self.hidden_size, self.num_layers, bias=self._has_bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional, device=device, **projection)

    def describe(self) -> str:
        cell = self._cells[0]
        extra = [f"{self.num_layers} layers"] if self.num_layers > 1 else []
        extra += ["bidirectional"] if self.bidirectional else []
        return cell.describe() + (f" ({', '.join(extra)})" if extra else "")

    def extra_repr(self) -> str:
        cell = self._cells[0]
        spec = self.spec if isinstance(self.spec, str) else getattr(self.spec, "__name__", "factory")
        return (f"{spec!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"n={cell.n}, t={cell.t}, tableau={cell.tableau.name!r}, grad={self.grad!r}"
                + (", batch_first=True" if self.batch_first else "") + (f", dropout={self.dropout}" if self.dropout else "")
                + (", bidirectional=True" if self.bidirectional else "") + ("" if self.bias else ", bias=False")
                + (f", proj_size={self.proj_size}" if self.proj_size else ""))


def _integers(values, what: str, count: int) -> torch.Tensor:
    """``values`` (a tensor, array or sequence) as ``count`` int64 integers, else InputError(what)."""
    try:
        tensor = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{what}; got {type(values).__name__}") from None
    if tensor.dim() != 1 or tensor.shape[0] != count or tensor.dtype == torch.bool or tensor.is_floating_point() \
            or tensor.is_complex():
        raise InputError(f"{what}; got shape {tuple(tensor.shape)}, dtype {tensor.dtype}")
    return tensor.to(torch.int64)


def _shown(tensor: torch.Tensor) -> str:
    """A tensor's values in a message, or its shape where they are many."""
    return str(tensor.tolist()) if tensor.numel() <= 8 else f"a tensor of shape {tuple(tensor.shape)} with such values"


def _permute(state, indices):
    """``state`` (a tensor or ``(h, c)``) in another batch order along dimension 1."""
    if isinstance(state, torch.Tensor):
        return state.index_select(1, indices)
    return tuple(block.index_select(1, indices) for block in state)


def from_torch(module: nn.Module):
    """The generated equal of a ``torch.nn`` recurrent module, with a copy of its weights: forward
    Euler, Δ = 1, on the matching field. ``nn.RNNCell`` (tanh), ``nn.GRUCell`` and ``nn.LSTMCell``
    give an :class:`ODECell`; ``nn.RNN``, ``nn.GRU`` and ``nn.LSTM`` give an :class:`ODERNN` with the
    same layers, directions, ``batch_first`` and dropout."""
    if type(module) not in _TORCH:
        return cell_from_torch(module)
    spec = _TORCH[type(module)]
    if isinstance(module, nn.RNN) and module.nonlinearity != "tanh":
        raise ValueError("only the tanh nn.RNN is a forward-Euler step of the tanh-RNN field")
    reference = next(iter(module.parameters()))
    with warnings.catch_warnings():  # a one-layer dropout was warned about when the module was made
        warnings.simplefilter("ignore")
        out = ODERNN(spec, module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                     batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional,
                     proj_size=getattr(module, "proj_size", 0), device=reference.device, dtype=reference.dtype)
    # the weights as they evaluate now (a parametrised one included), by torch's names
    out.load_state_dict({name: getattr(module, name) for names in out._weight_names for name in names})
    out.train(module.training)
    return out
