"""Why an implicit run stopped on ``ImplicitSolveError`` (issue 24: the seeds study's SDIRK GRU-ODEs).

A run that stops saves its last good state (its checkpoint: weights, carried state, position). This
replays the batch it stopped on with plain Newton–Krylov alone (as the engine solved before
2026-12-07), with its three tries on GMRES updates (plain Newton, then a line search, then
continuation in the step: the engine before its LU updates) and with the engine of today (those tries
again with LU updates where they fail), names the token and the
samples whose stage equations were not solved, and solves those samples' stage equations in float64
with Powell's hybrid method (``scipy.optimize.root``), from ``f(base)`` and then from random
starts. A residual near zero at a well-conditioned ``I − h a_ii J`` (its smallest
singular value printed) means a solution was there for a solver to find: the stop was the solver's,
not the method's. Lower-triangular (DIRK) tableaux only.

    python benchmarks/implicit_failure.py RUN_FOLDER_OR_CHECKPOINT ... [--data-root DIR] [--starts 12]
    python benchmarks/implicit_failure.py --grid

``--grid``: 80 small layers (4 units, 3 inputs, batch 3, 4 tokens, float64) with strong recurrent
weights (× 8 or × 16) and long steps (Δ = 4 or 8), under SDIRK and Radau IIA-3 with Newton–Krylov:
how many the engine's tries with GMRES updates solve without continuation in the step, how many
with it, how many the engine solves (those tries again with LU updates where they fail), how many the
per-token cell solves (the same tries, its Newton's linear systems by LU), and whether the two
give the same outputs where both solve (at steps this long the stage equations can have several
solutions, and two solvers' paths can reach different ones).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def replay(path: str, data_root: str | None, starts: int) -> None:
    import odernn
    import odernn._implicit as implicit
    import odernn._newton as newton_tries
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

    def kept_newton(self, system, K, tol, per_iteration=1):
        seen.update(system=system, K=K, tol=tol)
        return newton(self, system, K, tol, per_iteration)
    implicit.ImplicitTokenProgram.token, implicit.ImplicitTokenProgram._newton_krylov = kept_token, kept_newton
    engine = newton_tries.HALVINGS, newton_tries.CONTINUATION, implicit.NEWTON_UPDATES
    failed = None
    for label, (halvings, continuation, updates) in (
            ("plain Newton–Krylov", (0, (1.0,), ("gmres",))),
            ("the tries with GMRES updates (plain, line search, continuation)", (*engine[:2], ("gmres",))),
            ("the engine's tries (those, then with LU updates)", engine)):
        # (1.0,): no continuation
        newton_tries.HALVINGS, newton_tries.CONTINUATION, implicit.NEWTON_UPDATES = halvings, continuation, updates
        seen.clear()
        model = LanguageModel.from_checkpoint(data, "cpu").train()
        try:  # as training runs it: with a graph (the engine records its tape), then backward
            model(*batch, data.get("state"))[1].backward()
            print(f"  {label}: the batch is solved")
        except odernn.ImplicitSolveError as err:
            print(f"  {label}: token {seen['t']} not solved ({str(err).split(';')[0]})")
            failed = dict(seen)
    newton_tries.HALVINGS, newton_tries.CONTINUATION, implicit.NEWTON_UPDATES = engine
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
            return cell.field(ctx, (Y,))[0]
        stages = []
        for i in range(len(A)):
            base = y0 + h * sum(A[i][j] * stages[j] for j in range(i)) if i else y0
            a = A[i][i]

            def residual(k, base=base, a=a):
                K_ = torch.tensor(k)[None]
                return (f(base + h * a * K_) - K_)[0].detach().numpy()

            def jacobian(k, base=base, a=a):
                return torch.autograd.functional.jacobian(
                    lambda v: (f(base + h * a * v[None]) - v[None])[0], torch.tensor(k)).numpy()
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
    implicit.ImplicitTokenProgram.token, implicit.ImplicitTokenProgram._newton_krylov = token, newton


def grid() -> None:
    import odernn
    import odernn._implicit as implicit
    import odernn._newton as newton_tries
    continuation, updates, counts, gaps = newton_tries.CONTINUATION, implicit.NEWTON_UPDATES, {}, []
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
                        # (1.0,): a third try that repeats the second; ("gmres",): no LU updates
                        for tries, ways in (((1.0,), ("gmres",)), (continuation, ("gmres",)), (continuation, updates)):
                            newton_tries.CONTINUATION, implicit.NEWTON_UPDATES = tries, ways
                            try:
                                outputs.append(rnn(x)[0].detach())  # with a graph, as in training
                                outcome.append("solved")
                            except odernn.ImplicitSolveError:
                                outcome.append("not solved")
                        newton_tries.CONTINUATION, implicit.NEWTON_UPDATES = continuation, updates
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
                        if outcome[2:] == ["solved", "solved"]:
                            gaps.append(float((outputs[-1] - torch.stack(per_token)).abs().max()))
    for (before, after, lu, per_token), count in sorted(counts.items()):
        print(f"{count:3d} layers: {before} by GMRES updates without continuation, {after} with it, {lu} "
              f"by the engine (then LU updates); {per_token} by the per-token cell (Newton's linear systems by LU)")
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
