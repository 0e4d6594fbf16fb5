"""The shared language model: embedding → L recurrent layers → dropout → linear decoder.

Every layer is either a generated ODE cell (any ``odernn`` spec: ``gru-ode:rk4``, ``rnn:euler``,
…) run token by token, or a fused PyTorch baseline (``torch-rnn``, ``torch-lstm``, ``torch-gru``),
so classical and generated architectures are compared inside the same model. Dropout sits on the
non-recurrent connections (Zaremba et al. 2014).

Gradient modes of the ODE layers (``grad=``):

- ``backprop``: through every solver step (memory grows with the steps per token);
- ``checkpoint``: each token's steps are recomputed in the backward pass (exact; memory per token);
- ``adjoint``: the continuous adjoint of Chen et al. (2018) (``odernn.adjoint``), with its own
  backward tableau, steps or tolerances (memory independent of the steps per token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import butcher
import odernn

__all__ = ["LanguageModel", "GRAD_MODES", "TORCH_CELLS", "ModelError"]

GRAD_MODES = ("backprop", "checkpoint", "adjoint")
TORCH_CELLS = {"torch-rnn": nn.RNN, "torch-lstm": nn.LSTM, "torch-gru": nn.GRU}


class ModelError(ValueError):
    """A model option that cannot work (the message says why)."""


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


class TorchLayer(nn.Module):
    """One fused ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` layer, time-major."""

    def __init__(self, kind: str, input_size: int, hidden_size: int):
        super().__init__()
        self.kind = kind
        self.rnn = TORCH_CELLS[kind](input_size, hidden_size)

    def forward(self, x, state):
        return self.rnn(x, state)

    def describe(self) -> str:
        return self.kind


class ODELayer(nn.Module):
    """A generated cell run over the tokens of ``x`` ``(T, B, input)``, with the gradient mode."""

    def __init__(self, spec: str, input_size: int, hidden_size: int, grad: str, adjoint: odernn.AdjointMethod):
        super().__init__()
        try:
            self.cell = odernn.cell(spec, input_size, hidden_size)
        except odernn.CellSpecError as err:
            raise ModelError(str(err)) from None
        self.spec, self.grad, self.adjoint = spec, grad, adjoint
        if grad == "adjoint":
            try:  # fail now, not at the first backward pass
                adjoint.scheme(self.cell)
            except (ValueError, KeyError, butcher.UnknownMethodError) as err:
                raise ModelError(f"{spec}: adjoint: {err}") from None

    def _checkpoint_token(self, x, state):
        """One token's steps without a graph; recomputed with one in the backward pass. The
        re-entrant form runs the forward under ``no_grad``: the non-re-entrant one still records an
        autograd node per operation, which grows with the steps per token (measured: 0.6 → 3.2 MiB
        from 1 to 8 steps in benchmarks/adjoint_memory.py)."""
        field = self.cell.field
        if state is None:
            state = field.initial_state(x.shape[0], x.dtype, x.device)
        blocks = field.to_blocks(state)

        def token(x, *blocks):
            return field.to_blocks(self.cell(x, field.from_blocks(blocks)))
        return field.from_blocks(tuple(checkpoint(token, x, *blocks, use_reentrant=True)))

    def forward(self, x, state):
        outputs = []
        training = torch.is_grad_enabled()
        for x_t in x:
            if training and self.grad == "checkpoint":
                state = self._checkpoint_token(x_t, state)
            elif training and self.grad == "adjoint":
                state = odernn.adjoint(self.cell, x_t, state, self.adjoint)
            else:
                state = self.cell(x_t, state)
            outputs.append(state if isinstance(state, torch.Tensor) else state[0])
        return torch.stack(outputs), state

    def describe(self) -> str:
        return self.cell.describe()


class LanguageModel(nn.Module):
    """``forward(idx, targets=None, state=None) -> (logits, loss, state)`` with ``idx`` ``(B, T)``
    token ids; ``loss`` is the mean cross-entropy in nats (``None`` without targets); ``state`` is
    one entry per layer, to carry across batches (detach it between them)."""

    def __init__(self, vocab_size: int, cell: str | list[str] = "gru-ode:euler", layers: int = 1,
                 hidden: int = 256, embed: int | None = None, dropout: float = 0.0, tie_weights: bool = False,
                 grad: str = "backprop", adjoint: odernn.AdjointMethod | None = None):
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
        self.config = {"vocab_size": vocab_size, "cell": specs, "layers": layers, "hidden": hidden, "embed": embed,
                       "dropout": dropout, "tie_weights": tie_weights, "grad": grad}
        self.embedding = nn.Embedding(vocab_size, embed)
        self.layers = nn.ModuleList()
        for i, spec in enumerate(specs):
            width = embed if i == 0 else hidden
            if spec.lower() in TORCH_CELLS:
                self.layers.append(TorchLayer(spec.lower(), width, hidden))
            else:
                self.layers.append(ODELayer(spec, width, hidden, grad, adjoint or odernn.AdjointMethod()))
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
        for i, layer in enumerate(self.layers):
            x, state[i] = layer(x, state[i])
            x = self.drop(x)
        logits = self.decoder(x).transpose(0, 1)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss, state

    @classmethod
    def from_checkpoint(cls, data: dict) -> "LanguageModel":
        """The model of a loaded checkpoint (``textlm.load_checkpoint``), in eval mode, in the dtype
        of its weights."""
        cfg = data["model_config"]
        model = cls(cfg["vocab_size"], cfg["cell"], cfg["layers"], cfg["hidden"], cfg["embed"], cfg["dropout"],
                    cfg["tie_weights"])
        model = model.to(next(iter(data["model"].values())).dtype)
        model.load_state_dict(data["model"])
        return model.eval()

    @torch.no_grad()
    def ode_layer_inputs(self, idx: torch.Tensor) -> list[tuple[int, "ODELayer", torch.Tensor]]:
        """``(index, layer, inputs)`` for every ODE layer, its inputs ``(T, B, ·)`` along the token
        sequence ``idx`` ``(B, T)``: the embeddings for the first layer, the previous layer's
        outputs for the others (no dropout) — what the stability check of a trained model drives
        each cell with."""
        x, out = self.embedding(idx.T), []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, ODELayer):
                out.append((i, layer, x))
            x, _ = layer(x, None)
        return out

    def ode_cells(self) -> list:
        return [layer.cell for layer in self.layers if isinstance(layer, ODELayer)]

    def describe(self) -> str:
        return " → ".join(layer.describe() for layer in self.layers)
