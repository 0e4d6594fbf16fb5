"""Seconds-long smoke runs of the example and the study scripts (their full runs are in docs/results.md)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def script(*args, timeout=300):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


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


def test_digits_resnet_rknet_odenet_smoke():
    table = rows(script(ROOT / "examples" / "digits_ode_net.py", "--epochs", "1", "--limit", "64",
                        "--batch-size", "32", "--steps", "4"))
    assert set(table) == {"resnet", "rk-net", "ode-net"}
    memory = {k: float(v[2]) for k, v in table.items()}
    assert memory["ode-net"] < memory["rk-net"] / 3  # the adjoint keeps no solver steps for the backward pass
    assert table["rk-net"][1] == table["ode-net"][1]  # the same network, trained differently


def test_adjoint_study_smoke():
    out = script(ROOT / "benchmarks" / "adjoint_study.py", "--quick")
    table = rows(out)
    assert float(table["1e-06"][1]) < float(table["0.001"][0])  # tighter tolerances, smaller error
    assert float(table["adjoint, backward rk4, 1 step"][0]) > 1  # the stiff backward pass: the gradient is wrong


def test_accuracy_vs_compute_smoke(tmp_path):
    out = script(ROOT / "benchmarks" / "accuracy_vs_compute.py", "--tokens", "1024", "--hidden", "8",
                 "--eval-tokens", "200", "--out", tmp_path / "run")
    table = rows(out)
    evaluations = {k: float(v[0]) for k, v in table.items()}
    assert evaluations["euler"] == 1 and evaluations["rk4:steps=2"] == 8  # exact counts of fixed-step solvers
    assert evaluations["dopri5:rtol=1e-7"] > evaluations["dopri5:rtol=1e-1"]


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


def test_sequence_speed_gpu_table_code_runs_on_the_cpu():
    """The GPU table's code (every way of running a layer, bf16 under autocast, the language-model
    rows) exercised on the CPU at toy sizes, so that ``--device cuda`` runs on a GPU machine
    unchanged; the figures themselves need a GPU."""
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
