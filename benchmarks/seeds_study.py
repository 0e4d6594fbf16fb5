"""The seeds' question at convergence (issue 24): which tableaux and fields make better language
models, faster and more stably — and does the analytic stability check predict the runs that fail?

    python benchmarks/seeds_study.py sweep      # per cell, 4 learning rates, 1 epoch, seed 0
    python benchmarks/seeds_study.py seeds      # per cell, its best rate, 3 seeds, to convergence
    python benchmarks/seeds_study.py fail       # runs made to fail: large steps, rates, initial weights
    python benchmarks/seeds_study.py recheck    # the check of today on runs whose records predate it
    python benchmarks/seeds_study.py probe      # the training-time probe at 5 % of every run, on its weights
    python benchmarks/seeds_study.py report     # tables, figures and verdicts from what has finished
    python benchmarks/seeds_study.py all        # the three phases, the recheck, the probe, then the report

**Protocol** (stated in docs/results.md before the numbers). Tiny Shakespeare, character level,
one layer, about 430,000 parameters for every cell (``odernn compare --params``: each cell gets the
width closest to it), batch 32 × bptt 64, AdamW, cosine schedule over the budget, clip 1, dropout 0,
float32 on the CPU.

- *Sweep*: learning rates 5e-4, 2e-3, 8e-3 and 3.2e-2 (factors of 4), one epoch, seed 0. A cell's
  rate is the sweep's lowest final validation loss.
- *Seeds*: 3 seeds at that rate, at most 10 epochs, validated on the whole validation split every
  half epoch, early stopping after 3 validations without a new best (the best weights are the
  model: test perplexity, BLEU/ROUGE-L, robustness).
- *Failures on purpose*: explicit tableaux at large steps Δ, rates past the sweep's range, and
  recurrent weights scaled up at initialisation (``--init-gain``).
- Every run records the stability check's verdict before training and at 5 % of its budget
  (``--check-at 0 0.05``), its loss spikes, NaN recoveries, gradient norms and steady-state speed.
- *Recheck*: runs whose records predate the check's far-field condition are checked again by
  today's code on the same weights (retrained from their seed to 5 %, in a scratch folder).
- *Probe*: the training-time probe (``stability.Probe``) at 5 % of every run's budget, on the
  run's own weights there (retrained the same way); added after the runs, since the issue asks for
  the probe's verdict beside the check's.

Each run is an ``odernn compare`` run in its own process (``textlm.compare.run_one``): a finished
run is never trained again and an interrupted one resumes exactly, so the study can be stopped at
any moment and finished later with the same command. ``--jobs N`` runs N at once, one thread each.
The run folders (metrics, results) are the study's record: every number the report prints comes
from them. Checkpoints are ignored by git, except those of unfinished runs at the end of a working
session: a run of the implicit or adaptive cell takes longer than a session's machine lasts, and a
run whose checkpoint is lost starts again from its seed (its earlier records set aside). So at a
session's end, with the study paused, the unfinished runs' ``*.pt`` are committed
(``git add -f``), and a finished run's are dropped from the index (``git rm --cached``).

``--smoke``: the same code on a small text and budgets of seconds (what the tests run).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from textlm.compare import CompareConfig, CompareError, _slug, hidden_for_budget, read_records, run_one
from textlm.data import CorpusError
from textlm.model import ModelError

CELLS = ["torch-rnn", "torch-lstm", "torch-gru",
         "gru-ode:midpoint", "gru-ode:rk4", "gru-ode:rk4:dt=0.5",  # Δ < 1: a different model
         "lem", "cornn", "urnn", "antisymmetric:constraint=antisymmetric", "lipschitz",
         "cornn:dt=0.3",  # added after the sweep: coRNN at the published Δ = 0.042 stays at the unigram loss;
         # 0.3 is below the largest stable Δ the check gives at initialisation (0.349): a different model
         "gru-ode:alexander2",  # implicit: 2-stage SDIRK
         "gru-ode:dopri5:rtol=1e-3"]  # adaptive: Dormand–Prince with error control
RATES = [5e-4, 2e-3, 8e-3, 3.2e-2]
SEEDS = [0, 1, 2]
# runs made to fail: (cell, rate, initial recurrent gain): explicit tableaux whose step leaves the
# stability region, rates past the range, and recurrent weights scaled up at initialisation (added
# after the rest: the kind of failure the check before training sees in the weights themselves)
FAILING = [("gru-ode:euler:dt=4", 2e-3, 1), ("gru-ode:rk4:dt=4", 2e-3, 1), ("rnn:euler:dt=3", 2e-3, 1),
           ("rnn:rk4:dt=2", 2e-3, 1), ("rnn:euler:dt=2", 2e-3, 1), ("gru-ode:midpoint:dt=3", 2e-3, 1),
           ("lem:dt=3", 2e-3, 1), ("cornn:dt=1", 2e-3, 1), ("torch-gru", 0.128, 1), ("gru-ode:rk4", 0.128, 1),
           ("rnn:rk4", 0.128, 1), ("lstm:euler", 0.128, 1),
           ("rnn:euler", 2e-3, 2), ("rnn:euler", 2e-3, 4), ("gru-ode:rk4", 2e-3, 4), ("gru-ode:rk4", 2e-3, 8),
           ("lstm:euler", 2e-3, 4), ("lstm:euler", 2e-3, 8)]
FAILURES = ("unstable step", "marginal step")  # the verdicts that say a step amplifies beyond the flow


@dataclass(frozen=True)
class Plan:
    """The budgets of one study: the real one, or ``--smoke``'s."""
    base: CompareConfig
    sweep_epochs: int
    seed_epochs: int
    eval_per_epoch: int
    patience: int
    rates: tuple = tuple(RATES)
    seeds: tuple = tuple(SEEDS)
    failing: tuple = tuple(FAILING)
    # the seeds' table compares peak memory: each of their runs measured in a new interpreter, as the
    # study's first runs were (a fork of the command server starts from its resident set); the
    # smoke's, which compares nothing, forks (a new interpreter's imports take seconds)
    fresh_seeds: bool = True


