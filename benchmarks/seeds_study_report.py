"""The seeds study's report (``python benchmarks/seeds_study.py report``): tables, figures and the
stability check's confusion table, from the run folders that have finished. Nothing is estimated:
a cell or a phase without finished runs is said to be missing."""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import tempfile
from pathlib import Path

from seeds_study import FAILURES, best_rates, outcome, records, rows_of, unigram_loss
from textlm.compare import checks

START, END = "<!-- seeds-study:begin -->", "<!-- seeds-study:end -->"


def section(page: str, name: str) -> tuple[str, str, str]:
    """``page`` cut at its study section: up to and with the line :data:`START`, the lines between,
    and from the line :data:`END` on (:class:`ValueError` where the two lines are not there once
    each, in that order)."""
    lines = page.splitlines(keepends=True)
    bare = [line.rstrip("\r\n") for line in lines]
    if bare.count(START) != 1 or bare.count(END) != 1 or bare.index(START) > bare.index(END):
        raise ValueError(f"--docs {name}: give a page with one line {START} and, after it, one line {END}; "
                         "the study's section goes between them")
    begin, end = bare.index(START) + 1, bare.index(END)
    return "".join(lines[:begin]), "".join(lines[begin:end]), "".join(lines[end:])
NOISE = ("0.01", "0.05", "0.1")


