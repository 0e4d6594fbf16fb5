"""Accuracy against compute: a GRU-ODE language model trained with an adaptive pair (Dormand–Prince,
rtol 1e-3), then evaluated with other solvers — other tolerances, fixed-step tableaux, more or
fewer steps — on the same weights: validation loss against field evaluations per token.

    python benchmarks/accuracy_vs_compute.py [--tokens 200000] [--hidden 128] [--text FILE]

The trade-off the neural-ODE literature advertises (spend fewer evaluations at test time, accept
a higher loss) measured instead of asserted.
"""

import argparse
import math
from pathlib import Path

import torch

import odernn

from textlm.data import CorpusError
from textlm.evaluate import evaluate_loss
from textlm.model import LanguageModel
from textlm.train import TrainConfig, Trainer

SOLVERS = ["dopri5:rtol=1e-1", "dopri5:rtol=1e-2", "dopri5:rtol=1e-3", "dopri5:rtol=1e-5", "dopri5:rtol=1e-7",
           "euler", "euler:steps=2", "euler:steps=4", "midpoint", "midpoint:steps=2", "rk4", "rk4:steps=2",
           "rk4:steps=4"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=20_000)
    parser.add_argument("--out", default="runs/accuracy_vs_compute")
    parser.add_argument("--text", help="a UTF-8 text file instead of Tiny Shakespeare (the tests' smoke run: "
                        "training ends with a validation of the whole split)")
    args = parser.parse_args()
    trained = "gru-ode:dopri5:rtol=1e-3:atol=1e-5"
    resume = (Path(args.out) / "checkpoint.pt").is_file()  # a finished run is reused, an interrupted one finished
    try:  # a bad option, a missing or malformed text: one line, before any training
        config = TrainConfig(corpus=None if args.text else "tinyshakespeare", text=args.text, cell=trained,
                             hidden=args.hidden, max_tokens=args.tokens, out=args.out, progress=False,
                             checkpoint_every=10**9, eval_tokens=args.eval_tokens)
        trainer = Trainer(config, resume=resume)
    except (ValueError, CorpusError) as err:
        parser.error(str(err))
    if not (resume and (Path(args.out) / "result.json").is_file()):
        trainer.run()
    state = trainer.model.state_dict()
    valid = trainer.corpus.valid
    print(f"trained: {trained}, hidden {args.hidden}, {args.tokens:,} tokens of {trainer.corpus.name}; evaluated on the "
          f"first {args.eval_tokens:,} validation characters\n")
    print("| solver at test time | field evaluations / token | validation loss (nats/char) | perplexity |")
    print("|---|---|---|---|")
    for solver in SOLVERS:
        spec = f"gru-ode:{solver}"
        if "rtol=" in solver:  # atol = rtol/100, as in training
            spec += f":atol={float(solver.split('rtol=')[1]) / 100:g}"
        model = LanguageModel(len(trainer.corpus.vocab), spec, hidden=args.hidden)
        model.load_state_dict(state)
        cell = model.ode_cells()[0]
        # an adaptive cell's tokens each run the error controller (AdaptiveScheme.control, in the
        # engine and on the per-token path alike), which returns its evaluations; fixed-step cells
        # take exactly nfe_per_token evaluations
        calls = {"field": 0, "token": 0}
        control = odernn.AdaptiveScheme.control

        def counting(self, *args, **kwargs):
            y, evaluations = control(self, *args, **kwargs)
            calls["field"], calls["token"] = calls["field"] + evaluations, calls["token"] + 1
            return y, evaluations
        odernn.AdaptiveScheme.control = counting
        try:
            loss = evaluate_loss(model, valid, tokens=args.eval_tokens)
        finally:
            odernn.AdaptiveScheme.control = control
        nfe = calls["field"] / calls["token"] if calls["token"] else cell.nfe_per_token
        marker = " (trained)" if solver == "dopri5:rtol=1e-3" else ""
        print(f"| {solver}{marker} | {nfe:.2f} | {loss:.4f} | {math.exp(loss):.3f} |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
