"""The trainer: truncated BPTT over parallel token streams, with the hidden state carried across
batches (the PTB convention of Zaremba et al. 2014), gradient clipping, AdamW or SGD with warm-up
and cosine decay or Zaremba's per-epoch decay, NaN recovery, atomic resumable checkpoints,
JSON-lines metrics, a learning-curve plot, an optional stability probe, any device and precision
(``textlm.runtime``), and data-parallel training under ``torchrun`` (NCCL on CUDA, gloo on a CPU).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import resource
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

import odernn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import Corpus, Vocabulary, batchify, load_corpus
from .evaluate import evaluate_within
from .limits import check_dependent, check_fields, defaults, without_effect
from .model import LanguageModel, ModelConfig, ModelOptions
from .runtime import PRECISIONS, Runtime

__all__ = ["RunInUse", "RunLock", "TrainConfig", "Trainer", "TrainingError", "TrainingInterrupted", "train"]


class TrainingError(RuntimeError):
    """Training cannot go on (repeated NaNs, a solver failure); the last good state is saved."""


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the checkpoint was saved; ``--resume`` continues. ``exit_code`` is the
    shell's for the signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the training loop is, to be handled as Ctrl-C is."""


class RunInUse(Exception):
    """Another process is training into the same output folder."""


class RunLock:
    """An exclusive lock on a run folder (``OUT/.lock``, ``flock``) for as long as a run writes
    there: two runs into one folder would overwrite each other's checkpoints. Re-entrant within a
    process (the command line takes it before it prints, the trainer again while it trains)."""

    _held: set = set()

    def __init__(self, folder: Path):
        self.path = (Path(folder) / ".lock").resolve()
        self.handle = None

    def __enter__(self):
        import fcntl
        if self.path in self._held:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise RunInUse(f"another run is writing to {self.path.parent} (it holds {self.path}); wait for it, "
                           "or give this one its own --out") from None
        self._held.add(self.path)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self._held.discard(self.path)
            self.handle.close()  # closing releases the lock


def _terminate(signum, frame):
    raise _Terminated  # SIGTERM (a scheduler's stop): save and exit, as Ctrl-C does


@contextlib.contextmanager
def _deferred_interrupts():
    """Ctrl-C and SIGTERM wait for the end of the block, then act as they would have: a step's
    commit (the update, the carried state, the position and the RNG state) happens whole or not at
    all, so the state saved on an interruption is always one a straight run passes through. Off the
    main thread (no signal handlers there) the block simply runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    # only Python handlers are deferred: an ignored signal stays ignored, a default one acts at once
    handled = [s for s in (signal.SIGINT, signal.SIGTERM) if callable(signal.getsignal(s))]
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in handled}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for signum in pending[:1]:  # delivered once, after the block, by the handler that was in place
        previous[signum](signum, None)


@dataclass
class TrainConfig(ModelOptions):
    """A run: the model's options (:class:`textlm.model.ModelOptions`' fields, inherited; with the
    vocabulary they give :meth:`model_config`), the data, the device, the optimisation, the budget
    and the bookkeeping. The command line builds it once; checkpoints store ``asdict`` of it."""

    # data
    corpus: str | None = None
    text: str | None = None
    level: str | None = None
    data_root: str | None = None
    train_tokens: int | None = None  # use only the first N training tokens (quick runs, tests)
    valid_tokens: int | None = None  # use only the first N validation tokens, the final validation's too (quick runs, tests)
    # device and precision
    precision: str = "float32"  # float32, bf16 (autocast, float32 master weights) or float64
    device: str = "auto"  # auto, cpu, cuda, cuda:N; a run records the device it resolved to
    compile_elementwise: bool = False  # ODE layers: fuse the elementwise math with torch.compile
    cuda_graphs: bool = False  # ODE layers: capture forward and backward in CUDA graphs (CUDA only)
    # optimisation
    batch_size: int = 32
    bptt: int = 64
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0
    schedule: str = "cosine"  # "constant", or "step": × decay every epoch after the first decay_after
    warmup: int = 0  # steps
    min_lr_ratio: float = 0.1
    decay_after: int = 4  # epochs at the full rate, for schedule "step"
    decay: float = 0.5  # the factor per later epoch, for schedule "step"
    clip: float = 1.0
    jac_reg: float = 0.0  # weight λ of stability.jacobian_penalty at each batch's starting states (0: off)
    init_gain: float = 1.0  # LanguageModel.recurrent_weights at initialisation × this (a large scale, to test stability)
    max_tokens: int = 200_000
    epochs: int | None = None  # a budget in passes over the training streams (overrides max_tokens)
    max_seconds: float | None = None  # wall-clock budget (training time, summed over resumes)
    seed: int = 0
    on_nan: str = "halve"  # or "stop"
    max_nan_recoveries: int = 10
    # bookkeeping
    out: str = "runs/latest"
    eval_every: int = 0  # steps; 0: only at the end
    eval_tokens: int | None = None  # cap on validation tokens per periodic evaluation (the final one: all)
    checkpoint_every: int = 200  # steps
    log_every: int = 10  # steps
    probe_every: int = 0  # steps; 0: no stability probe
    check_at: list[float] | None = None  # fractions of the budget at which to run stability.check (0: before training)
    patience: int = 0  # stop after this many periodic validations without a new best (0: off); best.pt keeps the best
    progress: bool = True

    def __post_init__(self):
        problems = check_fields(self) + check_dependent(self)  # textlm.limits: numbers, and options that act
        if self.optimizer not in ("adamw", "sgd"):
            problems.append(f"--optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant", "step"):
            problems.append(f"--schedule must be cosine, constant or step, not {self.schedule!r}")
        if self.on_nan not in ("halve", "stop"):
            problems.append(f"--on-nan must be halve or stop, not {self.on_nan!r}")
        if self.patience and not self.eval_every:
            problems.append("--patience counts periodic validations: give --eval-every too")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.valid_tokens == 1:  # below 1: the limits
            problems.append(f"--valid-tokens {self.valid_tokens}: a validation needs at least 2 tokens "
                            "(one read, one predicted)")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        data = dict(data)
        if "dtype" in data and "precision" not in data:  # checkpoints written before --precision
            data["precision"] = data["dtype"]
        if "device" not in data:  # … and before --device: they were trained on the CPU
            data["device"] = "cpu"
        data = {k: v for k, v in data.items() if k in known}
        for name in without_effect(data, defaults(cls)):  # a run given one before it was refused: it had no effect
            data.pop(name)
        return cls(**data)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The model this run trains: its :class:`ModelOptions` for a vocabulary of ``vocab_size`` tokens."""
        return ModelConfig(vocab_size=vocab_size, **{f.name: getattr(self, f.name) for f in fields(ModelOptions)})