def _mean_std(values, digits=3) -> str:
    values = [v for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return f"{statistics.fmean(values):,.{digits}f} ± {statistics.stdev(values):,.{digits}f}"


def validations(row: dict) -> list[dict]:
    """A run's periodic validations, one per step (a run resumed from a checkpoint logs again those
    after it: the last one counts), in step order; then, where the final weights are the best ones,
    their validation on the whole split (the periodic ones stop before the last step)."""
    periodic, final = {}, None
    for r in records(row):
        if "valid_loss" in r:
            if r.get("final"):
                final = r
            else:
                periodic[r["step"]] = r
    found = [periodic[step] for step in sorted(periodic)]
    if final is not None and row.get("best_step") == row.get("step") == final["step"] and final["step"] not in periodic:
        found.append(final)
    return found


def to_target(row: dict, target: float) -> tuple[float | None, float | None]:
    """Training tokens and wall-clock seconds at the first validation at or below ``target``."""
    for r in validations(row):
        if r["valid_loss"] <= target:
            return r["tokens"], r["elapsed"]
    return None, None


def found_checks(row: dict, logged: bool = False) -> dict:
    """The check's records of a run (``check_0``, ``check_0.05``): today's (the run's
    ``recheck.json``, else what it logged, where that was already today's check), or with
    ``logged`` what the run logged (a failed run's from its metrics)."""
    again = Path(row["folder"]) / "recheck.json"
    if not logged and again.is_file():
        found = json.loads(again.read_text())
    else:
        found = row if "check_0" in row else checks(records(row))
    probed = Path(row["folder"]) / "probe.json"  # the training-time probe at 5 % (seeds_study.py probe)
    if not logged and probed.is_file():
        found = {**found, **{k: v for k, v in json.loads(probed.read_text()).items() if k.startswith("probe_")}}
    return found


def verdicts(row: dict, logged: bool = False) -> tuple[str | None, str | None]:
    """The verdicts at initialisation and at 5 % (:func:`found_checks`)."""
    found = found_checks(row, logged)
    return (found.get("check_0") or {}).get("verdict"), (found.get("check_0.05") or {}).get("verdict")


def label(row: dict) -> str:
    """A run's cell, with its initial recurrent gain where it is not 1."""
    gain = row.get("init_gain", 1)
    return row["cell"] + (f", recurrent weights ×{gain:g} at initialisation" if gain != 1 else "")


def fail_table(fail: list[dict], unigram: float) -> list[str]:
    """Every run made to fail: the check's verdicts (today's) and margins before training and at
    5 %, and what became of it."""
    lines = ["| run | lr | at initialisation (margin) | at 5 % (margin) | probe at 5 % (margin) | outcome | "
             "validation loss |", "|---|---|---|---|---|---|---|"]
    for r in fail:
        found = found_checks(r)
        at = [f"{c['verdict']} ({c['margin']:+.2f})" if (c := found.get(k)) else "—" for k in ("check_0", "check_0.05")]
        probed = f"{found['probe_0.05']['margin']:+.2f}" if "probe_0.05" in found else "—"
        loss = "failed" if "failed" in r else f"{r['valid_loss']:.3f}"
        lines.append(f"| {label(r)} | {r['lr']:g} | {at[0]} | {at[1]} | {probed} | {outcome(r, unigram)} | {loss} |")
    return lines


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
             "tokens to target | seconds to target | grad norm (median) | grad norm (max) | loss spikes | NaN recoveries |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
                                 _mean_std([r.get("grad_norm_max") for r in mine], 1),
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
    pushes large states out, or a field that does not restore them); ``"probe"`` the probe's margin
    below 0. ``None`` where there was no check."""
    if not check:
        return None
    if rule == "probe":
        return check["margin"] < 0
    drifts = check.get("restoring_far_field") is False
    if rule == "far":
        return check.get("far_field") is False or drifts
    return check["verdict"] in FAILURES or (rule == "drift" and drifts)


CHECKS = (("at initialisation", "check_0"), ("at 5 % of the budget", "check_0.05"))
PROBE = (("at 5 % of the budget", "probe_0.05"),)  # the probe runs during training only

PREDICTORS = (  # (short name, what it is, read the verdicts the runs logged, rule of :func:`predicted`, when)
    ("the logged verdict", "the verdict as the runs logged it (the check before the far-field condition)", True,
     "verdict", CHECKS),
    ("today's verdict", "today's verdict (with the far-field condition; `seeds_study.py recheck`)", False, "verdict",
     CHECKS),
    ("verdict or drift note", "today's verdict, or its note that the field does not restore large states (the state "
     "drifts)", False, "drift", CHECKS),
    ("far field alone", "the far field alone: a step that pushes large states out, or a field that does not restore "
     "them", False, "far", CHECKS),
    ("the probe", "the training-time probe: `stability.Probe`'s margin below 0 (the largest and rightmost "
     "eigenvalues of the field at the training batch's carried state, scaled by the step, outside the stability "
     "region; `odernn train --probe-every`, measured by `seeds_study.py probe` on each run's weights at 5 %)",
     False, "probe", PROBE))


OUTCOMES = ("diverged", "unstable", "trained")


def confusion(rows: list[dict], unigram: float, logged: bool, rule: str, key: str) -> dict:
    """``{(predicted to fail, outcome): runs}`` of one predictor at one check (``check_0``, ``check_0.05``)."""
    table = {(p, o): 0 for p in (True, False) for o in OUTCOMES}
    for r in rows:
        p = predicted(found_checks(r, logged).get(key), rule)
        if p is not None:
            table[(p, outcome(r, unigram))] += 1
    return table


def precision_recall(table: dict) -> tuple[str, str]:
    tp, fp = table[(True, "diverged")], table[(True, "unstable")] + table[(True, "trained")]
    fn = table[(False, "diverged")]
    return (f"{tp / (tp + fp):.2f}" if tp + fp else "—"), (f"{tp / (tp + fn):.2f}" if tp + fn else "—")


def prediction(all_runs: list[dict], unigram: float) -> tuple[list[str], list[dict]]:
    """Confusion tables of each predictor (:data:`PREDICTORS`) at initialisation and at 5 % against
    each ODE run's outcome, with precision and recall of "predicted to fail" for "diverged"; a
    summary that keeps the runs at convergence apart (the far-field condition was designed after
    the sweep and the failures: on those runs its figures are in-sample); and the runs today's
    verdict gets wrong."""
    rows = [r for r in all_runs if verdicts(r, logged=True)[0] is not None]  # the runs with ODE layers
    # what the far-field condition was not designed on: the runs at convergence, and the runs made to
    # fail by their initial weights (added after it)
    later = [r for r in rows if r["phase"] == "seeds" or r.get("init_gain", 1) != 1]
    lines = ["In sample and out of it: each predictor's calls (runs predicted to fail that diverged), false "
             "alarms (predicted to fail, did not diverge) and misses (diverged, not predicted), on the sweep and "
             "the failures by step and rate (which the far-field condition was designed after), and on the runs "
             "it had not seen: those at convergence (at initialisation without seed 0, whose initial weights are "
             "those of the sweep) and those made to fail by their initial recurrent weights. A run that failed "
             "before 5 % of its budget has no check there.", "",
             "| predictor | check | sweep, failures by step and rate: calls / false alarms / misses | "
             "at convergence, failures by initial weights: calls / false alarms / misses |", "|---|---|---|---|"]
    for name, _, logged, rule, when_checked in PREDICTORS[1:]:
        for when, key in when_checked:
            counts = []
            unseen = [r for r in later if key != "check_0" or r["phase"] != "seeds" or r["seed"] != 0]
            for subset in ([r for r in rows if r not in later], unseen):
                t = confusion(subset, unigram, logged, rule, key)
                counts.append(f"{t[(True, 'diverged')]} / {t[(True, 'unstable')] + t[(True, 'trained')]} / "
                              f"{t[(False, 'diverged')]} (of {sum(t.values())})")
            lines.append(f"| {name} | {when} | " + " | ".join(counts) + " |")
    lines.append("")
    for _, title, logged, rule, when_checked in PREDICTORS:
        lines += [f"*Predicting with {title}.*", ""]
        for when, key in when_checked:
            table = confusion(rows, unigram, logged, rule, key)
            precision, recall = precision_recall(table)
            lines += [f"Verdict {when} ({sum(table.values())} runs; precision {precision}, recall {recall} for "
                      f"'diverged').", "",
                      "| predicted | diverged | unstable (spikes) | trained |", "|---|---|---|---|",
                      *(f"| {'to fail' if p else 'to train'} | "
                        + " | ".join(str(table[(p, o)]) for o in OUTCOMES) + " |"
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
            restored = "; ".join(" / ".join({True: "yes", False: "no", None: "—"}[(found.get(k) or {}).get(c)]
                                            for c in ("far_field", "restoring_far_field"))
                                  for k in ("check_0", "check_0.05"))
            lines.append(f"| {label(r)} ({r['phase']}, seed {r['seed']}) | {r['lr']:g} | {v0} | {v5 or '—'} | {restored} | "
                         f"{state} | {loss} |")
    return lines + [""], rows


# -- the seed claims, each judged by a rule fixed before the runs at convergence were complete ---
CLASSICAL = ("torch-rnn", "torch-lstm", "torch-gru")
SOLVERS = ("gru-ode:alexander2", "gru-ode:dopri5:rtol=1e-3")  # the same field as gru-ode:rk4, other steps


def separation(mine: list[float | None], theirs: list[float | None]) -> str:
    """``"better"`` where every seed of ``mine`` is below every seed of ``theirs`` (lower is better),
    ``"worse"`` where every one is above, ``"overlap"`` otherwise; ``"neither"`` where no seed of
    either has a finite value (a target neither reached), ``"missing"`` where a seed was not
    measured (``None`` or NaN). With 3 seeds against 3, a complete separation is the one-sided exact
    Mann–Whitney test at p = 1/20 = 0.05; a seed that never reached a target, or failed, counts as
    infinite."""
    values = mine + theirs
    if any(v is None or math.isnan(v) for v in values):
        return "missing"
    if not any(map(math.isfinite, values)):
        return "neither"
    if max(mine) < min(theirs):
        return "better"
    if min(mine) > max(theirs):
        return "worse"
    return "overlap"


JUDGED = {"better": "holds", "worse": "does not hold", "overlap": "inconclusive", "missing": "not measured",
          "neither": "inconclusive"}


def per_seed(seeds: list[dict], cell: str, measure) -> list[float | None]:
    """``measure`` of each of a cell's runs at convergence: infinite for a failed run, or a value
    that diverged (NaN); ``None`` where the run did not measure it."""
    def one(r):
        if "failed" in r:
            return math.inf
        value = measure(r)
        return None if value is None else math.inf if math.isnan(value) else value
    return [one(r) for r in seeds if r["cell"] == cell]


def _values(values: list[float | None], digits: int, infinite: str) -> str:
    """Mean ± std of the finite values, and how many seeds were ``infinite`` or not measured."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    text = _mean_std(finite, digits) if finite else infinite if values else "—"
    if finite:
        for count, said in ((sum(v is not None and math.isinf(v) for v in values), infinite),
                            (sum(v is None for v in values), "not measured")):
            if count:
                text += f" ({count} {said})"
    return text


