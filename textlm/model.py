"""The shared language model: embedding → L recurrent layers → dropout → linear decoder.

Every layer is either a generated ODE cell (any ``odernn`` spec: ``gru-ode:rk4``, ``rnn:euler``,
…) or a fused PyTorch baseline (``torch-rnn``, ``torch-lstm``, ``torch-gru``), so classical and
generated architectures are compared inside the same model. Consecutive layers with the same spec
are one module — an ``odernn.ODERNN`` or an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` with ``num_layers`` —
which runs whole sequences. Dropout sits on the non-recurrent connections (Zaremba et al. 2014).
The model is what its :class:`ModelConfig` says, and a checkpoint stores that config.

Gradient modes of the ODE layers (``grad=``, see ``odernn.ODERNN``):

- ``backprop``: through every solver step (memory grows with the steps per token);
- ``checkpoint``: each token's steps are recomputed in the backward pass (exact; memory per token);
- ``adjoint``: the continuous adjoint of Chen et al. (2018) (``odernn.adjoint``), with its own
  backward tableau, steps or tolerances (memory independent of the steps per token).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import InitVar, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import butcher
import odernn

__all__ = ["LanguageModel", "ModelConfig", "ModelOptions", "GRAD_MODES", "TORCH_CELLS", "ModelError"]

GRAD_MODES = odernn.GRAD_MODES
TORCH_CELLS = {"torch-rnn": nn.RNN, "torch-lstm": nn.LSTM, "torch-gru": nn.GRU}


class ModelError(ValueError):
    """A model option that cannot work (the message says why)."""


def cell_spec_message(err: Exception) -> str:
    """A cell spec's error as the language model's commands give it: they also take PyTorch's own cells."""
    text = str(err)
    return text + f"; or PyTorch's own: {', '.join(TORCH_CELLS)}" if text.startswith("unknown cell field") else text


def _digest(entries: dict) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _tableau_file(spec: str) -> str | None:
    """The tableau file a spec names, ``None`` for a catalogue method or a PyTorch baseline."""
    return odernn.tableau_file(spec) if spec.lower() not in TORCH_CELLS else None


def _stored_tableaux(specs: list[str], given: dict, base: Path | None) -> dict:
    """``{file named in a spec: {"tableau": exact entries, "sha256": their digest}}``: the entry from
    ``given`` (a checkpoint's, checked against its digest), else read from the file once (a relative
    path found in ``base`` first, for checkpoints from before the tableaux were stored)."""
    out = {}
    for part in dict.fromkeys(filter(None, map(_tableau_file, specs))):
        entry = given.get(part)
        if entry is None:
            path = Path(part)
            if base is not None and not path.is_absolute() and (base / path).is_file():
                path = base / path
            try:
                entries = butcher.load(path).to_dict()
            except butcher.TableauError as err:
                raise ModelError(f"the tableau file {part}: {err}") from None
            entry = {"tableau": entries, "sha256": _digest(entries)}
        elif not isinstance(entry, dict) or entry.get("sha256") != _digest(entry.get("tableau")):
            raise ModelError(f"the stored tableau of {part} does not match its digest: the checkpoint is corrupt")
        out[part] = entry
    return out


def _parse_tableau(part: str, entry: dict) -> butcher.ButcherTableau:
    """The method of a stored entry (its exact entries parsed within ``butcher.DEADLINE``)."""
    try:
        with butcher.time_limit(butcher.DEADLINE):
            return butcher.ButcherTableau.from_dict(entry["tableau"], source=f"{part} (stored with the model)")
    except butcher.TableauError as err:
        raise ModelError(f"the stored tableau of {part}: {err}") from None
    except butcher.TimeLimitExceeded:
        raise ModelError(f"the stored tableau of {part}: its exact entries did not parse within "
                         f"{butcher.DEADLINE:g} s") from None


