"""The linearisation a stability check judges, computed once and shared by every condition.

Linearise the field at sampled states, ``dy/dτ ≈ J y``: one Runge–Kutta step of size ``h`` then
multiplies perturbations (and, transposed, gradients) by ``R(hJ)``, whose eigenvalues are
``R(hλ)`` for the eigenvalues ``λ`` of ``J`` (Dahlquist's test equation; Hairer & Wanner, *Solving
ODEs II*, §IV.2). Partitioned stepping has its own map, ``Π_g R(h P_g J)``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.utils import parametrize

_TOLERANCE = 1e-9  # |R| ≤ 1 + this counts as on the boundary, not outside
FAITHFUL = 1e-3  # a step amplifying a mode by at most this much (relative) more than the exact flow is faithful
NEUTRAL = math.log1p(FAITHFUL)  # |h Re λ| up to this: the flow changes a mode's amplitude by at most 0.1 % a step


def _silent(_: str) -> None:
    pass


# The dense linear algebra goes through PyTorch's LAPACK, which runs on the threads the project
# chose (``torch.set_num_threads``: the command line takes one per idle core). numpy's OpenBLAS
# keeps one thread per core, and on a loaded machine they wait for each other: a partitioned
# check (rnn:order=4, 32 units, a load of 7 on 2 cores) took 11.0 s with numpy and 4.9 s so (the
# rest is butcher's numpy stability_matrix; 1.2 s with numpy's threads capped at one as well).
def spectral_radii(M: np.ndarray) -> np.ndarray:
    """The spectral radius of each matrix of a batch ``(…, D, D)``; ``inf`` for a matrix that left
    the floats (LAPACK refuses it, or crashes)."""
    return _finite_only(M, lambda A: torch.linalg.eigvals(A).abs().amax(dim=-1))


def singular_values(M: np.ndarray) -> np.ndarray:
    """The singular values of each matrix of a batch, largest first (``inf`` as above)."""
    return _finite_only(M, torch.linalg.svdvals)


def _finite_only(M: np.ndarray, compute) -> np.ndarray:
    M = torch.from_numpy(M)
    finite = M.isfinite().flatten(-2).all(dim=-1)
    first = compute(M[finite])
    out = torch.full((*M.shape[:-2], *first.shape[1:]), math.inf, dtype=first.dtype)
    out[finite] = first
    return out.numpy()


@dataclass
class Linearisation:
    """The field's Jacobians at the sampled states and what every condition reads from them, each
    computed on first use: the step maps, the amplification of each *unit* and the exact flow's.

    A unit is an eigenvalue λ of a sampled Jacobian for plain stepping (its amplification
    ``|R(hλ)|``, the flow's ``|e^{hλ}|``), and a sampled state for partitioned stepping (the spectral
    radius of its step map, against the flow's largest growth there): arrays ``(states, units)``."""

    cell: Any
    dt: float
    horizon: int
    jacobians: np.ndarray  # (N, D, D), float64
    eigenvalues: np.ndarray  # (N, D), complex
    progress: Callable[[str], None] = _silent  # told what is being computed, for a progress bar
    far: FarField | None = None  # how the cell treats states far outside the sampled ones

    @property
    def step(self) -> float:
        return self.dt / self.cell.steps

    @property
    def states(self) -> int:
        return self.jacobians.shape[0]

    @cached_property
    def tolerance(self) -> float:
        # the Jacobian carries the round-off of the cell's dtype: a step on the boundary (expRNN:
        # forward Euler, h = 1, |R| = 1) is judged on it, not outside
        return max(_TOLERANCE, 64 * torch.finfo(next(self.cell.parameters()).dtype).eps)

    @cached_property
    def exact(self) -> bool:
        """The Jacobian is the same at every sampled state (a field linear in the state)."""
        J = self.jacobians
        return bool(np.allclose(J, J[0], rtol=0, atol=1e-12 * max(1.0, np.abs(J).max())))

    @property
    def where(self) -> str:
        return "exact: the Jacobian is the same at every state" if self.exact else f"sampled at {self.states} states"

    @cached_property
    def maps(self) -> np.ndarray:
        """One step's linear map at each sampled state ``(N, D, D)``."""
        self.progress("step maps")
        return step_maps(self.cell, self.jacobians, self.step)

    @cached_property
    def radii(self) -> np.ndarray:
        """The spectral radius of each step map ``(N,)``."""
        self.progress("spectral radii of the step maps")
        return spectral_radii(self.maps)

    @cached_property
    def amplification(self) -> np.ndarray:
        """How much one step multiplies each unit: ``|R(hλ)|``, or the step map's spectral radius."""
        if self.cell.partitioned:
            return self.radii[:, None]
        return self.cell.tableau.amplification(self.step * self.eigenvalues)

    @cached_property
    def flow(self) -> np.ndarray:
        """``h Re λ``: the log of the exact flow's amplification ``|e^{hλ}|`` of each unit (for
        partitioned stepping the largest at the state)."""
        growth = self.step * self.eigenvalues.real
        return growth.max(axis=1, keepdims=True) if self.cell.partitioned else growth

    @cached_property
    def reach(self) -> np.ndarray:
        """``h |Im λ|`` of each unit (for partitioned stepping the largest at the state)."""
        reach = self.step * np.abs(self.eigenvalues.imag)
        return reach.max(axis=1, keepdims=True) if self.cell.partitioned else reach

    @cached_property
    def token_maps(self) -> np.ndarray:
        """The linearised token map ``M_k = S_k^steps`` at each sampled state."""
        return torch.linalg.matrix_power(torch.from_numpy(self.maps), self.cell.steps).numpy()

    @cached_property
    def token_map_singular_values(self) -> np.ndarray:
        """Singular values of each token map, largest first ``(N, D)``."""
        self.progress("singular values of the token maps")
        return singular_values(self.token_maps)

    @property
    def worst(self) -> float:
        return float(self.amplification.max()) if self.amplification.size else 0.0

    @property
    def outside(self) -> np.ndarray:
        """The units the step amplifies: outside the stability region."""
        return self.amplification > 1 + self.tolerance

    @cached_property
    def against_flow(self) -> np.ndarray:
        """``|R(hλ)| / |e^{hλ}|``: the step's amplification over the exact flow's, per unit."""
        with np.errstate(over="ignore", divide="ignore"):
            return self.amplification / np.exp(self.flow)

    @property
    def faithful(self) -> np.ndarray:
        return self.against_flow <= 1 + FAITHFUL

    @property
    def neutral(self) -> np.ndarray:
        """Units whose amplitude the exact flow keeps within 0.1 % a step: ``|h Re λ| ≤ NEUTRAL``."""
        return np.abs(self.flow) <= NEUTRAL

    @property
    def rightmost(self) -> float:
        return float(self.eigenvalues.real.max())

    @cached_property
    def expanding_directions(self) -> int:
        """Eigenvalues with ``Re λ > 0`` (beyond round-off) at the worst sampled state."""
        scale = max(1.0, float(np.abs(self.eigenvalues).max()))
        return int((self.eigenvalues.real > self.tolerance * scale).sum(axis=1).max())

    @cached_property
    def rays(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct rays from 0 through the eigenvalues (R has real coefficients, so λ and its
        conjugate share one) and how far in ``h`` each stays in the region (:func:`ray_limits`)."""
        lams = self.eigenvalues.ravel()
        distinct = np.unique(np.round(lams.real, 12) + 1j * np.round(np.abs(lams.imag), 12))
        return distinct, ray_limits(self.cell.tableau, distinct)

    @cached_property
    def largest_dt(self) -> float:
        """The largest Δ (with the cell's sub-steps) for which every sampled unit stays in the
        region; ``0`` where no Δ > 0 does, ``inf`` where every Δ does."""
        self.progress("largest stable Δ")
        if self.cell.partitioned:
            return largest_partitioned_dt(self, self.radii if self.dt == self.cell.dt else None)
        limits = self.rays[1]
        return float(limits.min()) * self.cell.steps if limits.size else math.inf

    def no_step_helps(self) -> str:
        """Why no Δ > 0 keeps every unit in the region (``largest_dt == 0``)."""
        if self.cell.partitioned:
            expands = (f"; the exact flow expands {self.expanding_directions} direction(s)"
                       if self.expanding_directions else "")
            return (f"the partitioned step map's spectral radius exceeds 1 for every Δ down to "
                    f"{self.cell.dt * 2.0 ** -20:.3g}{expands}")
        rays, limits = self.rays
        stuck = rays[limits == 0]
        expanding, imaginary = int((stuck.real > 0).sum()), int((stuck.real <= 0).sum())
        reasons = []
        if expanding:
            reasons.append(f"{expanding} eigenvalue(s) with Re λ > 0, which the exact flow expands and every "
                           "region excludes near 0 (|R(z)| ≈ |e^z| > 1 there)")
        if imaginary:
            reasons.append(f"{imaginary} eigenvalue(s) on the imaginary axis, which the tableau's region does not "
                           f"reach near 0 (its imaginary stability interval is {self.imaginary_interval():.6g})")
        return " and ".join(reasons)

    def imaginary_interval(self) -> float:
        """``β``: the tableau's region holds ``[−iβ, iβ]``."""
        return float(self.cell.tableau.imaginary_stability_interval().sup)


def linearise(cell, inputs=None, dt: float | None = None, samples: int = 16, seed: int = 0,
              horizon: int = 100, progress: Callable[[str], None] = _silent, far: bool = True) -> Linearisation:
    """The field's Jacobian and its eigenvalues at ``samples`` states: the zero state and states
    along a trajectory driven by ``inputs`` (``(T, B, input_size)``; random normal when ``None``);
    and (``far``) the far field (:func:`far_field`) under the same inputs, at the same Δ."""
    generator = torch.Generator().manual_seed(seed)
    progress(f"{samples} states along a trajectory")
    x, state, driven = _sample_states(cell, inputs, samples, generator)
    progress("Jacobians and their eigenvalues")
    with torch.no_grad():
        J = cell.jacobian(x, state).detach().to("cpu", torch.float64)
        lams = torch.linalg.eigvals(J).numpy()
    measured = None
    if far:
        progress("the far field")
        scale = float(torch.cat(cell.field.to_blocks(state), dim=-1).norm(dim=-1).max())
        measured = far_field(cell, driven if len(driven) else torch.zeros_like(x[:1, None]), scale, generator, dt)
    return Linearisation(cell, cell.dt if dt is None else float(dt), horizon, J.numpy(), lams, progress, measured)


FAR = 1e4  # the far field's radius, in units of the largest sampled state's norm (at least 1)


@dataclass(frozen=True)
class FarField:
    """What the cell does to states far outside the sampled ones, where the field's bounded
    nonlinearities saturate and its unbounded part decides: from ``directions`` states of norm
    ``radius`` driven by ``tokens`` inputs, the ``growth`` of each state's norm per token under the
    step, ``(‖y_K‖ / ‖y_0‖)^{1/K}``, and under the exact flow (``flow``: classical RK4 at Δ/32).
    ``error``: why the step could not be measured."""

    growth: np.ndarray
    flow: np.ndarray
    tokens: int
    radius: float
    error: str = ""


# RK4 steps per token for the exact flow of the far field: accurate to about 1e-5 a token up to
# |Δλ| ≈ 20 there; a far field stiffer than |Δλ| ≈ 89 leaves RK4's region at Δ/32 and reads as a
# flow that does not restore (the step condition then holds, and the drift note may be wrong)
FLOW_SUBSTEPS = 32


def far_field(cell, inputs: torch.Tensor, scale: float, generator: torch.Generator, dt: float | None = None,
              directions: int = 8) -> FarField:
    """:class:`FarField` at the interval ``dt`` (the cell's own when ``None``) from ``directions``
    random directions at ``FAR · max(1, scale)``, driven by ``inputs`` ``(K, B, I)`` (the first of
    each batch). A growth above 1 at this radius is multiplicative, not the bounded part's additive
    push, which fades as ``1/radius``."""
    from odernn import ImplicitSolveError, StepSizeUnderflow
    reference = next(cell.parameters())
    dt = cell.dt if dt is None else float(dt)
    sizes = list(cell.field.block_sizes)
    u = torch.randn(directions, sum(sizes), generator=generator, dtype=torch.float64)
    radius = FAR * max(1.0, scale)
    if not radius < torch.finfo(reference.dtype).max ** 0.25:  # room for the growth of K tokens (float16: none)
        return FarField(np.zeros(0), np.zeros(0), len(inputs), radius,
                        f"states of norm {radius:.3g} do not fit {reference.dtype} with room to grow")
    y0 = (radius * u / u.norm(dim=-1, keepdim=True)).to(reference.device, reference.dtype)
    xs = inputs[:, :1].expand(-1, directions, -1).to(reference.device, reference.dtype)

    def growth(end):
        return torch.nan_to_num((end.double().norm(dim=-1) / radius) ** (1.0 / len(xs)), nan=math.inf).cpu().numpy()

    # the recurrent matrix built once, not per evaluation (a constraint's SVD, Lipschitz's sums)
    cached = parametrize.cached() if parametrize.is_parametrized(cell.field) else contextlib.nullcontext()
    with torch.no_grad(), cached:
        with cell.field.held_structure():
            flow = growth(_flow(cell, xs, y0, sizes, dt))
        state = cell.field.from_blocks(tuple(torch.split(y0, sizes, dim=-1)))
        try:
            for x in xs:
                state = cell(x, state, dt=dt)
        except (ImplicitSolveError, StepSizeUnderflow) as err:
            return FarField(np.zeros(0), flow, len(xs), radius, f"{type(err).__name__}: {str(err)[:200]}")
    return FarField(growth(torch.cat(cell.field.to_blocks(state), dim=-1)), flow, len(xs), radius)


def _flow(cell, xs, y0, sizes, dt: float) -> torch.Tensor:
    """The far field's states ``y0`` carried by the exact flow over the tokens ``xs`` (RK4 at Δ/32)."""
    y, h = y0, dt / FLOW_SUBSTEPS
    for x in xs:
        context = cell.field.project(x)

        def f(v):
            return torch.cat(cell.field(context, tuple(torch.split(v, sizes, dim=-1))), dim=-1)
        for _ in range(FLOW_SUBSTEPS):
            k1 = f(y)
            k2 = f(y + h / 2 * k1)
            k3 = f(y + h / 2 * k2)
            k4 = f(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def _sample_states(cell, inputs, samples: int, generator: torch.Generator):
    """The zero state and states along a trajectory driven by ``inputs`` ``(T, B, I)`` (random
    normal inputs when none are given), up to where it leaves the floats; returns ``(x, state)``
    batches for the Jacobian, and the inputs that drove the trajectory ``(T', B, I)``."""
    reference = next(cell.parameters())
    dtype, device = reference.dtype, reference.device
    if inputs is None:
        inputs = torch.randn(samples, 1, cell.input_size, generator=generator, dtype=dtype)
    inputs = torch.as_tensor(inputs).to(device, dtype)
    if inputs.dim() == 2:
        inputs = inputs[:, None, :]
    xs, states = [], []
    state = cell.field.initial_state(inputs.shape[1], dtype, inputs.device)
    with torch.no_grad():
        xs.append(torch.zeros_like(inputs[0]))
        states.append(state)
        for x in inputs[: max(samples - 1, 0)]:
            state = cell(x, state)
            if not all(block.isfinite().all() for block in cell.field.to_blocks(state)):
                break  # the trajectory left the floats (an unstable step): no state to linearise at after it
            xs.append(x)
            states.append(state)
    x = torch.cat(xs)
    blocks = [torch.cat([cell.field.to_blocks(s)[k] for s in states]) for k in range(cell.field.blocks)]
    return x, cell.field.from_blocks(tuple(blocks)), inputs[: len(xs) - 1]


def ray_limits(tableau, lams: np.ndarray, grid_points: int = 400) -> np.ndarray:
    """For each ``λ``, the largest ``s`` with ``|R(s'λ)| ≤ 1`` for every ``0 ≤ s' ≤ s`` (``inf``
    where the whole ray stays inside): a geometric scan, then bisection, for all rays at once."""
    lams = np.asarray(lams, dtype=complex)
    out = np.full(lams.shape, np.inf)
    nonzero = np.abs(lams) > 0
    lam = lams[nonzero]
    if lam.size == 0:
        return out
    # |hλ| from 1e-4 to 1e4 in steps of 4.7 %: regions of explicit methods end well inside it, and
    # their boundaries are smooth curves that a ray crosses, not grazes
    grid = np.geomspace(1e-4, 1e4, grid_points)[None, :] / np.abs(lam)[:, None]  # (N, G)
    inside = tableau.amplification(grid * lam[:, None]) <= 1 + _TOLERANCE
    leaves = ~inside.all(axis=1)
    first_out = np.argmin(inside, axis=1)
    rows = np.nonzero(leaves)[0]
    limits = np.full(lam.shape, np.inf)
    limits[leaves & (first_out == 0)] = 0.0
    rows = rows[first_out[rows] > 0]
    lo, hi = grid[rows, first_out[rows] - 1], grid[rows, first_out[rows]]
    for _ in range(60):  # bisection to machine precision, vectorised over the rays
        mid = 0.5 * (lo + hi)
        ok = tableau.amplification(mid * lam[rows]) <= 1 + _TOLERANCE
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    limits[rows] = lo
    out[nonzero] = limits
    return out


def step_maps(cell, J: np.ndarray, step: float) -> np.ndarray:
    """One step's linear map at each sampled Jacobian ``J`` ``(N, D, D)``: ``R(hJ)``, or for
    partitioned stepping ``Π_g R(h P_g J)`` over the blocks in their order, ``P_g J`` keeping the
    rows of block ``g`` (a Runge–Kutta step of a linear system is ``R`` of its matrix, and a block
    stepped with the others held is the system whose other rows are zero)."""
    if not cell.partitioned:
        return cell.tableau.stability_matrix(step * J)
    size = J.shape[-1] // cell.t
    S = None
    for g in range(cell.t):
        Jg = np.zeros_like(J)
        Jg[:, g * size:(g + 1) * size] = J[:, g * size:(g + 1) * size]
        Rg = torch.from_numpy(cell.tableau.stability_matrix(step * Jg))
        S = Rg if S is None else Rg @ S  # PyTorch's product: on the project's threads, as above
    return S.numpy()


def largest_partitioned_dt(lin: Linearisation, radii: np.ndarray | None = None) -> float:
    """The largest Δ with the partitioned step map's spectral radius ≤ 1 (no ray criterion exists
    for a product of block maps): doubling or halving from the cell's Δ to a bracket, then 8
    bisections (0.4 %), on the three sampled states whose radius at the cell's Δ (``radii``) is
    largest — an eigenvalue problem of size D per state and trial, the cost of the check."""
    cell = lin.cell
    if radii is None:
        radii = spectral_radii(step_maps(cell, lin.jacobians, cell.dt / cell.steps))
    J = lin.jacobians[np.argsort(radii)[-3:]]
    trials = iter(range(1, 1000))

    def stable(dt):
        lin.progress(f"largest stable Δ: trial {next(trials)}, Δ = {dt:.3g}")
        S = step_maps(cell, J, dt / cell.steps)
        return bool(spectral_radii(S).max() <= 1 + lin.tolerance)
    lo, hi = 0.0, cell.dt
    if stable(hi):
        for _ in range(10):
            lo, hi = hi, 2 * hi
            if not stable(hi):
                break
        else:
            return math.inf
    else:
        for _ in range(20):
            if stable(hi / 2):
                lo, hi = hi / 2, hi
                break
            hi /= 2
        else:
            return 0.0
    for _ in range(8):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo
