"""Exact order verification: ``butcher`` against NodePy's ``order(mode='exact')``, in one run.

NodePy (the analysis package numerical analysts use) ships 51 methods; the ones whose coefficients
it stores exactly (SymPy objects, not float64) are verified by both libraries from the same
coefficients, and the answers are compared. Then the whole ``butcher`` catalogue (every entry,
generated families included) is verified from scratch.

Last, the same exact methods go through TEXT, as a user would type them: every coefficient of ``A``,
``b`` (and ``bhat`` where NodePy's pair has exact embedded weights) is printed with
``sympy.sstr``, the tableau is built from those strings (``butcher.parse_number`` reads them), and
its order, embedded order and stability function ``R(z)`` are compared with NodePy's: the order
with NodePy's ``order(mode='exact')`` (computed once, above), the embedded order with that of
NodePy's ``embedded_method``, ``R`` with NodePy's
``stability_function(mode='exact')`` (numerator and denominator polynomials), decided exactly in
an algebraic number field. A text that does not parse is reported with its error message. The
exit status is 1 on any parse failure or disagreement.

    pip install -e ".[bench]"
    python benchmarks/order_vs_nodepy.py [--json results.json] [--stability-seconds 60]

Times are wall-clock on this machine; the ratio is what holds across noisy runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import butcher


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
    from butcher import _families, _parse
    butcher.get.cache_clear()
    for cache in (_families._generate, _families._node_field, _families._node_groups, _parse._built_from):
        cache.cache_clear()  # every memo the build fills: nothing from the NodePy part above is reused
    start = time.perf_counter()
    tableaux = {name: butcher.get(name) for name in butcher.names()}
    built = time.perf_counter() - start
    mismatches, start = [], time.perf_counter()
    for name, tab in tableaux.items():
        entry = butcher.entry(name)
        if tab.order() != entry.order or tab.embedded_order() != entry.embedded_order:
            mismatches.append(name)
    return built, time.perf_counter() - start, len(tableaux), mismatches


# --- typed as printed: every exact NodePy method, through the text a user would type ----------



def _is_exact(values) -> bool:
    """Python/NumPy integers and SymPy numbers without Floats; floats are not exact."""
    import numbers
    import sympy as sp
    for x in values:
        if isinstance(x, sp.Basic):
            if x.has(sp.Float):
                return False
        elif not isinstance(x, numbers.Integral):
            return False
    return True


def exact_bhat(m):
    """NodePy's embedded weights when the method is a pair and they are exact, else ``None``."""
    bhat = getattr(m, "bhat", None)
    if bhat is None or not _is_exact(list(bhat)):
        return None
    return list(bhat)


def typed_as_printed(m) -> dict:
    """The method's coefficients as ``sympy.sstr`` prints them: what a user copies into a tableau."""
    import sympy as sp
    return {"A": [[sp.sstr(x) for x in row] for row in m.A.tolist()],
            "b": [sp.sstr(x) for x in m.b],
            "b_hat": None if exact_bhat(m) is None else [sp.sstr(x) for x in exact_bhat(m)]}


def _poly1d_expr(poly, z):
    """A NumPy ``poly1d`` with object coefficients (highest degree first) as a SymPy polynomial
    expression in ``z``, exactly (integers stay integers; floats are refused)."""
    import numbers
    import sympy as sp
    coefficients = list(poly.coeffs)
    if not _is_exact(coefficients):
        raise ValueError(f"inexact coefficients {coefficients}")
    coefficients = [sp.Integer(int(c)) if isinstance(c, numbers.Integral) else c for c in coefficients]
    return sp.Add(*(c * z**k for k, c in enumerate(reversed(coefficients))))


