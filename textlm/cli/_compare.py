"""``odernn compare``: cells × seeds on one corpus and one budget → a Markdown table and plots."""

from __future__ import annotations

import sys

from textlm.limits import argument

from ._errors import CLIError
from ._progress import busy

_EXAMPLE = """examples:
  odernn compare --corpus tinyshakespeare --seeds 0 1 2 --params 430000 --max-tokens 1000000 --out runs/compare
  odernn compare --corpus ptb --cells torch-lstm gru-ode:euler --layers 2 --hidden 200 --bptt 35 --batch-size 20
  odernn compare ... (the same command again)   # resumes: finished runs are kept, an unfinished one resumes
  odernn compare --corpus ptb --cells torch-lstm torch-gru gru-ode:euler gru-ode:midpoint gru-ode:rk4 --seeds 0 \
      --layers 2 --hidden 200 --batch-size 20 --bptt 20 --optimizer sgd --lr 20 --clip 0.25 --schedule step \
      --decay-after 4 --decay 0.5 --epochs 13 --eval-every 500 --device cuda --out runs/ptb-zaremba
                                                   # Zaremba et al. (2014), small (test perplexity 115.9)

Writes OUT/results.md (mean ± std over seeds), OUT/learning_curves.png (seed bands against tokens and
wall-clock), OUT/stability_<cell>.png (each ODE cell's region with its scaled eigenvalues) and every
run's folder under OUT/runs/."""


