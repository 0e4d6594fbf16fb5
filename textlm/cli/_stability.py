"""``odernn stability …``: will this cell train stably? ``check`` exits with its verdict's code
(``stability.VERDICTS``: 0 stable, 3 expanding dynamics, 4 marginal step, 1 unstable step) when the
verdict is at least as bad as ``--fail-on`` says, and 0 otherwise."""

from __future__ import annotations

import contextlib
from pathlib import Path

import butcher
import odernn
import stability
from textlm.limits import argument

from ._errors import CLIError
from ._progress import HELP as PROGRESS_HELP
from ._progress import busy


# --fail-on's choices: the mildest verdict that fails (None: none does)
FAIL_ON = {"expanding": "expanding dynamics", "marginal": "marginal step", "unstable": "unstable step", "never": None}


def register(sub, formatter) -> None:
    group = sub.add_parser("stability", help="spectral stability of a cell against its tableau",
                           formatter_class=formatter,
                           description="Linearise the cell's vector field at sampled states and judge the "
                                       "step-scaled eigenvalues against the tableau's stability region. The "
                                       "verdict separates the discretisation from the dynamics, mildest first: "
                                       "STABLE (exit 0) when every step-scaled eigenvalue lies in the region; "
                                       "FAITHFUL STEP, EXPANDING DYNAMICS (exit 3) when only modes the learned field "
                                       "itself expands leave it and the tableau amplifies none more than the exact "
                                       "flow (the state is then bounded only by saturating activations; a smaller "
                                       "step changes nothing); MARGINAL STEP (exit 4) when modes the exact flow "
                                       "neither expands nor contracts (on the imaginary axis) leave it, amplified at "
                                       "most 0.1 % beyond the flow a step: slow growth from the discretisation, which another "
                                       "tableau (or a smaller step, where the report names one) removes; UNSTABLE "
                                       "STEP (exit 1) when the tableau amplifies a mode beyond both the region and "
                                       "the exact flow. Several layers: the worst of them.")
    ssub = group.add_subparsers(dest="stability_command", metavar="ACTION", required=True)
    for name, handler, text in (("check", cmd_check, "verdict, margin and conditions (exit 0: stable step; 3: faithful "
                                                     "step, the learned dynamics expand; 4: marginal step; 1: "
                                                     "unstable step; --fail-on chooses which fail)"),
                                ("plot", cmd_plot, "the stability region with the scaled eigenvalues, as PNG")):
        p = ssub.add_parser(name, help=text, formatter_class=formatter,
                            epilog=f"example:\n  odernn stability {name} gru-ode:rk4 --hidden-size 64"
                                   + (" -o eig.png" if name == "plot" else
                                      " --json\n  odernn stability check runs/quick --fail-on unstable && odernn train …"))
        p.add_argument("spec", metavar="SPEC|CHECKPOINT",
                       help="a cell spec, e.g. gru-ode:rk4:steps=2 (weights: the default initialisation), or a "
                            "trained model's checkpoint (file or run folder): every ODE layer is checked at its "
                            "trained weights, driven by the embeddings of random tokens")
        p.add_argument("--input-size", type=argument("input_size"), default=32)
        p.add_argument("--hidden-size", type=argument("hidden_size"), default=128)
        p.add_argument("--dt", type=argument("dt"), help="judge at this interval instead of the spec's")
        p.add_argument("--samples", type=argument("samples"), default=16, help="states sampled along a random-input trajectory")
        p.add_argument("--seed", type=argument("seed"), default=0, help="seed of the weights and of the sampled inputs")
        p.add_argument("--device", default="cpu",
                       help="where the Jacobians are formed: cpu (default), cuda, cuda:N or auto; the verdict is "
                            "computed in float64 on the CPU either way")
        p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
        if name == "check":
            p.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar)")
            p.add_argument("--fail-on", choices=FAIL_ON, default="expanding",
                           help="the mildest verdict that fails the command, in the order stable < expanding "
                                "dynamics < marginal step < unstable step: a verdict at or past it exits with its "
                                "own code (expanding dynamics 3, marginal step 4, unstable step 1), a milder one "
                                "with 0. expanding (default): every verdict but stable fails; marginal: only "
                                "faults of the step (4, 1); unstable: only an unstable step (1); never: always 0. "
                                "Stable is always 0, bad input always 2")
        else:
            p.add_argument("-o", "--output", required=True, type=argument("output"), help="output image (PNG)")
        p.set_defaults(handler=handler)


def _is_checkpoint(text: str) -> bool:
    """A checkpoint file or run folder, or what is meant as one (a path to a ``.pt`` file or with a
    folder in it, and not a cell spec: a spec starts with a field's name, ``gru-ode:mine.toml``),
    so that a missing one is named as such."""
    path = Path(text)
    if (path / "checkpoint.pt").is_file() or path.is_dir():
        return True
    if text.split(":", 1)[0] in odernn.fields():
        return False
    return path.suffix == ".pt" or "/" in text


def _checkpoint_cells(args):
    """``(label, cell, inputs)`` for every ODE layer of a trained model: the inputs are the layer's
    inputs along a random token sequence (embeddings for the first layer, the previous layer's
    states for the others)."""
    import torch

    from ._text import _load_model
    model, vocab, _, runtime = _load_model(args.spec, args.device)
    model = model.to(runtime.dtype)  # judged on the float32 (or float64) weights, never in bf16
    generator = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(0, len(vocab), (1, args.samples), generator=generator).to(runtime.device)
    out = [(f"layer {i} ({cell.describe()})", cell, x) for i, cell, x in model.ode_layer_inputs(idx)]
    if not out:
        raise CLIError(f"{args.spec} has no ODE layers (its cells are torch baselines)")
    return out


