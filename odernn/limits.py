"""The limits of every number the toolkit takes from a user, in one table.

Command-line options, cell-spec keys (``gru-ode:rk4:steps=2``) and constructor arguments all read
their numbers through the kinds below, so a new option cannot skip the check. Each kind has:

- ``parse(name, text)`` for text (the command line, a spec): ASCII digits only (``float('٣')`` and
  ``int('３')`` would read Arabic-Indic and fullwidth digits as 3), at most 40 characters, then
- ``check(name, value)`` for values (the Python API): the right type (``True`` is not a number),
  finite, and within the kind's range; ``TypeError`` or ``ValueError`` naming ``name``.

``TABLE`` lists the kinds, and the other limits (sizes of files and specs, the deadline, memory),
with what each bounds; the limits table of docs/limits.md is :func:`markdown`'s output and the tests run
from it.

>>> from odernn import limits
>>> limits.STEPS.parse("steps", "4")
4
>>> limits.DT.check("dt", float("inf"))
Traceback (most recent call last):
...
ValueError: dt must be a finite number in (0, 1e+06], got inf
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import re
import stat
from dataclasses import dataclass

import butcher

__all__ = ["Integer", "Location", "Real", "TABLE", "check_memory", "markdown", "memory_budget"]

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_MAX_CHARS = 40


def _text(name: str, text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be given as text, got {type(text).__name__}")
    text = text.strip()
    shown = text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + "…"
    if len(text) > _MAX_CHARS or not text.isascii() or not _NUMBER.fullmatch(text):
        raise ValueError(f"{name} must be a number written in ASCII digits (at most {_MAX_CHARS} characters), "
                         f"got {shown!r}")
    return text


@dataclass(frozen=True)
class Integer:
    """Whole numbers in ``low … high``."""

    low: int
    high: int

    def describe(self) -> str:
        return f"an integer in {self.low:,} … {self.high:,}"

    def check(self, name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{name} must be {self.describe()}, got {value}")
        return int(value)

    def parse(self, name: str, text) -> int:
        text = _text(name, text)
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"{name} must be {self.describe()}, got {text!r}")
        return self.check(name, int(text))

    def argument(self, name: str):
        """``type=`` for argparse: the message names the option."""
        return _argument(self, name)


@dataclass(frozen=True)
class Real:
    """Finite numbers in a range; ``low_open``/``high_open`` exclude an end."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        return (f"a finite number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")

    def check(self, name: str, value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        value = float(value)
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        if not (math.isfinite(value) and above and below):
            raise ValueError(f"{name} must be {self.describe()}, got {value!r}")
        return value

    def parse(self, name: str, text) -> float:
        return self.check(name, float(_text(name, text)))

    def argument(self, name: str):
        return _argument(self, name)


@dataclass(frozen=True)
class Location:
    """A path on this machine, checked before it is opened. ``role``: ``"file"`` (an existing regular
    file), ``"folder"`` (a folder, or where one can be made: not a file), ``"file or folder"`` (a
    checkpoint or its run folder) or ``"output"`` (a file to write: not a folder, in a folder that
    exists)."""

    role: str

    def describe(self) -> str:
        return {"file": "an existing regular file", "folder": "a folder (made if missing), not a file",
                "file or folder": "an existing file or folder",
                "output": "a file to write, in a folder that exists"}[self.role]

    def check(self, name: str, value) -> str:
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"{name} must be a path, got {type(value).__name__}")
        text = os.fspath(value)
        if not text or len(text) > 4096 or "\x00" in text:
            raise ValueError(f"{name} must be a path of 1 to 4096 characters without NUL bytes")
        path = os.path.expanduser(text)
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ValueError(f"{name} {text}: a loop of symbolic links") from None
            mode = None
        is_file, is_folder = mode is not None and stat.S_ISREG(mode), mode is not None and stat.S_ISDIR(mode)
        if self.role == "file" and not is_file:
            why = ("no such file" if mode is None else "is a directory, not a file" if is_folder
                   else "not a regular file (a device or a pipe)")
            raise ValueError(f"{name} {text}: {why}")
        if self.role == "folder" and mode is not None and not is_folder:
            raise ValueError(f"{name} {text}: is a file, not a directory")
        if self.role == "file or folder" and not (is_file or is_folder):
            why = "no such file or folder" if mode is None else "not a regular file or a folder (a device or a pipe)"
            raise ValueError(f"{name} {text}: {why}")
        if self.role == "output":
            folder = os.path.dirname(os.path.abspath(path))
            if is_folder:
                raise ValueError(f"{name} {text}: is a directory; give a file name")
            if not os.path.isdir(folder):
                raise ValueError(f"{name} {text}: its folder {folder} does not exist")
        return text

    def parse(self, name: str, text) -> str:
        return self.check(name, text)

    def argument(self, name: str):
        return _argument(self, name)


