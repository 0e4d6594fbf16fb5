"""Design a recurrent cell from your own Butcher tableau, end to end: solve the order conditions,
write the tableau file, check its order and stability exactly, build the cell, check it will train
stably, train it on text next to catalogue cells, and check it again at the trained weights.

    ODERNN_DATA=../shared/data python examples/own_tableau.py
    python examples/own_tableau.py --c2 1/2 --c3 3/4 --data-root ../shared/data   # another method of the family
    python examples/own_tableau.py --tableau mine.toml --text notes.txt            # your own file and text

1. **Design** (``butcher``): the explicit 3-stage family with nodes ``c2``, ``c3`` and unknown
   weights, ``butcher.ButcherTableau`` with SymPy symbols; ``family.order_conditions(3)`` solved
   exactly with ``sympy.solve`` gives the order-3 method with those nodes, written to
   ``OUT/my-rk3.toml`` (``butcher.dumps_toml``). ``--tableau FILE`` skips this and takes your file.
2. **Check the tableau**: the file read back with ``butcher.load``; its order, stage order,
   stability function ``R(z)`` and real and imaginary stability intervals, all derived from the
   exact coefficients (every 3-stage explicit method of order 3 has ``R(z) = 1 + z + z²/2 + z³/6``
   and the imaginary interval ``[−√3, √3]``).
3. **Build the cell**: ``odernn.cell("gru-ode:OUT/my-rk3.toml", …)``, the GRU-ODE field stepped by
   your tableau; ``stability.check(cell)`` gives the verdict at the initial weights.
4. **Train** (``textlm.train``, as ``odernn train --cell gru-ode:FILE`` does) a character-level
   language model with that cell and with each ``--compare`` spec under the same budget, then run
   ``stability.check`` on each trained layer.

Prints the tableau's properties and a Markdown table: cell, order, NFE per token, parameters,
stability verdict before and after training, validation loss and perplexity, tokens/s.
"""

import argparse
import contextlib
import math
import sys
import tempfile
import warnings
from pathlib import Path

import sympy as sp
import torch

import butcher
import odernn
import stability
import textlm

VERDICT_WORDS = {"stable": "stable", "expanding dynamics": "faithful step, expanding dynamics",
                 "unstable step": "UNSTABLE STEP"}


class ExampleError(Exception):
    """A mistake in the options or the inputs: one line, exit code 2."""


def design(c2: sp.Expr, c3: sp.Expr) -> butcher.ButcherTableau:
    """The explicit 3-stage method of order 3 with nodes ``c2``, ``c3``, solved from the order
    conditions (Butcher's family: unique when ``c2 ≠ c3``, ``c2 ≠ 0``, ``c3 ≠ 0`` and ``c2 ≠ 2/3``)."""
    a32, b1, b2, b3 = sp.symbols("a32 b1 b2 b3")
    with warnings.catch_warnings():  # b sums to 1 only for some values of the symbols: that is the point
        warnings.simplefilter("ignore", butcher.TableauWarning)
        family = butcher.ButcherTableau([[0, 0, 0], [c2, 0, 0], [c3 - a32, a32, 0]], [b1, b2, b3])
    solutions = sp.solve(family.order_conditions(3), [a32, b1, b2, b3], dict=True)
    if len(solutions) != 1 or len(solutions[0]) != 4:
        raise ExampleError(f"c2 = {c2}, c3 = {c3}: the order-3 conditions have "
                           f"{'no solution' if not solutions else 'no unique solution'} "
                           "(take c2 ≠ c3, c2 ≠ 0, c3 ≠ 0, c2 ≠ 2/3)")
    method = family.subs(solutions[0])
    return butcher.ButcherTableau(method.A, method.b, name=f"my-rk3 (c2={c2}, c3={c3})")


def tableau_properties(tab: butcher.ButcherTableau) -> dict:
    return {"name": tab.name, "stages": tab.stages, "structure": tab.structure, "order": tab.order(),
            "stage order": tab.stage_order(), "R(z)": tab.stability_function(),
            "real stability interval": tab.real_stability_interval(),
            "imaginary stability interval": tab.imaginary_stability_interval()}


def show_properties(path: Path, properties: dict) -> None:
    print(f"## The tableau {path}\n")
    print(path.read_text().strip() + "\n")
    print("| property | value |\n|---|---|")
    for key, value in properties.items():
        shown = value
        if isinstance(value, sp.Interval):
            shown = f"{value} ≈ [{float(value.start):.6g}, {float(value.end):.6g}]"
        print(f"| {key} | {shown} |")
    print()


