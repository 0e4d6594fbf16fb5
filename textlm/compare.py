"""``odernn compare``: several cells, several seeds, one corpus, one budget — and a table.

Every (cell, seed) run trains in its own process (``odernn train``, forked from a server that has
imported the toolkit once: :mod:`textlm._commands`), so that its peak resident memory is its own
and a killed comparison loses at most the run in progress: a finished run has a
``compare.json`` and is not run again; an unfinished one resumes from its checkpoint. Then each run
is measured the same way — validation perplexity, BLEU, ROUGE-L and the combined score of sampled
continuations of validation prompts, the stability margin of its ODE layers at the final weights —
and the table gives mean ± standard deviation over seeds.

**Parameter budget.** With ``params=N`` each cell gets the hidden width whose model (embedding,
layers, decoder) has the parameter count closest to ``N``; the table states every count.

**Loss spikes.** A logged training loss more than ``0.5`` nats above the lowest one logged before
it (after the first 10 % of the run, when the loss still falls fast from its start).

**Speed.** ``tokens/s`` is the steady state: training tokens over training time (validation and
checks excluded) in the logged windows after the first ``max(20 steps, 5 %)`` of the run, where
allocation and warm-up make the first steps slow (``tokens_per_s_overall`` keeps the plain ratio).

**Early stopping** (``patience``): the run's model is its best periodic validation's (``best.pt``);
test perplexity, generation, the stability margin and the robustness columns measure that one.

**Robustness** (``noise``): validation perplexity when each fraction of the *input* characters is
replaced by random others (:func:`textlm.evaluate.corrupted`; the targets stay clean).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CompareConfig", "CompareError", "DEFAULT_CELLS", "compare", "hidden_for_budget", "parameter_count"]

DEFAULT_CELLS = ("torch-rnn", "torch-lstm", "torch-gru", "gru-ode:euler", "gru-ode:midpoint", "gru-ode:rk4",
                 "antisymmetric:euler")
SPIKE = 0.5  # nats


@dataclass
class CompareConfig:
    corpus: str | None = "tinyshakespeare"
    text: str | None = None
    level: str | None = None
    data_root: str | None = None
    cells: list[str] = field(default_factory=lambda: list(DEFAULT_CELLS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    params: int | None = None  # parameter budget; None: the same --hidden for every cell
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    grad: str = "backprop"
    batch_size: int = 32
    bptt: int = 64
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip: float = 1.0
    init_gain: float = 1.0  # the recurrent weights at initialisation × this (train --init-gain)
    schedule: str = "cosine"
    decay_after: int = 4
    decay: float = 0.5
    max_tokens: int = 1_000_000
    epochs: int | None = None  # overrides max_tokens
    max_seconds: float | None = None
    eval_every: int = 100
    eval_tokens: int | None = 20_000
    patience: int = 0  # early stopping on the periodic validation (0: off)
    check_at: list[float] | None = None  # stability verdicts at these fractions of the budget
    noise: list[float] = field(default_factory=list)  # robustness: fractions of input tokens replaced
    prompts: int = 20
    device: str = "auto"
    precision: str = "float32"
    compile_elementwise: bool = False
    cuda_graphs: bool = False
    out: str = "runs/compare"

    def __post_init__(self):
        from .limits import check_dependent, check_fields
        problems = check_fields(self) + check_dependent(self)  # textlm.limits: numbers, and options that act
        if not self.cells or not self.seeds:
            problems.append("give at least one cell and one seed")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"--seeds {' '.join(map(str, self.seeds))}: a seed given twice")
        folders = {}  # a run's folder is named after its cell: two cells in one would be one run counted twice
        for cell in self.cells:
            folders.setdefault(_slug(cell), []).append(cell)
        for folder, cells in folders.items():
            if len(cells) > 1:
                problems.append(f"--cells {' '.join(cells)}: a cell given twice" if len(set(cells)) == 1 else
                                f"--cells {' and '.join(cells)} would share one run folder ({folder}): give one of "
                                "them per command")
        if problems:
            raise ValueError("; ".join(problems))


def parameter_count(cell: str, vocab_size: int, hidden: int, layers: int, embed: int | None = None) -> int:
    from .model import LanguageModel
    model = LanguageModel(vocab_size, cell, layers=layers, hidden=hidden, embed=embed)
    return sum(p.numel() for p in model.parameters())


def hidden_for_budget(cell: str, vocab_size: int, layers: int, params: int) -> int:
    """The hidden width (embedding = hidden) whose model's parameter count is closest to ``params``."""
    lo, hi = 1, 4096
    while hi - lo > 1:  # the count grows with the width: bisect on it
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if parameter_count(cell, vocab_size, mid, layers) <= params else (lo, mid)
    return min((lo, hi), key=lambda h: abs(parameter_count(cell, vocab_size, h, layers) - params))


