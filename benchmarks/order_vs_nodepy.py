"""Exact order verification: ``butcher`` against NodePy's ``order(mode='exact')``, in one run.

NodePy (the analysis package numerical analysts use) ships 51 methods; the ones whose coefficients
it stores exactly (SymPy objects, not float64) are verified by both libraries from the same
coefficients, and the answers are compared. Then the whole ``butcher`` catalogue (every entry,
generated families included) is verified from scratch.

    pip install -e ".[bench]"
    python benchmarks/order_vs_nodepy.py [--json results.json]

Times are wall-clock on this machine; the ratio is what holds across noisy runs.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def nodepy_methods():
    import nodepy.runge_kutta_method as rk
    methods = rk.loadRKM("All")
    import sympy as sp

    def is_exact(m):  # object arrays may still hold SymPy Floats (e.g. SSP63): those are not exact
        values = [*m.A.ravel(), *m.b]
        return m.A.dtype == object and not any(isinstance(x, sp.Basic) and x.has(sp.Float) for x in values)

    exact = {k: m for k, m in methods.items() if is_exact(m)}
    floats = sorted(set(methods) - set(exact))
    return exact, floats


def time_nodepy(methods) -> tuple[float, dict]:
    answers, start = {}, time.perf_counter()
    for name, m in methods.items():
        answers[name] = int(m.order(mode="exact"))
    return time.perf_counter() - start, answers


def time_butcher(methods) -> tuple[float, dict]:
    import butcher
    answers, start = {}, time.perf_counter()
    for name, m in methods.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tab = butcher.ButcherTableau(m.A.tolist(), list(m.b), list(m.c), name=name)
        answers[name] = tab.order()
    return time.perf_counter() - start, answers


def time_catalogue() -> tuple[float, float, int, list]:
    """Seconds to build every catalogue tableau from scratch (families generated from their
    formulas), and seconds to verify all of their orders and embedded orders."""
    import butcher
    from butcher import _families
    butcher.get.cache_clear()
    _families._generate.cache_clear()
    start = time.perf_counter()
    tableaux = {name: butcher.get(name) for name in butcher.names()}
    built = time.perf_counter() - start
    mismatches, start = [], time.perf_counter()
    for name, tab in tableaux.items():
        entry = butcher.entry(name)
        if tab.order() != entry.order or tab.embedded_order() != entry.embedded_order:
            mismatches.append(name)
    return built, time.perf_counter() - start, len(tableaux), mismatches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    exact, floats = nodepy_methods()
    print(f"NodePy methods with exact coefficients: {len(exact)} (float64-only, skipped: {', '.join(floats)})")
    ours_t, ours = time_butcher(exact)
    theirs_t, theirs = time_nodepy(exact)
    disagree = {k: (ours[k], theirs[k]) for k in exact if ours[k] != theirs[k]}
    width = max(map(len, exact))
    print(f"\n{'method'.ljust(width)}  nodepy  butcher")
    for k in exact:
        print(f"{k.ljust(width)}  {theirs[k]:>6}  {ours[k]:>7}{'   <- differs' if k in disagree else ''}")
    print(f"\nsame answers: {len(exact) - len(disagree)}/{len(exact)}"
          + (f"; differ: {disagree}" if disagree else ""))
    print(f"NodePy  order(mode='exact'), {len(exact)} methods: {theirs_t:8.2f} s")
    print(f"butcher order(),             {len(exact)} methods: {ours_t:8.2f} s  (tableau construction included)")
    print(f"speed-up on the same methods: {theirs_t / ours_t:.1f}x")

    build_t, verify_t, count, mismatches = time_catalogue()
    print(f"\nbutcher, whole catalogue ({count} methods): building the exact tableaux {build_t:.2f} s "
          f"(Gauss/Radau/Lobatto generated from their formulas in number fields), verifying every order and "
          f"embedded order {verify_t:.2f} s; "
          f"{'all match their references' if not mismatches else f'MISMATCH: {mismatches}'}")
    print(f"NodePy on its {len(exact)} exact methods / butcher verifying all {count}: {theirs_t / verify_t:.0f}x "
          f"(including the generation: {theirs_t / (build_t + verify_t):.1f}x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"nodepy_seconds": theirs_t, "butcher_seconds": ours_t, "methods": len(exact),
                       "speedup": theirs_t / ours_t, "same_answers": not disagree, "disagreements": disagree,
                       "catalogue_build_seconds": build_t, "catalogue_verify_seconds": verify_t,
                       "catalogue_methods": count}, fh, indent=1)


if __name__ == "__main__":
    main()