@dataclass
class ModelOptions:
    """The options of the model that a run chooses (``TrainConfig`` has them as its own fields):
    ``cell``, one spec for every layer or one per layer; ``embed``, ``None`` for ``hidden``;
    ``grad`` and ``adjoint_*``, how gradients pass the solver (``odernn.ODERNN``'s ``grad`` and
    ``odernn.AdjointMethod``)."""

    cell: str | list[str] = "gru-ode:euler"
    layers: int = 1
    hidden: int = 256
    embed: int | None = None
    dropout: float = 0.0
    tie_weights: bool = False
    grad: str = "backprop"
    adjoint_method: str | None = None
    adjoint_steps: int | None = None
    adjoint_rtol: float | None = None
    adjoint_atol: float | None = None


@dataclass
class ModelConfig(ModelOptions):
    """What the model is, nanoGPT's ``GPTConfig``: ``LanguageModel(config)`` builds it, every
    checkpoint stores ``asdict(config)``, and ``ModelConfig(**stored)`` builds it again. Checked
    here, once: the numbers against their kinds (``textlm.limits``), the rest against each other.

    The :class:`ModelOptions`, stored normalised (``cell`` as the list, ``embed`` resolved), and
    what the data and files give: ``vocab_size``, and ``tableaux``, the methods of the specs that
    name tableau files, stored whole (exact entries and their digest), filled from the files when
    not given, so a checkpoint carries its methods and moving or editing a file changes nothing.
    ``base``: where relative tableau files are looked for first (not stored)."""

    vocab_size: int = field(kw_only=True)
    tableaux: dict = field(default_factory=dict, kw_only=True)
    base: InitVar[str | Path | None] = field(default=None, kw_only=True)

    def __post_init__(self, base):
        from .limits import check_fields
        problems = check_fields(self)  # every number within its kind's limits
        if self.grad not in GRAD_MODES:
            problems.append(f"unknown gradient mode {self.grad!r}; modes: {', '.join(GRAD_MODES)}")
        if self.adjoint_method is not None and not isinstance(self.adjoint_method, str):
            problems.append(f"the adjoint method is named by a string, not {type(self.adjoint_method).__name__}")
        if problems:
            raise ModelError("; ".join(problems))
        self.cell = list(self.cell) if isinstance(self.cell, (list, tuple)) else [self.cell] * self.layers
        if len(self.cell) != self.layers:
            raise ModelError(f"{self.layers} layers need {self.layers} cell specs, got {len(self.cell)}")
        if not all(isinstance(spec, str) for spec in self.cell):
            raise ModelError(f"cell specs are text (such as 'gru-ode:rk4'), got {self.cell!r}")
        self.embed = self.embed or self.hidden
        if self.tie_weights and self.embed != self.hidden:
            raise ModelError(f"weight tying needs --embed equal to --hidden ({self.embed} ≠ {self.hidden})")
        self.tableaux = _stored_tableaux(self.cell, self.tableaux or {}, Path(base) if base is not None else None)

    @property
    def adjoint(self) -> odernn.AdjointMethod:
        return odernn.AdjointMethod(self.adjoint_method, self.adjoint_steps, self.adjoint_rtol, self.adjoint_atol)

    @classmethod
    def from_checkpoint(cls, data: dict) -> "ModelConfig":
        """The config a loaded checkpoint (``textlm.load_checkpoint``) stored. A field that older
        checkpoints did not store (the adjoint settings) is the run's own (its ``config``), and
        tableau files named by checkpoints from before the tableaux were stored are looked for
        beside the checkpoint first."""
        stored = data["model_config"]
        run = data.get("config") or {}
        unknown = set(stored) - {f.name for f in fields(cls)}
        if unknown:
            raise ModelError("the checkpoint's model has options this version does not know: "
                             f"{', '.join(sorted(unknown))}")
        earlier = {f.name: run[f.name] for f in fields(cls) if f.name not in stored and f.name in run}
        source = data.get("loaded_from")
        try:
            return cls(**earlier, **stored, base=Path(source).parent if source is not None else None)
        except TypeError as err:  # a field missing
            raise ModelError(f"the checkpoint's model config is incomplete: {err}") from None


