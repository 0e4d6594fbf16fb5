"""``ODERNN``: whole-sequence recurrent layers from a cell spec, with ``torch.nn.GRU``'s conventions."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ._adjoint import AdjointMethod
from ._cell import ODECell, cell_from_torch
from ._engine import run_sequence
from ._graphs import SequenceGraphs
from ._spec import cell as make_cell

__all__ = ["ODERNN", "GRAD_MODES", "from_torch"]

GRAD_MODES = ("backprop", "checkpoint", "adjoint")

# the torch.nn sequence modules, the spec each equals (forward Euler, Δ = 1), and their cells
_TORCH = {nn.RNN: "rnn:euler", nn.GRU: "gru-ode:euler", nn.LSTM: "lstm:euler"}
_SEQUENCE_OF_CELL = {nn.RNNCell: nn.RNN, nn.GRUCell: nn.GRU, nn.LSTMCell: nn.LSTM}


def _flat_name(path: str, suffix: str) -> str:
    """A field parameter's path → the layer's name: ``weight_hh`` → ``weight_hh_l0``; a constrained
    weight's ``parametrizations.weight_hh.original`` → ``weight_hh_original_l0``."""
    parts = [p for p in path.split(".") if p != "parametrizations"]
    return "_".join(parts) + suffix


class ODERNN(nn.Module):
    """``num_layers`` layers of a generated cell over whole sequences: a drop-in ``nn.GRU``,
    ``nn.LSTM`` or ``nn.RNN`` for any field and tableau.

    ``forward(input, hx=None, dt=None, lengths=None) -> (output, h_n)`` with ``nn.GRU``'s
    conventions: ``input`` ``(T, B, E)`` (``(B, T, E)`` with ``batch_first``), unbatched
    ``(T, E)``, or a ``PackedSequence``; ``hx`` ``(num_layers · directions, B, H)``, a tuple of
    such tensors for two-block fields in the cell's state order (``(h, c)`` as ``nn.LSTM``);
    ``output`` ``(T, B, directions · H)``. Beyond ``nn.GRU``: ``dt``, the interval each token
    integrates over (a float, or a ``(T, B)`` tensor of gaps for irregular sampling; default the
    spec's ``dt``); ``lengths``, the valid length of each sequence of a padded batch (the state of
    a finished sequence is carried unchanged and its outputs are zero, as with a packed input).

    Explicit tableaux on the built-in fields run in the sequence engine (``odernn._engine``): one
    input projection for all tokens, the backward pass generated from the tableau, the weight
    gradients as products over the whole sequence. ``grad`` chooses how gradients are obtained:
    ``backprop`` (stored stages), ``checkpoint`` (each token's stages recomputed in the backward
    pass: memory flat in the steps per token) or ``adjoint`` (the continuous adjoint, with
    ``adjoint``'s backward solver). Other fields (``ModuleField``), implicit and adaptive tableaux
    run token by token under autograd: correct, not fast. Where the layers equal ``nn.RNN``,
    ``nn.GRU`` or ``nn.LSTM`` (forward Euler, Δ = 1, one step; no ``dt`` or ``lengths`` given;
    ``backprop``), ``fused=True`` runs them on PyTorch's own fused kernel instead (oneDNN on a CPU,
    cuDNN on a GPU); ``fused=False`` keeps them in the engine. Both are tested equal.

    Speed on a GPU: ``compile_elementwise=True`` fuses each evaluation's elementwise math (activations,
    derivative, their vector–Jacobian products) into single kernels with ``torch.compile`` (the
    state products stay on cuBLAS); ``cuda_graphs=True`` captures the forward and backward passes of
    CUDA inputs in CUDA graphs and replays them (``odernn._graphs``: one graph per shape and mode,
    captured the second time a shape occurs). Both are tested equal to the plain engine.

    Parameters are the field's, named as in ``nn.GRU``: ``weight_hh_l0``, ``bias_ih_l1_reverse``,
    so the state_dict of an ``nn.GRU``, ``nn.LSTM`` or ``nn.RNN`` loads into the matching field.

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

    def __init__(self, spec, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, *,
                 grad: str = "backprop", adjoint: AdjointMethod | None = None, fused: bool = True,
                 compile_elementwise: bool = False, cuda_graphs: bool = False):
        super().__init__()
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if grad not in GRAD_MODES:
            raise ValueError(f"unknown gradient mode {grad!r}; modes: {', '.join(GRAD_MODES)}")
        self.spec, self.input_size, self.hidden_size = spec, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bool(bias), bool(batch_first)
        self.dropout, self.bidirectional = float(dropout), bool(bidirectional)
        self.grad, self.adjoint = grad, adjoint or AdjointMethod()
        directions = 2 if bidirectional else 1
        # One cell per layer and direction. The cells are not submodules: their parameters are
        # registered here under torch's names, and bound back into the cells before each use.
        cells, names = [], []
        for layer in range(num_layers):
            for direction in range(directions):
                width = input_size if layer == 0 else hidden_size * directions
                made = spec(width, hidden_size) if callable(spec) else make_cell(
                    spec, width, hidden_size, **({} if bias else {"bias": False}))
                if not isinstance(made, ODECell):
                    raise TypeError(f"ODERNN: the cell factory returned {type(made).__name__}, not an odernn.ODECell")
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                pairs = []
                for path, p in made.field.named_parameters():
                    self.register_parameter(_flat_name(path, suffix), p)
                    pairs.append((path, _flat_name(path, suffix)))
                for path, buf in made.field.named_buffers():
                    self.register_buffer(_flat_name(path, suffix), buf)
                    pairs.append((path, _flat_name(path, suffix)))
                cells.append(made)
                names.append(pairs)
        self._cells, self._names = cells, names
        self.fused, self.compile_elementwise, self.cuda_graphs = bool(fused), bool(compile_elementwise), bool(cuda_graphs)
        object.__setattr__(self, "graphs", SequenceGraphs())  # not a submodule: it refers back to this one
        # a weightless nn.RNN/GRU/LSTM (meta device, not a submodule) that runs this module's own
        # parameters through PyTorch's fused kernel, where the two are equal
        object.__setattr__(self, "_torch_twin", None if self.torch_equivalent is None else self._torch_module("meta"))
        if grad == "adjoint":
            self.adjoint.scheme(cells[0])  # an unusable backward solver fails now, not at the first backward

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def cells(self) -> list[ODECell]:
        """The cell of each layer and direction (index ``layer · directions + direction``), sharing
        this module's parameters: for stability checks, ``to_torch``, single steps."""
        for made, pairs in zip(self._cells, self._names):
            for path, name in pairs:  # after .to(), load_state_dict(assign=True), functional_call …
                owner, _, leaf = path.rpartition(".")
                module = made.field.get_submodule(owner) if owner else made.field
                store = module._parameters if name in self._parameters else module._buffers
                store[leaf] = self._parameters[name] if name in self._parameters else self._buffers[name]
        return self._cells

    # -- forward ------------------------------------------------------------------------------------
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
        return self.grad != "adjoint" and all(cell.runs_in_engine for cell in self._cells)

    def eager_forward(self, input, hx=None, dt=None, lengths=None):
        """:meth:`forward` without CUDA graphs."""
        # Under autocast the engine runs, not PyTorch's kernel: autocast's wrapper for cuDNN RNNs
        # casts to float16 whatever the autocast dtype, and oneDNN builds no bfloat16 LSTM without
        # AVX512-BF16; the engine keeps its own rule (products in the autocast dtype, state float32)
        autocast = isinstance(input, torch.Tensor) and torch.is_autocast_enabled(input.device.type)
        if (self.fused and self._torch_twin is not None and dt is None and lengths is None and self.grad == "backprop"
                and not autocast):
            # the same layers as nn.GRU/LSTM/RNN (Euler, Δ = 1): PyTorch's fused kernel (oneDNN, cuDNN)
            self._torch_twin.train(self.training)
            for cell in self._cells:
                cell.nfe = cell.nfe_per_token  # forward Euler: one evaluation per token, fused or not
            return torch.func.functional_call(self._torch_twin, dict(self.named_parameters()), (input, hx))
        cells = self.cells
        field = cells[0].field
        packed = input if isinstance(input, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("a PackedSequence carries its lengths: do not also pass lengths=")
            x, lengths = pad_packed_sequence(packed)  # (T, B, E) in the original batch order
            unbatched = False
        else:
            x = input
            if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"ODERNN: expected input of shape (T, B, E), (B, T, E) with batch_first, or "
                                 f"(T, E), got {shape}")
            unbatched = x.dim() == 2
            if unbatched:
                x = x.unsqueeze(1)
            elif self.batch_first:
                x = x.transpose(0, 1)
        T, B, E = x.shape
        if E != self.input_size:
            raise ValueError(f"ODERNN: input has {E} features, the layer expects input_size={self.input_size}")
        weights = next(iter(self.parameters()), None)
        if (weights is not None and x.dtype != weights.dtype and x.is_floating_point()
                and not torch.is_autocast_enabled(x.device.type)):
            raise TypeError(f"ODERNN: input has dtype {x.dtype}, the layer's parameters {weights.dtype}; "
                            "convert one of them (.to(dtype)) or run under torch.autocast")
        if T == 0:
            raise ValueError("ODERNN: the input sequence is empty")
        dt = self._gaps(dt, T, B, unbatched, x)
        mask = None
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=x.device).reshape(-1)
            if lengths.shape[0] != B or int(lengths.min()) < 1 or int(lengths.max()) > T:
                raise ValueError(f"ODERNN: lengths must be {B} values in 1..{T}")
            mask = torch.arange(T, device=x.device)[:, None] < lengths[None, :]  # (T, B)
        initial = self._initial_state(hx, B, x, unbatched, field)  # per block: (L·D, B, H)
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
        cells, x = self.cells, input
        initial = self._initial_state(None, x.shape[1], x, False, cells[0].field)
        out = []
        for layer in range(self.num_layers):
            out.append(x)
            x, _ = self._layer(layer, x, initial, None, None)
        return out

    def _gaps(self, dt, T, B, unbatched, like):
        """``dt`` as ``None`` (each cell's own Δ), a float, or a time-major ``(T, B)`` tensor."""
        if dt is None:
            return None
        if isinstance(dt, (int, float)):
            if not float(dt) > 0:
                raise ValueError(f"ODERNN: dt must be positive, got {dt!r}")
            return float(dt)
        dt = torch.as_tensor(dt, device=like.device)
        expected = (T,) if unbatched else ((B, T) if self.batch_first else (T, B))
        if tuple(dt.shape) != expected:
            raise ValueError(f"ODERNN: dt must be a float or a tensor of shape {expected} (one gap per token"
                             f"{'' if unbatched else ' and sequence'}), got {tuple(dt.shape)}")
        if unbatched:
            return dt[:, None]
        return dt.T if self.batch_first else dt

    def _initial_state(self, hx, B, x, unbatched, field):
        """``hx`` as a tuple over the field's blocks of ``(L·D, B, H)`` tensors (zeros if ``None``)."""
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if hx is None:  # in the weights' dtype: under autocast the input may be bfloat16, the state is not
            zeros = x.new_zeros(shape, dtype=next(iter(self.parameters()), x).dtype)
            return tuple(zeros for _ in range(field.blocks))
        given = (hx,) if isinstance(hx, torch.Tensor) else tuple(hx)
        if len(given) != field.blocks:
            what = "a tensor" if field.blocks == 1 else f"a tuple of {field.blocks} tensors"
            raise ValueError(f"ODERNN: hx for the {type(field).__name__} is {what}, got {len(given)}")
        state = field.to_blocks(given[0] if field.blocks == 1 else given)
        out = []
        for block in state:
            if unbatched:
                block = block.unsqueeze(1)
            if tuple(block.shape) != shape:
                raise ValueError(f"ODERNN: hx must have shape {shape if not unbatched else (shape[0], shape[2])}, "
                                 f"got {tuple(block.shape) if not unbatched else tuple(block.squeeze(1).shape)}")
            out.append(block)
        return tuple(out)

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
        kinds = {cell.torch_equivalent for cell in self._cells}  # a factory may make unequal layers
        return _SEQUENCE_OF_CELL.get(kinds.pop()) if len(kinds) == 1 else None

    def to_torch(self) -> nn.Module:
        """The equal ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` with the same weights, where one exists
        (forward Euler, Δ = 1, one step, on the tanh-RNN, GRU-ODE or partitioned LSTM field)."""
        module = self._torch_module("cpu")
        reference = next(iter(self.parameters()))
        module = module.to(dtype=reference.dtype, device=reference.device)
        module.load_state_dict(self.state_dict())
        return module

    def _torch_module(self, device) -> nn.Module:
        kind = self.torch_equivalent
        if kind is None:
            for cell in self._cells:
                cell.to_torch()  # raises, naming what is missing
            raise ValueError("ODERNN: its layers are not all the same torch.nn cell")
        bias = self._cells[0].field.bias_ih is not None
        return kind(self.input_size, self.hidden_size, self.num_layers, bias=bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional, device=device)

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
                + (", bidirectional=True" if self.bidirectional else "") + ("" if self.bias else ", bias=False"))


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
    if getattr(module, "proj_size", 0):
        raise ValueError("an nn.LSTM with proj_size has no equal ODERNN (the projection is not a field)")
    out = ODERNN(spec, module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                 batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional)
    reference = next(iter(module.parameters()))
    out = out.to(dtype=reference.dtype, device=reference.device)
    out.load_state_dict(module.state_dict())
    return out

