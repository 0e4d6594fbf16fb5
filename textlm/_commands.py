"""``odernn`` commands in processes of their own that start in milliseconds.

``python -m textlm.cli train …`` spends about 5 s importing PyTorch, Dynamo, SymPy and matplotlib
before its first step, and ``odernn compare`` starts one such process per run (a study, dozens).
So the runs start from a *forkserver* (:mod:`multiprocessing`) that has imported all that once:
each command is a fork of it, a process of its own as before (its own memory and peak resident
set, exit code and signals; killed without harm to the others), without the imports. The server
itself never runs a tensor operation, so no thread pool is forked into a command.

A forkserver keeps the working directory and environment it started with; each command is given
the caller's, as they are when it starts. (What the server imported read its environment once:
PyTorch's and matplotlib's variables act as they were at the first command.)
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import set_spawning_popen

# what an ``odernn train`` imports before its first step (the command line imports the trainer,
# PyTorch, Dynamo and SymPy), the curves it draws at its end, and what ``odernn evaluate`` scores
# with (ROUGE imports NLTK and SciPy: 2 s of each evaluation's start, 0.2 s of its total preloaded)
_PRELOAD = ["textlm.cli", "matplotlib.pyplot", "rouge_score.rouge_scorer", "sacrebleu"]


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)  # read when the server starts: at the first command
    return context


class _Popen(popen_forkserver.Popen):
    """The forkserver's start of a process (CPython's ``_launch``), less two of its preparations,
    so that the command is what a new interpreter would be. Multiprocessing has the fork import
    the caller's ``__main__`` again, which would run a script's unguarded top level (its own
    ``compare`` call) once more in every command, and fails for a script read from stdin; and it
    makes the caller's start method the fork's default, under which a lock the command makes
    (tqdm makes one) is registered with the caller's resource tracker, which warns of a "leaked
    semaphore" when a command was killed. A command runs ``textlm.cli.main`` only. (What stays:
    the caller's ``sys.path`` and working directory, which the preparation makes the fork's.)"""

    def _launch(self, process_obj):
        prep_data = spawn.get_preparation_data(process_obj._name)
        for step in ("init_main_from_name", "init_main_from_path", "start_method"):
            prep_data.pop(step, None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)
        _parent_w = os.dup(w)  # the child's sentinel of this process
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _Process(multiprocessing.context.ForkServerProcess):
    _start_method = None  # not forced on the command either (see _Popen)

    @staticmethod
    def _Popen(process_obj):
        return _Popen(process_obj)


def _main(argv: list[str], environ: dict, folder: str, new_session: bool, fresh: bool) -> None:
    """The command's process: the caller's environment, its output to ``folder``."""
    if new_session:  # a process group of its own, as ``start_new_session=True``
        os.setsid()
    os.environ.clear()
    os.environ.update(environ)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    import torch
    if fresh or torch.cuda._is_in_bad_fork():  # (the server imports nothing that initialises CUDA,
        os.execv(sys.executable, [sys.executable, "-m", "textlm.cli", *argv])  # which a fork cannot use)
    sys.argv = ["odernn", *argv]
    from textlm.cli import main
    sys.exit(main(argv))


class Command:
    """``odernn ARGV`` running in its own process, with the subset of :class:`subprocess.Popen`'s
    interface that its callers use: ``pid``, ``returncode``, ``poll``, ``wait``, ``kill``,
    ``send_signal`` and ``communicate`` (which returns its stdout and stderr as text).

    ``fresh``: the fork becomes a new interpreter (``python -m textlm.cli ARGV``, same process),
    which imports everything again. Its peak resident set then counts what the imports allocated
    and freed, as a shell's command's does; a plain fork's starts from the server's resident set
    (42 MB less on a tiny run: 287 against 329 MB), so measurements that are compared with runs of
    fresh interpreters are taken in fresh ones."""

    def __init__(self, argv: list[str], *, new_session: bool = False, fresh: bool = False):
        self._folder = tempfile.mkdtemp(prefix="odernn-command-")
        try:
            _context()  # the server's preload
            self._process = _Process(target=_main, name="odernn " + " ".join(argv[:3]),
                                     args=(list(argv), dict(os.environ), self._folder, new_session, fresh))
            self._process.start()
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        self.pid = self._process.pid
        self._ended = None  # the exit status, once closed
        self._output = None  # (stdout, stderr), once read

    @property
    def returncode(self) -> int | None:
        """The exit status once it has ended (``-N`` where signal ``N`` ended it), else None."""
        return self._ended if self._ended is not None else self._process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._ended is not None:
            return self._ended
        self._process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(["odernn"], timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.returncode is None:
            self._process.kill()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Its stdout and stderr, once it has ended."""
        self.wait(timeout)
        if self._output is None:
            self._output = tuple(_read(os.path.join(self._folder, name)) for name in ("stdout", "stderr"))
        return self._output

    def close(self) -> None:
        """Wait for it to end, then free what it held (its output kept for ``communicate``)."""
        if self._ended is None:
            self.communicate()
            self._ended = self.returncode
            self._process.close()
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "Command":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None and self.returncode is None:  # the caller stops (Ctrl-C, an error):
            try:  # so does the command, saving its checkpoint. Ctrl-C in a terminal reached it too,
                self.wait(1.0)
            except subprocess.TimeoutExpired:  # else it is told so
                self.send_signal(signal.SIGINT)
        self.close()


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:  # it ended before it redirected its output
        return ""
