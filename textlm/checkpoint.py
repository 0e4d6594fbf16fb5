"""Checkpoints: written atomically, loaded without unpickling code.

A checkpoint is one ``torch.save`` file of plain containers and tensors (model, optimiser, RNG
states, data position, carried hidden state, vocabulary, configuration, metrics), loaded with
``weights_only=True``: no object from the file is ever constructed by pickle. Writes go to a
temporary file in the same folder, are flushed to disk, then renamed over the target, so an
interrupted write never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "FORMAT"]

FORMAT = "odernn-textlm/1"


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or of another format; the message says which."""


def save_checkpoint(data: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"format": FORMAT, **data}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # zip, pickle and unpickler-policy errors all mean "not a good checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated, corrupt, or holding objects "
                              "other than tensors and plain containers (refused unread: loading those could "
                              "run code)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an odernn text-model checkpoint (format "
                              f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r})")
    return data
