"""Every number the toolkit takes goes through one validation layer (``odernn.limits``), and the
tests run from its table: invalid values of every class — NaN, ±inf, out of range (negative, zero,
huge), the wrong type, Unicode look-alike digits, an option given twice — for every command-line
option, every cell-spec key and the public constructors, each answered with one line and exit
code 2 (Python: ``ValueError``/``TypeError`` naming the argument) at once.

The property battery draws a few values per option here (``BUDGET``); ``benchmarks/limits_battery.py``
runs the same properties with a larger budget and counts the cases.
"""

import argparse
import contextlib
import io
import os
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odernn
from odernn import limits
from textlm.cli import build_parser, main
from textlm.train import TrainConfig

BUDGET = int(os.environ.get("ODERNN_LIMITS_BUDGET", "6"))  # draws per option in the suite
LOOKALIKES = ["٣", "３", "𝟑", "١٠", "²", "½", "Ⅻ"]  # Arabic-Indic, fullwidth, bold, superscript, fraction, numeral


def numeric_options():
    """``(command words, option string, kind)`` for every option of every command with a kind."""
    out = []

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*words, name])
            elif action.type is not None:  # options, and typed positional arguments (named by their dest)
                out.append((words, action.option_strings[-1] if action.option_strings else action.dest, action))
    walk(build_parser(), [])
    return out


EVERY_TYPED = numeric_options()
OPTIONS = [o for o in EVERY_TYPED if isinstance(getattr(o[2].type, "kind", None), (limits.Integer, limits.Real))]
PATHS = [o for o in EVERY_TYPED if isinstance(getattr(o[2].type, "kind", None), limits.Location)]
# the positional arguments and required options each command needs to reach its option parsing
HERE = str(Path(__file__).resolve())  # an existing file; its folder an existing folder
CONTEXT = {("tableau", "show"): ["rk4"], ("tableau", "check"): [HERE], ("tableau", "plot"): ["rk4", "-o", "x.png"],
           ("cell", "show"): ["gru-ode"], ("stability", "check"): ["gru-ode"], ("stability", "plot"): ["gru-ode", "-o", "x.png"],
           ("generate",): [str(Path(HERE).parent)], ("evaluate",): [str(Path(HERE).parent)]}


def test_the_limits_page_holds_the_limits_table():
    """docs/limits.md's one table is ``limits.markdown()``, row for row: none missing, none added."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "limits.md").read_text()
    table = [line for line in page.splitlines() if line.startswith("|")]
    assert table == limits.markdown().strip().splitlines()


def test_every_typed_option_reads_through_a_kind():
    """A new option without a kind (``type=int``) fails here: no number or path skips the layer."""
    assert len(OPTIONS) > 50 and len(PATHS) >= 10
    missing = [f"{' '.join(words)} {option}" for words, option, action in EVERY_TYPED
               if not hasattr(action.type, "kind")]
    assert not missing, missing


def _cli(argv) -> tuple[int, str]:
    """``odernn ARGV`` in this process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


def _invalid(kind) -> st.SearchStrategy:
    """Text that ``kind`` must refuse: non-finite, out of its range, the wrong type, look-alike digits."""
    text = st.sampled_from(["nan", "inf", "-inf", "NaN", "1e400", "abc", "", "0x10", "1_000", "1,5"] + LOOKALIKES)
    below = (st.integers(max_value=kind.low - 1) if isinstance(kind, limits.Integer) else
             st.floats(max_value=kind.low, exclude_max=not kind.low_open, allow_nan=False, allow_infinity=False))
    above = (st.integers(min_value=kind.high + 1) if isinstance(kind, limits.Integer) else
             st.floats(min_value=kind.high, exclude_min=not kind.high_open, allow_nan=False, allow_infinity=False))
    numbers = st.one_of(below, above).map(lambda v: repr(v) if isinstance(v, float) else str(v))
    fractions = (st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v)).map(repr)
                 if isinstance(kind, limits.Integer) else st.nothing())
    return st.one_of(text, numbers, fractions)