def plan(smoke: bool, data_root: str | None, text: str | None) -> Plan:
    common = dict(corpus=None if text else "tinyshakespeare", text=text, data_root=data_root, batch_size=32, bptt=64,
                  optimizer="adamw", schedule="cosine", clip=1.0, dropout=0.0, eval_tokens=None, prompts=20,
                  check_at=[0.0, 0.05], noise=[0.01, 0.05, 0.1], device="cpu", params=430_000)
    if smoke:  # two rates, one seed, one failure: the code of every phase on budgets of seconds
        common.update(batch_size=4, bptt=16, prompts=2, params=3_000)
        return Plan(CompareConfig(**common), sweep_epochs=1, seed_epochs=2, eval_per_epoch=2, patience=1,
                    rates=(2e-3, 3.2e-2), seeds=(0,), failing=(("rnn:euler:dt=3", 2e-3, 1), ("rnn:euler", 2e-3, 8)),
                    fresh_seeds=False)
    return Plan(CompareConfig(**common), sweep_epochs=1, seed_epochs=10, eval_per_epoch=2, patience=3)


def _steps_per_epoch(config: CompareConfig) -> int:
    from textlm.data import batchify, load_corpus
    corpus = load_corpus(config.corpus, config.text, config.level, config.data_root)
    return (batchify(corpus.train, config.batch_size).shape[1] - 1) // config.bptt


