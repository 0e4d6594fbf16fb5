"""The README's training command on an idle machine and on one busy with other work, with PyTorch's
default of one thread per core (``--threads`` = the cores), with one thread, and with odernn's
default (the cores the load average leaves free), as ratios loaded / idle measured in one run.

The load is ``--busy`` processes each spinning a core (default: as many as there are cores). The
command is the README's first one at ``--tokens`` training tokens (default 100,000, so that a run
takes seconds, not minutes); its wall clock includes start-up, the final validation and the sample.
The loaded runs start after the load average has risen (``--settle`` seconds), as a user's would
on a machine that is already busy.

    python benchmarks/threads_under_load.py [--tokens 100000] [--busy 2] [--settle 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "while True: pass"


def command(threads: str | None, tokens: int, out: Path) -> list[str]:
    return ([sys.executable, "-m", "textlm.cli"] + (["--threads", threads] if threads else [])
            + ["train", "--corpus", "tinyshakespeare", "--cell", "gru-ode:rk4", "--hidden", "128", "--max-tokens",
               str(tokens), "--out", str(out), "--no-progress", "--sample-length", "50"])


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cores = os.cpu_count() or 1
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--busy", type=int, default=cores, help=f"spinning processes (default {cores})")
    parser.add_argument("--settle", type=float, default=40.0, help="seconds of load before the loaded runs")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    settings = {f"PyTorch's default ({cores} threads)": str(cores), "1 thread": "1", "odernn's default": None}
    folder = Path(tempfile.mkdtemp(prefix="threads-"))
    times = {}
    print(f"{cores} cores; the README's command at {args.tokens:,} tokens; load: {args.busy} spinning processes")
    for name, threads in settings.items():
        times[name, "idle"] = timed(command(threads, args.tokens, folder / f"{len(times)}"))
        print(f"  idle    {name:<28} {times[name, 'idle']:7.1f} s", flush=True)
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        time.sleep(args.settle)
        for name, threads in settings.items():
            times[name, "loaded"] = timed(command(threads, args.tokens, folder / f"{len(times)}"))
            print(f"  loaded  {name:<28} {times[name, 'loaded']:7.1f} s  (load average {os.getloadavg()[0]:.1f})",
                  flush=True)
    finally:
        for spinner in spinners:
            spinner.kill()
    print("\nloaded / idle (goal: not 3–10× slower)")
    rows = {}
    for name in settings:
        rows[name] = times[name, "loaded"] / times[name, "idle"]
        print(f"  {name:<28} {rows[name]:5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": {f"{k[0]} / {k[1]}": v for k, v in times.items()},
                                               "ratios": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
