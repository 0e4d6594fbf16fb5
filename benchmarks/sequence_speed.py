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

On a GPU (``--device cuda``) the baselines are cuDNN's ``nn.GRU`` and ``nn.LSTM``, TF32 is off on
both sides (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32``), and
each generated layer is timed four ways — the plain engine, with its elementwise math compiled
(``compile_elementwise``), captured in CUDA graphs (``cuda_graphs``), and both — at B × H = 32 ×
256 and 128 × 1024, in float32 and then in bf16 (autocast on both sides); the goals are judged on
the fastest of the four, which is named. The language-model rows compare ``torch-gru`` with
``gru-ode:euler`` in the engine, plain and with both options.

    python benchmarks/sequence_speed.py [--repeats 9] [--threads 2] [--json out.json] [--device cpu]
    python benchmarks/sequence_speed.py --device cuda [--precision float32|bf16|both] [--json gpu.json]
    python benchmarks/sequence_speed.py --profile lstm:euler     # where the engine's step goes
"""

from __future__ import annotations

import argparse
import contextlib
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
    # implicit tableaux (issue 23): B = 32, E = H = 128, 2 threads
    "gru-ode:backward-euler engine / nn.GRU": (6.0, "<="),
    "gru-ode:alexander2 engine / nn.GRU": (10.0, "<="),
    "gru-ode:radau-iia-3 engine / nn.GRU": (30.0, "<="),
    "gru-ode:dopri5:rtol=1e-3 engine / gru-ode:rk4 engine, per evaluation": (1.2, "<="),
    "LM tokens/s, gru-ode:alexander2 / torch-gru": (0.1, ">="),
}
IMPLICIT = ("gru-ode:backward-euler", "gru-ode:alexander2", "gru-ode:radau-iia-3", "gru-ode:gauss-2")
CUDA_GOALS = {  # judged on the fastest way of running each generated layer; (B, H) None: every shape
    ("gru-ode:euler / nn.GRU", (32, 256)): (1.0, "<="),
    ("gru-ode:rk4 / (4 × nn.GRU), per evaluation", (32, 256)): (0.6, "<="),
    ("gru-ode:euler / nn.GRU", (128, 1024)): (2.0, "<="),
    ("gru-ode:rk4 / (4 × nn.GRU), per evaluation", (128, 1024)): (2.0, "<="),
    ("LM tokens/s, gru-ode:euler fastest / torch-gru", None): (0.7, ">="),
}
WAYS = {"plain": {}, "compiled": {"compile_elementwise": True}, "graphs": {"cuda_graphs": True},
        "compiled + graphs": {"compile_elementwise": True, "cuda_graphs": True}}


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


def layer_step(module, x, precision="float32"):
    """Forward (under autocast for bf16, as a training step runs it) and backward of a sequence
    module over ``x``."""
    parameters = list(module.parameters())

    def step():
        for p in parameters:
            p.grad = None
        with autocast(x.device, precision):
            out, _ = module(x)
        out.float().square().mean().backward()
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


def autocast(device, precision):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


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


def implicit_rows(B, H, device, repeats, sync, T: int = 64, loops: bool = True) -> tuple[dict, dict]:
    """Implicit tableaux in the engine against ``nn.GRU`` (and, with ``loops``, against the per-token
    cell they ran as before the engine took them), at batch ``B``, ``E = H``; an adaptive pair's
    cost per field evaluation against the explicit engine's."""
    torch.manual_seed(0)
    x = torch.randn(T, B, H, device=device)
    steps = {"nn.GRU": layer_step(nn.GRU(H, H).to(device), x),
             "gru-ode:rk4 engine": layer_step(engine("gru-ode:rk4", H, H, device), x)}
    for spec in IMPLICIT:
        steps[f"{spec} engine"] = layer_step(engine(spec, H, H, device), x)
        steps[f"{spec} engine, newton=krylov"] = layer_step(engine(spec + ":newton=krylov", H, H, device), x)
        if loops and spec in IMPLICIT[:2]:
            steps[f"{spec} cell loop"] = cell_loop_step(odernn.cell(spec, H, H).to(device), x)
    adaptive = "gru-ode:dopri5:rtol=1e-3"
    evaluations = {"count": 0, "calls": 0}
    control = odernn.AdaptiveScheme.control

    def counted(self, *args, **kwargs):  # the field evaluations of every token, rejected steps included
        y, n = control(self, *args, **kwargs)
        evaluations["count"] += n
        evaluations["calls"] += 1
        return y, n
    odernn.AdaptiveScheme.control = counted
    try:
        steps[f"{adaptive} engine"] = layer_step(engine(adaptive, H, H, device), x)
        times = round_robin(steps, repeats, sync)
    finally:
        odernn.AdaptiveScheme.control = control
    per_token = evaluations["count"] / evaluations["calls"]
    ratios = {f"{spec} engine / nn.GRU": times[f"{spec} engine"] / times["nn.GRU"] for spec in IMPLICIT}
    ratios.update({f"{spec} engine, newton=krylov / nn.GRU": times[f"{spec} engine, newton=krylov"] / times["nn.GRU"]
                   for spec in IMPLICIT})
    ratios.update({f"{spec} cell loop / engine": times[f"{spec} cell loop"] / times[f"{spec} engine"]
                   for spec in IMPLICIT if f"{spec} cell loop" in times})
    ratios[f"{adaptive} evaluations per token"] = per_token
    ratios[f"{adaptive} engine / gru-ode:rk4 engine, per evaluation"] = (
        times[f"{adaptive} engine"] / (T * per_token)) / (times["gru-ode:rk4 engine"] / (T * 4))
    return times, ratios