def runs(phase: str, p: Plan, out: Path, cells: list[str]) -> list[tuple[CompareConfig, str, int]]:
    """``(config, cell, seed)`` of every run of ``phase``; each config's ``out`` names its folder."""
    every = max(1, _steps_per_epoch(p.base) // p.eval_per_epoch)
    if phase == "sweep":
        return [(replace(p.base, out=str(out / "sweep" / f"lr{lr:g}"), lr=lr, epochs=p.sweep_epochs, eval_every=every,
                         noise=[]), cell, 0) for cell in cells for lr in p.rates]
    if phase == "seeds":
        chosen = best_rates(out, cells, p.rates)
        return [(replace(p.base, out=str(out / "seeds" / f"lr{chosen[cell]:g}"), lr=chosen[cell],
                         epochs=p.seed_epochs, eval_every=every, patience=p.patience), cell, seed)
                for cell in cells if cell in chosen for seed in p.seeds]
    if phase == "fail":
        return [(replace(p.base, out=str(out / "fail" / rate_folder(lr, gain)), lr=lr, init_gain=float(gain),
                         epochs=p.sweep_epochs, eval_every=every, noise=[]), cell, 0) for cell, lr, gain in p.failing]
    raise ValueError(phase)


def rate_folder(lr: float, gain: float = 1) -> str:
    """The folder of a phase's runs at one rate (and initial recurrent gain, where not 1)."""
    return f"lr{lr:g}" + (f"_gain{gain:g}" if gain != 1 else "")


def _rate_and_gain(name: str) -> tuple[float, float]:
    """The inverse of :func:`rate_folder`."""
    rate, _, gain = name[2:].partition("_gain")
    return float(rate), float(gain or 1)


def folder(config: CompareConfig, cell: str, seed: int) -> Path:
    return Path(config.out) / "runs" / _slug(cell) / f"seed{seed}"


def execute(config: CompareConfig, cell: str, seed: int, hidden: int, fresh: bool = False) -> dict:
    """One run (trained, or read back if finished). A run whose training could not go on (NaNs past
    the recoveries, a solver failure: exit 1) is recorded as failed, once; an interrupted one is not
    (it resumes next time). ``fresh``: in a new interpreter (``textlm._commands.Command``)."""
    run = folder(config, cell, seed)
    failed = run / "failed.json"
    if failed.is_file():
        return json.loads(failed.read_text())
    try:
        return run_one(config, cell, seed, hidden, fresh=fresh)
    except CompareError as err:
        if err.exit_code != 1 or err.crashed:  # interrupted, a bad option, or a bug: not the run's outcome
            raise
        record = {"cell": cell, "seed": seed, "hidden": hidden, "lr": config.lr, "failed": str(err)}
        run.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps(record, indent=1))
        return record


def run_phase(phase: str, p: Plan, out: Path, cells: list[str], jobs: int) -> None:
    from textlm.data import load_corpus
    corpus = load_corpus(p.base.corpus, p.base.text, p.base.level, p.base.data_root)
    todo = runs(phase, p, out, cells)
    widths = {cell: hidden_for_budget(cell, len(corpus.vocab), 1, p.base.params) for _, cell, _ in todo}
    print(f"{phase}: {len(todo)} runs, {jobs} at a time", file=sys.stderr, flush=True)

    def one(job):
        config, cell, seed = job
        row = execute(config, cell, seed, widths[cell], fresh=phase == "seeds" and p.fresh_seeds)
        state = "FAILED" if "failed" in row else f"valid ppl {row['valid_ppl']:.3f}"
        gain = f" init gain {config.init_gain:g}" if config.init_gain != 1 else ""
        print(f"{phase} {cell} lr {config.lr:g}{gain} seed {seed}: {state}", file=sys.stderr, flush=True)
        return row
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        list(pool.map(one, todo))
    finally:  # Ctrl-C: no new runs (those in progress save their checkpoints and resume next time)
        pool.shutdown(wait=True, cancel_futures=True)


