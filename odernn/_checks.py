"""Argument checks shared by the constructors and by attribute assignment, with ``torch.nn``'s
exception types, and the exception a call's bad input raises.

``nn.GRU`` checks its constructor arguments' types (``TypeError``) and values (``ValueError``),
and raises ``RuntimeError`` for most input that does not fit the layer (a wrong feature size, a
wrong ``hx`` shape, an empty sequence) but ``ValueError`` for some (a wrong number of
dimensions, a dtype mismatch). :class:`InputError` is both, so that code written for ``nn.GRU``
(``except RuntimeError``) and code written for odernn (``except ValueError``) catch it alike.

:class:`Settings` makes a module's constructor arguments safe to change afterwards: the ones that
fix the parameter layout (or what was derived from them once) are read-only, the others are
checked on every assignment by the same check the constructor used, and every path reads them
when it runs.
"""

from __future__ import annotations

import math
import numbers
import warnings

from . import limits

__all__ = ["InputError", "Settings", "check_bool", "check_size", "check_count", "check_dropout", "check_positive",
           "check_proj_size", "check_interval"]


class InputError(ValueError, RuntimeError):
    """A call's input, state or options do not fit the layer or cell; the message names which.
    Both a ``ValueError`` and a ``RuntimeError`` (what ``torch.nn``'s recurrent modules raise for
    the same mistakes)."""


def check_bool(name: str, value) -> bool:
    """``bias``, ``batch_first``, … : a ``bool``, as ``nn.GRU`` checks it (``bias=0`` is a TypeError)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return value


def check_size(name: str, value) -> int:
    """``input_size``, ``hidden_size``: a width (``odernn.limits.WIDTH``)."""
    return limits.WIDTH.check(name, value)


def check_count(name: str, value) -> int:
    """``num_layers`` (``limits.LAYERS``), ``steps`` (``limits.STEPS``)."""
    return (limits.STEPS if name == "steps" else limits.LAYERS).check(name, value)


def check_dropout(value, num_layers: int | None = None) -> float:
    """A probability in [0, 1] (``nn.GRU``'s range: 1 is allowed); with ``num_layers`` given, the
    warning ``nn.GRU`` gives when one layer has nothing to drop out after."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ValueError(f"dropout should be a number in range [0, 1] representing the probability of an element "
                         f"being zeroed, got {value!r}")
    if num_layers == 1 and value > 0:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                      f"num_layers greater than 1, but got dropout={value} and num_layers={num_layers}", stacklevel=3)
    return float(value)


def check_positive(name: str, value) -> float:
    """``dt``: the interval of a token (``limits.DT``)."""
    return limits.DT.check(name, value)


def check_interval(dt, who: str = "") -> float | None:
    """A call's ``dt`` given as a number: as a float, finite and greater than zero, else
    :class:`InputError` (its message starting with ``who``); ``None`` where ``dt`` is not a number
    (a tensor of gaps, whose shape only the caller knows)."""
    if not isinstance(dt, numbers.Real) or isinstance(dt, bool):
        return None
    if not (math.isfinite(dt) and dt > 0):
        raise InputError(f"{who}dt must be a finite number greater than zero, got {dt!r}")
    return float(dt)


class Settings:
    """Mixed into an ``nn.Module`` whose constructor arguments are attributes. ``_fixed`` names are
    read-only once ``__init__`` has finished (``_frozen``): they fix the parameters' layout, or
    something built from them. ``_checked`` maps a name to the check ``(value) -> value`` run on
    every assignment, the constructor's included."""

    _fixed: frozenset = frozenset()
    _checked: dict = {}

    def __setattr__(self, name, value):
        self._refuse_if_fixed(name)
        super().__setattr__(name, self._check(name, value))

    def __delattr__(self, name):
        self._refuse_if_fixed(name)
        super().__delattr__(name)

    def _refuse_if_fixed(self, name: str) -> None:
        if name in self._fixed and self.__dict__.get("_frozen"):
            kind = type(self).__name__.removeprefix("Parametrized")  # a parametrisation's subclass
            raise AttributeError(f"{kind}.{name} cannot change after construction: it fixes the "
                                 f"{self._fixed_what}; build a new {kind} instead")

    def _check(self, name: str, value):
        """``value`` for the attribute ``name``, checked (a subclass adds checks across attributes)."""
        check = self._checked.get(name)
        return value if check is None else check(value)

    _fixed_what = "parameters' layout"

    def _freeze(self) -> None:
        object.__setattr__(self, "_frozen", True)


def check_proj_size(value, hidden_size: int) -> int:
    """``nn.LSTM``'s ``proj_size``: 0 (no projection) or a positive ``int`` below ``hidden_size``."""
    limits.PROJECTION.check("proj_size", value)
    if value >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={value}, hidden_size={hidden_size}")
    return value