def same_rational_function(R, p, q, z) -> bool:
    """Exactly: is ``R`` (a SymPy rational function of ``z``) equal to ``p/q`` (SymPy polynomials)?
    ``R = P/Q`` equals ``p/q`` iff ``P q − p Q`` is the zero polynomial (neither needs to be in lowest
    terms); its coefficients are algebraic numbers (radicals, cos of rational multiples of pi,
    CRootOf), so the polynomial is built over the number field they generate, where zero is exact.
    Should SymPy fail to build that field, each coefficient's minimal polynomial decides instead."""
    import sympy as sp
    from sympy.polys.polyerrors import BasePolynomialError
    P, Q = sp.fraction(sp.together(R))
    difference = sp.expand(P * q - p * Q)
    try:
        return sp.Poly(difference, z, extension=True).is_zero
    except (BasePolynomialError, NotImplementedError):
        t = sp.Dummy("t")
        return all(c == 0 if c.is_Rational else sp.minimal_polynomial(c, t) == t
                   for c in sp.Poly(difference, z).all_coeffs())


def typed_check(methods, nodepy_orders, seconds=60.0) -> dict:
    """Every method of ``methods`` (NodePy's, by name) typed as ``sympy.sstr`` prints it: does the
    text load, get NodePy's order (``nodepy_orders``, already computed: not computed again) and
    NodePy's embedded order, and the same stability function? ``seconds`` limits NodePy's exact
    stability function, and the exact comparison, per method (over it: reported as skipped)."""
    rows = []
    for name, m in methods.items():
        start = time.perf_counter()
        text = typed_as_printed(m)
        row = {"method": name, "parsed": False, "error": None, "warnings": [],
               "butcher_order": None, "nodepy_order": nodepy_orders[name], "orders_agree": False,
               "butcher_embedded_order": None, "nodepy_embedded_order": None, "embedded_orders_agree": None,
               "embedded_skipped": None, "R_equal": None, "R_skipped": None}
        bhat = getattr(m, "bhat", None)
        if bhat is not None and text["b_hat"] is None:
            row["embedded_skipped"] = "NodePy's bhat is not exact (float64): the pair is typed without it"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tab = butcher.ButcherTableau(text["A"], text["b"], b_hat=text["b_hat"], name=name)
            row["warnings"] = [str(w.message) for w in caught]
            row["parsed"] = True
        except Exception as error:  # the text a user would type does not load: keep the message
            row["error"] = f"{type(error).__name__}: {error}"
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            continue
        row["butcher_order"] = tab.order()
        row["orders_agree"] = row["butcher_order"] == row["nodepy_order"]
        if text["b_hat"] is not None:
            row["butcher_embedded_order"] = tab.embedded_order()
            row["nodepy_embedded_order"] = int(m.embedded_method.order(mode="exact"))
            row["embedded_orders_agree"] = row["butcher_embedded_order"] == row["nodepy_embedded_order"]
        R, z = tab.stability_function(), butcher.z
        try:
            with butcher.time_limit(seconds):
                p, q = m.stability_function(mode="exact")
        except butcher.TimeLimitExceeded:
            row["R_skipped"] = f"NodePy's stability_function(mode='exact') took over {seconds:g} s"
        else:
            try:
                p, q = _poly1d_expr(p, z), _poly1d_expr(q, z)
            except ValueError as error:
                row["R_skipped"] = f"NodePy's stability_function(mode='exact') is not exact: {error}"
            else:
                try:
                    with butcher.time_limit(seconds):
                        row["R_equal"] = bool(same_rational_function(R, p, q, z))
                except butcher.TimeLimitExceeded:
                    row["R_skipped"] = f"the exact comparison of R took over {seconds:g} s"
        row["seconds"] = time.perf_counter() - start
        rows.append(row)

    n = len(rows)
    loaded = sum(r["parsed"] for r in rows)
    orders = sum(r["orders_agree"] for r in rows)
    compared = [r for r in rows if r["R_equal"] is not None]
    same_R = sum(r["R_equal"] for r in compared)
    pairs = [r for r in rows if r["embedded_orders_agree"] is not None]
    same_embedded = sum(r["embedded_orders_agree"] for r in pairs)
    skipped_R = {r["method"]: r["R_skipped"] for r in rows if r["R_skipped"]}
    summary = (f"typed as sympy.sstr prints them: {loaded}/{n} load, {orders}/{n} orders agree, "
               f"{same_R}/{n} stability functions agree"
               + (f" ({len(skipped_R)} not compared: {', '.join(skipped_R)})" if skipped_R else "")
               + f", {same_embedded}/{len(pairs)} embedded orders agree")
    failures = {}
    for r in rows:
        problems = [f"does not load: {r['error']}"] if r["error"] else []
        if r["parsed"] and not r["orders_agree"]:
            problems.append(f"order {r['butcher_order']}, NodePy's {r['nodepy_order']}")
        if r["embedded_orders_agree"] is False:
            problems.append(f"embedded order {r['butcher_embedded_order']}, NodePy's {r['nodepy_embedded_order']}")
        if r["R_equal"] is False:
            problems.append("R(z) differs from NodePy's")
        if problems:
            failures[r["method"]] = "; ".join(problems)
    return {"rows": rows, "summary": summary, "methods": n, "loaded": loaded, "orders_agree": orders,
            "stability_functions_agree": same_R, "stability_functions_compared": len(compared),
            "stability_functions_skipped": skipped_R, "embedded_orders_agree": same_embedded,
            "pairs_with_exact_bhat": len(pairs), "failures": failures, "ok": not failures}