def language_model_rows(device, repeats, sync, B=32, T=64, H=256, V=65, precision="float32",
                        variants=None) -> tuple[dict, dict]:
    """Tokens per second of a whole training step of the shared language model, for each variant
    ``name -> (cell, fused, ODERNN options)`` (default: ``torch-gru`` and ``gru-ode:euler`` in the
    engine and on the fused kernel); the ratios of each generated variant to ``torch-gru``."""
    variants = variants or {"torch-gru": ("torch-gru", None, {}),
                            "gru-ode:euler engine": ("gru-ode:euler", False, {}),
                            "gru-ode:euler default": ("gru-ode:euler", True, {})}
    models = {}
    for name, (cell, fused, options) in variants.items():
        torch.manual_seed(0)
        model = LanguageModel(V, cell, hidden=H, **options).to(device)
        if fused is not None:
            model.layers[0].rnn.fused = fused
        models[name] = model
    g = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, V, (B, T), generator=g).to(device) for _ in range(2))

    def train_step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                _, loss, _ = model(idx, targets)
            loss.backward()
            optimizer.step()
        return step

    times = round_robin({name: train_step(m) for name, m in models.items()}, repeats, sync)
    speed = {name: B * T / t for name, t in times.items()}
    ratios = {f"LM tokens/s, {name} / torch-gru": speed[name] / speed["torch-gru"]
              for name in variants if name != "torch-gru"}
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


def way_rows(B, H, device, precision, repeats, sync, T: int = 64, ways=WAYS) -> tuple[dict, dict]:
    """The GPU table at one shape: cuDNN's ``nn.GRU`` and ``nn.LSTM`` and each generated layer run
    every way in ``ways``; ratios of the fastest way (named) against the torch layer of its field."""
    torch.manual_seed(0)
    x = torch.randn(T, B, H, device=device)
    steps = {"nn.GRU": layer_step(nn.GRU(H, H).to(device), x, precision),
             "nn.LSTM": layer_step(nn.LSTM(H, H).to(device), x, precision)}
    if device.type == "cpu" and precision == "bf16":  # oneDNN: no bf16 LSTM without AVX512-BF16 (a CPU smoke run)
        steps["nn.LSTM"] = without_onednn(steps["nn.LSTM"])
    for spec in ("gru-ode:euler", "gru-ode:rk4", "lstm:euler"):
        for way, options in ways.items():
            steps[f"{spec} {way}"] = layer_step(engine(spec, H, H, device, **options), x, precision)
    times = round_robin(steps, repeats, sync)
    ratios, fastest = {}, {}
    for spec, baseline, evaluations in (("gru-ode:euler", "nn.GRU", 1), ("gru-ode:rk4", "nn.GRU", 4),
                                        ("lstm:euler", "nn.LSTM", 1)):
        way = min(ways, key=lambda w: times[f"{spec} {w}"])
        fastest[spec] = way
        name = f"{spec} / {baseline}" if evaluations == 1 else f"{spec} / ({evaluations} × {baseline}), per evaluation"
        ratios[name] = times[f"{spec} {way}"] / (evaluations * times[baseline])
    return times, {"ratios": ratios, "fastest": fastest}


