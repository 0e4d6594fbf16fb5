"""Seconds-long smoke runs of the example and the study scripts (their full runs are in docs/results.md)."""

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import sympy

import butcher

ROOT = Path(__file__).resolve().parents[1]


def script(path, *args):
    """``python PATH ARGS`` run in this process (as ``__main__``, with its ``sys.argv``): its
    standard output. A process of its own would cost seconds of imports; the suite's fixtures
    restore the thread count and seeds a script changes."""
    import runpy
    argv = sys.argv
    sys.argv = [str(path), *map(str, args)]
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as exit_:
                assert exit_.code in (0, None), exit_.code
    finally:
        sys.argv = argv
    return printed.getvalue()


def rows(markdown: str) -> dict:
    """The body rows of the Markdown tables in ``markdown``, by their first cell."""
    lines = markdown.splitlines()
    out = {}
    for line, following in zip(lines, lines[1:] + [""]):
        if not line.startswith("| ") or following.startswith("|---") or line.startswith("|---"):
            continue  # not a table row, or a header
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


@pytest.mark.slow
def test_digits_resnet_rknet_odenet_smoke():
    table = rows(script(ROOT / "examples" / "digits_ode_net.py", "--epochs", "1", "--limit", "64",
                        "--batch-size", "32", "--steps", "4"))
    assert set(table) == {"resnet", "rk-net", "ode-net"}
    memory = {k: float(v[2]) for k, v in table.items()}
    assert memory["ode-net"] < memory["rk-net"] / 3  # the adjoint keeps no solver steps for the backward pass
    assert table["rk-net"][1] == table["ode-net"][1]  # the same network, trained differently


@pytest.mark.slow
def test_adjoint_study_smoke():
    out = script(ROOT / "benchmarks" / "adjoint_study.py", "--quick")
    table = rows(out)
    assert float(table["1e-06"][1]) < float(table["0.001"][0])  # tighter tolerances, smaller error
    assert float(table["adjoint, backward rk4, 1 step"][0]) > 1  # the stiff backward pass: the gradient is wrong


@pytest.mark.slow
def test_accuracy_vs_compute_smoke(tmp_path):
    text = tmp_path / "verse.txt"  # not Tiny Shakespeare: training ends with a validation of the whole split
    text.write_text("".join(f"{k} shall I compare thee to a summer's day? thou art more lovely.\n" for k in range(150)))
    out = script(ROOT / "benchmarks" / "accuracy_vs_compute.py", "--tokens", "1024", "--hidden", "8",
                 "--eval-tokens", "200", "--text", text, "--out", tmp_path / "run")
    table = rows(out)
    evaluations = {k: float(v[0]) for k, v in table.items()}
    assert evaluations["euler"] == 1 and evaluations["rk4:steps=2"] == 8  # exact counts of fixed-step solvers
    assert evaluations["dopri5:rtol=1e-7"] > evaluations["dopri5:rtol=1e-1"]
    # the trained run's training step, as benchmarks/run_step_speed.py times it: Dormand–Prince
    # costs 1 evaluation a token and 6 a step tried (its last stage is the next step's first)
    import re
    out = script(ROOT / "benchmarks" / "run_step_speed.py", tmp_path / "run", "--batches", "1")
    nfe, speed = re.search(r"([\d.]+) field evaluations per token \(mean\), ([\d,]+) tokens/s", out).groups()
    assert (float(nfe) - 1) / 6 >= 1 and float(speed.replace(",", "")) > 0, out


