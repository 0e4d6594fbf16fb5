"""Training-step speed of generated cells against their baselines, as ratios measured in one run.

One training step = forward and backward over a sequence of 64 tokens, batch 32, hidden 256
(input 256), float32 on the CPU. Baselines: a Python loop over ``torch.nn.GRUCell`` (what the
generated Euler GRU-ODE cell must match), the same field and tableau run through
``torchdiffeq.odeint`` token by token, and the fused ``torch.nn.GRU`` as the ceiling.

    python benchmarks/cell_speed.py [--repeats 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torchdiffeq
from torch import nn

import odernn

T, B, I, H = 64, 32, 256, 256


def timed_all(steps: dict, repeats: int) -> dict:
    """Median seconds per step; the variants are timed round-robin, so that the machine's drift
    (it is shared and noisy) hits them all alike and the ratios hold."""
    for step in steps.values():
        step()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def training_step(run, parameters):
    def step():
        for p in parameters:
            p.grad = None
        loss = run().square().mean()
        loss.backward()
    return step


def loop(cell, xs):
    def run():
        h = torch.zeros(B, H)
        for x in xs:
            h = cell(x, h)
        return h
    return run


def torchdiffeq_loop(ode_of, xs, method):
    """torchdiffeq per token: ``ode_of(x)`` is the token's right-hand side ``f(t, y)``."""
    span = torch.tensor([0.0, 1.0])

    def run():
        h = torch.zeros(B, H)
        for x in xs:
            h = torchdiffeq.odeint(ode_of(x), h, span, method=method, options=dict(step_size=1.0))[-1]
        return h
    return run


def hoisted(field):
    """The right-hand side with the input projection computed once per token, outside the evaluations."""
    def ode_of(x):
        context = field.project(x)
        return lambda t, y: field(context, (y,))[0]
    return ode_of


def token_ode(field):
    """The interop function: projection inside every evaluation, as odeint_adjoint needs."""
    return lambda x: odernn.TokenODE(field, x)


def report(results: dict, repeats: int) -> dict:
    """Print the times and the goal ratios; return the ratios."""
    base = results["GRUCell loop"]
    print(f"training step, T={T}, B={B}, I={I}, H={H}, float32, {torch.get_num_threads()} threads, "
          f"median of {repeats}, timed round-robin")
    for name, seconds in results.items():
        print(f"  {name:<26}{seconds * 1e3:8.1f} ms   {seconds / base:5.2f}x GRUCell loop")
    ratios = {
        "euler_vs_grucell": results["generated Euler GRU-ODE"] / base,
        "rk4_per_evaluation_vs_grucell": results["generated RK4 GRU-ODE"] / (4 * base),
        "torchdiffeq_euler_vs_generated": results["torchdiffeq Euler"] / results["generated Euler GRU-ODE"],
        "torchdiffeq_rk4_vs_generated": results["torchdiffeq RK4"] / results["generated RK4 GRU-ODE"],
        "fused_gru_vs_grucell": results["fused nn.GRU"] / base,
        "torchdiffeq_tokenode_euler_vs_generated": results["torchdiffeq Euler, TokenODE"] / results["generated Euler GRU-ODE"],
        "torchdiffeq_tokenode_rk4_vs_generated": results["torchdiffeq RK4, TokenODE"] / results["generated RK4 GRU-ODE"],
    }
    print(f"generated Euler / GRUCell loop:            {ratios['euler_vs_grucell']:.2f}  (goal <= 1.15)")
    print(f"generated RK4 / (4 x GRUCell loop):         {ratios['rk4_per_evaluation_vs_grucell']:.2f}  (goal <= 1.15)")
    print(f"torchdiffeq Euler / generated Euler:        {ratios['torchdiffeq_euler_vs_generated']:.2f}  (goal >= 1.5)")
    print(f"torchdiffeq RK4 / generated RK4:            {ratios['torchdiffeq_rk4_vs_generated']:.2f}  (goal >= 1.5)")
    print(f"torchdiffeq Euler, projection per evaluation / generated Euler: "
          f"{ratios['torchdiffeq_tokenode_euler_vs_generated']:.2f}  (goal >= 1.5)")
    print(f"torchdiffeq RK4, projection per evaluation / generated RK4:     "
          f"{ratios['torchdiffeq_tokenode_rk4_vs_generated']:.2f}  (goal >= 1.5)")
    print(f"fused nn.GRU / GRUCell loop (the ceiling):  {ratios['fused_gru_vs_grucell']:.2f}")
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    xs = torch.randn(T, B, I)
    gru_cell = nn.GRUCell(I, H)
    euler = odernn.from_torch(gru_cell)
    rk4 = odernn.cell("gru-ode:rk4", I, H)
    rk4.field.load_state_dict(euler.field.state_dict())
    fused = nn.GRU(I, H)
    field, weights = euler.field, list(euler.parameters())
    results = timed_all({
        "GRUCell loop": training_step(loop(gru_cell, xs), list(gru_cell.parameters())),
        "generated Euler GRU-ODE": training_step(loop(euler, xs), weights),
        "generated RK4 GRU-ODE": training_step(loop(rk4, xs), list(rk4.parameters())),
        "torchdiffeq Euler": training_step(torchdiffeq_loop(hoisted(field), xs, "euler"), weights),
        "torchdiffeq RK4": training_step(torchdiffeq_loop(hoisted(field), xs, "rk4"), weights),
        "torchdiffeq Euler, TokenODE": training_step(torchdiffeq_loop(token_ode(field), xs, "euler"), weights),
        "torchdiffeq RK4, TokenODE": training_step(torchdiffeq_loop(token_ode(field), xs, "rk4"), weights),
        "fused nn.GRU": training_step(lambda: fused(xs)[0][-1], list(fused.parameters())),
    }, args.repeats)
    ratios = report(results, args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"seconds": results, "ratios": ratios}, fh, indent=1)


if __name__ == "__main__":
    main()