def _run_folder(out: str, make: bool = True) -> Path:
    """``--out`` as a folder that exists (with ``make``, made if need be: once nothing stands in the
    way of the run, so that a command refused leaves no folder behind)."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    if not make:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot write to --out {folder}: {err.strerror}") from None
    return folder


RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "result.json")  # what a run writes into its --out


def training_streams(train: torch.Tensor, batch_size: int, bptt: int) -> tuple[torch.Tensor, int]:
    """The training tokens as ``batch_size`` streams ``(batch_size, N)``, and the steps of ``bptt``
    tokens in one epoch of them; a ``ValueError`` where there is not one."""
    rows = batchify(train, batch_size)
    steps = (rows.shape[1] - 1) // bptt
    if steps < 1:
        raise ValueError(f"--bptt {bptt} is longer than each of the {batch_size} training streams "
                         f"({rows.shape[1]} tokens)")
    return rows, steps


def _refuse_another_runs_folder(folder: Path) -> None:
    """A new run does not write over one that is there: its checkpoint would be replaced and its
    records mixed with the new run's in one ``metrics.jsonl``."""
    held = [name for name in RUN_FILES if (folder / name).exists()]
    if "checkpoint.pt" in held:
        raise ValueError(f"--out {folder} holds a run already ({', '.join(held)}): --resume continues it; "
                         "give another --out for a new run")
    if held:
        raise ValueError(f"--out {folder} holds the records of a run that left no checkpoint "
                         f"({', '.join(held)}): move them away to start again there, or give another --out")


# what a resumed run may change (``Trainer(config, resume=True, **changes)``, ``odernn train --resume``):
# its budget, the cadence of validation, logging, checkpoints and probes, where its data is, and how it
# runs; everything else is the run's own, from its checkpoint
RESUMABLE = ("max_tokens", "epochs", "max_seconds", "eval_every", "eval_tokens", "checkpoint_every", "log_every",
             "probe_every", "data_root", "device", "compile_elementwise", "cuda_graphs")


def _resumed(saved: dict, given: TrainConfig, out: Path, changes: dict, world: int) -> TrainConfig:
    """The configuration of a run resumed from ``saved``: the run's own, with the ``changes`` (of
    :data:`RESUMABLE`; a budget longer or shorter: :class:`Trainer` refuses one that ends before the
    run's position), writing to ``out`` with the progress bar as ``given``."""
    config = TrainConfig.from_dict(saved["config"])
    if "max_tokens" in changes:  # the budget given, in tokens, replaces one in epochs
        changes = {"epochs": None, **changes}
    if "device" not in changes and world > 1 and config.device.startswith("cuda"):
        changes = {"device": "cuda", **changes}  # rank 0 recorded its own GPU; each process takes its own
    # replace() checks the changes within their limits, as a new run's settings are checked
    return replace(config, **changes, out=str(out), progress=given.progress)


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone(v) for v in tree)
    return copy.deepcopy(tree)


@dataclass
class _Loop:
    """What one call of :meth:`Trainer.run` keeps between its steps (a resume starts it afresh)."""

    started: float  # time.perf_counter() at which the run's elapsed time was 0
    rng: object = None  # the RNG state before the current step: an interrupted step is redone from it
    snapshot: tuple | None = None  # (model, optimizer) state dicts before the last update
    updating: bool = False  # inside optimizer.step and its finiteness check: undone on an exception
    step_seconds: float | None = None  # a moving average
    window_tokens: int = 0  # tokens since the last log record
    window_start: float = 0.0  # moved on by the time spent outside training steps (validation, checks)
    window_grad_norm: float = 0.0  # the largest gradient norm (before clipping) since the last log record


@contextlib.contextmanager
def _outside_steps(loop: _Loop):
    """Time spent inside (validation, checks) is not training: the speed window skips it."""
    started = time.perf_counter()
    try:
        yield
    finally:
        loop.window_start += time.perf_counter() - started


@dataclass
class _Position:
    step: int = 0
    epoch: int = 0
    column: int = 0
    tokens: int = 0  # training tokens consumed (global batch)
    nan_recoveries: int = 0
    lr_scale: float = 1.0
    elapsed: float = 0.0
    best_loss: float | None = None  # with --patience: the best periodic validation loss so far, at best_step
    best_step: int = 0
    stale_evaluations: int = 0  # periodic validations since the best
    stopped_early: bool = False
    # the last step whose due work (validation, early-stopping decision, checks) is done: a run
    # interrupted in the middle of it does it again on --resume (None: checkpoints from before)
    settled: int | None = None
    train_loss: float | None = None  # the last logged step's loss: the result's, also after a resume


