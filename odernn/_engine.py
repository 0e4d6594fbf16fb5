"""The sequence engine: one cell over a whole sequence, with the backward pass generated from the
tableau.

Per token only the recurrence is sequential. The input projection of all tokens is one matrix
product before the loop (``field.project`` on ``(T, B, E)``); the weight gradient of the recurrent
matrix is ``Σ_{tokens, stages} ∂L/∂pre ⊗ y_in``, one matrix product over the stacked factors after
the loop (cuDNN's structure). In between, each token runs the tableau's stage program
(``ButcherTableau.stage_program``) on the field's structure ``pre = y_in Wᵀ + b →
act = activate(context, pre) → dy = derivative(act, y)``, and the backward pass runs the
program's reverse sweep (the discrete adjoint, ``StageProgram.reverse``)::

    κ_i = h (b_i λ⁺ + Σ_{j>i} a_ji μ_j),   μ_i = J_f(Y_i)ᵀ κ_i,   λ = λ⁺ + Σ_i μ_i

with ``J_f(Y_i)ᵀ κ_i`` from the field's own vector–Jacobian products and one matrix product with
``W``. No autograd graph is built per token: ``_Sequence`` is one ``autograd.Function`` over the
sequence. It is tested equal to autograd through the per-token cell.

The backward is itself differentiable: when it is asked to build a graph (``create_graph=True``)
it runs the sequence again under autograd from the saved inputs and differentiates that instead.

Two memory modes: stored stages (``grad="backprop"``) keep each evaluation's stage values and
activations from the forward pass (fast); recomputed ones (``grad="checkpoint"``) keep only the
state at each token and re-run one token's stages at a time in the backward pass (memory flat in
the steps per token).

Partitioned stepping (``nn.LSTMCell``'s scheme) advances the blocks one group at a time. When an
evaluation reads the same recurrent-input blocks as an earlier one of the same token (the LSTM's
``h`` sub-step reads the ``h`` of its ``c`` sub-step), the activations are shared, so the matrix
product runs once, as in ``nn.LSTMCell``; in the reverse sweep their gradients are summed first
and pushed through ``W`` once, at the evaluation that made them.
"""

from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass, field as dataclass_field

import torch

from ._adjoint import adjoint_token
from ._checks import InputError
from ._implicit import ImplicitTokenProgram, stage_facts
from ._stepping import (AdaptiveScheme, ExplicitScheme, ImplicitScheme, combine, linear_combination, parameters_bound,
                        second_derivatives_refused)

__all__ = ["TokenProgram", "in_engine", "run_sequence"]


@dataclass
class _Activation:
    key: tuple  # the recurrent-input blocks it was computed from (compared by identity)
    act: tuple
    y_in: torch.Tensor


@dataclass
class _Evaluation:
    Y: tuple  # the stage value, all blocks
    activation: int | None  # index into the token's activations; None for activation-free blocks
    K: tuple | None = None  # the stage derivatives of the group's blocks (kept only for ∂L/∂dt)
    makes_activation: bool = False  # the first evaluation that used it: the reverse sweep finishes it here


@dataclass
class _Tape:
    activations: list = dataclass_field(default_factory=list)
    # (group, {stage: _Evaluation}) in order; an adaptive token's (group, {stage: _Evaluation}, its step size)
    substeps: list = dataclass_field(default_factory=list)