def _detach(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(_detach(s) for s in state)


def _first_block(output) -> torch.Tensor:
    """A layer's output from what its cell returns (the first block of a two-block state)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def _recurrent(name: str) -> bool:
    """Whether a field's parameter ``name`` is a free recurrent weight (see
    :meth:`LanguageModel.recurrent_weights_per_layer`)."""
    parts = name.split(".")
    return "parametrizations" not in parts and any(part.startswith("weight_hh") or part == "order_weights"
                                                   for part in parts)


class RecurrentStack(nn.Module):
    """``layers`` equal recurrent layers over ``(T, B, ·)``: ``forward(x, state) -> (output, state)``
    with ``state`` in ``nn.GRU``'s layout ``(layers, B, H)`` (a tuple for two-block cells)."""

    def __init__(self, spec: str, input_size: int, hidden_size: int, layers: int, dropout: float, grad: str,
                 adjoint: odernn.AdjointMethod, speed: dict, tableau: butcher.ButcherTableau | None = None):
        super().__init__()
        self.spec = spec
        dropout = dropout if layers > 1 else 0.0  # between the stack's layers: one layer has none to drop
        if spec.lower() in TORCH_CELLS:
            self.rnn = TORCH_CELLS[spec.lower()](input_size, hidden_size, layers, dropout=dropout)
            return
        # a spec that names a tableau file runs the method the model stored, never the file again
        cells = spec if tableau is None else functools.partial(odernn.cell, spec, tableau=tableau)
        try:
            self.rnn = odernn.ODERNN(cells, input_size, hidden_size, layers, dropout=dropout, grad=grad, adjoint=adjoint,
                                     **speed)
        except odernn.CellSpecError as err:
            raise ModelError(cell_spec_message(err)) from None
        except (ValueError, KeyError, butcher.UnknownMethodError) as err:  # an unusable adjoint solver
            raise ModelError(f"{spec}: {'adjoint: ' if grad == 'adjoint' else ''}{err}") from None

    def forward(self, x, state):
        if torch.is_autocast_enabled(x.device.type) and not isinstance(self.rnn, odernn.ODERNN):
            # PyTorch's recurrent layers run in float32 under autocast: its autocast wrapper for
            # cuDNN RNNs casts to float16 whatever the autocast dtype (bf16 training must not get
            # float16 without loss scaling), and oneDNN builds no bfloat16 LSTM without AVX512-BF16
            with torch.autocast(x.device.type, enabled=False):
                return self.rnn(x.float(), state)
        return self.rnn(x, state)

    @property
    def cells(self) -> list:
        """The ODE cell of each layer (none for a PyTorch baseline)."""
        return self.rnn.cells if isinstance(self.rnn, odernn.ODERNN) else []

    @property
    def layers(self) -> int:
        return self.rnn.num_layers

    def describe(self) -> str:
        if isinstance(self.rnn, odernn.ODERNN):
            return " → ".join(cell.describe() for cell in self.rnn.cells)
        return " → ".join([self.spec.lower()] * self.layers)


