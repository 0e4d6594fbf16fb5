"""The property battery of ``tests/test_limits.py`` with a larger budget: for every command-line
option and every cell-spec key, ``--budget`` invalid values drawn by hypothesis (NaN, ±inf, out of
range, the wrong type, look-alike digits), each of which must get one line and exit code 2 (or a
``CellSpecError`` naming the key) within 10 s; plus the fixed API and repeated-option cases.
Prints how many cases ran and passed.

    python benchmarks/limits_battery.py [--budget 200]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=200, help="hypothesis examples per option and spec key")
    args = parser.parse_args(argv)
    env = dict(os.environ, ODERNN_LIMITS_BUDGET=str(args.budget))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "tests/test_limits.py",
                           "--hypothesis-show-statistics"], cwd=ROOT, env=env, capture_output=True, text=True)
    drawn = sum(int(n) for n in re.findall(r"(\d+) passing examples", done.stdout))
    failing = sum(int(n) for n in re.findall(r"(\d+) failing examples", done.stdout))
    summary = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    print(f"budget {args.budget} per option/key: {drawn:,} drawn invalid values passed, {failing} failed; "
          f"pytest: {summary[-1] if summary else '?'}; {time.perf_counter() - start:.0f} s")
    if done.returncode != 0:
        print(done.stdout[-4000:])
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
