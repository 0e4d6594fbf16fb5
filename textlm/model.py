"""The shared language model: embedding → L recurrent layers → dropout → linear decoder.

Every layer is either a generated ODE cell (any ``odernn`` spec: ``gru-ode:rk4``, ``rnn:euler``,
…) or a fused PyTorch baseline (``torch-rnn``, ``torch-lstm``, ``torch-gru``), so classical and
generated architectures are compared inside the same model. Consecutive layers with the same spec
are one module — an ``odernn.ODERNN`` or an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` with ``num_layers`` —
which runs whole sequences. Dropout sits on the non-recurrent connections (Zaremba et al. 2014).

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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import butcher
import odernn

__all__ = ["LanguageModel", "GRAD_MODES", "TORCH_CELLS", "ModelError"]

GRAD_MODES = odernn.GRAD_MODES
TORCH_CELLS = {"torch-rnn": nn.RNN, "torch-lstm": nn.LSTM, "torch-gru": nn.GRU}


class ModelError(ValueError):
    """A model option that cannot work (the message says why)."""


def _digest(entries: dict) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _tableaux(specs: list[str], given: dict, base: Path | None) -> dict:
    """``{file named in a spec: (stored entry, tableau)}``: the entry ``{"tableau": exact entries,
    "sha256": their digest}`` from ``given`` (a checkpoint's, checked against its digest), else read
    from the file once (a relative path found in ``base`` first, for checkpoints from before the
    tableaux were stored)."""
    out = {}
    for spec in specs:
        part = odernn.tableau_file(spec) if spec.lower() not in TORCH_CELLS else None
        if part is None or part in out:
            continue
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
        try:
            with butcher.time_limit(butcher.DEADLINE):
                tableau = butcher.ButcherTableau.from_dict(entry["tableau"], source=f"{part} (stored with the model)")
        except butcher.TableauError as err:
            raise ModelError(f"the stored tableau of {part}: {err}") from None
        except butcher.TimeLimitExceeded:
            raise ModelError(f"the stored tableau of {part}: its exact entries did not parse within "
                             f"{butcher.DEADLINE:g} s") from None
        out[part] = (entry, tableau)
    return out


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


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
            raise ModelError(str(err)) from None
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
    one entry per layer, to carry across batches (detach it between them).

    ``compile_elementwise`` and ``cuda_graphs`` are passed to every ``odernn.ODERNN`` (how the ODE
    layers run on a GPU; the model and its results are the same)."""

    def __init__(self, vocab_size: int, cell: str | list[str] = "gru-ode:euler", layers: int = 1,
                 hidden: int = 256, embed: int | None = None, dropout: float = 0.0, tie_weights: bool = False,
                 grad: str = "backprop", adjoint: odernn.AdjointMethod | None = None,
                 compile_elementwise: bool = False, cuda_graphs: bool = False, tableaux: dict | None = None,
                 base: str | Path | None = None):
        super().__init__()
        if grad not in GRAD_MODES:
            raise ModelError(f"unknown gradient mode {grad!r}; modes: {', '.join(GRAD_MODES)}")
        specs = [cell] * layers if isinstance(cell, str) else list(cell)
        if layers < 1 or len(specs) != layers:
            raise ModelError(f"{layers} layers need {layers} cell specs, got {len(specs)}")
        if vocab_size < 1 or hidden < 1 or (embed is not None and embed < 1):
            raise ModelError("vocabulary, hidden and embedding sizes must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be in [0, 1), got {dropout}")
        embed = embed or hidden
        if tie_weights and embed != hidden:
            raise ModelError(f"weight tying needs --embed equal to --hidden ({embed} ≠ {hidden})")
        # the methods of the specs that name tableau files, stored whole (exact entries and their
        # digest): a checkpoint carries its methods, and moving or editing a file changes nothing
        stored = _tableaux(specs, tableaux or {}, Path(base) if base is not None else None)
        self.config = {"vocab_size": vocab_size, "cell": specs, "layers": layers, "hidden": hidden, "embed": embed,
                       "dropout": dropout, "tie_weights": tie_weights, "grad": grad,
                       "tableaux": {part: entry for part, (entry, _) in stored.items()}}
        self.embedding = nn.Embedding(vocab_size, embed)
        self.layers = nn.ModuleList()  # one RecurrentStack per run of equal specs
        first = 0
        for last in range(1, len(specs) + 1):
            if last == len(specs) or specs[last].lower() != specs[first].lower():
                width = embed if first == 0 else hidden
                part = odernn.tableau_file(specs[first]) if specs[first].lower() not in TORCH_CELLS else None
                self.layers.append(RecurrentStack(specs[first], width, hidden, last - first, dropout, grad,
                                                  adjoint or odernn.AdjointMethod(),
                                                  {"compile_elementwise": compile_elementwise,
                                                   "cuda_graphs": cuda_graphs},
                                                  stored[part][1] if part is not None else None))
                first = last
        self._register_load_state_dict_pre_hook(self._upgrade_state_dict)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
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
        """The model of a loaded checkpoint (``textlm.load_checkpoint``), in eval mode, in the dtype
        of its weights, on ``device`` (whichever device it was trained on). Its tableaux are the
        ones it stored; a checkpoint from before they were stored names files, found relative to
        the checkpoint's folder first."""
        cfg = data["model_config"]
        source = data.get("loaded_from")
        model = cls(cfg["vocab_size"], cfg["cell"], cfg["layers"], cfg["hidden"], cfg["embed"], cfg["dropout"],
                    cfg["tie_weights"], tableaux=cfg.get("tableaux"),
                    base=Path(source).parent if source is not None else None)
        model = model.to(device, next(iter(data["model"].values())).dtype)
        model.load_state_dict(data["model"])
        return model.eval()

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

    def describe(self) -> str:
        return " → ".join(stack.describe() for stack in self.layers)
