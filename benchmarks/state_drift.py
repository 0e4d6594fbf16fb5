"""How large a trained model's carried state grows over a stream (issue 24's misprediction analysis):
the largest |state| over the layers after 512, 1,024, 2,048 and 5,120 validation tokens per stream
(batch 10, the state carried across chunks of 64, as training and validation carry it; of a state
with several blocks, the output block: an LSTM's h, not its c).

    python benchmarks/state_drift.py RUN_FOLDER_OR_CHECKPOINT ...

A field whose far field does not restore large states (``stability``'s ``restoring_far_field``
note: AntisymmetricRNN's ``tanh(…)``, a Lipschitz RNN whose ``A`` has modes near 0) integrates
its input, and its state keeps growing; a gated or leaky field's stays in the range of its
activations. The study's checkpoints stay on the machine that ran it (git ignores them).
"""

from __future__ import annotations

import argparse
import sys

import torch

MARKS = (512, 1024, 2048, 5120)


def drift(path: str, data_root: str | None) -> list[float]:
    from textlm.checkpoint import load_checkpoint
    from textlm.data import batchify, load_corpus
    from textlm.model import LanguageModel
    data = load_checkpoint(path)
    model = LanguageModel.from_checkpoint(data, "cpu").eval()
    run = data.get("config") or {}
    corpus = load_corpus(run.get("corpus"), run.get("text"), run.get("level") or "char", data_root)
    rows = batchify(corpus.split("valid"), 10)
    state, out = None, []
    with torch.no_grad():
        for start in range(0, min(rows.shape[1] - 1, MARKS[-1]), 64):
            _, _, state = model(rows[:, start:start + 64], None, state)
            if start + 64 in MARKS:
                layers = [s[0] if isinstance(s, tuple) else s for s in state]
                out.append(max(float(s.abs().max()) for s in layers))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (their checkpoint.pt) or checkpoint files")
    parser.add_argument("--data-root", help="the corpora's folder (default: $ODERNN_DATA)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | " + " | ".join(f"max \\|state\\| after {m:,} tokens" for m in MARKS) + " |")
    print("|---|" + "---|" * len(MARKS))
    for path in args.runs:
        values = drift(path, args.data_root)
        print(f"| {path} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