def _glance(verdicts: list[str]) -> str:
    """One cell of the at-a-glance table: the verdicts against the classical cells, grouped."""
    groups = {}
    for other, verdict in zip(CLASSICAL, verdicts):
        key = "a tie" if verdict.endswith("(a tie)") else verdict.split(" (")[0]
        groups.setdefault(key, []).append(other.removeprefix("torch-"))
    if len(groups) == 1:
        return f"{next(iter(groups))} (all {len(CLASSICAL)})"
    return "; ".join(f"{verdict} ({', '.join(others)})" for verdict, others in groups.items())


def claims(plan, sweep: list[dict], seeds: list[dict], cells: list[str], target: float | None,
           unigram: float) -> list[str]:
    """Each seed claim, per ODE cell against each classical cell, judged by :func:`separation` of
    the per-seed values (where both cells have all their seeds at convergence)."""
    complete = {c for c in cells if {r["seed"] for r in seeds if r["cell"] == c} >= set(plan.seeds)}
    ode = [c for c in cells if c not in CLASSICAL]

    def loss_at_one_epoch(r):
        found = validations(r)
        return found[plan.eval_per_epoch - 1]["valid_loss"] if len(found) >= plan.eval_per_epoch else math.inf

    def reached(column):  # tokens (0) or seconds (1) to the target; infinite where never reached
        def measure(r):
            if target is None:
                return None
            found = to_target(r, target)[column]
            return math.inf if found is None else found
        return measure

    def fragility(r):
        noisy = r.get("valid_ppl_noise_0.1")
        return None if noisy is None else noisy / r["valid_ppl"]

    def events(cell):  # spikes, NaN recoveries and failed seeds over the seeds at convergence
        return sum(1 if "failed" in r else r["spikes"] + r["nan_recoveries"] for r in seeds if r["cell"] == cell)

    def rates_that_train(cell):
        return sum(outcome(r, unigram) != "diverged" for r in sweep if r["cell"] == cell)

    def pair(measure, digits, infinite, fallback=None, trained_only=False):
        def judge(cell, other):
            if trained_only and any(outcome(r, unigram) == "diverged" for r in seeds if r["cell"] in (cell, other)):
                return "not judged (diverged)"
            found = separation(per_seed(seeds, cell, measure), per_seed(seeds, other, measure))
            if found == "neither" and fallback:
                again = separation(per_seed(seeds, cell, fallback), per_seed(seeds, other, fallback))
                return JUDGED[again] + " (neither reached it; loss after one epoch)"
            return JUDGED[found]

        def value(cell):
            text = _values(per_seed(seeds, cell, measure), digits, infinite)
            if fallback and text.startswith(infinite):
                text += f"; {_values(per_seed(seeds, cell, fallback), 3, 'failed')} after one epoch"
            return text
        return value, judge

    def stability():
        def judge(cell, other):  # dominance: more rates and no more events, or no fewer rates and fewer events
            more, fewer = rates_that_train(cell) - rates_that_train(other), events(other) - events(cell)
            if more == fewer == 0:
                return "does not hold (a tie)"
            if more >= 0 and fewer >= 0:
                return "holds"
            if more <= 0 and fewer <= 0:
                return "does not hold"
            return "inconclusive"
        return (lambda cell: f"{rates_that_train(cell)} of {len(plan.rates)} rates; {events(cell)} events"), judge

    perplexity = pair(lambda r: r["test_ppl"], 3, "failed")
    table = [("lower perplexity",
              "**Lower perplexity**: test perplexity of the best weights (whole test split).", perplexity),
             ("faster, in tokens",
              "**Faster convergence, in tokens** (the abstract): training tokens to the common target; where "
              "neither cell reached it, the validation loss after one epoch.",
              pair(reached(0), 0, "never", loss_at_one_epoch)),
             ("faster, in wall time",
              "**Faster convergence, in wall time**: seconds to the common target (one CPU thread per run; the "
              "machine's load moves these by up to ±25 %, see the status above).", pair(reached(1), 0, "never")),
             ("more stable",
              "**More stable** (the abstract; not per seed): the learning rates of the sweep at which the cell "
              f"trains (of {len(plan.rates)}, one seed each), and its events at convergence (loss spikes, NaN "
              "recoveries and failed runs, summed over the seeds). Holds where the cell trains at no fewer rates "
              "with fewer events, or at more rates with no more events; does not hold the other way round or "
              "on a tie (nothing shows it more stable); inconclusive where the two measures disagree.",
              stability()),
             ("more robust",
              "**More robust** (Yan et al., who measure accuracy under perturbation): validation perplexity with "
              "10 % of the input characters replaced.", pair(lambda r: r.get("valid_ppl_noise_0.1"), 3, "failed")),
             ("more robust, relative",
              "**More robust, relative to the clean model** (the measure fixed first): the perplexity with 10 % "
              "replaced over the clean one (lower: more robust). Not judged where a run diverged (above the "
              "unigram model): a model that ignores its input loses nothing to noise, so its ratio says nothing "
              "(seen after the fact, on antisymmetric's runs, whose ratio is below 1).",
              pair(fragility, 3, "failed", trained_only=True))]
    lines = ["Each ODE cell against each classical cell (rule fixed before the runs at convergence were complete: "
             "a claim *holds* against a cell where every seed beats every seed of that cell, *does not hold* "
             "where every seed loses, and is *inconclusive* where they overlap; with 3 seeds each, a complete "
             "separation is the one-sided exact Mann–Whitney test at p = 0.05; a failed seed, or a target never "
             "reached, counts as the worst value).", ""]
    judged = [c for c in ode if c in complete]
    if judged and all(c in complete for c in CLASSICAL):
        lines += ["**At a glance**: each claim's verdicts against the three classical cells (the tables below give "
                  "the numbers).", "", "| cell | " + " | ".join(short for short, _, _ in table) + " |",
                  "|---|" + "---|" * len(table)]
        for cell in judged:
            lines.append(f"| {cell} | " + " | ".join(_glance([judge(cell, other) for other in CLASSICAL])
                                                   for _, _, (_, judge) in table) + " |")
        lines.append("")
    for _, title, (value, judge) in table:
        lines += [title, "", "| cell | value | " + " | ".join(f"against {c}" for c in CLASSICAL) + " |",
                  "|---|---|" + "---|" * len(CLASSICAL)]
        for cell in [c for c in CLASSICAL if c in cells] + ode:
            if cell in complete:
                lines.append(f"| {cell} | {value(cell)} | " + " | ".join(
                    "—" if cell in CLASSICAL or other not in complete else judge(cell, other) for other in CLASSICAL)
                    + " |")
        lines.append("")
    waiting = [c for c in cells if c not in complete]
    if waiting:
        lines += ["Waiting for their runs at convergence: " + ", ".join(waiting) + ".", ""]
    solvers = [c for c in SOLVERS if c in complete]
    if "gru-ode:rk4" in complete and solvers:
        value, judge = perplexity
        lines += ["**Implicit and adaptive steps** (the same GRU-ODE field at Δ = 1 as `gru-ode:rk4`; the claim: they "
                  "train it better): " + "; ".join(
                      f"{c}: test perplexity {value(c)} against {value('gru-ode:rk4')}, {judge(c, 'gru-ode:rk4')}; "
                      f"trains at {rates_that_train(c)} of {len(plan.rates)} rates against {rates_that_train('gru-ode:rk4')}"
                      for c in solvers) + ".", ""]
    return lines


