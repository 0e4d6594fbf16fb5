"""Time of ``stability.check`` on a 256-unit GRU-ODE cell (goal: under 2 s on this machine), and of
the training probe (ARPACK on Jacobian–vector products) against the dense eigendecomposition.

    python benchmarks/stability_check.py
"""

import statistics
import time

import numpy as np
import torch

import odernn
import stability
from stability._linearise import far_field


def median_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    torch.manual_seed(0)
    stability.check(odernn.cell("gru-ode:rk4", 4, 4))  # warm-up: torch.func compiles its transforms
    for spec in ("gru-ode:rk4", "gru-ode:euler", "lstm:rk4:partitioned=false"):
        cell = odernn.cell(spec, 256, 256)
        seconds, report = median_time(lambda: stability.check(cell))
        # its far-field part alone: 15 tokens of 8 states, by the step and by the flow (RK4 at Δ/32)
        far, _ = median_time(lambda: far_field(cell, torch.randn(report.samples - 1, 1, 256), 1.0,
                                               torch.Generator().manual_seed(0)))
        print(f"check {spec:<28} 256 units, {report.samples} states, {len(report.eigenvalues)} eigenvalues: "
              f"{seconds:.2f} s (median of 3; goal < 2 s), of which the far field {far:.2f} s "
              f"({100 * far / seconds:.0f} %); {'stable' if report.stable else 'unstable'}, "
              f"margin {report.margin:+.3f}, largest stable dt {report.max_stable_dt:.3f}")
    print()
    for hidden in (256, 1024, 2048):
        cell = odernn.cell("gru-ode:rk4", 16, hidden)
        x, state = torch.randn(4, 16), None
        with torch.no_grad():
            for _ in range(5):
                state = cell(x, state)
        probe_s, found = median_time(lambda: stability.top_eigenvalues(cell, x, state))

        def dense():
            J = cell.jacobian(x[:1], state[:1]).detach()[0].double()
            return torch.linalg.eigvals(J).numpy()
        dense_s, full = median_time(dense)
        gap = abs(np.abs(found).max() - np.abs(full).max()) / np.abs(full).max()
        print(f"probe gru-ode:rk4 {hidden:>5} units: ARPACK {probe_s:.2f} s, dense Jacobian + eig {dense_s:.2f} s "
              f"(ratio {dense_s / probe_s:.1f}); max|λ| relative difference {gap:.1e}")


if __name__ == "__main__":
    main()
