"""Implicit tableaux in the sequence engine.

The stage equations of an implicit step, ``K_i = f(Y_i)`` with ``Y_i = y + h Σ_j a_ij K_j``, are
solved by simplified Newton (the chord method): the iteration matrix is built from the field's
Jacobian ``J₀`` at the step's start, factored, and kept for every iteration and stage that can
use it. Two structures of ``A`` make the systems small (``D × D``, never ``sD × sD``):

- **lower triangular** (DIRK, SDIRK, ESDIRK): stage ``i`` alone is ``K_i = f(base_i + h a_ii K_i)``,
  solved with ``I − h a_ii J₀``; stages with equal diagonal entries (all of an SDIRK's) share one
  factorisation, and an explicit stage (``a_ii = 0``) needs none;
- **diagonalisable** (Gauss, Radau IIA, Lobatto IIIC): with ``A = V Λ V⁻¹`` the coupled iteration
  matrix ``I − h A ⊗ J₀`` becomes one ``I − h λ_k J₀`` per eigenvalue (Hairer & Wanner, *Solving
  ODEs II*, §IV.8); a complex-conjugate pair needs one complex factorisation.

The Jacobian comes from the field's structure, not from D autograd passes: every output unit of an
engine field reads only its own unit of ``pre = y_in Wᵀ + b`` and of the state (the fields'
``elementwise`` contract), so one vector–Jacobian product of the elementwise parts per block gives
``∂f/∂pre`` and ``∂f/∂y`` as diagonals, and ``J = diag(∂f/∂y) + Σ_gates diag(∂f/∂pre_g) W_g``.

The first factorisation a step tries is one for the whole batch: each sample's iteration matrix
``M_b = I − h a J_b`` is approximated by ``diag(d_b) · N̄``, with ``d_b`` its own diagonal and ``N̄``
the batch's mean of ``diag(d_b)⁻¹ M_b``: one ``D × D`` LU whose solves take the batch as
right-hand sides (at B = 32, D = 128: 0.1 ms against 1.9 ms for 32 per-sample LUs, and one solve
instead of a loop of 32). Its chord iteration converges to the same solution, at rate
``ρ(I − P_b⁻¹ M_b)``: for the GRU-ODE field at initialisation about 0.08 at Δ = 1 (0.29 with the
plain mean Jacobian, whose diagonal misses each sample's gates). Where it contracts less than
twofold per iteration, the step factors per sample, as the per-token cell does. Where even that
chord iteration cannot reach the tolerance within its budget at the rate it shows (``J₀`` far from
the stages' Jacobians: a state that moves far within a long step, as a trained stiff cell's does),
the stage goes to Newton–Krylov below, whose Jacobians are the iterate's. Which matrix iterates
changes how many iterations a step takes, never what it converges to: every stage is solved to the
per-token cell's tolerance.

``newton=krylov`` makes no factorisation (``auto``, from a state width of 150, where the shared
factorisation does not converge: per-sample factorisations were measured slower there; every plan,
where its factorisations do not converge): Newton's method with each update from batched GMRES
(:func:`gmres`) on the structured Jacobian–vector products (:meth:`FieldLinearisation.jvp`, one
product with ``W``), the linear solves to ``√tol``; where that does not converge, again with each step
shortened per sample by a line search where it does not decrease that sample's residual (Armijo's
backtracking), and then by continuation in the step (the stage equations at fractions of ``h``,
each solved from the last); the backward solves its transposed systems by GMRES on the
vector–Jacobian products, to ``tol``, with a direct solve where GMRES does not get there.

The backward pass is the implicit function theorem's (the discrete adjoint of the converged step).
With ``μ_j = J(Y_j)ᵀ κ_j``::

    κ_i = h (b_i λ⁺ + Σ_j a_ji μ_j),   λ = λ⁺ + Σ_i μ_i

— the explicit engine's reverse sweep, except that ``j`` runs over every stage, so ``κ`` solves a
linear system with the exact stage Jacobians. It is solved by the forward's own iteration
transposed: Richardson steps preconditioned with the factorisation the forward used (stored, or
rebuilt in ``checkpoint`` mode). Its contraction rate is the forward Newton iteration's
asymptotic rate, so it converges where the forward did; should it not within the iteration budget,
the system is solved directly. The weight gradients are then the explicit engine's: each stage's
``κ`` through the field's vector–Jacobian products, one matrix product with ``W``.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field as dataclass_field

import numpy as np
import torch

from ._linalg import lu_factor, solve as linear_solve
from ._newton import largest_magnitudes, newton_with_fallbacks, relative_update
from ._stepping import ImplicitSolveError

__all__ = ["FieldLinearisation", "ImplicitTokenProgram", "StageFacts", "gmres", "newton_plan", "stage_facts",
           "stage_structure", "structured_jacobian"]

# the batch-shared factorisation gets this many iterations (while it contracts at least twofold
# per iteration) before one is made per sample
_SHARED_ITERATIONS = 40
_SLOW_RATE = 0.5  # ... or until the update shrinks by less than this per iteration
# the shared matrix N̄ is kept for the next steps (each with its own diagonal) until a solve with it
# contracts more slowly than this per iteration: then the next step builds it afresh. A rebuild
# (the structured Jacobian's mean and N̄⁻¹) costs about three chord iterations; at this rate a
# step needs about two iterations more than at the 0.02–0.05 of a fresh one (docs/speed.md)
_REFRESH_RATE = 0.2
# the per-sample chord iteration hands over to Newton–Krylov once, at the rate measured after this
# many iterations, it cannot reach the tolerance within its budget (J₀ is far from the stages'
# Jacobians: a state that moves far within the step, as a trained stiff cell's does)
_RATE_AFTER = 3
_KRYLOV_ITERATIONS = 60  # GMRES iterations per linear solve at most (no restarts)
# how Newton–Krylov's updates are solved, each way with every try of odernn._newton before the next:
# GMRES (matrix-free, inexact, at most _KRYLOV_ITERATIONS), then LU of the operator assembled column
# by column (N products a matrix: paid only where GMRES's updates stall, as they did at the seeds
# study's SDIRK stop with 257 units, docs/results.md §9, and exact Newton converged)
NEWTON_UPDATES = ("gmres", "lu")
# a lower-triangular step whose stage the tries do not solve stage by stage is solved all stages at
# once (continuation in the whole step: :meth:`ImplicitTokenProgram._whole_step`); False replays the
# engine before that fallback (benchmarks/implicit_failure.py)
WHOLE_STEP = True
_LU_ELEMENTS = 2 ** 26  # B·N² at most for the LU updates' matrices (256 MiB in float32): a last resort must not exhaust memory
_KRYLOV_FROM = 150  # state width D from which newton=auto solves matrix-free (measured: docs/speed.md)


def newton_plan(cell, choice: str | None = None) -> tuple[tuple[str, ...], bool]:
    """``(the chord factorisations a step tries in order, whether Newton–Krylov follows)`` for the
    cell's ``newton=`` (or ``choice``): ``dense`` tries the batch-shared factorisation, then one
    per sample, then Newton–Krylov where neither converges; ``krylov`` factors nothing; ``auto``
    (the default) is ``dense`` below a state width of ``_KRYLOV_FROM`` and the shared
    factorisation then Newton–Krylov from there, where Krylov iterations (``D²``) were measured
    faster than per-sample factorisations (``D³``)."""
    choice = choice or getattr(cell.scheme, "newton", "auto")  # (a cell pickled before the option: auto)
    if choice == "krylov":
        return (), True
    if choice == "dense" or sum(cell.field.block_sizes) < _KRYLOV_FROM:
        return ("shared", "samples"), True
    return ("shared",), True


def stage_structure(tableau) -> str | None:
    """``"lower"`` (stage by stage), ``"eigen"`` (A diagonalisable, well conditioned) or ``None``
    (the engine cannot decouple it; it runs token by token)."""
    if tableau.is_explicit:
        return None
    s = tableau.stages
    if all(tableau.A[i, j] == 0 for i in range(s) for j in range(i + 1, s)):
        return "lower"
    A = tableau.to_numpy()[0]
    values, vectors = np.linalg.eig(A)
    distinct = all(abs(values[i] - values[j]) > 1e-8 for i in range(s) for j in range(i))
    return "eigen" if distinct and np.linalg.cond(vectors) < 1e6 else None


@dataclass(frozen=True)
class StageFacts:
    """What the engine derives from an implicit tableau, once: its coefficients as floats, how its
    stage equations decouple, and for ``"eigen"`` the eigenvalues of ``A`` (a conjugate pair: the
    one with ``Im λ > 0`` first solved, its partner conjugated), ``V`` and ``V⁻¹``."""
    A: list
    b: list
    structure: str | None
    eigenvalues: np.ndarray | None = None
    V: np.ndarray | None = None
    V_inv: np.ndarray | None = None
    partner: dict = dataclass_field(default_factory=dict)  # index -> the index of its conjugate

    @property
    def solved(self) -> list[int]:
        return [k for k in range(len(self.b)) if k not in self.partner]


def stage_facts(cell) -> StageFacts:
    """:class:`StageFacts` of the cell's implicit tableau, derived once per scheme (the tableau is fixed)."""
    scheme = cell.scheme
    if "_stage_facts" not in scheme.__dict__:
        A = [[float(a) for a in row] for row in scheme.A]
        b = [float(v) for v in scheme.b]
        structure = stage_structure(cell.tableau)
        if structure != "eigen":
            scheme._stage_facts = StageFacts(A, b, structure)
        else:
            values, V = np.linalg.eig(np.asarray(A, dtype=np.float64))
            order = np.argsort(values.imag)
            values, V = values[order], V[:, order]
            partner = {k: int(np.argmin(np.abs(values - lam.conj()))) for k, lam in enumerate(values) if lam.imag < -1e-12}
            scheme._stage_facts = StageFacts(A, b, structure, values, V, np.linalg.inv(V), partner)
    return scheme._stage_facts


