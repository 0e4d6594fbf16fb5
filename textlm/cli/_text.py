"""``odernn train``, ``odernn generate``, ``odernn evaluate``: the language model on text."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import fields
from pathlib import Path

from textlm.limits import argument
from textlm.train import RESUMABLE as TRAINER_RESUMABLE

from ._errors import CLIError
from ._progress import HELP as PROGRESS_HELP

_TRAIN_EXAMPLE = """examples:
  odernn train --corpus tinyshakespeare --cell gru-ode:rk4 --hidden 128 --max-tokens 200000 --out runs/rk4
  odernn train --corpus ptb --cell torch-lstm --layers 2 --hidden 200 --dropout 0.2 --bptt 35 --batch-size 20
  odernn train --text notes.txt --level word --cell rnn:euler --grad adjoint --adjoint-method rk4
  odernn train --out runs/rk4 --resume --max-tokens 400000      # continue (or extend) a run
  odernn train --corpus ptb --cell torch-lstm --layers 2 --hidden 200 --batch-size 20 --bptt 20 \
      --optimizer sgd --lr 20 --clip 0.25 --schedule step --decay-after 4 --decay 0.5 --epochs 13 \
      --device cuda                                              # Zaremba et al. (2014), small

Cells: any 'odernn cell' spec (gru-ode:euler, rnn:rk4:steps=2, lstm, antisymmetric:euler, ...) or a
fused PyTorch baseline: torch-rnn, torch-lstm, torch-gru. Writes OUT/checkpoint.pt (atomically, every
--checkpoint-every steps and at the end), OUT/metrics.jsonl and OUT/curves.png. Ctrl-C saves and exits."""


def _options(p, defaults) -> None:
    data = p.add_argument_group("data")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--corpus", help="tinyshakespeare (char), ptb or wikitext-2 (word)")
    source.add_argument("--text", metavar="PATH", type=argument("text"), help="any UTF-8 text file, split 90/5/5")
    data.add_argument("--level", choices=("char", "word"), help="tokens of --text (default char)")
    data.add_argument("--data-root", metavar="DIR", type=argument("data_root"), help="where corpora live (else $ODERNN_DATA, else ~/.cache/odernn)")
    data.add_argument("--train-tokens", type=argument("train_tokens"), help="use only the first N training tokens")
    data.add_argument("--valid-tokens", type=argument("valid_tokens"),
                      help="use only the first N validation tokens, in the final validation too (quick runs)")
    model = p.add_argument_group("model")
    model.add_argument("--cell", default=defaults.cell, help=f"cell spec of every layer (default {defaults.cell})")
    model.add_argument("--layers", type=argument("layers"), default=defaults.layers)
    model.add_argument("--hidden", type=argument("hidden"), default=defaults.hidden)
    model.add_argument("--embed", type=argument("embed"), help="embedding width (default: --hidden)")
    model.add_argument("--dropout", type=argument("dropout"), default=defaults.dropout)
    model.add_argument("--tie-weights", action="store_true", help="share the embedding and decoder weights")
    hardware = p.add_argument_group("device and precision")
    hardware.add_argument("--device", help="auto (default: CUDA if there is one, else the CPU), cpu, cuda or "
                                           "cuda:N; with --resume the run's own device unless given")
    _precision_option(hardware, defaults.precision)
    hardware.add_argument("--compile-elementwise", action="store_true",
                          help="ODE layers: fuse each evaluation's elementwise math with torch.compile "
                               "(compiles for a while first; pays on a GPU, not on a CPU)")
    hardware.add_argument("--cuda-graphs", action="store_true",
                          help="ODE layers: capture each batch shape's forward and backward in CUDA graphs "
                               "(CUDA only; removes the per-token launch overhead)")
    grad = p.add_argument_group("gradients through the solver")
    grad.add_argument("--grad", choices=("backprop", "checkpoint", "adjoint"), default=defaults.grad,
                      help="backprop through the steps; checkpoint (recompute per token, exact); adjoint "
                           "(continuous adjoint, memory independent of the steps)")
    grad.add_argument("--adjoint-method", help="tableau of the backward solve (default: the forward one)")
    grad.add_argument("--adjoint-steps", type=argument("adjoint_steps"), help="steps of the backward solve per token (default: the cell's)")
    grad.add_argument("--adjoint-rtol", type=argument("adjoint_rtol"), help="adaptive backward solve at this tolerance (with an "
                                                         "embedded pair as --adjoint-method: dopri5, bs3, tsit5, …)")
    grad.add_argument("--adjoint-atol", type=argument("adjoint_atol"))
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--batch-size", type=argument("batch_size"), default=defaults.batch_size, help="parallel token streams")
    opt.add_argument("--bptt", type=argument("bptt"), default=defaults.bptt, help="truncated-BPTT length")
    opt.add_argument("--lr", type=argument("lr"), default=defaults.lr)
    opt.add_argument("--optimizer", choices=("adamw", "sgd"), default=defaults.optimizer)
    opt.add_argument("--weight-decay", type=argument("weight_decay"), default=defaults.weight_decay)
    opt.add_argument("--momentum", type=argument("momentum"), default=defaults.momentum, help="SGD momentum")
    opt.add_argument("--schedule", choices=("cosine", "constant", "step"), default=defaults.schedule,
                     help="cosine decay to a tenth over the run, constant, or step: × --decay at every "
                          "epoch after the first --decay-after (Zaremba et al. 2014)")
    opt.add_argument("--decay-after", type=argument("decay_after"), default=defaults.decay_after, metavar="K",
                     help=f"epochs at the full rate with --schedule step (default {defaults.decay_after})")
    opt.add_argument("--decay", type=argument("decay"), default=defaults.decay,
                     help=f"factor per later epoch with --schedule step (default {defaults.decay})")
    opt.add_argument("--warmup", type=argument("warmup"), default=defaults.warmup, help="warm-up steps")
    opt.add_argument("--clip", type=argument("clip"), default=defaults.clip, help="gradient-norm clipping (0: none)")
    opt.add_argument("--init-gain", type=argument("init_gain"), default=defaults.init_gain, metavar="G",
                     help="multiply the recurrent weights (those PyTorch names weight_hh, and a higher-order "
                          "field's order_weights) by G at initialisation: a large initial recurrent scale, to see "
                          "whether training stays stable (default 1)")
    opt.add_argument("--jac-reg", type=argument("jac_reg"), default=defaults.jac_reg, metavar="λ",
                     help="add λ·(‖vᵀ ∂y⁺/∂y‖ − 1)², a random unit v, at each batch's starting states: pulls each "
                          "ODE cell's step amplification towards 1 (stability.jacobian_penalty; 0: off)")
    budget = opt.add_mutually_exclusive_group()
    budget.add_argument("--max-tokens", type=argument("max_tokens"), help=f"training-token budget (default {defaults.max_tokens:,}; "
                                                       "with --resume: the run's new budget, longer or shorter, not below what it has trained)")
    budget.add_argument("--epochs", type=argument("epochs"), help="budget in passes over the training streams instead")
    opt.add_argument("--max-seconds", type=argument("max_seconds"),
                     help="wall-clock budget of the training, the final validation and the sample (summed over "
                          "resumes): training stops in time for the validation, which, like the sample, is cut "
                          "short with a message where the budget ends (the schedule still follows --max-tokens)")
    opt.add_argument("--seed", type=argument("seed"), default=defaults.seed)
    opt.add_argument("--on-nan", choices=("halve", "stop"), default=defaults.on_nan,
                     help="on a NaN/Inf loss or gradient: undo the last step and halve the LR, or stop")
    run = p.add_argument_group("run")
    run.add_argument("--out", default=defaults.out, type=argument("out"), help=f"output folder (default {defaults.out})")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUT/checkpoint.pt, as the run was trained: options that contradict it "
                          "are refused; the budget (--max-tokens, --epochs, --max-seconds), --eval-every, "
                          "--eval-tokens, --checkpoint-every, --log-every, --probe-every, --data-root, --device, "
                          "--compile-elementwise, --cuda-graphs, --no-progress, --sample-length and --json may change")
    run.add_argument("--eval-every", type=argument("eval_every"), default=defaults.eval_every, help="validate every N steps")
    run.add_argument("--eval-tokens", type=argument("eval_tokens"), help="validation tokens per evaluation (default all)")
    run.add_argument("--checkpoint-every", type=argument("checkpoint_every"), default=defaults.checkpoint_every)
    run.add_argument("--log-every", type=argument("log_every"), default=defaults.log_every)
    run.add_argument("--probe-every", type=argument("probe_every"), default=defaults.probe_every,
                     help="stability probe of the ODE cells every N steps (0: off)")
    run.add_argument("--check-at", type=argument("check_at"), nargs="+", metavar="F",
                     help="run 'odernn stability check' on each ODE layer at these fractions of the budget (0: "
                          "before the first step), driven by the first 64 validation tokens; the verdicts go "
                          "to OUT/metrics.jsonl as \"event\": \"check\" records")
    run.add_argument("--patience", type=argument("patience"), default=defaults.patience,
                     help="early stopping: stop after N periodic validations (--eval-every) without a new best, "
                          "keep the best weights in OUT/best.pt and report the best model (0: off)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--sample-length", type=argument("sample_length"), default=200, help="length of the sample printed at the end")
    run.add_argument("--json", action="store_true", help="print the final result as JSON (no sample)")


def _precision_option(group, default: str | None) -> None:
    from textlm.runtime import PRECISIONS
    group.add_argument("--precision", "--dtype", dest="precision", choices=PRECISIONS, default=default,
                       help="float32, bf16 (autocast with float32 master weights; ODE states stay float32) or "
                            "float64" + (f" (default {default})" if default else " (default: the run's own)"))


def _device_option(p) -> None:
    p.add_argument("--device", default="auto", help="auto (default: CUDA if there is one), cpu, cuda or cuda:N")


def register(sub, formatter) -> None:
    from textlm.train import TrainConfig
    defaults = TrainConfig()
    p = sub.add_parser("train", help="train a language model with any cell", formatter_class=formatter,
                       description="Train embedding → cells → decoder on a corpus; print validation perplexity "
                                   "and a sample.", epilog=_TRAIN_EXAMPLE)
    _options(p, defaults)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("generate", help="sample text from a checkpoint", formatter_class=formatter,
                       epilog="example:\n  odernn generate runs/quick --prompt 'ROMEO:' --length 300 --temperature 0.8")
    p.add_argument("checkpoint", type=argument("checkpoint"), help="a checkpoint file or its run folder")
    p.add_argument("--prompt", default="\n", help="text to continue (default a newline)")
    p.add_argument("--length", type=argument("length"), default=300)
    p.add_argument("--temperature", type=argument("temperature"), default=1.0)
    p.add_argument("--top-k", type=argument("top_k"))
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--seed", type=argument("seed"), default=0)
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    _device_option(p)
    _precision_option(p, None)
    p.set_defaults(handler=cmd_generate)

    p = sub.add_parser("evaluate", help="perplexity, BLEU, ROUGE-L and the combined score of a checkpoint",
                       formatter_class=formatter,
                       epilog="example:\n  odernn evaluate runs/quick --split test --json")
    p.add_argument("checkpoint", type=argument("checkpoint"), help="a checkpoint file or its run folder")
    p.add_argument("--split", choices=("valid", "test"), default="valid")
    p.add_argument("--data-root", metavar="DIR", type=argument("data_root"))
    p.add_argument("--prompts", type=argument("prompts"), default=20, help="test prompts for BLEU/ROUGE")
    p.add_argument("--temperature", type=argument("temperature"), default=0.8)
    p.add_argument("--seed", type=argument("seed"), default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")
    _device_option(p)
    _precision_option(p, None)
    p.set_defaults(handler=cmd_evaluate)


def _config(args):
    from textlm.train import TrainConfig
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["progress"] = not args.no_progress
    for name in ("max_tokens", "device"):  # not given: the default (or, on --resume, the run's own)
        if values.get(name) is None:
            values.pop(name, None)
    if not args.resume and not (args.corpus or args.text):
        raise CLIError("give --corpus NAME or --text PATH (or --resume)")
    try:
        return TrainConfig(**values)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _plot_curves(out: Path, config=None) -> Path | None:
    """OUT/curves.png: training and validation loss against tokens, titled with the cell, the
    corpus and the budget; markers where a curve has few points."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    valid = [(r["tokens"], r["valid_loss"]) for r in records if "valid_loss" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if train:
        ax.plot(*zip(*train), marker="o" if len(train) <= 20 else None, markersize=3, label="train")
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    if config is not None:
        source = config.corpus or Path(config.text or "text").name
        ax.set_title(f"{config.cell} on {source}: {config.layers}×{config.hidden}, seed {config.seed}, "
                     f"{records[-1]['tokens'] if records and 'tokens' in records[-1] else config.max_tokens:,} tokens",
                     fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    target = out / "curves.png"
    tmp = out / ".curves.tmp.png"
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(target)
    return target


# what --resume lets change: the trainer's resumable settings (the budget, the cadence of evaluation,
# logging and checkpoints, where the data is, how it runs), and where the run is, the progress bar and
# the printout
RESUMABLE = (*TRAINER_RESUMABLE, "out", "no_progress", "sample_length", "json", "resume")


def _resume_conflicts(args) -> None:
    """With --resume, every option given that the run fixes must equal the run's own: one line naming
    each that does not (they were silently ignored before)."""
    from textlm.checkpoint import load_checkpoint
    from textlm.train import TrainConfig
    saved = TrainConfig.from_dict(load_checkpoint(Path(args.out) / "checkpoint.pt")["config"])
    conflicts = []
    for name in sorted(getattr(args, "given", set()) - set(RESUMABLE)):
        if hasattr(saved, name) and getattr(args, name) != getattr(saved, name):
            flag = "--" + name.replace("_", "-")
            conflicts.append(f"{flag} {getattr(args, name)} (the run has {getattr(saved, name)})")
    if conflicts:
        raise CLIError(f"--resume continues the run in {args.out} as it was trained; these options contradict it: "
                       f"{'; '.join(conflicts)}. Leave them out, or start a new run with another --out "
                       f"(on resume only {', '.join('--' + n.replace('_', '-') for n in RESUMABLE[:-1])} may change)")


def cmd_train(args) -> int:
    from textlm.train import RunLock, Trainer
    if args.resume:
        _resume_conflicts(args)
    config = _config(args)
    try:
        given = getattr(args, "given", set()) if args.resume else set()
        trainer = Trainer(config, resume=args.resume, **{name: getattr(args, name) for name in TRAINER_RESUMABLE
                                                         if name in given})
    except ValueError as err:
        raise CLIError(str(err)) from None
    with RunLock(trainer.out) if trainer.rank == 0 else contextlib.nullcontext():
        return _train(args, trainer)


def _train(args, trainer) -> int:
    import math

    import torch

    from textlm.evaluate import perplexity, sample
    from textlm.model import ModelError
    from textlm.train import TrainingError, TrainingInterrupted
    model = trainer.model
    c = trainer.config
    print(f"{trainer.corpus!r}\nmodel: {model.describe()}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"grad {c.grad}; {trainer.total_steps} steps of {c.batch_size}×{c.bptt} tokens "
          f"({trainer.total_steps / trainer.steps_per_epoch:.3g} epochs) on {c.device} in {c.precision}",
          file=sys.stderr)
    try:
        result = trainer.run()
    except TrainingInterrupted as err:
        print(f"odernn: {err}", file=sys.stderr)
        return err.exit_code
    except TrainingError as err:
        print(f"odernn: training stopped: {err}", file=sys.stderr)
        return 1
    if trainer.rank:
        return 0
    curves = _plot_curves(trainer.out, trainer.config)
    if args.json:
        print(json.dumps(result))
        return 0
    level = trainer.corpus.level
    valid = result["valid_loss"]
    if "valid_cut" in result:
        print(f"odernn: {result['valid_cut']}", file=sys.stderr)
    line = f"validation loss {valid:.4f} nats/token, perplexity {perplexity(valid):.2f}"
    if level == "char":
        line += f", {valid / math.log(2):.4f} bits/char"
    print(line + f" after {result['tokens']:,} tokens in {result['elapsed']:.1f} s")
    vocab = trainer.corpus.vocab
    prompt = vocab.encode("\n" if level == "char" else "<eos>", strict=False) or [0]
    try:
        with trainer.runtime.autocast():
            generated = sample(model, prompt, args.sample_length, temperature=0.8,
                               generator=torch.Generator().manual_seed(c.seed), deadline=trainer.deadline)
    except ModelError as err:
        print(f"odernn: no sample: {err}", file=sys.stderr)
        return 1
    if len(generated) < args.sample_length:
        print(f"odernn: the sample stops at {len(generated)} of {args.sample_length} tokens: the --max-seconds "
              f"{c.max_seconds:g} budget ended", file=sys.stderr)
    print("sample:\n" + vocab.decode(generated))
    print(f"checkpoint {trainer.checkpoint_path}; metrics {trainer.out / 'metrics.jsonl'}"
          + (f"; curves {curves}" if curves else ""), file=sys.stderr)
    return 0


def _load_model(path, device="cpu", precision: str | None = None):
    """``(model, vocabulary, checkpoint, runtime)``: the model on ``device``, with the runtime of
    ``precision`` (``None``: the precision it was trained in)."""
    from textlm.checkpoint import load_checkpoint
    from textlm.data import Vocabulary
    from textlm.model import LanguageModel
    from textlm.runtime import Runtime
    data = load_checkpoint(path)
    trained = data.get("config", {})
    runtime = Runtime.of(device, precision or trained.get("precision") or trained.get("dtype") or "float32")
    try:
        model = LanguageModel.from_checkpoint(data, runtime.device)
    except (KeyError, RuntimeError, ValueError) as err:
        raise CLIError(f"{path}: the checkpoint's model does not load: {str(err)[:200]}") from None
    model = model.to(runtime.dtype)  # bf16: float32 weights under autocast
    return model, Vocabulary.from_dict(data["vocab"]), data, runtime


def cmd_generate(args) -> int:
    import torch

    from textlm.evaluate import sample
    if args.length < 1:
        raise CLIError(f"--length must be positive (the tokens to generate), got {args.length}")
    if args.top_k is not None and args.top_k < 1:
        raise CLIError(f"--top-k must be positive, got {args.top_k}")
    model, vocab, _, runtime = _load_model(args.checkpoint, args.device, args.precision)
    try:
        prompt = vocab.encode(args.prompt)
    except KeyError as err:
        raise CLIError(f"prompt: {err.args[0]}") from None
    if not prompt:
        raise CLIError("the prompt has no tokens")
    try:
        with runtime.autocast():
            out = sample(model, prompt, args.length, args.temperature, args.top_k, args.greedy,
                         torch.Generator().manual_seed(args.seed),
                         progress=None if args.no_progress or not sys.stderr.isatty() else "generating")
    except ValueError as err:
        raise CLIError(str(err)) from None
    print(vocab.decode(prompt) + ("" if vocab.level == "char" else " ") + vocab.decode(out))
    return 0


def cmd_evaluate(args) -> int:
    import math

    from textlm.data import load_corpus
    from textlm.evaluate import evaluate_loss, generation_metrics, perplexity
    model, vocab, data, runtime = _load_model(args.checkpoint, args.device, args.precision)
    config = data["config"]
    corpus = load_corpus(config.get("corpus"), config.get("text"), config.get("level"),
                         args.data_root or config.get("data_root"))
    if corpus.vocab.tokens != vocab.tokens:
        raise CLIError("the corpus's vocabulary differs from the checkpoint's")
    split = corpus.split(args.split)
    show = not args.no_progress
    with runtime.autocast():
        loss = evaluate_loss(model, split, progress=f"{args.split} loss over {len(split):,} tokens" if show else None)
        metrics = generation_metrics(model, vocab, split, prompts=args.prompts, temperature=args.temperature,
                                     seed=args.seed, progress="generating for BLEU/ROUGE" if show else None)
    result = {"split": args.split, "tokens": len(split), "device": str(runtime.device),
              "precision": runtime.precision, "loss": loss, "perplexity": perplexity(loss),
              "bleu": metrics.bleu, "rouge_l": metrics.rouge_l, "distinct_1": metrics.distinct_1,
              "distinct_2": metrics.distinct_2, "self_bleu": metrics.self_bleu, "combined": metrics.combined}
    if vocab.level == "char":
        result["bits_per_char"] = loss / math.log(2)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            print(f"{key:<14}{value:.4f}" if isinstance(value, float) else f"{key:<14}{value}")
    return 0
