"""A wall-clock limit on exact analysis: the budgets in :mod:`butcher._parse` bound what a number
may be, this bounds how long the arithmetic on a whole tableau may take."""

from __future__ import annotations

import contextlib
import signal
import threading
import time

__all__ = ["DEADLINE", "TimeLimitExceeded", "time_limit"]


class TimeLimitExceeded(BaseException):
    """The time limit passed (a ``BaseException``: no ``except Exception`` inside SymPy swallows it)."""


DEADLINE = 5.0  # seconds of exact arithmetic on a user's tableau (a file, a checkpoint's): with start-up, 10 s


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Interrupt the body after ``seconds`` with :class:`TimeLimitExceeded`. SIGALRM: in the main
    thread of a POSIX process; elsewhere, or with ``seconds`` ``None`` or 0, no limit. A timer
    interrupts between Python steps, so a single long FLINT call finishes first. Limits nest: an
    inner one never outlasts the outer, which resumes with what it has left."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer, _ = signal.getitimer(signal.ITIMER_REAL)  # seconds left of an enclosing limit (0: none)
    start = time.monotonic()

    def expire(signum, frame):
        raise TimeLimitExceeded

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer) if outer else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # the enclosing limit goes on with its own clock (at once if it is already past)
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-6))
