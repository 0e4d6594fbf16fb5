"""A sign of life for commands that compute without steps to count (an exact analysis, an
eigenvalue problem): after a short delay, a line on stderr that counts the seconds."""

from __future__ import annotations

import contextlib
import sys
import threading
import time

HELP = "no progress bar (it goes to stderr, and only on a terminal: a log or a pipe never gets one)"


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


class Steps:
    """A tqdm bar on stderr over the named steps of a command: one per catalogue method, or the
    phases of one analysis ("order conditions", "stability function", …), each step named as it
    starts. Steps take from milliseconds to tens of seconds, so the bar shows the step and the
    elapsed time (ticking every half second), not a rate. Nothing within ``DELAY`` seconds, nothing
    when stderr is not a terminal (a log, a pipe, a test's captured stderr) or ``enabled`` is false
    (``--no-progress``); the bar clears itself when the steps end, before the command prints.

    >>> with Steps(2, "analysing rk4") as step:
    ...     with step("order conditions"):
    ...         pass
    """

    DELAY = 1.0  # seconds without a bar: a command that ends sooner prints only its result

    def __init__(self, total: int, label: str, *, enabled: bool = True):
        self.total, self.label, self.done, self.current = total, label, 0, ""
        self._file = sys.stderr  # as it is now: a test may swap sys.stderr back before the ticker runs
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._started = time.time()  # tqdm's clock
        if enabled and self._file.isatty():
            if self.DELAY <= 0:
                self._show()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def __call__(self, name: str):
        with self._lock:
            self.current = name
            self._draw()
        try:
            yield
        finally:
            with self._lock:
                self.done += 1
                self._draw()

    def _draw(self) -> None:
        if self._bar is not None:
            self._bar.total = max(self.total, self.done)  # a fallback (--float) may take more steps
            self._bar.n = self.done
            self._bar.set_description_str(self._description(), refresh=False)
            self._bar.refresh()

    def _description(self) -> str:
        return f"{self.label}: {self.current}" if self.current else self.label

    def _show(self) -> None:
        from tqdm import tqdm
        with self._lock:
            self._bar = tqdm(total=self.total, desc=self._description(), file=self._file, dynamic_ncols=True,
                             leave=False, bar_format="{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]")
            self._bar.start_t = self._started  # the clock counts from the command's start, not the bar's
            self._draw()

    def _tick(self) -> None:
        if self._bar is None:
            if self._stop.wait(self.DELAY):
                return
            self._show()
        while not self._stop.wait(0.5):
            with self._lock:
                self._bar.refresh()

    def close(self) -> None:
        """Stop the clock and clear the bar (again: nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