def _slug(cell: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in cell)


def _spikes(records: list[dict]) -> int:
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    start = max(1, len(losses) // 10)
    count = 0
    for i in range(start, len(losses)):
        if losses[i] > min(losses[:i]) + SPIKE:
            count += 1
    return count


class CompareError(RuntimeError):
    """A run of the comparison failed; the message names it and quotes its error. ``exit_code``:
    the run's (1: training could not go on, 130/143: interrupted, negative: killed)."""

    def __init__(self, message: str, exit_code: int | None = None, crashed: bool = False):
        super().__init__(message)
        self.exit_code, self.crashed = exit_code, crashed  # crashed: a traceback, not a training failure


def _train(config: CompareConfig, cell: str, seed: int, hidden: int, run: Path, show: bool = False,
           fresh: bool = False) -> dict:
    """Train in a child process (resuming if it has a checkpoint); its result, with its own peak
    resident memory (``peak_rss_mb``). ``show``: a progress bar (steps, tokens/s, ETA) read from
    the child's ``metrics.jsonl`` while it runs. ``fresh``: a new interpreter (``Command``'s)."""
    if not (run / "checkpoint.pt").is_file():
        from .train import RunInUse, RunLock
        try:
            with RunLock(run):  # not the records of a run another command is training there
                _set_aside(run)
        except RunInUse as err:
            raise CompareError(f"{cell} seed {seed}: {err}", 2) from None
    from ._commands import Command
    with Command(train_command(config, cell, seed, hidden, run), fresh=fresh) as proc:
        if show:
            _follow(proc, run / "metrics.jsonl", f"{cell} seed {seed}", config)
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        raise CompareError(f"{cell} seed {seed} failed (exit {proc.returncode}): {last}", proc.returncode,
                           "Traceback (most recent call last)" in stderr)
    return json.loads(stdout.strip().splitlines()[-1])


def _set_aside(run: Path) -> None:
    """The records of an earlier start of a run that left no checkpoint (killed before its first,
    or its checkpoint lost with the machine) move to ``superseded-K/``: the run starts again from
    its seed, in a folder that holds no other run's records (``train`` refuses one that does)."""
    from .train import RUN_FILES
    earlier = [run / name for name in RUN_FILES if (run / name).exists()]
    if earlier:
        k = next(k for k in itertools.count() if not (run / f"superseded-{k}").exists())
        (run / f"superseded-{k}").mkdir()
        for path in earlier:
            path.rename(run / f"superseded-{k}" / path.name)


def train_command(config: CompareConfig, cell: str, seed: int, hidden: int, run: Path) -> list[str]:
    """The ``odernn`` arguments (``--threads N train …``) of one comparison run writing to ``run``
    (``--resume`` where it has a checkpoint); :class:`textlm._commands.Command` runs them."""
    import torch
    args = ["--threads", str(torch.get_num_threads()), "train", "--out", str(run), "--no-progress", "--json",
            "--device", config.device]
    # the budget on a resume too (the same: compare refuses another one on the same --out)
    args += ["--epochs", str(config.epochs)] if config.epochs else ["--max-tokens", str(config.max_tokens)]
    if config.data_root:
        args += ["--data-root", config.data_root]
    if (run / "checkpoint.pt").is_file():
        args.append("--resume")
    else:
        args += ["--cell", cell, "--seed", str(seed), "--hidden", str(hidden), "--layers", str(config.layers),
                 "--dropout", str(config.dropout), "--grad", config.grad, "--batch-size", str(config.batch_size),
                 "--bptt", str(config.bptt), "--optimizer", config.optimizer, "--lr", str(config.lr),
                 "--momentum", str(config.momentum), "--weight-decay", str(config.weight_decay),
                 "--clip", str(config.clip), "--init-gain", str(config.init_gain), "--schedule", config.schedule,
                 "--decay-after", str(config.decay_after),
                 "--decay", str(config.decay), "--precision", config.precision,
                 *(["--compile-elementwise"] if config.compile_elementwise else []),
                 *(["--cuda-graphs"] if config.cuda_graphs else []),
                 "--eval-every", str(config.eval_every), "--checkpoint-every", "50"]
        args += ["--corpus", config.corpus] if config.corpus else ["--text", config.text]
        if config.level:
            args += ["--level", config.level]
        if config.eval_tokens:
            args += ["--eval-tokens", str(config.eval_tokens)]
        if config.max_seconds:
            args += ["--max-seconds", str(config.max_seconds)]
        if config.patience:
            args += ["--patience", str(config.patience)]
        if config.check_at:
            args += ["--check-at", *map(str, config.check_at)]
    return args


def _follow(proc, metrics: Path, label: str, config: CompareConfig) -> None:
    """A tqdm bar over the child's training steps, from the records it appends to its metrics
    file, until it exits (the final validation and the measurements follow, said in the bar)."""
    from tqdm import tqdm
    bar, offset = None, 0
    try:
        while proc.poll() is None:
            time.sleep(0.25)
            if not metrics.is_file():
                continue
            with metrics.open("rb") as f:  # only what was appended since the last look, whole lines
                f.seek(offset)
                chunk = f.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]
            offset += len(complete)
            records = [json.loads(line) for line in complete.decode().splitlines() if line.strip()]
            steps = [r for r in records if "tokens_per_s" in r]
            if not steps:
                continue
            last = steps[-1]
            if bar is None:
                total = (config.max_tokens if config.epochs is None else None)
                total = math.ceil(total / (config.batch_size * config.bptt)) if total else None
                bar = tqdm(total=total, desc=label, unit="step", dynamic_ncols=True, file=sys.stderr)
            bar.update(last["step"] - bar.n)
            bar.set_postfix(loss=f"{last['train_loss']:.3f}", tok_s=f"{last['tokens_per_s']:,.0f}")
            if bar.total and last["step"] >= bar.total:
                bar.set_postfix_str("final validation")
    finally:
        if bar is not None:
            bar.close()