def print_typed(result):
    rows = result["rows"]
    width = max(len("method"), *(len(r["method"]) for r in rows))
    yes = {True: "yes", False: "NO", None: "-"}
    print(f"\n{'method'.ljust(width)}  parsed  butcher  nodepy  R equal  embedded (butcher/nodepy)  seconds")
    for r in rows:
        order = "-" if r["butcher_order"] is None else str(r["butcher_order"])
        same_R = "skipped" if r["R_skipped"] else yes[r["R_equal"]]
        embedded = ("-" if r["butcher_embedded_order"] is None
                    else f"{r['butcher_embedded_order']}/{r['nodepy_embedded_order']}")
        flag = "   <- differs" if r["method"] in result["failures"] else ""
        print(f"{r['method'].ljust(width)}  {yes[r['parsed']]:>6}  {order:>7}  {r['nodepy_order']:>6}  {same_R:>7}  "
              f"{embedded:>25}  {r['seconds']:7.2f}{flag}")
    for r in rows:
        if r["method"] in result["failures"]:
            print(f"  {r['method']}: {result['failures'][r['method']]}")
        if r["R_skipped"]:
            print(f"  {r['method']}: R not compared: {r['R_skipped']}")
        if r["embedded_skipped"]:
            print(f"  {r['method']}: {r['embedded_skipped']}")
        for message in r["warnings"]:
            print(f"  {r['method']}: warning: {message}")
    print(result["summary"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--stability-seconds", type=float, default=60.0,
                        help="time limit per method for NodePy's exact stability function, and for the exact "
                             "comparison of R (default 60; 0: none)")
    args = parser.parse_args(argv)

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

    print(f"\nThe same {len(exact)} methods typed as their coefficients print (sympy.sstr), read by butcher's "
          f"parser; orders against NodePy's above, R(z) against NodePy's stability_function(mode='exact'):")
    start = time.perf_counter()
    typed = typed_check(exact, theirs, args.stability_seconds)
    typed_t = time.perf_counter() - start
    print_typed(typed)
    print(f"typed check: {typed_t:.2f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"nodepy_seconds": theirs_t, "butcher_seconds": ours_t, "methods": len(exact),
                       "speedup": theirs_t / ours_t, "same_answers": not disagree, "disagreements": disagree,
                       "catalogue_build_seconds": build_t, "catalogue_verify_seconds": verify_t,
                       "catalogue_methods": count, "typed_as_printed": {**typed, "seconds": typed_t}}, fh, indent=1)
    return 0 if typed["ok"] and not disagree and not mismatches else 1


if __name__ == "__main__":
    sys.exit(main())