def _finished_ode_runs(p: Plan, out: Path, cells: list[str], skip) -> list[tuple[CompareConfig, str, int]]:
    """``(config, cell, seed)`` of every finished or failed run with ODE layers (a logged check)
    for which ``skip(run folder, its logged checks)`` is false."""
    todo = []
    for phase in ("sweep", "fail", "seeds"):  # the short runs first
        for config, cell, seed in runs(phase, p, out, cells) if phase != "seeds" or (out / "sweep").is_dir() else ():
            run = folder(config, cell, seed)
            logged = [r for r in records({"folder": str(run)}) if r.get("event") == "check"]
            if not logged or skip(run, logged):
                continue  # a torch run (no ODE layer), or one done already
            if (run / "compare.json").is_file() or (run / "failed.json").is_file():
                todo.append((config, cell, seed))
    return todo


def _retrain(config: CompareConfig, cell: str, seed: int, extra: list[str], reached) -> tuple[list[dict], int | None]:
    """The run's own ``odernn train`` command (with ``extra`` options that do not change its
    training), in a scratch folder, from its seed until ``reached(records)`` (training is
    deterministic on one thread, so the weights on the way are the run's own), stopped there:
    ``(its records, its exit code if it ended first)``."""
    import tempfile
    from textlm._commands import Command
    from textlm.compare import train_command
    run = folder(config, cell, seed)
    hidden = json.loads(next(run / name for name in ("compare.json", "failed.json")
                             if (run / name).is_file()).read_text())["hidden"]

    def logged(metrics: Path) -> list[dict]:
        try:
            return read_records(metrics) if metrics.is_file() else []
        except ValueError:  # a line being written
            return []

    with tempfile.TemporaryDirectory() as scratch:
        metrics = Path(scratch) / "metrics.jsonl"
        proc = Command(train_command(config, cell, seed, hidden, Path(scratch)) + extra)
        try:
            while proc.poll() is None and not reached(logged(metrics)):
                time.sleep(0.1)
        finally:  # stopped where it was wanted, or whatever happened here: killed, as its scratch folder
            proc.kill()  # goes (a graceful stop would save a checkpoint and draw curves first)
            proc.close()
        return logged(metrics), proc.returncode


def recheck(p: Plan, out: Path, cells: list[str], jobs: int) -> None:
    """The check's verdicts of every finished run whose records predate the far-field condition
    (their check records lack ``far_field``), measured again by the code of today on the same
    weights (:func:`_retrain` to the run's last check). Written to the run's ``recheck.json``; the
    report prefers it to the verdicts the run logged."""
    from textlm.compare import checks
    todo = _finished_ode_runs(p, out, cells, lambda run, logged: (run / "recheck.json").is_file()
                              or "far_field" in logged[0])
    print(f"recheck: {len(todo)} runs", file=sys.stderr, flush=True)

    def one(job):
        config, cell, seed = job
        last = f"check_{max(config.check_at):g}"
        found, code = _retrain(config, cell, seed, [], lambda records: last in checks(records))
        found = checks(found)
        if "check_0" not in found:  # the command did not get as far as its first check: nothing to record
            print(f"recheck {cell} lr {config.lr:g} seed {seed}: no check logged (exit {code}); not recorded",
                  file=sys.stderr, flush=True)
            return
        run = folder(config, cell, seed)
        (run / "recheck.json").write_text(json.dumps({"cell": cell, "seed": seed, "lr": config.lr, **found}, indent=1))
        print(f"recheck {cell} lr {config.lr:g} seed {seed}: " + ", ".join(
            f"{k} {v['verdict']}" for k, v in found.items()), file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))


