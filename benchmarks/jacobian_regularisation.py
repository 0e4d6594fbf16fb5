"""What ``--jac-reg λ`` costs and what it changes: the same cell, seed, data and budget trained
with λ = 0 (the baseline, in the same run) and with each λ given; for each run the training speed
(ratio to the baseline), the validation perplexity, and the norms ‖R(hJ_k)‖ of the linearised
step at 48 states along a validation trajectory (``stability.check(...).step_norms``): their
standard deviation and mean squared distance from 1.

    ODERNN_DATA=../shared/data python benchmarks/jacobian_regularisation.py \\
        --cell lem --hidden 200 --max-tokens 500000 --lambdas 0.1 1 --seeds 0 1

Prints a Markdown table; docs/results.md §7 quotes its run.
"""

import argparse
import math
import tempfile

import numpy as np

import stability
from textlm.train import TrainConfig, Trainer


def measure(args, lam: float, seed: int, out: str) -> dict:
    config = TrainConfig(corpus=args.corpus, cell=args.cell, hidden=args.hidden, max_tokens=args.max_tokens,
                         batch_size=32, bptt=64, lr=2e-3, seed=seed, jac_reg=lam, out=out, progress=False,
                         eval_tokens=args.eval_tokens, checkpoint_every=10**9, log_every=10**9)
    trainer = Trainer(config)
    result = trainer.run()
    idx = trainer.corpus.split("valid")[:64][None]
    norms = []
    for _, cell, inputs in trainer.model.ode_layer_inputs(idx):
        norms.append(stability.check(cell, inputs=inputs, samples=48).step_norms[1:])  # [0]: the zero state
    norms = np.concatenate(norms)
    return {"tokens_per_s": result["tokens_per_s"], "ppl": math.exp(result["valid_loss"]),
            "std": float(norms.std()), "dev": float(((norms - 1) ** 2).mean()), "mean": float(norms.mean())}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="tinyshakespeare")
    p.add_argument("--cell", default="lem")
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--max-tokens", type=int, default=500_000)
    p.add_argument("--eval-tokens", type=int, default=20_000)
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    print(f"{args.cell}, {args.hidden} units, {args.max_tokens:,} tokens of {args.corpus}, batch 32 × 64, "
          "AdamW 2e-3 cosine; step norms ‖R(hJ_k)‖ at 48 states along the first 64 validation tokens\n")
    print("| λ | seed | tokens/s (ratio to λ = 0) | valid perplexity | mean ‖R(hJ)‖ | std ‖R(hJ)‖ | mean (‖R(hJ)‖ − 1)² |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            base = measure(args, 0.0, seed, f"{tmp}/base{seed}")
            for lam in [0.0, *args.lambdas]:
                r = base if lam == 0 else measure(args, lam, seed, f"{tmp}/{lam}-{seed}")
                print(f"| {lam:g} | {seed} | {r['tokens_per_s']:,.0f} ({r['tokens_per_s'] / base['tokens_per_s']:.2f}×) | "
                      f"{r['ppl']:.3f} | {r['mean']:.4f} | {r['std']:.4f} | {r['dev']:.2e} |", flush=True)


if __name__ == "__main__":
    main()