def _drawn_from(picture: Path, data) -> tuple[bool, str]:
    """Whether ``picture`` was drawn from ``data`` already (its fingerprint is in the PNG's
    ``Description``), and the fingerprint: a report asked again redraws only what changed."""
    import hashlib

    from PIL import Image
    fingerprint = hashlib.sha256(repr(data).encode()).hexdigest()
    try:
        with Image.open(picture) as image:
            return image.info.get("Description") == fingerprint, fingerprint
    except OSError:  # none yet, or not a picture
        return False, fingerprint


def figures(sweep: list[dict], seeds: list[dict], cells: list[str], docs_figures: Path,
            unigram: float, target: float | None = None) -> list[str]:
    """The sweep (final loss against rate) and the learning curves at convergence (the mean over a
    cell's seeds, as long as its shortest seed, against tokens and against wall time), each cell in
    one style in both: the classical cells black, the ODE cells in colour. A picture whose data
    have not changed since it was drawn is left as it is."""
    import numpy as np
    ceiling = unigram + 0.4  # a diverged run's loss (up to 191 here) would flatten every other line
    points = {cell: sorted((r["lr"], min(r["valid_loss"], ceiling) if "failed" not in r and
                            math.isfinite(r["valid_loss"]) else ceiling) for r in sweep if r["cell"] == cell)
              for cell in cells}
    means = {}
    for cell in cells:
        curves = [np.array([(q["tokens"], q["elapsed"], q["valid_loss"]) for q in validations(r)])
                  for r in seeds if r["cell"] == cell and "failed" not in r]
        curves = [c for c in curves if len(c)]
        if curves:
            length = min(len(c) for c in curves)
            means[cell] = np.stack([c[:length] for c in curves]).mean(axis=0)
    sweep_picture, curves_picture = docs_figures / "seeds_study_sweep.png", docs_figures / "seeds_study_curves.png"
    drawing = inspect.getsource(figures)  # a change to how they are drawn redraws them too
    sweep_done, sweep_print = _drawn_from(sweep_picture, (drawing, cells, points, unigram))
    curves_done, curves_print = _drawn_from(
        curves_picture, (drawing, cells, {c: m.tolist() for c, m in means.items()}, target))
    written = [picture.name for picture, wanted in ((sweep_picture, sweep), (curves_picture, seeds)) if wanted]
    if (not sweep or sweep_done) and (not seeds or curves_done):
        return written
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    docs_figures.mkdir(parents=True, exist_ok=True)
    colours = iter(plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors)
    dashes = iter(("-", "--", ":"))
    style = {cell: dict(color="black", linestyle=next(dashes), linewidth=1.8) if cell in CLASSICAL
             else dict(color=next(colours), linestyle="-", linewidth=1.2) for cell in cells}
    if sweep and not sweep_done:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
        for cell in cells:
            if points[cell]:
                ax.plot(*zip(*points[cell]), marker="o", label=cell, markersize=4, **style[cell])
        ax.axhline(unigram, color="grey", linewidth=1, linestyle="-.", label="unigram model (above: diverged)")
        ax.set_ylim(top=ceiling + 0.05)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (AdamW)")
        ax.set_ylabel("validation loss after one epoch (nats/char)\n"
                      f"(diverged and failed runs drawn at {ceiling:.2f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.savefig(sweep_picture, bbox_inches="tight", metadata={"Description": sweep_print})
        plt.close(fig)
    if seeds and not curves_done:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=120)
        for cell, mean in means.items():
            for ax, column in zip(axes, (0, 1)):
                ax.plot(mean[:, column], mean[:, 2], label=cell, **style[cell])
        for ax, label in zip(axes, ("training tokens", "wall-clock seconds (one CPU thread; log scale)")):
            if target:
                ax.axhline(target, color="grey", linestyle="-.", linewidth=1, label="target (2 % above torch-gru)")
            ax.set_xlabel(label)
            ax.set_ylabel("validation loss (nats/char)")
            ax.grid(alpha=0.3)
        axes[1].set_xscale("log")  # the adaptive and implicit cells take tens of times longer
        axes[1].xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axes[1].xaxis.set_major_formatter(ScalarFormatter())
        axes[1].xaxis.set_minor_formatter(NullFormatter())
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.savefig(curves_picture, bbox_inches="tight", metadata={"Description": curves_print})
        plt.close(fig)
    return written


