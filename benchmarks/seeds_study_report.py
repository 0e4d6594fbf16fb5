"""The seeds study's report (``python benchmarks/seeds_study.py report``): tables, figures and the
stability check's confusion table, from the run folders that have finished. Nothing is estimated:
a cell or a phase without finished runs is said to be missing."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from seeds_study import FAILURES, best_rates, outcome, records, rows_of, unigram_loss
from textlm.compare import checks

START, END = "<!-- seeds-study:begin -->", "<!-- seeds-study:end -->"
NOISE = ("0.01", "0.05", "0.1")


def _mean_std(values, digits=3) -> str:
    values = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return f"{statistics.fmean(values):,.{digits}f} ± {statistics.stdev(values):,.{digits}f}"


def to_target(row: dict, target: float) -> tuple[float | None, float | None]:
    """Training tokens and wall-clock seconds at the first periodic validation at or below ``target``."""
    for r in records(row):
        if "valid_loss" in r and not r.get("final") and r["valid_loss"] <= target:
            return r["tokens"], r["elapsed"]
    return None, None


def found_checks(row: dict, logged: bool = False) -> dict:
    """The check's records of a run (``check_0``, ``check_0.05``): today's (the run's
    ``recheck.json``, else what it logged, where that was already today's check), or with
    ``logged`` what the run logged (a failed run's from its metrics)."""
    again = Path(row["folder"]) / "recheck.json"
    if not logged and again.is_file():
        return json.loads(again.read_text())
    return row if "check_0" in row else checks(records(row))


def verdicts(row: dict, logged: bool = False) -> tuple[str | None, str | None]:
    """The verdicts at initialisation and at 5 % (:func:`found_checks`)."""
    found = found_checks(row, logged)
    return (found.get("check_0") or {}).get("verdict"), (found.get("check_0.05") or {}).get("verdict")


def sweep_table(sweep: list[dict], cells: list[str], rates, unigram: float) -> list[str]:
    lines = ["| cell | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | rates that train |",
             "|---|" + "---|" * (len(rates) + 1)]
    for cell in cells:
        mine = {r["lr"]: r for r in sweep if r["cell"] == cell}
        if not mine:
            continue
        cells_text = []
        for lr in rates:
            r = mine.get(lr)
            if r is None:
                cells_text.append("not run yet")
            else:
                state = outcome(r, unigram)
                loss = "failed" if "failed" in r else f"{r['valid_loss']:.3f}"
                cells_text.append(loss + ("" if state == "trained" else f" ({state})"))
        trained = sorted(lr for lr, r in mine.items() if outcome(r, unigram) != "diverged")
        span = ", ".join(f"{lr:g}" for lr in trained) or "none"
        lines.append(f"| {cell} | " + " | ".join(cells_text) + f" | {span} |")
    return lines


def seeds_table(seeds: list[dict], cells: list[str], target: float | None) -> list[str]:
    lines = ["| cell | lr | seeds | best valid ppl | test ppl | BLEU | ROUGE-L | tokens/s (steady) | epochs | "
             "tokens to target | seconds to target | grad norm (median) | loss spikes | NaN recoveries |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        mine = [r for r in seeds if r["cell"] == cell and "failed" not in r]
        if not mine:
            continue
        reach = [to_target(r, target) if target else (None, None) for r in mine]
        lines.append(" | ".join([f"| {cell}", f"{mine[0]['lr']:g}", str(len(mine)),
                                 _mean_std([r["valid_ppl"] for r in mine]), _mean_std([r["test_ppl"] for r in mine]),
                                 _mean_std([r["bleu"] for r in mine], 1), _mean_std([r["rouge_l"] for r in mine]),
                                 _mean_std([r["tokens_per_s"] for r in mine], 0), _mean_std([r["epochs"] for r in mine], 2),
                                 _mean_std([t for t, _ in reach], 0) + (f" ({sum(t is None for t, _ in reach)} never)"
                                                                          if target and any(t is None for t, _ in reach)
                                                                          else ""),
                                 _mean_std([s for _, s in reach], 0), _mean_std([r.get("grad_norm_median") for r in mine], 2),
                                 _mean_std([r["spikes"] for r in mine], 1), _mean_std([r["nan_recoveries"] for r in mine], 1)])
                     + " |")
    return lines


def robustness_table(seeds: list[dict], cells: list[str]) -> list[str]:
    lines = ["| cell | clean | " + " | ".join(f"{100 * float(p):g} % replaced" for p in NOISE) + " |",
             "|---|---|" + "---|" * len(NOISE)]
    for cell in cells:
        mine = [r for r in seeds if r["cell"] == cell and "failed" not in r]
        if mine:
            lines.append(f"| {cell} | {_mean_std([r['valid_ppl'] for r in mine])} | " + " | ".join(
                _mean_std([r.get(f"valid_ppl_noise_{p}") for r in mine]) for p in NOISE) + " |")
    return lines


def predicted(check: dict | None, rule: str) -> bool | None:
    """Whether a check predicts failure by ``rule``: ``"verdict"`` a step fault; ``"drift"`` that,
    or a field that does not restore large states; ``"far"`` the far field alone (a step that
    pushes large states out, or a field that does not restore them). ``None`` where there was no
    check."""
    if not check:
        return None
    drifts = check.get("restoring_far_field") is False
    if rule == "far":
        return check.get("far_field") is False or drifts
    return check["verdict"] in FAILURES or (rule == "drift" and drifts)


PREDICTORS = (("the verdict as the runs logged it (the check before the far-field condition)", True, "verdict"),
              ("today's verdict (with the far-field condition; `seeds_study.py recheck`)", False, "verdict"),
              ("today's verdict, or its note that the field does not restore large states (the state drifts)",
               False, "drift"),
              ("the far field alone: a step that pushes large states out, or a field that does not restore them",
               False, "far"))


def prediction(all_runs: list[dict], unigram: float) -> tuple[list[str], list[dict]]:
    """Confusion tables of each predictor (:data:`PREDICTORS`) at initialisation and at 5 % against
    each ODE run's outcome, with precision and recall of "predicted to fail" for "diverged"; and
    the runs today's verdict gets wrong."""
    rows = [r for r in all_runs if verdicts(r, logged=True)[0] is not None]  # the runs with ODE layers
    lines = []
    for title, logged, rule in PREDICTORS:
        lines += [f"*Predicting with {title}.*", ""]
        for when, key in (("at initialisation", "check_0"), ("at 5 % of the budget", "check_0.05")):
            table = {(p, o): 0 for p in (True, False) for o in ("diverged", "unstable", "trained")}
            for r in rows:
                p = predicted(found_checks(r, logged).get(key), rule)
                if p is not None:
                    table[(p, outcome(r, unigram))] += 1
            tp, fp = table[(True, "diverged")], table[(True, "unstable")] + table[(True, "trained")]
            fn = table[(False, "diverged")]
            precision = f"{tp / (tp + fp):.2f}" if tp + fp else "—"
            recall = f"{tp / (tp + fn):.2f}" if tp + fn else "—"
            lines += [f"Verdict {when} ({sum(table.values())} runs; precision {precision}, recall {recall} for "
                      f"'diverged').", "",
                      "| predicted | diverged | unstable (spikes) | trained |", "|---|---|---|---|",
                      *(f"| {'to fail' if p else 'to train'} | "
                        + " | ".join(str(table[(p, o)]) for o in ("diverged", "unstable", "trained")) + " |"
                        for p in (True, False)), ""]
    lines += ["The verdict before training sees the initial weights only: a cell's sweep runs share them (seed 0), "
              "so it repeats across their rates.", "",
              "Where today's verdict is wrong (a step fault without divergence, or a divergence without one):", "",
              "| run | lr | at initialisation | at 5 % | far field: step keeps / flow restores (init; 5 %) | outcome | "
              "validation loss |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        found = found_checks(r)
        v0, v5 = ((found.get(k) or {}).get("verdict") for k in ("check_0", "check_0.05"))
        state = outcome(r, unigram)
        if any(v in FAILURES for v in (v0, v5) if v is not None) != (state == "diverged"):
            loss = "failed" if "failed" in r else f"{r['valid_loss']:.3f}"
            phase = Path(r["folder"]).parts[-5]
            restored = "; ".join(" / ".join({True: "yes", False: "no", None: "—"}[(found.get(k) or {}).get(c)]
                                            for c in ("far_field", "restoring_far_field"))
                                  for k in ("check_0", "check_0.05"))
            lines.append(f"| {r['cell']} ({phase}, seed {r['seed']}) | {r['lr']:g} | {v0} | {v5 or '—'} | {restored} | "
                         f"{state} | {loss} |")
    return lines + [""], rows


def figures(sweep: list[dict], seeds: list[dict], cells: list[str], docs_figures: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    written = []
    docs_figures.mkdir(parents=True, exist_ok=True)
    if sweep:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for cell in cells:
            points = sorted((r["lr"], r["valid_loss"]) for r in sweep if r["cell"] == cell and "failed" not in r
                            and math.isfinite(r["valid_loss"]))
            if points:
                ax.plot(*zip(*points), "o-", label=cell, markersize=4)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (AdamW)")
        ax.set_ylabel("validation loss after one epoch (nats/char)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        target = docs_figures / "seeds_study_sweep.png"
        fig.savefig(target, bbox_inches="tight")
        plt.close(fig)
        written.append(target.name)
    if seeds:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
        for cell in cells:
            curves = [np.array([(q["tokens"], q["elapsed"], q["valid_loss"]) for q in records(r)
                                if "valid_loss" in q and not q.get("final")])
                      for r in seeds if r["cell"] == cell and "failed" not in r]
            curves = [c for c in curves if len(c)]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            stack = np.stack([c[:length] for c in curves])
            for ax, column in zip(axes, (0, 1)):
                ax.plot(stack[:, :, column].mean(axis=0), stack[:, :, 2].mean(axis=0), label=cell)
        for ax, label in zip(axes, ("training tokens", "wall-clock seconds (one CPU thread)")):
            ax.set_xlabel(label)
            ax.set_ylabel("validation loss (nats/char)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        target = docs_figures / "seeds_study_curves.png"
        fig.savefig(target, bbox_inches="tight")
        plt.close(fig)
        written.append(target.name)
    return written


def report(plan, out: Path, cells: list[str], docs: str | None = None) -> str:
    unigram = unigram_loss(plan.base)
    sweep, seeds, fail = rows_of(out / "sweep"), rows_of(out / "seeds"), rows_of(out / "fail")
    chosen = best_rates(out, cells, plan.rates)
    gru = [r["valid_loss"] for r in seeds if r["cell"] == "torch-gru" and "failed" not in r]
    target = 1.02 * min(gru) if gru else None
    confusion, predicted = prediction(sweep + fail + seeds, unigram)
    docs_figures = Path(docs).parent / "figures" if docs else out / "figures"
    pictures = figures(sweep, seeds, cells, docs_figures)
    text = [f"Runs finished: {len(sweep)} of the sweep, {len(seeds)} at convergence, {len(fail)} made to fail. "
            f"Unigram model: {unigram:.3f} nats/char (a run above it has diverged).", "",
            "**Learning-rate sweep** (validation loss after one epoch, seed 0; the chosen rate is each "
            "row's lowest):", "", *sweep_table(sweep, cells, plan.rates, unigram), "",
            "Chosen rates: " + (", ".join(f"{c} {lr:g}" for c, lr in chosen.items()) or "none yet") + ".", "",
            "**At convergence** (mean ± std over seeds; target: "
            + (f"{target:.3f} nats/char, 2 % above the best torch-gru validation loss" if target else "not set yet")
            + "):", "", *seeds_table(seeds, cells, target), "",
            "**Robustness** (validation perplexity with a fraction of the input characters replaced):", "",
            *robustness_table(seeds, cells), "",
            "**Does the stability check predict failure?**", "", *confusion,
            *(f"![{name}](figures/{name})" for name in pictures)]
    markdown = "\n".join(text) + "\n"
    if docs:
        path = Path(docs)
        page = path.read_text()
        if START in page and END in page:
            page = page[:page.index(START) + len(START)] + "\n" + markdown + page[page.index(END):]
            path.write_text(page)
    return markdown
