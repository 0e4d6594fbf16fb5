"""How long the commands that read a tableau file take to answer on hostile and large files —
`odernn tableau check / show / plot`, and `cell show` and `stability check` of a cell spec that
names the file: the exponent bomb, a dense 6-stage tableau in a number field of degree 32, a dense
64-stage tableau of decimals, and catalogue methods written out with `show --toml`. Wall clock of
the whole command (Python's start-up included), the median of a few runs, against the goal: an
answer (a result, or one line and exit 2) within 10 s.

    python benchmarks/tableau_answer_times.py [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 10.0
BOMB = 'A = [["0", "0"], ["2^(549/706)*3^(319/353)/4900", "0"]]\nb = ["1/2", "1/2"]\n'
ROOTS = ["sqrt(2)", "sqrt(3)", "sqrt(5)", "sqrt(7)", "sqrt(11)"]


def dense(stages: int = 6) -> str:
    """A full implicit tableau whose entries mix five square roots (a field of degree 32)."""
    A = [[f"({ROOTS[(i + j) % 5]} - {ROOTS[(i * j) % 5]}/2 + {i + 2 * j + 1})/97" for j in range(stages)]
         for i in range(stages)]
    b = [f"{ROOTS[k % 5]}/50 - {ROOTS[(k + 1) % 5]}/50 + 1/6" for k in range(stages - 1)]
    b.append("1 - (" + " + ".join(b) + ")")
    rows = ", ".join("[" + ", ".join(json.dumps(x) for x in row) + "]" for row in A)
    return f"A = [{rows}]\nb = [{', '.join(json.dumps(x) for x in b)}]\n"


def decimals(stages: int = 64) -> str:
    """A full 64-stage tableau of 15-digit decimals (deterministic), rows of A summing below 1."""
    import random
    rng = random.Random(0)
    A = [[f"{rng.random() / stages:.15f}" for _ in range(stages)] for _ in range(stages)]
    b = [f"{1 / stages:.15f}"] * stages
    rows = ", ".join("[" + ", ".join(json.dumps(x) for x in row) + "]" for row in A)
    return f"A = [{rows}]\nb = [{', '.join(json.dumps(x) for x in b)}]\n"


def odernn(*args) -> list[str]:
    return [sys.executable, "-m", "textlm.cli", *args]


def timed(command: list[str], runs: int) -> tuple[float, int, str]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
    last = (result.stdout + result.stderr).strip().splitlines()
    return statistics.median(times), result.returncode, last[0][:90] if last else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per command (the median is reported)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tableau-times-"))
    files = {"bomb": BOMB, "dense6": dense(), "dense64": decimals()}
    for name in ("gauss-5", "tsit5", "radau-iia-4"):
        files[name] = subprocess.run(odernn("tableau", "show", name, "--toml"), capture_output=True,
                                     text=True, check=True).stdout
    for name, text in files.items():
        (folder / f"{name}.toml").write_text(text)
    cases = [("python start-up (odernn --help)", odernn("--help"))]
    for name in files:
        path = str(folder / f"{name}.toml")
        cases += [(f"check {name}", odernn("tableau", "check", path)),
                  (f"show {name}", odernn("tableau", "show", path))]
    for name in ("bomb", "dense6", "dense64"):
        path = str(folder / f"{name}.toml")
        cases += [(f"check {name} --float", odernn("tableau", "check", path, "--float")),
                  (f"show {name} --float", odernn("tableau", "show", path, "--float"))]
    for name in ("bomb", "dense6", "dense64", "radau-iia-4"):
        spec = f"gru-ode:{folder / f'{name}.toml'}"
        cases += [(f"cell show gru-ode:{name}", odernn("cell", "show", spec, "--hidden-size", "16")),
                  (f"stability check gru-ode:{name}", odernn("stability", "check", spec, "--hidden-size", "16"))]
    cases.append(("plot dense6", odernn("tableau", "plot", str(folder / "dense6.toml"), "-o", str(folder / "r.png"))))
    rows = []
    print(f"{'command':<32} {'median s':>9} {'exit':>5}  {'within 10 s':>11}  first line")
    for label, command in cases:
        seconds, code, first = timed(command, args.runs)
        rows.append({"command": label, "seconds": seconds, "exit_code": code, "first_line": first,
                     "within_goal": seconds < GOAL_SECONDS})
        print(f"{label:<32} {seconds:>9.2f} {code:>5}  {'yes' if seconds < GOAL_SECONDS else 'NO':>11}  {first}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["within_goal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
