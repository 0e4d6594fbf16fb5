"""The named zoo and the one constructor: ``odernn.cell("gru-ode:rk4:steps=2", …)``.

A spec is ``FIELD[:TABLEAU][:key=value…]``: a field name, optionally a tableau (a catalogue name
or a ``.toml``/``.json`` file), and options. Keyword arguments of :func:`cell` override the spec.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field as dataclass_field
from importlib.metadata import entry_points
from pathlib import Path

import torch

import butcher

from . import limits
from ._cell import ODECell
from ._fields import AntisymmetricField, GRUODEField, HigherOrderField, LSTMField, TanhRNNField
from ._published import CoRNNField, LEMField, LipschitzField, UnICORNNField, URNNField

__all__ = ["cell", "parse_spec", "tableau_file", "fields", "field_table", "constraints", "CellSpecError"]


class CellSpecError(ValueError):
    """A cell spec names something that does not exist or has a bad value; the message says which."""


@dataclass(frozen=True)
class _FieldKind:
    factory: type
    dt: float
    partitioned: bool
    options: dict = dataclass_field(default_factory=dict)  # field constructor options and their types
    summary: str = ""
    reference: str = ""
    equals: str = ""  # the published or torch.nn cell a spec reproduces exactly, as tested


_FIELDS = {
    "rnn": _FieldKind(TanhRNNField, 1.0, False, {"bias": bool, "gamma": limits.COEFFICIENT},
                      "leaky tanh-RNN, tanh(W h + V x + b) − γh", "Elman (1990); torch.nn.RNNCell",
                      "rnn:euler is torch.nn.RNNCell (tests/test_cells.py)"),
    "gru-ode": _FieldKind(GRUODEField, 1.0, False, {"bias": bool}, "GRU-ODE, (1 − z) ⊙ (n − h)",
                          "De Brouwer et al. (2019); Cho et al. (2014)",
                          "gru-ode:euler is torch.nn.GRUCell (tests/test_cells.py)"),
    "lstm": _FieldKind(LSTMField, 1.0, True, {"bias": bool, "proj_size": limits.PROJECTION}, "LSTM on (c, h): dc = (f − 1)c + i g, dh = o tanh(c) − h",
                       "Hochreiter & Schmidhuber (1997); torch.nn.LSTMCell",
                       "lstm:euler (partitioned) is torch.nn.LSTMCell (tests/test_cells.py)"),
    "antisymmetric": _FieldKind(AntisymmetricField, 0.01, False, {"gamma": limits.COEFFICIENT, "bias": bool},
                                "AntisymmetricRNN, tanh((W − Wᵀ − γI)h + V x + b)", "Chang et al. (ICLR 2019)",
                                "antisymmetric:euler:eps=ε is the published cell (tests/test_cells.py)"),
    "cornn": _FieldKind(CoRNNField, 0.042, True, {"gamma": limits.COEFFICIENT, "epsilon": limits.COEFFICIENT, "bias": bool},
                        "coRNN, the rnn field at order 2: y″ = tanh(W y + 𝒲 y′ + V x + b) − γy − εy′",
                        "Rusch & Mishra (ICLR 2021)",
                        "cornn:euler (partitioned) is the published eq. (3) (tests/test_literature_cells.py)"),
    "urnn": _FieldKind(URNNField, 1.0, False, {"bias": bool, "map": str, "init": str},
                       "orthogonal RNN, modReLU(W h + V x) − h, W = exp(skew) or Cayley",
                       "Arjovsky et al. (2016); Lezcano-Casado & Martínez-Rubio (ICML 2019)",
                       "urnn:euler is expRNN (tests/test_literature_cells.py)"),
    "lipschitz": _FieldKind(LipschitzField, 0.01, False, {"beta": limits.COEFFICIENT, "gamma": limits.COEFFICIENT, "init_std": limits.COEFFICIENT, "bias": bool},
                            "Lipschitz RNN, A h + tanh(W h + U x + b), A, W = β·skew + (1 − β)·sym − γI",
                            "Erichson et al. (ICLR 2021)",
                            "lipschitz:euler:dt=ε is the published cell (tests/test_literature_cells.py)"),
    "lem": _FieldKind(LEMField, 1.0, True, {"bias": bool},
                      "LEM, two gated time scales on (y, z)", "Rusch, Mishra, Erichson & Mahoney (ICLR 2022)",
                      "lem:euler (partitioned) is the published cell (tests/test_literature_cells.py)"),
    "unicornn": _FieldKind(UnICORNNField, 0.19, True, {"alpha": limits.COEFFICIENT, "bias": bool},
                           "UnICORNN, independent undamped oscillators with learned time scales",
                           "Rusch & Mishra (ICML 2021)",
                           "unicornn:euler (partitioned) is the published cell (tests/test_literature_cells.py)"),
}
_ALIASES = {"gruode": "gru-ode", "tanh-rnn": "rnn", "asrnn": "antisymmetric"}
# names a user may mean as PyTorch's own layers: said, not silently read as a field
_NOT_FIELDS = {"gru": "the GRU's vector field is gru-ode (gru-ode:euler equals nn.GRUCell)",
               "lstm-ode": "the LSTM's field is lstm", "rnn-ode": "the tanh-RNN's field is rnn"}
_CELL_OPTIONS = {"steps": limits.STEPS, "dt": limits.DT, "eps": limits.DT, "partitioned": bool, "tol": limits.TOLERANCE,
                 "rtol": limits.TOLERANCE, "atol": limits.TOLERANCE, "constraint": str, "order": limits.ORDER,
                 "damping": str, "newton": str}
_MAX_SPEC = limits.SPEC_CHARACTERS
CONSTRAINT_GROUP = "odernn.constraints"  # entry-point group of the parameterisations (``stability`` registers its own)


def fields() -> dict[str, str]:
    """Field names and one-line descriptions."""
    return {name: kind.summary for name, kind in _FIELDS.items()}


def field_table() -> list[dict]:
    """Every field: its name, ``t`` (state blocks, derived from the field), default ``dt`` and
    stepping, options, summary, reference, and the cell a spec of it equals exactly (where a test
    shows it). ``n`` is the tableau's: any."""
    rows = []
    for name, kind in _FIELDS.items():
        field = kind.factory(1, 2)
        rows.append({"field": name, "t": field.blocks, "dt": kind.dt, "partitioned": kind.partitioned,
                     "options": sorted(kind.options), "order": field.blocks == 1, "summary": kind.summary,
                     "reference": kind.reference, "equals": kind.equals})
    return rows


