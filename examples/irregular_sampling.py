"""Irregularly sampled sequences: an ODE cell that integrates over each time gap, against ``nn.GRU``
fed the gap as an extra input — same hidden size, batches and number of steps, several seeds.

    python examples/irregular_sampling.py                   # the full comparison (docs/examples.md)
    python examples/irregular_sampling.py --quick           # seconds: the smoke test's size
    python examples/irregular_sampling.py --spec lstm:rk4 --seeds 5

**Task.** Each sequence is a damped oscillator ``x(t) = e^{−γt} cos(ωt + φ)`` (ω, γ, φ drawn per
sequence) observed at random times: the gaps between observations are drawn independently
(``--min-gap`` plus an exponential of mean ``--mean-gap``), and each observation carries Gaussian
noise (``--noise``). At every token ``k`` the model has seen the observations up to ``t_k`` and the
time ``t_{k+1}`` of the next one, and predicts its noiseless value ``x(t_{k+1})``. The loss is the
mean squared error over the tokens after the first ``--burn-in`` (which cannot know ω yet).

**Models** (one recurrent layer of ``--hidden`` units and a linear head, the model's last state
per token):

- ``ODERNN(spec), dt = gap``: the ODE cell receives the observation as its input and integrates
  its state over the gap to the next observation, ``rnn(x, dt=gaps)`` with ``gaps`` of shape
  ``(B, T)`` (``batch_first``): the state it predicts from is the state at ``t_{k+1}``.
- ``nn.GRU, gap as input``: the discrete GRU with ``(observation, gap)`` as its input.
- ``ODERNN(spec), Δ = 1, gap as input`` (``--ablation``): the same ODE cell with a fixed step and
  the gap as an input, as the GRU gets it: what the integration over the gap itself contributes.

Reference predictors (no training): the last observation, and zero (the signal's variance).

Prints a Markdown table of the test MSE (mean ± std over ``--seeds``), the untrained MSE,
parameters and training seconds per model. Whichever model wins is what the table says.
"""

import argparse
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import odernn
import stability

TEST_SEED = 12345  # the test set, the same for every model and seed


def oscillators(batch: int, args, generator: torch.Generator):
    """Observations ``(B, T, 1)``, the gaps to the next observation ``(B, T)`` and the targets
    ``x(t_{k+1})`` ``(B, T)`` of ``batch`` damped oscillators sampled at random times."""
    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    omega, gamma, phase = uniform(*args.omega, batch, 1), uniform(0.0, args.max_damping, batch, 1), \
        uniform(0.0, 2 * math.pi, batch, 1)
    exponential = -torch.log1p(-torch.rand(batch, args.length, generator=generator))  # Exp(1)
    gaps = args.min_gap + args.mean_gap * exponential  # gaps[:, k] = t_{k+1} − t_k
    times = torch.cat([torch.zeros(batch, 1), gaps.cumsum(1)], dim=1)  # t_0 … t_T
    clean = torch.exp(-gamma * times) * torch.cos(omega * times + phase)
    observed = clean[:, :-1] + args.noise * torch.randn(batch, args.length, generator=generator)
    return observed[..., None], gaps, clean[:, 1:]


class Forecaster(nn.Module):
    """One recurrent layer → linear head; the ODE cell gets the gaps as its steps (``dt``) or,
    like the GRU, as a second input feature."""

    def __init__(self, rnn: nn.Module, gaps_as_steps: bool):
        super().__init__()
        self.rnn, self.gaps_as_steps = rnn, gaps_as_steps
        self.head = nn.Linear(rnn.hidden_size, 1)

    def forward(self, observed, gaps):  # (B, T, 1), (B, T)
        if self.gaps_as_steps:
            out, _ = self.rnn(observed, dt=gaps)
        else:
            out, _ = self.rnn(torch.cat([observed, gaps[..., None]], dim=-1))
        return self.head(out).squeeze(-1)  # (B, T)

    def stability(self, largest_gap: float) -> str:
        """``stability.check`` of the ODE cell at the largest step it takes: the verdict and the
        largest stable Δ at its weights ("–" for ``nn.GRU``)."""
        if not isinstance(self.rnn, odernn.ODERNN):
            return "–"
        report = stability.check(self.rnn.cells[0], dt=largest_gap if self.gaps_as_steps else None)
        return f"{report.verdict} at Δ = {report.step * self.rnn.cells[0].steps:.3g} (largest stable Δ {report.max_stable_dt:.3g})"


def models(args) -> dict:
    H = args.hidden
    made = {f"ODERNN({args.spec!r}), dt = gap": lambda: Forecaster(
                odernn.ODERNN(args.spec, 1, H, batch_first=True), gaps_as_steps=True),
            "nn.GRU, gap as input": lambda: Forecaster(nn.GRU(2, H, batch_first=True), gaps_as_steps=False)}
    if args.ablation:
        made[f"ODERNN({args.spec!r}), Δ = 1, gap as input"] = lambda: Forecaster(
            odernn.ODERNN(args.spec, 2, H, batch_first=True), gaps_as_steps=False)
    return made


