"""CUDA graphs for ``ODERNN``: the sequence's forward and backward passes, captured once and replayed.

On a GPU a generated cell is bound by launches, not by arithmetic: every token runs a few small
kernels for each stage, forward and backward, each launched from Python. A CUDA graph records
those launches once and replays them as one, with no Python and no per-kernel launch cost; the
state products stay on cuBLAS inside the graph. ``torch.cuda.make_graphed_callables`` captures the
forward pass and the backward pass of the layer as a pair, so a graphed layer is one node of the
surrounding model's autograd graph, like any other module.

A graph fixes what it was captured with — every shape, dtype and ``requires_grad`` flag, ``dt``,
training or evaluation mode, autocast, and the parameters' storage — so the layer keeps one graph
per such *signature*. A signature is captured the second time it occurs; the first time it runs
eagerly. That is the path of the last, shorter batch of an epoch or an evaluation: it runs
eagerly once, and is captured only if it comes back. At most ``capacity`` graphs are kept, the
least recently used dropped first (each holds its own memory pool): six cover a language model's
training (with and without a carried state) and evaluation (the same, and its last chunk).

Capture and replay run with the input's GPU as the current device (``make_graphed_callables``
captures on the current device's streams). Inside another capture the layer runs eagerly, so that
a model captured whole by its user is captured once.
"""

from __future__ import annotations

import contextlib
from collections import Counter, OrderedDict

import torch
from torch import nn

__all__ = ["SequenceGraphs"]


class _Captured(nn.Module):
    """The layer's eager forward with one signature's non-tensor arguments fixed, over positional
    tensors only (what ``make_graphed_callables`` takes). The layer is a submodule, so its
    parameters are the graph's static inputs and receive the replayed gradients."""

    def __init__(self, rnn: nn.Module, dt, tuple_state: bool):
        super().__init__()
        self.rnn = rnn
        self.dt, self.tuple_state = dt, tuple_state

    def forward(self, x, *blocks):
        hx = None if not blocks else (tuple(blocks) if self.tuple_state else blocks[0])
        return self.rnn.eager_forward(x, hx, self.dt)


class SequenceGraphs:
    """The captured graphs of one layer, by signature: ``graphs(rnn, x, hx, dt) -> (output, h_n)``."""

    def __init__(self, capacity: int = 6, warmup: int = 3):
        self.capacity, self.warmup = capacity, warmup
        self.graphs: OrderedDict = OrderedDict()
        self.seen: Counter = Counter()
        self.captures = 0

    @staticmethod
    def signature(rnn, x, blocks, dt) -> tuple:
        device = x.device.type
        autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device)
        return (x.device, tuple(x.shape), x.dtype, x.requires_grad,
                tuple((tuple(b.shape), b.dtype, b.requires_grad) for b in blocks), dt, rnn.training,
                rnn.batch_first, rnn.dropout, rnn.grad, rnn.fused,
                torch.is_grad_enabled(), autocast, tuple(p.data_ptr() for p in rnn.parameters()))

    def __call__(self, rnn, x, hx, dt):
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            if x.is_cuda and torch.cuda.is_current_stream_capturing():
                return rnn.eager_forward(x, hx, dt)
            tuple_state = hx is not None and not isinstance(hx, torch.Tensor)
            blocks = () if hx is None else (tuple(hx) if tuple_state else (hx,))
            key = self.signature(rnn, x, blocks, dt)
            graphed = self.graphs.get(key)
            if graphed is None:
                self.seen[key] += 1
                if self.seen[key] < 2:  # first sight: eager (a one-off shape never pays for a capture)
                    if len(self.seen) > 1024:  # shapes that never recur (say, one length per call)
                        self.seen.clear()
                    return rnn.eager_forward(x, hx, dt)
                del self.seen[key]
                graphed = self._capture(rnn, x, blocks, dt, tuple_state)
                self.graphs[key] = graphed
                if len(self.graphs) > self.capacity:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
            # the outputs are the graph's static buffers, which its next replay overwrites: a carried
            # state or a kept output must not change under the caller's feet
            return torch.utils._pytree.tree_map(torch.Tensor.clone, graphed(x, *blocks))

    def _capture(self, rnn, x, blocks, dt, tuple_state):
        module = _Captured(rnn, dt, tuple_state).train(rnn.training)
        sample = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in (x, *blocks))
        # the warm-up passes draw dropout masks: the capture must not move the random stream
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        try:
            graphed = torch.cuda.make_graphed_callables(module, sample, num_warmup_iters=self.warmup,
                                                        allow_unused_input=True)
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, x.device)
        self.captures += 1
        return graphed

    def clear(self) -> None:
        self.graphs.clear()
        self.seen.clear()