def _compiled(function):
    """``function`` fused by ``torch.compile`` into one graph (``fullgraph``: a graph break would
    silently un-fuse it). Batch sizes become dynamic after the first change, so that training,
    evaluation and sampling share a kernel. Should Dynamo still hit its recompile limit (it keeps
    at most a few variants per function: dtypes, autocast, block groups), the function runs
    eagerly from then on, with one warning, rather than failing."""
    state = {"run": torch.compile(function, fullgraph=True)}

    def run(*args):
        try:
            return state["run"](*args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            warnings.warn(f"odernn: torch.compile reached its recompile limit on {function.__qualname__}; "
                          "it runs uncompiled from now on", RuntimeWarning, stacklevel=2)
            state["run"] = function
            return function(*args)
    return run


class _FieldMath:
    """The elementwise halves of a field's evaluation and of its reverse (``activate``,
    ``derivative``, ``derivative_vjp``, ``activate_vjp``), eager or each fused into one kernel by
    ``torch.compile`` (Triton on a GPU, C++ on a CPU). The matrix products stay outside, on
    cuBLAS/oneDNN. The compiled functions are the field class's, made once per class and shared by
    its instances (which they take as an argument, so that no cache keeps a field alive)."""

    NAMES = ("activate", "derivative", "derivative_vjp", "activate_vjp")
    _compiled: dict = {}  # (field class, name) -> the compiled function

    def __init__(self, field, compiled: bool):
        for name in self.NAMES:
            if compiled:
                key = (type(field), name)
                if key not in self._compiled:
                    self._compiled[key] = _compiled(getattr(type(field), name))
                setattr(self, name, functools.partial(self._compiled[key], field))
            else:
                setattr(self, name, getattr(field, name))


class TokenProgram:
    """One token of a cell, ready to run forward and in reverse: the tableau's stage program and
    its reverse (floats from the exact coefficients), the steps per token and the block groups
    (one group of all blocks, or one group per block when partitioned). ``compiled``: the field's
    elementwise math fused by ``torch.compile``."""

    second_order = True  # its backward can build a graph (by running the sequence again under autograd)
    taped_differently = False  # whether a token run with a tape ends elsewhere than without one

    def __init__(self, cell, compiled: bool = False, scheme=None):
        scheme, field = scheme or cell.scheme, cell.field
        self.compiled = compiled
        self.field = field
        self.math = _FieldMath(field, compiled)
        self.stages, self.weights, self.reverse = scheme.program, scheme.weights, scheme.reverse
        self.error_weights = scheme.error_weights  # an embedded pair's (empty otherwise)
        self.at_end = scheme.at_end  # the stage whose value is y⁺ (first same as last), or None
        self.steps = cell.steps
        blocks = tuple(range(field.blocks))
        self.groups = tuple((k,) for k in blocks) if cell.partitioned else (blocks,)
        free = set(field.activation_free_blocks)
        self.group_needs_activation = {g: not set(g) <= free for g in self.groups}

    def carried(self):
        """What a token's solve takes from the tokens before it (nothing here; see
        ``ImplicitTokenProgram.carried``)."""
        return None

    def carry(self, state) -> None:
        """Start the next token from ``state``, what :meth:`carried` gave."""

    @staticmethod
    def eager(program: "TokenProgram") -> "TokenProgram":
        """``program`` with the field's math uncompiled."""
        if not program.compiled:
            return program
        eager = copy.copy(program)
        eager.math, eager.compiled = _FieldMath(program.field, False), False
        return eager

    # -- forward ------------------------------------------------------------------------------------
    def token(self, y: tuple, context, h, W, b, tape: _Tape | None = None, keep_K: bool = False) -> tuple:
        """The state blocks after one token; the evaluations go on ``tape`` when one is given."""
        for _ in range(self.steps):
            y, _ = self.step(y, context, h, W, b, tape, keep_K)
        return y

    def step(self, y: tuple, context, h, W, b, tape: _Tape | None = None, keep_K: bool = False,
             error_weights=()) -> tuple:
        """``(y⁺, h Σ e_i K_i or None)``: one step of every group, and with ``error_weights`` the
        embedded pair's local error estimate."""
        field = self.field
        activations = tape.activations if tape is not None else []
        error = None
        for group in self.groups:
            K, evaluations, at_end = {}, {}, None
            for i, row in self.stages:
                Y = self._advance(y, group, h, row, K)
                if i == self.at_end:
                    at_end = Y
                index, made = None, False
                if self.group_needs_activation[group]:
                    index = self._find(activations, Y)
                    if index is None:
                        y_in = field.recurrent_input(Y)
                        act = self.math.activate(context, field.preactivation(context, y_in, W, b))
                        activations.append(_Activation(tuple(Y[k] for k in field.recurrent_blocks), act, y_in))
                        index, made = len(activations) - 1, True
                K[i] = self.math.derivative(activations[index].act if index is not None else None, Y, group)
                if tape is not None:
                    evaluations[i] = _Evaluation(Y, index, K[i] if keep_K else None, made)
            if error_weights:
                error = self._advance(tuple(torch.zeros_like(v) for v in y), group, h, error_weights, K)
            # first same as last: y⁺ is that stage's value (the same tensors, so that the next step's
            # first stage finds its activation)
            y = at_end if at_end is not None else self._advance(y, group, h, self.weights, K)
            if tape is not None:
                tape.substeps.append((group, evaluations))
        return y, error

    @staticmethod
    def _advance(y, group, h, terms, K):
        """``y + h Σ_j a_j K_j`` on the group's blocks; the other blocks are passed through (the
        same tensors: that is what lets a later evaluation share activations)."""
        if not terms:
            return y
        out = list(y)
        for slot, k in enumerate(group):
            out[k] = combine(y[k], h, [(a, K[j][slot]) for j, a in terms])
        return tuple(out)

    def _find(self, activations, Y):
        """The index of the activation made at ``Y``'s recurrent blocks (the same tensors), or None;
        the latest first (an adaptive token's list is long, and what is found is near its end)."""
        key = tuple(Y[k] for k in self.field.recurrent_blocks)
        for index in range(len(activations) - 1, -1, -1):
            if all(a is b for a, b in zip(activations[index].key, key)):
                return index
        return None

    # -- reverse ------------------------------------------------------------------------------------
    def token_reverse(self, tape: _Tape, lam: list, h, W, weight_grad: "_WeightGradient"):
        """The reverse sweep of one token: ``lam`` (``∂L/∂y`` after the token, one entry per block,
        ``None`` for zero) becomes ``∂L/∂y`` before it. Returns ``(lam, ∂L/∂context, ∂L/∂h)``;
        ``∂L/∂h`` (per row) only when the tape kept the stage derivatives. A substep recorded with
        its own step size (``(group, evaluations, h)``: an adaptive token's) is reversed with it."""
        field = self.field
        grad_context, grad_h = None, None
        act_grads = {}  # activation index -> the summed gradients of its entries
        for group, evaluations, *size in reversed(tape.substeps):
            step = size[0] if size else h
            scaled = not isinstance(step, torch.Tensor)  # a float step folds into the coefficients
            lam_plus = list(lam)
            mu = {}
            for i, b_i, row in self.reverse:
                e = evaluations[i]
                scale = step if scaled else 1.0
                kappa = []
                for slot, k in enumerate(group):
                    terms = [(scale * b_i, lam_plus[k])] + [(scale * a, mu[j][k] if mu[j] else None) for j, a in row]
                    kappa.append(linear_combination(terms))
                if e.K is not None:  # ∂L/∂h = Σ_i ⟨κ_i / h, K_i⟩ (K is kept only where h is a tensor, unscaled here)
                    for kap, K in zip(kappa, e.K):
                        if kap is not None:
                            term = (kap * K).sum(dim=-1, keepdim=True)
                            grad_h = term if grad_h is None else grad_h + term
                if not scaled:
                    kappa = [None if kap is None else kap * step for kap in kappa]
                finishes = e.makes_activation and e.activation in act_grads  # later users' gradients wait here
                if all(kap is None for kap in kappa) and not finishes:  # (FSAL's last stage: b = 0, used after)
                    mu[i] = None
                    continue
                kappa = [torch.zeros_like(e.Y[k]) if kap is None else kap for kap, k in zip(kappa, group)]
                act = tape.activations[e.activation] if e.activation is not None else None
                grads, grad_act = self.math.derivative_vjp(act.act if act is not None else None, e.Y, kappa, group)
                grads = list(grads)
                if act is not None:
                    act_grads[e.activation] = _accumulate(act_grads.get(e.activation), grad_act)
                    if e.makes_activation:  # every later user has been reversed: push through W once
                        g_context, g_pre = self.math.activate_vjp(act.act, act_grads.pop(e.activation))
                        grad_context = g_context if grad_context is None else grad_context + g_context
                        weight_grad.add(g_pre, act.y_in)
                        g_in = g_pre @ W
                        parts = (g_in,) if len(field.recurrent_blocks) == 1 else g_in.split(
                            [e.Y[k].shape[-1] for k in field.recurrent_blocks], dim=-1)
                        for k, part in zip(field.recurrent_blocks, parts):
                            grads[k] = part if grads[k] is None else grads[k] + part
                mu[i] = grads
                for k, g in enumerate(grads):
                    if g is not None:
                        lam[k] = g if lam[k] is None else lam[k] + g
        return lam, grad_context, grad_h


class AdaptiveTokenProgram:
    """One token of an adaptive cell (an embedded explicit pair with error control) in the engine:
    the forward takes the steps the error controller accepts (``AdaptiveScheme.control``, the loop
    the per-token cell runs, so the same steps), the accepted ones on the token's tape with their
    step sizes; the backward is the explicit reverse sweep over them, last first (the discrete
    adjoint of the steps taken; the step-size choices are not differentiated, as on the per-token
    path). The batch shares its steps, so ``dt`` is one number. Neither path evaluates the field
    twice at one state: a retry's first stage is its rejected attempt's, and a first-same-as-last
    pair's next step starts from its last stage's evaluation."""

    second_order = True  # its backward re-runs the forward under autograd, the same steps accepted
    taped_differently = False

    def __init__(self, cell, compiled: bool = False):
        self.adaptive, self.field, self.steps = cell.scheme, cell.field, cell.steps
        self.base = TokenProgram(cell, compiled, scheme=cell.scheme.scheme)
        self.name = cell.scheme.name
        self.compiled = compiled
        self.evaluations = 0  # of the last token

    carried, carry = TokenProgram.carried, TokenProgram.carry  # each token's steps start from its own state

    @staticmethod
    def eager(program: "AdaptiveTokenProgram") -> "AdaptiveTokenProgram":
        eager = copy.copy(program)
        eager.base = TokenProgram.eager(program.base)
        return eager

    def token(self, y: tuple, context, h, W, b, tape: _Tape | None = None, keep_K: bool = False) -> tuple:
        # The token's attempts share one record of activations: an attempt's first stage is at a
        # state an earlier attempt evaluated already (a rejected step's start, or an accepted one's
        # end where the pair is first same as last) and finds its activation there. A rejected
        # attempt's activations are dropped but the one at its start, where its retry starts;
        # without a tape, after each accepted step all are dropped but the one at its end (if any).
        record = tape if tape is not None else _Tape()
        last = {}

        def attempt(y, step):
            if "mark" in last:  # the last attempt was rejected: this one starts where it did
                self._forget(record, last["mark"], y)
            last["mark"] = mark = (len(record.activations), len(record.substeps))
            y_new, error = self.base.step(y, context, step, W, b, record, False, self.base.error_weights)
            record.substeps[mark[1]:] = [(group, evaluations, step) for group, evaluations in record.substeps[mark[1]:]]
            last["end"] = y_new
            return y_new, error, len(record.activations) - mark[0]

        def accepted(step):
            del last["mark"]
            if tape is None:
                self._forget(record, (0, 0), last["end"])
        y, self.evaluations = self.adaptive.control(attempt, y, h * self.steps, h, accepted=accepted)
        # the reverse sweep finishes an activation (through W) at its first user, which it reverses last
        seen = set()
        for _, evaluations, _ in record.substeps:
            for e in evaluations.values():
                if e.activation is not None:
                    e.makes_activation = e.activation not in seen
                    seen.add(e.activation)
        return y

    def _forget(self, record: _Tape, mark: tuple, state: tuple) -> None:
        """Drop the activations and substeps recorded since ``mark`` but an activation at ``state``,
        where the next attempt starts."""
        index = self.base._find(record.activations, state)
        kept = record.activations[index] if index is not None and index >= mark[0] else None
        del record.activations[mark[0]:], record.substeps[mark[1]:]
        if kept is not None:
            record.activations.append(kept)

    def token_reverse(self, tape: _Tape, lam: list, h, W, weight_grad):
        lam, grad_context, _ = self.base.token_reverse(tape, lam, h, W, weight_grad)
        return lam, grad_context, None


def _accumulate(total, new):
    if total is None:
        return list(new)
    return [a if b is None else b if a is None else a + b for a, b in zip(total, new)]


class _WeightGradient:
    """``∂L/∂W = Σ g_preᵀ y_in`` and ``∂L/∂b = Σ g_pre`` as few large matrix products: the factors of
    many evaluations are stacked and multiplied once ``rows`` of them have gathered."""

    def __init__(self, rows: float):
        self.rows, self.pending, self.count = rows, [], 0
        self.W = self.b = None

    def add(self, g_pre, y_in):
        self.pending.append((g_pre, y_in))
        self.count += g_pre.shape[0]
        if self.count >= self.rows:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        g = torch.cat([p for p, _ in self.pending])
        y = torch.cat([q for _, q in self.pending])
        self.W = g.T @ y if self.W is None else torch.addmm(self.W, g.T, y)
        self.b = g.sum(dim=0) if self.b is None else self.b + g.sum(dim=0)
        self.pending, self.count = [], 0


def _forward(program: TokenProgram, C, h, W, b, y: tuple, tapes: list | None = None, starts: list | None = None,
             keep_K: bool = False):
    """``(outputs (T, B, H), final blocks)``; each token's evaluations go on a new tape in ``tapes``,
    or its starting state and what its solve carried from the tokens before (``program.carried``)
    into ``starts``, when those lists are given."""
    outputs = []
    for t in range(C.shape[0]):
        h_t = h[t] if isinstance(h, torch.Tensor) else h
        tape = None
        if tapes is not None:
            tape = _Tape()
            tapes.append(tape)
        elif starts is not None:
            starts.append((y, program.carried()))
            if program.taped_differently:  # solved as the backward will solve it again, on a tape not kept
                tape = _Tape()
        y = program.token(y, C[t], h_t, W, b, tape, keep_K)
        outputs.append(y[program.field.output_block])
    return torch.stack(outputs), y


class _Record:
    """What ``_Sequence.forward`` hands its ``setup_context``: the tapes or starting states."""
    tapes = starts = None
    keep_K = False


class _Sequence(torch.autograd.Function):
    """``(outputs, *final blocks)`` of one cell over a sequence, with the generated backward pass.
    Inputs that get gradients: the projected inputs ``C`` ``(T, B, G)``, the step ``h`` (a
    ``(T, B, 1)`` tensor; a float gets none), ``W``, ``b`` and the initial blocks.

    A backward asked to build a graph (``create_graph=True``: a gradient penalty, a
    Hessian–vector product) runs the sequence again under autograd from the saved inputs and
    differentiates that: the generated sweep reads stage values stored without a graph, so its
    result could not be differentiated again."""

    # forward and setup_context apart (torch.func's form): the tapes pass from one to the other in
    # ``record``, which the caller passes in (an opaque object: torch.func copies containers)
    generate_vmap_rule = True  # vmap runs the forward and the backward on batched tensors as they are

    @staticmethod
    def forward(program: TokenProgram, recompute: bool, record: "_Record", C, h, W, b, *y0):
        keep_K = isinstance(h, torch.Tensor) and h.requires_grad
        tapes, starts = ([], None) if not recompute else (None, [])
        out, y = _forward(program, C, h, W, b, y0, tapes, starts, keep_K)
        record.tapes, record.starts, record.keep_K = tapes, starts, keep_K
        # fresh tensors: the final blocks can be stage values on the tapes (a partitioned step's
        # later groups hold the earlier groups' new blocks), and an output the tapes keep would make
        # a cycle through its grad_fn that Python's collector cannot free: a leak per sequence
        return (out, *(block.clone() for block in y))

    @staticmethod
    def setup_context(ctx, inputs, output):
        program, recompute, record, C, h, W, b, *y0 = inputs
        ctx.set_materialize_grads(False)
        ctx.autocast = _autocast_state(C.device.type)
        ctx.program, ctx.recompute = program, recompute
        ctx.tapes, ctx.starts, ctx.keep_K = record.tapes, record.starts, record.keep_K
        ctx.h_float = None if isinstance(h, torch.Tensor) else h
        ctx.save_for_backward(C, W, b, *((h,) if isinstance(h, torch.Tensor) else ()), *y0)

    @staticmethod
    def backward(ctx, grad_out, *grad_final):
        # the reverse sweep's products in the forward's precision (what torch.amp.custom_bwd does)
        with torch.autocast(**ctx.autocast):
            # the generated sweep gives ∂L/∂h only from stage derivatives the forward kept (it keeps
            # them when h required a gradient; under torch.func it could not tell)
            if torch.is_grad_enabled() or (ctx.needs_input_grad[4] and not ctx.keep_K):
                with torch.enable_grad():
                    return _Sequence._differentiable_backward(ctx, grad_out, *grad_final)
            return _Sequence._backward(ctx, grad_out, *grad_final)

    @staticmethod
    def _saved(ctx):
        """``(C, h, W, b, y0)`` as the forward received them."""
        C, W, b, *rest = ctx.saved_tensors
        h = ctx.h_float if ctx.h_float is not None else rest.pop(0)
        return C, h, W, b, tuple(rest)

    @staticmethod
    def _differentiable_backward(ctx, grad_out, *grad_final):
        if not ctx.program.second_order:  # the first-order gradient, marked: differentiating it raises
            with torch.no_grad():
                result = _Sequence._backward(ctx, grad_out, *grad_final)
            anchors = [t for t in ctx.saved_tensors if t is not None and t.requires_grad]
            return tuple(r if r is None or not anchors else _FirstOrderOnly.apply(r, ctx.program.name, *anchors)
                         for r in result)
        C, h, W, b, y0 = _Sequence._saved(ctx)
        inputs = (C, h, W, b, *y0)
        wanted = [k for k, needed in enumerate(ctx.needs_input_grad[3:]) if needed]
        program = ctx.program.eager(ctx.program)  # compiled kernels have no double backward (each kind its own)

        def sequence(*chosen):
            args = list(inputs)
            for k, value in zip(wanted, chosen):
                args[k] = value
            out, y = _forward(program, args[0], args[1], args[2], args[3], tuple(args[4:]))
            return (out, *y)
        # torch.func.vjp, not autograd.grad: it composes with an outer autograd graph and with
        # torch.func's transforms (vmap over this backward: jacrev, hessian, per-sample gradients)
        outputs, vjp = torch.func.vjp(sequence, *(inputs[k] for k in wanted))
        cotangents = tuple(torch.zeros_like(v) if g is None else g for v, g in zip(outputs, (grad_out, *grad_final)))
        result = [None] * len(inputs)
        for k, g in zip(wanted, vjp(cotangents)):
            result[k] = g
        return (None, None, None, *result)

    @staticmethod
    def _backward(ctx, grad_out, *grad_final):
        program = ctx.program
        C, h, W, b, _ = _Sequence._saved(ctx)
        # stored stages: one product over the whole sequence; recomputed ones: bounded batches of
        # rows, so that memory stays flat in the steps per token
        weight_grad = _WeightGradient(4096 if ctx.recompute else float("inf"))
        grad_C = [None] * C.shape[0]
        grad_h = torch.zeros_like(h) if ctx.keep_K else None
        lam = list(grad_final)
        output_block = program.field.output_block
        # A token solved again starts from what its forward solve carried from the tokens before
        # (an implicit cell's kept factorisations): the forward's path, so the forward's solution,
        # where another start can reach another solution of the same stage equations. The backward
        # leaves the program as it found it, so the next forward is the same in either mode.
        resume = program.carried()
        try:
            for t in reversed(range(C.shape[0])):
                if grad_out is not None:
                    g = grad_out[t]
                    lam[output_block] = g if lam[output_block] is None else lam[output_block] + g
                h_t = h[t] if isinstance(h, torch.Tensor) else h
                if ctx.recompute:
                    tape, (start, carried) = _Tape(), ctx.starts[t]
                    program.carry(carried)
                    program.token(start, C[t], h_t, W, b, tape, ctx.keep_K)
                else:
                    tape = ctx.tapes[t]  # kept: a graph retained for a second backward pass reads it again
                lam, grad_C[t], g_h = program.token_reverse(tape, lam, h_t, W, weight_grad)
                if g_h is not None:
                    grad_h[t] = g_h
        finally:
            program.carry(resume)
        weight_grad.flush()
        grad_C = torch.stack([torch.zeros_like(C[0]) if g is None else g for g in grad_C])
        grad_W = weight_grad.W if weight_grad.W is not None else torch.zeros_like(W)
        grad_b = None if b is None else (weight_grad.b if weight_grad.b is not None else torch.zeros_like(b))
        return (None, None, None, grad_C, grad_h, grad_W, grad_b, *lam)


class _FirstOrderOnly(torch.autograd.Function):
    """``value``, attached to the graph of the ``anchors`` (what the sequence read) so that
    differentiating it again raises: the implicit engine's gradient (by the implicit function
    theorem) is first order only."""

    @staticmethod
    def forward(ctx, value, name: str, *anchors):
        ctx.name = name
        return value.clone()

    @staticmethod
    def backward(ctx, *_):
        raise second_derivatives_refused(ctx.name)


def _autocast_state(device_type: str) -> dict:
    enabled = torch.is_autocast_enabled(device_type)
    return {"device_type": device_type, "enabled": enabled,
            **({"dtype": torch.get_autocast_dtype(device_type)} if enabled else {})}


class _TokenCheckpoint(torch.autograd.Function):
    """One token of the per-token path keeping nothing but its inputs (``grad="checkpoint"``): the
    backward solves the token again under autograd, with the parameters it was given, and
    differentiates that. Unlike ``torch.utils.checkpoint``'s re-entrant form it works with
    ``torch.autograd.grad``; unlike its non-re-entrant form it runs the forward solve without saved-
    tensor hooks (which ``torch.func``'s Jacobians of the implicit stages refuse). A backward that
    builds a graph recomputes from the saved tensors themselves, so it is differentiable again."""

    @staticmethod
    def forward(ctx, cell, names, blocks: int, context, h, *tensors):  # the state blocks, then the parameters
        ctx.cell, ctx.names, ctx.blocks, ctx.h_float = cell, names, blocks, None if isinstance(h, torch.Tensor) else h
        ctx.steps = cell.steps  # the token as it was solved, whatever the cell's settings by the backward
        ctx.save_for_backward(context, *((h,) if isinstance(h, torch.Tensor) else ()), *tensors)
        out = cell.integrate(context, tuple(tensors[:blocks]), h)
        return tuple(o.clone() if any(o is v for v in tensors) else o for o in out)

    @staticmethod
    def backward(ctx, *grads):
        cell, n = ctx.cell, ctx.blocks
        context, *rest = ctx.saved_tensors
        h = ctx.h_float if ctx.h_float is not None else rest.pop(0)
        inputs = [context, h, *rest]
        create = torch.is_grad_enabled()
        if not create:  # a first-order backward: a fresh graph from detached copies of the token's inputs
            inputs[:2 + n] = [v.detach().requires_grad_(needed) if isinstance(v, torch.Tensor) else v
                              for v, needed in zip(inputs[:2 + n], ctx.needs_input_grad[3:5 + n])]
        wanted = [k for k, needed in enumerate(ctx.needs_input_grad[3:]) if needed]
        with torch.enable_grad(), parameters_bound(cell.field, list(zip(ctx.names, inputs[2 + n:]))):
            out = cell.integrate(inputs[0], tuple(inputs[2:2 + n]), inputs[1], ctx.steps)
        pairs = [(o, g) for o, g in zip(out, grads) if g is not None and o.requires_grad]
        result = [None] * len(inputs)
        if pairs and wanted:
            found = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in wanted], [g for _, g in pairs],
                                        create_graph=create, allow_unused=True)
            for k, g in zip(wanted, found):
                result[k] = g
        return (None, None, None, *result)


