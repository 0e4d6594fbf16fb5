"""``odernn cell …``: inspect generated recurrent cells."""

from __future__ import annotations

import json

import torch

import odernn
from textlm.limits import argument

from ._errors import CLIError
from ._progress import HELP as PROGRESS_HELP
from ._progress import Steps


def register(sub, formatter) -> None:
    group = sub.add_parser("cell", help="generated recurrent cells: list fields, show a cell",
                           formatter_class=formatter,
                           description="Recurrent cells generated from a vector field and a Butcher tableau. "
                                       "A spec is FIELD[:TABLEAU][:key=value...], e.g. gru-ode:rk4:steps=2, "
                                       "rnn:euler, lstm, antisymmetric:euler:eps=0.1, cornn, gru-ode:FILE.toml.")
    csub = group.add_subparsers(dest="cell_command", metavar="ACTION", required=True)
    p = csub.add_parser("list", help="the vector fields (n–t, reference, what each equals exactly) and the constraints",
                        formatter_class=formatter,
                        description="Every vector field: t (state blocks: the order of the ODE in time), its default "
                                    "interval dt and stepping, its reference, and the published or torch.nn cell a "
                                    "spec of it reproduces exactly (each shown by a test). n is the tableau's number "
                                    "of stages: any tableau works with any field. FIELD:order=t raises a one-block "
                                    "field to derivative order t (t blocks, one more recurrent matrix per order).")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_list)
    p = csub.add_parser("show", help="n, t, stages, parameters and NFE per token of a cell spec",
                        formatter_class=formatter,
                        epilog="examples:\n  odernn cell show gru-ode:rk4:steps=2\n  odernn cell show lstm --json\n"
                               "  odernn cell show gru-ode:gauss-2 --hidden-size 64")
    p.add_argument("spec", help="FIELD[:TABLEAU][:key=value...]")
    p.add_argument("--input-size", type=argument("input_size"), default=32, help="input width (default 32)")
    p.add_argument("--hidden-size", type=argument("hidden_size"), default=128, help="hidden width (default 128)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    p.set_defaults(handler=cmd_show)


def cmd_list(args) -> int:
    import stability
    rows = odernn.field_table()
    if args.json:
        print(json.dumps({"fields": rows, "constraints": stability.constraints()}, indent=1))
        return 0
    for row in rows:
        t = f"n–{row['t']}" + ("  (order=t: n–t)" if row["order"] else "")
        stepping = "partitioned" if row["partitioned"] else "plain"
        print(f"{row['field']:<14} {t:<20} {row['summary']}")
        print(f"{'':<14} {'':<20} dt={row['dt']:g}, {stepping} stepping; options: {', '.join(row['options'])}")
        print(f"{'':<14} {'':<20} reference: {row['reference']}")
        print(f"{'':<14} {'':<20} exactly: {row['equals']}")
    print("\nFIELD:order=t[:damping=ε] on a one-block field: h⁽ᵗ⁾ = f(h; W₀h + W₁h′ + … + W_{t−1}h⁽ᵗ⁻¹⁾) − ε(h′ + … "
          "+ h⁽ᵗ⁻¹⁾); cornn is rnn:order=2.")
    print("\nconstraints (…:constraint=NAME keeps the step inside the tableau's stability region):")
    for name, summary in stability.constraints().items():
        print(f"  {name:<14} {summary}")
    return 0


def cmd_show(args) -> int:
    if args.input_size < 1 or args.hidden_size < 1:
        raise CLIError("--input-size and --hidden-size must be positive")
    # a generated tableau (Radau IIA-5) takes seconds to build, an implicit cell's token its iterations
    with Steps(3, f"building {args.spec}", enabled=not args.no_progress) as step:
        with step("the tableau and the cell"):
            try:
                cell = odernn.cell(args.spec, args.input_size, args.hidden_size)
            except odernn.CellSpecError as err:
                raise CLIError(str(err)) from None
        with step("one token through it"), torch.no_grad():  # the NFE of implicit cells is measured
            cell(torch.zeros(1, args.input_size))
        with step("order conditions"):
            order = cell.tableau.order()
    info = {
        "spec": args.spec, "field": cell.field_name, "tableau": cell.tableau.name,
        "structure": cell.tableau.structure, "n": cell.n, "t": cell.t, "stages": cell.tableau.stages,
        "order": order, "dt": cell.dt, "steps": cell.steps, "partitioned": cell.partitioned,
        "parameters": sum(p.numel() for p in cell.parameters()), "nfe_per_token": cell.nfe,
        "input_size": args.input_size, "hidden_size": args.hidden_size, "constraint": cell.constraint,
        # how odernn.ODERNN runs sequences of it
        "sequences": "engine" if cell.runs_in_engine else "token by token (autograd)",
        "equals": None if cell.torch_equivalent is None else f"torch.nn.{cell.torch_equivalent.__name__}",
    }
    # a constraint's cap on the spectral norm (the NormCap parameterisation of stability's constraints)
    caps = {name: module.rho for name, chain in getattr(cell.field, "parametrizations", {}).items()
            for module in chain if hasattr(module, "rho")}
    if caps:
        info["constraint_cap"] = caps
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{args.spec}: {cell.n}–{cell.t} ODERNN cell ({info['field']} with {info['tableau']}, {info['structure']})")
    for key in ("n", "t", "stages", "order", "dt", "steps", "partitioned", "parameters", "nfe_per_token"):
        print(f"  {key.replace('_', ' '):<16}{info[key]}")
    if cell.constraint:
        print(f"  {'constraint':<16}{cell.constraint}" + "".join(f", ‖{n}‖₂ ≤ {rho:.4g}" for n, rho in caps.items()))
    if not cell.tableau.is_explicit:
        print("  (implicit: NFE counts the simplified-Newton iterations of one token from a zero state)")
    if info["sequences"] == "engine" and cell.tableau.is_explicit:
        print("  sequences       odernn.ODERNN's engine: one input product, the backward pass generated from "
              "the tableau" + (" over the accepted steps" if isinstance(cell.scheme, odernn.AdaptiveScheme) else ""))
    elif info["sequences"] == "engine":
        print("  sequences       odernn.ODERNN's engine: one input product, the stage equations by simplified "
              "Newton on D × D systems, the backward by the implicit function theorem")
    else:
        print("  sequences       odernn.ODERNN runs it token by token under autograd (an implicit tableau whose "
              "A does not decouple, or a field without the recurrent structure): correct, not fast")
    if info["equals"]:
        print(f"  equals          {info['equals']} (ODERNN runs it on PyTorch's fused kernel unless fused=False)")
    return 0