def probe(p: Plan, out: Path, cells: list[str], jobs: int) -> None:
    """The training-time probe (``stability.Probe``, ``odernn train --probe-every``: the margin
    ``1 − max |R(hλ)|`` of the largest and rightmost eigenvalues of each ODE layer's field at the
    training batch's carried state) at 5 % of every finished run's budget, the step of its check
    there, on the run's own weights (:func:`_retrain`). Written to the run's ``probe.json``
    (``{"probe_0.05": {"step", "margin"}}``; no entry where the run ended before)."""
    from textlm.compare import checks
    todo = _finished_ode_runs(p, out, cells, lambda run, logged: (run / "probe.json").is_file())
    print(f"probe: {len(todo)} runs", file=sys.stderr, flush=True)
    steps = _steps_per_epoch(p.base)

    def one(job):
        config, cell, seed = job
        at = max(1, round(0.05 * config.epochs * steps))  # as train's --check-at 0.05
        run = folder(config, cell, seed)
        if (run / "failed.json").is_file() and max((r.get("step", 0) for r in records({"folder": str(run)})),
                                                   default=0) < at:
            found, code = [], 1  # it failed before 5 % (deterministic: so would its retraining)
        else:  # until the check at 5 % that follows the probe at the same step: the check is the witness
            # that these are the run's own weights (it must equal the one the run logged)
            found, code = _retrain(config, cell, seed, ["--probe-every", str(at)],
                                   lambda records: "check_0.05" in checks(records))
        margins = [r["margin"] for r in found if r.get("event") == "probe" and r["step"] == at]
        record = {"cell": cell, "seed": seed, "lr": config.lr}
        if margins:
            record["probe_0.05"] = {"step": at, "margin": min(margins)}  # the worst layer's
            record["witness"] = checks(found).get("check_0.05")
        elif code != 1:  # interrupted, or a bug: not the run's outcome (exit 1: training could not go on)
            print(f"probe {cell} lr {config.lr:g} seed {seed}: no probe logged (exit {code}); not recorded",
                  file=sys.stderr, flush=True)
            return
        (run / "probe.json").write_text(json.dumps(record, indent=1))
        print(f"probe {cell} lr {config.lr:g} seed {seed}: " + (f"margin {min(margins):+.3f}" if margins else
              f"ended before step {at} (exit {code})"), file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))


# -- reading the record back ------------------------------------------------------------------------
def rows_of(phase_folder: Path) -> list[dict]:
    """Every finished or failed run under a phase's folder, with its rate, initial recurrent gain and
    phase (from the folders' names)."""
    rows = []
    for rate in sorted(phase_folder.glob("lr*")):
        lr, gain = _rate_and_gain(rate.name)
        for path in sorted(rate.glob("runs/*/seed*")):
            for name in ("compare.json", "failed.json"):
                if (path / name).is_file():
                    rows.append({**json.loads((path / name).read_text()), "lr": lr, "init_gain": gain,
                                 "folder": str(path), "phase": phase_folder.name})
    return rows


def best_rates(out: Path, cells: list[str], rates=tuple(RATES)) -> dict[str, float]:
    """Per cell, the sweep's rate with the lowest final validation loss (finished runs only)."""
    chosen = {}
    for cell in cells:
        mine = [r for r in rows_of(out / "sweep") if r["cell"] == cell and "failed" not in r
                and math.isfinite(r["valid_loss"])]
        if {r["lr"] for r in rows_of(out / "sweep") if r["cell"] == cell} >= set(rates) and mine:  # the whole sweep
            chosen[cell] = min(mine, key=lambda r: r["valid_loss"])["lr"]
    return chosen


def records(row: dict) -> list[dict]:
    path = Path(row["folder"]) / "metrics.jsonl"
    return read_records(path) if path.is_file() else []


def unigram_loss(config: CompareConfig) -> float:
    """Cross-entropy (nats/token) of the validation split under the training split's token frequencies
    (add-one smoothed): what a model that ignores context scores; a run above it has not trained."""
    from textlm.data import load_corpus
    corpus = load_corpus(config.corpus, config.text, config.level, config.data_root)
    counts = torch.bincount(corpus.train, minlength=len(corpus.vocab)).double() + 1
    logp = torch.log(counts / counts.sum())
    return float(-logp[corpus.valid].mean())


