"""``odernn.ODERNN`` as a drop-in for ``nn.GRU`` in your own PyTorch model: a sequence classifier
on variable-length sequences, written once for ``nn.GRU`` and run unchanged with generated layers.

    python examples/odernn_in_your_model.py
    python examples/odernn_in_your_model.py --steps 600 --hidden 64 --spec gru-ode:rk4:steps=2

The model (``Classifier``) takes any recurrent module with ``nn.GRU``'s interface: it packs the
padded batch (``pack_padded_sequence``, ``batch_first=True``) and classifies the last layer's final
state ``h_n[-1]``. An ``ODERNN`` also takes the padded batch with ``lengths=`` instead of packing.

The task is the adding problem as a classification: each token is a value in (−1, 1) and a marker;
two tokens are marked, and the class says whether their values sum to more than 0. Lengths vary
from ``--min-length`` to ``--max-length`` within every batch.

Part 1, **equality**: ``odernn.from_torch(gru)`` is ``gru-ode:euler`` with the GRU's own weights
and equals it — on PyTorch's fused kernel (the default, ``fused=True``) and in odernn's engine
(``fused=False``, the backward pass generated from the tableau); packed input and ``lengths=``
agree; and the two models trained side by side from the same weights on the same batches stay
equal. Printed as the largest absolute differences.

Part 2, **training**: the same classifier with ``nn.GRU``, with ``from_torch`` of that GRU, and
with ``ODERNN(--spec)`` (default ``gru-ode:rk4``: the GRU-ODE field stepped by classical RK4), the
same hidden size, optimiser, batches and number of steps, for each seed. Printed as a Markdown
table of test accuracy (mean ± std over seeds), parameters and training time.
"""

import argparse
import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import odernn

INPUT_SIZE = 2  # (value, marker)
TEST_SEED = 12345  # the test set, the same for every model and seed


class Classifier(nn.Module):
    """Your model: any ``nn.GRU``-like module (batch_first) → linear head on the last layer's final state."""

    def __init__(self, rnn: nn.Module, classes: int = 2, packed: bool = True):
        super().__init__()
        self.rnn, self.packed = rnn, packed
        self.head = nn.Linear(rnn.hidden_size, classes)

    def forward(self, x, lengths):  # x (B, T, E), lengths (B,)
        if self.packed:
            _, h_n = self.rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        else:  # ODERNN only: the padded batch with its lengths
            _, h_n = self.rnn(x, lengths=lengths)
        return self.head(h_n[-1])  # (B, classes)


def adding_batch(batch: int, min_length: int, max_length: int, generator: torch.Generator):
    """Padded ``(B, T, 2)`` inputs, their lengths and labels: two marked values, does their sum exceed 0?"""
    lengths = torch.randint(min_length, max_length + 1, (batch,), generator=generator)
    values = 2 * torch.rand(batch, max_length, generator=generator) - 1
    valid = torch.arange(max_length)[None, :] < lengths[:, None]
    values = values * valid
    # two distinct marked positions inside each sequence
    first = (torch.rand(batch, generator=generator) * lengths).long()
    second = (first + 1 + (torch.rand(batch, generator=generator) * (lengths - 1)).long()) % lengths
    markers = torch.zeros(batch, max_length)
    markers[torch.arange(batch), first] = 1
    markers[torch.arange(batch), second] = 1
    labels = ((values * markers).sum(1) > 0).long()
    return torch.stack([values, markers], dim=-1), lengths, labels


def max_difference(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a, b))


def equality_rows(args) -> dict:
    """How far ``from_torch(gru)`` is from ``gru``: outputs, gradients, and after training side by side."""
    torch.manual_seed(args.seed)
    gru = nn.GRU(INPUT_SIZE, args.hidden, num_layers=args.layers, batch_first=True)
    x, lengths, labels = adding_batch(args.batch_size, args.min_length, args.max_length,
                                      torch.Generator().manual_seed(args.seed))
    reference = Classifier(gru)
    rows = {}
    for name, fused in (("PyTorch's kernel (fused=True)", True), ("odernn's engine (fused=False)", False)):
        model = Classifier(odernn.from_torch(gru))
        model.head.load_state_dict(reference.head.state_dict())
        model.rnn.fused = fused
        logits = [m(x, lengths) for m in (reference, model)]
        grads = [torch.autograd.grad(F.cross_entropy(out, labels), list(m.parameters()))
                 for m, out in zip((reference, model), logits)]
        rows[f"from_torch(gru) logits, {name}"] = max_difference(*logits)
        rows[f"from_torch(gru) gradients, {name}"] = max_difference(*grads)
    model.packed = False
    rows["from_torch(gru), lengths= instead of packing"] = max_difference([reference(x, lengths)], [model(x, lengths)])
    model.packed = True
    trained = train(copy.deepcopy(reference), args, args.seed, steps=args.equal_steps)["model"]
    trained_copy = train(model, args, args.seed, steps=args.equal_steps)["model"]  # in the engine
    rows[f"parameters after {args.equal_steps} Adam steps side by side, engine"] = max_difference(
        list(trained.parameters()), list(trained_copy.parameters()))
    return rows