@pytest.mark.parametrize("words, option, action", OPTIONS, ids=[f"{' '.join(w)} {o}" for w, o, _ in OPTIONS])
@settings(max_examples=BUDGET, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_invalid_value_of_any_option_is_one_line_and_exit_2(words, option, action, data):
    value = data.draw(_invalid(action.type.kind))
    # --opt=VALUE: a value that starts with "-" is not read as another option
    given = [f"{option}={value}"] if not isinstance(action.nargs, int) else [option, *[value] * action.nargs]
    start = time.perf_counter()
    code, err = _cli([*words, *CONTEXT.get(tuple(words), []), *given])
    assert code == 2 and err.count("\n") == 1 and option in err, (value, err)
    assert time.perf_counter() - start < 10


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("places")
    (root / "file.txt").write_text("x")
    (root / "folder").mkdir()
    os.symlink(root / "loop2", root / "loop1")
    os.symlink(root / "loop1", root / "loop2")
    return root


@pytest.mark.parametrize("words, option, action", PATHS, ids=[f"{' '.join(w)} {o}" for w, o, _ in PATHS])
@pytest.mark.parametrize("case", ["loop", "nul", "long", "wrong"])
def test_a_bad_path_is_one_line_and_exit_2(places, words, option, action, case):
    role = action.type.kind.role
    wrong = {"file": places / "folder", "folder": places / "file.txt", "file or folder": places / "missing",
             "output": places / "folder"}[role]
    value = {"loop": str(places / "loop1"), "nul": "a\x00b", "long": "x" * 5000, "wrong": str(wrong)}[case]
    if case == "loop" and role in ("folder", "output"):
        value = str(places / "loop1" / "x") if role == "output" else value
    context = list(CONTEXT.get(tuple(words), []))
    if option.startswith("-"):
        argv = [*words, *context, f"{option}={value}"]
    else:  # the positional argument is the first of the context
        argv = [*words, value, *context[1:]]
    code, err = _cli(argv)
    assert code == 2 and err.count("\n") == 1, (value, err)


@pytest.mark.parametrize("words, option, action", [o for o in OPTIONS if o[2].nargs is None][:40],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_an_option_given_twice_is_refused(words, option, action):
    kind = action.type.kind
    valid = str(kind.low if isinstance(kind, limits.Integer) else (kind.low + kind.high) / 2)
    code, err = _cli([*words, *CONTEXT.get(tuple(words), []), option, valid, option, valid])
    assert code == 2 and "given twice" in err and err.count("\n") == 1, err


SPEC_KEYS = [("gru-ode", key, kind) for key, kind in odernn._spec._CELL_OPTIONS.items()
             if isinstance(kind, (limits.Integer, limits.Real))]
SPEC_KEYS += [(field, key, kind) for field, fk in odernn._spec._FIELDS.items() for key, kind in fk.options.items()
              if isinstance(kind, (limits.Integer, limits.Real))]


@pytest.mark.parametrize("field, key, kind", SPEC_KEYS, ids=[f"{f}:{k}" for f, k, _ in SPEC_KEYS])
@settings(max_examples=BUDGET, deadline=None)
@given(data=st.data())
def test_an_invalid_spec_value_is_one_clear_error(field, key, kind, data):
    value = data.draw(_invalid(kind))
    with pytest.raises(odernn.CellSpecError, match=key):
        odernn.cell(f"{field}:{key}={value}", 3, 4)


@pytest.mark.parametrize("field, key, kind", SPEC_KEYS[:6], ids=[f"{f}:{k}" for f, k, _ in SPEC_KEYS[:6]])
def test_a_spec_key_given_twice_is_refused(field, key, kind):
    with pytest.raises(odernn.CellSpecError, match="given twice"):
        odernn.cell(f"{field}:{key}=1:{key}=1", 3, 4)


BAD_API_VALUES = [float("nan"), float("inf"), -1, 0, 10 ** 9, "2", True, 2.5, None]
VALID = {"dropout": [0], "proj_size": [0], "bias": [True], "batch_first": [True], "bidirectional": [True]}


@pytest.mark.parametrize("argument", ["input_size", "hidden_size", "num_layers", "dropout", "proj_size", "bias",
                                      "batch_first", "bidirectional"])
@pytest.mark.parametrize("value", BAD_API_VALUES, ids=repr)
def test_odernn_refuses_bad_constructor_arguments_by_name(argument, value):
    arguments = {"input_size": 3, "hidden_size": 4, argument: value}
    spec = "lstm" if argument == "proj_size" else "gru-ode:rk4"
    if any(value is v or (type(value) is type(v) and value == v) for v in VALID.get(argument, [])):
        odernn.ODERNN(spec, **arguments)  # a valid value of that argument
        return
    with pytest.raises((TypeError, ValueError), match=argument):
        odernn.ODERNN(spec, **arguments)


@pytest.mark.parametrize("name", sorted(n for n, kind in __import__("textlm.limits").limits.KINDS.items()
                                        if n in vars(TrainConfig()) and isinstance(kind, (limits.Integer, limits.Real))))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e30, "3", 10 ** 30], ids=repr)
def test_train_config_refuses_bad_numbers_by_name(name, value):
    with pytest.raises((ValueError, TypeError), match=f"--{name.replace('_', '-')}"):
        TrainConfig(**{name: value})


def test_memory_is_estimated_before_anything_is_allocated(monkeypatch):
    start = time.perf_counter()
    with pytest.raises(ValueError, match="GiB"):
        odernn.ODERNN("gru-ode", 65_536, 65_536, num_layers=64)
    with pytest.raises(odernn.CellSpecError, match="GiB"):
        odernn.cell("lstm", 65_536, 65_536)
    assert time.perf_counter() - start < 1
    cell = odernn.cell("lstm", 3, 16)
    monkeypatch.setattr(limits, "memory_budget", lambda: 100_000)  # bytes: the Jacobians of 32 states don't fit
    with pytest.raises(ValueError, match="the Jacobians of 32 states of size 32"):
        cell.jacobian(torch.randn(32, 3))