def read_records(path: Path) -> list[dict]:
    """A run's ``metrics.jsonl``, each step's log record once: a run killed without saving (SIGKILL)
    and resumed from an earlier checkpoint logs the steps since that checkpoint again."""
    out, last = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "tokens_per_s" in record:
            if record["step"] <= last:
                continue
            last = record["step"]
        out.append(record)
    return out


def steady_tokens_per_s(records: list[dict]) -> float | None:
    """Training tokens per second of training time over the logged windows that end after the
    first ``max(20 steps, 5 %)`` of the run (all windows but the first where none does)."""
    windows, previous = [], 0
    for r in records:
        if "tokens_per_s" in r:  # a window's own tokens (a resume starts a window afresh)
            windows.append((r["step"], r.get("window_tokens", r["tokens"] - previous), r["tokens_per_s"]))
            previous = r["tokens"]
    if not windows:
        return None
    warm = max(20, 0.05 * windows[-1][0])
    steady = [w for w in windows if w[0] > warm] or windows[1:] or windows
    seconds = sum(tokens / speed for _, tokens, speed in steady if speed > 0)
    return sum(tokens for _, tokens, _ in steady) / seconds if seconds > 0 else None


def checks(records: list[dict]) -> dict:
    """The ``--check-at`` verdicts: per fraction of the budget (``check_0`` at initialisation,
    ``check_0.05`` at 5 %, …), the most severe verdict over the layers, the smallest margin and,
    where the check reported them, whether every layer's step keeps large states in
    (``far_field``) and its field restores them (``restoring_far_field``)."""
    import stability
    order = list(stability.VERDICTS)  # mildest first
    out = {}
    for r in (r for r in records if r.get("event") == "check" and "verdict" in r):
        seen = out.setdefault(f"check_{r['fraction']:g}", {"verdict": r["verdict"], "margin": r["margin"]})
        if order.index(r["verdict"]) > order.index(seen["verdict"]):
            seen["verdict"] = r["verdict"]
        seen["margin"] = min(seen["margin"], r["margin"])
        for key in ("far_field", "restoring_far_field"):  # False if a layer fails, else None if one was not measured
            if key in r:
                both = (seen.get(key, True), r[key])
                seen[key] = False if False in both else None if None in both else True
    return out