def report(plan, out: Path, cells: list[str], docs: str | None = None) -> str:
    unigram = unigram_loss(plan.base)
    sweep, fail = rows_of(out / "sweep"), rows_of(out / "fail")
    chosen = best_rates(out, cells, plan.rates)
    # the runs at convergence of this plan: each cell's chosen rate and seeds (a rerun sweep that chose
    # another rate leaves the earlier runs on disk; they are not this study's)
    seeds = [r for r in rows_of(out / "seeds") if chosen.get(r["cell"]) == r["lr"] and r["seed"] in plan.seeds]
    gru = [r["valid_loss"] for r in seeds if r["cell"] == "torch-gru" and "failed" not in r]
    target = 1.02 * min(gru) if gru else None
    confusion, predicted = prediction(sweep + fail + seeds, unigram)
    docs_figures = Path(docs).parent / "figures" if docs else out / "figures"
    pictures = figures(sweep, seeds, cells, docs_figures, unigram, target)
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
            "**The seed claims**", "", *claims(plan, sweep, seeds, cells, target, unigram),
            "**Does the stability check predict failure?**", "",
            "The runs made to fail (one epoch, seed 0; today's check, with the margin of the sampled spectrum: "
            "below 0, the step amplifies near the trajectory; an unstable step with a positive margin is the far "
            "field's, a step that pushes large states out):", "", *fail_table(fail, unigram), "", *confusion,
            *(f"![{name}](figures/{name})" for name in pictures)]
    markdown = "\n".join(text) + "\n"
    if docs:
        path = Path(docs)
        before, _, after = section(path.read_text(encoding="utf-8"), docs)
        fresh = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp")
        try:  # atomic: an interrupted report leaves the page as it was
            with fresh:
                fresh.write(before + markdown + after)
            os.replace(fresh.name, path)
        finally:
            Path(fresh.name).unlink(missing_ok=True)
    return markdown