def mse(prediction, target, burn_in: int) -> torch.Tensor:
    return F.mse_loss(prediction[:, burn_in:], target[:, burn_in:])


def train(model: Forecaster, args, seed: int) -> float:
    """``args.steps`` Adam steps on fresh batches (the same batches for every model of a seed); seconds taken."""
    generator = torch.Generator().manual_seed(1000 + seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps, eta_min=args.lr / 10)
    started = time.perf_counter()
    for _ in range(args.steps):
        observed, gaps, target = oscillators(args.batch_size, args, generator)
        loss = mse(model(observed, gaps), target, args.burn_in)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return time.perf_counter() - started


def compare(args) -> dict:
    """``{model: [{"mse", "untrained", "seconds", "parameters", "stability"} per seed]}`` and the
    reference predictors."""
    test = oscillators(args.test_size, args, torch.Generator().manual_seed(TEST_SEED))
    observed, gaps, target = test
    results = {"last observation (no training)": [{"mse": mse(observed[..., 0], target, args.burn_in).item()}],
               "zero (no training)": [{"mse": mse(torch.zeros_like(target), target, args.burn_in).item()}]}
    for seed in range(args.seeds):
        for name, build in models(args).items():
            torch.manual_seed(seed)
            model = build()
            with torch.no_grad():
                untrained = mse(model(observed, gaps), target, args.burn_in).item()
            seconds = train(model, args, seed)
            with torch.no_grad():
                trained = mse(model(observed, gaps), target, args.burn_in).item()
            results.setdefault(name, []).append({"mse": trained, "untrained": untrained, "seconds": seconds,
                                                 "parameters": sum(p.numel() for p in model.parameters()),
                                                 "stability": model.stability(gaps.max().item())})
    return results


def summary(values) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def print_table(results: dict, args) -> None:
    print(f"## Next-value prediction on irregularly sampled damped oscillators\n\n{args.steps} Adam steps of "
          f"{args.batch_size} sequences of {args.length} observations, hidden {args.hidden}, "
          f"{args.seeds} seed(s), test set of {args.test_size} sequences; MSE after the first {args.burn_in} tokens\n")
    print("| model | test MSE | untrained MSE | parameters | training seconds | stability check, trained (seed 0) |\n"
          "|---|---|---|---|---|---|")
    for name, runs in results.items():
        cells = [summary([r[key] for r in runs]) if key in runs[0] else "–" for key in ("mse", "untrained")]
        extra = (f"{runs[0]['parameters']} | {summary([r['seconds'] for r in runs])} | {runs[0]['stability']}"
                 if "seconds" in runs[0] else "– | – | –")
        print(f"| {name} | {cells[0]} | {cells[1]} | {extra} |")


QUICK = {"hidden": 8, "length": 12, "burn_in": 2, "steps": 25, "batch_size": 16, "test_size": 64, "seeds": 2,
         "lr": 0.01}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--spec", default="gru-ode:rk4", help="the ODE cell (a cell spec; its dt is replaced by the gaps)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units of every model")
    parser.add_argument("--length", type=int, default=40, help="observations per sequence")
    parser.add_argument("--burn-in", type=int, default=5, help="tokens left out of the MSE")
    parser.add_argument("--omega", type=float, nargs=2, default=(1.0, 3.0), metavar=("LOW", "HIGH"),
                        help="angular frequencies, drawn uniformly")
    parser.add_argument("--max-damping", type=float, default=0.1, help="damping rates γ, drawn from [0, this]")
    parser.add_argument("--min-gap", type=float, default=0.05, help="shortest time gap")
    parser.add_argument("--mean-gap", type=float, default=0.4, help="mean of the exponential part of the gaps")
    parser.add_argument("--noise", type=float, default=0.05, help="observation noise (standard deviation)")
    parser.add_argument("--steps", type=int, default=400, help="training steps per model and seed")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step")
    parser.add_argument("--test-size", type=int, default=512, help="test sequences")
    parser.add_argument("--lr", type=float, default=0.005, help="Adam learning rate (cosine decay to a tenth)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                        help="also train the ODE cell with Δ = 1 and the gap as an input")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long run at toy sizes (" + ", ".join(f"{k}={v}" for k, v in QUICK.items()) + ")")
    args = parser.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    if min(args.hidden, args.length, args.steps, args.batch_size, args.test_size, args.seeds) < 1:
        parser.error("--hidden, --length, --steps, --batch-size, --test-size and --seeds must be at least 1")
    if not 0 <= args.burn_in < args.length:
        parser.error("--burn-in must be in 0 .. --length − 1")
    if args.min_gap <= 0 or args.mean_gap < 0 or args.noise < 0 or args.max_damping < 0:
        parser.error("--min-gap must be greater than 0; --mean-gap, --noise and --max-damping at least 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        odernn.cell(args.spec, 1, args.hidden)
    except odernn.CellSpecError as err:
        print(f"irregular_sampling.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    results = compare(args)
    print_table(results, args)
    return results


if __name__ == "__main__":
    main()
