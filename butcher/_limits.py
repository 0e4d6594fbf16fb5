"""A wall-clock limit on exact analysis: the budgets in :mod:`butcher._parse` bound what a number
may be, this bounds how long the arithmetic on a whole tableau may take."""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["TimeLimitExceeded", "time_limit"]


class TimeLimitExceeded(BaseException):
    """The time limit passed (a ``BaseException``: no ``except Exception`` inside SymPy swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Interrupt the body after ``seconds`` with :class:`TimeLimitExceeded`. SIGALRM: in the main
    thread of a POSIX process; elsewhere, or with ``seconds`` ``None`` or 0, no limit. A timer
    interrupts between Python steps, so a single long FLINT call finishes first."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeLimitExceeded

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
