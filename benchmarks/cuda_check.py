"""Is the CUDA path right? Equality checks of ``odernn.ODERNN`` and the trainer on a GPU, as a script.

Run it unchanged on a GPU machine (``--device cpu`` runs the same checks on the CPU, where CUDA
graphs do not apply, to test the script itself):

    python benchmarks/cuda_check.py                    # every check; exit code 1 if any fails
    python benchmarks/cuda_check.py --quick            # a minute: fewer specs and sizes

1. **Layers**: for built-in fields on explicit tableaux, in both memory modes, with 2 layers, a
   bidirectional layer, and each way of running (plain engine, compiled elementwise math, CUDA
   graphs, both): outputs, final states and every gradient of float32 on the device (TF32 off)
   against float64 on the CPU, on fresh random inputs each call (so that graph replays see new
   data). "Within float32 round-off" is measured, not assumed: the same layer in float32 on the
   CPU gives the round-off level, and the device must stay within ``--factor`` (default 10) of it.
   Token-by-token cells (implicit, adaptive, the continuous adjoint), per-token gaps ``dt`` and
   variable lengths run the plain path and are held to the same standard.
2. **bf16**: under autocast, the device's result against float64 within bf16 round-off (2 %).
3. **Training**: an interrupted run resumed on the device ends with bit-identical weights to an
   uninterrupted one (with and without CUDA graphs), and a checkpoint trained on the device
   evaluates on the CPU to the loss it had.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

import odernn

SPECS = ["rnn:euler", "gru-ode:euler", "gru-ode:rk4", "gru-ode:dopri5:steps=2", "lstm:euler",
         "lstm:rk4:partitioned=false", "antisymmetric:ssprk3", "cornn:rk4"]
TOKEN_BY_TOKEN = [("gru-ode:dopri5:rtol=1e-6:atol=1e-8", "backprop"), ("rnn:gauss-2", "backprop"),
                  ("gru-ode:rk4", "adjoint")]
WAYS = {"plain": {}, "compiled": {"compile_elementwise": True}, "graphs": {"cuda_graphs": True},
        "compiled + graphs": {"compile_elementwise": True, "cuda_graphs": True}}


def run(rnn, x, hx=None, **kwargs):
    """Outputs, final blocks and the gradients (input, every parameter) of a fixed loss of both."""
    x = x.clone().requires_grad_()
    out, h_n = rnn(x, hx, **kwargs)
    blocks = (h_n,) if isinstance(h_n, torch.Tensor) else tuple(h_n)
    loss = out.float().square().mean() + sum(b.float().sin().sum() for b in blocks)
    grads = torch.autograd.grad(loss, [x, *rnn.parameters()])
    return [t.detach().cpu().double() for t in (out, *blocks, *grads)]


def worst(result, reference) -> float:
    """The largest relative error (norm of the difference / norm of the reference) over tensors."""
    return max(float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(result, reference))


class Checks:
    def __init__(self):
        self.rows, self.failed = [], 0

    def add(self, what: str, error: float, bound: float) -> None:
        ok = error <= bound
        self.failed += not ok
        self.rows.append((what, error, bound, ok))
        print(f"  {'ok  ' if ok else 'FAIL'} {what:<72} {error:9.2e} ≤ {bound:8.2e}", flush=True)


def layer_checks(checks: Checks, device, specs, ways, factor: float, draws: int, T: int, B: int, H: int) -> None:
    print(f"\nlayers: float32 on {device} against float64 on the CPU (bound: {factor:g} × the CPU's float32 error)")
    for spec in specs:
        for grad in ("backprop", "checkpoint"):
            for layout in ({"num_layers": 2}, {"bidirectional": True}):
                torch.manual_seed(0)
                exact = odernn.ODERNN(spec, H, H, fused=False, grad=grad, **layout).double()
                single = odernn.ODERNN(spec, H, H, fused=False, grad=grad, **layout)
                single.load_state_dict(exact.state_dict())
                for way, options in ways.items():
                    rnn = odernn.ODERNN(spec, H, H, fused=False, grad=grad, **layout, **options).to(device)
                    rnn.load_state_dict(exact.state_dict())
                    errors, levels = [], []
                    for draw in range(draws):
                        x = torch.randn(T, B, H, generator=torch.Generator().manual_seed(draw))
                        reference = run(exact, x.double())
                        levels.append(worst(run(single, x), reference))
                        errors.append(worst(run(rnn, x.to(device)), reference))
                    level = max(levels)
                    what = f"{spec} {grad} {'2 layers' if 'num_layers' in layout else 'bidirectional'} {way}"
                    checks.add(what, max(errors), factor * level + 1e-12)


def irregular_checks(checks: Checks, device, factor: float, T: int, B: int, H: int) -> None:
    print(f"\ngaps, lengths and token-by-token cells on {device}")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, H, generator=g)
    dt = 0.5 + torch.rand(T, B, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    cases = [("gru-ode:rk4 with per-token dt", "gru-ode:rk4", "backprop", {"dt": dt}),
             ("lstm:euler with lengths", "lstm:euler", "backprop", {"lengths": lengths})]
    cases += [(f"{spec} {grad}", spec, grad, {}) for spec, grad in TOKEN_BY_TOKEN]
    for what, spec, grad, extra in cases:
        torch.manual_seed(0)
        exact = odernn.ODERNN(spec, H, H, fused=False, grad=grad).double()
        single = odernn.ODERNN(spec, H, H, fused=False, grad=grad)
        single.load_state_dict(exact.state_dict())
        rnn = odernn.ODERNN(spec, H, H, fused=False, grad=grad).to(device)
        rnn.load_state_dict(exact.state_dict())
        on = {k: (v.to(device) if k == "dt" else v) for k, v in extra.items()}
        reference = run(exact, x.double(), **{k: (v.double() if k == "dt" else v) for k, v in extra.items()})
        level = worst(run(single, x, **extra), reference)
        checks.add(what, worst(run(rnn, x.to(device), **on), reference), factor * level + 1e-12)


def bf16_checks(checks: Checks, device, specs, T: int, B: int, H: int) -> None:
    print(f"\nbf16 autocast on {device} against float64 on the CPU (bound: 2 %)")
    for spec in specs:
        torch.manual_seed(0)
        exact = odernn.ODERNN(spec, H, H, num_layers=2, fused=False).double()
        rnn = odernn.ODERNN(spec, H, H, num_layers=2, fused=False).to(device)
        rnn.load_state_dict(exact.state_dict())
        x = torch.randn(T, B, H, generator=torch.Generator().manual_seed(2))
        reference = run(exact, x.double())
        with torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):
            x_dev = x.to(device).requires_grad_()
            out, h_n = rnn(x_dev)
        blocks = (h_n,) if isinstance(h_n, torch.Tensor) else tuple(h_n)
        loss = out.float().square().mean() + sum(b.float().sin().sum() for b in blocks)
        grads = torch.autograd.grad(loss, [x_dev, *rnn.parameters()])
        result = [t.detach().cpu().double() for t in (out, *blocks, *grads)]
        checks.add(f"{spec} bf16", worst(result, reference), 2e-2)


def training_checks(checks: Checks, device, graphs: list[bool]) -> None:
    from textlm.checkpoint import load_checkpoint
    from textlm.evaluate import evaluate_loss
    from textlm.model import LanguageModel
    from textlm.train import TrainConfig, Trainer, TrainingInterrupted
    print(f"\ntraining on {device}")
    for cuda_graphs in graphs:
        with tempfile.TemporaryDirectory() as folder:
            def config(name):
                return TrainConfig(corpus="tinyshakespeare", train_tokens=20_000, valid_tokens=2000, cell="gru-ode:midpoint", layers=2,
                                   hidden=32, batch_size=8, bptt=16, max_tokens=8 * 16 * 10, dropout=0.2,
                                   out=str(Path(folder) / name), progress=False, eval_tokens=2000,
                                   device=str(device), cuda_graphs=cuda_graphs)
            straight = Trainer(config("a"))
            result = straight.run()
            interrupted = Trainer(config("b"))
            step, calls = interrupted.optimizer.step, {"n": 0}

            def step_then_interrupt(*args, **kwargs):
                calls["n"] += 1
                out = step(*args, **kwargs)
                if calls["n"] == 5:
                    raise KeyboardInterrupt
                return out
            interrupted.optimizer.step = step_then_interrupt
            try:
                interrupted.run()
            except TrainingInterrupted:
                pass
            resumed = Trainer(config("b"), resume=True)
            resumed.run()
            a, b = straight.model.state_dict(), resumed.model.state_dict()
            different = sum(not torch.equal(a[k], b[k]) for k in a)
            checks.add(f"resume is bit-exact on {device}{' with CUDA graphs' if cuda_graphs else ''} "
                       "(weights that differ)", different, 0)
            data = load_checkpoint(Path(folder) / "a")
            model = LanguageModel.from_checkpoint(data, "cpu")
            corpus = straight.corpus
            cpu_loss = evaluate_loss(model, corpus.valid)
            checks.add(f"a checkpoint from {device} evaluated on the CPU (|Δ valid loss|)",
                       abs(cpu_loss - result["valid_loss"]), 1e-4)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to test the script")
    parser.add_argument("--quick", action="store_true", help="three specs, small sizes, one draw")
    parser.add_argument("--factor", type=float, default=10.0,
                        help="allowed multiple of the CPU's float32 round-off (default 10)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, "cuda_check.py: no CUDA on this machine (use --device cpu to test the script)\n")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    quick = args.quick
    specs = ["gru-ode:rk4", "lstm:euler", "cornn:rk4"] if quick else SPECS
    ways = WAYS if device.type == "cuda" else {"plain": {}, "compiled": {"compile_elementwise": True}}
    T, B, H, draws = (6, 3, 8, 3) if quick else (24, 16, 64, 3)  # 3 draws: eager, captured, replayed
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, PyTorch {torch.__version__}, "
          "TF32 off")
    checks = Checks()
    layer_checks(checks, device, specs, ways, args.factor, draws, T, B, H)
    irregular_checks(checks, device, args.factor, T, B, H)
    bf16_checks(checks, device, specs, T, B, H)
    training_checks(checks, device, [False, True] if device.type == "cuda" else [False])
    print(f"\n{len(checks.rows) - checks.failed} of {len(checks.rows)} checks passed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
