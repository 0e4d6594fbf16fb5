"""Classical and generated cells in the same language model on tinyshakespeare (character level):
1 layer, 256 units, the same token budget, seed and optimiser for every cell.

    python benchmarks/textlm_compare.py [--tokens 1000000] [--cells torch-gru gru-ode:euler ...]

Each cell trains in its own process, so that its peak resident memory (``ru_maxrss``) is its own.
Prints a Markdown table: validation loss (nats/char) and perplexity, tokens/s, peak memory, BLEU
and ROUGE-L of sampled continuations of 20 test prompts, and the difference in validation loss
to torch-gru (the goal: Euler GRU-ODE within 0.02 nats/char).
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

CELLS = ("torch-rnn", "torch-lstm", "torch-gru", "gru-ode:euler", "gru-ode:midpoint", "gru-ode:rk4")


def one(cell: str, tokens: int, out: str) -> dict:
    from textlm.evaluate import generation_metrics
    from textlm.train import TrainConfig, Trainer
    config = TrainConfig(corpus="tinyshakespeare", cell=cell, hidden=256, batch_size=32, bptt=64, lr=2e-3,
                         max_tokens=tokens, seed=0, out=out, progress=False, checkpoint_every=10**9)
    trainer = Trainer(config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = trainer.run()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    metrics = generation_metrics(trainer.model, trainer.corpus.vocab, trainer.corpus.test, prompts=20)
    return {"cell": cell, "tokens": result["tokens"], "valid_loss": result["valid_loss"],
            "tokens_per_s": result["tokens"] / seconds, "peak_rss_mb": peak / 1024, "training_rss_mb": (peak - before) / 1024,
            "bleu": metrics.bleu, "rouge_l": metrics.rouge_l, "combined": metrics.combined,
            "parameters": sum(p.numel() for p in trainer.model.parameters()), "seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--cells", nargs="+", default=list(CELLS))
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.tokens, os.path.join(args.out, args.one.replace(":", "_")))))
        return
    from textlm.train import RUN_FILES
    held = [cell for cell in args.cells if any(os.path.exists(os.path.join(args.out, cell.replace(":", "_"), name))
                                               for name in RUN_FILES)]
    if held:  # every row is measured here, in one process per cell: an earlier run cannot be read back
        sys.exit(f"textlm_compare.py: --out {args.out} holds earlier runs of {', '.join(held)}: give another --out")
    rows = []
    for cell in args.cells:
        proc = subprocess.run([sys.executable, __file__, "--one", cell, "--tokens", str(args.tokens), "--out", args.out],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{cell}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"done {cell}: {rows[-1]}", file=sys.stderr, flush=True)
    gru = next((r["valid_loss"] for r in rows if r["cell"] == "torch-gru"), None)
    print(f"\ntinyshakespeare, 1 layer × 256, batch 32 × bptt 64, AdamW 2e-3 cosine, {args.tokens:,} tokens, seed 0\n")
    print("| cell | parameters | valid loss (nats/char) | Δ vs torch-gru | perplexity | tokens/s | peak RSS (MB) | BLEU | ROUGE-L | combined |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        delta = f"{r['valid_loss'] - gru:+.4f}" if gru is not None else "—"
        print(f"| {r['cell']} | {r['parameters']:,} | {r['valid_loss']:.4f} | {delta} | {math.exp(r['valid_loss']):.3f} | "
              f"{r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:.0f} | {r['bleu']:.2f} | {r['rouge_l']:.3f} | {r['combined']:.2f} |")


if __name__ == "__main__":
    main()