def train(model: nn.Module, args, seed: int, steps: int | None = None) -> dict:
    generator = torch.Generator().manual_seed(1000 + seed)  # the same batches for every model of a seed
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    started = time.perf_counter()
    for _ in range(args.steps if steps is None else steps):
        x, lengths, labels = adding_batch(args.batch_size, args.min_length, args.max_length, generator)
        loss = F.cross_entropy(model(x, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return {"model": model, "seconds": time.perf_counter() - started, "train_loss": loss.item()}


@torch.no_grad()
def accuracy(model: nn.Module, args) -> float:
    x, lengths, labels = adding_batch(args.test_size, args.min_length, args.max_length,
                                      torch.Generator().manual_seed(TEST_SEED))  # one test set for all
    return (model(x, lengths).argmax(1) == labels).float().mean().item()


def models(args, seed: int) -> dict:
    """The three models of a seed, built from the same seed (nn.GRU and ODERNN draw the same initial weights)."""
    torch.manual_seed(seed)
    gru = Classifier(nn.GRU(INPUT_SIZE, args.hidden, num_layers=args.layers, batch_first=True))
    same = copy.deepcopy(gru)
    same.rnn = odernn.from_torch(same.rnn)
    torch.manual_seed(seed)
    generated = Classifier(odernn.ODERNN(args.spec, INPUT_SIZE, args.hidden, num_layers=args.layers,
                                         batch_first=True))
    return {"nn.GRU": gru, "odernn.from_torch(nn.GRU)": same, f"odernn.ODERNN({args.spec!r})": generated}


def training_rows(args) -> dict:
    results = {}
    for seed in range(args.seeds):
        for name, model in models(args, seed).items():
            untrained = accuracy(model, args)
            run = train(model, args, seed)
            results.setdefault(name, []).append({"accuracy": accuracy(run["model"], args), "untrained": untrained,
                                                 "seconds": run["seconds"], "train_loss": run["train_loss"],
                                                 "parameters": sum(p.numel() for p in model.parameters())})
    return results


def mean_std(values, digits: int = 3) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def print_tables(equal: dict, results: dict, args) -> None:
    print("## from_torch(nn.GRU) equals nn.GRU\n\n| comparison | max abs difference |\n|---|---|")
    for name, value in equal.items():
        print(f"| {name} | {value:.2e} |")
    print(f"\n## Training: {args.steps} steps of {args.batch_size} sequences of length {args.min_length}–"
          f"{args.max_length}, hidden {args.hidden}, {args.layers} layer(s), {args.seeds} seed(s)\n")
    print("| model | parameters | test accuracy | untrained accuracy | final train loss | seconds |\n"
          "|---|---|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | {runs[0]['parameters']} | {mean_std([r['accuracy'] for r in runs])} | "
              f"{mean_std([r['untrained'] for r in runs])} | {mean_std([r['train_loss'] for r in runs])} | "
              f"{mean_std([r['seconds'] for r in runs], digits=1)} |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--spec", default="gru-ode:rk4", help="the generated layer trained next to nn.GRU (a cell spec)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units of every model")
    parser.add_argument("--layers", type=int, default=1, help="recurrent layers")
    parser.add_argument("--steps", type=int, default=500, help="training steps per model and seed")
    parser.add_argument("--equal-steps", type=int, default=20, help="steps of the side-by-side equality run")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    parser.add_argument("--min-length", type=int, default=10, help="shortest sequence")
    parser.add_argument("--max-length", type=int, default=30, help="longest sequence")
    parser.add_argument("--test-size", type=int, default=2000, help="test sequences")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--seed", type=int, default=0, help="seed of the equality checks")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    args = parser.parse_args(argv)
    if not 2 <= args.min_length <= args.max_length:
        parser.error("need 2 <= --min-length <= --max-length (two tokens are marked)")
    if min(args.hidden, args.layers, args.steps, args.batch_size, args.test_size, args.seeds) < 1:
        parser.error("--hidden, --layers, --steps, --batch-size, --test-size and --seeds must be at least 1")
    return args


def main(argv=None) -> tuple[dict, dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        odernn.cell(args.spec, INPUT_SIZE, args.hidden)
    except odernn.CellSpecError as err:
        print(f"odernn_in_your_model.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    equal, results = equality_rows(args), training_rows(args)
    print_tables(equal, results, args)
    return equal, results


if __name__ == "__main__":
    main()
