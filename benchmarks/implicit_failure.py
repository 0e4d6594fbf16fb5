"""Why an implicit run stopped on ``ImplicitSolveError`` (issue 24: the seeds study's SDIRK GRU-ODEs).

A run that stops saves its last good state (its checkpoint: weights, carried state, position). This
replays the batch it stopped on, as training runs it, with the engine as it was at each stage of
its fallbacks: plain Newton–Krylov alone (before 2026-12-07); its three tries on GMRES updates
(plain Newton, then a line search, then continuation in the step); those tries again with LU
updates where they fail (the engine before its whole-step fallback); and today's engine, which where a stage's tries fail
solves all the step's stages at once, continued in the whole step. It names the token and the
samples whose stage equations were not solved, and for each such sample:

- solves each stage's equations in float64 with Powell's hybrid method (``scipy.optimize.root``),
  from ``f(base)`` and then from random starts: a residual near zero at a well-conditioned
  ``I − h a_ii J`` (its smallest singular value printed) means a solution was there to find;
- follows each stage's solution as the engine's stage-by-stage continuation does (that stage's
  ``h·a_ii`` scaled by ``τ``, its base fixed) and the whole step's (every stage at ``τ·h``) from
  ``τ = 0`` by pseudo-arclength continuation in float64 (:func:`follow`), printing where either
  folds (turns back in ``τ``) and whether it reaches ``τ = 1`` at that solution: a branch that
  reaches it means the stop was the solver's, not the method's;
- compares the stages today's engine found (float32) with the followed branch's at ``τ = 1``.

Lower-triangular (DIRK) tableaux only.

    python benchmarks/implicit_failure.py RUN_FOLDER_OR_CHECKPOINT ... [--data-root DIR] [--starts 12]
    python benchmarks/implicit_failure.py --grid

``--grid``: 80 small layers (4 units, 3 inputs, batch 3, 4 tokens, float64) with strong recurrent
weights (× 8 or × 16) and long steps (Δ = 4 or 8), under SDIRK and Radau IIA-3 with Newton–Krylov:
how many the engine's tries with GMRES updates solve without continuation in the step, how many
with it, how many with LU updates then, how many today's engine solves (then all stages at once),
how many the per-token cell solves (the same tries on all stages at once, its Newton's linear
systems by LU), and whether the engine and the cell give the same outputs where both solve (at
steps this long the stage equations can have several solutions, and two solvers' paths can reach
different ones).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def follow(f, jacobians, y0: torch.Tensor, h: float, A, *, max_steps: int = 3000) -> dict:
    """The stage values of one sample's DIRK step of ``τ·h``, followed in float64 from the explicit
    limit (``τ = 0``: every stage ``f(y0)``) towards the step the run took (``τ = 1``).

    The stage equations ``G(K, τ) = K_i − f(y0 + τh Σ_j a_ij K_j) = 0`` define, near ``τ = 0``, one
    branch of solutions. Natural continuation in ``τ`` (the engine's last try) cannot pass a point
    where the branch turns back in ``τ`` (a fold: ``∂G/∂K`` singular there), so this follows it by
    pseudo-arclength continuation (Keller), which can: it reports the ``τ`` of each fold, whether the
    branch reaches ``τ = 1`` and after how many folds, and the smallest singular value of
    ``∂G/∂K`` met. A branch that reaches ``τ = 1``, with or without folds on the way, ends at a
    solution a solver could have found from the explicit limit.

    ``f`` maps stage values ``(s, D)`` to field values ``(s, D)``; ``jacobians`` gives ``∂f/∂y``
    ``(s, D, D)`` at them."""
    s, D = len(A), y0.shape[-1]
    A_ = torch.tensor(np.asarray(A, dtype=float), dtype=torch.float64)

    def parts(x):
        K, tau = x[:-1].view(s, D), x[-1]
        increments = A_ @ K  # (s, D): Σ_j a_ij K_j
        Y = y0 + tau * h * increments
        J = jacobians(Y)  # (s, D, D)
        G = (K - f(Y)).flatten()
        dG_dK = torch.eye(s * D, dtype=torch.float64) - tau * h * torch.einsum(
            "ij,iab->iajb", A_, J).reshape(s * D, s * D)
        dG_dtau = -h * torch.einsum("iab,ib->ia", J, increments).flatten()
        return G, torch.cat([dG_dK, dG_dtau[:, None]], dim=1)

    along_tau = torch.zeros(s * D + 1, dtype=torch.float64)
    along_tau[-1] = 1

    def tangent(jacobian, previous):  # the null direction of ∂G, oriented along previous (t·previous > 0)
        t = torch.linalg.solve(torch.cat([jacobian, previous[None]]), along_tau)
        return t / t.norm()

    x = torch.cat([f(y0.expand(s, D)).flatten(), torch.zeros(1, dtype=torch.float64)])
    G, jacobian = parts(x)
    t = tangent(jacobian, along_tau)
    folds, sigma, sigma_tau, ds, steps = [], float("inf"), 0.0, 1e-2, 0
    outcome = "unfinished"
    while steps < max_steps:
        predicted = x + ds * t
        y, converged = predicted, False
        for _ in range(8):  # Newton on G = 0 and the arclength condition t·(x − predicted) = 0
            G, jacobian = parts(y)
            if G.abs().max() < 1e-10 * (1 + y.abs().max()):
                converged = True
                break
            y = y - torch.linalg.solve(torch.cat([jacobian, t[None]]), torch.cat([G, (t @ (y - predicted))[None]]))
        new = tangent(jacobian, t) if converged else None
        # a step the branch turns through by more than ~10°, or whose corrector went far from the
        # prediction, may have jumped to another part of the branch (past a pair of folds): shorter
        if not converged or float(new @ t) < 0.985 or float((y - predicted).norm()) > 0.2 * ds:
            ds /= 2
            if ds < 1e-9:
                outcome = "stalled"
                break
            continue
        steps += 1
        if float(new[-1]) * float(t[-1]) < 0:  # τ turns: a fold between x and y, at τ's maximum or minimum
            folds.append(float(max(x[-1], y[-1]) if float(t[-1]) > 0 else min(x[-1], y[-1])))
        smallest = float(torch.linalg.svdvals(jacobian[:, :-1])[-1])
        if smallest < sigma:
            sigma, sigma_tau = smallest, float(y[-1])
        if float(y[-1]) >= 1 > float(x[-1]):  # then the solution at τ = 1 itself, by Newton in K
            start = x + (1 - x[-1]) / (y[-1] - x[-1]) * (y - x)
            w = torch.cat([start[:-1], torch.ones(1, dtype=torch.float64)])
            outcome = "stalled"
            try:
                for _ in range(20):
                    G, jacobian = parts(w)
                    if G.abs().max() < 1e-10 * (1 + w.abs().max()):
                        # on this branch: no farther from the interpolated point than the step's length
                        outcome = "reached" if float((w - start).norm()) <= ds else "stalled"
                        break
                    w = torch.cat([w[:-1] - torch.linalg.solve(jacobian[:, :-1], G), w[-1:]])
            except torch.linalg.LinAlgError:  # ∂G/∂K singular at τ = 1: a fold there
                pass
            x = w
            break
        if float(y[-1]) < 0:
            outcome = "returned"
            x = y
            break
        x, t = y, new
        ds = min(ds * 1.5, 0.25)
    return {"outcome": outcome, "folds": folds, "tau": float(x[-1]), "stages": x[:-1].view(s, D),
            "sigma_min": sigma, "sigma_tau": sigma_tau, "steps": steps}


def described(path: dict) -> str:
    """One line for :func:`follow`'s result."""
    folds = ", ".join(f"{tau:.4f}" for tau in path["folds"]) or "none"
    ends = {"reached": "reaches τ = 1", "returned": f"returns to τ = 0 (at {path['tau']:.4f})",
            "stalled": f"stops at τ = {path['tau']:.4f} (the continuation's step fell below 1e-9)",
            "unfinished": f"is at τ = {path['tau']:.4f} after {path['steps']} steps"}[path["outcome"]]
    return (f"folds at τ = {folds}; {ends}; smallest singular value of ∂G/∂K on the way "
            f"{path['sigma_min']:.3f} (at τ = {path['sigma_tau']:.4f}), {path['steps']} steps")


def apart(path: dict, stages: torch.Tensor) -> str:
    """How far the followed branch's stages at τ = 1 are from ``stages`` (the float64 solves')."""
    if path["outcome"] != "reached":
        return "no solution on this branch"
    gap = float((path["stages"] - stages.reshape(path["stages"].shape)).abs().max())
    return f"the float64 solution above{'' if gap < 1e-6 else ' is not this one'} (largest difference {gap:.1e})"


def replay(path: str, data_root: str | None, starts: int) -> None:
    import odernn
    import odernn._implicit as implicit
    import odernn._newton as newton_tries
    from odernn._stepping import field_jacobians
    from scipy.optimize import root
    from textlm.checkpoint import load_checkpoint
    from textlm.data import batchify, load_corpus
    from textlm.model import LanguageModel

    data = load_checkpoint(path)
    run, position = data.get("config") or {}, data["position"]
    corpus = load_corpus(run.get("corpus"), run.get("text"), run.get("level") or "char", data_root)
    rows = batchify(corpus.split("train"), int(run.get("batch_size", 32)))
    bptt, column = int(run.get("bptt", 64)), position["column"]
    batch = (rows[:, column:column + bptt], rows[:, column + 1:column + bptt + 1])
    print(f"{path}: step {position['step']}, columns {column}–{column + bptt} of each stream")

    seen = {}
    token, newton = implicit.ImplicitTokenProgram.token, implicit.ImplicitTokenProgram._newton_krylov

    def kept_token(self, y, context, h, *rest, **kwargs):
        seen.update(y=y, context=context, h=h, t=seen.get("next", 0), next=seen.get("next", 0) + 1)
        return token(self, y, context, h, *rest, **kwargs)

    def kept_newton(self, system, K, tol, *rest):
        seen.update(system=system, K=K, tol=tol)
        solved = newton(self, system, K, tol, *rest)
        if rest[1:]:  # the whole step's solve (its ``how``): the stages it found, (B, s·D)
            seen.setdefault("whole", {})[seen["t"]] = solved[0].detach()
        return solved
    implicit.ImplicitTokenProgram.token, implicit.ImplicitTokenProgram._newton_krylov = kept_token, kept_newton
    engine = newton_tries.HALVINGS, newton_tries.CONTINUATION, implicit.NEWTON_UPDATES, implicit.WHOLE_STEP
    failed = None
    for label, (halvings, continuation, updates, whole_step) in (
            ("plain Newton–Krylov", (0, (1.0,), ("gmres",), False)),
            ("the tries with GMRES updates (plain, line search, continuation)", (*engine[:2], ("gmres",), False)),
            ("those, then with LU updates (the engine before its whole-step fallback)", (*engine[:3], False)),
            ("the engine's tries (those stage by stage, then all stages at once)", engine)):
        # (1.0,): no continuation
        (newton_tries.HALVINGS, newton_tries.CONTINUATION, implicit.NEWTON_UPDATES,
         implicit.WHOLE_STEP) = halvings, continuation, updates, whole_step
        seen.clear()
        model = LanguageModel.from_checkpoint(data, "cpu").train()
        try:  # as training runs it: with a graph (the engine records its tape), then backward
            model(*batch, data.get("state"))[1].backward()
            print(f"  {label}: the batch is solved")
        except odernn.ImplicitSolveError as err:
            print(f"  {label}: token {seen['t']} not solved ({str(err).split(';')[0]})")
            if failed is None or whole_step is False:
                failed = dict(seen)
    newton_tries.HALVINGS, newton_tries.CONTINUATION, implicit.NEWTON_UPDATES, implicit.WHOLE_STEP = engine
    whole = seen.get("whole", {})  # the engine's (the last replay's)
    if failed is None:
        return
    # the samples plain Newton leaves unsolved at that stage: odernn._newton.newton's iterations, row by row
    system, K, tol = failed["system"], failed["K"].detach(), failed["tol"]
    with torch.no_grad():
        G, apply = system(K)
        for _ in range(model.layers[0].cells[0].scheme.max_iterations):
            delta, _ = implicit.gmres(apply, G, min(1e-2, tol ** 0.5), min(implicit._KRYLOV_ITERATIONS, G.shape[-1]))
            K = K + delta
            G, apply = system(K)
    unsolved = (delta.abs().amax(dim=-1) > tol * (1 + K.abs().max())).nonzero().flatten().tolist()
    print(f"  samples plain Newton leaves unsolved at that stage: {unsolved}")

    cell = model.layers[0].cells[0].double()
    A, _, _, _ = cell.tableau.to_numpy()
    h = float(failed["h"]) if not isinstance(failed["h"], torch.Tensor) else float(failed["h"].flatten()[0])
    context = failed["context"].double()
    generator = np.random.default_rng(0)
    for sample in unsolved:
        y0 = failed["y"][0][sample:sample + 1].double()
        ctx = context[sample:sample + 1]

        def f(Y):
            return cell.field(ctx.expand(len(Y), *ctx.shape[1:]), (Y,))[0]

        def jacobians(Y):
            return field_jacobians(cell.field, ctx.expand(len(Y), *ctx.shape[1:]), Y, [Y.shape[-1]])
        stages = []
        for i in range(len(A)):
            base = y0 + h * sum(A[i][j] * stages[j] for j in range(i)) if i else y0
            a = A[i][i]

            def residual(k, base=base, a=a):
                K_ = torch.tensor(k)[None]
                return (f(base + h * a * K_) - K_)[0].detach().numpy()

            def jacobian(k, base=base, a=a):  # the residual's: h a ∂f/∂y − I
                Y = base + h * a * torch.tensor(k)[None]
                return h * a * jacobians(Y)[0].detach().numpy() - np.eye(len(k))
            best = None
            for start in range(starts):
                k0 = f(base)[0].detach().numpy() if start == 0 else generator.normal(0, 2, base.shape[1])
                solution = root(residual, k0, jac=jacobian, method="hybr")
                size = float(np.abs(residual(solution.x)).max())
                if best is None or size < best[0]:
                    best = (size, solution.x, start)
                if size < 1e-8:  # hybr stops at its step tolerance, ~1e-9 here
                    break
            size, k, start = best
            sigma = np.linalg.svd(jacobian(k), compute_uv=False)[-1]
            where = "f(base)" if start == 0 else f"random start {start}"
            print(f"  sample {sample}, stage {i + 1}: float64 residual {size:.1e} (from {where}); "
                  f"smallest singular value of I − h a_ii J there {sigma:.2f}")
            stages.append(torch.tensor(k)[None])
            if a != 0:  # the engine's continuation: this stage's equations at h·a_ii·τ, its base fixed
                with torch.no_grad():
                    path = follow(f, jacobians, base[0].detach(), h, [[a]])
                print(f"    followed as the engine continues it (h·a_ii·τ, from f(base)): {described(path)}; "
                      f"at τ = 1 {apart(path, stages[-1])}")
        with torch.no_grad():  # (field_jacobians' torch.func transform differentiates all the same)
            path = follow(f, jacobians, y0[0].detach(), h, A)
        print(f"  sample {sample}, the whole step followed from the explicit limit (every stage at τ·h): "
              f"{described(path)}; at τ = 1 {apart(path, torch.cat(stages))}")
        if failed["t"] in whole and path["outcome"] == "reached":
            engine_stages = whole[failed["t"]][sample].double().reshape(path["stages"].shape)
            print(f"  sample {sample}, the engine's stages (float32, all stages at once) against the followed "
                  f"branch's at τ = 1: largest difference {float((engine_stages - path['stages']).abs().max()):.1e} "
                  f"(largest stage value {float(path['stages'].abs().max()):.2f})")
    implicit.ImplicitTokenProgram.token, implicit.ImplicitTokenProgram._newton_krylov = token, newton


def grid() -> None:
    import odernn
    import odernn._implicit as implicit
    import odernn._newton as newton_tries
    continuation, updates, counts, gaps = newton_tries.CONTINUATION, implicit.NEWTON_UPDATES, {}, []
    ways = (((1.0,), ("gmres",), False), (continuation, ("gmres",), False), (continuation, updates, False),
            (continuation, updates, True))
    for spec in ("gru-ode:alexander2", "rnn:alexander2", "lstm:alexander2", "gru-ode:radau-iia-3", "rnn:radau-iia-3"):
        for dt in (4, 8):
            for gain in (8, 16):
                for scale in (1, 3):
                    for seed in (0, 1):
                        torch.manual_seed(seed)
                        rnn = odernn.ODERNN(f"{spec}:newton=krylov:dt={dt}:tol=1e-12", 3, 4, dtype=torch.float64)
                        with torch.no_grad():
                            rnn.weight_hh_l0.mul_(gain)
                        x = scale * torch.randn(4, 3, 3, dtype=torch.float64)
                        outcome, outputs = [], []
                        # (1.0,): a third try that repeats the second; ("gmres",): no LU updates;
                        # False: no whole step where a stage's tries fail
                        for tries, solves, whole_step in ways:
                            newton_tries.CONTINUATION, implicit.NEWTON_UPDATES, implicit.WHOLE_STEP = (
                                tries, solves, whole_step)
                            try:
                                outputs.append(rnn(x)[0].detach())  # with a graph, as in training
                                outcome.append("solved")
                            except odernn.ImplicitSolveError:
                                outcome.append("not solved")
                        newton_tries.CONTINUATION, implicit.NEWTON_UPDATES, implicit.WHOLE_STEP = (
                            continuation, updates, True)
                        cell, state, per_token = rnn.cells[0], None, []
                        try:
                            with torch.no_grad():
                                for t in range(x.shape[0]):
                                    state = cell(x[t], state)
                                    per_token.append(cell.field.to_blocks(state)[cell.field.output_block])
                            outcome.append("solved")
                        except odernn.ImplicitSolveError:
                            outcome.append("not solved")
                        counts[tuple(outcome)] = counts.get(tuple(outcome), 0) + 1
                        if outcome[3:] == ["solved", "solved"]:
                            gaps.append(float((outputs[-1] - torch.stack(per_token)).abs().max()))
    for (before, after, lu, whole, per_token), count in sorted(counts.items()):
        print(f"{count:3d} layers: {before} by GMRES updates without continuation, {after} with it, {lu} "
              f"with LU updates then, {whole} by the engine (then all stages at once); {per_token} by the "
              "per-token cell (Newton's linear systems by LU)")
    apart = [gap for gap in gaps if gap > 1e-9]
    print(f"solved by both the engine and the per-token cell: {len(gaps)} layers; outputs equal to "
          f"{max([gap for gap in gaps if gap <= 1e-9], default=0):.0e} in {len(gaps) - len(apart)}, "
          f"apart by {', '.join(f'{gap:.2f}' for gap in sorted(apart))} in {len(apart)} (different "
          "solutions of the same stage equations)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders (their checkpoint.pt) or checkpoint files")
    parser.add_argument("--grid", action="store_true", help="the 80 small layers of the docstring instead")
    parser.add_argument("--data-root", help="the corpora's folder (default: $ODERNN_DATA)")
    parser.add_argument("--starts", type=int, default=12, help="starts of the float64 solve per stage (default 12)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.grid:
        grid()
    elif not args.runs:
        parser.error("give run folders or checkpoints, or --grid")
    for path in args.runs:
        replay(path, args.data_root, args.starts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