class Trainer:
    """``Trainer(config).run()``. ``resume=True`` continues from ``config.out/checkpoint.pt`` with the
    checkpoint's configuration, and ``changes`` (keywords of :data:`RESUMABLE`; ``None``: not given)
    replace its settings there: ``max_tokens`` or ``epochs`` its budget, longer or shorter (one that
    ends before the run's position is refused, and so is a ``max_seconds`` it has spent), ``device``
    its device (only a resume on the same device is bit-exact), and so on."""

    def __init__(self, config: TrainConfig, resume: bool = False, corpus: Corpus | None = None, **changes):
        unknown = sorted(set(changes) - set(RESUMABLE))
        if unknown:
            raise TypeError(f"Trainer: {', '.join(unknown)} cannot change on resume (a new run's settings are "
                            f"its config's); these can: {', '.join(RESUMABLE)}")
        changes = {name: value for name, value in changes.items() if value is not None}
        if changes and not resume:
            raise TypeError(f"Trainer: {', '.join(changes)} change a resumed run's settings; a new run's are "
                            "its config's")
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.out = _run_folder(config.out, make=False)
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.best_path = self.out / "best.pt"  # with --patience: the weights of the best periodic validation
        saved = None
        if not resume and self.rank == 0 and self.out.is_dir():  # under the lock: a run writing there is named
            with RunLock(self.out):
                _refuse_another_runs_folder(self.out)
        if resume:
            saved = load_checkpoint(self.checkpoint_path)
            config = _resumed(saved, config, self.out, changes, self.world)
        self.runtime = Runtime.of(config.device, config.precision)
        self.device = self.runtime.device
        config.device = str(self.device)
        self.config = config
        self.corpus = corpus or load_corpus(config.corpus, config.text, config.level, config.data_root)
        if config.valid_tokens is not None:
            self.corpus = replace(self.corpus, valid=self.corpus.valid[: config.valid_tokens])
        if saved is not None and Vocabulary.from_dict(saved["vocab"]).tokens != self.corpus.vocab.tokens:
            raise CheckpointError("the corpus's vocabulary differs from the checkpoint's: resume with the same data")
        torch.manual_seed(config.seed)
        # a resumed run trains the model its checkpoint stored (the same: the run's config made it)
        model_config = ModelConfig.from_checkpoint(saved) if saved is not None else \
            config.model_config(len(self.corpus.vocab))
        self.model = LanguageModel(model_config, compile_elementwise=config.compile_elementwise,
                                   cuda_graphs=config.cuda_graphs).to(self.device, self.runtime.dtype)
        if saved is None and config.init_gain != 1.0:  # a resumed run's weights are its checkpoint's
            self.model.scale_recurrent_weights(config.init_gain)
        self.optimizer = self._optimizer()
        self._check_jacobian_penalty()
        self._streams()
        self.position = _Position()
        self.deadline = None  # with --max-seconds: the time.perf_counter() at which the run's budget ends
        self.state = None
        self.probes = {}  # layer index -> stability.Probe, made at the first probe
        if saved is not None:
            self._restore(saved)
            p = self.position
            if p.step > self.total_steps:
                raise ValueError(f"the run in {self.out} has trained {p.step:,} steps ({p.tokens:,} tokens); the "
                                 f"budget given ends at step {self.total_steps:,}: give one of at least that")
            if "max_seconds" in changes and p.elapsed > config.max_seconds:
                raise ValueError(f"the run in {self.out} has trained for {p.elapsed:,.1f} s; a --max-seconds "
                                 f"{config.max_seconds:g} budget ended before that: give one of at least that")
        self.module = self._parallel()
        _run_folder(config.out)

    # -- setup -------------------------------------------------------------------------------------
    def _check_jacobian_penalty(self) -> None:
        c = self.config
        if c.jac_reg > 0 and None in self.model.layer_cells():
            raise ValueError(f"--jac-reg penalises ODE cells; {c.cell} has PyTorch layers")
        if c.jac_reg > 0 and self.model.implicit():
            raise ValueError(f"--jac-reg is trained through second derivatives, and {c.cell} is implicit: its "
                             "stage equations give first derivatives only (use an explicit tableau)")

    def _streams(self) -> None:
        """This rank's share of the training streams (on the device: batches are views of it), the
        steps per epoch and the run's total steps."""
        c = self.config
        if c.batch_size % self.world:
            raise ValueError(f"--batch-size {c.batch_size} is not divisible by {self.world} processes")
        train = self.corpus.train if c.train_tokens is None else self.corpus.train[: c.train_tokens]
        rows, self.steps_per_epoch = training_streams(train, c.batch_size, c.bptt)
        share = c.batch_size // self.world
        self.data = rows[self.rank * share:(self.rank + 1) * share].to(self.device)
        if c.epochs is not None:
            self.total_steps = c.epochs * self.steps_per_epoch
            c.max_tokens = self.total_steps * c.batch_size * c.bptt
        else:
            self.total_steps = math.ceil(c.max_tokens / (c.batch_size * c.bptt))

    def _parallel(self) -> nn.Module:
        """What a step runs: the model, or under ``torchrun`` (``WORLD_SIZE`` > 1) the model wrapped
        in ``DistributedDataParallel``."""
        cuda = self.device.type == "cuda"
        if cuda:  # CUDA graphs capture on the current device's streams
            torch.cuda.set_device(self.device)
        if self.world == 1:
            return self.model
        import torch.distributed as dist
        if not dist.is_initialized():  # launched by torchrun: its environment names the rendezvous
            dist.init_process_group("nccl" if cuda else "gloo")
        return nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None)

    def _optimizer(self):
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def learning_rate(self, step: int) -> float:
        c = self.config
        scale = self.position.lr_scale
        if c.warmup and step < c.warmup:
            return c.lr * scale * (step + 1) / c.warmup
        if c.schedule == "constant":
            return c.lr * scale
        if c.schedule == "step":  # Zaremba et al. (2014): × decay per epoch after the first decay_after
            return c.lr * scale * c.decay ** max(0, self.position.epoch - c.decay_after + 1)
        progress = min(1.0, (step - c.warmup) / max(1, self.total_steps - c.warmup))
        return c.lr * scale * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # -- checkpoints -------------------------------------------------------------------------------
    def _payload(self) -> dict:
        return {"config": asdict(self.config), "model": self.model.state_dict(),
                "model_config": asdict(self.model.config), "optimizer": self.optimizer.state_dict(),
                "position": asdict(self.position), "rng": self.runtime.rng_state(), "state": self.state,
                "vocab": self.corpus.vocab.to_dict(), "corpus": self.corpus.name}

    def save(self) -> Path | None:
        if self.rank == 0:
            return save_checkpoint(self._payload(), self.checkpoint_path)
        return None

    def _restore(self, saved: dict) -> None:
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.position = _Position(**saved["position"])
            self.runtime.set_rng_state(saved["rng"])
            self.state = self.model.restore_state(saved["state"])
        except (KeyError, TypeError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{self.checkpoint_path} does not match this model: {str(err)[:300]}") from None

    # -- the loop ----------------------------------------------------------------------------------
    def _batch(self):
        c, p = self.config, self.position
        if p.column + c.bptt + 1 > self.data.shape[1]:  # end of the streams: next epoch, fresh state
            p.column, p.epoch, self.state = 0, p.epoch + 1, None
        x = self.data[:, p.column:p.column + c.bptt]
        y = self.data[:, p.column + 1:p.column + 1 + c.bptt]
        return x, y

    def _log(self, record: dict) -> None:
        if self.rank:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _solver_failure(self, err: Exception, x) -> TrainingError:
        import stability
        p = self.position
        advice = []
        for cell in self.model.ode_cells():
            try:  # at the zero state: sampling a trajectory would run the failing solver again
                report = stability.check(cell, samples=1)
                advice.append(f"{cell.describe()}: {'stable' if report.stable else 'UNSTABLE'} at the current "
                              f"weights (zero state), margin {report.margin:+.3g}, largest stable dt "
                              f"{report.max_stable_dt:.3g}, stiffness {self._stiffness(report)}")
            except Exception:  # the advice is a courtesy: never mask the real error
                pass
        self.save()
        return TrainingError(f"step {p.step}, tokens {p.column}–{p.column + x.shape[1]} of each stream (epoch "
                             f"{p.epoch}): {type(err).__name__}: {err}"
                             + (f". Stability: {'; '.join(advice)}" if advice else "")
                             + f". Last good state saved to {self.checkpoint_path}")

    @staticmethod
    def _stiffness(report) -> str:
        try:
            return report.condition("stiffness").detail
        except KeyError:
            return "not measured"

    def _probe(self, x) -> None:
        import stability
        for i, cell, inputs, state in self.model.probe_points(x[:, -1], self.state):
            if i not in self.probes:
                self.probes[i] = stability.Probe(cell, every=1, warn=True)
            result = self.probes[i](self.position.step, inputs, state)
            self._log({"step": self.position.step, "event": "probe", "cell": cell.describe(), "margin": result.margin})

    def _final_reserve(self, step_seconds: float | None) -> float:
        """Seconds to keep for the final validation: a forward pass costs about a third of a training
        step of the same tokens; at most a quarter of the budget (it is cut short beyond that)."""
        if step_seconds is None:
            return 0.0
        c = self.config
        valid = len(self.corpus.split("valid"))
        estimate = step_seconds / 3 * valid / (c.batch_size * c.bptt) * self.world
        return min(estimate, 0.25 * c.max_seconds)

    def _out_of_time(self, step_seconds: float | None) -> bool:
        """Whether the budget leaves no room for another step and the final validation. Under data
        parallelism every rank stops at the same step (one that stopped alone would leave the others
        waiting in the gradient all-reduce for ever): the ranks agree, and any rank out of time stops all."""
        late = time.perf_counter() + self._final_reserve(step_seconds) >= self.deadline
        if self.world == 1:
            return late
        import torch.distributed as dist
        flag = torch.tensor([float(late)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _finite_parameters(self) -> bool:
        return bool(torch.stack([torch.isfinite(q).all() for q in self.model.parameters()]).all())

    def _recover(self, loop: _Loop, state_in, lr: float, what: str) -> None:
        """A non-finite loss, gradient or updated parameters: undo the last update (the snapshot
        before it), halve the rate and skip the batch — or stop, with the last good state saved.
        Whole or not at all, as a step's commit: a resume goes on from after it."""
        c, p = self.config, self.position
        with _deferred_interrupts():
            p.nan_recoveries += 1
            self._log({"step": p.step, "event": "nan", "what": what, "lr": lr})
            if loop.snapshot is not None:
                self.model.load_state_dict(loop.snapshot[0])
                self.optimizer.load_state_dict(loop.snapshot[1])
            if c.on_nan == "stop" or p.nan_recoveries > c.max_nan_recoveries or not self._finite_parameters():
                if self._finite_parameters():
                    self.save()
                raise TrainingError(
                    f"step {p.step}: non-finite {what} ({p.nan_recoveries} recoveries so far); stopped with --on-nan "
                    f"{c.on_nan}. Last good state saved to {self.checkpoint_path}; lower --lr, raise --clip, or check "
                    "the cell with 'odernn stability check'")
            p.lr_scale *= 0.5
            self.state = self.model.detach_state(state_in)
            p.column += c.bptt  # skip the batch that produced it
            loop.rng = self.runtime.rng_state()  # the skipped batch drew from it: an interruption keeps that

    def evaluate(self, split: str = "valid", tokens: int | None = None, progress: bool = False) -> float:
        return self._evaluate(split, tokens, progress)[0]

    def _evaluate(self, split: str = "valid", tokens: int | None = None, progress: bool = False,
                  deadline: float | None = None) -> tuple[float, int, int]:
        data = self.corpus.split(split)
        label = f"final {split} loss over {min(tokens or len(data), len(data)):,} tokens" if progress else None
        with self.runtime.autocast():
            return evaluate_within(self.model, data, tokens=tokens, progress=label, deadline=deadline)

    def run(self) -> dict:
        """Train to the budget; SIGTERM, like Ctrl-C, saves the state and raises
        :class:`TrainingInterrupted`. Holds :class:`RunLock` on the output folder meanwhile."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main else None
        try:
            with RunLock(self.out) if self.rank == 0 else contextlib.nullcontext():
                for stale in self.out.glob(f".{self.checkpoint_path.name}.*.tmp"):  # a write killed midway
                    stale.unlink(missing_ok=True)
                return self._run()
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)

    def _run(self) -> dict:
        c, p = self.config, self.position
        self.model.train()
        bar = None
        if c.progress and self.rank == 0:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=p.step, unit="step", dynamic_ncols=True,
                       desc=f"{c.cell} {c.grad}")
        self._log({"step": p.step, "event": "resume" if p.step else "start", "machine": self.runtime.machine()})
        loop = _Loop(started=time.perf_counter() - p.elapsed, rng=self.runtime.rng_state())
        loop.window_start = time.perf_counter()
        # --max-seconds bounds the whole command: training stops early enough for the final
        # validation (estimated from the step time) to fit, and that validation and the sample stop
        # at the budget's end, saying so
        self.deadline = None if c.max_seconds is None else loop.started + c.max_seconds
        try:
            if p.step == 0 and 0 in (self.config.check_at or ()):
                self._check(loop, 0.0)
            if p.settled is not None and p.settled < p.step:  # interrupted in the middle of it
                self._due(loop)
            while p.step < self.total_steps and not p.stopped_early:
                if self.deadline is not None and self._out_of_time(loop.step_seconds):
                    break
                self._step(loop, bar)
        except KeyboardInterrupt as interrupt:
            raise self._interrupted(loop, interrupt) from None
        finally:
            if bar is not None:
                bar.close()
        return self._finish(loop)

    def _step(self, loop: _Loop, bar) -> None:
        """One batch: gradients, the update (undone with the rate halved, or stopping, where
        anything is not finite), then :meth:`_after_step`."""
        started = time.perf_counter()
        loop.rng = self.runtime.rng_state()  # an interrupted step is redone from here on --resume
        x, y = self._batch()
        lr = self.learning_rate(self.position.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        state_in = self.state
        loss, penalty, state, norm = self._gradients(x, y, state_in)
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            self._recover(loop, state_in, lr, "loss" if not torch.isfinite(loss) else "gradient norm")
            return
        loop.snapshot = (_clone(self.model.state_dict()), _clone(self.optimizer.state_dict()))
        # the commit: a signal waits for its end (the step's log record included); an exception
        # inside the update undoes it
        with _deferred_interrupts():
            loop.updating = True
            self.optimizer.step()
            finite = self._finite_parameters()  # a finite gradient can still step to inf (a huge rate)
            loop.updating = False
            if not finite:
                self._recover(loop, state_in, lr, "parameters after the step")
                return
            self.state = self.model.detach_state(state)
            self._advance(loop)
            loop.window_grad_norm = max(loop.window_grad_norm, norm.item())
            # the step's time, without the validation and checks that may follow it
            loop.step_seconds = time.perf_counter() - started if loop.step_seconds is None else \
                0.8 * loop.step_seconds + 0.2 * (time.perf_counter() - started)
            self._record(loop, bar, loss, penalty, lr)
        self._after_step(loop, bar, x)
        self.position.elapsed = time.perf_counter() - loop.started
        if self.position.step % self.config.checkpoint_every == 0:
            self.save()

    def _advance(self, loop: _Loop) -> None:
        """The position moves past the step just taken; an interruption from here on keeps it."""
        c, p = self.config, self.position
        p.step += 1
        p.column += c.bptt
        p.tokens += c.batch_size * c.bptt
        loop.rng = self.runtime.rng_state()

    def _gradients(self, x, y, state_in):
        """Forward, backward and clipping of one batch from the carried state ``state_in``:
        ``(loss, Jacobian penalty or None, state after the batch, gradient norm before clipping)``."""
        c = self.config
        penalty = None
        try:
            with self.runtime.autocast():
                _, loss, state = self.module(x, y, self.model.detach_state(state_in))
            objective = loss
            if c.jac_reg > 0:  # at the batch's starting states, with the inputs at its first token
                penalty = self.model.jacobian_penalty(x[:, 0], state_in)
                objective = loss + c.jac_reg * penalty
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
        except (odernn.StepSizeUnderflow, odernn.ImplicitSolveError) as err:
            raise self._solver_failure(err, x) from None
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), c.clip if c.clip > 0 else float("inf"))
        return loss, penalty, state, norm

    def _record(self, loop: _Loop, bar, loss, penalty, lr: float) -> None:
        """The step's log record, when one is due (part of the step's commit)."""
        c, p = self.config, self.position
        loop.window_tokens += c.batch_size * c.bptt
        if p.step % c.log_every == 0 or p.step == self.total_steps:
            now = time.perf_counter()
            speed = loop.window_tokens / max(now - loop.window_start, 1e-9)
            p.train_loss = loss.item()
            record = {"step": p.step, "tokens": p.tokens, "epoch": p.epoch, "train_loss": p.train_loss,
                      "lr": lr, "tokens_per_s": speed, "window_tokens": loop.window_tokens,
                      "elapsed": now - loop.started, "grad_norm_max": loop.window_grad_norm}
            loop.window_tokens, loop.window_start, loop.window_grad_norm = 0, now, 0.0
            if penalty is not None:
                record["jac_penalty"] = penalty.item()
            self._log(record)
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", tok_s=f"{speed:,.0f}")

    def _after_step(self, loop: _Loop, bar, x) -> None:
        """After the step's commit: the probe and the periodic validation and checks when due."""
        c, p = self.config, self.position
        if c.probe_every and p.step % c.probe_every == 0 and self.model.ode_cells():
            self._probe(x)
        self._due(loop)
        if bar is not None:
            bar.update(1)

    def _due(self, loop: _Loop) -> None:
        """The work due after the current step: the periodic validation with the early-stopping
        decision (every rank learns it), and the stability checks; then the step is settled."""
        c, p = self.config, self.position
        if c.eval_every and p.step % c.eval_every == 0 and p.step < self.total_steps:
            if self.rank == 0:
                with _outside_steps(loop):
                    valid = self._validate("periodic validation", c.eval_tokens)
                    self._log({"step": p.step, "tokens": p.tokens, "valid_loss": valid,
                               "elapsed": time.perf_counter() - loop.started})
                    if c.patience:
                        self._keep_best(valid)
                    self.model.train()
            if c.patience and self.world > 1:  # only rank 0 validates: the others stop with it
                import torch.distributed as dist
                flag = torch.tensor([float(p.stopped_early)], device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                p.stopped_early = bool(flag.item())
        for fraction in c.check_at or ():
            if fraction > 0 and p.step == max(1, round(fraction * self.total_steps)):
                self._check(loop, fraction)
        p.settled = p.step

    def _validate(self, what: str, tokens: int | None) -> float:
        """The validation loss; a solver that fails on the validation text stops the run as it
        would in training (the state saved, :class:`TrainingError`)."""
        try:
            return self.evaluate(tokens=tokens)
        except (odernn.StepSizeUnderflow, odernn.ImplicitSolveError) as err:
            self.save()
            raise TrainingError(f"step {self.position.step}, {what}: {type(err).__name__}: {err}. State saved to "
                                f"{self.checkpoint_path}") from None

    def _keep_best(self, valid: float, final: bool = False) -> None:
        """Early stopping: a new best periodic validation saves the weights to ``best.pt``; after
        ``patience`` validations without one, the run stops (the rest of its budget unused). A
        non-finite loss is never the best. ``final``: the weights at the end of the budget, a
        candidate too (they are often the best under a decaying schedule)."""
        p = self.position
        if math.isfinite(valid) and (p.best_loss is None or valid < p.best_loss):
            p.best_loss, p.best_step, p.stale_evaluations = valid, p.step, 0
            save_checkpoint(self._payload(), self.best_path)
            return
        if final:
            return
        p.stale_evaluations += 1
        if p.stale_evaluations >= self.config.patience:
            p.stopped_early = True
            self._log({"step": p.step, "event": "early stop", "best_step": p.best_step, "best_loss": p.best_loss})

    def _check(self, loop: _Loop, fraction: float) -> None:
        """``stability.check`` of each ODE layer at the current weights, driven by the first 64
        validation tokens, logged as an ``"event": "check"`` record (``--check-at``)."""
        import stability
        with _outside_steps(loop):
            tokens = self.corpus.split("valid")[:64][None].to(self.device)
            self.model.eval()  # no dropout: the check neither sees one nor draws from the training RNG
            try:
                with torch.no_grad():
                    layers = self.model.ode_layer_inputs(tokens)
                for index, cell, inputs in layers:
                    report = stability.check(cell, inputs=inputs.float())
                    # the far-field flags; None where it was not measured (an implicit step that cannot solve there)
                    far = {c.key: None if c.detail.startswith("not measured") else c.holds
                           for c in report.conditions if c.key in ("far_field", "restoring_far_field")}
                    self._log({"step": self.position.step, "event": "check", "fraction": fraction, "layer": index,
                               "verdict": report.verdict, "margin": report.margin, **far})
            except Exception as err:  # a state the check cannot read (non-finite weights): said, not fatal
                self._log({"step": self.position.step, "event": "check", "fraction": fraction,
                           "error": f"{type(err).__name__}: {str(err)[:300]}"})
            finally:
                self.model.train()

    def _interrupted(self, loop: _Loop, interrupt: KeyboardInterrupt) -> TrainingInterrupted:
        """Ctrl-C or SIGTERM: the state before the step it interrupted saved, to be redone on --resume."""
        p = self.position
        p.elapsed = time.perf_counter() - loop.started
        if loop.updating:  # a KeyboardInterrupt raised inside the update itself: the state before it
            self.model.load_state_dict(loop.snapshot[0])
            self.optimizer.load_state_dict(loop.snapshot[1])
        self.runtime.set_rng_state(loop.rng)  # a step interrupted before its commit is redone from here
        self.save()
        return TrainingInterrupted(f"interrupted at step {p.step}/{self.total_steps}; checkpoint saved to "
                                   f"{self.checkpoint_path}; continue with --resume",
                                   143 if isinstance(interrupt, _Terminated) else 130)

    def _finish(self, loop: _Loop) -> dict:
        """The final save, the result and (rank 0) the final validation, written to OUT/result.json."""
        c, p = self.config, self.position
        p.elapsed = time.perf_counter() - loop.started
        self.save()
        result = {"step": p.step, "tokens": p.tokens, "epochs": p.tokens / (self.steps_per_epoch * c.batch_size * c.bptt),
                  "device": str(self.device), "precision": c.precision, "train_loss": p.train_loss,
                  "nan_recoveries": p.nan_recoveries, "elapsed": p.elapsed,
                  "tokens_per_s": p.tokens / max(p.elapsed, 1e-9),
                  "parameters": sum(q.numel() for q in self.model.parameters()),
                  "nfe_per_token": self.model.nfe_per_token(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
        if c.patience and self.rank == 0 and not p.stopped_early and p.step > 0:
            self._keep_best(self._validate("validation of the final weights", c.eval_tokens), final=True)
            self.model.train()
        if c.patience and p.best_loss is not None:
            result.update(best_step=p.best_step, stopped_early=p.stopped_early)
            # the run's model is its best one: validated in full, and what generation and tests use
            self.model.load_state_dict(load_checkpoint(self.best_path)["model"])
        if self.rank == 0:
            self._final_validation(result)
        return result

    def _final_validation(self, result: dict) -> None:
        c, p = self.config, self.position
        try:
            loss, tokens, whole = self._evaluate(progress=c.progress, deadline=self.deadline)
        except (odernn.StepSizeUnderflow, odernn.ImplicitSolveError) as err:
            raise TrainingError(f"step {p.step}, the final validation: {type(err).__name__}: {err}. State saved to "
                                f"{self.checkpoint_path}") from None
        result["valid_loss"], result["valid_tokens"] = loss, tokens
        if tokens < whole:
            result["valid_cut"] = (f"the final validation covered {tokens:,} of {whole:,} tokens: "
                                   f"the --max-seconds {c.max_seconds:g} budget ended")
        self._log({"step": p.step, "tokens": p.tokens, "valid_loss": loss, "elapsed": p.elapsed, "final": True,
                   "valid_tokens": tokens})
        self.model.train()
        tmp = self.out / ".result.json.tmp"
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(self.out / "result.json")


def train(config: TrainConfig, resume: bool = False) -> tuple[Trainer, dict]:
    trainer = Trainer(config, resume=resume)
    return trainer, trainer.run()