def _argument(kind, name: str):
    import argparse

    def parse(text):
        try:
            return kind.parse(name, text)
        except (TypeError, ValueError) as err:  # argparse names the option: "argument --lr: must be …"
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{name} ")) from None
    parse.__name__ = type(kind).__name__.lower()  # argparse names the type in some messages
    parse.kind = kind  # what the tests read back: every numeric option has a kind
    return parse


def markdown() -> str:
    """The limits table of docs/limits.md: every kind, what it accepts, where it applies."""
    rows = ["| kind | accepted | where |", "|---|---|---|"]
    for name, (kind, where) in TABLE.items():
        accepted = kind.describe() if isinstance(kind, (Integer, Real)) else kind
        rows.append(f"| `{name}` | {accepted} | {where} |")
    return "\n".join(rows)


# --- the table ------------------------------------------------------------------------------------
WIDTH = Integer(1, 65_536)            # input, hidden and embedding widths (memory is estimated too)
LAYERS = Integer(1, 64)
STEPS = Integer(1, 1_000)             # Runge–Kutta steps per token
ORDER = Integer(1, 16)                # derivative order t
BATCH = Integer(1, 65_536)
BPTT = Integer(1, 65_536)
TOKENS = Integer(1, 10 ** 12)
EPOCHS = Integer(1, 1_000_000)
CADENCE = Integer(0, 10 ** 9)         # every N steps, 0: off
PERIOD = Integer(1, 10 ** 9)          # every N steps
SEED = Integer(0, 2 ** 63 - 1)
SAMPLES = Integer(1, 4_096)           # states a stability check samples
LENGTH = Integer(1, 100_000)          # generated tokens
PROMPTS = Integer(0, 10_000)
TOP_K = Integer(1, 10_000_000)
THREADS = Integer(1, 1_024)
RECOVERIES = Integer(0, 1_000)
PROJECTION = Integer(0, 65_535)       # proj_size (below hidden_size)
DT = Real(0.0, 1e6, low_open=True)    # the interval of a token
TOLERANCE = Real(0.0, 1.0, low_open=True, high_open=True)
RATE = Real(0.0, 1e6, low_open=True)  # learning rate
PROBABILITY = Real(0.0, 1.0, high_open=True)  # dropout of the language model; momentum
FRACTION = Real(0.0, 1.0)             # min_lr_ratio
DECAY = Real(0.0, 1.0, low_open=True)
WEIGHT = Real(0.0, 1e6)               # weight decay, clipping, the Jacobian penalty's λ
TEMPERATURE = Real(0.0, 1_000.0, low_open=True)
SECONDS = Real(0.0, 1e7, low_open=True)
GAIN = Real(1e-3, 1e3)  # a factor on initial weights (not so small that float32 weights underflow)
COEFFICIENT = Real(-1e6, 1e6)         # a field's own constants: γ, ε, α, β, init_std
AXIS = Real(-1e6, 1e6)                # plot windows
FILE = Location("file")
FOLDER = Location("folder")
FILE_OR_FOLDER = Location("file or folder")
OUTPUT = Location("output")
PARAMETERS = Integer(1, 10 ** 10)     # a parameter budget
EIGEN_WORK = 5 * 10 ** 9              # samples × D³ of a stability check's eigenvalues (about 10 s here)
SPEC_CHARACTERS = 1_000               # a cell spec
CORPUS_BYTES = 64 << 20               # a corpus file: its tokens are held in memory, about 30× the bytes