def outcome(row: dict, unigram: float) -> str:
    """``diverged`` (failed, non-finite, or validation loss above the unigram model's), ``unstable``
    (loss spikes or NaN recoveries) or ``trained``."""
    if "failed" in row or not math.isfinite(row.get("valid_loss", math.inf)) or row["valid_loss"] > unigram:
        return "diverged"
    if row.get("spikes", 0) or row.get("nan_recoveries", 0):
        return "unstable"
    return "trained"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("sweep", "seeds", "fail", "recheck", "probe", "report", "all"))
    parser.add_argument("--out", default="benchmarks/results/seeds_study", help="the study's folder")
    parser.add_argument("--cells", nargs="+", default=CELLS)
    parser.add_argument("--jobs", type=_positive, default=2, help="runs at once, one thread each (default 2)")
    parser.add_argument("--data-root", help="the corpora's folder (default: $ODERNN_DATA)")
    parser.add_argument("--smoke", metavar="TEXT", help="a small text file: the study's code on budgets of seconds")
    parser.add_argument("--docs", help="the report also replaces the study's section of this Markdown file")
    args = parser.parse_args(argv)
    args.cells = list(dict.fromkeys(args.cells))  # a cell named twice is one cell
    torch.set_num_threads(1)  # each run's process takes this many threads
    try:
        return _study(args, parser)
    except KeyboardInterrupt:
        print("interrupted: the runs in progress saved their checkpoints; the same command resumes them",
              file=sys.stderr)
        return 130


def _study(args, parser) -> int:
    try:  # every input checked before hours of training, not after
        p = _check_inputs(args)
    except (ValueError, CorpusError, ModelError) as err:
        parser.error(str(err))
    out = Path(args.out)
    phases = ("sweep", "seeds", "fail") if args.phase == "all" else \
        (args.phase,) if args.phase in ("sweep", "seeds", "fail") else ()
    try:
        for phase in phases:
            run_phase(phase, p, out, args.cells, args.jobs)
        if args.phase in ("recheck", "all"):
            recheck(p, out, args.cells, args.jobs)
        if args.phase in ("probe", "all"):
            probe(p, out, args.cells, args.jobs)
    except CompareError as err:  # a run interrupted from outside, or one that could not start
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return err.exit_code or 1
    if args.phase in ("report", "all"):
        from seeds_study_report import report
        print(report(p, out, args.cells, args.docs))
    return 0


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of runs at once, at least 1")
    return int(text)


def _check_inputs(args) -> Plan:
    """The study's plan, once its inputs hold: the text or corpus loads and gives every split and at
    least one step an epoch, every cell name builds a model, ``--out`` is a folder (or not there
    yet) and ``--docs`` a UTF-8 page with the study's section (:class:`ValueError`,
    :class:`CorpusError` or :class:`ModelError` otherwise)."""
    from seeds_study_report import section
    from textlm.data import load_corpus
    from textlm.model import LanguageModel
    if args.smoke and not Path(args.smoke).is_file():
        raise ValueError(f"--smoke {args.smoke}: not a file; give a small UTF-8 text")
    p = plan(bool(args.smoke), args.data_root, args.smoke)
    corpus = load_corpus(p.base.corpus, p.base.text, p.base.level, p.base.data_root)
    empty = [name for name in ("valid", "test") if len(getattr(corpus, name)) < 2]
    if empty:
        raise ValueError(f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} too short to measure")
    if _steps_per_epoch(p.base) < 1:
        raise ValueError(f"the training split is too short for one step of {p.base.batch_size} × {p.base.bptt} tokens")
    for cell in args.cells:
        LanguageModel(len(corpus.vocab), cell, layers=1, hidden=2)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: not a folder")
    if args.docs:
        try:
            section(Path(args.docs).read_text(encoding="utf-8"), args.docs)
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--docs {args.docs}: {getattr(err, 'strerror', None) or err}") from None
    return p


if __name__ == "__main__":
    sys.exit(main())