def _measure(config: CompareConfig, run: Path, best: bool = False) -> dict:
    """Test perplexity, generation metrics, the stability margin and (``noise``) the robustness of
    the trained model in ``run`` — its best weights under early stopping — on the comparison's
    device, in the run's precision (the stability check in float32)."""
    import stability

    from .checkpoint import load_checkpoint
    from .data import Vocabulary, load_corpus
    from .evaluate import corrupted, evaluate_loss, generation_metrics, perplexity
    from .model import LanguageModel
    from .runtime import Runtime
    data = load_checkpoint(run / "best.pt" if best else run)
    runtime = Runtime.of(config.device, data["config"].get("precision", "float32"))
    model = LanguageModel.from_checkpoint(data, runtime.device)
    vocab = Vocabulary.from_dict(data["vocab"])
    corpus = load_corpus(config.corpus, config.text, config.level, config.data_root)
    with runtime.autocast():
        test_loss = evaluate_loss(model, corpus.test)
        metrics = generation_metrics(model, vocab, corpus.valid, prompts=config.prompts)
        noisy = {f"valid_ppl_noise_{fraction:g}": perplexity(evaluate_loss(
                 model, corpus.valid, inputs=corrupted(corpus.valid, fraction, len(vocab)))) for fraction in config.noise}
    margins = [stability.check(cell, inputs=x).margin
               for _, cell, x in model.ode_layer_inputs(_probe_tokens(model))]
    return {"test_ppl": perplexity(test_loss), "bleu": metrics.bleu, "rouge_l": metrics.rouge_l,
            "combined": metrics.combined, "margin": min(margins) if margins else None, **noisy}


def _probe_tokens(model):
    """The fixed random token sequence (16 tokens) along which a trained model's cells are checked."""
    import torch
    device = next(model.parameters()).device
    return torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)


