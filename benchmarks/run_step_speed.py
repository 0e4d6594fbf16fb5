"""One training step — forward and backward — of a saved run's model, on its own corpus's training
batches, as ``odernn train`` takes them: the field evaluations per token and the tokens/s (median).

Trained weights are not random ones: an adaptive cell takes more steps per token once trained (the
seeds study's Dormand–Prince model takes about 7 a token at 5.7M tokens), and an implicit one more
Newton iterations. To measure an engine change where it matters, run this under each checkout,
alternately, on one machine::

    git worktree add /tmp/before COMMIT
    for i in 1 2; do
      PYTHONPATH=/tmp/before python benchmarks/run_step_speed.py RUN --batches 5
      PYTHONPATH=. python benchmarks/run_step_speed.py RUN --batches 5
    done

``RUN``: a run folder (its ``checkpoint.pt``) or a checkpoint file. One thread, as the study trains.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import odernn
import textlm


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder or a checkpoint file")
    parser.add_argument("--batches", type=int, default=5, help="training batches timed (default: 5)")
    parser.add_argument("--data-root", default=None, help="the corpora's folder (default: $ODERNN_DATA)")
    args = parser.parse_args(argv)
    if args.batches < 1:
        parser.error("--batches: at least 1")
    path = args.run / "checkpoint.pt" if args.run.is_dir() else args.run
    try:
        saved = textlm.load_checkpoint(path)
        config = saved["config"]
        corpus = textlm.load_corpus(config["corpus"], text=config["text"], level=config["level"],
                                    data_root_dir=args.data_root or config["data_root"])
    except (textlm.CheckpointError, textlm.CorpusError, KeyError, OSError) as err:
        sys.exit(f"run_step_speed.py: {path}: {err}")
    torch.set_num_threads(1)
    model = textlm.LanguageModel.from_checkpoint(saved).train()
    data = textlm.batchify(corpus.train, config["batch_size"])
    bptt = config["bptt"]
    counted = {"evaluations": 0, "tokens": 0}
    control = odernn.AdaptiveScheme.control

    def counting(self, *args, **kwargs):  # an adaptive token's evaluations, rejected steps included
        y, evaluations = control(self, *args, **kwargs)
        counted["evaluations"] += evaluations
        counted["tokens"] += 1
        return y, evaluations
    odernn.AdaptiveScheme.control = counting
    times = []
    try:
        for i in range(args.batches + 1):  # the first allocates: not counted
            start = i * bptt % max(1, data.shape[1] - bptt - 1)
            x, y = data[:, start:start + bptt], data[:, start + 1:start + bptt + 1]
            model.zero_grad()
            began = time.perf_counter()
            _, loss, _ = model(x, y)
            loss.backward()
            times.append(time.perf_counter() - began)
    finally:
        odernn.AdaptiveScheme.control = control
    median = statistics.median(times[1:])
    nfe = (f"{counted['evaluations'] / counted['tokens']:.1f} field evaluations per token (mean)" if counted["tokens"]
           else f"{model.nfe_per_token()} field evaluations per token (the last)")
    print(f"{config['cell']} ({odernn.__file__}): {nfe}, {x.numel() / median:,.0f} tokens/s (median of {args.batches}: "
          f"{', '.join(f'{t:.2f}' for t in times[1:])} s a step)")


if __name__ == "__main__":
    main()
