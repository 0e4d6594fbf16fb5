"""The stability check against the exact linear cases and against simulation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import odernn
import stability


class Linear(nn.Module):
    """h' = M h + x: the Jacobian is M everywhere, so the verdict is exact."""

    def __init__(self, M):
        super().__init__()
        self.M = nn.Parameter(M)

    def forward(self, h, x):
        return h @ self.M.T + x


def linear_cell(M, tableau, dt, steps=1):
    field = odernn.ModuleField(Linear(torch.as_tensor(M, dtype=torch.float64)), M.shape[0], M.shape[0])
    return odernn.ODECell(field, tableau, dt=dt, steps=steps)


def grows(cell, n=400):
    """Simulate: does a perturbation grow over n steps? (zero input: the homogeneous system)."""
    h = torch.ones(1, cell.hidden_size, dtype=torch.float64)
    x = torch.zeros(1, cell.input_size, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(n):
            h = cell(x, h)
    return not torch.isfinite(h).all() or h.abs().max().item() > 10


@pytest.mark.parametrize("lam", [-0.5, -1.0, -3.0, -10.0])
@pytest.mark.parametrize("dt", [0.05, 0.19, 0.21, 0.5, 0.9, 1.5, 1.99, 2.01, 3.0])
def test_forward_euler_is_stable_iff_one_plus_dt_lambda_is_at_most_one(lam, dt):
    cell = linear_cell(np.eye(3) * lam, "euler", dt)
    report = stability.check(cell, samples=2)
    expected = abs(1 + dt * lam) <= 1
    assert report.stable == expected
    assert report.margin == pytest.approx(1 - abs(1 + dt * lam), abs=1e-12)
    if abs(abs(1 + dt * lam) - 1) > 0.02:
        assert grows(cell) == (not expected)
    assert report.max_stable_dt == pytest.approx(2 / abs(lam), rel=1e-9)


def test_rk4_on_a_skew_symmetric_matrix_is_stable_up_to_two_root_two():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(6, 6))
    S = W - W.T  # eigenvalues ±iω
    omega = np.abs(np.linalg.eigvals(S).imag).max()
    limit = 2 * math.sqrt(2) / omega
    below, above = linear_cell(S, "rk4", 0.995 * limit), linear_cell(S, "rk4", 1.005 * limit)
    assert stability.check(below, samples=2).stable and not stability.check(above, samples=2).stable
    assert stability.check(below, samples=2).max_stable_dt == pytest.approx(limit, rel=1e-9)
    assert not grows(below, 2000) and grows(above, 20000)
    # forward Euler never covers the imaginary axis; the midpoint method neither (|R(iy)|² = 1 + y⁴/4)
    assert not stability.check(linear_cell(S, "euler", 0.01), samples=2).stable
    assert stability.check(linear_cell(S, "gauss-2", 10.0), samples=2).stable  # A-stable


@pytest.mark.parametrize("scale, dt", [(0.5, 1.0), (3.0, 1.0), (3.0, 0.3), (6.0, 1.0)])
def test_verdict_agrees_with_simulation_on_the_gru_ode_field(scale, dt):
    """Nonlinear field: the check samples states; simulate the linearisation about the zero
    state with the same weights, where the verdict is exact, and check the cell stays bounded."""
    torch.manual_seed(0)
    cell = odernn.cell(f"gru-ode:euler:dt={dt}", 4, 16).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.mul_(scale)
    report = stability.check(cell, samples=1)  # the zero state only: the exact linear verdict there
    J = cell.jacobian(torch.zeros(1, 4, dtype=torch.float64))[0]
    step = torch.eye(16, dtype=torch.float64) + dt * J  # Euler on the linearisation
    growth = torch.linalg.matrix_power(step, 400).abs().max().item()
    assert report.stable == (growth < 1e3) or abs(report.margin) < 1e-3


def test_report_json_and_text():
    cell = odernn.cell("gru-ode:rk4", 3, 5)
    report = stability.check(cell)
    import json
    data = json.loads(report.to_json())
    assert data["stable"] == report.stable and len(data["eigenvalues"]) == len(report.eigenvalues)
    assert {"name", "verdict", "value", "source"} <= set(data["conditions"][0])
    assert ("STABLE" if report.stable else "UNSTABLE") in str(report)
