"""Batched LU factorisation on a CPU with several PyTorch threads: PyTorch's batched routine, the
same routine on one thread, and one matrix at a time, against one another and against the
one-threaded result, as ``odernn._linalg`` chooses between them.

Past about 150 rows PyTorch's batched ``lu_factor`` with more than one thread is wrong or hangs
(PyTorch issue #142815): each size is first tried in a child process with a time limit, and the
row says ``wrong`` or ``hangs`` where it is. The timed strategies are checked equal to the
one-threaded factors before they are timed.

    python benchmarks/linalg_threads.py [--threads 2] [--batch 32] [--sizes 64 96 128 160 256 384]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from odernn._linalg import _single_threaded, lu_factor

PROBE = """
import sys, torch
torch.set_num_threads({threads}); torch.manual_seed(0)
A = torch.randn({batch}, {n}, {n}, dtype=torch.float64) + {n} ** 0.5 * torch.eye({n}, dtype=torch.float64)
LU, piv = torch.linalg.lu_factor(A)
torch.set_num_threads(1)
ref = torch.linalg.lu_factor(A)
sys.exit(0 if torch.equal(piv, ref[1]) and bool((LU - ref[0]).abs().max() < 1e-9) else 3)
"""


def batched_state(threads: int, batch: int, n: int) -> str:
    """'right', 'wrong' or 'hangs': PyTorch's own batched routine with ``threads`` threads."""
    try:
        done = subprocess.run([sys.executable, "-c", PROBE.format(threads=threads, batch=batch, n=n)],
                              capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "hangs"
    return "right" if done.returncode == 0 else "wrong"


def best_of(run, repeats: int = 5) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160, 256, 384])
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.batch} float64 matrices per batch")
    print(f"{'rows':>5} {'batched routine':>16} {'one thread':>11} {'per matrix':>11} {'odernn':>9}")
    for n in args.sizes:
        torch.manual_seed(0)
        A = torch.randn(args.batch, n, n, dtype=torch.float64) + n ** 0.5 * torch.eye(n, dtype=torch.float64)
        torch.set_num_threads(1)
        reference = torch.linalg.lu_factor(A)
        torch.set_num_threads(args.threads)

        def one_thread():
            with _single_threaded():
                return torch.linalg.lu_factor(A)

        def per_matrix():
            factors, pivots = zip(*(torch.linalg.lu_factor(a) for a in A))
            return torch.stack(factors), torch.stack(pivots)

        times = {}
        for name, run in (("one thread", one_thread), ("per matrix", per_matrix), ("odernn", lambda: lu_factor(A))):
            factors, pivots = run()
            assert torch.equal(pivots, reference[1]) and (factors - reference[0]).abs().max() < 1e-9, name
            times[name] = best_of(run)
        state = batched_state(args.threads, args.batch, n)
        print(f"{n:5d} {state:>16} {1e3 * times['one thread']:9.2f} ms {1e3 * times['per matrix']:9.2f} ms "
              f"{1e3 * times['odernn']:7.2f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
