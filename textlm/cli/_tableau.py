"""``odernn tableau …``: list, show, check and plot Butcher tableaux."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

import sympy as sp

import butcher
from odernn import limits

from ._errors import CLIError
from ._progress import HELP as PROGRESS_HELP
from ._progress import Steps

_TABLEAU_HELP = "a catalogue name (see 'odernn tableau list') or a .toml/.json tableau file"
DEADLINE = butcher.DEADLINE  # seconds of exact analysis on one user's file: with start-up (~2.5 s), within 10 s
_FLOAT_HELP = ("also analyse the tableau numerically: the order conditions in 50-digit arithmetic, a residual "
               "|γ(t)Φ(t) − 1| ≤ TOL (default 1e-10) counting as satisfied — what decimals copied from a paper "
               "approximate; a tableau too large for the exact analysis is then analysed from its entries "
               "rounded to 50 digits")


class TooSlow(CLIError):
    """The deadline passed; ``--float`` analyses the tableau numerically instead."""


@contextlib.contextmanager
def deadline(seconds: float | None, what: str):
    """Stop the exact analysis of ``what`` after ``seconds`` with one line that offers ``--float``
    (``None``: no limit)."""
    try:
        with butcher.time_limit(seconds):
            yield
    except butcher.TimeLimitExceeded:
        raise TooSlow(f"{what}: the exact analysis did not finish within {seconds:g} s (its numbers make the "
                      "arithmetic too large); run it with --float for the numerical analysis") from None


def resolve(spec: str) -> butcher.ButcherTableau:
    """A catalogue name or a path to a tableau file."""
    return butcher.load(spec) if butcher.names_a_file(spec) else butcher.get(spec)


def _no_steps(name: str):
    """The ``step`` of a caller that shows no progress."""
    return contextlib.nullcontext()


def _exact_then_numerical(spec: str, tol: float | None, analyse, step=_no_steps):
    """``analyse(tab, None)`` on the exact tableau, within the deadline for files. With ``--float``
    (``tol``), a file past the exact analysis's budgets or its deadline gets
    ``analyse(rounded, reason)`` instead: its entries rounded to 50 digits, analysed to ``tol``.
    ``step`` names the phases for a progress bar (:class:`Steps`)."""
    limit = _deadline_for(spec)
    exact = limit / 2 if limit and tol is not None else limit  # with --float, both fit in one deadline
    start = time.monotonic()
    try:
        with deadline(exact, spec):
            with step("building the tableau"):
                tab = resolve(spec)
            return analyse(tab, None)
    except butcher.BudgetError:
        if tol is None:
            raise
        reason = "the exact one is over budget"
    except TooSlow:
        if tol is None:
            raise
        reason = f"the exact one did not finish within {exact:g} s"
    try:
        with butcher.time_limit(None if limit is None else max(limit - (time.monotonic() - start), 0.5)):
            with step("numerical analysis: the entries to 50 digits"):
                tab = butcher.load(spec, exact=False)
            return analyse(tab, reason)
    except butcher.TimeLimitExceeded:
        raise CLIError(f"{spec}: even the numerical analysis did not finish within {limit:g} s: the tableau has "
                       "too many stages or conditions to analyse here") from None


def _deadline_for(spec: str) -> float | None:
    """Files get the deadline; the catalogue's methods are known to finish (Radau IIA-5's field,
    of degree 24, takes about 5 s to build)."""
    return DEADLINE if butcher.names_a_file(spec) else None


def register(sub, formatter) -> None:
    group = sub.add_parser("tableau", help="Butcher tableaux: list, show, check, plot",
                           formatter_class=formatter,
                           description="Inspect Runge–Kutta methods as exact Butcher tableaux: the catalogue, "
                                       "derived properties (order, stage order, stability function, "
                                       "stability intervals), validation of your own scheme, and pictures "
                                       "of stability regions.")
    tsub = group.add_subparsers(dest="tableau_command", metavar="ACTION", required=True)

    p = tsub.add_parser("list", help="list the catalogue", formatter_class=formatter,
                        description="List the named methods of the catalogue with their description and "
                                    "the order their literature reference states.")
    p.add_argument("--json", action="store_true", help="print JSON (one object per method)")
    p.add_argument("--verify", action="store_true",
                   help="derive order, embedded order and stage order of every method from its coefficients "
                        "and compare with what its reference states (about half a minute; exit code 1 on a mismatch)")
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    p.set_defaults(handler=cmd_list)

    p = tsub.add_parser("show", help="a tableau and its derived properties", formatter_class=formatter,
                        description="Print the tableau and every property derived from its coefficients: "
                                    "structure, FSAL, order (rooted-tree conditions), embedded and stage "
                                    "order, R(z), A-/L-stability, stability intervals, principal error norm.",
                        epilog="examples:\n  odernn tableau show rk4\n  odernn tableau show my_scheme.toml --json\n"
                               "  odernn tableau show dopri5 --toml > my_variant.toml")
    p.add_argument("tableau", help=_TABLEAU_HELP)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the properties as JSON")
    fmt.add_argument("--toml", action="store_true", help="print the tableau as an editable TOML file")
    p.add_argument("--float", nargs="?", type=limits.TOLERANCE.argument("--float"), const=1e-10, metavar="TOL",
                   help="also print the coefficients as floats, and " + _FLOAT_HELP[5:])
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    p.set_defaults(handler=cmd_show)

    p = tsub.add_parser("check", help="validate a tableau file", formatter_class=formatter,
                        description="Read a user scheme (.toml or .json with keys A, b and optionally c, "
                                    "b_hat, name, constants, parameters) and say what is wrong with it, or what "
                                    "it is. Entries are numbers or exact strings: \"1/3\", \"sqrt(3)/6\", "
                                    "\"2^(1/3)\", sin/cos/tan of rational multiples of pi (\"cos(pi/18)\"), "
                                    "a real root of a polynomial nearest a hint or by index "
                                    "('root(\"x^3 - 3*x^2 + 3/2*x - 1/6\", 0.4358)', 'root(..., index=1)'), "
                                    "CRootOf(poly, k), and names from the file's constants table; nothing is "
                                    "evaluated as code. Decimals are exact rationals: the order they "
                                    "approximate is reported too. A tableau past the exact analysis's "
                                    "budgets (field degree 64, 5 s) is refused with one line; --float then "
                                    "analyses it numerically. Exit code 0 when valid, 2 when not.",
                        epilog='example files:\n  name = "heun"\n  A = [["0", "0"], ["1", "0"]]\n  b = ["1/2", "1/2"]\n\n'
                               '  name = "crouzeix-3"   # order 4, as printed\n'
                               '  constants = { g = "1/2 + sqrt(3)*cos(pi/18)/3" }\n'
                               '  A = [["g", "0", "0"], ["1/2 - g", "g", "0"], ["2*g", "1 - 4*g", "g"]]\n'
                               '  b = ["1/(6*(1 - 2*g)^2)", "1 - 1/(3*(1 - 2*g)^2)", "1/(6*(1 - 2*g)^2)"]')
    p.add_argument("file", type=limits.FILE.argument("file"), help="the .toml or .json tableau file")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--float", nargs="?", type=limits.TOLERANCE.argument("--float"), const=1e-10, metavar="TOL", help=_FLOAT_HELP)
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    p.set_defaults(handler=cmd_check)

    p = tsub.add_parser("plot", help="draw stability regions to a PNG", formatter_class=formatter,
                        description="Draw the stability regions {z : |R(z)| <= 1} of one or several tableaux, "
                                    "optionally with points (e.g. step-scaled eigenvalues) overlaid.",
                        epilog="example:\n  odernn tableau plot euler rk4 dopri5 -o regions.png --point=-1+2j --point=-2.5\n"
                               "(write --point=VALUE: a value starting with '-' would read as an option)")
    p.add_argument("tableaux", nargs="+", metavar="TABLEAU", help=_TABLEAU_HELP)
    p.add_argument("-o", "--output", required=True, type=limits.OUTPUT.argument("--output"),
                   help="output image (PNG, or any matplotlib format)")
    p.add_argument("--point", action="append", default=[], metavar="Z",
                   help="a complex point to overlay, e.g. -1.5+0.5j (repeatable)")
    p.add_argument("--xlim", nargs=2, type=limits.AXIS.argument("--xlim"), metavar=("MIN", "MAX"),
                   help="real-axis range (MIN < MAX)")
    p.add_argument("--ylim", nargs=2, type=limits.AXIS.argument("--ylim"), metavar=("MIN", "MAX"),
                   help="imaginary-axis range (MIN < MAX)")
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    p.set_defaults(handler=cmd_plot)


def cmd_list(args) -> int:
    rows = []
    names = butcher.names()
    with Steps(len(names), "deriving the orders", enabled=args.verify and not args.no_progress) as step:
        for name in names:
            e = butcher.entry(name)
            row = {"name": name, "aliases": list(e.aliases), "description": e.description,
                   "stated_order": e.order, "stated_embedded_order": e.embedded_order,
                   "stated_stage_order": e.stage_order, "reference": e.reference}
            if args.verify:
                with step(name):
                    tab = butcher.get(name)
                    row.update(order=tab.order(), embedded_order=tab.embedded_order(), stage_order=tab.stage_order())
                row["verified"] = (row["order"] == e.order and row["embedded_order"] == e.embedded_order
                                   and (e.stage_order is None or row["stage_order"] == e.stage_order))
            rows.append(row)
    failed = [r["name"] for r in rows if r.get("verified") is False]
    if args.json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 1 if failed else 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name'.ljust(width)}  order  {'derived  ' if args.verify else ''}description")
    for r in rows:
        order = str(r["stated_order"]) + (f"({r['stated_embedded_order']})" if r["stated_embedded_order"] else "")
        derived = ""
        if args.verify:
            got = str(r["order"]) + (f"({r['embedded_order']})" if r["embedded_order"] is not None else "")
            derived = f"{got:<5} {'ok' if r['verified'] else 'MISMATCH':<3} "
        print(f"{r['name'].ljust(width)}  {order.ljust(5)}  {derived}{r['description']}")
        if r["reference"]:
            print(f"{''.ljust(width)}  {''.ljust(5)}  {' ' * len(derived)}{r['reference']}")
    print(f"\n{len(rows)} methods; 'odernn tableau show NAME' derives every property from the coefficients.")
    if args.verify:
        print("every derived order matches its reference" if not failed else f"MISMATCH: {', '.join(failed)}")
    return 1 if failed else 0


def _fmt(x) -> str:
    if isinstance(x, sp.Interval):
        return f"[{_fmt(x.inf)}, {_fmt(x.sup)}]"
    if isinstance(x, sp.Basic):
        if x.is_infinite:
            return str(x)
        text = str(x)
        if x.is_Rational or len(text) > 40:
            return text if len(text) <= 40 else f"{float(x):.12g}"
        return f"{text} ≈ {float(x):.12g}"
    return str(x)


#: the phases of ``tableau show`` (without --toml), for its progress bar
SHOW_PHASES = ("building the tableau", "order conditions", "stability function", "stability region",
               "principal error norm", "formatting")


def properties(tab: butcher.ButcherTableau, step=_no_steps) -> dict:
    """The derived properties of a tableau, as JSON-ready values; ``step`` names the phases
    (:data:`SHOW_PHASES`)."""
    with step("order conditions"):
        out = {"name": tab.name, "stages": tab.stages, "structure": tab.structure, "fsal": tab.is_fsal,
               "stiffly_accurate": tab.is_stiffly_accurate, "order": tab.order(),
               "embedded_order": tab.embedded_order(), "stage_order": tab.stage_order()}
    with step("stability function"):
        out["stability_function"] = str(tab.stability_function())
    out["notes"] = list(tab.notes)
    if not tab.is_parametric:
        with step("stability region"):
            real, imag = tab.real_stability_interval(), tab.imaginary_stability_interval()
            out.update({
                "a_stable": tab.is_a_stable,
                "l_stable": tab.is_l_stable,
                "real_stability_interval": [str(real.inf), str(real.sup)],
                "real_stability_interval_float": [float(real.inf), float(real.sup)],
                "imaginary_stability_limit": str(imag.sup),
                "imaginary_stability_limit_float": float(imag.sup),
            })
        with step("principal error norm"):
            out["principal_error_norm"] = tab.principal_error_norm()
    if tab.description:
        out["description"] = tab.description
    if tab.reference:
        out["reference"] = tab.reference
    return out


def _magnitude(x: float) -> str:
    return "0" if x == 0 else f"1e{round(math.log10(x)):d}"


def approximation(tab: butcher.ButcherTableau, tol: float) -> butcher.Approximation:
    if not tol > 0:
        raise CLIError(f"--float {tol}: the tolerance must be positive")
    return tab.approximation(tol)


def approximation_json(a: butcher.Approximation) -> dict:
    return {"tol": a.tol, "order": a.order, "embedded_order": a.embedded_order, "residual": a.residual,
            "stability_function": str(a.stability_function),
            "real_stability_interval": [str(a.real_stability_interval.inf), str(a.real_stability_interval.sup)],
            "imaginary_stability_limit": str(a.imaginary_stability_interval.sup),
            "a_stable": a.is_a_stable, "l_stable": a.is_l_stable}


def _short(x: sp.Expr) -> str:
    if isinstance(x, sp.Float):
        return f"{float(x):.12g}"
    text = str(x)
    return text if len(text) <= 60 else str(sp.N(x, 12))


def approximation_lines(tab: butcher.ButcherTableau, a: butcher.Approximation, numerical_only: bool) -> list[str]:
    """What changes from the exact analysis to the one with a tolerance (everything, when only
    the numerical analysis was possible)."""
    tol = a.tol
    residual = (f"to about {_magnitude(a.residual)} (largest |γ(t)Φ(t) − 1| {a.residual:.2g}, tol {tol:g})"
                if a.residual else "(its conditions hold exactly)")
    lines = []
    if numerical_only:
        embedded = f", embedded order {a.embedded_order}" if a.embedded_order is not None else ""
        lines.append(f"order {a.order} {residual}{embedded}")
    else:
        if a.order != tab.order():
            lines.append(f"order {tab.order()} exactly; order {a.order} {residual}: these numbers approximate "
                         f"an order-{a.order} method")
        if a.embedded_order != tab.embedded_order():
            lines.append(f"embedded order {tab.embedded_order()} exactly; {a.embedded_order} to tol {tol:g}")
    if not numerical_only and a.stability_function == tab.stability_function():
        return lines  # R was not rounded to another function: its properties are the exact ones
    lines.append(f"R(z) to {tol:g}: {_short(a.stability_function)}")
    real = a.real_stability_interval_as_typed
    interval = f"[{_short(a.real_stability_interval.inf)}, {_short(a.real_stability_interval.sup)}]"
    if numerical_only or abs(float(a.real_stability_interval.inf) - float(real.inf)) > 0:
        lines.append(f"real stability interval to {tol:g}: {interval}"
                     + ("" if numerical_only else f" (exactly as typed: [{float(real.inf)!r}, {float(real.sup)!r}])"))
    lines.append(f"A-stable to {tol:g}: {a.is_a_stable}; L-stable: {a.is_l_stable}")
    return lines


def cmd_show(args) -> int:
    phases = 2 if args.toml else len(SHOW_PHASES) + (args.float is not None)
    with Steps(phases, f"analysing {args.tableau}", enabled=not args.no_progress) as step:
        return _exact_then_numerical(args.tableau, args.float, lambda tab, reason: _show(args, tab, reason, step), step)


def _show(args, tab: butcher.ButcherTableau, numerical: str | None, step) -> int:
    """Everything is computed before anything is printed: a deadline never cuts a listing, and
    the progress bar has cleared."""
    if args.toml:
        with step("formatting"):
            text = butcher.dumps_toml(tab)
        step.close()
        sys.stdout.write(text)
        return 0
    with_float = args.float is not None and not tab.is_parametric
    approx = None
    if with_float:
        with step(f"numerical analysis to {args.float:g}"):
            approx = approximation(tab, args.float)
    if numerical:
        props = {"name": tab.name, "stages": tab.stages, "structure": tab.structure, "exact": False,
                 "why": f"numerical analysis: {numerical}; entries rounded to 50 digits"}
    else:
        props = properties(tab, step)
    if approx is not None:
        props["approximation"] = approximation_json(approx)
    with step("formatting"):
        arrays = tab.to_numpy() if with_float else None
        if args.json and not numerical:
            props["tableau"] = tab.to_dict()  # seconds for a generated tableau (Radau IIA-5): only here
        text = None if args.json else tab.pretty()
    step.close()
    if args.json:
        if arrays is not None:
            props["float"] = {k: (None if v is None else v.tolist()) for k, v in arrays._asdict().items()}
        print(json.dumps(props, indent=1, ensure_ascii=False))
        return 0
    title = tab.name or args.tableau
    print(f"{title}: {tab.description}" if tab.description else title)
    print()
    print(text)
    if "~" in text:
        print("(~: a long exact entry shown as a float; --toml or --json give every entry exactly)")
    print()
    if arrays is not None:
        import numpy as np
        with np.printoptions(precision=17, linewidth=120):
            for key, value in arrays._asdict().items():
                if value is not None:
                    print(f"{key} =\n{value}")
        print()
    if numerical:
        print(f"  {'stages':<26}{tab.stages}\n  {'structure':<26}{tab.structure}")
        print(f"  {props['why']}:")
        for line in approximation_lines(tab, approx, True):
            print(f"  {line}")
        return 0
    label = {"stages": "stages", "structure": "structure", "fsal": "FSAL", "stiffly_accurate": "stiffly accurate",
             "order": "order", "embedded_order": "embedded order", "stage_order": "stage order",
             "stability_function": "R(z)", "a_stable": "A-stable", "l_stable": "L-stable"}
    for key, text in label.items():
        if key in props and props[key] is not None:
            print(f"  {text:<26}{props[key]}")
    if not tab.is_parametric:
        print(f"  {'real stability interval':<26}{_fmt(tab.real_stability_interval())}")
        print(f"  {'imaginary stability limit':<26}{_fmt(tab.imaginary_stability_interval().sup)}")
        print(f"  {'principal error norm':<26}{props['principal_error_norm']:.6g}")
    for line in approximation_lines(tab, approx, False) if approx is not None else ():
        print(f"  {line}")
    for note in props["notes"]:
        print(f"  note: {note}")
    if tab.reference:
        print(f"\nReference: {tab.reference}")
    return 0


#: the phases of ``tableau check``, for its progress bar
CHECK_PHASES = ("building the tableau", "order conditions", "stability region", "numerical analysis")


def cmd_check(args) -> int:
    with warnings.catch_warnings(record=True) as caught:  # the file's warnings go into the verdict
        warnings.simplefilter("always")
        with Steps(len(CHECK_PHASES), f"analysing {args.file}", enabled=not args.no_progress) as step:
            return _exact_then_numerical(args.file, args.float,
                                         lambda tab, reason: _check(args, tab, reason, caught, step), step)


def _stability_verdict(tab: butcher.ButcherTableau) -> dict:
    """A- and L-stability, decided from R(z) (``None`` for a parametric tableau: they depend on
    the parameters)."""
    if tab.is_parametric:
        return {"a_stable": None, "l_stable": None}
    return {"a_stable": tab.is_a_stable, "l_stable": tab.is_l_stable}


def _check(args, tab: butcher.ButcherTableau, numerical: str | None, caught: list, step) -> int:
    numerical_only = numerical is not None
    verdict = {"file": args.file, "valid": True, "name": tab.name, "stages": tab.stages,
               "structure": tab.structure, "exact": not numerical_only}
    if not numerical_only:  # the exact analysis within the deadline, or the budget error, here
        with step("order conditions"):
            verdict.update(order=tab.order(), embedded_order=tab.embedded_order(), stage_order=tab.stage_order())
        with step("stability region"):
            verdict.update(_stability_verdict(tab))
    warned = list(dict.fromkeys(str(w.message) for w in caught))  # a fallback loads the file twice
    tol = 1e-10 if args.float is None else args.float
    approx = None
    if not tab.is_parametric:
        with step(f"numerical analysis to {tol:g}"):
            approx = approximation(tab, tol)
    step.close()
    verdict.update(approximation=approximation_json(approx) if approx else None, warnings=warned)
    if not numerical_only:
        verdict["notes"] = list(tab.notes)
    if args.json:
        print(json.dumps(verdict, indent=1, ensure_ascii=False))
        return 0
    if numerical_only:
        print(f"ok (numerical analysis: {numerical}; entries rounded to 50 digits): {args.file}: "
              f"{tab.name!r}, {tab.stages} stages, {tab.structure}")
    else:
        embedded = f", embedded order {verdict['embedded_order']}" if verdict["embedded_order"] is not None else ""
        print(f"ok: {args.file}: {tab.name!r}, {tab.stages} stages, {tab.structure}, order {verdict['order']}"
              f"{embedded}, stage order {verdict['stage_order']}")
        if verdict["a_stable"] is not None:
            print(f"A-stable: {verdict['a_stable']}; L-stable: {verdict['l_stable']}")
    for line in approximation_lines(tab, approx, numerical_only) if approx else ():
        print(("" if numerical_only else "note: ") + line)
    for w in verdict["warnings"]:
        print(f"warning: {w}")
    for note in verdict.get("notes", ()):
        print(f"note: {note}")
    return 0


def _complex(text: str) -> complex:
    """A finite complex number in ASCII (``-1.5+0.5j``; ``i`` is read as ``j``), within the plot
    limits (``odernn.limits.AXIS``)."""
    z = None
    if text.isascii() and len(text) <= 80:
        with contextlib.suppress(ValueError):
            z = complex(text.replace(" ", "").replace("i", "j"))
    if z is None or not (math.isfinite(z.real) and math.isfinite(z.imag)) \
            or max(abs(z.real), abs(z.imag)) > limits.AXIS.high:
        raise CLIError(f"--point {text[:80]!r} is not a finite complex number within ±{limits.AXIS.high:g} "
                       "(write e.g. -1.5+0.5j)")
    return z


def cmd_plot(args) -> int:
    for name, window in (("--xlim", args.xlim), ("--ylim", args.ylim)):
        if window is not None and not window[0] < window[1]:
            raise CLIError(f"{name} MIN MAX needs MIN < MAX, got {window[0]:g} {window[1]:g}")
    points = [_complex(p) for p in args.point]
    output = Path(args.output)
    if not output.parent.exists():
        raise CLIError(f"{output.parent} does not exist")
    with Steps(len(args.tableaux) + 2, "plotting", enabled=not args.no_progress) as step:
        tableaux = []
        for spec in args.tableaux:
            with step(f"building {spec}"), deadline(_deadline_for(spec), spec):
                tableaux.append(resolve(spec))
                tableaux[-1].stability_function()
            if tableaux[-1].is_parametric:
                raise CLIError(f"{spec} is parametric in {sorted(map(str, tableaux[-1].symbols))}; "
                               "give concrete values")
        with step("drawing the regions"):
            # a name twice (dopri5 and the file 'tableau show dopri5 --toml' wrote) is told apart by its source
            sources = [spec if butcher.names_a_file(spec) else "catalogue" for spec in args.tableaux]
            fig = butcher.plot_stability_region(tableaux, points or None, xlim=args.xlim, ylim=args.ylim,
                                                sources=sources)
        with step(f"writing {output.name}"):
            tmp = output.with_name(f".{output.name}.tmp{output.suffix}")
            fig.savefig(tmp, bbox_inches="tight")
            tmp.replace(output)  # atomic: a reader never sees half a picture
    print(f"wrote {output}")
    return 0