def verdict(report: stability.StabilityReport) -> str:
    return f"{VERDICT_WORDS[report.verdict]} (margin {report.margin:+.3f})"


def train_one(spec: str, args, out: Path) -> dict:
    """Train one language model with ``spec`` and return its row of the table."""
    config = textlm.TrainConfig(corpus=None if args.text else args.corpus, text=args.text, data_root=args.data_root,
                                cell=spec, hidden=args.hidden, batch_size=args.batch_size, bptt=args.bptt,
                                lr=args.lr, max_tokens=args.max_tokens, seed=args.seed, device="cpu",
                                out=str(out / spec.replace("/", "_").replace(":", "_")), progress=False)
    try:
        trainer = textlm.Trainer(config)
    except ValueError as err:  # a configuration refused: an --out that holds an earlier run, a budget
        raise ExampleError(str(err)) from None
    (cell,) = trainer.model.ode_cells()
    before = stability.check(cell)  # at the initial weights of this run
    result = trainer.run()
    return {"cell": spec, "order": cell.tableau.order(), "NFE/token": cell.nfe_per_token,
            "parameters": result["parameters"], "before training": verdict(before),
            "after training": verdict(stability.check(cell)), "valid loss": f"{result['valid_loss']:.4f}",
            "perplexity": f"{math.exp(result['valid_loss']):.3f}", "tokens/s": f"{result['tokens_per_s']:,.0f}"}


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--c2", default="1/3", help="node c2 of the designed 3-stage method (exact: 1/3, sqrt(2)/2, …)")
    parser.add_argument("--c3", default="1", help="node c3 of the designed 3-stage method")
    parser.add_argument("--tableau", type=Path, help="use this TOML/JSON tableau file instead of designing one")
    parser.add_argument("--field", default="gru-ode", help="the vector field the tableau steps (odernn cell list)")
    parser.add_argument("--compare", nargs="*", default=["gru-ode:euler", "gru-ode:rk4"],
                        help="catalogue cells trained under the same budget (gru-ode:euler is nn.GRU); none: --compare")
    parser.add_argument("--corpus", default="tinyshakespeare", help="a standard corpus, read from the data root")
    parser.add_argument("--text", help="a UTF-8 text file to train on instead of --corpus")
    parser.add_argument("--data-root", help="folder of the corpora (default: $ODERNN_DATA, else ~/.cache/odernn)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (and embedding size)")
    parser.add_argument("--max-tokens", type=int, default=150_000, help="training budget per cell, in tokens")
    parser.add_argument("--batch-size", type=int, default=32, help="parallel streams")
    parser.add_argument("--bptt", type=int, default=64, help="tokens per truncated-BPTT window")
    parser.add_argument("--lr", type=float, default=0.003, help="AdamW learning rate (cosine decay)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    parser.add_argument("--out", type=Path, help="folder for the tableau file and the runs (default: a temporary one)")
    return parser.parse_args(argv)


def node(text: str, option: str) -> sp.Expr:
    """An exact number typed on the command line (``butcher``'s restricted grammar, never ``eval``)."""
    value = butcher.parse_number(text, option)
    if value.free_symbols or not value.is_real:
        raise ExampleError(f"{option}: {text!r} is not a real number")
    return value


def run(args, out: Path) -> list[dict]:
    if args.tableau is None:
        path = out / "my-rk3.toml"
        tab = design(*(node(text, option) for text, option in ((args.c2, "--c2"), (args.c3, "--c3"))))
        path.write_text(butcher.dumps_toml(tab))
    else:
        path = args.tableau
    show_properties(path, tableau_properties(butcher.load(path)))
    specs = [f"{args.field}:{path}", *args.compare]
    rows = [train_one(spec, args, out) for spec in specs]
    print(f"## Trained for {args.max_tokens:,} tokens, {args.hidden} hidden units, seed {args.seed}\n")
    print(table(rows))
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        with contextlib.ExitStack() as stack:
            out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="own-tableau-")))
            out.mkdir(parents=True, exist_ok=True)
            return run(args, out)
    except (ExampleError, butcher.TableauError, odernn.CellSpecError, textlm.CorpusError, textlm.ModelError,
            textlm.TrainingError) as err:
        print(f"own_tableau.py: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