def register(sub, formatter) -> None:
    from textlm.compare import DEFAULT_CELLS, CompareConfig
    d = CompareConfig()
    p = sub.add_parser("compare", help="train several cells with several seeds and tabulate them",
                       formatter_class=formatter, epilog=_EXAMPLE,
                       description="Train each cell with each seed on the same corpus, budget and optimiser "
                                   "(each run in its own process), then measure and tabulate them.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--corpus", default=None, help="tinyshakespeare (default), ptb or wikitext-2")
    source.add_argument("--text", metavar="PATH", type=argument("text"))
    p.add_argument("--level", choices=("char", "word"))
    p.add_argument("--data-root", metavar="DIR", type=argument("data_root"))
    p.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS), metavar="SPEC")
    p.add_argument("--seeds", nargs="+", type=argument("seeds"), default=d.seeds)
    p.add_argument("--params", type=argument("params"), help="parameter budget: each cell gets the width closest to it")
    p.add_argument("--hidden", type=argument("hidden"), default=d.hidden, help="width of every cell when no --params")
    p.add_argument("--layers", type=argument("layers"), default=d.layers)
    p.add_argument("--dropout", type=argument("dropout"), default=d.dropout)
    p.add_argument("--grad", choices=("backprop", "checkpoint", "adjoint"), default=d.grad)
    p.add_argument("--batch-size", type=argument("batch_size"), default=d.batch_size)
    p.add_argument("--bptt", type=argument("bptt"), default=d.bptt)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer)
    p.add_argument("--lr", type=argument("lr"), default=d.lr)
    p.add_argument("--momentum", type=argument("momentum"), default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=argument("weight_decay"), default=d.weight_decay)
    p.add_argument("--clip", type=argument("clip"), default=d.clip, help="gradient-norm clipping (0: none)")
    p.add_argument("--init-gain", type=argument("init_gain"), default=d.init_gain, metavar="G",
                   help="as in 'odernn train': the recurrent weights × G at initialisation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar per run (a line per finished run stays)")
    p.add_argument("--schedule", choices=("cosine", "constant", "step"), default=d.schedule,
                   help="as in 'odernn train'")
    p.add_argument("--decay-after", type=argument("decay_after"), default=d.decay_after, metavar="K")
    p.add_argument("--decay", type=argument("decay"), default=d.decay)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--max-tokens", type=argument("max_tokens"), default=d.max_tokens, help="token budget of every run")
    budget.add_argument("--epochs", type=argument("epochs"), help="budget of every run in epochs instead")
    p.add_argument("--max-seconds", type=argument("max_seconds"), help="wall-clock budget of every run")
    p.add_argument("--eval-every", type=argument("eval_every"), default=d.eval_every, help="validation every N steps (the curves)")
    p.add_argument("--eval-tokens", type=argument("eval_tokens"), default=d.eval_tokens, help="validation tokens per evaluation")
    p.add_argument("--patience", type=argument("patience"), default=d.patience,
                   help="early stopping: as in 'odernn train' (needs --eval-every); the best model is measured")
    p.add_argument("--check-at", type=argument("check_at"), nargs="+", metavar="F",
                   help="stability verdicts at these fractions of each run's budget, as in 'odernn train'")
    p.add_argument("--noise", type=argument("noise"), nargs="+", metavar="P", default=d.noise,
                   help="robustness: validation perplexity with these fractions of the input tokens replaced at "
                        "random (e.g. 0.01 0.05 0.1)")
    p.add_argument("--prompts", type=argument("prompts"), default=d.prompts, help="validation prompts for BLEU/ROUGE")
    p.add_argument("--device", default=d.device, help="auto (default), cpu, cuda or cuda:N, for every run")
    p.add_argument("--precision", choices=("float32", "bf16", "float64"), default=d.precision)
    p.add_argument("--compile-elementwise", action="store_true", help="as in 'odernn train'")
    p.add_argument("--cuda-graphs", action="store_true", help="as in 'odernn train'")
    p.add_argument("--out", default=d.out, type=argument("out"))
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    from textlm.compare import CompareConfig, CompareError, compare, plots, refuse_other_settings
    if args.corpus is None and args.text is None:
        args.corpus = "tinyshakespeare"
    if args.params is not None and "hidden" in getattr(args, "given", ()):
        raise CLIError(f"--hidden {args.hidden} and --params {args.params}: give one (with --params each cell gets "
                       "the width that comes closest to it)")
    try:
        config = CompareConfig(corpus=args.corpus, text=args.text, level=args.level, data_root=args.data_root,
                               cells=args.cells, seeds=args.seeds, params=args.params, hidden=args.hidden,
                               layers=args.layers, dropout=args.dropout, grad=args.grad, batch_size=args.batch_size,
                               bptt=args.bptt, optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay, clip=args.clip, init_gain=args.init_gain,
                               schedule=args.schedule,
                               decay_after=args.decay_after, decay=args.decay, max_tokens=args.max_tokens,
                               epochs=args.epochs, max_seconds=args.max_seconds, eval_every=args.eval_every,
                               eval_tokens=args.eval_tokens, patience=args.patience, check_at=args.check_at,
                               noise=args.noise, prompts=args.prompts, device=args.device,
                               precision=args.precision, compile_elementwise=args.compile_elementwise,
                               cuda_graphs=args.cuda_graphs, out=args.out)
        refuse_other_settings(config)
    except ValueError as err:
        raise CLIError(str(err)) from None
    from textlm.runtime import Runtime
    Runtime.of(config.device, config.precision)  # no CUDA: one line now, not one per run
    import odernn
    from textlm.model import TORCH_CELLS, LanguageModel, ModelError, cell_spec_message
    for cell in config.cells:  # fail before hours of training, not in the middle
        if cell.lower() not in TORCH_CELLS:
            try:
                odernn.parse_spec(cell)
                odernn.cell(cell, 2, 2)
            except odernn.CellSpecError as err:
                several = any("," in part for part in cell.split(":")[:2])  # the field or tableau part
                raise CLIError(f"--cells {cell}: {cell_spec_message(err)}" + (
                    " (several cells are separated by spaces: --cells A B)" if several else "")) from None
        if config.init_gain != 1.0:
            try:
                LanguageModel(vocab_size=2, cell=cell, layers=config.layers, hidden=2).scale_recurrent_weights(config.init_gain)
            except ModelError as err:
                raise CLIError(f"--cells {cell} with --init-gain: {err}") from None
    try:
        rows, markdown = compare(config, progress=lambda line: print(line, file=sys.stderr, flush=True),
                                 bars=not args.no_progress)
    except CompareError as err:
        raise CLIError(f"{err}; the finished runs are kept: run the same command again to resume") from None
    except ValueError as err:  # the corpus cannot hold one training step of the runs
        raise CLIError(str(err)) from None
    with busy("drawing the learning curves and each ODE cell's stability region at its final weights"):
        written = plots(config, rows)
    print(markdown)
    print(f"wrote {config.out}/results.md, " + ", ".join(map(str, written)), file=sys.stderr)
    return 0
