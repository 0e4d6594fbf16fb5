"""The ``odernn`` console command.

Each command group lives in its own module and contributes a ``register(subparsers)``; errors a
user can cause (bad input, unknown names, missing files) are raised as :class:`CLIError` or as the
packages' own error types and printed as one line with exit code 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from odernn import limits

from . import _cell, _compare, _stability, _tableau, _text
from ._errors import USER_ERRORS

_GROUPS = (_tableau, _cell, _stability, _text, _compare)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Bad options get one line (with the command and how to get help) and exit code 2, like every
    other user error, instead of argparse's usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def default_threads() -> int:
    """PyTorch's threads when ``--threads`` is not given: one per core that other work leaves free
    (the cores less the 1-minute load average, at least 1, at most PyTorch's own choice). PyTorch's
    default, one per core, oversubscribes a busy machine: its workers spin waiting for each other
    (benchmarks/threads_under_load.py measured the README's command 3× slower under load with it)."""
    import os

    import torch
    best = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this system: PyTorch's choice
        return best
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(best, round(cores - busy)))


def _version() -> str:
    try:
        return version("odernn")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _record_given(parser: argparse.ArgumentParser) -> None:
    """Every option of every command records its name in ``args.given`` when the command line gives
    it (a default looks the same as a given value otherwise: what ``train --resume`` compares), and
    refuses to be given twice (``--lr 1 --lr 2`` kept the last, silently)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _record_given(child)
        elif action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            action.__class__ = _recording(type(action))


def _recording(kind: type) -> type:
    class Recording(kind):
        def __call__(self, parser, namespace, values, option_string=None):
            if getattr(namespace, "given", None) is None:
                namespace.given = set()
            if self.dest in namespace.given and not isinstance(self, (argparse._AppendAction, argparse._CountAction)):
                parser.error(f"{option_string} given twice (an option takes one value)")
            namespace.given.add(self.dest)
            super().__call__(parser, namespace, values, option_string)
    Recording.__name__ = kind.__name__
    return Recording


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option whose default means something says it in ``--help`` (argparse's
    ``ArgumentDefaultsHelpFormatter`` would skip options without a help text and repeat the
    defaults some help texts already state)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)
            continue
        default = action.default
        if (not action.option_strings or default is None or default is False or default == argparse.SUPPRESS
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            continue
        text = action.help or ""
        if "default" in text:
            continue
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        action.help = f"{text} (default: {shown.replace('%', '%%')})".strip()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="odernn",
        formatter_class=_Formatter,
        description="ODERNN: write a Runge–Kutta scheme down as a Butcher tableau, get a trainable "
                    "recurrent cell from it, check whether it will train stably, and train it on text.",
        epilog="Run 'odernn COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"odernn {_version()}")
    parser.add_argument("--threads", type=limits.THREADS.argument("--threads"), metavar="N",
                        help="PyTorch's intra-op threads on the CPU (default: one per core that other work leaves "
                             "free, from the load average: on a busy machine PyTorch's one per core oversubscribes "
                             "it, and the README's command ran 3× slower)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in _GROUPS:
        group.register(sub, _Formatter)
    _show_defaults(parser)
    _record_given(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch
    before = torch.get_num_threads()  # put back on return: ``main`` is also called from Python
    torch.set_num_threads(args.threads if args.threads is not None else default_threads())
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("odernn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `odernn tableau list | head`
        return 0
    except USER_ERRORS as err:  # one line, whatever the message (torch's load_state_dict errors have several)
        print(f"odernn: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