class LanguageModel(nn.Module):
    """``forward(idx, targets=None, state=None) -> (logits, loss, state)`` with ``idx`` ``(B, T)``
    token ids; ``loss`` is the mean cross-entropy in nats (``None`` without targets); ``state`` is
    one entry per stack of equal layers, to carry across batches (:meth:`detach_state` between them).

    ``LanguageModel(ModelConfig(...))``; ``LanguageModel(vocab_size, cell, layers=…, …)`` is short
    for it (:class:`ModelConfig`'s fields, and ``adjoint``: an ``odernn.AdjointMethod`` for the
    ``adjoint_*`` fields). ``compile_elementwise`` and ``cuda_graphs`` are how the ODE layers run on
    a GPU (passed to every ``odernn.ODERNN``), not what the model is: the config does not hold them."""

    def __init__(self, config: ModelConfig | int | None = None, /, *args, adjoint: odernn.AdjointMethod | None = None,
                 compile_elementwise: bool = False, cuda_graphs: bool = False, **options):
        super().__init__()
        if isinstance(config, ModelConfig):
            if args or options or adjoint is not None:
                raise TypeError("LanguageModel(config) takes a ModelConfig alone (and compile_elementwise, "
                                "cuda_graphs)")
        else:  # the short form: config is the vocabulary size, or vocab_size is among the options
            if adjoint is not None:
                options.update(adjoint_method=adjoint.tableau, adjoint_steps=adjoint.steps, adjoint_rtol=adjoint.rtol,
                               adjoint_atol=adjoint.atol)
            config = ModelConfig(*args, **({} if config is None else {"vocab_size": config}), **options)
        self.config = config
        specs, methods = config.cell, {part: _parse_tableau(part, entry) for part, entry in config.tableaux.items()}
        speed = {"compile_elementwise": compile_elementwise, "cuda_graphs": cuda_graphs}
        self.embedding = nn.Embedding(config.vocab_size, config.embed)
        self.layers = nn.ModuleList()  # one RecurrentStack per run of equal specs
        first = 0
        for last in range(1, len(specs) + 1):
            if last == len(specs) or specs[last].lower() != specs[first].lower():
                self.layers.append(RecurrentStack(specs[first], config.embed if first == 0 else config.hidden,
                                                  config.hidden, last - first, config.dropout, config.grad,
                                                  config.adjoint, speed, methods.get(_tableau_file(specs[first]))))
                first = last
        self._register_load_state_dict_pre_hook(self._upgrade_state_dict)
        self.drop = nn.Dropout(config.dropout)
        self.decoder = nn.Linear(config.hidden, config.vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, state=None):
        x = self.drop(self.embedding(idx.T))  # (T, B, E): time-major inside
        state = list(state) if state is not None else [None] * len(self.layers)
        for i, stack in enumerate(self.layers):
            x, state[i] = stack(x, state[i])  # (T, B, H); dropout between a stack's layers is its own
            x = self.drop(x)
        logits = self.decoder(x).transpose(0, 1)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss, state

    def _upgrade_state_dict(self, state_dict, prefix, *args):
        """Checkpoints written before a stack of equal layers was one module: layer ``i`` was
        ``layers.i.cell.field.NAME`` (ODE) or ``layers.i.rnn.NAME_l0`` (PyTorch); it is now layer
        ``k`` of stack ``g``, ``layers.g.rnn.NAME_lk``."""
        where = [(g, k) for g, stack in enumerate(self.layers) for k in range(stack.layers)]
        pattern = re.compile(re.escape(prefix) + r"layers\.(\d+)\.(?:cell\.field\.(\w+)|rnn\.(\w+)_l0)$")
        matches = [(key, m) for key in state_dict if (m := pattern.match(key))]
        # old keys name layers, new ones stacks: old if an ODE key has the old form, or an index
        # reaches past the last stack (with one layer per stack the PyTorch keys are the same)
        legacy = any(m.group(2) for _, m in matches) or any(int(m.group(1)) >= len(self.layers) for _, m in matches)
        if not legacy:
            return
        for key, m in matches:
            if int(m.group(1)) < len(where):
                g, k = where[int(m.group(1))]
                state_dict[f"{prefix}layers.{g}.rnn.{m.group(2) or m.group(3)}_l{k}"] = state_dict.pop(key)

    def per_layer_state(self, state) -> list:
        """The carried state, one entry per layer (``(B, H)``, or a tuple of them), from one entry
        per stack (``(layers, B, H)``); ``None`` entries stay ``None``."""
        out = []
        for stack, entry in zip(self.layers, state):
            for k in range(stack.layers):
                if entry is None:
                    out.append(None)
                else:
                    out.append(entry[k] if isinstance(entry, torch.Tensor) else tuple(block[k] for block in entry))
        return out

    def per_stack_state(self, state: list) -> list:
        """One entry per stack from one entry per layer (the inverse of :meth:`per_layer_state`, and
        the carried state of checkpoints written before stacks); a state that already has one entry
        per stack is returned as it is."""
        if len(state) != sum(stack.layers for stack in self.layers):
            return list(state)

        def lift(entry):  # a layer's state with a leading layer dimension (old ODE layers had none)
            if entry is None or not isinstance(entry, torch.Tensor):
                return None if entry is None else tuple(lift(block) for block in entry)
            return entry if entry.dim() == 3 else entry[None]
        out, index = [], 0
        for stack in self.layers:
            group = [lift(entry) for entry in state[index:index + stack.layers]]
            index += stack.layers
            if any(entry is None for entry in group):
                out.append(None)
            elif isinstance(group[0], torch.Tensor):
                out.append(torch.cat(group))
            else:
                out.append(tuple(torch.cat(blocks) for blocks in zip(*group)))
        return out

    @classmethod
    def from_checkpoint(cls, data: dict, device: str | torch.device = "cpu") -> "LanguageModel":
        """The model of a loaded checkpoint (``textlm.load_checkpoint``), built from the config it
        stored (:meth:`ModelConfig.from_checkpoint`), in eval mode, in the dtype of its weights, on
        ``device`` (whichever device it was trained on)."""
        model = cls(ModelConfig.from_checkpoint(data))
        model = model.to(device, next(iter(data["model"].values())).dtype)
        model.load_state_dict(data["model"])
        return model.eval()

    @staticmethod
    def detach_state(state):
        """The carried state cut from the graph that made it (between truncated-BPTT batches)."""
        return _detach(state)

    def restore_state(self, state):
        """A saved carried state (one entry per layer or per stack, on any device) as this model
        carries it: one entry per stack, on the model's device."""
        return None if state is None else self.per_stack_state(_to(state, self.embedding.weight.device))

    @torch.no_grad()
    def ode_layer_inputs(self, idx: torch.Tensor) -> list[tuple[int, object, torch.Tensor]]:
        """``(layer index, cell, inputs)`` for every ODE layer, its inputs ``(T, B, ·)`` along the
        token sequence ``idx`` ``(B, T)``: the embeddings for the first layer, the previous layer's
        outputs for the others (no dropout) — what the stability check of a trained model drives
        each cell with."""
        x, out, index = self.embedding(idx.T), [], 0
        for stack in self.layers:
            if stack.cells:
                for k, inputs in enumerate(stack.rnn.layer_inputs(x)):
                    out.append((index + k, stack.cells[k], inputs))
            x, _ = stack(x, None)
            index += stack.layers
        return out

    def layer_cells(self) -> list:
        """The ODE cell of each layer, ``None`` for a PyTorch layer."""
        return [cell for stack in self.layers for cell in (stack.cells or [None] * stack.layers)]

    def ode_cells(self) -> list:
        return [cell for cell in self.layer_cells() if cell is not None]

    def recurrent_weights(self) -> dict[str, nn.Parameter]:
        """The free weights through which the layers' states enter their next steps, by parameter
        name (:meth:`recurrent_weights_per_layer`, merged)."""
        return {name: weight for _, weights in self.recurrent_weights_per_layer() for name, weight in weights.items()}

    def recurrent_weights_per_layer(self) -> list[tuple[str, dict[str, nn.Parameter]]]:
        """``(spec, weights)`` of each layer: the free weights through which its state enters its
        next step, by parameter name. They are those PyTorch names ``weight_hh`` (``nn.RNN``,
        ``nn.GRU``, ``nn.LSTM``, and the ODE fields that keep their layout: LEM's ``weight_hh_y`` and
        ``weight_hh_z``, UnICORNN's diagonal ``weight_hh``) and a higher-order field's
        ``order_weights`` (coRNN's 𝒲, on its second block). A constrained weight (URNN's orthogonal
        one, ``constraint=spectral``) is not free: its scale is its constraint's. Fields with other
        structure (antisymmetric, Lipschitz) have none."""
        names = {id(p): name for name, p in self.named_parameters()}
        layers = []
        for stack in self.layers:
            if stack.cells:
                for cell in stack.cells:
                    layers.append((stack.spec, [p for name, p in cell.field.named_parameters() if _recurrent(name)]))
            else:  # a PyTorch layer
                layers += [(stack.spec, [getattr(stack.rnn, f"weight_hh_l{k}")]) for k in range(stack.layers)]
        return [(spec, {names[id(p)]: p for p in weights}) for spec, weights in layers]

    def scale_recurrent_weights(self, gain: float) -> None:
        """Multiply :meth:`recurrent_weights` by ``gain`` (a large initial recurrent scale, the
        classical way to make a recurrent network's training unstable). A layer without such
        weights is refused rather than left as it was: the run would not be what it says."""
        layers = self.recurrent_weights_per_layer()
        for spec, weights in layers:
            if not weights:
                raise ModelError(f"{spec}: no free recurrent weight to scale (--init-gain scales the weights "
                                 "PyTorch names weight_hh and a higher-order field's order_weights; a constrained "
                                 "one, such as URNN's orthogonal weight_hh, keeps its scale)")
        with torch.no_grad():
            for _, weights in layers:
                for weight in weights.values():
                    weight.mul_(gain)

    def implicit(self) -> bool:
        """Whether an ODE layer's tableau is implicit (its stage equations give first derivatives only)."""
        return any(isinstance(cell.scheme, odernn.ImplicitScheme) for cell in self.ode_cells())

    def nfe_per_token(self) -> int | None:
        """Field evaluations per token summed over the ODE layers (the last call's, for adaptive and
        implicit cells); ``None`` without ODE layers."""
        cells = self.ode_cells()
        return sum(cell.nfe for cell in cells) if cells else None

    def _layer_points(self, tokens: torch.Tensor, state, advance):
        """``(layer index, cell, input, state)`` of every layer at one token (``cell`` ``None`` for
        a PyTorch layer), with ``state`` the carried state (``None``: zero): the first layer's input
        is the embedding of ``tokens`` ``(B,)``, a deeper layer's the output at that token of the one
        below, ``advance(cell, input, state)``."""
        cells = self.layer_cells()
        states = self.per_layer_state(state) if state is not None else [None] * len(cells)
        inputs = self.embedding(tokens).detach()
        for i, (cell, layer_state) in enumerate(zip(cells, states)):
            yield i, cell, inputs, layer_state
            inputs = _first_block(advance(cell, inputs, layer_state)).detach()

    def probe_points(self, tokens: torch.Tensor, state) -> list:
        """``(layer index, cell, input, state)`` of every ODE layer at the last token of a batch,
        ``tokens`` ``(B,)``, whose outputs are the carried ``state``: what ``stability.Probe`` checks."""
        return [point for point in self._layer_points(tokens, state, lambda cell, x, s: s) if point[1] is not None]

    def jacobian_penalty(self, tokens: torch.Tensor, state) -> torch.Tensor:
        """``stability.jacobian_penalty`` of every ODE layer at the carried ``state`` (a state on the
        trajectory) with its input at the next token, ``tokens`` ``(B,)``, summed over the layers, in
        full precision (its double backward). Every layer must be an ODE layer."""
        import stability

        def advance(cell, inputs, layer_state):
            with torch.no_grad():
                return cell(inputs.to(next(cell.parameters()).dtype), layer_state)
        total = 0.0
        with torch.autocast(tokens.device.type, enabled=False):
            for _, cell, inputs, layer_state in self._layer_points(tokens, state, advance):
                inputs = inputs.to(next(cell.parameters()).dtype)
                total = total + stability.jacobian_penalty(cell, inputs, _detach(layer_state))
        return total

    def describe(self) -> str:
        return " → ".join(stack.describe() for stack in self.layers)


def _to(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to(v, device) for v in tree)
    return tree
