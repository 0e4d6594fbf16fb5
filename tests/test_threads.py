"""The same results on any number of PyTorch threads.

The suite pins one thread per pytest worker (conftest); users run with one per core. These tests
run their work in a child process with several threads — where PyTorch's batched LU on a CPU is
wrong or hangs past about 150 rows (``odernn._linalg``) — under a time limit, so that a hang is
a failure, not a stuck suite.
"""

import json
import subprocess
import sys

import pytest

IMPLICIT = """
import json, torch, odernn
torch.set_default_dtype(torch.float64)
report = {}
# the engine's D-row systems (160: the one-threaded batched LU; 384: one matrix at a time; 128
# complex rows for Radau's eigenvalue pair: the threaded batched LU), and the per-token cell's
# sD-row Kronecker system (gauss-2 on 128 units: 256 rows)
for spec, H, rows, path in (("gru-ode:alexander2", 160, 160, "engine"), ("gru-ode:radau-iia-3", 128, 128, "engine"),
                            ("lstm:backward-euler", 192, 384, "engine"), ("gru-ode:gauss-2", 128, 256, "cell")):
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        rnn = odernn.ODERNN(spec, 4, H)
        x = torch.randn(2, 3, 4, requires_grad=True)
        if path == "engine":
            out, _ = rnn(x)
        else:
            cell, state, outs = rnn.cells[0], None, []
            for token in x:
                state = cell(token, state)
                outs.append(state)
            out = torch.stack(outs)
        runs.append([out.detach(), *torch.autograd.grad(out.square().sum(), [x, *rnn.parameters()])])
    same = None
    if spec == "gru-ode:alexander2":  # grad="checkpoint" on two threads: each token solved as its forward did
        rnn.grad = "checkpoint"
        out, _ = rnn(x)
        again = [out.detach(), *torch.autograd.grad(out.square().sum(), [x, *rnn.parameters()])]
        same = all(torch.equal(a, b) for a, b in zip(again, runs[-1]))
    report[spec] = [rows, max((a - b).abs().max().item() for a, b in zip(*runs)), same]
print(json.dumps(report))
"""


FACTORS = """
import json, torch
from odernn._linalg import lu_factor, solve
torch.set_default_dtype(torch.float64)
report = {}
for n in (64, 128, 148, 150, 152, 256, 384):
    torch.manual_seed(n)
    A = torch.randn(5, n, n) + n ** 0.5 * torch.eye(n)
    b = torch.randn(5, n, 2)
    torch.set_num_threads(1)
    reference = torch.linalg.lu_factor(A), torch.linalg.solve(A, b)
    torch.set_num_threads(3)
    (LU, pivots), x = lu_factor(A), solve(A, b)
    report[n] = [bool(torch.equal(pivots, reference[0][1])), (LU - reference[0][0]).abs().max().item(),
                 (x - reference[1]).abs().max().item(), torch.get_num_threads()]
print(json.dumps(report))
"""


LAYERS = """
import json, torch, odernn
from torch import nn
torch.set_default_dtype(torch.float64)
report = {}
for name in ("gru-ode:rk4", "lstm:midpoint", "nn.GRU fused", "rnn:dopri5:rtol=1e-8:atol=1e-8"):
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        rnn = odernn.from_torch(nn.GRU(16, 256, 2)) if name == "nn.GRU fused" else odernn.ODERNN(name, 16, 256)
        x = torch.randn(8, 32, 16, requires_grad=True)
        out, _ = rnn(x)
        runs.append([out.detach(), *torch.autograd.grad(out.square().sum(), [x, *rnn.parameters()])])
    report[name] = max(((a - b).abs().max() / (1 + b.abs().max())).item() for a, b in zip(*runs))
print(json.dumps(report))
"""


# the three scripts share one child process (its imports cost seconds) and so one worker
pytestmark = pytest.mark.xdist_group("threads")
SCRIPTS = {"implicit": IMPLICIT, "factors": FACTORS, "layers": LAYERS}


@pytest.fixture(scope="module")
def reports() -> dict:
    """Each script's report (its last printed line), the scripts run one after another in one
    child process, each in a namespace of its own."""
    code = "".join(f"exec({script!r}, {{}})\n" for script in SCRIPTS.values())
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("hung with several threads (PyTorch's batched LU: see odernn/_linalg.py)")
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(zip(SCRIPTS, map(json.loads, done.stdout.strip().splitlines()[-len(SCRIPTS):])))


@pytest.mark.slow
def test_implicit_cells_give_the_same_results_on_one_and_two_threads(reports):
    """Stage systems of 128–384 rows, real and complex, in the engine and on the per-token path:
    outputs and every gradient equal to 1e-9 (past 150 rows they crashed or hung with two threads
    before ``odernn._linalg``); in the engine, ``grad="checkpoint"`` on two threads equals backprop
    bit for bit, as on one (tests/test_implicit_engine.py; checked on SDIRK, whose checkpointed
    backward once reached another solution)."""
    report = reports["implicit"]
    assert len(report) == 4
    for spec, (rows, difference, same) in report.items():
        assert difference <= 1e-9, f"{spec} ({rows} rows): {difference:.2e}"
        assert same is not False, f"{spec}: checkpoint and backprop differ on two threads"
    assert report["gru-ode:alexander2"][2] is True


@pytest.mark.slow
def test_the_factorisation_helper_equals_the_one_threaded_routine_on_both_sides_of_the_boundary(reports):
    report = reports["factors"]
    for n, (same_pivots, factors, solution, threads) in report.items():
        assert same_pivots and factors <= 1e-9 and solution <= 1e-9, n
        assert threads == 3, "the helper must give the thread setting back"


@pytest.mark.slow
def test_layers_give_the_same_results_on_one_and_two_threads(reports):
    """The engine, the per-token path and PyTorch's kernel at B·H = 32·256, where the products and
    elementwise kernels split across threads: equal to round-off."""
    for name, difference in reports["layers"].items():
        assert difference <= 1e-12, f"{name}: {difference:.2e}"
