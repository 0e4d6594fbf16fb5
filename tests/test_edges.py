"""The adversarial cases that once got a traceback, a hang, a silent acceptance or a two-line
message, each answered now by one line and exit code 2 within 10 s (or by a correct result).
Run in this process (``textlm.cli.main``), so each takes milliseconds unless it trains."""

import functools
import json
import os
import time

import pytest
import torch
from test_limits import _cli

import butcher
import odernn


@functools.cache  # the text only (SymPy takes most of a second to write it); each test parses it anew
def dense6(offset: int = 0) -> str:
    """A full 6-stage tableau over six square roots; ``offset`` makes another one (nothing cached)."""
    return butcher.dumps_toml(butcher.ButcherTableau(
        [[f"(sqrt({p}) + {i + j + 1 + offset})/97" for j, p in enumerate((2, 3, 5, 7, 11, 13))] for i in range(6)],
        ["1/6"] * 6))


def one_line(code, err, *fragments):
    assert code == 2 and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "digits.json").write_text('{"A": [[0]], "b": [' + "1" * 5000 + "]}")
    (tmp_path / "deep.json").write_text('{"A": ' + "[" * 100_000 + "]" * 100_000 + ', "b": [1]}')
    (tmp_path / "deep.toml").write_text("A = " + "[" * 100_000 + "]" * 100_000 + "\nb = [1]\n")
    (tmp_path / "lookalike.toml").write_text('A = [["0"]]\nb = ["١"]\n')
    (tmp_path / "dense6.toml").write_text(dense6())
    os.symlink(tmp_path / "loop2", tmp_path / "loop1")
    os.symlink(tmp_path / "loop1", tmp_path / "loop2")
    with open(tmp_path / "huge.txt", "wb") as handle:  # 65 MiB, sparse: costs nothing to make
        handle.truncate(65 << 20)
    return tmp_path


@pytest.mark.parametrize("argv, fragment", [
    (["tableau", "show", "FILES/digits.json"], "more than 2000 digits"),
    (["tableau", "show", "FILES/deep.json"], "nested more than 16 deep"),
    (["tableau", "check", "FILES/deep.toml"], "nested more than 16 deep"),
    (["tableau", "show", "FILES/lookalike.toml"], "unexpected character '١'"),
    (["tableau", "show", "FILES/loop1"], "a loop of symbolic links"),
    (["train", "--text", "FILES/loop1"], "a loop of symbolic links"),
    (["train", "--text", "FILES/huge.txt"], "more than the 64 MiB"),
    (["train", "--corpus", "tinyshakespeare", "--cell", "gru-ode:rk4:dt=1e308"], "dt must be a finite number"),
    (["stability", "check", "gru-ode", "--hidden-size", "100000"], "hidden-size"),
    (["stability", "check", "gru-ode", "--hidden-size", "8000"], "past the limit"),
    (["--threads", "100000", "tableau", "show", "rk4"], "--threads"),
    (["tableau", "plot", "rk4", "-o", "FILES/x.png", "--xlim", "nan", "1"], "--xlim"),
    (["tableau", "plot", "rk4", "-o", "FILES/x.png", "--xlim", "1", "-1"], "MIN < MAX"),
    (["generate", "FILES", "--temperature", "nan"], "--temperature"),
    (["evaluate", "FILES", "--prompts=-3"], "--prompts"),
    (["train", "--corpus", "tinyshakespeare", "--clip", "nan"], "--clip"),
    (["train", "--corpus", "tinyshakespeare", "--warmup=-1"], "--warmup"),
    (["train", "--corpus", "tinyshakespeare", "--max-seconds=-1"], "--max-seconds"),
    (["train", "--corpus", "tinyshakespeare", "--momentum", "nan"], "--momentum"),
    (["train", "--corpus", "tinyshakespeare", "--sample-length=-1"], "--sample-length"),
    (["train", "--corpus", "tinyshakespeare", "--probe-every=-1"], "--probe-every"),
    (["train", "--corpus", "tinyshakespeare", "--eval-tokens", "0"], "--eval-tokens"),
    (["train", "--corpus", "tinyshakespeare", "--lr", "inf"], "--lr"),
    (["train", "--corpus", "tinyshakespeare", "--seed", str(10 ** 30)], "--seed"),
    (["compare", "--params", "0"], "--params"),
    (["cell", "show", "cornn:gamma=nan"], "gamma"),
    (["cell", "show", "gru-ode:rk4:steps=2:steps=3"], "steps given twice"),
    (["cell", "show", "gru-ode:rk4:steps=1000000000"], "steps must be an integer in 1 … 1,000"),
    (["cell", "show", "gru-ode:" + "x" * 100_000], "at most 1,000"),
])
def test_each_edge_is_one_line_and_exit_2(files, argv, fragment):
    argv = [a.replace("FILES", str(files)) for a in argv]
    start = time.perf_counter()
    code, err = _cli(argv)
    one_line(code, err, fragment)
    assert len(err) < 600 and time.perf_counter() - start < 10


