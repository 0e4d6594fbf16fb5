"""Where and in what precision a model runs: the device, the precision, and the random state of both.

Precisions (``--precision``):

- ``float32``: weights, activations and states in float32;
- ``float64``: all of it in float64 (the reference for round-off comparisons; slow);
- ``bf16``: mixed precision by ``torch.autocast`` (on CUDA; on a CPU too, where it is mostly a way
  to test the same code). The weights, the optimiser and the gradients stay float32 ("master
  weights"); matrix products — embedding lookups excepted — run in bfloat16 with float32
  accumulation, and so do the activations computed from them. What ``odernn`` does under autocast
  is its own rule (``odernn.ODERNN``): the state of an ODE layer and its Runge–Kutta stage
  combinations stay float32, and implicit, adaptive and continuous-adjoint solves run in float32
  whole, so that Newton tolerances and error control are never judged in bfloat16. PyTorch's
  own recurrent layers (``torch-*``) run in float32 under autocast: its autocast wrapper for cuDNN
  RNNs casts to float16 whatever dtype was asked for, and oneDNN has no bfloat16 LSTM on most
  CPUs. bf16 has float32's exponent range, so no loss scaling is needed and a NaN means what it
  means in float32.

Stability checks (``stability.check``, the training probe) run on the float32 (or float64) master
weights outside autocast, whatever the precision of training.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch

__all__ = ["PRECISIONS", "DeviceError", "Runtime", "resolve_device"]

PRECISIONS = ("float32", "bf16", "float64")


class DeviceError(ValueError):
    """A device or precision this machine cannot give (the message says why, in one line)."""


def _cuda_missing() -> str:
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) was built without CUDA"
    return "PyTorch was built with CUDA but finds no usable GPU (driver or CUDA_VISIBLE_DEVICES)"


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Under
    ``torchrun``, ``auto`` and ``cuda`` mean this process's GPU, ``cuda:$LOCAL_RANK``."""
    text = (name or "auto").strip().lower()
    local = os.environ.get("LOCAL_RANK")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise DeviceError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA here ({_cuda_missing()}); use --device cpu")
    if match.group(1) is None:
        index = int(local) if local is not None else torch.cuda.current_device()
    else:
        index = int(match.group(1))
        if local is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1 and index != int(local):
            raise DeviceError(f"--device {name}: under torchrun each process takes its own GPU "
                              f"(cuda:$LOCAL_RANK); use --device cuda")
    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def _cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Runtime:
    """A resolved device and a precision: ``Runtime.of("auto", "bf16")``."""

    device: torch.device
    precision: str = "float32"

    @classmethod
    def of(cls, device: str | torch.device | None = "auto", precision: str = "float32") -> "Runtime":
        if precision not in PRECISIONS:
            raise DeviceError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
        resolved = device if isinstance(device, torch.device) else resolve_device(device)
        if precision == "bf16" and resolved.type == "cuda":
            with torch.cuda.device(resolved):
                if not torch.cuda.is_bf16_supported(including_emulation=False):
                    raise DeviceError(f"--precision bf16: {torch.cuda.get_device_name(resolved)} has no native "
                                      "bfloat16 (Ampere or later has); use --precision float32")
        return cls(resolved, precision)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights (bf16 keeps float32 master weights)."""
        return torch.float64 if self.precision == "float64" else torch.float32

    def autocast(self):
        """The context the forward pass runs in (``torch.autocast`` for bf16, else nothing)."""
        if self.precision == "bf16":
            # no cast cache: every weight is cast once per pass anyway (the ODE layers cast their
            # recurrent matrix once per sequence), and CUDA-graph capture refuses the cache
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def machine(self) -> dict:
        """What runs the steps, for the run's record: a speed is this machine's, and a run resumed
        in another session may run on another (the ``"event": "start"`` and ``"resume"`` records
        of ``metrics.jsonl``)."""
        facts = {"device": str(self.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cores": os.cpu_count(), "cpu": _cpu_name()}
        if self.device.type == "cuda":
            facts["gpu"] = torch.cuda.get_device_name(self.device)
        return facts

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def rng_state(self) -> dict:
        """The random state that decides dropout and sampling on this device."""
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state) -> None:
        """Restore :meth:`rng_state` (a bare CPU state from older checkpoints is accepted). A state
        saved on another kind of device restores what it can: the run is then not bit-exact."""
        if isinstance(state, torch.Tensor):
            state = {"cpu": state}
        torch.set_rng_state(state["cpu"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)