def cuda_language_model_rows(device, precision, repeats, sync, B=32, T=64, H=256, V=65) -> tuple[dict, dict]:
    """The language model's training step on a GPU: ``torch-gru`` (cuDNN) and ``gru-ode:euler`` in
    the engine, plain and with compiled elementwise math in CUDA graphs."""
    ways = ("gru-ode:euler plain", "gru-ode:euler compiled + graphs")
    times, ratios = language_model_rows(device, repeats, sync, B, T, H, V, precision, variants={
        "torch-gru": ("torch-gru", None, {}), ways[0]: ("gru-ode:euler", False, {}),
        ways[1]: ("gru-ode:euler", False, {"compile_elementwise": True, "cuda_graphs": True})})
    fastest = max(ways, key=lambda way: ratios[f"LM tokens/s, {way} / torch-gru"])
    ratios["LM tokens/s, gru-ode:euler fastest / torch-gru"] = ratios[f"LM tokens/s, {fastest} / torch-gru"]
    return times, {"ratios": ratios, "fastest": {"LM": fastest}}


def cuda_main(args, device) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sync = torch.cuda.synchronize
    shapes, T, lm, ways = [(32, 256), (128, 1024)], 64, {}, WAYS
    if args.quick:
        shapes, T, lm = [(2, 8)], 4, {"H": 8, "B": 2, "T": 4}
    precisions = ["float32", "bf16"] if args.precision == "both" else [args.precision]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"device": name, "times_s": {}, "ratios": {}, "fastest": {}}
    for precision in precisions:
        print(f"\n{name}, {precision}{' (autocast on both sides)' if precision == 'bf16' else ''}, TF32 off; one "
              f"layer, forward + backward, T = {T}, E = H; median of {args.repeats}, round-robin")
        if precision == "bf16":  # PyTorch's autocast wrapper for cuDNN RNNs may pick its own dtype: say which
            probe = torch.randn(2, 1, 8, device=device)
            with autocast(device, precision):
                dtype = nn.GRU(8, 8).to(device)(probe)[0].dtype
            print(f"(under this autocast nn.GRU's output is {dtype}; the engine's products are bfloat16)")
        for B, H in shapes:
            times, found = way_rows(B, H, device, precision, args.repeats, sync, T, ways)
            key = f"{precision} B={B},H={H}"
            print(f"\nB = {B}, H = {H}")
            for row, seconds in times.items():
                print(f"  {row:<40}{seconds * 1e3:10.3f} ms")
            for row, value in found["ratios"].items():
                field = row.split(" /")[0]
                goal = CUDA_GOALS.get((row, (B, H)))
                print(f"  {row:<48}{value:6.2f}  fastest: {found['fastest'][field]:<18}"
                      f"{cuda_verdict(goal, value) if goal and not args.quick else ''}")
            results["times_s"][key], results["ratios"][key], results["fastest"][key] = (
                times, found["ratios"], found["fastest"])
        times, found = cuda_language_model_rows(device, precision, args.repeats, sync, **lm)
        print(f"\nlanguage model training step (vocabulary 65, 1 × {lm.get('H', 256)}, batch {lm.get('B', 32)} × bptt "
              f"{lm.get('T', 64)}, AdamW), {precision}")
        for row, seconds in times.items():
            print(f"  {row:<40}{seconds * 1e3:10.3f} ms")
        for row, value in found["ratios"].items():
            goal = CUDA_GOALS.get((row, None))
            print(f"  {row:<56}{value:6.2f}  {cuda_verdict(goal, value) if goal and not args.quick else ''}")
        key = f"{precision} language model"
        results["times_s"][key], results["ratios"][key], results["fastest"][key] = (
            times, found["ratios"], found["fastest"])
    return results


