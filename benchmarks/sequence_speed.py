"""Speed of ``odernn.ODERNN`` against PyTorch's fused recurrent layers, as ratios measured in one run.

One training step = forward and backward of one layer over T = 64 tokens (loss: mean square of the
outputs), float32. The variants of each row are timed round-robin, so that the machine's drift (it
is shared and noisy) hits all of them alike; each figure is the median over ``--repeats``.

- ``engine``: the sequence engine (``fused=False``): the backward pass generated from the tableau;
- ``fused kernel``: the default ``ODERNN`` of a spec that equals ``nn.GRU``/``nn.LSTM`` (forward
  Euler, Δ = 1), which hands the layers to PyTorch's own kernel (oneDNN here, cuDNN on a GPU);
- ``cell loop``: the per-token ``odernn.cell`` under autograd, what ``textlm`` ran before ``ODERNN``;
- ``nn.LSTM, oneDNN off``: on a CPU ``nn.LSTM`` is oneDNN's fused LSTM primitive; this row is
  PyTorch's own implementation of it, for comparison.

The language-model row trains ``textlm.LanguageModel`` (vocabulary 65, one layer of 256, batch 32
× bptt 64, AdamW): tokens per second of the whole step, optimiser included.

    python benchmarks/sequence_speed.py [--repeats 9] [--threads 2] [--json out.json] [--device cpu]
    python benchmarks/sequence_speed.py --profile lstm:euler     # where the engine's step goes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
from torch import nn

import odernn
from textlm.model import LanguageModel

GOALS = {  # (row, goal, "<=" or ">=")
    "gru-ode:euler engine / nn.GRU": (1.2, "<="),
    "gru-ode:rk4 engine / (4 × nn.GRU), per evaluation": (1.0, "<="),
    "gru-ode:rk4 engine / nn.GRU": (4.0, "<="),
    "lstm:euler engine / nn.LSTM": (1.2, "<="),
    "lstm:euler default (fused kernel) / nn.LSTM": (1.2, "<="),
    "LM tokens/s, gru-ode:euler engine / torch-gru": (0.9, ">="),
    "LM tokens/s, gru-ode:euler default / torch-gru": (0.9, ">="),
}


def round_robin(steps: dict, repeats: int, sync) -> dict:
    """Median seconds of each step, the steps timed in turn ``repeats`` times after a warm-up."""
    for step in steps.values():
        step()
        step()
    sync()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def layer_step(module, x):
    """Forward and backward of a sequence module over ``x``."""
    parameters = list(module.parameters())

    def step():
        for p in parameters:
            p.grad = None
        out, _ = module(x)
        out.square().mean().backward()
    return step


def cell_loop_step(cell, x):
    """The per-token cell under autograd, as ``textlm`` ran it before ``ODERNN``."""
    parameters = list(cell.parameters())

    def step():
        for p in parameters:
            p.grad = None
        state, outputs = None, []
        for x_t in x:
            state = cell(x_t, state)
            outputs.append(state if isinstance(state, torch.Tensor) else state[0])
        torch.stack(outputs).square().mean().backward()
    return step


def without_onednn(step):
    """On a CPU ``nn.LSTM`` runs oneDNN's fused LSTM; this is PyTorch's own per-token loop instead."""
    def run():
        with warnings.catch_warnings():  # the flags' setter warns about TF32 on Intel GPUs
            warnings.simplefilter("ignore")
            with torch.backends.mkldnn.flags(enabled=False):
                step()
    return run


def engine(spec, E, H, device, **options):
    return odernn.ODERNN(spec, E, H, fused=False, **options).to(device)


def layer_rows(B, H, device, repeats, sync, full: bool, T: int = 64) -> tuple[dict, dict]:
    """Times of the layer variants at batch ``B``, width ``E = H``, and their ratios."""
    torch.manual_seed(0)
    x = torch.randn(T, B, H, device=device)
    gru, lstm = nn.GRU(H, H).to(device), nn.LSTM(H, H).to(device)
    steps = {"nn.GRU": layer_step(gru, x),
             "gru-ode:euler engine": layer_step(engine("gru-ode:euler", H, H, device), x),
             "gru-ode:rk4 engine": layer_step(engine("gru-ode:rk4", H, H, device), x)}
    if full:
        fused_lstm = odernn.ODERNN("lstm:euler", H, H).to(device)
        steps.update({
            "gru-ode:euler default (fused kernel)": layer_step(odernn.ODERNN("gru-ode:euler", H, H).to(device), x),
            "gru-ode:rk4 engine, checkpoint": layer_step(engine("gru-ode:rk4", H, H, device, grad="checkpoint"), x),
            "gru-ode:euler cell loop": cell_loop_step(odernn.cell("gru-ode:euler", H, H).to(device), x),
            "gru-ode:rk4 cell loop": cell_loop_step(odernn.cell("gru-ode:rk4", H, H).to(device), x),
            "nn.LSTM": layer_step(lstm, x),
            "nn.LSTM, oneDNN off": without_onednn(layer_step(lstm, x)),
            "lstm:euler engine": layer_step(engine("lstm:euler", H, H, device), x),
            "lstm:euler default (fused kernel)": layer_step(fused_lstm, x),
        })
    times = round_robin(steps, repeats, sync)
    gru_time = times["nn.GRU"]
    ratios = {"gru-ode:euler engine / nn.GRU": times["gru-ode:euler engine"] / gru_time,
              "gru-ode:rk4 engine / (4 × nn.GRU), per evaluation": times["gru-ode:rk4 engine"] / (4 * gru_time),
              "gru-ode:rk4 engine / nn.GRU": times["gru-ode:rk4 engine"] / gru_time}
    if full:
        ratios.update({
            "gru-ode:euler default (fused kernel) / nn.GRU": times["gru-ode:euler default (fused kernel)"] / gru_time,
            "gru-ode:rk4 checkpoint / gru-ode:rk4 stored": times["gru-ode:rk4 engine, checkpoint"]
            / times["gru-ode:rk4 engine"],
            "gru-ode:euler cell loop / engine": times["gru-ode:euler cell loop"] / times["gru-ode:euler engine"],
            "gru-ode:rk4 cell loop / engine": times["gru-ode:rk4 cell loop"] / times["gru-ode:rk4 engine"],
            "lstm:euler engine / nn.LSTM": times["lstm:euler engine"] / times["nn.LSTM"],
            "lstm:euler default (fused kernel) / nn.LSTM": times["lstm:euler default (fused kernel)"] / times["nn.LSTM"],
            "lstm:euler engine / nn.LSTM with oneDNN off": times["lstm:euler engine"] / times["nn.LSTM, oneDNN off"],
        })
    return times, ratios


def language_model_rows(device, repeats, sync, B=32, T=64, H=256, V=65) -> tuple[dict, dict]:
    """Tokens per second of a whole training step of the shared language model."""
    models = {}
    for name, cell, fused in (("torch-gru", "torch-gru", None), ("gru-ode:euler engine", "gru-ode:euler", False),
                              ("gru-ode:euler default", "gru-ode:euler", True)):
        torch.manual_seed(0)
        model = LanguageModel(V, cell, hidden=H).to(device)
        if fused is not None:
            model.layers[0].rnn.fused = fused
        models[name] = model
    g = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, V, (B, T), generator=g).to(device) for _ in range(2))

    def train_step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            _, loss, _ = model(idx, targets)
            loss.backward()
            optimizer.step()
        return step

    times = round_robin({name: train_step(m) for name, m in models.items()}, repeats, sync)
    speed = {name: B * T / t for name, t in times.items()}
    ratios = {"LM tokens/s, gru-ode:euler engine / torch-gru": speed["gru-ode:euler engine"] / speed["torch-gru"],
              "LM tokens/s, gru-ode:euler default / torch-gru": speed["gru-ode:euler default"] / speed["torch-gru"]}
    return {f"LM {name}": t for name, t in times.items()}, ratios


def profile(spec: str, B: int = 32, H: int = 256, T: int = 64, steps: int = 3) -> None:
    """Where one training step of the engine's ``spec`` layer spends its time, next to the torch
    layer of the same field (``torch.profiler``, self CPU time per operator)."""
    from torch.profiler import profile as torch_profile

    x = torch.randn(T, B, H)
    field = spec.split(":")[0]
    baseline = {"lstm": nn.LSTM, "rnn": nn.RNN}.get(field, nn.GRU)
    for name, module in ((f"{spec} engine", engine(spec, H, H, "cpu")), (baseline.__name__, baseline(H, H))):
        step = layer_step(module, x)
        step()
        with torch_profile() as prof:
            for _ in range(steps):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
        products = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm")) / steps / 1e3
        print(f"\n{name}: {total:.1f} ms of operators per step (under the profiler), of which matrix products "
              f"(mm, addmm) {products:.1f} ms")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]:
            print(f"  {e.key:<40}{e.self_cpu_time_total / steps / 1e3:8.2f} ms  {e.count // steps:6d} calls")


def verdict(name, value):
    if name not in GOALS:
        return ""
    goal, sense = GOALS[name]
    met = value <= goal if sense == "<=" else value >= goal
    return f"goal {sense} {goal}: {'met' if met else 'NOT MET'}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs of each variant (default: 9)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on the CPU (default: 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--json", help="also write every time and ratio to this file")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: small sizes, one repeat")
    parser.add_argument("--profile", metavar="SPEC", help="instead: profile one training step of SPEC's engine "
                        "layer and of the matching torch layer (B = 32, H = 256)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        return profile(args.profile)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    shapes = [(32, 256, True), (32, 64, False), (32, 1024, False), (1, 256, False), (128, 256, False)]
    T, lm = 64, {}
    if args.quick:
        shapes, T, lm = [(2, 8, True), (1, 8, False)], 4, {"H": 8, "B": 2, "T": 4}
    print(f"one layer, forward + backward, T = {T}, E = H, float32, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}, round-robin")
    results = {"times_s": {}, "ratios": {}}
    for B, H, full in shapes:
        times, ratios = layer_rows(B, H, device, args.repeats, sync, full, T)
        print(f"\nB = {B}, H = {H}")
        for name, seconds in times.items():
            print(f"  {name:<40}{seconds * 1e3:10.2f} ms")
        for name, value in ratios.items():
            print(f"  {name:<56}{value:6.2f}  {verdict(name, value) if (B, H) == (32, 256) else ''}")
        results["times_s"][f"B={B},H={H}"] = times
        results["ratios"][f"B={B},H={H}"] = ratios
    times, ratios = language_model_rows(device, args.repeats, sync, **lm)
    print(f"\nlanguage model training step (vocabulary 65, 1 × {lm.get('H', 256)}, batch {lm.get('B', 32)} × bptt "
          f"{lm.get('T', 64)}, AdamW)")
    for name, seconds in times.items():
        print(f"  {name:<40}{seconds * 1e3:10.2f} ms")
    for name, value in ratios.items():
        print(f"  {name:<56}{value:6.2f}  {verdict(name, value)}")
    results["times_s"]["language model"] = times
    results["ratios"]["language model"] = ratios
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
