"""Bad input, across every command: one line naming the problem, exit code 2 (1 only where it is
documented: an unstable verdict), no traceback, and no file lost or half-written.

Each case is ``(arguments, files)``: ``files`` maps a placeholder used in the arguments to what
the test writes there first (text, bytes, or a callable that makes it)."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import odernn
from textlm.train import TrainConfig, Trainer

from test_cli import run

ROOT = Path(__file__).resolve().parents[1]
RAGGED = 'A = [["0", "0"], ["1"]]\nb = ["1/2", "1/2"]\n'
HEUN = 'A = [["0", "0"], ["1", "0"]]\nb = ["1/2", "1/2"]\n'


def tableau(A, b) -> str:
    return "A = " + json.dumps(A) + "\nb = " + json.dumps(b) + "\n"


def _huge(path):
    s = 65
    path.write_text(tableau([["0"] * s for _ in range(s)], ["0"] * (s - 1) + ["1"]))


def _evil_checkpoint(path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    path.write_bytes(pickle.dumps({"format": "odernn-textlm/1", "model": Evil()}))


def _list_checkpoint(path):
    torch.save([1, 2, 3], path)


TABLEAU_CASES = [
    ("empty file", b"", "missing 'A'"),
    ("ragged rows", RAGGED, "A row 1 has 1 entries, expected 2"),
    ("65 stages", _huge, "up to 64 stages"),
    ("empty A", 'A = []\nb = []\n', "A is empty"),
    ("nan", tableau([["0", "0"], ["nan", "0"]], ["1/2", "1/2"]), "'nan' is not a finite number"),
    ("inf", tableau([["0", "0"], ["inf", "0"]], ["1/2", "1/2"]), "'inf' is not a finite number"),
    ("1e309 in b", tableau([["0", "0"], ["1", "0"]], ["1e309", "1/2"]), "b sums to"),
    ("1/0", tableau([["0", "0"], ["1/0", "0"]], ["1/2", "1/2"]), "division by zero"),
    ("nested 5000 deep", tableau([["0", "0"], ["(" * 5000 + "1" + ")" * 5000, "0"]], ["1/2", "1/2"]),
     "nested more than 100"),
    ("entry of 20001 characters", tableau([["0", "0"], ["1+" * 10000 + "1", "0"]], ["1/2", "1/2"]),
     "longer than 20000 characters"),
    ("nested 150 deep", tableau([["0", "0"], ["(" * 150 + "1" + ")" * 150, "0"]], ["1/2", "1/2"]), "nested more than 100"),
    ("exponent tower", tableau([["0", "0"], ["10^10^10", "0"]], ["1/2", "1/2"]), "larger than 64"),
    ("huge integer", tableau([["0", "0"], ["9" * 2001 + "/" + "9" * 2002, "0"]], ["1/2", "1/2"]),
     "more than 2000 digits"),
    ("huge product", tableau([["0", "0"], ["*".join(["9" * 1999] * 3) + "/" + "9" * 1999, "0"]], ["1/2", "1/2"]),
     "more than 2000 digits"),
    ("injection", tableau([["0", "0"], ["__import__('os').system('ls')", "0"]], ["1/2", "1/2"]), "cannot parse"),
    ("injection in the structure", '{"A": "__import__(\'os\')", "b": [1]}', "A must be a list of rows"),
    ("not UTF-8", b'A = [["0", "0"], ["\xff\xfe", "0"]]\nb = ["1/2", "1/2"]\n', "cannot read"),
    ("not TOML", "A = [[0, 0\n", "invalid TOML"),
    ("unknown key", HEUN + "order = 2\n", "unknown key(s) 'order'"),
    ("b does not sum to 1", tableau([["0", "0"], ["1", "0"]], ["1/2", "1/3"]), "b sums to 5/6, not 1"),
    ("undeclared name", tableau([["0", "0"], ["half", "0"]], ["1/2", "1/2"]), "unknown name 'half'"),
    ("not square", 'A = [["0", "0", "0"], ["1", "0", "0"]]\nb = ["1/2", "1/2"]\n', "(A must be square)"),
    ("complex entry", tableau([["0", "0"], ["sqrt(-1)", "0"]], ["1/2", "1/2"]), "not real"),
    ("a number as A", "A = 3\nb = [1]\n", "A must be a list of rows"),
]


@pytest.mark.parametrize("what, content, message", TABLEAU_CASES, ids=[c[0] for c in TABLEAU_CASES])
def test_bad_tableau_files(tmp_path, what, content, message):
    path = tmp_path / ("t.json" if what == "injection in the structure" else "t.toml")
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    code, out, err = run("tableau", "check", str(path))
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("target, message", [("dir", "is a directory"), ("/dev/zero", "not a regular file"),
                                             ("missing.toml", "no such file")])
def test_tableau_paths_that_are_not_files(tmp_path, target, message):
    path = tmp_path if target == "dir" else Path(target) if target.startswith("/") else tmp_path / target
    if target == "dir":
        path = tmp_path / "d.toml"
        path.mkdir()
    code, _, err = run("tableau", "check", str(path))
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_byte_order_mark_is_read_as_the_text_it_starts(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff".encode() + HEUN.encode())
    code, out, err = run("tableau", "check", str(path))
    assert code == 0 and "order 2" in out, err


SPEC_CASES = [
    ("gru-odd", "unknown cell field"), ("gru-ode:rk5", "unknown"), ("gru-ode:rk4:stepz=2", "unknown option"),
    ("gru-ode:rk4:steps=0", "steps"), ("gru-ode:rk4:dt=0", "dt"), ("gru-ode:rk4:dt=-1", "dt"),
    ("gru-ode:rk4:dt=nan", "dt"), ("gru-ode::", ""), ("gru-ode:rk4:steps", "steps"), ("", ""),
]


@pytest.mark.parametrize("spec, message", SPEC_CASES, ids=[s or "empty" for s, _ in SPEC_CASES])
@pytest.mark.parametrize("command", [["cell", "show"], ["stability", "check"]])
def test_bad_cell_specs(command, spec, message):
    code, _, err = run(*command, spec)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_spec_naming_a_tableau_file_is_a_spec_not_a_checkpoint(tmp_path):
    """A path in a spec (``gru-ode:/x/heun.toml``) is the tableau's: stability check judges the
    cell, and a missing tableau file is named as such, not as a missing checkpoint."""
    path = tmp_path / "heun.toml"
    path.write_text(HEUN)
    code, out, err = run("stability", "check", f"gru-ode:{path}", "--hidden-size", "4")
    assert code in (0, 1) and "heun" in out, err
    code, _, err = run("stability", "check", f"gru-ode:{tmp_path / 'missing.toml'}")
    assert code == 2 and "missing.toml: no such file" in err and "checkpoint" not in err, err


def _corpus_root(tmp_path, corrupt: bool):
    root = tmp_path / "data"
    source = Path(os.environ["ODERNN_DATA"]) / "tinyshakespeare"
    (root / "tinyshakespeare").mkdir(parents=True)
    for f in source.iterdir():
        data = f.read_bytes()
        (root / "tinyshakespeare" / f.name).write_bytes(data[:-1] + b"!" if corrupt else data)
    return root


TRAIN_CASES = [
    (["--corpus", "nope"], "unknown corpus"),
    (["--corpus", "ptb", "--data-root", "/nonexistent"], "not found"),
    (["--text", "EMPTY"], "empty"),
    (["--text", "BINARY"], "UTF-8"),
    (["--text", "SHORT"], "too few"),
    (["--text", "DIR"], "not a file"),
    (["--corpus", "tinyshakespeare", "--data-root", "CORRUPT"], "SHA-256"),
    (["--corpus", "tinyshakespeare", "--batch-size", "0"], "--batch-size: must be an integer in 1 … 65,536, got 0"),
    (["--corpus", "tinyshakespeare", "--bptt", "0"], "--bptt: must be an integer in 1"),
    (["--corpus", "tinyshakespeare", "--lr", "-1"], "--lr: must be a finite number in (0, 1e+06], got -1.0"),
    (["--corpus", "tinyshakespeare", "--hidden", "0"], "--hidden: must be an integer in 1"),
    (["--corpus", "tinyshakespeare", "--dropout", "1.5"], "dropout"),
    (["--corpus", "tinyshakespeare", "--epochs", "0"], "--epochs: must be an integer in 1"),
    (["--corpus", "tinyshakespeare", "--precision", "fp8"], "invalid choice"),
    (["--corpus", "tinyshakespeare", "--out", "FILE"], "is a file"),
    (["--corpus", "tinyshakespeare", "--out", "/proc/odernn-run"], "cannot write"),
    (["--out", "EMPTYDIR", "--resume"], "no checkpoint"),
    (["--corpus", "tinyshakespeare", "--cell", "gru-ode:rk4:steps=0"], "steps"),
    (["--corpus", "tinyshakespeare", "--bptt", "60000", "--train-tokens", "5000"], "longer than"),
    (["--corpus", "tinyshakespeare", "--init-gain", "0"], "--init-gain: must be a finite number in [0.001, 1000]"),
    (["--corpus", "tinyshakespeare", "--valid-tokens", "1"], "--valid-tokens 1: a validation needs at least 2 tokens"),
    (["--corpus", "tinyshakespeare", "--valid-tokens", "0"], "--valid-tokens: must be an integer in 1"),
    (["--corpus", "tinyshakespeare", "--cell", "urnn", "--init-gain", "4"], "no free recurrent weight"),
]


@pytest.mark.parametrize("args, message", TRAIN_CASES, ids=[" ".join(a[:2] + a[-2:]) for a, _ in TRAIN_CASES])
def test_bad_training_input(tmp_path, args, message):
    places = {"EMPTY": tmp_path / "empty.txt", "BINARY": tmp_path / "binary.txt", "SHORT": tmp_path / "short.txt",
              "DIR": tmp_path, "FILE": tmp_path / "a-file", "EMPTYDIR": tmp_path / "nothing-here"}
    places["EMPTY"].write_text("")
    places["BINARY"].write_bytes(bytes(range(256)) * 40)
    places["SHORT"].write_text("to be")
    places["FILE"].write_text("not a folder")
    args = [str(places[a]) if a in places else a for a in args]
    if "CORRUPT" in args:
        args[args.index("CORRUPT")] = str(_corpus_root(tmp_path, corrupt=True))
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    if "--hidden" not in args:
        args += ["--hidden", "8"]
    if "--epochs" not in args:
        args += ["--max-tokens", "256"]
    code, _, err = run("train", *args, "--no-progress")
    assert code == 2 and message in err and err.count("\n") == 1, err
    out = Path(args[args.index("--out") + 1])  # a refused run leaves no folder: it is made when the run starts
    assert not out.exists() or out == places["FILE"], sorted(out.iterdir())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    Trainer(TrainConfig(corpus="tinyshakespeare", train_tokens=5000, valid_tokens=2000, cell="gru-ode:euler", hidden=8, batch_size=4,
                        bptt=16, max_tokens=256, out=str(out), progress=False, eval_tokens=200, device="cpu")).run()
    return out


CHECKPOINT_CASES = [
    ("truncated", lambda p, good: p.write_bytes(good.read_bytes()[:1000]), "not a readable checkpoint"),
    ("random bytes", lambda p, good: p.write_bytes(os.urandom(4096)), "not a readable checkpoint"),
    ("code-carrying", lambda p, good: _evil_checkpoint(p), "not a readable checkpoint"),
    ("another format", lambda p, good: _list_checkpoint(p), "not an odernn text-model checkpoint"),
    ("missing", lambda p, good: None, ("no checkpoint", "no such file or folder")),
    ("NaN weights", lambda p, good: _rewritten(p, good, lambda d: d["model"][next(iter(d["model"]))].fill_(float("nan"))),
     "holds non-finite weights"),
    ("negative step", lambda p, good: _rewritten(p, good, lambda d: d["position"].update(step=-1)),
     "invalid training position"),
]


def _rewritten(path, good, change):
    """The good checkpoint with ``change`` made to its loaded contents, written to ``path`` as is."""
    data = torch.load(good, weights_only=True)
    change(data)
    torch.save(data, path)


@pytest.mark.parametrize("command", [["evaluate"], ["generate"], ["stability", "check"]])
def test_a_device_given_as_a_checkpoint_is_named_one(command):
    code, _, err = run(*command, "/dev/null")
    assert code == 2 and "/dev/null" in err and "not a regular file" in err and "(a device or a pipe)" in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize("what, make, message", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
@pytest.mark.parametrize("command", ["evaluate", "generate", "stability"])
def test_bad_checkpoints(tmp_path, trained, what, make, message, command, capfd):
    path = tmp_path / "checkpoint.pt"
    make(path, trained / "checkpoint.pt")
    args = {"evaluate": ["evaluate", str(path)], "generate": ["generate", str(path)],
            "stability": ["stability", "check", str(path)]}[command]
    code, _, err = run(*args)
    assert code == 2 and any(m in err for m in ((message,) if isinstance(message, str) else message)), err
    assert err.count("\n") == 1 and "pwned" not in capfd.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--prompt", "ROMEO ✓"], "not in the char vocabulary"), (["--length", "0"], "--length: must be an integer in 1"),
    (["--length", "-5"], "--length: must be an integer in 1"), (["--temperature", "0"], "--temperature: must be a finite"),
    (["--temperature", "-1"], "--temperature: must be a finite"), (["--top-k", "0"], "--top-k: must be an integer in 1"),
    (["--temperature", "nan"], "--temperature: must be a number written in ASCII digits"),
    (["--length", "10000000"], "--length: must be an integer in 1 … 100,000"),
    (["--prompt", ""], "the prompt has no tokens"),
])
def test_bad_generation_options(trained, args, message):
    code, _, err = run("generate", str(trained), *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_resume_with_another_models_data_is_refused(tmp_path, trained):
    import shutil
    run_dir = tmp_path / "r"
    shutil.copytree(trained, run_dir)
    text = tmp_path / "other.txt"
    text.write_text("a completely different corpus " * 200)
    code, _, err = run("train", "--out", str(run_dir), "--resume", "--no-progress")
    assert code == 0, err  # its own data: fine
    data = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    data["config"]["corpus"], data["config"]["text"] = None, str(text)
    from textlm.checkpoint import save_checkpoint
    save_checkpoint(data, run_dir / "checkpoint.pt")
    code, _, err = run("train", "--out", str(run_dir), "--resume", "--no-progress", "--max-tokens", "512")
    assert code == 2 and "vocabulary differs" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["train", "compare"])
def test_two_runs_on_one_folder_are_refused(tmp_path, command):
    """A run is writing there (its records already in place): a second ``train`` is told so rather
    than that the folder holds a run, and a ``compare`` restarting that run leaves its records alone."""
    folder = tmp_path / "run" / "runs" / "gru-ode_euler" / "seed0" if command == "compare" else tmp_path / "run"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 0}\n')
    import fcntl
    with open(folder / ".lock", "w") as holder:  # another run's lock: flock refuses a second open file, in
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # this process as in another (and costs no imports)
        if command == "train":
            code, _, err = run("train", "--corpus", "tinyshakespeare", "--out", str(tmp_path / "run"), "--no-progress",
                               "--max-tokens", "256", "--hidden", "8")
        else:
            code, _, err = run("compare", "--corpus", "tinyshakespeare", "--cells", "gru-ode:euler", "--seeds", "0",
                               "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 2 and "another run is writing to" in err and err.count("\n") == 1, err
    assert (folder / "metrics.jsonl").read_text() == '{"step": 0}\n'


@pytest.mark.parametrize("held", [("checkpoint.pt", "metrics.jsonl", "result.json"), ("metrics.jsonl",)])
def test_a_new_run_refuses_a_folder_that_holds_one(tmp_path, held):
    """``train`` without ``--resume`` into a run's folder is refused in one line before it writes:
    it would replace the run's checkpoint and mix its records into the run's ``metrics.jsonl``.
    The same where a run left only its records (killed before its first checkpoint)."""
    args = ["train", "--text", str(tmp_path / "verse.txt"), "--out", str(tmp_path / "run"), "--no-progress",
            "--max-tokens", "128", "--hidden", "8", "--batch-size", "4", "--bptt", "16", "--valid-tokens", "200"]
    (tmp_path / "verse.txt").write_text("".join(f"{k} shall I compare thee to a summer's day?\n" for k in range(40)))
    code, _, err = run(*args)
    assert code == 0, err
    for name in {"checkpoint.pt", "metrics.jsonl", "result.json"} - set(held):
        (tmp_path / "run" / name).unlink()
    before = {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir() if path.is_file()}
    code, _, err = run(*args)
    said = ("holds a run already", "--resume continues it") if "checkpoint.pt" in held else \
        ("holds the records of a run that left no checkpoint", "move them away")
    assert code == 2 and all(words in err for words in said) and err.count("\n") == 1, err
    assert {path.name: path.read_bytes() for path in (tmp_path / "run").iterdir() if path.is_file()} == before


@pytest.mark.parametrize("saved", ["{not json", "[1, 2]", "\u0000\u0001"])
def test_compare_on_a_folder_whose_config_is_not_a_comparisons(tmp_path, saved):
    (tmp_path / "config.json").write_text(saved)
    code, _, err = run("compare", "--cells", "torch-gru", "--out", str(tmp_path))
    assert code == 2 and "not a comparison's configuration" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_compare_with_an_unknown_cell(tmp_path):
    code, _, err = run("compare", "--cells", "torch-gru", "gru-odd", "--out", str(tmp_path))
    assert code == 2 and "--cells gru-odd" in err and err.count("\n") == 1
    assert "or PyTorch's own: torch-rnn, torch-lstm, torch-gru" in err and "separated by spaces" not in err


@pytest.mark.parametrize("cells", ["torch-gru,torch-lstm", "gru-ode:rk4,gru-ode:midpoint"])
def test_compare_with_cells_written_as_one_says_how_to_give_several(tmp_path, cells):
    code, _, err = run("compare", "--cells", cells, "--out", str(tmp_path))
    assert code == 2 and f"--cells {cells}:" in err and "(several cells are separated by spaces: --cells A B)" in err
    assert err.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_train_with_an_unknown_cell_names_pytorchs_too(tmp_path):
    (tmp_path / "verse.txt").write_text("".join(f"{k} shall I compare thee to a summer's day?\n" for k in range(40)))
    code, _, err = run("train", "--text", str(tmp_path / "verse.txt"), "--cell", "gru-odd", "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown cell field 'gru-odd'" in err and "torch-gru" in err and err.count("\n") == 1, err


def test_compare_refuses_an_init_gain_a_cell_cannot_take_before_training(tmp_path):
    """The cell without free recurrent weights is named before any run trains (not after the
    others have: the same command again would fail the same way)."""
    code, _, err = run("compare", "--cells", "torch-gru", "urnn", "--init-gain", "4", "--out", str(tmp_path))
    assert code == 2 and "--cells urnn with --init-gain" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


# --- interrupts ----------------------------------------------------------------------------------

TOKENS_PER_STEP = 8 * 16


def _start(out: Path, *extra):
    """A training run whose budget it never reaches here: whatever the machine's load, a signal sent
    once it has checkpointed lands during training (the test resumes it with a budget of its own).
    A process of its own, forked from the server ``odernn compare`` starts its runs from (its signal
    handlers are the interpreter's defaults, as in ``python -m textlm.cli``; test_commands.py)."""
    from textlm._commands import Command
    return Command(["train", "--corpus", "tinyshakespeare", "--train-tokens", "20000", "--valid-tokens", "2000",
                    "--cell", "gru-ode:euler", "--hidden", "16", "--batch-size", "8", "--bptt", "16",
                    "--max-tokens", str(TOKENS_PER_STEP * 10 ** 7), "--checkpoint-every", "1", "--no-progress",
                    "--eval-tokens", "500", "--out", str(out), *extra])


def _wait_for_checkpoints(out: Path, count: int = 2, timeout: float = 60):
    start = time.time()
    while time.time() - start < timeout:
        metrics = out / "metrics.jsonl"
        if (out / "checkpoint.pt").exists() and metrics.exists() and metrics.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError("the run never checkpointed")


def test_resume_refuses_options_that_contradict_the_run(tmp_path, trained):
    """--hidden and --cell on --resume were silently ignored: now one line naming each conflict,
    exit 2; options equal to the run's, and the budget, may be given."""
    import shutil
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    code, _, err = run("train", "--out", str(out), "--resume", "--hidden", "16", "--cell", "gru-ode:rk4",
                       "--no-progress")
    assert code == 2 and err.count("\n") == 1, err
    assert "--hidden 16 (the run has 8)" in err and "--cell gru-ode:rk4 (the run has gru-ode:euler)" in err
    code, stdout, err = run("train", "--out", str(out), "--resume", "--hidden", "8", "--cell", "gru-ode:euler",
                            "--max-tokens", "512", "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(stdout)["tokens"] == 512


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_a_signal_during_training_leaves_a_checkpoint_that_resumes(tmp_path, sig, code):
    """With a checkpoint every step, the signal also lands during checkpoint writes."""
    out = tmp_path / "run"
    with _start(out, "--log-every", "1") as proc:
        _wait_for_checkpoints(out)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    if sig != signal.SIGKILL:
        assert err.strip().splitlines()[-1].startswith("odernn: interrupted at step") and "Traceback" not in err
    step = torch.load(out / "checkpoint.pt", weights_only=True)["position"]["step"]
    assert step >= 1
    code, stdout, err = run("train", "--out", str(out), "--resume", "--max-tokens", str(TOKENS_PER_STEP * (step + 3)),
                            "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(stdout)["step"] == step + 3
    assert not list(out.glob(".checkpoint.pt.*"))  # no half-written file stays behind


# --- the Python API ------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda r: r(torch.randn(5, 2, 4)), "input_size. Expected 3, got 4"),
    (lambda r: r(torch.randn(5, 2, 3, dtype=torch.float64)), "dtype"),
    (lambda r: r(torch.randn(5, 2, 3), dt=torch.ones(5, 3)), "dt must be"),
    (lambda r: r(torch.randn(5, 2, 3), torch.zeros(1, 3, 4)), "hx must have shape"),
    (lambda r: r(torch.randn(5, 2, 3), lengths=torch.tensor([6, 1])), "lengths must be"),
    (lambda r: r(torch.randn(2, 3, 3, 3)), "expected input to be 2-D"),
    (lambda r: r(torch.randn(5, 2, 3), dt=-1.0), "dt must be a finite number greater than zero"),
    (lambda r: r(torch.randn(5, 2, 3), dt=float("inf")), "dt must be a finite number greater than zero"),
])
def test_api_misuse_names_the_argument(call, name):
    """One exception type for a call's bad input, both a ValueError and the RuntimeError nn.GRU raises."""
    rnn = odernn.ODERNN("gru-ode:rk4", 3, 4, fused=False)
    for caught in (odernn.InputError, ValueError, RuntimeError):
        with pytest.raises(caught, match=name):
            call(rnn)


@pytest.mark.parametrize("make, error, name", [
    (lambda: odernn.ODERNN("gru-ode:rk4", 3, 4, num_layers=0), ValueError, "num_layers"),
    (lambda: odernn.ODERNN("gru-ode:rk4", 3, 4, grad="sideways"), ValueError, "gradient mode"),
    (lambda: odernn.cell("gru-ode:rk4", 0, 4), ValueError, "input_size"),
    (lambda: odernn.cell("gru-ode:rk4", 3, 4)(torch.randn(2, 5)), ValueError, "input"),
])
def test_api_construction_misuse(make, error, name):
    with pytest.raises(error, match=name):
        make()
