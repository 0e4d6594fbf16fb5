"""The adjoint's gradient against the exact one, and where it breaks.

    python benchmarks/adjoint_study.py            (--quick: two tolerances only)

1. Relative gradient error of ``--grad adjoint`` against ``--grad checkpoint`` (the exact gradient
   of the same forward solve) as the forward and backward tolerances vary: an adaptive Dormand–
   Prince GRU-ODE language model, one batch of Tiny Shakespeare, float64.
2. A backward pass stiffer than the forward one. The forward solve is L-stable Radau IIA with a
   long interval Δ per token, where the GRU-ODE field contracts strongly: it takes one step. The
   adjoint must integrate the same dynamics backwards — the state reconstruction ``dy/ds = −f``
   runs the contraction in reverse, an expansion by about ``exp(Δ·|λ|)`` — with an explicit
   tableau. Measured: the adjoint's gradient error and evaluations, and the remedies.
"""

import math
import time

import torch

import odernn
from textlm.data import load_corpus
from textlm.model import LanguageModel


TOKENS = 24  # per sequence; --quick: 8


def gradient(spec, grad, adjoint=None, hidden=32, batch=4):
    tokens = TOKENS
    torch.manual_seed(0)
    model = LanguageModel(65, spec, hidden=hidden, grad=grad, adjoint=adjoint).double()
    data = load_corpus("tinyshakespeare").train[: batch * (tokens + 1)].view(batch, tokens + 1)
    start = time.perf_counter()
    _, loss, _ = model(data[:, :-1], data[:, 1:])
    loss.backward()
    seconds = time.perf_counter() - start
    return torch.cat([p.grad.flatten() for p in model.parameters()]), seconds


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def tolerance_table(tolerances=(1e-3, 1e-5, 1e-7, 1e-9)):
    print("1. relative gradient error ‖g_adjoint − g_checkpoint‖ / ‖g_checkpoint‖, GRU-ODE dopri5, hidden 32,")
    print(f"   4 × {TOKENS} characters, float64 (rows: forward rtol; columns: backward rtol; atol = rtol/100)\n")
    print("| forward rtol | " + " | ".join(f"backward {t:g}" for t in tolerances) + " |")
    print("|---|" + "---|" * len(tolerances))
    for forward in tolerances:
        spec = f"gru-ode:dopri5:rtol={forward}:atol={forward / 100}"
        exact, _ = gradient(spec, "checkpoint")
        errors = []
        for backward in tolerances:
            g, _ = gradient(spec, "adjoint", odernn.AdjointMethod("dopri5", rtol=backward, atol=backward / 100))
            errors.append(relative(g, exact))
        print(f"| {forward:g} | " + " | ".join(f"{e:.2e}" for e in errors) + " |")


def stiff_backward(quick=False):
    dt = 24.0
    spec = f"gru-ode:radau-iia-3:dt={dt}"
    print(f"\n2. forward {spec} (one implicit step of Δ = {dt:g} per token); the same batch\n")
    exact, seconds = gradient(spec, "checkpoint")
    print("| gradient | relative error | time (s) | note |")
    print("|---|---|---|---|")
    print(f"| checkpoint (exact gradient of the forward solve, IFT) | 0 | {seconds:.2f} | the remedy |")
    cases = [("adjoint, backward rk4, 1 step", odernn.AdjointMethod("rk4")),
             ("adjoint, backward rk4, 16 steps", odernn.AdjointMethod("rk4", steps=16)),
             ("adjoint, backward rk4, 64 steps", odernn.AdjointMethod("rk4", steps=64)),
             # tighter tolerances only take longer: at rtol 1e-10 it did not finish in 10 minutes
             ("adjoint, backward dopri5, rtol 1e-6", odernn.AdjointMethod("dopri5", rtol=1e-6, atol=1e-8))]
    if quick:
        cases = cases[:1]
    for label, method in cases:
        try:
            g, seconds = gradient(spec, "adjoint", method)
            error = relative(g, exact)
            note = "non-finite" if not math.isfinite(error) else ""
            print(f"| {label} | {error:.2e} | {seconds:.2f} | {note} |")
        except odernn.StepSizeUnderflow as err:
            print(f"| {label} | — | — | step size underflow: {str(err)[:80]} |")


if __name__ == "__main__":
    import sys
    if "--quick" in sys.argv:  # the CI smoke version: shorter sequences, two tolerances, the stiff case
        TOKENS = 8
        tolerance_table((1e-3, 1e-6))
        stiff_backward(quick=True)
    else:
        tolerance_table()
        stiff_backward()