def _token_loop(cell, C, y, h, mask, grad: str, adjoint_method):
    """The per-token path, differentiated by autograd (or the continuous adjoint): fields without
    the recurrent structure, implicit and adaptive tableaux, and the ``adjoint`` gradient mode."""
    training = torch.is_grad_enabled()
    outputs, output_block = [], cell.field.output_block
    named = list(cell.field.named_parameters())
    names, parameters = tuple(name for name, _ in named), tuple(p for _, p in named)
    for t in range(C.shape[0]):
        h_t = h[t] if isinstance(h, torch.Tensor) else h
        if training and grad == "adjoint":
            new = adjoint_token(cell, C[t], y, h_t * cell.steps, adjoint_method)
        elif training and grad == "checkpoint":
            new = _TokenCheckpoint.apply(cell, names, len(y), C[t], h_t, *y, *parameters)
        else:
            new = cell.integrate(C[t], y, h_t)
        if mask is not None:  # finished sequences keep their state
            new = tuple(torch.where(mask[t, :, None], a, b) for a, b in zip(new, y))
        y = tuple(new)
        outputs.append(y[output_block])
    return torch.stack(outputs), y


def _structure(cell):
    """``(W, b)`` where sequences of this cell run in the engine, else ``None`` (token by token under
    autograd): a field with the recurrent structure, stepped by an explicit tableau (fixed steps, or
    an embedded pair with error control) or an implicit one whose stage equations decouple
    (``_implicit.stage_structure``)."""
    scheme = cell.scheme
    if isinstance(scheme, ImplicitScheme):
        if stage_facts(cell).structure is None:
            return None
    elif not isinstance(scheme, (ExplicitScheme, AdaptiveScheme)):
        return None
    return cell.field.recurrent() if cell.field.elementwise else None