TABLE = {  # kind: (what it bounds, where)
    "WIDTH": (WIDTH, "widths: --hidden, --embed, --input-size, --hidden-size; ODERNN/odernn.cell input_size, "
                     "hidden_size; the parameters' memory is estimated before anything is allocated"),
    "LAYERS": (LAYERS, "--layers; ODERNN num_layers"),
    "STEPS": (STEPS, "Runge–Kutta steps per token: spec steps=, --adjoint-steps"),
    "ORDER": (ORDER, "derivative order: spec order="),
    "PROJECTION": (PROJECTION, "spec proj_size=, ODERNN proj_size (and below hidden_size)"),
    "BATCH": (BATCH, "--batch-size"),
    "BPTT": (BPTT, "--bptt"),
    "TOKENS": (TOKENS, "--max-tokens, --train-tokens, --valid-tokens, --eval-tokens"),
    "PARAMETERS": (PARAMETERS, "compare --params (a parameter budget)"),
    "EPOCHS": (EPOCHS, "--epochs"),
    "CADENCE": (CADENCE, "--eval-every, --probe-every, --patience, --warmup, --decay-after (0: off)"),
    "PERIOD": (PERIOD, "--checkpoint-every, --log-every"),
    "SEED": (SEED, "--seed, compare --seeds"),
    "SAMPLES": (SAMPLES, "stability --samples"),
    "LENGTH": (LENGTH, "generate --length, train --sample-length"),
    "PROMPTS": (PROMPTS, "evaluate/compare --prompts"),
    "TOP_K": (TOP_K, "generate --top-k"),
    "THREADS": (THREADS, "--threads"),
    "RECOVERIES": (RECOVERIES, "train max_nan_recoveries"),
    "DT": (DT, "the interval of a token: spec dt=/eps=, stability --dt, ODERNN dt"),
    "TOLERANCE": (TOLERANCE, "spec tol=, rtol=, atol=; --adjoint-rtol, --adjoint-atol; tableau --float TOL"),
    "RATE": (RATE, "--lr"),
    "PROBABILITY": (PROBABILITY, "--dropout, --momentum"),
    "FRACTION": (FRACTION, "train min_lr_ratio, --check-at, --noise"),
    "DECAY": (DECAY, "--decay"),
    "WEIGHT": (WEIGHT, "--weight-decay, --clip, --jac-reg"),
    "TEMPERATURE": (TEMPERATURE, "generate/evaluate --temperature"),
    "SECONDS": (SECONDS, "--max-seconds"),
    "GAIN": (GAIN, "--init-gain (a factor on the initial recurrent weights)"),
    "COEFFICIENT": (COEFFICIENT, "a field's constants: spec gamma=, epsilon=, alpha=, beta=, init_std=, damping="),
    "AXIS": (AXIS, "tableau plot --xlim, --ylim"),
    "EIGEN_WORK": (f"at most {EIGEN_WORK:.0e}", "stability check/plot: --samples × (blocks × hidden size)³, "
                                               "the dense eigenvalue work (about 10 s here)"),
    "MEMORY": ("at most half the physical memory", "one allocation the sizes imply (parameters, Jacobians), "
                                                   "estimated before anything is allocated"),
    "NUMBER_TEXT": (f"ASCII digits, at most {_MAX_CHARS} characters", "every number written on the command line or "
                                                                      "in a spec (not ٣, ３ or 𝟑)"),
    "SPEC_CHARACTERS": (f"at most {SPEC_CHARACTERS:,} characters", "a cell spec; each key once"),
    "OPTION_ONCE": ("each option once", "the command line (`--lr 1 --lr 2` is refused) and a spec"),
    "TABLEAU_FILE": (f"at most {butcher.MAX_FILE_BYTES >> 20} MiB, nesting ≤ {butcher.MAX_NESTING}, numbers ≤ "
                     f"{butcher.MAX_DIGITS:,} digits, algebraic degree ≤ {butcher.MAX_DEGREE}",
                     "a .toml/.json tableau file (refused before it is parsed)"),
    "DEADLINE": (f"{butcher.DEADLINE:g} s", "exact arithmetic on a user's tableau (a file's, a checkpoint's): tableau commands, cell "
                        "specs, ODERNN, the stability commands, compare, loading a checkpoint"),
    "CORPUS_BYTES": (f"at most {CORPUS_BYTES >> 20} MiB", "a corpus file (--text, and the named corpora)"),
    "PATHS": ("1 to 4096 characters, no NUL, no loop of links; an existing file, a folder (not a file), an "
              "existing file or folder, or a file to write in an existing folder",
              "--text; --data-root, --out; a checkpoint; -o/--output; tableau check FILE"),
}


def memory_budget() -> int:
    """Bytes a single allocation may plan on: half of this machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no estimate
        return 1 << 62


def check_memory(what: str, count: int, bytes_each: int = 8) -> None:
    """Refuse ``count`` numbers of ``bytes_each`` that would not fit, before anything is allocated."""
    need, budget = count * bytes_each, memory_budget()
    if need > budget:
        raise ValueError(f"{what} would need {need / 2 ** 30:,.1f} GiB, more than the {budget / 2 ** 30:,.1f} GiB "
                         "(half this machine's memory) one allocation may take; choose smaller sizes")
