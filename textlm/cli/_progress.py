"""A sign of life for commands that compute without steps to count (an exact analysis, an
eigenvalue problem): after a short delay, a line on stderr that counts the seconds."""

from __future__ import annotations

import contextlib
import sys
import threading
import time


@contextlib.contextmanager
def busy(label: str, delay: float = 2.0):
    """Nothing for work that ends within ``delay`` seconds; then ``label … N s`` on stderr,
    updated in place on a terminal (said once elsewhere, so that logs stay clean)."""
    stop = threading.Event()
    shown = threading.Event()

    def tick():
        if stop.wait(delay):
            return
        shown.set()
        start = time.monotonic() - delay
        if not sys.stderr.isatty():
            print(f"{label} …", file=sys.stderr, flush=True)
            return
        while not stop.wait(0.5):
            print(f"\r{label} … {time.monotonic() - start:.0f} s", end="", file=sys.stderr, flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if shown.is_set() and sys.stderr.isatty():
            print(file=sys.stderr, flush=True)
