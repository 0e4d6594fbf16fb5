"""ResNet, RK-Net and ODE-Net on scikit-learn's 8×8 digits — the comparison of Chen et al. (2018),
Table 1, on a data set that installs offline.

    pip install -e ".[examples]" && python examples/digits_ode_net.py [--epochs 30] [--tableau rk4]

- **ResNet**: 6 residual blocks ``h ← h + f_k(h)``, each with its own weights.
- **RK-Net**: one block ``dh/dτ = f(h)`` on ``τ ∈ [0, 1]`` integrated by a Butcher tableau from
  the catalogue (``--tableau``, ``--steps``), backpropagating through the solver steps.
- **ODE-Net**: the same ODE block trained with the continuous adjoint (``odernn.adjoint``): memory
  independent of the solver steps.

``f`` is the convolutional block of Chen et al. (norm → ReLU → 3×3 conv, twice), on 32 channels
of 8×8. The ODE block is an ``odernn`` cell: a ``ModuleField`` on the flattened feature map.
Prints test error, parameter count, memory held for the backward pass, and time per epoch.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import odernn
from textlm.memory import allocated_bytes

CHANNELS = 32


def conv_block():
    return nn.Sequential(nn.GroupNorm(8, CHANNELS), nn.ReLU(), nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1),
                         nn.GroupNorm(8, CHANNELS), nn.ReLU(), nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1))


class FlatConv(nn.Module):
    """``f(h, x)`` on the flattened ``(B, C·8·8)`` state, for ``odernn.ModuleField``."""

    def __init__(self):
        super().__init__()
        self.block = conv_block()

    def forward(self, h, context):
        return self.block(h.view(-1, CHANNELS, 8, 8)).flatten(1)


class Net(nn.Module):
    def __init__(self, kind: str, tableau: str, steps: int, adjoint_steps: int | None):
        super().__init__()
        self.kind = kind
        self.stem = nn.Conv2d(1, CHANNELS, 3, padding=1)
        if kind == "resnet":
            self.blocks = nn.ModuleList(conv_block() for _ in range(6))
        else:
            field = odernn.ModuleField(FlatConv(), input_size=1, hidden_size=CHANNELS * 64)
            self.cell = odernn.ODECell(field, tableau, dt=1.0, steps=steps)
            self.method = odernn.AdjointMethod(steps=adjoint_steps)
        self.head = nn.Sequential(nn.GroupNorm(8, CHANNELS), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(CHANNELS, 10))

    def forward(self, images):
        h = self.stem(images)
        if self.kind == "resnet":
            for block in self.blocks:
                h = h + block(h)
        else:
            y0, x = h.flatten(1), h.new_zeros(h.shape[0], 1)
            y = odernn.adjoint(self.cell, x, y0, self.method) if self.kind == "ode-net" else self.cell(x, y0)
            h = y.view_as(h)
        return self.head(h)


def data(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=0.2, random_state=seed,
                                                        stratify=labels)
    return train_x, train_y, test_x, test_y


def run(kind, args, split):
    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = split
    model = Net(kind, args.tableau, args.steps, args.adjoint_steps)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    epoch_times, held = [], []
    for _ in range(args.epochs):
        order = torch.randperm(len(train_x))
        start = time.perf_counter()
        for i in range(0, len(order), args.batch_size):
            batch = order[i:i + args.batch_size]
            before = allocated_bytes()
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            held.append(allocated_bytes() - before)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        epoch_times.append(time.perf_counter() - start)
    with torch.no_grad():
        error = (model(test_x).argmax(1) != test_y).float().mean().item()
    return {"kind": kind, "error": error, "parameters": sum(p.numel() for p in model.parameters()),
            "memory_mib": statistics.median(held) / 2**20, "epoch_s": statistics.median(epoch_times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--tableau", default="rk4", help="catalogue tableau of RK-Net and ODE-Net")
    parser.add_argument("--steps", type=int, default=4, help="solver steps over τ ∈ [0, 1]")
    parser.add_argument("--adjoint-steps", type=int, help="steps of ODE-Net's backward solve (default --steps)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="use only the first N training images (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    split = data(args.seed)
    if args.limit:
        split = (split[0][: args.limit], split[1][: args.limit], *split[2:])
    print(f"8×8 digits: {len(split[0])} train / {len(split[2])} test images; {args.epochs} epochs, Adam "
          f"{args.lr:g}, batch {args.batch_size}; RK-Net and ODE-Net: {args.tableau}, {args.steps} steps; 1 thread\n")
    print("| model | test error | parameters | memory held for backward (MiB) | time / epoch (s) |")
    print("|---|---|---|---|---|")
    for kind in ("resnet", "rk-net", "ode-net"):
        r = run(kind, args, split)
        print(f"| {kind} | {100 * r['error']:.2f} % | {r['parameters']:,} | {r['memory_mib']:.2f} | {r['epoch_s']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
