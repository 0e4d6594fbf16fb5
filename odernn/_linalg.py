"""Batched LU factorisation and solves that are right under any number of PyTorch threads.

On a CPU, PyTorch's batched ``torch.linalg.lu_factor`` (and everything built on it: ``solve``,
``inv``, ``det``, ``slogdet``) runs LAPACK's ``getrf`` for several matrices at once from its
thread pool. Once the matrices pass about 150 rows, and more than one thread is allowed, that is
wrong or never returns: pivots below 1 with ``info`` 0, ``lu_solve`` refusing them, a silently
wrong ``slogdet``, or a hang (PyTorch issue #142815; measured here with PyTorch 2.13 and 2
threads at 152 rows and up). One matrix at a time is safe (``getrf`` then threads inside one
factorisation), and so is the batched routine on one thread.

So every batched factorisation of the project comes here. Below 150 rows PyTorch's batched routine
is right with any number of threads (``benchmarks/linalg_threads.py`` checks each size against the
one-threaded factors: right up to 148 rows, wrong from 152) and is used as it is: with 2 threads
it factors 32 float32 matrices of 128 rows in 1.9 ms, against 2.6 ms on one thread, and the
implicit cells factor once per step. From 150 rows on, measured on this 2-core machine with 2
threads (float64, 32 matrices): one matrix at a time is
as fast as or faster than the batched routine on one thread from about 200 rows up (256 rows:
16.7 against 17.6 ms; 384: 50 against 67 ms), and slower below (96 rows: 2.8 against 1.8 ms), so
small systems take the single-threaded batched routine and large ones the loop. The batched
``lu_solve`` is correct with any number of threads, and is used as it is.
"""

from __future__ import annotations

import contextlib
import threading

import torch

__all__ = ["lu_factor", "solve"]

_THREADED_BELOW = 150  # rows: below this PyTorch's batched routine is right with several threads
_ONE_MATRIX_FROM = 192  # rows: from here on, one matrix at a time beats the one-threaded batched routine
_lock = threading.Lock()
_single = {"depth": 0, "threads": None}


@contextlib.contextmanager
def _single_threaded():
    """PyTorch's intra-op pool limited to one thread inside (process-wide, so nested and concurrent
    users share one saved setting: the last to leave restores it)."""
    with _lock:
        if _single["depth"] == 0:
            _single["threads"] = torch.get_num_threads()
            if _single["threads"] != 1:
                torch.set_num_threads(1)
        _single["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _single["depth"] -= 1
            if _single["depth"] == 0 and _single["threads"] != 1:
                torch.set_num_threads(_single["threads"])


def lu_factor(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.lu_factor(M)`` for a batch ``(…, n, n)``, right under any thread count."""
    batched = M.dim() > 2 and M[..., 0, 0].numel() > 1
    if not batched or M.device.type != "cpu" or torch.get_num_threads() == 1 or M.shape[-1] < _THREADED_BELOW:
        return torch.linalg.lu_factor(M)
    if M.shape[-1] < _ONE_MATRIX_FROM:
        with _single_threaded():
            return torch.linalg.lu_factor(M)
    flat = M.reshape(-1, *M.shape[-2:])
    factors, pivots = zip(*(torch.linalg.lu_factor(matrix) for matrix in flat))
    return (torch.stack(factors).reshape(M.shape), torch.stack(pivots).reshape(*M.shape[:-2], M.shape[-1]))


def solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve(A, B)`` for batches, right under any thread count."""
    return torch.linalg.lu_solve(*lu_factor(A), B)