def test_adjoint_memory_smoke():
    """In-process version of benchmarks/adjoint_memory.py: memory held for the backward pass grows
    with the solver steps for backprop only."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("adjoint_memory", ROOT / "benchmarks" / "adjoint_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch
    threads = torch.get_num_threads()  # one() pins the process to one thread, as the benchmark does
    try:
        held = {(mode, steps): module.one("gru-ode:rk4", steps, mode, hidden=64, batch=8, bptt=4)["peak_mb"]
                for mode in module.MODES for steps in (1, 8)}
    finally:
        torch.set_num_threads(threads)
    assert held["backprop", 8] > 5 * held["backprop", 1]
    for mode in ("checkpoint", "adjoint"):
        assert held[mode, 8] <= 1.1 * held[mode, 1] + 0.01, (mode, held)


def test_implicit_failure_follows_a_step_through_its_folds():
    """benchmarks/implicit_failure.py's branch following, on stage equations solved by hand. Backward
    Euler on y' = y² from y0 = 1: K = (1 + τK)² has the branch K = (1 − 2τ − √(1 − 4τ)) / (2τ²) from
    K(0) = 1, which folds at τ = 1/4 (the discriminant vanishes) and never reaches the step. Two-stage
    SDIRK (γ = 1 − 1/√2) on y' = −3y, step 1: the stage equations are linear, so the branch reaches
    τ = 1 without a fold, at K1 = −3(1 + γK1) = −3/(1 + 3γ) and K2 = −3(1 + (1 − γ)K1 + γK2)."""
    import importlib.util
    import math

    import torch
    spec = importlib.util.spec_from_file_location("implicit_failure", ROOT / "benchmarks" / "implicit_failure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = torch.ones(1, dtype=torch.float64)
    fold = module.follow(lambda Y: Y ** 2, lambda Y: torch.diag_embed(2 * Y), one, 1.0, [[1.0]], max_steps=200)
    assert fold["outcome"] != "reached" and len(fold["folds"]) == 1
    assert abs(fold["folds"][0] - 0.25) < 1e-3, fold["folds"]

    gamma = 1 - 1 / math.sqrt(2)
    A = [[gamma, 0.0], [1 - gamma, gamma]]
    linear = module.follow(lambda Y: -3 * Y, lambda Y: -3 * torch.eye(1, dtype=torch.float64).expand(len(Y), 1, 1),
                           one, 1.0, A)
    assert linear["outcome"] == "reached" and linear["folds"] == [] and linear["tau"] == 1.0
    K1, K2 = linear["stages"][:, 0].tolist()
    assert abs(K1 - (-3 * (1 + gamma * K1))) < 1e-9 and abs(K2 - (-3 * (1 + (1 - gamma) * K1 + gamma * K2))) < 1e-9
    assert abs(K1 + 3 / (1 + 3 * gamma)) < 1e-9


def test_sequence_speed_smoke():
    """In-process version of benchmarks/sequence_speed.py: every row and ratio is measured."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("sequence_speed", ROOT / "benchmarks" / "sequence_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch
    threads = torch.get_num_threads()
    try:
        results = module.main(["--quick", "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    ratios = {name for group in results["ratios"].values() for name in group}
    assert set(module.GOALS) <= ratios
    assert all(value > 0 for group in results["ratios"].values() for value in group.values())


def test_sequence_speed_gpu_table_code_runs_on_the_cpu(monkeypatch):
    """The GPU table's code (every way of running a layer, bf16 under autocast, the language-model
    rows) exercised on the CPU at toy sizes, so that ``--device cuda`` runs on a GPU machine
    unchanged; the figures themselves need a GPU. The compiled ways run their functions uncompiled
    here: on a CPU ``torch.compile`` would build C++ kernels (about 40 s of this suite on a cold
    cache) that the compiled-math tests of test_runtime.py already hold equal to the eager engine,
    and a GPU builds Triton ones instead."""
    from odernn import _engine
    monkeypatch.setattr(_engine, "_compiled", lambda function: function)
    monkeypatch.setattr(_engine._FieldMath, "_compiled", {})  # nothing uncompiled outlives the test
    import importlib.util
    spec = importlib.util.spec_from_file_location("sequence_speed", ROOT / "benchmarks" / "sequence_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch
    cpu = torch.device("cpu")
    for precision in ("float32", "bf16"):
        times, found = module.way_rows(2, 8, cpu, precision, 1, lambda: None, T=3)
        assert set(found["fastest"]) == {"gru-ode:euler", "gru-ode:rk4", "lstm:euler"}
        assert {name for name, _ in module.CUDA_GOALS} <= set(found["ratios"]) | {
            "LM tokens/s, gru-ode:euler fastest / torch-gru"}
        times, found = module.cuda_language_model_rows(cpu, precision, 1, lambda: None, B=2, T=3, H=8)
        assert all(value > 0 for value in found["ratios"].values())


def test_cuda_check_script_runs_its_checks_on_the_cpu():
    """benchmarks/cuda_check.py's checks, run on the CPU at toy sizes (the script's own test; on a
    GPU machine it runs them on CUDA, with compiled math and CUDA graphs)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("cuda_check", ROOT / "benchmarks" / "cuda_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import torch
    cpu, checks = torch.device("cpu"), module.Checks()
    module.layer_checks(checks, cpu, ["lstm:euler"], {"plain": {}}, 10.0, 1, 4, 2, 6)
    module.irregular_checks(checks, cpu, 10.0, 4, 2, 6)
    module.bf16_checks(checks, cpu, ["gru-ode:rk4"], 4, 2, 6)
    module.training_checks(checks, cpu, [False])
    assert len(checks.rows) == 4 + 5 + 1 + 2 and checks.failed == 0


def test_nodepy_methods_typed_as_printed_load_with_their_order():
    """benchmarks/order_vs_nodepy.py's text check on a few NodePy methods: typed as ``sympy.sstr``
    prints their coefficients (fractions; sqrt(3) in A; an embedded pair), they load, and get
    NodePy's exact order and NodePy's exact stability function. NodePy is in the ``test`` extra:
    this runs in CI, never skipped. (SDIRK34, whose coefficients print
    with cos(pi/18), is in the full run: NodePy alone takes 7 s on its order.)"""
    import importlib.util

    spec = importlib.util.spec_from_file_location("order_vs_nodepy", ROOT / "benchmarks" / "order_vs_nodepy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    exact, _ = module.nodepy_methods()
    methods = {name: exact[name] for name in ("RK44", "DP5", "SDIRK23", "GL2")}
    _, nodepy_orders = module.time_nodepy(methods)
    result = module.typed_check(methods, nodepy_orders)
    assert result["failures"] == {}, result["failures"]
    assert result["loaded"] == result["orders_agree"] == result["stability_functions_agree"] == len(methods)
    assert result["pairs_with_exact_bhat"] == result["embedded_orders_agree"] == 1  # DP5's bhat, typed too
    assert {row["method"]: row["butcher_order"] for row in result["rows"]} == {
        "RK44": 4, "DP5": 5, "SDIRK23": 3, "GL2": 4}


def example(name: str):
    """``examples/NAME.py`` as a module, to run its ``main(argv)`` in this process (no second start-up of
    PyTorch and SymPy, which takes seconds)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, options", [("own_tableau", ["--tableau", "--compare", "--data-root"]),
                                           ("odernn_in_your_model", ["--spec", "--steps", "--seeds"]),
                                           ("irregular_sampling", ["--quick", "--spec", "--seeds", "--ablation"])])
def test_example_help_explains_the_script_and_its_options(name, options, capsys):
    module = example(name)
    with pytest.raises(SystemExit) as exit:
        module.main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0
    assert module.__doc__.split("\n\n")[0].split()[0] in out and all(option in out for option in options)
    assert f"python examples/{name}.py" in module.__doc__  # the command to run it


def test_own_tableau_designs_an_order_3_method_and_trains_its_cell(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("the cat sat on the mat. a cat and a hat. " * 400)
    vocabulary = len(set(text.read_text()))
    trained = example("own_tableau").main([
        "--text", str(text), "--hidden", "16", "--max-tokens", "6000", "--batch-size", "8", "--bptt", "16",
        "--lr", "0.02", "--compare", "gru-ode:euler", "--out", str(tmp_path / "out")])
    properties = rows(capsys.readouterr().out)
    # Butcher's family with c2 = 1/3, c3 = 1, solved by hand: a32 = c3(c3 − c2)/(c2(2 − 3c2)) = 2,
    # b3 = (2 − 3c2)/(6c3(c3 − c2)) = 1/4, b2 = (3c3 − 2)/(6c2(c3 − c2)) = 3/4, b1 = 0
    tab = butcher.load(tmp_path / "out" / "my-rk3.toml")
    assert tab.A == butcher.ButcherTableau([[0, 0, 0], ["1/3", 0, 0], [-1, 2, 0]], [0, "3/4", "1/4"]).A
    assert list(tab.b) == [0, sympy.Rational(3, 4), sympy.Rational(1, 4)]
    assert properties["order"] == ["3"] and properties["stages"] == ["3"]
    assert properties["R(z)"] == ["z**3/6 + z**2/2 + z + 1"]  # every 3-stage explicit method of order 3
    assert properties["imaginary stability interval"][0].startswith("Interval(-sqrt(3), sqrt(3))")
    own, gru = trained
    assert own["cell"] == f"gru-ode:{tmp_path / 'out' / 'my-rk3.toml'}" and own["order"] == 3 and own["NFE/token"] == 3
    assert own["parameters"] == gru["parameters"]  # the same field, another tableau
    for row in trained:  # trained below the uniform guess, ln V nats
        assert float(row["valid loss"]) < math.log(vocabulary) - 0.5, row
        assert row["before training"].startswith("stable")


def test_own_tableau_takes_a_users_file_and_refuses_nodes_without_a_method(tmp_path, capsys):
    mine = tmp_path / "ralston.json"
    mine.write_text('{"name": "mine", "A": [["0", "0"], ["2/3", "0"]], "b": ["1/4", "3/4"]}')
    text = tmp_path / "notes.txt"
    text.write_text("abcabd" * 300)
    module = example("own_tableau")
    (row,) = module.main(["--tableau", str(mine), "--compare", "--text", str(text), "--hidden", "8",
                          "--max-tokens", "256", "--batch-size", "8", "--bptt", "16", "--out", str(tmp_path / "out")])
    properties = rows(capsys.readouterr().out)
    assert properties["order"] == ["2"] and properties["R(z)"] == ["z**2/2 + z + 1"]
    assert row["order"] == 2 and row["NFE/token"] == 2
    with pytest.raises(SystemExit) as exit:
        module.main(["--c2", "2/3", "--out", str(tmp_path / "out")])  # b3 = (2 − 3c2)/… = 0: no order-3 method
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and "no solution" in err


def test_odernn_in_your_model_from_torch_equals_nn_gru(capsys):
    hidden = 8
    equal, results = example("odernn_in_your_model").main([
        "--hidden", str(hidden), "--steps", "20", "--equal-steps", "5", "--seeds", "1", "--test-size", "200",
        "--batch-size", "16", "--min-length", "3", "--max-length", "8"])
    assert len(equal) == 6 and all(difference < 1e-6 for difference in equal.values()), equal
    table = rows(capsys.readouterr().out)
    assert table["nn.GRU"] == table["odernn.from_torch(nn.GRU)"][:4] + table["nn.GRU"][4:]  # all but the time
    # nn.GRU's parameters, 3H(E + H) + 6H, and the head's H·2 + 2, for every model
    assert {run[0]["parameters"] for run in results.values()} == {3 * hidden * (2 + hidden) + 6 * hidden + 2 * hidden + 2}


def test_irregular_sampling_quick_training_lowers_the_error(capsys):
    results = example("irregular_sampling").main(["--quick"])
    table = rows(capsys.readouterr().out)
    trained = {name: runs for name, runs in results.items() if "untrained" in runs[0]}
    assert len(trained) == 3 and len(table) == 5
    for name, runs in trained.items():
        assert len(runs) == 2 and all(run["mse"] < run["untrained"] for run in runs), (name, runs)
    assert table["nn.GRU, gap as input"][-1] == "–"  # no stability check for nn.GRU
    assert all(table[name][-1].split()[0] in ("stable", "unstable", "expanding") for name in trained if "ODERNN" in name)


@pytest.mark.slow
def test_seeds_study_smoke(tmp_path, monkeypatch):
    """benchmarks/seeds_study.py (issue 24's study) on a small text and budgets of seconds: every
    phase runs; the cell's rate is its sweep's best; the runs made to fail (forward Euler at Δ = 3,
    and recurrent weights ×8 at initialisation) are recorded as diverged, and the check at
    initialisation called them; the probe at 5 % ran on each run's own weights; the report, asked
    again, trains nothing and says the same."""
    text = tmp_path / "verse.txt"
    text.write_text("".join(f"{k} shall I compare thee to a summer's day? thou art more lovely.\n" for k in range(150)))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # in this process: its runs are the only new processes
    import seeds_study

    def script_(*args):
        with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()):
            assert seeds_study.main(list(map(str, args))) == 0
        return printed.getvalue()
    study = ["--smoke", text, "--cells", "gru-ode:euler", "--out", tmp_path / "study"]
    out = script_("all", *study)
    lines = out.splitlines()
    sweep = next(line for line in lines if line.startswith("| gru-ode:euler | "))
    losses = [float(cell.split()[0]) for cell in sweep.strip("|").split("|")[1:3]]
    best = (2e-3, 3.2e-2)[losses.index(min(losses))]
    assert f"Chosen rates: gru-ode:euler {best:g}." in out
    assert "Runs finished: 2 of the sweep, 1 at convergence, 2 made to fail." in out
    at_init = lines.index(next(line for line in lines if line.startswith("Verdict at initialisation")))
    assert lines[at_init + 4].startswith("| to fail | 2 |")  # the Δ = 3 run and the ×8 weights: diverged, called
    # the run made to fail by its initial weights: its own folder, named in the table, diverged
    assert (tmp_path / "study" / "fail" / "lr0.002_gain8" / "runs" / "rnn_euler" / "seed0" / "compare.json").is_file()
    assert any(line.startswith("| rnn:euler, recurrent weights ×8 at initialisation | 0.002 | unstable step")
               and "| diverged |" in line for line in lines)
    finished = next((tmp_path / "study" / "seeds").glob("lr*/runs/*/seed0/compare.json"))
    pictures = [tmp_path / "study" / "figures" / f"seeds_study_{name}.png" for name in ("sweep", "curves")]
    stamps = [path.stat().st_mtime_ns for path in (finished, *pictures)]
    again = script_("report", *study)  # trains nothing, and redraws no picture whose data are the same
    assert again == out[out.index("Runs finished"):]
    assert [path.stat().st_mtime_ns for path in (finished, *pictures)] == stamps
    from textlm.compare import checks, read_records
    # the probe at 5 % ran on each ODE run's own weights: its witness, the check at the same step, is
    # the check the run logged (none where the run failed before 5 %, as the Δ = 3 one did)
    probed = sorted((tmp_path / "study").glob("*/*/runs/*/seed0/probe.json"))
    assert len(probed) == 5 and "*Predicting with the training-time probe" in out
    for path in probed:
        record, at_5 = json.loads(path.read_text()), checks(read_records(path.parent / "metrics.jsonl")).get("check_0.05")
        assert record.get("witness") == at_5 and ("probe_0.05" in record) == (at_5 is not None), path
    # a run whose records predate today's check is checked again on the same weights: the same
    # verdicts, at initialisation and at 5 % (the run retrained from its seed: deterministic)
    run = finished.parent
    logged = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(logged.replace('"far_field"', '"far_field_then"'))
    script_("recheck", *study)
    redone = json.loads((run / "recheck.json").read_text())
    logged = checks(read_records(run / "metrics.jsonl"))
    assert set(logged) == {"check_0", "check_0.05"}
    for key in logged:
        assert (redone[key]["verdict"], redone[key]["margin"]) == (logged[key]["verdict"], logged[key]["margin"])
        assert redone[key]["far_field"] is True  # today's check: the far field measured


def test_the_study_redraws_a_picture_only_when_its_data_change(tmp_path, monkeypatch):
    """benchmarks/seeds_study_report.py's figures: drawn once, left as they are when asked again with
    the same data, drawn again when a run's loss changes."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from seeds_study_report import figures
    picture = tmp_path / "seeds_study_sweep.png"
    sweep = [{"cell": "torch-gru", "lr": lr, "valid_loss": loss} for lr, loss in ((2e-3, 1.9), (8e-3, 1.6))]
    assert figures(sweep, [], ["torch-gru"], tmp_path, 3.33) == [picture.name]
    drawn = picture.read_bytes()
    picture.touch()
    stamp = picture.stat().st_mtime_ns
    figures(sweep, [], ["torch-gru"], tmp_path, 3.33)
    assert picture.stat().st_mtime_ns == stamp
    sweep[1]["valid_loss"] = 1.7
    figures(sweep, [], ["torch-gru"], tmp_path, 3.33)
    assert picture.read_bytes() != drawn


def test_seed_claims_judge_by_complete_separation(monkeypatch):
    """The rule of the seeds study's claim tables: a claim holds against a cell where every seed beats
    every seed of that cell, and that rule with 3 seeds against 3 is the exact one-sided
    Mann–Whitney test at p = 1/20 = 0.05 (what docs/results.md says); a target never reached counts
    as infinite, and where neither cell reached it there is nothing to separate."""
    from scipy.stats import mannwhitneyu
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from seeds_study_report import separation
    assert separation([1.0, 2.0, 3.0], [3.5, 4.0, 9.0]) == "better"
    assert separation([3.5, 4.0, 9.0], [1.0, 2.0, 3.0]) == "worse"
    assert separation([1.0, 5.0, 3.0], [2.0, 6.0, 7.0]) == "overlap"
    assert separation([1.0, 2.0, 3.0], [4.0, math.inf, math.inf]) == "better"  # two seeds never reached it
    assert separation([1.0, math.inf, 3.0], [4.0, 5.0, 6.0]) == "overlap"
    assert separation([math.inf] * 3, [math.inf] * 3) == "neither"
    assert mannwhitneyu([1.0, 2.0, 3.0], [3.5, 4.0, 9.0], alternative="less", method="exact").pvalue == pytest.approx(0.05)
    assert mannwhitneyu([1.0, 5.0, 3.0], [2.0, 6.0, 7.0], alternative="less", method="exact").pvalue > 0.05


@pytest.mark.parametrize("args, said", [
    (["sweep", "--smoke", "{tmp}/verse.txt", "--cells", "gru-ode:nosuch"], "unknown method 'nosuch'"),
    (["sweep", "--smoke", "{tmp}/verse.txt", "--cells", "no-such-cell"], "no-such-cell"),
    (["sweep", "--jobs", "0"], "at least 1"),
    (["sweep", "--jobs", "²"], "at least 1"),
    (["report", "--smoke", "{tmp}/verse.txt", "--docs", "{tmp}/missing.md"], "No such file"),
    (["report", "--smoke", "{tmp}/verse.txt", "--docs", "{tmp}/plain.md"], "seeds-study:begin"),
    (["report", "--smoke", "{tmp}/verse.txt", "--docs", "{tmp}/reversed.md"], "after it"),
    (["report", "--smoke", "{tmp}/verse.txt", "--docs", "{tmp}/latin1.md"], "utf-8"),
    (["report", "--smoke", "{tmp}/verse.txt", "--out", "{tmp}/plain.md"], "not a folder"),
    (["sweep", "--smoke", "{tmp}/missing.txt"], "--smoke"),
    (["sweep", "--smoke", "{tmp}/tiny.txt"], "too short"),
    (["sweep", "--data-root", "{tmp}"], "not found"),
])
def test_seeds_study_refuses_bad_input_before_training(tmp_path, monkeypatch, capsys, args, said):
    """benchmarks/seeds_study.py checks every input before hours of training: one line on stderr,
    exit 2, nothing written to the study's folder."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import seeds_study
    from seeds_study_report import END, START
    (tmp_path / "verse.txt").write_text("".join(f"{k} shall I compare thee to a summer's day?\n" for k in range(150)))
    (tmp_path / "tiny.txt").write_text("abcdefg")
    (tmp_path / "plain.md").write_text("a page without the study's markers\n")
    (tmp_path / "reversed.md").write_text(f"{END}\n{START}\n")
    (tmp_path / "latin1.md").write_bytes(f"{START}\ncaf\xe9\n{END}\n".encode("latin-1"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv += [] if "--out" in argv else ["--out", str(tmp_path / "study")]
    with pytest.raises(SystemExit) as stopped:
        seeds_study.main(argv)
    assert stopped.value.code == 2
    assert said in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "study").exists()


def test_seed_claims_tables(tmp_path, monkeypatch):
    """The claim tables on made-up runs whose verdicts are known: a cell that beats every seed of
    every classical cell holds; a seed that diverged (NaN perplexity) or failed is the worst value,
    not a value skipped; a measure a run lacks is "not measured"; where neither cell reached the
    target, the loss after one epoch decides; a resumed run's repeated validations count once; the
    stability rule's tie and its disagreement."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import dataclasses
    import seeds_study
    from seeds_study_report import claims, validations
    text = tmp_path / "verse.txt"
    text.write_text("some verse\n" * 50)
    plan = dataclasses.replace(seeds_study.plan(True, None, str(text)), seeds=(0, 1, 2), rates=(1e-3, 1e-2))

    def run(cell, seed, test_ppl, curve, *, noise=True, resumed=False, **extra):
        """A finished run: its validations (the last at the final step, the best) and its results."""
        folder = tmp_path / cell / str(seed)
        folder.mkdir(parents=True)
        lines = [{"step": k + 1, "tokens": 100 * (k + 1), "elapsed": 10.0 * (k + 1), "valid_loss": loss}
                 for k, loss in enumerate(curve)]
        if resumed:  # the first validation logged twice: an earlier value, then the one that counts
            lines.insert(0, {**lines[0], "valid_loss": 0.1})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        row = {"cell": cell, "seed": seed, "lr": 1e-2, "folder": str(folder), "phase": "seeds", "test_ppl": test_ppl,
               "valid_ppl": 5.0, "valid_loss": curve[-1], "spikes": 0, "nan_recoveries": 0, "step": len(curve),
               "best_step": len(curve), **extra}
        if noise:
            row["valid_ppl_noise_0.1"] = 10.0 + test_ppl  # fragility tracks the test perplexity here
        return row

    seeds = []
    for k in range(3):
        seeds += [run("torch-rnn", k, 5.0 + k / 10, [2.0, 1.8, 1.6]),           # never reaches 1.0
                  run("torch-lstm", k, 4.5 + k / 10, [2.0, 1.5, 0.9]),          # at 300 tokens
                  run("torch-gru", k, 4.8 + k / 10, [2.0, 1.6, 0.95 + k / 100]),
                  run("fast", k, 4.0 + k / 10, [1.5, 0.9, 0.8], resumed=k == 0),  # at 200 tokens
                  run("slow", k, 5.5 + k / 10, [1.9, 1.7, 1.5], noise=False, spikes=1)]
    # a seed that diverged (NaN perplexity), second in order: max() and min() would skip it
    seeds += [run("fast2", k, [4.0, math.nan, 4.2][k], [1.5, 0.9, 0.8]) for k in range(3)]
    # a model above the unigram loss that ignores its input: noise costs it nothing (ratio below 1)
    seeds += [dict(run("ignores", k, 40.0, [3.5, 3.5, 3.5]), valid_ppl=60.0) for k in range(3)]
    sweep = [{"cell": c, "lr": lr, "valid_loss": 1.0, "spikes": 0, "nan_recoveries": 0}
             for c in ("torch-rnn", "torch-lstm", "torch-gru", "fast", "fast2") for lr in plan.rates]
    sweep += [{"cell": "slow", "lr": 1e-3, "valid_loss": 1.0}, {"cell": "slow", "lr": 1e-2, "failed": "NaN"}]
    sweep[0] = {"cell": "torch-rnn", "lr": 1e-3, "valid_loss": 99.0}  # torch-rnn diverged at one rate
    cells = ["torch-rnn", "torch-lstm", "torch-gru", "fast", "fast2", "slow", "ignores"]
    lines = claims(plan, sweep, seeds, cells, 1.0, unigram=3.0)

    def row(claim, cell):
        start = next(k for k, line in enumerate(lines) if line.startswith(f"**{claim}"))
        found = next(line for line in lines[start:] if line.startswith(f"| {cell} |"))
        return [part.strip() for part in found.strip("|").split("|")][2:]
    assert row("Lower perplexity", "fast") == ["holds", "holds", "holds"]
    glance = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:] for line in lines
              if line.startswith("| ") and line.count("|") == 8}  # the at-a-glance table: six claims
    assert glance["fast"][:2] == ["holds (all 3)", "holds (all 3)"]
    assert glance["fast2"][0] == "inconclusive (all 3)"
    assert glance["slow"][1] == "holds (rnn); does not hold (lstm, gru)"
    # 4.0, inf, 4.2: the diverged seed is the worst, so no complete separation from anyone
    assert row("Lower perplexity", "fast2") == ["inconclusive"] * 3
    assert row("Lower perplexity", "slow") == ["does not hold"] * 3
    assert row("Faster convergence, in tokens", "fast") == ["holds", "holds", "holds"]
    assert row("Faster convergence, in tokens", "slow") == [
        "holds (neither reached it; loss after one epoch)", "does not hold", "does not hold"]  # 1.7 < 1.8
    assert row("More robust", "slow") == ["not measured"] * 3
    assert row("More robust", "fast") == ["holds", "holds", "holds"]
    assert row("More robust, relative", "fast") == ["holds", "holds", "holds"]
    assert row("More robust, relative", "ignores") == ["not judged (diverged)"] * 3  # 50 / 60 < 1 says nothing
    # fast: 2 rates, 0 events; torch-rnn 1 rate: holds; torch-lstm/gru 2 rates: a tie
    assert row("More stable", "fast") == ["holds", "does not hold (a tie)", "does not hold (a tie)"]
    # slow: 1 rate and 3 spikes against torch-rnn's 1 rate and none: does not hold; fewer rates too
    assert row("More stable", "slow") == ["does not hold"] * 3
    # the resumed run's first validation counts once, with the value logged last
    resumed = next(r for r in seeds if r["cell"] == "fast" and r["seed"] == 0)
    assert [v["valid_loss"] for v in validations(resumed)] == [1.5, 0.9, 0.8]
