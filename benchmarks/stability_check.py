"""Time of ``stability.check`` on a 256-unit GRU-ODE cell (goal: under 2 s on this machine).

    python benchmarks/stability_check.py
"""

import statistics
import time

import torch

import odernn
import stability


def main():
    torch.manual_seed(0)
    stability.check(odernn.cell("gru-ode:rk4", 4, 4))  # warm-up: torch.func compiles its transforms
    for spec in ("gru-ode:rk4", "gru-ode:euler", "lstm:rk4:partitioned=false"):
        cell = odernn.cell(spec, 256, 256)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            report = stability.check(cell)
            times.append(time.perf_counter() - start)
        print(f"{spec:<28} 256 units, {report.samples} states, {len(report.eigenvalues)} eigenvalues: "
              f"{statistics.median(times):.2f} s (median of 3; goal < 2 s); "
              f"{'stable' if report.stable else 'unstable'}, margin {report.margin:+.3f}, "
              f"largest stable dt {report.max_stable_dt:.3f}")


if __name__ == "__main__":
    main()