def constraints() -> list[str]:
    """Names of the constraints installed packages provide (entry points ``odernn.constraints``)."""
    return sorted({ep.name for ep in entry_points(group=CONSTRAINT_GROUP)})


def _constrain(cell: ODECell, name: str) -> None:
    found = [ep for ep in entry_points(group=CONSTRAINT_GROUP) if ep.name == name]
    if not found:
        raise CellSpecError(f"unknown constraint {name!r}; constraints: {', '.join(constraints()) or 'none installed'}")
    try:
        found[0].load()(cell)
    except ValueError as err:
        raise CellSpecError(str(err)) from None


def _convert(key: str, value, kind):
    """A spec option's text (or a keyword argument's value) read and checked as ``kind``: a kind of
    ``odernn.limits``, ``bool`` or ``str``."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if not isinstance(value, str) or value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{key} must be true or false, got {_shown(value)}")
            return value.lower() in ("true", "1", "yes")
        if kind is str:
            if not isinstance(value, str):
                raise TypeError(f"{key} must be a name, got {type(value).__name__}")
            return value
        return kind.parse(key, value) if isinstance(value, str) else kind.check(key, value)
    except (TypeError, ValueError) as err:
        raise CellSpecError(f"option {err}") from None


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _damping(value):
    """``critical``, one number ≥ 0, or numbers ≥ 0 separated by commas (one per derivative order)."""
    if not isinstance(value, str):
        return value
    if value.strip().lower() == "critical":
        return "critical"
    try:
        numbers = [_convert("damping", part, limits.COEFFICIENT) for part in value.split(",")]
    except CellSpecError as err:
        raise CellSpecError(f"damping={value!r}: a number ≥ 0, numbers separated by commas, or 'critical' ({err})") \
            from None
    return numbers[0] if len(numbers) == 1 else numbers


def parse_spec(spec: str) -> dict:
    """``"gru-ode:rk4:steps=2"`` → ``{"field": "gru-ode", "tableau": "rk4", "steps": "2"}``."""
    if not isinstance(spec, str) or not spec.strip():
        raise CellSpecError(f"a cell spec is a string such as 'gru-ode:rk4:steps=2', got {_shown(spec)}")
    if len(spec) > _MAX_SPEC:
        raise CellSpecError(f"a cell spec of {len(spec):,} characters, {_shown(spec)}: at most {_MAX_SPEC:,}")
    parts = [p.strip() for p in spec.split(":")]
    if not all(parts):
        raise CellSpecError(f"{spec!r}: an empty part between ':' (a spec is FIELD[:TABLEAU][:key=value…])")
    out = {"field": parts[0].lower()}
    for part in parts[1:]:
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.strip().lower()
            if key in out:
                raise CellSpecError(f"{spec!r}: {key} given twice")
            out[key] = value.strip()
        elif "tableau" in out:
            raise CellSpecError(f"{spec!r}: two tableaux given ({out['tableau']!r} and {part!r})")
        elif part:
            out["tableau"] = part
    return out


def tableau_file(spec: str) -> str | None:
    """The tableau file a spec names (its TABLEAU part when that is a ``.toml``/``.json`` path or
    an existing file), or ``None`` when it names a catalogue method or no tableau."""
    part = parse_spec(spec).get("tableau")
    return part if part is not None and butcher.names_a_file(part) else None


def _tableau(value) -> butcher.ButcherTableau:
    if isinstance(value, butcher.ButcherTableau):
        return value
    return butcher.load(Path(str(value))) if butcher.names_a_file(str(value)) else butcher.get(str(value))


def cell(spec: str, input_size: int, hidden_size: int, *, device=None, dtype=None, **overrides) -> ODECell:
    """A cell from a spec string (``"gru-ode:rk4:steps=2"``) or a field name with keyword options
    (``cell("gru-ode", 8, 16, tableau="rk4", steps=2)``).

    Options: ``tableau`` (name, file or ``ButcherTableau``), ``steps``, ``dt`` (``eps`` is its
    name for the antisymmetric field), ``partitioned``, ``tol`` and ``newton`` (implicit tableaux:
    the Newton tolerance, and ``auto``, ``dense`` or ``krylov`` linear solves in the engine), ``rtol`` and
    ``atol`` (adaptive stepping), ``constraint`` (a parameterisation that keeps the step inside
    the tableau's stability region during training: ``spectral``, ``antisymmetric``; see
    :func:`constraints`), ``order`` (raise a one-block field to derivative order ``t``:
    :class:`~odernn.HigherOrderField`) with ``damping``, and the field's own (``gamma``,
    ``epsilon``, ``bias``, …; see :func:`fields`). ``device`` and ``dtype`` place and type the
    parameters, as ``torch.nn``'s factory keywords do (they are drawn on ``device``, in the default
    dtype, then converted).
    """
    user = _user_tableau(spec, overrides)
    with _deadline(user) if user else contextlib.nullcontext():
        with torch.device(device) if device is not None else contextlib.nullcontext():
            made = _cell(spec, input_size, hidden_size, overrides)
    return made if dtype is None else made.to(dtype=dtype)


def _user_tableau(spec, overrides: dict) -> str | None:
    """The name of a tableau that is the user's own (a file, or one read from a file or a
    checkpoint), whose exact arithmetic runs under the deadline; ``None`` for the catalogue's
    methods, which are known to finish."""
    given = overrides.get("tableau")
    if isinstance(given, butcher.ButcherTableau):
        catalogue = given.name in butcher.names() and given == butcher.get(given.name)
        return None if catalogue else f"the tableau {given.name or '(unnamed)'}"
    part = given if given is not None else (parse_spec(spec).get("tableau") if isinstance(spec, str) else None)
    return str(part) if part is not None and butcher.names_a_file(str(part)) else None


@contextlib.contextmanager
def _deadline(what: str):
    try:
        with butcher.time_limit(butcher.DEADLINE):
            yield
    except butcher.TimeLimitExceeded:
        raise CellSpecError(f"{what}: the exact arithmetic on its entries did not finish within {butcher.DEADLINE:g} s "
                            "(numbers of high algebraic degree); write its entries as decimals, or simplify them") \
            from None


def _cell(spec: str, input_size: int, hidden_size: int, overrides: dict) -> ODECell:
    options = parse_spec(spec)
    options.update({k.lower(): v for k, v in overrides.items()})
    name = options.pop("field")
    name = _ALIASES.get(name, name)
    if name in _NOT_FIELDS:
        raise CellSpecError(f"{name!r} is not a field: {_NOT_FIELDS[name]}; in the language model, PyTorch's own "
                            f"layers are torch-gru, torch-lstm and torch-rnn")
    if name not in _FIELDS:
        raise CellSpecError(f"unknown cell field {name!r}; fields: {', '.join(_FIELDS)}")
    kind = _FIELDS[name]
    allowed = {"tableau", *kind.options, *_CELL_OPTIONS}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CellSpecError(f"unknown option(s) {', '.join(unknown)} for {name!r}; options: {', '.join(sorted(allowed))}")
    try:
        tableau = _tableau(options.pop("tableau", "euler"))
    except (butcher.TableauError, butcher.UnknownMethodError) as err:
        raise CellSpecError(str(err)) from None
    cell_options = {k: _convert(k, options.pop(k), t) for k, t in _CELL_OPTIONS.items() if k in options}
    field_options = {k: _convert(k, v, kind.options[k]) for k, v in options.items()}
    if "eps" in cell_options:
        cell_options["dt"] = cell_options.pop("eps")
    if tableau.is_parametric:
        raise CellSpecError(f"{tableau.name or 'the tableau'} is parametric in "
                            f"{sorted(map(str, tableau.symbols))}: give concrete values")
    order = cell_options.pop("order", 1)
    if "damping" in cell_options and order == 1:
        raise CellSpecError("damping= damps the derivatives h′ … h⁽ᵗ⁻¹⁾ of an order ≥ 2 field: give order= too")
    try:
        limits.WIDTH.check("input_size", input_size)
        limits.WIDTH.check("hidden_size", hidden_size)
        # every field holds at most four gates of input and recurrent weights per derivative order
        limits.check_memory(f"a {name} cell of input_size={input_size}, hidden_size={hidden_size}",
                            4 * hidden_size * (input_size + hidden_size * order))
    except (TypeError, ValueError) as err:
        raise CellSpecError(str(err)) from None
    try:
        field = kind.factory(input_size, hidden_size, **field_options)
        if order > 1:
            field = HigherOrderField(field, order, damping=_damping(cell_options.pop("damping", "critical")))
    except ValueError as err:
        raise CellSpecError(f"{name}: {err}") from None
    try:
        adaptive = "rtol" in cell_options or "atol" in cell_options
        partitioned = cell_options.get("partitioned", (kind.partitioned or order > 1) and tableau.is_explicit
                                       and not adaptive)
        made = ODECell(field, tableau, dt=cell_options.get("dt", kind.dt), steps=cell_options.get("steps", 1),
                       partitioned=partitioned, tol=cell_options.get("tol"), rtol=cell_options.get("rtol"),
                       atol=cell_options.get("atol"), newton=cell_options.get("newton"))
    except ValueError as err:
        raise CellSpecError(str(err)) from None
    if "constraint" in cell_options:
        _constrain(made, cell_options["constraint"].lower())
    return made
