"""Peak memory and time of one training step against the solver steps per token (1 → 64), for
the three gradient modes of the trainer.

    python benchmarks/adjoint_memory.py [--cell gru-ode:rk4] [--steps 1 2 4 8 16 32 64]

Memory: each (mode, steps) in a fresh process, the bytes the C allocator holds (glibc
``mallinfo2``: in-use heap plus mmapped blocks, where PyTorch's CPU tensors live) at the end of the
forward pass minus before it — the activations and graph kept for the backward pass, which is the
peak of a training step (the adjoint's backward solve adds working memory independent of the
steps). Time: the three modes of one step count in one process, timed round-robin (so that the
machine's drift hits them alike), the median of ``--repeats`` after a warm-up. Goals:
``checkpoint`` and ``adjoint`` flat in the steps (≤ 10 % growth from 1 to 64), ``backprop``
growing, and ``adjoint`` at most 2.5× the time of ``backprop`` at the same steps.
"""

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

MODES = ("backprop", "checkpoint", "adjoint")


def _training_step(cell: str, steps: int, mode: str, hidden: int, batch: int, bptt: int, held: list | None):
    import torch

    from textlm.memory import allocated_bytes
    from textlm.model import LanguageModel
    torch.manual_seed(0)
    model = LanguageModel(65, f"{cell}:steps={steps}", hidden=hidden, grad=mode)
    idx = torch.randint(0, 65, (batch, bptt + 1))

    def step():
        model.zero_grad(set_to_none=True)
        if held is None:  # timed
            _, loss, _ = model(idx[:, :-1], idx[:, 1:])
        else:
            gc.collect()  # no collection inside the measured forward pass: freeing earlier garbage
            gc.disable()  # there would count against what the pass keeps (it came out negative)
            try:
                before = allocated_bytes()
                _, loss, _ = model(idx[:, :-1], idx[:, 1:])
                held.append(allocated_bytes() - before)
            finally:
                gc.enable()
        loss.backward()
    return step


def one(cell: str, steps: int, mode: str, hidden: int, batch: int, bptt: int) -> dict:
    """The memory one mode holds for the backward pass (run it in a fresh process)."""
    import torch
    torch.set_num_threads(1)
    held = []
    step = _training_step(cell, steps, mode, hidden, batch, bptt, held)
    for _ in range(3):
        step()
    return {"mode": mode, "steps": steps, "peak_mb": statistics.median(held[1:]) / 2**20}


def timed(cell: str, steps: int, hidden: int, batch: int, bptt: int, repeats: int) -> dict:
    """Median seconds of a training step in each mode, the modes timed round-robin."""
    import torch
    torch.set_num_threads(1)
    runs = {mode: _training_step(cell, steps, mode, hidden, batch, bptt, None) for mode in MODES}
    for step in runs.values():
        step()
    times = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, step in runs.items():
            start = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="gru-ode:rk4")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--bptt", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each mode (default: 5)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, steps = args.one[0], int(args.one[1])
        print(json.dumps(one(args.cell, steps, mode, args.hidden, args.batch, args.bptt)))
        return
    results = {}
    for steps in args.steps:
        for mode in MODES:
            proc = subprocess.run([sys.executable, __file__, "--one", mode, str(steps), "--cell", args.cell,
                                   "--hidden", str(args.hidden), "--batch", str(args.batch), "--bptt", str(args.bptt)],
                                  capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                continue
            results[mode, steps] = json.loads(proc.stdout.strip().splitlines()[-1])
        for mode, seconds in timed(args.cell, steps, args.hidden, args.batch, args.bptt, args.repeats).items():
            if (mode, steps) in results:
                results[mode, steps]["seconds"] = seconds
        print(f"done {steps} steps: {[results.get((m, steps)) for m in MODES]}", file=sys.stderr, flush=True)
    print(f"\n{args.cell}, hidden {args.hidden}, batch {args.batch} × bptt {args.bptt}, one thread; "
          "peak = memory held for the backward pass at the end of the forward pass (MiB); "
          f"s = median of {args.repeats} steps, the modes timed round-robin\n")
    print("| steps/token | " + " | ".join(f"{m} peak MB | {m} s" for m in MODES) + " | adjoint / backprop time |")
    print("|---|" + "---|---|" * len(MODES) + "---|")
    for steps in args.steps:
        cells = []
        for mode in MODES:
            r = results.get((mode, steps))
            cells += [f"{r['peak_mb']:.1f}", f"{r['seconds']:.3f}"] if r else ["—", "—"]
        a, b = results.get(("adjoint", steps)), results.get(("backprop", steps))
        ratio = f"{a['seconds'] / b['seconds']:.2f}" if a and b else "—"
        print(f"| {steps} | " + " | ".join(cells) + f" | {ratio} |")
    first, last = min(args.steps), max(args.steps)
    for mode in MODES:
        if (mode, first) in results and (mode, last) in results:
            lo, hi = results[mode, first]["peak_mb"], results[mode, last]["peak_mb"]
            print(f"{mode}: peak {lo:.1f} MB at {first} step(s) → {hi:.1f} MB at {last} "
                  f"({(hi - lo) / max(lo, 1e-9) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