def cuda_verdict(goal, value) -> str:
    bound, sense = goal
    met = value <= bound if sense == "<=" else value >= bound
    return f"goal {sense} {bound}: {'met' if met else 'NOT MET'}"


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
    parser.add_argument("--precision", choices=("float32", "bf16", "both"), default="both",
                        help="with --device cuda: the table in float32, bf16 or both (default)")
    parser.add_argument("--json", help="also write every time and ratio to this file")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run: small sizes, one repeat")
    parser.add_argument("--section", choices=("all", "explicit", "implicit"), default="all",
                        help="which rows: the explicit engine's and the language model's, the implicit "
                             "tableaux' (B = 32, E = H = 128, with the language model on an SDIRK cell), or all")
    parser.add_argument("--profile", metavar="SPEC", help="instead: profile one training step of SPEC's engine "
                        "layer and of the matching torch layer (B = 32, H = 256)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        return profile(args.profile)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.exit(2, "sequence_speed.py: --device cuda: this machine has no CUDA\n")
        results = cuda_main(args, device)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=1)
        return results
    sync = lambda: None  # noqa: E731
    shapes = [(32, 256, True), (32, 64, False), (32, 1024, False), (1, 256, False), (128, 256, False)]
    T, lm = 64, {}
    if args.quick:
        shapes, T, lm = [(2, 8, True), (1, 8, False)], 4, {"H": 8, "B": 2, "T": 4}
    print(f"one layer, forward + backward, T = {T}, E = H, float32, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}, round-robin")
    results = {"times_s": {}, "ratios": {}}
    if args.section in ("all", "implicit"):
        implicit_section(args, device, sync, results)
    if args.section == "implicit":
        return _write(args, results)
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
    print_rows(f"\nlanguage model training step (vocabulary 65, 1 × {lm.get('H', 256)}, batch {lm.get('B', 32)} × bptt "
               f"{lm.get('T', 64)}, AdamW)", times, ratios, judged=True)
    results["times_s"]["language model"] = times
    results["ratios"]["language model"] = ratios
    return _write(args, results)


def print_rows(title: str, times: dict, ratios: dict, judged: bool) -> None:
    """The times in ms, then the ratios with their goals' verdicts (``judged``)."""
    print(title)
    for name, seconds in times.items():
        print(f"  {name:<40}{seconds * 1e3:10.2f} ms")
    for name, value in ratios.items():
        print(f"  {name:<56}{value:6.2f}  {verdict(name, value) if judged else ''}")


def _write(args, results):
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


def implicit_section(args, device, sync, results):
    B, H, lm = (32, 128, {}) if not args.quick else (2, 8, {"H": 8, "B": 2, "T": 4})
    T = 64 if not args.quick else 4
    times, ratios = implicit_rows(B, H, device, args.repeats, sync, T)
    print_rows(f"\nimplicit tableaux, B = {B}, E = H = {H}", times, ratios, judged=not args.quick)
    results["times_s"][f"implicit B={B},H={H}"], results["ratios"][f"implicit B={B},H={H}"] = times, ratios
    variants = {"torch-gru": ("torch-gru", None, {}), "gru-ode:alexander2": ("gru-ode:alexander2", None, {})}
    times, ratios = language_model_rows(device, max(1, args.repeats // 3), sync, variants=variants, **lm)
    print_rows(f"\nlanguage model training step on an SDIRK cell (vocabulary 65, 1 × {lm.get('H', 256)}, "
               f"batch {lm.get('B', 32)} × bptt {lm.get('T', 64)}, AdamW)", times, ratios, judged=not args.quick)
    results["times_s"]["language model, implicit"], results["ratios"]["language model, implicit"] = times, ratios


if __name__ == "__main__":
    main()