class FieldLinearisation:
    """An engine field's Jacobian at rows of states, factored: the direct ``∂f_k/∂y_k2`` diagonals
    and the per-gate ``∂f_k/∂pre_g`` diagonals, from one vector–Jacobian product per block (unit
    ``j`` of an engine field reads only unit ``j`` of ``pre = y_in Wᵀ + b`` and of the blocks).
    Then ``J = diag(∂f/∂y) + Σ_gates diag(∂f/∂pre_g) W_g``: as a matrix (:meth:`matrix`), or
    applied to vectors with one product with ``W`` (:meth:`jvp`, :meth:`vjp`: matrix-free)."""

    def __init__(self, field, act, Y: tuple, W):
        self.field, self.W = field, W
        self.sizes, self.batch = [block.shape[-1] for block in Y], Y[0].shape[0]
        G, self.R = W.shape
        self.H = self.sizes[field.recurrent_blocks[0]]
        self.n_gates = G // self.H
        # per output block k: {k2: ∂f_k/∂y_k2 (B, H)}, ∂f_k/∂pre (B, gates, H) and ∂f_k/∂context
        # (B, context gates, H), the last two None where f_k reads no activation
        self.direct, self.gates, self.contexts = [], [], []
        for k in range(len(Y)):
            grads, grad_act = field.derivative_vjp(act, Y, (torch.ones_like(Y[k]),), (k,))
            self.direct.append({k2: g for k2, g in enumerate(grads) if g is not None})
            gate = context = None
            if act is not None and grad_act is not None and any(g is not None for g in grad_act):
                context, gate = field.activate_vjp(act, grad_act)
                gate = gate.reshape(-1, self.n_gates, self.H)
                context = None if context is None else context.reshape(context.shape[0], -1, self.H)
            self.gates.append(gate)
            self.contexts.append(context)
        self.recurrent = list(itertools.accumulate([self.sizes[k] for k in field.recurrent_blocks], initial=0))

    def diagonal(self) -> torch.Tensor:
        """The diagonal of ``∂f/∂y``, ``(B, D)``, without the matrix."""
        gates = self.W.reshape(self.n_gates, self.H, self.R)
        out = []
        for k, size in enumerate(self.sizes):
            total = self.direct[k].get(k)
            if self.gates[k] is not None and k in self.field.recurrent_blocks:
                slot = self.field.recurrent_blocks.index(k)
                own = gates[..., self.recurrent[slot]:self.recurrent[slot + 1]].diagonal(dim1=-2, dim2=-1)  # (gates, H)
                term = (self.gates[k] * own).sum(dim=1)
                total = term if total is None else total + term
            out.append(self.W.new_zeros(self.batch, size) if total is None else total)
        return _joined(out)

    def matrix(self, mean: bool = False, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``∂f/∂y`` ``(B, D, D)``; with ``mean``, the batch's mean of ``diag(rows_b) ∂f/∂y_b``
        ``(D, D)`` (``rows`` ``(B, D)``, default ones): the diagonals scaled and averaged before
        the one product with ``W``, in which ``J`` is linear."""
        if mean:
            averaged = copy.copy(self)
            offsets = list(itertools.accumulate(self.sizes, initial=0))
            weight = [None if rows is None else rows[:, offsets[k]:offsets[k + 1]] for k in range(len(self.sizes))]
            averaged.direct = [{k2: (g if w is None else g * w).mean(dim=0, keepdim=True) for k2, g in d.items()}
                               for d, w in zip(self.direct, weight)]
            averaged.gates = [None if g is None else (g if w is None else g * w[:, None, :]).mean(dim=0, keepdim=True)
                              for g, w in zip(self.gates, weight)]
            return averaged.matrix()[0]
        field, Y_rows = self.field, len(self.sizes)
        gates = self.W.reshape(self.n_gates, self.H, self.R)
        rows = []
        for k in range(Y_rows):
            columns = [None] * Y_rows
            gate = self.gates[k]
            if gate is not None:
                block = gate[:, 0, :, None] * gates[0]  # Σ_g diag(∂f/∂pre_g) W_g, one product per gate
                for g in range(1, self.n_gates):
                    block.addcmul_(gate[:, g, :, None], gates[g])
                for slot, k2 in enumerate(field.recurrent_blocks):
                    columns[k2] = block[..., self.recurrent[slot]:self.recurrent[slot + 1]]
            for k2, g in self.direct[k].items():
                if columns[k2] is None:
                    columns[k2] = g.new_zeros(g.shape[0], self.sizes[k], self.sizes[k2])
                columns[k2].diagonal(dim1=-2, dim2=-1).add_(g)
            reference = next(iter(self.direct[k].values()), None)
            reference = reference if reference is not None else gate
            rows.append([c if c is not None else reference.new_zeros(reference.shape[0], self.sizes[k], self.sizes[k2])
                         for k2, c in enumerate(columns)])
        if Y_rows == 1:
            return rows[0][0]
        return torch.cat([torch.cat(row, dim=-1) for row in rows], dim=-2)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """``J v`` for ``v`` ``(B, D)``: one product with ``W``."""
        field = self.field
        blocks = v.split(self.sizes, dim=-1)
        pre = None
        out = []
        for k in range(len(self.sizes)):
            total = None
            if self.gates[k] is not None:
                if pre is None:
                    y_in = blocks[field.recurrent_blocks[0]] if len(field.recurrent_blocks) == 1 else torch.cat(
                        [blocks[j] for j in field.recurrent_blocks], dim=-1)
                    pre = (y_in @ self.W.T).reshape(-1, self.n_gates, self.H)
                total = (self.gates[k] * pre).sum(dim=1)
            for k2, g in self.direct[k].items():
                total = g * blocks[k2] if total is None else torch.addcmul(total, g, blocks[k2])
            out.append(torch.zeros_like(blocks[k]) if total is None else total)
        return _joined(out)

    def vjp(self, u: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """``base + Jᵀ u`` for ``u`` ``(B, D)`` (``base`` zero by default): one product with ``W``."""
        return self._pullback(u, base)[0]

    def pullback(self, u: torch.Tensor, y_in: torch.Tensor, weight_grad) -> tuple:
        """``(Jᵀ u, ∂⟨u, f⟩/∂context)``, with ``∂⟨u, f⟩/∂W`` and ``/∂b`` added to ``weight_grad`` at
        the recurrent input ``y_in`` the linearisation was taken at: a stage's whole vector–Jacobian
        product from the diagonals, without the field's own reverse functions."""
        out, g_pre, blocks = self._pullback(u, None)
        if g_pre is not None:
            weight_grad.add(g_pre, y_in)
        g_context = None
        for k, context in enumerate(self.contexts):
            if context is not None:
                term = (context * blocks[k].unsqueeze(1)).reshape(context.shape[0], -1)
                g_context = term if g_context is None else g_context + term
        return out, g_context

    def scaled(self, c) -> "FieldLinearisation":
        """The linearisation of ``c·f`` (``c`` a number or a per-sample ``(B, 1)``), for operators
        ``I − c·J`` applied many times: the scaling once, not per application."""
        out = copy.copy(self)
        c3 = c.unsqueeze(-1) if isinstance(c, torch.Tensor) else c
        out.direct = [{k2: c * g for k2, g in d.items()} for d in self.direct]
        out.gates = [None if g is None else c3 * g for g in self.gates]
        out.contexts = [None] * len(self.contexts)
        return out

    def _pullback(self, u, base):
        """``(base + Jᵀ u, the preactivations' gradient (B, G) or None, u's blocks)``."""
        field = self.field
        single = len(self.sizes) == 1
        blocks = (u,) if single else u.split(self.sizes, dim=-1)
        out = [None] * len(self.sizes) if base is None else ([base] if single else list(base.split(self.sizes, dim=-1)))
        g_pre = None
        for k, gate in enumerate(self.gates):
            if gate is not None:
                term = gate * blocks[k].unsqueeze(1)
                g_pre = term if g_pre is None else g_pre + term
            for k2, g in self.direct[k].items():
                out[k2] = g * blocks[k] if out[k2] is None else torch.addcmul(out[k2], g, blocks[k])
        if g_pre is not None:
            g_pre = g_pre.reshape(g_pre.shape[0], -1)
            if len(field.recurrent_blocks) == 1:  # straight into the block's sum: one addmm
                k2 = field.recurrent_blocks[0]
                out[k2] = g_pre @ self.W if out[k2] is None else torch.addmm(out[k2], g_pre, self.W)
            else:
                g_in = g_pre @ self.W
                for slot, k2 in enumerate(field.recurrent_blocks):
                    part = g_in[:, self.recurrent[slot]:self.recurrent[slot + 1]]
                    out[k2] = part if out[k2] is None else out[k2] + part
        out = [torch.zeros_like(b) if o is None else o for o, b in zip(out, blocks)]
        return _joined(out), g_pre, blocks


def structured_jacobian(field, act, Y: tuple, W) -> torch.Tensor:
    """``∂f/∂y`` ``(B, D, D)`` at the state blocks ``Y`` with the activations ``act`` computed there
    (``W`` the field's recurrent matrix): :class:`FieldLinearisation` as a matrix."""
    return FieldLinearisation(field, act, Y, W).matrix()


def assembled(apply, rows: torch.Tensor) -> torch.Tensor:
    """The matrices ``(B, N, N)`` of the linear operator ``apply`` on rows like ``rows`` ``(B, N)``
    (each row its own matrix), one product per column."""
    B, N = rows.shape
    unit = torch.eye(N, dtype=rows.dtype, device=rows.device)
    return torch.stack([apply(unit[j].expand(B, N).contiguous()) for j in range(N)], dim=-1)


def gmres(apply, rhs: torch.Tensor, rtol: float, max_iterations: int) -> tuple[torch.Tensor, float]:
    """``x`` with ``apply(x) ≈ rhs`` for every row of ``rhs`` ``(B, N)`` at once (batched GMRES from
    ``x = 0``, classical Gram–Schmidt applied twice); stops when every row's residual is below
    ``rtol`` of its right-hand side. The small least-squares problem is solved from the third
    iteration on (few solves converge sooner, and each check costs about half an iteration). Returns
    ``(x, the largest relative residual)``."""
    B, N = rhs.shape
    tiny = torch.finfo(rhs.dtype).tiny
    beta = rhs.norm(dim=1)
    scale = beta.clamp_min(tiny)
    basis = rhs.new_empty(B, max_iterations + 1, N)
    basis[:, 0] = rhs / scale[:, None]
    hessenberg = rhs.new_zeros(B, max_iterations + 1, max_iterations)
    e1 = rhs.new_zeros(B, max_iterations + 1, 1)
    e1[:, 0, 0] = beta
    y, residual = None, float("inf")
    for j in range(max_iterations):
        w = apply(basis[:, j])
        V = basis[:, :j + 1]
        h = torch.bmm(V, w[..., None])
        w = w - torch.bmm(h.transpose(1, 2), V)[:, 0]
        again = torch.bmm(V, w[..., None])
        w = w - torch.bmm(again.transpose(1, 2), V)[:, 0]
        norm = w.norm(dim=1)
        hessenberg[:, :j + 1, j] = (h + again)[..., 0]
        hessenberg[:, j + 1, j] = norm
        basis[:, j + 1] = w / norm.clamp_min(tiny)[:, None]
        if j < 2 and j + 1 < max_iterations:
            continue
        # the (j+2) × (j+1) least-squares problem in float64: by its normal equations where the
        # tolerance allows (a LAPACK least-squares call costs three times as much here), by QR
        # where it is tight (the normal equations square H's condition number)
        Hj, ej = hessenberg[:, :j + 2, :j + 1].double(), e1[:, :j + 2].double()
        if rtol < 1e-8:
            y = torch.linalg.lstsq(Hj, ej, driver="gels").solution
        else:
            Ht = Hj.transpose(1, 2)
            normal = Ht @ Hj
            # a row whose Krylov space is exhausted (a zero column: its solution is already in the
            # span) makes the system singular; a ridge at round-off size leaves the others as they are
            ridge = 1e-14 * normal.diagonal(dim1=-2, dim2=-1).amax(dim=-1) + 1e-30
            y = torch.linalg.solve(normal + ridge[:, None, None] * torch.eye(j + 1, dtype=normal.dtype,
                                                                             device=normal.device), Ht @ ej)
        residual = ((ej - Hj @ y)[..., 0].norm(dim=1) / scale.double()).max().item()
        y = y.to(rhs.dtype)
        if residual <= rtol or not residual == residual:
            break
    return torch.bmm(y.transpose(1, 2), basis[:, :y.shape[1]])[:, 0], residual


@dataclass
class _Stage:
    Y: tuple  # the stage value's blocks at the solution
    act: tuple | None
    y_in: torch.Tensor | None
    K: torch.Tensor  # f(Y), concatenated (B, D)


@dataclass
class _StepTape:
    stages: list = dataclass_field(default_factory=list)
    factors: dict = dataclass_field(default_factory=dict)  # key -> the factorisation the forward iterated with


class _Factorisation:
    """``M = I − h·scale·J`` made ready to solve with: ``LU(M)`` per sample (``(B, D, D)``), or, for
    the whole batch, ``M_b ≈ diag(d_b) · N̄`` with ``d_b`` each sample's own diagonal of ``M_b``
    and ``N̄`` the batch's mean of ``diag(d_b)⁻¹ M_b`` (``(D, D)``), kept as ``N̄⁻¹``: its solves
    are then one matrix product with the batch as rows (about 18 µs at B = 32, D = 128, against
    43 µs for ``lu_solve``, and a chord iteration takes several). The inverse's rounding only
    changes how fast the iterations it preconditions converge, not where to. Complex for a
    complex eigenvalue. Solves take and give ``(B, D)``."""

    stale = False  # a shared N̄ kept from an earlier step (see ImplicitTokenProgram.kept)

    def __init__(self, M: torch.Tensor, rows: torch.Tensor | None = None, scale=None):
        self.shared, self.scale = M.dim() == 2, scale
        self.rows = rows  # shared: the factorisation is of diag(rows_b) · M, per sample b
        if self.shared:
            self.inverse = torch.linalg.inv(M)
            self.inverse_T = self.inverse.T.contiguous()  # a product with a contiguous matrix: 11.7 against 16 µs
        else:
            self.LU, self.pivots = lu_factor(M)
        self.complex, self.dtype = M.is_complex(), M.dtype

    def _rhs(self, G):
        return G.to(self.dtype) if self.complex else G.real if G.is_complex() else G

    def kept_for(self, rows: torch.Tensor) -> "_Factorisation":
        """This shared ``N̄⁻¹`` with another step's diagonals ``rows``."""
        kept = copy.copy(self)
        kept.rows, kept.stale = rows, True
        return kept

    def solve(self, G: torch.Tensor) -> torch.Tensor:
        G = self._rhs(G)
        if self.shared:  # row b: N̄⁻¹ diag(d_b)⁻¹ g_b
            return torch.mm(G / self.rows, self.inverse_T)
        return torch.linalg.lu_solve(self.LU, self.pivots, G[..., None])[..., 0]

    def solve_transposed(self, G: torch.Tensor) -> torch.Tensor:
        """``Mᵀ x = G`` (a plain transpose, also for a complex ``M``)."""
        G = self._rhs(G)
        if self.shared:  # row b: diag(d_b)⁻¹ N̄⁻ᵀ g_b
            return (G @ self.inverse) / self.rows
        # lu_solve's ``adjoint`` conjugates, so a complex M is conjugated around it
        G = G.conj() if self.complex else G
        x = torch.linalg.lu_solve(self.LU, self.pivots, G[..., None], adjoint=True)[..., 0]
        return x.conj() if self.complex else x


class ImplicitTokenProgram:
    """One token of an implicit cell in the engine, with the interface of the explicit
    ``TokenProgram`` (``token``, ``token_reverse``), so that ``_Sequence`` runs and differentiates
    it alike. ``shared=False`` skips the batch-shared factorisation and factors per sample at once."""

    compiled = False
    second_order = False  # the implicit function theorem's gradient is first order
    taped_differently = True  # a recorded step takes F(K) at its solution, up to the tolerance from K

    def __init__(self, cell, shared: bool = True, solver: str | None = None):
        scheme, field = cell.scheme, cell.field
        self.field = field
        self.name, self.steps = scheme.name, cell.steps
        self.facts = facts = stage_facts(cell)
        self.A, self.b, self.s, self.structure = facts.A, facts.b, len(facts.b), facts.structure
        self.tol, self.max_iterations = scheme.tol, scheme.max_iterations
        self.blocks = tuple(range(field.blocks))
        self.chord, self.krylov = newton_plan(cell, solver)
        if not shared:
            self.chord = tuple(kind for kind in self.chord if kind != "shared")
        self.made = {"shared": 0, "kept": 0, "samples": 0}  # factorisations made or reused (profile, tests)
        self.kept = {}  # scale -> the shared factorisation the next steps start from
        self.evaluations = 0  # of the last token

    @staticmethod
    def eager(program):
        return program

    def carried(self) -> dict:
        """What a token's solve takes from the tokens before it: the batch-shared factorisations
        it starts from (``kept``; each is replaced, never changed, so a copy of the dict keeps them)."""
        return dict(self.kept)

    def carry(self, state: dict) -> None:
        self.kept = dict(state)

    # -- the field through its structure ---------------------------------------------------------
    def _evaluate(self, context, Yf, sizes, W, b):
        """``(f(Y) (N, D), act, y_in, Y blocks)`` at the rows ``Yf`` ``(N, D)``."""
        field = self.field
        Y = tuple(Yf.split(sizes, dim=-1)) if len(sizes) > 1 else (Yf,)
        y_in = field.recurrent_input(Y)
        act = field.activate(context, field.preactivation(context, y_in, W, b))
        K = field.derivative(act, Y, self.blocks)
        return _joined(K), act, y_in, Y

    def _tolerance(self, dtype):
        return self.tol if self.tol is not None else (1e-12 if dtype == torch.float64 else 1e-5)

    # -- forward -----------------------------------------------------------------------------------
    def token(self, y: tuple, context, h, W, b, tape=None, keep_K: bool = False) -> tuple:
        evaluations = 0
        for _ in range(self.steps):
            step_tape = _StepTape() if tape is not None else None
            y, count = self._step(y, context, h, W, b, step_tape)
            evaluations += count
            if tape is not None:
                tape.substeps.append(step_tape)
        self.evaluations = evaluations
        return y

    def _step(self, y, context, h, W, b, tape):
        sizes = [block.shape[-1] for block in y]
        yf = _joined(y)
        f0, act0, _, _ = self._evaluate(context, yf, sizes, W, b)
        # J₀ at the step's start, as the per-token cell takes it; its matrices are made when needed
        start = {"linear": None, "samples": None, "diagonal": None, "y": y, "act": act0, "factors": {}}
        solve = self._lower if self.structure == "lower" else self._coupled
        K, count = solve(yf, f0, start, context, h, W, b, sizes, tape)
        out = yf
        for bi, Ki in zip(self.b, K):
            if bi != 0:
                out = _axpy(out, h * bi, Ki)
        return tuple(out.split(sizes, dim=-1)), count + 1

    def _iteration_matrix(self, start, W, h, scale, kind: str) -> _Factorisation:
        """``I − h·scale·J₀`` factored, per sample or (``kind="shared"``) once for the batch (see
        :class:`_Factorisation`); made once per step for each ``scale`` and kind."""
        key = ("shared" if kind == "fresh" else kind, scale)
        if key not in start["factors"] or kind == "fresh":
            if start["linear"] is None:
                start["linear"] = FieldLinearisation(self.field, start["act"], start["y"], W)
            linear = start["linear"]
            complex_scale = isinstance(scale, complex) and scale.imag != 0
            c = scale if complex_scale else float(scale.real if isinstance(scale, complex) else scale)
            if kind != "samples":
                # each sample's diagonal exactly, the rest averaged: M_b ≈ diag(d_b) N̄ with
                # d_b = 1 − h_b c diag(J_b) and N̄ = mean_b diag(d_b)⁻¹ (I − h_b c J_b); N̄ from an
                # earlier step while that serves ("fresh": made anew), d_b always this step's
                if start["diagonal"] is None:
                    start["diagonal"] = linear.diagonal()
                d = 1 - (h * c) * start["diagonal"]  # h: a float, or (B, 1) per sample
                if kind == "shared" and scale in self.kept:
                    start["factors"][key] = self.kept[scale].kept_for(d)
                    self.made["kept"] += 1
                    return start["factors"][key]
                M = -linear.matrix(mean=True, rows=(h * c) / d)
                M.diagonal().add_((1 / d).mean(dim=0))
                start["factors"][key] = self.kept[scale] = _Factorisation(M, rows=d, scale=scale)
                kind = "shared"
            else:
                if start["samples"] is None:
                    start["samples"] = linear.matrix()
                J = start["samples"]
                hs = h.reshape(-1, 1, 1) if isinstance(h, torch.Tensor) else h
                M = -(hs * c) * (J.to(torch.promote_types(J.dtype, torch.complex64)) if complex_scale else J)
                M.diagonal(dim1=-2, dim2=-1).add_(1)
                start["factors"][key] = _Factorisation(M)
            self.made[kind] += 1
        return start["factors"][key]

    def _iterate(self, residual_of, K, make, solve, tol, per_iteration: int):
        """Chord iterations ``K ← K + P⁻¹ (F(K) − K)`` with each of ``self.chord``'s factorisations in
        turn (``make(kind)``): the batch-shared one (cheap: the batch is its right-hand sides) while
        it contracts at least twofold per iteration, then one per sample, to the tolerance (or,
        where Newton–Krylov follows, until its rate shows it cannot get there in its budget).
        ``(K, the factorisation, field evaluations, the last relative update)``; ``K`` is ``None``
        where none converged."""
        evaluations, error = 0, float("inf")
        kinds = list(self.chord)
        while kinds:
            kind = kinds.pop(0)
            factors = make(kind)
            shared = kind != "samples"
            budget = _SHARED_ITERATIONS if shared else self.max_iterations
            trial, previous, slowest = K, None, 0.0
            for iteration in range(1, budget + 1):
                delta = solve(factors, residual_of(trial))
                evaluations += per_iteration
                trial = trial + delta
                error = relative_update(delta, trial)
                if error <= tol or not error == error:
                    break
                if previous is not None:
                    rate = error / previous
                    slowest = max(slowest, rate)
                    if shared and slowest > _SLOW_RATE:
                        break  # the batch's Jacobians differ too much for one matrix
                    if (not shared and self.krylov and iteration >= _RATE_AFTER
                            and (rate >= 1 or error * rate ** (budget - iteration) > tol)):
                        break  # J₀ is too far from the stages' Jacobians to get there: Newton–Krylov
                previous = error
            if shared and (slowest > _REFRESH_RATE or not error <= tol):
                for kept in _factorisations(factors):  # the next step (or this one, below) builds it afresh
                    self.kept.pop(kept.scale, None)
            if error <= tol:
                return trial, factors, evaluations, error
            if shared and any(f.stale for f in _factorisations(factors)):
                kinds.insert(0, "fresh")  # kept from an earlier step: this step's own before per-sample ones
        return None, None, evaluations, error

    def _solve_stages(self, residual_of, system, K, make, solve, tol, per_iteration: int):
        """The chord iterations of ``self.chord``, then Newton–Krylov where the plan has it:
        ``(K, the factorisation the backward is to use or None for GMRES, field evaluations)``."""
        solved, factors, evaluations, error = self._iterate(residual_of, K, make, solve, tol, per_iteration)
        if solved is not None:
            return solved, factors, evaluations
        if not self.krylov:
            raise ImplicitSolveError(
                f"{self.name}: the stage equations did not converge in {self.max_iterations} simplified-"
                f"Newton iterations (relative update {error:.2e} > tolerance {tol:.1e}); try a smaller dt "
                "or more steps")
        try:
            solved, more = self._newton_krylov(system, K, tol, per_iteration)
        except ImplicitSolveError as err:
            err.evaluations = evaluations + err.evaluations  # what the tries cost, for a caller that goes on
            raise
        return solved, None, evaluations + more

    def _newton_krylov(self, system, K, tol, per_iteration: int = 1, how: str = ""):
        """``K`` with ``F(K) = K`` by Newton's method and its fallbacks (``odernn._newton``), each
        update from ``(residual, apply) = system(K)`` by GMRES with Jacobian–vector products
        (matrix-free: no factorisation) to ``√tol`` (at least 1e-2), so that Newton converges by
        that factor or faster per iteration; where that does not converge, each update by LU
        (:data:`NEWTON_UPDATES`)."""
        eta = min(1e-2, max(tol ** 0.5, tol))
        width = min(_KRYLOV_ITERATIONS, K.shape[-1])
        updates = {"gmres": (lambda apply, G: gmres(apply, G, eta, width)[0], eta),
                   "lu": (lambda apply, G: linear_solve(assembled(apply, G), G[..., None])[..., 0], 0.0)}
        ways = [way for way in NEWTON_UPDATES if way != "lu" or K.shape[0] * K.shape[-1] ** 2 <= _LU_ELEMENTS]
        solved, evaluations = None, 0
        for name in ways:
            solved, more, error = newton_with_fallbacks(system, K, tol, self.max_iterations, *updates[name])
            evaluations += more
            if solved is not None:
                break
        if solved is None:
            failure = ImplicitSolveError(
                f"{self.name}: the stage equations did not converge{' ' + how if how else ''} in "
                f"{self.max_iterations} Newton "
                f"iterations, with or without a line search or continuation in the step, their linear "
                f"systems solved by {' or by '.join(map(str.upper, ways))} (relative update "
                f"{error:.2e} > tolerance {tol:.1e}); "
                f"try a smaller dt or more steps")
            failure.evaluations = evaluations * per_iteration
            raise failure
        return solved, evaluations * per_iteration

    def _lower(self, yf, f0, start, context, h, W, b, sizes, tape):
        """Stage by stage (``A`` lower triangular)."""
        tol = self._tolerance(yf.dtype)
        K, evaluations, recording = [], 0, tape is not None or torch.is_grad_enabled()
        for i in range(self.s):
            base = yf
            terms = [(a, K[j]) for j, a in enumerate(self.A[i][:i]) if a != 0]
            if terms:
                base = yf + h * sum(a * Kj for a, Kj in terms)
            a = self.A[i][i]
            if a == 0:
                Ki = f0 if not terms else self._evaluate(context, base, sizes, W, b)[0]
                evaluations += 1 if terms else 0
            else:
                last = {}  # the last evaluation: within the tolerance of the solution, it is the stage's record

                def residual(Kt, base=base, a=a, last=last):
                    last["evaluation"] = self._evaluate(context, _axpy(base, h * a, Kt), sizes, W, b)
                    return last["evaluation"][0] - Kt

                def system(Kt, tau=1, base=base, a=a, last=last):  # tau < 1: the continuation's h·tau
                    ha = h * a if tau == 1 else h * a * tau
                    last["evaluation"] = F, act, _, Y = self._evaluate(context, _axpy(base, ha, Kt), sizes, W, b)
                    linear = FieldLinearisation(self.field, act, Y, W)
                    return F - Kt, lambda v: v - ha * linear.jvp(v)
                guess = K[-1] if K else f0
                if not terms and self.chord and self.chord[0] == "shared":
                    # from the step's start, the linearly implicit predictor (I − h a J₀)⁻¹ f(y):
                    # exact for a linear field, and one solve with the factorisation the stage needs
                    guess = self._iteration_matrix(start, W, h, a, "shared").solve(f0)
                try:
                    Ki, factors, count = self._solve_stages(
                        residual, system, guess, lambda kind, a=a: self._iteration_matrix(start, W, h, a, kind),
                        lambda factors, G: factors.solve(G), tol, 1)
                except ImplicitSolveError as err:
                    if not (self.krylov and WHOLE_STEP):
                        raise
                    return self._whole_step(yf, f0, context, h, W, b, sizes, tape,
                                            evaluations + err.evaluations)
                evaluations += count
                if tape is not None:
                    tape.factors[a] = factors
                base = base + (h * a) * Ki
            if recording:  # the stage derivative at the solution, as the per-token cell takes it: F(K)
                if a != 0:  # at the last iterate evaluated, which the last update moved by less than the tolerance
                    Ki, act, y_in, Y = last["evaluation"]
                elif not terms:  # the step's start, evaluated already
                    Y = start["y"]
                    Ki, act, y_in = f0, start["act"], self.field.recurrent_input(Y)
                else:
                    Ki, act, y_in, Y = self._evaluate(context, base, sizes, W, b)
                    evaluations += 1
                if tape is not None:
                    tape.stages.append(_Stage(Y, act, y_in, Ki))
            K.append(Ki)
        return K, evaluations

    def _stacked(self, yf, context, h, W, b, sizes):
        """The step's stage equations, all stages at once: ``(values, stage_context, residual,
        system)``. ``values(K)`` are the stage values ``(B, s, D)``, ``residual(K)`` is ``F(K) − K``
        and ``system(K, tau)`` the residual of the stacked stages ``(B, s·D)`` with its operator
        ``I − ∂F/∂K`` for Newton–Krylov, of the step ``tau·h``: continuation there scales every
        stage's step, so its ``τ → 0`` is the explicit limit, every stage ``f(y)``."""
        s, (B, D) = self.s, yf.shape
        A = torch.as_tensor(self.A, dtype=yf.dtype, device=yf.device)
        hb = h.reshape(B, 1, 1) if isinstance(h, torch.Tensor) else h
        stage_context = context.repeat_interleave(s, dim=0)

        def values(K):
            return yf[:, None, :] + hb * torch.einsum("ij,bjd->bid", A, K)

        def residual(K):
            F = self._evaluate(stage_context, values(K).reshape(B * s, D), sizes, W, b)[0]
            return F.reshape(B, s, D) - K

        def system(Kt, tau=1):
            step = hb if tau == 1 else hb * tau
            Yf = (yf[:, None, :] + step * torch.einsum("ij,bjd->bid", A, Kt.reshape(B, s, D))).reshape(B * s, D)
            F, act, _, Y = self._evaluate(stage_context, Yf, sizes, W, b)
            linear = FieldLinearisation(self.field, act, Y, W)

            def apply(v):  # stage i: v_i − h J_i Σ_j a_ij v_j, with J_i the field's Jacobian at stage i's value
                combined = torch.einsum("ij,bjd->bid", A, v.reshape(B, s, D)).reshape(B * s, D)
                return v - (step * linear.jvp(combined).reshape(B, s, D)).reshape(B, s * D)
            return F.reshape(B, s * D) - Kt, apply
        return values, stage_context, residual, system

    def _whole_step(self, yf, f0, context, h, W, b, sizes, tape, evaluations):
        """A lower-triangular step one of whose stages the tries did not solve with the stages before it
        held at their solutions (continuation in that stage's own ``h·a_ii``): all its stages at once
        by Newton–Krylov, whose continuation is in the whole step, as the per-token cell's is. The
        two homotopies differ: at the stops of the seeds study's SDIRK GRU-ODE, one stage's
        equations alone fold (turn back in ``τ`` before ``h``) where the whole step's branch reaches
        ``h`` without a fold, or past a pair of them below it (docs/results.md §9)."""
        s, (B, D) = self.s, yf.shape
        values, stage_context, _, system = self._stacked(yf, context, h, W, b, sizes)
        K0 = f0[:, None, :].expand(B, s, D).reshape(B, s * D)
        K, more = self._newton_krylov(system, K0, self._tolerance(yf.dtype), s, "stage by stage or all at once")
        if tape is not None:  # recorded anew; the backward solves matrix-free, as after any Newton–Krylov solve
            tape.stages.clear()
            tape.factors.clear()
        return self._coupled_record(K.reshape(B, s, D), values, stage_context, sizes, W, b, tape, evaluations + more)

    def _coupled(self, yf, f0, start, context, h, W, b, sizes, tape):
        """All stages at once (``A = V Λ V⁻¹``), one system per eigenvalue (pair)."""
        tol = self._tolerance(yf.dtype)
        s, (B, D) = self.s, yf.shape
        values, stage_context, residual, system = self._stacked(yf, context, h, W, b, sizes)
        K0 = f0[:, None, :].expand(B, s, D).contiguous()

        def make(kind):  # one factorisation per eigenvalue, a conjugate pair's shared
            return {k: self._iteration_matrix(start, W, h, complex(self.facts.eigenvalues[k]), kind)
                    for k in self.facts.solved}

        def solve(factors, G):
            return self._eigen_solve(factors, G, transpose=False)

        K, used, evaluations = self._solve_stages(
            lambda Kt: residual(Kt.reshape(B, s, D)).reshape(B, s * D), system, K0.reshape(B, s * D), make,
            lambda factors, G: solve(factors, G.reshape(B, s, D)).reshape(B, s * D), tol, s)
        if tape is not None:
            tape.factors["eigen"] = used
        return self._coupled_record(K.reshape(B, s, D), values, stage_context, sizes, W, b, tape, evaluations)

    def _coupled_record(self, K, values, stage_context, sizes, W, b, tape, evaluations):
        """The stages' derivatives at the solution, ``F(K)``, as the per-token cell takes them, on the tape."""
        s, (B, _, D) = self.s, K.shape
        if torch.is_grad_enabled() or tape is not None:
            F, act, y_in, Y = self._evaluate(stage_context, values(K).reshape(B * s, D), sizes, W, b)
            evaluations += s
            F = F.reshape(B, s, D)
            if tape is not None:
                for i in range(s):
                    rows = slice(i, None, s)
                    tape.stages.append(_Stage(tuple(v[rows] for v in Y), _rows(act, rows),
                                              None if y_in is None else y_in[rows], F[:, i]))
            K = F
        return list(K.unbind(1)), evaluations

    def _eigen_solve(self, factors, G, transpose: bool):
        """``P⁻¹ G`` (or ``P⁻ᵀ G``) for ``P = I − h A ⊗ J₀`` (``Aᵀ`` with ``transpose``), ``G`` ``(B, s, D)``,
        through ``A = V Λ V⁻¹``: one solve per eigenvalue, a conjugate pair's second by conjugation."""
        complex_dtype = torch.promote_types(G.dtype, torch.complex64)
        facts = self.facts
        into, back = (facts.V.T, facts.V_inv.T) if transpose else (facts.V_inv, facts.V)
        into = torch.as_tensor(into, dtype=complex_dtype, device=G.device)
        back = torch.as_tensor(back, dtype=complex_dtype, device=G.device)
        Z = torch.einsum("ij,bjd->bid", into, G.to(complex_dtype))
        out = [None] * self.s
        for k in facts.solved:
            out[k] = (factors[k].solve_transposed if transpose else factors[k].solve)(Z[:, k]).to(complex_dtype)
        for k, partner in facts.partner.items():
            out[k] = out[partner].conj()
        return torch.einsum("ij,bjd->bid", back, torch.stack(out, dim=1)).real

    # -- reverse -----------------------------------------------------------------------------------
    def token_reverse(self, tape, lam: list, h, W, weight_grad):
        """The reverse sweep of one token (see the module docstring): ``(lam, ∂L/∂context, ∂L/∂h)``."""
        grad_context, grad_h = None, None
        for step in reversed(tape.substeps):
            lam, g_context, g_h = self._step_reverse(step, lam, h, W, weight_grad)
            grad_context = g_context if grad_context is None else grad_context + g_context
            if g_h is not None:
                grad_h = g_h if grad_h is None else grad_h + g_h
        return lam, grad_context, grad_h

    def _step_reverse(self, step: _StepTape, lam, h, W, weight_grad):
        stages = step.stages
        Y0 = stages[0].Y
        sizes = [v.shape[-1] for v in Y0]
        lam_plus = _joined([torch.zeros_like(v) if g is None else g for g, v in zip(lam, Y0)])
        tol = self._tolerance(lam_plus.dtype)
        linear = [FieldLinearisation(self.field, st.act, st.Y, W) for st in stages]
        contexts = []

        def stage_vjp(i, kappa):
            """μ_i = J(Y_i)ᵀ κ_i through the field's structure, the weights' and the context's gradients kept."""
            mu, g_context = linear[i].pullback(kappa, stages[i].y_in, weight_grad)
            if g_context is not None:
                contexts.append(g_context)
            return mu
        if self.structure == "lower":
            mus = self._lower_adjoint(step, linear, lam_plus, h, tol, stage_vjp)
        else:
            mus = [stage_vjp(i, k) for i, k in enumerate(self._coupled_adjoint(step, linear, lam_plus, h, tol))]
        total = lam_plus + sum(mus)
        grad_context = sum(contexts[1:], contexts[0]) if contexts else None
        grad_h = None
        if isinstance(h, torch.Tensor) and h.requires_grad:
            # ∂L/∂h = Σ_i ⟨ρ_i, K_i⟩ with κ_i = h ρ_i, ρ_i = b_i λ⁺ + Σ_j a_ji μ_j
            grad_h = 0
            for i, st in enumerate(stages):
                rho = self.b[i] * lam_plus + sum(self.A[j][i] * mus[j] for j in range(self.s) if self.A[j][i] != 0)
                grad_h = grad_h + (rho * st.K).sum(dim=-1, keepdim=True)
        return list(total.split(sizes, dim=-1)), grad_context, grad_h

    def _lower_adjoint(self, step, linear, lam_plus, h, tol, stage_vjp):
        """κ from the last stage to the first, ``(I − h a_ii J_iᵀ) κ_i = h (b_i λ⁺ + Σ_{j>i} a_ji μ_j)``,
        each ``μ_i = stage_vjp(i, κ_i)`` as soon as ``κ_i`` is known; returns the ``μ``."""
        s = self.s
        mus = [None] * s
        for i in reversed(range(s)):
            rhs = self.b[i] * lam_plus
            for j in range(i + 1, s):
                if self.A[j][i] != 0:
                    rhs = rhs + self.A[j][i] * mus[j]
            rhs = h * rhs
            a, lin = self.A[i][i], linear[i]
            if a == 0:
                k = rhs
            else:
                def operator(v, lin=lin, a=a):
                    return v - (h * a) * lin.vjp(v)

                def direct(lin=lin, a=a, rhs=rhs):
                    return _direct(lin.matrix(), h * a, rhs)
                factors = step.factors.get(a)  # None: the forward solved matrix-free
                if factors is None:
                    k = _krylov_or(operator, rhs, tol, direct)
                else:
                    scaled = lin.scaled(h * a)  # rhs − (I − h a Jᵀ) x = (rhs − x) + h a Jᵀ x, fused

                    def residual(x, scaled=scaled, rhs=rhs):
                        return scaled.vjp(x, base=rhs - x)
                    k = _richardson(residual, rhs, factors.solve_transposed, tol, self.max_iterations, direct)
            mus[i] = stage_vjp(i, k)
        return mus

    def _coupled_adjoint(self, step, linear, lam_plus, h, tol):
        """κ for all stages at once: ``κ_i − h Σ_j a_ji J_jᵀ κ_j = h b_i λ⁺``."""
        s = self.s
        B, D = lam_plus.shape
        hb = h.reshape(B, 1, 1) if isinstance(h, torch.Tensor) else h
        A = torch.as_tensor(self.A, dtype=lam_plus.dtype, device=lam_plus.device)
        b = torch.as_tensor(self.b, dtype=lam_plus.dtype, device=lam_plus.device)
        rhs = hb * b[None, :, None] * lam_plus[:, None, :]

        def operator(kappa):
            mu = torch.stack([lin.vjp(kappa[:, j]) for j, lin in enumerate(linear)], dim=1)
            return kappa - hb * torch.einsum("ji,bjd->bid", A, mu)

        def direct():
            JT = torch.stack([lin.matrix() for lin in linear], dim=1).transpose(-1, -2)  # (B, s, D, D)
            hs = hb[..., None, None] if isinstance(hb, torch.Tensor) else hb
            M = torch.eye(s * D, dtype=JT.dtype, device=JT.device) - (
                hs * A.T[None, :, :, None, None] * JT[:, None]).permute(0, 1, 3, 2, 4).reshape(B, s * D, s * D)
            return torch.linalg.solve(M, rhs.reshape(B, s * D)).reshape(B, s, D)

        factors = step.factors.get("eigen")  # None: the forward solved matrix-free
        if factors is None:
            flat = _krylov_or(lambda v: operator(v.reshape(B, s, D)).reshape(B, s * D), rhs.reshape(B, s * D), tol,
                              lambda: direct().reshape(B, s * D))
            return list(flat.reshape(B, s, D).unbind(1))
        kappa = _richardson(lambda k: rhs - operator(k), rhs, lambda r: self._eigen_solve(factors, r, transpose=True),
                            tol, self.max_iterations, direct)
        return list(kappa.unbind(1))

def _joined(blocks) -> torch.Tensor:
    """The blocks side by side ``(B, D)``; one block as it is (``torch.cat`` would copy it)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)


def _factorisations(factors) -> list:
    """The factorisations a chord iteration used: one, or one per eigenvalue (a dict)."""
    return list(factors.values()) if isinstance(factors, dict) else [factors]


def _rows(act, rows):
    return None if act is None else tuple(None if a is None else a[rows] for a in act)


def _axpy(y, a, x):
    """``y + a x`` in one kernel where ``a`` is a number (a per-sample ``(B, 1)`` step: two)."""
    return torch.add(y, x, alpha=a) if not isinstance(a, torch.Tensor) else y + a * x


def _direct(J, scale, rhs):
    """``(I − scale Jᵀ)⁻¹ rhs`` by a fresh factorisation (the Richardson iteration's fallback)."""
    s = scale.reshape(-1, 1, 1) if isinstance(scale, torch.Tensor) else scale
    M = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device) - s * J.transpose(-1, -2)
    return torch.linalg.lu_solve(*lu_factor(M), rhs[..., None])[..., 0]


def _krylov_or(operator, rhs, tol, fallback):
    """``x`` with ``operator(x) = rhs`` by GMRES to the relative residual ``tol``; ``fallback()`` (a
    direct solve) where GMRES does not get there."""
    if not bool((rhs != 0).any()):
        return torch.zeros_like(rhs)
    x, residual = gmres(operator, rhs, tol, min(_KRYLOV_ITERATIONS, rhs.shape[-1]))
    return x if residual <= tol else fallback()


def _richardson(residual, rhs, precondition, tol, budget, fallback):
    """``x`` with ``residual(x) = rhs − M x = 0`` by ``x ← x + P⁻¹ residual(x)`` from ``P⁻¹ rhs``, to
    the relative error ``tol`` of ``x`` itself: an adjoint's scale is the loss's, so a test against
    ``1 + max|x|`` would accept any error once gradients are small. After an update ``δ`` of a
    linear iteration contracting at rate ``ρ`` the error left is at most ``ρ/(1 − ρ)·max|δ|``
    (Hairer & Wanner, *Solving ODEs II*, §IV.8), with ``ρ`` measured from the last two updates; the
    first update is judged by itself. ``fallback()`` (a direct solve) if that does not happen in
    ``budget`` iterations."""
    x = precondition(rhs)
    if not bool((rhs != 0).any()):
        return x
    previous = None
    for _ in range(budget):
        delta = precondition(residual(x))
        x = x + delta
        big, size = largest_magnitudes(delta, x)
        if not big == big:
            break
        rate = big / previous if previous else 1.0
        if (big if rate >= 1 else big * rate / (1 - rate)) <= tol * size:
            return x
        previous = big
    return fallback()