def _cells(args):
    """``(label, cell, inputs)`` to check: every ODE layer of a checkpoint, or the spec's cell."""
    import torch
    if args.input_size < 1 or args.hidden_size < 1 or args.samples < 1:
        raise CLIError("--input-size, --hidden-size and --samples must be positive")
    if args.dt is not None and not args.dt > 0:
        raise CLIError("--dt must be positive")
    if _is_checkpoint(args.spec):
        sized = [f"--{name.replace('_', '-')}" for name in ("input_size", "hidden_size") if name in getattr(args, "given", ())]
        if sized:  # they size a spec's cell; they were silently ignored here
            raise CLIError(f"{' and '.join(sized)}: for a cell spec; {args.spec} is a checkpoint, whose layers have "
                           "the sizes they were trained with")
        cells = _checkpoint_cells(args)
        for label, cell, _ in cells:
            _affordable(label, cell, args.samples)
            _prepared(label, cell)
        return cells
    from textlm.runtime import resolve_device
    device = resolve_device(args.device)
    try:  # judged affordable on the meta device (no memory) before the weights are drawn
        _affordable(args.spec, odernn.cell(args.spec, args.input_size, args.hidden_size, device="meta"), args.samples)
        torch.manual_seed(args.seed)
        cell = odernn.cell(args.spec, args.input_size, args.hidden_size).to(device)
    except odernn.CellSpecError as err:
        raise CLIError(str(err)) from None
    if odernn.tableau_file(args.spec):
        _prepared(args.spec, cell)
    return [(args.spec, cell, None)]


def _reports(args):
    """``(label, cell, report)`` for every cell to check, with a sign of life while the cells are
    made and a progress bar over each check's conditions (neither with --no-progress or --json)."""
    show = not (args.no_progress or getattr(args, "json", False))
    with busy(f"preparing {args.spec}") if show else contextlib.nullcontext():
        cells = _cells(args)
    return [(label, cell, stability.check(cell, inputs=x, dt=args.dt, samples=args.samples, seed=args.seed,
                                          progress=f"{label}: {args.samples} states" if show else None))
            for label, cell, x in cells]


def _prepared(label: str, cell) -> None:
    """The exact stability analysis of a user's tableau (a file, a checkpoint's) done first, within
    the deadline: everything after it is numerical."""
    import numpy as np
    try:
        with butcher.time_limit(butcher.DEADLINE):
            cell.tableau.amplification(np.zeros(1))
            cell.tableau.imaginary_stability_interval()
    except butcher.TimeLimitExceeded:
        raise CLIError(f"{label}: the exact stability analysis of its tableau did not finish within "
                       f"{butcher.DEADLINE:g} s (numbers of high algebraic degree); write its entries as decimals") \
            from None


def _affordable(label: str, cell, samples: int) -> None:
    """The dense eigenvalue work of a check, refused before it starts when past the limit."""
    size = cell.t * cell.hidden_size
    if samples * size ** 3 > odernn.limits.EIGEN_WORK:
        raise CLIError(f"{label}: judging {samples} states of size {size} takes {samples} dense eigenproblems of "
                       f"{size}×{size} (about {samples * size ** 3:.1e} × a few ns), past the limit of "
                       f"{odernn.limits.EIGEN_WORK:.0e}: lower --samples or --hidden-size")


def exit_code(verdict: str, fail_on: str) -> int:
    """The verdict's code (``stability.VERDICTS``) when it is at least as bad as ``--fail-on``'s
    verdict, else 0."""
    order, mildest = list(stability.VERDICTS), FAIL_ON[fail_on]
    fails = mildest is not None and order.index(verdict) >= order.index(mildest)
    return stability.VERDICTS[verdict] if fails else 0


def cmd_check(args) -> int:
    reports = _reports(args)
    if args.json:
        import json
        data = [dict(json.loads(r.to_json()), cell=label) for label, _, r in reports]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=1))
    else:
        for label, _, report in reports:
            print((f"{label}: " if len(reports) > 1 else "") + str(report))
    worst = max((r.verdict for _, _, r in reports), key=list(stability.VERDICTS).index)
    return exit_code(worst, args.fail_on)


def cmd_plot(args) -> int:
    import butcher
    _, cell, report = _reports(args)[0]
    output = Path(args.output)
    if not output.parent.exists():
        raise CLIError(f"{output.parent} does not exist")
    fig = butcher.plot_stability_region(cell.tableau, report.eigenvalues, point_label="h·λ(∂f/∂y)")
    size = len(report.eigenvalues) // max(report.samples, 1)
    fig.axes[0].set_title(f"{Path(args.spec).name if _is_checkpoint(args.spec) else args.spec}: {report.verdict}, "
                          f"margin {report.margin:+.3g}\n{report.samples} sampled states × {size} eigenvalues (the state's "
                          f"size), h = {report.step:g}", fontsize=10)
    tmp = output.with_name(f".{output.name}.tmp{output.suffix}")
    fig.savefig(tmp, bbox_inches="tight")
    tmp.replace(output)
    print(f"wrote {output}")
    return 0  # the verdict's exit code is check's; a plot that was written succeeded