def run_one(config: CompareConfig, cell: str, seed: int, hidden: int, show: bool = False, progress=None,
            fresh: bool = False) -> dict:
    from .evaluate import perplexity
    run = Path(config.out) / "runs" / _slug(cell) / f"seed{seed}"
    done = run / "compare.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = _train(config, cell, seed, hidden, run, show, fresh)
    if progress is not None:
        progress(f"{cell} seed {seed}: trained; measuring test perplexity, BLEU and ROUGE-L on {config.prompts} prompts")
    records = read_records(run / "metrics.jsonl")
    norms = sorted(r["grad_norm_max"] for r in records if "grad_norm_max" in r)
    row = {"cell": cell, "seed": seed, "hidden": hidden, **result, "spikes": _spikes(records),
           "valid_ppl": perplexity(result["valid_loss"]), "s_per_epoch": result["elapsed"] / result["epochs"],
           "tokens_per_s_overall": result["tokens_per_s"], "tokens_per_s": steady_tokens_per_s(records),
           "grad_norm_median": norms[len(norms) // 2] if norms else None, "grad_norm_max": norms[-1] if norms else None,
           **checks(records), **_measure(config, run, best="best_step" in result)}
    tmp = run / ".compare.json.tmp"
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(done)
    return row


def _mean_std(values) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    mean = statistics.fmean(values)
    digits = 3 if abs(mean) < 10 else 1 if abs(mean) < 1000 else 0
    if len(values) == 1:  # one seed has no spread to report
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {statistics.stdev(values):,.{digits}f}"


COLUMNS = [("valid perplexity", "valid_ppl"), ("test perplexity", "test_ppl"), ("BLEU", "bleu"), ("ROUGE-L", "rouge_l"), ("combined", "combined"),
           ("tokens/s (steady)", "tokens_per_s"), ("s/epoch", "s_per_epoch"), ("peak RSS (MiB)", "peak_rss_mb"), ("NFE/token", "nfe_per_token"),
           ("loss spikes", "spikes"), ("NaN recoveries", "nan_recoveries"), ("stability margin", "margin")]


def table(rows: list[dict]) -> str:
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    noise = sorted({key for r in rows for key in r if key.startswith("valid_ppl_noise_")},
                   key=lambda key: float(key.rsplit("_", 1)[1]))
    columns = COLUMNS + [(f"valid ppl, {100 * float(key.rsplit('_', 1)[1]):g} % inputs replaced", key) for key in noise]
    lines = ["| cell | hidden | parameters | seeds | " + " | ".join(name for name, _ in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for cell in cells:
        mine = [r for r in rows if r["cell"] == cell]
        lines.append(f"| {cell} | {mine[0]['hidden']} | {mine[0]['parameters']:,} | {len(mine)} | "
                     + " | ".join(_mean_std([r.get(key) for r in mine]) for _, key in columns) + " |")
    return "\n".join(lines)


def plots(config: CompareConfig, rows: list[dict]) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = learning_curves(config, rows)
    target = Path(config.out) / "learning_curves.png"
    fig.savefig(target, bbox_inches="tight")
    plt.close(fig)
    return [target] + _stability_plot(config, rows)


def learning_curves(config: CompareConfig, rows: list[dict]):
    """The validation loss of every cell against training tokens and against seconds: the mean
    over the seeds, with a band of ± one standard deviation where there are several."""
    import matplotlib.pyplot as plt
    import numpy as np
    out = Path(config.out)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    for cell in dict.fromkeys(r["cell"] for r in rows):
        curves = []
        for r in (r for r in rows if r["cell"] == cell):
            run = out / "runs" / _slug(cell) / f"seed{r['seed']}"
            records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            valid = [(q["tokens"], q["elapsed"], q["valid_loss"]) for q in records if "valid_loss" in q]
            if valid:
                curves.append(np.array(valid))
        if not curves:
            continue
        length = min(len(c) for c in curves)
        stack = np.stack([c[:length] for c in curves])
        for ax, column in zip(axes, (0, 1)):
            x = stack[:, :, column].mean(axis=0)
            mean, std = stack[:, :, 2].mean(axis=0), stack[:, :, 2].std(axis=0)
            # markers where a curve has few points: one evaluation would otherwise draw nothing
            (line,) = ax.plot(x, mean, label=cell, marker="o" if length <= 20 else None, markersize=4)
            if len(curves) > 1:
                ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    for ax, label in zip(axes, ("training tokens", "wall-clock seconds")):
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    seeds = len(config.seeds)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else f"seed {config.seeds[0]}"
    budget = f"{config.max_tokens:,} tokens" if config.epochs is None else f"{config.epochs} epochs"
    fig.suptitle(f"{config.corpus or Path(config.text).name}: validation loss, {budget} per run; {spread}")
    return fig


def _stability_plot(config: CompareConfig, rows: list[dict]) -> list[Path]:
    """Each ODE cell's tableau region with the step-scaled Jacobian eigenvalues at its final
    weights (seed of the first run)."""
    import matplotlib.pyplot as plt
    import numpy as np

    import butcher
    import stability

    from .checkpoint import load_checkpoint
    from .model import LanguageModel
    out = Path(config.out)
    written = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        first = next(r for r in rows if r["cell"] == cell)
        run = out / "runs" / _slug(cell) / f"seed{first['seed']}"
        model = LanguageModel.from_checkpoint(load_checkpoint(run))
        layers = model.ode_layer_inputs(_probe_tokens(model))
        if not layers:
            continue
        _, first_cell, x = layers[0]
        report = stability.check(first_cell, inputs=x)
        z = report.eigenvalues
        zoom = {}
        if len(z) and np.abs(z).max() < 0.2:  # a small step: the cloud would be a dot at the origin
            half = 1.5 * max(np.abs(z.real).max(), np.abs(z.imag).max(), 1e-6)
            zoom = {"xlim": (-2 * half, half), "ylim": (-1.5 * half, 1.5 * half)}
        fig = butcher.plot_stability_region(first_cell.tableau, z, point_label="h·λ(∂f/∂y)", **zoom)
        margin = f"{report.margin:+.3f}" if abs(report.margin) >= 1e-3 else f"{report.margin:+.2e}"
        fig.axes[0].set_title(f"{cell} (seed {first['seed']}): margin {margin}" + (" (zoomed)" if zoom else ""))
        target = out / f"stability_{_slug(cell)}.png"
        fig.savefig(target, bbox_inches="tight")
        plt.close(fig)
        written.append(target)
    return written


# what may differ between two commands on one --out: the cells and seeds, and where and how fast
# they run (not the budget: a finished run is not extended, so its table would mix two budgets)
EXTENSIBLE = {"cells", "seeds", "device", "data_root", "out", "compile_elementwise", "cuda_graphs"}


def refuse_other_settings(config: CompareConfig) -> None:
    """A comparison run again on its ``--out`` takes its finished runs as they are: with other
    settings (a rate, a width, a corpus) its table would mix runs of two configurations, so it is
    refused in one line. A setting the saved configuration predates counts as its default."""
    saved = Path(config.out) / "config.json"
    if not saved.is_file():
        return
    try:
        stored = json.loads(saved.read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict):
        raise ValueError(f"--out {saved.parent}: its config.json is not a comparison's configuration; "
                         "give another --out")
    given = asdict(config)
    before = {**asdict(CompareConfig()), **stored}
    unused = {"hidden"} if given["params"] is not None else set()  # --params gives each cell its width

    def same(name) -> bool:
        a, b = before[name], given[name]
        if name in ("check_at", "noise") and isinstance(a, list) and isinstance(b, list):  # sets of fractions
            with contextlib.suppress(TypeError):
                return sorted(a) == sorted(b)
        return a == b
    differ = [name for name in given if name not in EXTENSIBLE | unused and not same(name)]
    if differ:
        said = ", ".join(f"--{n.replace('_', '-')} {_shown(before[n])} there, {_shown(given[n])} given" for n in differ)
        raise ValueError(f"--out {saved.parent} holds a comparison with other settings ({said}); only the cells, "
                         "seeds and device may change between commands on one --out: give another --out")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def compare(config: CompareConfig, progress=print, bars: bool = False) -> tuple[list[dict], str]:
    from .data import load_corpus
    refuse_other_settings(config)
    corpus = load_corpus(config.corpus, config.text, config.level, config.data_root)
    from .train import training_streams
    training_streams(corpus.train, config.batch_size, config.bptt)  # every run's: refused before any is made
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1))
    rows = []
    for cell in config.cells:
        hidden = (hidden_for_budget(cell, len(corpus.vocab), config.layers, config.params)
                  if config.params else config.hidden)
        for seed in config.seeds:
            row = run_one(config, cell, seed, hidden, show=bars, progress=progress)
            rows.append(row)
            progress(f"{cell} seed {seed}: valid perplexity {row['valid_ppl']:.3f}, {row['tokens_per_s']:,.0f} tokens/s")
    budget = ((f"{config.epochs} epochs" if config.epochs else f"{config.max_tokens:,} tokens")
              + (f" or {config.max_seconds:g} s" if config.max_seconds else ""))
    schedule = {"cosine": "cosine", "constant": "constant",
                "step": f"× {config.decay:g} per epoch after {config.decay_after}"}[config.schedule]
    devices = sorted({r.get("device", "cpu") for r in rows})
    header = (f"{corpus.name} ({corpus.level} level), {config.layers} layer(s), batch {config.batch_size} × bptt "
              f"{config.bptt}, {'SGD' if config.optimizer == 'sgd' else 'AdamW'} lr {config.lr:g} {schedule}, clip "
              f"{config.clip:g}, dropout {config.dropout:g}, grad {config.grad}"
              + (f", recurrent weights ×{config.init_gain:g} at initialisation" if config.init_gain != 1 else "")
              + f", {config.precision} on "
              f"{', '.join(devices)}, budget {budget} per run, seeds {', '.join(map(str, config.seeds))}"
              + (f", parameter budget {config.params:,}" if config.params else f", hidden {config.hidden}")
              + (f", early stopping after {config.patience} validations without a new best" if config.patience else "")
              + "; tokens/s in the steady state (the first max(20 steps, 5 %) of each run excluded)")
    markdown = f"{header}\n\n{table(rows)}\n"
    (out / "results.md").write_text(markdown)
    return rows, markdown
