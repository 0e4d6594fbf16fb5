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


class ImplicitSolveError(RuntimeError):
    """The stage equations of an implicit step were not solved to the requested tolerance."""


class ImplicitScheme:
    """An implicit (or diagonally implicit) tableau: the stage equations
    ``K = F(K) := f(y + h (A ⊗ I) K)`` are solved by simplified Newton — the iteration matrix
    ``I − h A ⊗ ∂f/∂y(y)`` is formed from per-sample Jacobians and LU-factored once per step — to
    the relative tolerance ``tol`` (max-norm of the update). Gradients go through the converged
    stages by the implicit function theorem: the backward pass solves
    ``(I − ∂F/∂K)ᵀ w = ∂L/∂K`` with the exact Jacobians at the stage values, and never
    differentiates through the iterations.
    """

    def __init__(self, tableau, tol: float | None = None, max_iterations: int = 50):
        A, b, _, _ = tableau.to_numpy()
        self.A, self.b, self.stages = A, b, len(b)
        self.tol, self.max_iterations = tol, max_iterations
        self.name = tableau.name or "tableau"
        self.evaluations = 0  # field evaluations (stage values) of the last step

    @staticmethod
    def _jacobians(field, context, Y: torch.Tensor, sizes) -> torch.Tensor:
        """Per-sample ``∂f/∂y`` at the rows of ``Y`` ``(N, D)``, with ``context`` rows matching."""
        def single(v, c):
            blocks = tuple(v[None].split(sizes, dim=-1))
            ctx = c[None] if isinstance(c, torch.Tensor) else c
            return torch.cat(field(ctx, blocks), dim=-1)[0]
        return torch.func.vmap(torch.func.jacrev(single))(Y, context)

    def step(self, field, context, y: Blocks, h) -> Blocks:
        sizes = [block.shape[-1] for block in y]
        yf = torch.cat(y, dim=-1)  # (B, D)
        B, D, s = yf.shape[0], yf.shape[1], self.stages
        A = torch.as_tensor(self.A, dtype=yf.dtype, device=yf.device)
        b = torch.as_tensor(self.b, dtype=yf.dtype, device=yf.device)
        hb = (h if isinstance(h, torch.Tensor) else torch.full((B, 1), float(h), dtype=yf.dtype, device=yf.device))
        hb = hb.reshape(B, 1, 1)
        stage_context = context.repeat_interleave(s, dim=0)  # (B·s, …): one row per stage value
        tol = self.tol if self.tol is not None else (1e-12 if yf.dtype == torch.float64 else 1e-5)

        def stage_values(K):  # (B, s, D)
            return yf[:, None, :] + hb * torch.einsum("ij,bjd->bid", A, K)

        def F(K):
            Y = stage_values(K).reshape(B * s, D)
            return torch.cat(field(stage_context, tuple(Y.split(sizes, dim=-1))), dim=-1).reshape(B, s, D)

        eye = torch.eye(s * D, dtype=yf.dtype, device=yf.device)

        def kron(Js):  # Js (B, s, D, D): Jacobian at each stage value → h (a_ij J_i) as (B, sD, sD)
            blocks = hb[..., None, None] * A[None, :, :, None, None] * Js[:, :, None]  # (B, s, s, D, D)
            return blocks.permute(0, 1, 3, 2, 4).reshape(B, s * D, s * D)

        with torch.no_grad():
            J0 = self._jacobians(field, context, yf, sizes)  # (B, D, D) at y
            M = eye - kron(J0[:, None].expand(B, s, D, D))
            lu = torch.linalg.lu_factor(M)
            K = torch.cat(field(context, y), dim=-1)[:, None, :].expand(B, s, D).clone()
            evaluations, error = 1, float("inf")
            for _ in range(self.max_iterations):
                G = K - F(K)
                evaluations += s
                delta = torch.linalg.lu_solve(*lu, -G.reshape(B, s * D, 1)).reshape(B, s, D)
                K = K + delta
                error = (delta.abs().amax() / (1 + K.abs().amax())).item()
                if not torch.isfinite(delta).all():
                    break
                if error <= tol:
                    break
            if not error <= tol:
                raise ImplicitSolveError(
                    f"{self.name}: the stage equations did not converge in {self.max_iterations} simplified-"
                    f"Newton iterations (relative update {error:.2e} > tolerance {tol:.1e}); try a smaller dt "
                    "or more steps")
        self.evaluations = evaluations
        K = K.detach()
        if torch.is_grad_enabled():
            FK = F(K)  # = K at the solution; its graph carries ∂F/∂θ, ∂F/∂y, ∂F/∂x
            if FK.requires_grad:
                Y = stage_values(K).reshape(B * s, D).detach()

                def implicit_gradient(grad):
                    if grad is None:
                        return None
                    Js = self._jacobians(field, stage_context, Y, sizes).reshape(B, s, D, D).detach()
                    system = (eye - kron(Js)).transpose(-1, -2)
                    return torch.linalg.solve(system, grad.reshape(B, s * D, 1)).reshape(B, s, D)

                FK.register_hook(implicit_gradient)
                K = FK
        increment = torch.einsum("i,bid->bd", b, K)
        out = yf + hb[:, :, 0] * increment
        return tuple(out.split(sizes, dim=-1))