def in_engine(cell) -> bool:
    return _structure(cell) is not None


def _transformed(tensors) -> bool:
    """Whether a ``torch.func`` transform or forward-mode AD follows any of ``tensors`` (the
    implicit engine's Newton loop decides convergence on the host, which they cannot trace)."""
    return any(isinstance(t, torch.Tensor) and (torch._C._functorch.is_functorch_wrapped_tensor(t)
                                                 or torch.autograd.forward_ad.unpack_dual(t).tangent is not None)
               for t in tensors)


def run_sequence(cell, x, y0: tuple, dt, mask=None, grad: str = "backprop", adjoint_method=None,
                 compiled: bool = False):
    """``(outputs (T, B, H), final blocks)`` of ``cell`` over ``x`` ``(T, B, E)`` from the blocks
    ``y0``. ``dt``: the interval per token, a float or a ``(T, B)`` tensor; ``mask``: ``(T, B)``,
    ``False`` after a sequence's end (its state is then carried unchanged). ``grad``: ``backprop``
    (stored stages), ``checkpoint`` (recomputed per token) or ``adjoint`` (continuous).
    ``compiled``: the field's elementwise math fused by ``torch.compile`` (engine cells only).

    Under ``torch.autocast`` the matrix products and the activations run in the autocast dtype,
    while the state, the stage combinations and the gradients they carry stay in the state's
    dtype; cells that run token by token (implicit, adaptive, the continuous adjoint) run whole in
    the state's dtype."""
    field = cell.field
    structure = _structure(cell) if grad != "adjoint" else None
    implicit, adaptive = isinstance(cell.scheme, ImplicitScheme), isinstance(cell.scheme, AdaptiveScheme)
    if structure is not None and (implicit or adaptive) and _transformed((x, *y0, dt, *field.parameters())):
        structure = None  # the per-token cell: its solve decides on the host, which torch.func cannot trace
    if structure is not None and adaptive and (isinstance(dt, torch.Tensor) or mask is not None):
        structure = None  # the batch shares its steps: the per-token cell says so, or masks finished sequences
    state_dtype = y0[0].dtype  # under autocast the input may be bfloat16; the state is not
    if isinstance(dt, torch.Tensor):
        dt = dt.to(dtype=state_dtype, device=x.device)
    if structure is None:
        if isinstance(dt, torch.Tensor) and grad == "adjoint" and torch.is_grad_enabled():
            raise InputError("the continuous adjoint takes one dt for the whole batch (a float), not a tensor")
        h = dt[..., None] / cell.steps if isinstance(dt, torch.Tensor) else dt / cell.steps
        # Newton tolerances, error control and the adjoint's solve are never judged in a
        # reduced precision: under autocast these run whole in the state's dtype
        with torch.autocast(x.device.type, enabled=False):
            return _token_loop(cell, field.project(x.to(state_dtype)), y0, h, mask, grad, adjoint_method)
    if implicit or adaptive:  # Newton tolerances and error control are never judged in a reduced precision
        program = ImplicitTokenProgram(cell) if implicit else AdaptiveTokenProgram(cell, compiled)
        with torch.autocast(x.device.type, enabled=False):
            return _run_engine(cell, field.project(x.to(state_dtype)), y0, dt, mask, grad, structure, state_dtype,
                               program)
    return _run_engine(cell, field.project(x), y0, dt, mask, grad, structure, state_dtype,
                       TokenProgram(cell, compiled))