@pytest.mark.parametrize("argv", [
    ["cell", "show", "gru-ode:FILES/dense6.toml"],
    ["stability", "check", "gru-ode:FILES/dense6.toml"],
    ["compare", "--cells", "gru-ode:FILES/dense6.toml", "--out", "FILES/cmp"],
])
def test_exact_arithmetic_on_a_users_tableau_is_within_the_deadline(files, monkeypatch, argv):
    """A tableau file whose exact arithmetic outlasts the deadline (here made short) stops with one
    line, wherever the file is read: a cell spec, a stability check, compare."""
    monkeypatch.setattr(butcher, "DEADLINE", 0.02)
    code, err = _cli([a.replace("FILES", str(files)) for a in argv])
    one_line(code, err, "did not finish within 0.02 s")


def test_odernn_and_a_checkpoint_meet_the_deadline_too(files, monkeypatch):
    from textlm.model import LanguageModel, ModelError
    model = LanguageModel(5, f"gru-ode:{files / 'dense6.toml'}", hidden=4)
    monkeypatch.setattr(butcher, "DEADLINE", 0.02)
    with pytest.raises(odernn.CellSpecError, match="did not finish within 0.02 s"):
        odernn.ODERNN(f"gru-ode:{files / 'dense6.toml'}", 3, 4)
    with pytest.raises(ModelError, match="did not (parse|finish) within 0.02 s"):
        LanguageModel(5, model.config.cell, hidden=4, tableaux=model.config.tableaux)


def test_float_says_when_even_the_numerical_analysis_cannot_finish(files, monkeypatch):
    import random

    from textlm.cli import _tableau
    rng = random.Random(0)
    rows = [[f"{rng.random() / 64:.15f}" for _ in range(64)] for _ in range(64)]
    (files / "dense64.json").write_text(json.dumps({"A": rows, "b": [f"{1 / 64:.15f}"] * 64}))
    monkeypatch.setattr(_tableau, "DEADLINE", 0.02)  # a 64-stage file: the numerical analysis takes seconds
    code, err = _cli(["tableau", "check", str(files / "dense64.json"), "--float"])
    one_line(code, err, "even the numerical analysis did not finish")
    assert "run it with --float" not in err


def test_a_mismatched_checkpoint_is_one_line(tmp_path):
    from textlm.train import TrainConfig, Trainer
    Trainer(TrainConfig(corpus="tinyshakespeare", train_tokens=5000, valid_tokens=2000, cell="gru-ode:euler", hidden=8, batch_size=4,
                        bptt=16, max_tokens=128, out=str(tmp_path), progress=False, eval_tokens=200)).run()
    data = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    data["model"] = {k.replace("weight_hh", "weight_xx"): v for k, v in data["model"].items()}
    torch.save(data, tmp_path / "renamed.pt")
    code, err = _cli(["evaluate", str(tmp_path / "renamed.pt")])
    one_line(code, err, "does not load")


def test_integer_input_and_a_float64_state_are_named():
    cell = odernn.cell("gru-ode:rk4", 3, 4)
    layer = odernn.ODERNN("gru-ode:rk4", 3, 4)
    with pytest.raises(odernn.InputError, match=r"input dtype \(torch.int64\)"):
        cell(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(odernn.InputError, match=r"state dtype \(torch.float64\)"):
        cell(torch.ones(2, 3), torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(odernn.InputError, match=r"input dtype \(torch.int64\)"):
        layer(torch.ones(5, 2, 3, dtype=torch.long))
    with pytest.raises(odernn.InputError, match=r"hx dtype \(torch.float64\)"):
        layer(torch.ones(5, 2, 3), torch.zeros(1, 2, 4, dtype=torch.float64))
