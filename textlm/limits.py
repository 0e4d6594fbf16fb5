"""The kind (``odernn.limits``) of every number the language model's options take, by option name.

The command line reads each option with ``type=argument(name)``, and ``TrainConfig``,
``ModelConfig`` and ``CompareConfig`` check each field with ``check(name, value)``: one definition per option, so a
number from either road meets the same limits, and a new option without an entry here fails the
test that walks the command line.
"""

from __future__ import annotations

from odernn import limits as L

__all__ = ["KINDS", "argument", "check", "check_dependent", "check_fields", "defaults", "without_effect"]

KINDS = {
    # model and data
    "hidden": L.WIDTH, "embed": L.WIDTH, "input_size": L.WIDTH, "hidden_size": L.WIDTH, "layers": L.LAYERS,
    "dropout": L.PROBABILITY, "train_tokens": L.TOKENS, "valid_tokens": L.TOKENS, "params": L.PARAMETERS,
    "vocab_size": L.TOKENS,  # the language model's (a corpus has at most as many token types as tokens)
    # gradients
    "adjoint_steps": L.STEPS, "adjoint_rtol": L.TOLERANCE, "adjoint_atol": L.TOLERANCE,
    # optimisation
    "batch_size": L.BATCH, "bptt": L.BPTT, "lr": L.RATE, "weight_decay": L.WEIGHT, "momentum": L.PROBABILITY,
    "warmup": L.CADENCE, "min_lr_ratio": L.FRACTION, "decay_after": L.CADENCE, "decay": L.DECAY, "clip": L.WEIGHT,
    "jac_reg": L.WEIGHT, "init_gain": L.GAIN, "max_tokens": L.TOKENS, "epochs": L.EPOCHS, "max_seconds": L.SECONDS, "seed": L.SEED,
    "seeds": L.SEED, "max_nan_recoveries": L.RECOVERIES,
    # bookkeeping
    "eval_every": L.CADENCE, "eval_tokens": L.TOKENS, "checkpoint_every": L.PERIOD, "log_every": L.PERIOD,
    "probe_every": L.CADENCE, "sample_length": L.LENGTH, "patience": L.CADENCE, "check_at": L.FRACTION,
    "noise": L.FRACTION,
    # generation, evaluation, stability
    "length": L.LENGTH, "temperature": L.TEMPERATURE, "top_k": L.TOP_K, "prompts": L.PROMPTS, "dt": L.DT,
    "samples": L.SAMPLES, "threads": L.THREADS,
    # paths, checked before they are opened
    "text": L.FILE, "data_root": L.FOLDER, "out": L.FOLDER, "checkpoint": L.FILE_OR_FOLDER, "output": L.OUTPUT,
    "file": L.FILE,
}


_POSITIONAL = {"checkpoint", "file"}


def _flag(name: str) -> str:
    return name if name in _POSITIONAL else "--" + name.replace("_", "-")


def argument(name: str):
    """``type=`` for the option ``name`` (its dest): the message names ``--name``."""
    return KINDS[name].argument(_flag(name))


def check(name: str, value):
    """``value`` of the option ``name`` checked (``None`` passes: not given)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [KINDS[name].check(_flag(name), v) for v in value]
    return KINDS[name].check(_flag(name), value)


def check_fields(config) -> list[str]:
    """The problems of a config dataclass's fields that have a kind here, one line each."""
    problems = []
    for name in vars(config):
        if name in KINDS:
            try:
                check(name, getattr(config, name))
            except (TypeError, ValueError) as err:
                problems.append(str(err))
    return problems


# options that act only with another's value: (their names, that option, whether it has the value)
_DEPENDENT = (
    (("momentum",), "--optimizer sgd", lambda get: get("optimizer") == "sgd"),
    (("decay_after", "decay"), "--schedule step", lambda get: get("schedule") == "step"),
    (("min_lr_ratio",), "--schedule cosine", lambda get: get("schedule") == "cosine"),
    (("adjoint_method", "adjoint_steps", "adjoint_rtol", "adjoint_atol"), "--grad adjoint",
     lambda get: get("grad") == "adjoint"),
)


def without_effect(values: dict, defaults: dict) -> dict[str, str]:
    """``{name: the option it needs}`` for every setting in ``values`` other than its default that
    nothing reads there (``--momentum 0.9`` with AdamW was silently ignored)."""
    def get(name):
        return values.get(name, defaults.get(name))
    return {name: needs for names, needs, acts in _DEPENDENT if not acts(get) for name in names
            if name in defaults and get(name) != defaults[name]}


def defaults(config) -> dict:
    """A config dataclass's (or its class's) plain defaults, by field name."""
    from dataclasses import MISSING, fields
    return {f.name: f.default for f in fields(config) if f.default is not MISSING}


def check_dependent(config) -> list[str]:
    """The problems of a config dataclass whose settings :func:`without_effect` finds, one line each."""
    return [f"{_flag(name)} {getattr(config, name)} acts only with {needs}"
            for name, needs in without_effect(vars(config), defaults(config)).items()]
