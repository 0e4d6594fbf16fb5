"""Checkpoints: written atomically, loaded without unpickling code.

A checkpoint is one ``torch.save`` file of plain containers and tensors (model, optimiser, RNG
states, data position, carried hidden state, vocabulary, configuration, metrics), loaded with
``weights_only=True``: no object from the file is ever constructed by pickle. Writes go to a
temporary file in the same folder, are flushed to disk, then renamed over the target, so an
interrupted write never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["CheckpointError", "load_checkpoint", "non_finite", "save_checkpoint", "FORMAT"]

FORMAT = "odernn-textlm/1"


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or of another format; the message says which."""


def save_checkpoint(data: dict, path: str | os.PathLike) -> Path:
    """``data`` written to ``path`` atomically; weights holding a NaN or an infinity are refused
    (the file already there, the last good state, stays)."""
    path = Path(path)
    bad = non_finite(data.get("model", {}))
    if bad:
        raise CheckpointError(f"not saving {path}: non-finite weights in {', '.join(bad[:3])}"
                              f"{' …' if len(bad) > 3 else ''} (the previous checkpoint is kept)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _signals_held(), os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **data}, handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM held back while a checkpoint is written, then handled as they would have
    been: an interrupt inside ``torch.save`` left its zip writer half-done, and the writer's error on
    clean-up (not the interrupt) escaped the trainer's handler. Python runs a signal's handler at
    the next bytecode wherever it is, so the handlers themselves are swapped for the write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {number: signal.signal(number, lambda signum, frame: pending.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(number) is not None}  # None: set outside Python, left alone
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(pending):
            handler = previous[number]
            if callable(handler):  # Python's own (KeyboardInterrupt) or the trainer's
                handler(number, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), number)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + ("" if not path.exists() else
                                                            ": not a regular file (a device or a pipe)"))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # zip, pickle and unpickler-policy errors all mean "not a good checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated, corrupt, or holding objects "
                              "other than tensors and plain containers (refused unread: loading those could "
                              "run code)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an odernn text-model checkpoint (format "
                              f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    model = data.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"{path} holds no model weights (its 'model' entry is not a dict of tensors)")
    bad = non_finite(model)
    if bad:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in {', '.join(bad[:3])}"
                              f"{' …' if len(bad) > 3 else ''}): refused; train again from an earlier checkpoint")
    position = data.get("position", {})
    counts = {k: v for k, v in position.items() if k in ("step", "epoch", "column", "tokens", "nan_recoveries")} \
        if isinstance(position, dict) else None
    if counts is None or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
        raise CheckpointError(f"{path} has an invalid training position {position!r}: its counts must be integers ≥ 0")
    data["loaded_from"] = str(path)  # not saved: where relative paths of older checkpoints are resolved
    return data


def non_finite(weights: dict) -> list[str]:
    """The names of the floating-point tensors in ``weights`` that hold a NaN or an infinity."""
    return [name for name, value in weights.items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]
