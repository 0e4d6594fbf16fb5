"""Errors a user can cause from the command line: printed as one line, exit code 2."""

import butcher
import odernn
from textlm.checkpoint import CheckpointError
from textlm.data import CorpusError
from textlm.model import ModelError
from textlm.runtime import DeviceError
from textlm.train import RunInUse


class CLIError(Exception):
    """A problem with the command's input, explained in the message."""


USER_ERRORS = (CLIError, butcher.TableauError, butcher.UnknownMethodError, odernn.CellSpecError,
               odernn.ImplicitSolveError, OSError, CorpusError, CheckpointError, ModelError,
               DeviceError, RunInUse)
