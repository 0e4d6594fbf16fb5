"""Runge–Kutta steps on tuples of state blocks.

``reference_step`` is the one generic stepper, written straight from the definition
``K_i = f(y + h Σ_j a_ij K_j)``, ``y⁺ = y + h Σ_i b_i K_i`` with dense coefficients. Every
specialised path is tested equal to it. ``ExplicitScheme`` is the specialised stepper of an
explicit tableau: coefficients converted to floats once, zero entries skipped, and stages whose
value is never used by the update (the FSAL stage of Dormand–Prince, say) not evaluated at all.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Blocks = tuple[torch.Tensor, ...]
Field = Callable[[Blocks], Blocks]


def _combine(y: Blocks, h, terms: Sequence[tuple[float, Blocks]]) -> Blocks:
    """``y + h Σ a K`` blockwise; ``h`` is a float or a ``(B, 1)`` tensor."""
    if not terms:
        return y
    out = []
    for index, y_block in enumerate(y):
        acc = None
        for a, K in terms:
            term = K[index] if a == 1.0 else a * K[index]
            acc = term if acc is None else acc + term
        out.append(y_block + h * acc)
    return tuple(out)


def reference_step(A, b, f: Field, y: Blocks, h) -> Blocks:
    """One step of any explicit tableau from its dense float coefficients (the reference)."""
    s = len(b)
    K: list[Blocks] = []
    for i in range(s):
        stage = tuple(y_block + h * sum(float(A[i][j]) * K[j][k] for j in range(i)) if i else y_block
                      for k, y_block in enumerate(y))
        K.append(f(stage))
    return tuple(y_block + h * sum(float(b[i]) * K[i][k] for i in range(s)) for k, y_block in enumerate(y))


class ExplicitScheme:
    """An explicit tableau specialised into a stage program."""

    def __init__(self, tableau):
        if not tableau.is_explicit:
            raise ValueError(f"{tableau.name or 'tableau'} is not explicit")
        A, b, _, _ = tableau.to_numpy()
        s = len(b)
        # Which stages does the update need, directly or through later stages?
        needed = {i for i in range(s) if b[i] != 0}
        for i in reversed(range(s)):
            if i in needed:
                needed |= {j for j in range(i) if A[i, j] != 0}
        self.program = [(i, [(j, float(A[i, j])) for j in range(i) if A[i, j] != 0])
                        for i in range(s) if i in needed]
        self.weights = [(i, float(b[i])) for i in range(s) if b[i] != 0]
        self.evaluations = len(self.program)

    def step(self, f: Field, y: Blocks, h) -> Blocks:
        K: dict[int, Blocks] = {}
        for i, row in self.program:
            K[i] = f(_combine(y, h, [(a, K[j]) for j, a in row]))
        return _combine(y, h, [(w, K[i]) for i, w in self.weights])