def _run_engine(cell, C, y0, dt, mask, grad, structure, state_dtype, program):
    """The engine over the projected inputs ``C`` ``(T, B, G)``: one ``_Sequence`` (or, without
    gradients, the forward alone)."""
    W, b = structure
    if torch.is_autocast_enabled(C.device.type) and W.dtype == torch.float32:
        W = W.to(torch.get_autocast_dtype(C.device.type))  # once per sequence (autocast's cache is off in graphs)
    # a finished sequence takes steps of size zero: y + 0·ΣbK = y exactly, and no gradient flows
    if mask is not None:
        dt = mask.to(state_dtype) * dt
    h = dt[..., None] / cell.steps if isinstance(dt, torch.Tensor) else dt / cell.steps  # (T, B, 1) or float
    tensors = (C, h, W, b, *y0)
    if torch.is_grad_enabled() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in tensors):
        out, *y = _Sequence.apply(program, grad == "checkpoint", _Record(), *tensors)
        result = out, tuple(y)
    else:
        result = _forward(program, C, h, W, b, y0)
    # explicit: the fixed count; implicit and adaptive: the last token's, as the per-token cell reports it
    cell._record_nfe(program.evaluations if isinstance(program, (ImplicitTokenProgram, AdaptiveTokenProgram)) else None)
    return result
