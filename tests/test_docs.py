"""Every command and snippet in README.md and docs/*.md runs here, so that none can rot.

Each page runs in document order, in a fresh temporary folder, with ``ODERNN_DATA`` set to the
suite's data root, so that a page's commands build on each other (the README's Set-up command
trains ``runs/quick``; its walkthrough then checks and samples that model). By fence language:

- ``toml``: written to the file its first line names (``# FILE.toml``), else to ``NAME.toml``, NAME
  its ``name`` key: the tableau files the commands after it read;
- ``python`` without ``>>>``: executed. Blocks with ``>>>`` are doctests, run by pytest's doctest
  collection of README.md and docs/ (``testpaths`` and ``--doctest-glob`` in pyproject.toml);
- ``bash``: every command (lines joined at a trailing backslash, ``&&`` chains split, comments
  dropped) is one of
  - ``odernn ARGS`` (also ``python -m textlm.cli ARGS``, and the ``textlm.cli`` arguments of a
    ``torchrun`` line, in one process: the launcher itself is tested by tests/test_textlm.py): run
    in this process by ``textlm.cli.main`` after the ``SHRINK`` substitutions below, which cut
    budgets and widths to seconds and move GPU commands to the CPU. It must exit with the code its
    comment begins with (``# exit 3: ...``), else 0. A ``stability check`` of a model trained on the page
    judges the shrunk model, whose verdict may differ from the one documented: any verdict's
    code (0, 1, 3, 4) passes there, an error (2) does not. ``> FILE`` writes its output to FILE.
    ``LONG`` commands (``compare``, and anything on a word-level corpus) still take minutes when
    shrunk: they run until their work starts — options parsed and checked against their limits,
    the configuration, device and cells built (for ``train`` also the corpus read and the model
    made) — and stop where ``textlm.compare.compare`` or ``Trainer.run`` would begin;
  - ``python benchmarks/X.py ARGS`` or ``python examples/X.py ARGS``: the script runs as
    ``__main__`` until its argparse parser has parsed ARGS, and stops there. So it exists, imports,
    and accepts the documented arguments; its full run takes minutes to hours (CI runs short
    versions of them in tests/test_examples.py and tests/test_textlm.py). A script without a parser
    must be documented without arguments, and is imported only;
  - ``pip install ...`` and ``python -m pytest ...``: skipped. CI runs the README's Set-up commands
    itself (``.ci/run``), and the suite cannot run itself;
  - ``export NAME=...`` and a leading ``NAME=value``: skipped; the suite's environment stands in.
  Any other command fails: output belongs in a ``text`` block;
- ``text`` directly after a ``bash`` block (only blank lines between) is the output of that block's
  last command: every line shown, but a line ``…``, must occur in what it printed (stdout and
  stderr);
- ``text`` elsewhere, and ``json``: not run. A fence in any other language, or none, fails.

Commands written inline in prose are not run: what a reader is meant to type stands in a block.
"""

import argparse
import functools
import importlib
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from test_cli import run

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"bash", "python", "toml", "text", "json"}  # a block in any other is neither run nor known to be output

# option -> the words the suite puts in its place: the same command, at a budget of seconds
SHRINK = {"--max-tokens": ["--max-tokens", "2048"], "--epochs": ["--max-tokens", "2048"],  # an epoch: ~1M tokens
          "--hidden": ["--hidden", "16"], "--hidden-size": ["--hidden-size", "16"], "--embed": ["--embed", "16"],
          "--length": ["--length", "50"], "--prompts": ["--prompts", "2"], "--eval-tokens": ["--eval-tokens", "512"],
          "--max-seconds": ["--max-seconds", "1"], "--device": ["--device", "cpu"],
          "--compile-elementwise": [], "--cuda-graphs": []}
FLAGS = {"--compile-elementwise", "--cuda-graphs"}  # options without a value
# Every train gets --max-seconds 1, which cuts its final validation over the whole split short, and
# every evaluate --prompts 2 (its default, 20 generated continuations, takes longest). The CPU has no
# CUDA graphs, and compiling the elementwise math for it takes a minute: those two flags are dropped.
DEFAULTS = {"train": "--max-seconds", "evaluate": "--prompts"}
WORD_CORPORA = {"ptb", "wikitext-2"}


def blocks(page: Path):
    """``(language, first line, text, line after the closing fence)`` of every fenced block of a page."""
    found, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*(\S*)", lines[i])
        if fence:
            start = i
            i += 1
            while not lines[i].startswith(fence.group(1)):
                i += 1
            found.append((fence.group(2), start + 1, "\n".join(lines[start + 1:i]), i + 1))
        i += 1
    return found


def commands(text: str):
    """``(argv, comment)`` of every command of a bash block; a chain ``a && b`` gives both."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        code, _, comment = line.partition(" #") if not line.lstrip().startswith("#") else ("", "", line)
        words = shlex.split(os.path.expandvars(code))
        while words:
            part = words[: words.index("&&")] if "&&" in words else words
            words = words[len(part) + 1:]
            while part and re.fullmatch(r"[A-Z_]+=.*", part[0]):  # NAME=value: the suite's environment
                part = part[1:]
            if part:
                yield part, comment


def shrink(argv: list[str]) -> list[str]:
    out, words = [], iter(argv)
    for word in words:
        option, eq, _ = word.partition("=")
        if option not in SHRINK:
            out.append(word)
            continue
        if option not in FLAGS and not eq:
            next(words)  # the documented value
        out += SHRINK[option]
    if argv[0] in DEFAULTS and DEFAULTS[argv[0]] not in out:
        out += SHRINK[DEFAULTS[argv[0]]]
    return out


def module(name: str):
    """A module by its name (``textlm.train`` as an attribute is the function the package exports)."""
    return importlib.import_module(name)


class _WorkStarts(Exception):
    """A LONG command reached its work: everything before it accepted the command."""


def _stop(*args, **kwargs):
    raise _WorkStarts


class Page:
    """One page's commands, run in order in one folder."""

    def __init__(self, page: Path, monkeypatch):
        self.page, self.monkeypatch = page, monkeypatch
        self.output = None  # what the last command printed, for a text block after it

    def where(self, line: int) -> str:
        return f"{self.page.relative_to(ROOT)}:{line}"

    def bash(self, text: str, line: int) -> None:
        self.output = None
        for argv, comment in commands(text):
            head = argv[0]
            if head == "export" or argv[:2] == ["pip", "install"] or argv[:3] == ["python", "-m", "pytest"]:
                continue
            if head == "odernn":
                self.odernn(argv[1:], comment, line)
            elif argv[:3] == ["python", "-m", "textlm.cli"]:
                self.odernn(argv[3:], comment, line)
            elif head == "torchrun" and "textlm.cli" in argv:
                self.odernn(argv[argv.index("textlm.cli") + 1:], comment, line)
            elif head == "python" and len(argv) > 1 and argv[1].split("/")[0] in ("benchmarks", "examples"):
                self.script(ROOT / argv[1], argv[2:], line)
            else:
                pytest.fail(f"{self.where(line)}: the suite does not know how to run {' '.join(argv)!r}; "
                            "if it is output, fence it as text")

    def odernn(self, argv: list[str], comment: str, line: int) -> None:
        argv = shrink(argv)
        target = None
        if ">" in argv:
            argv, target = argv[: argv.index(">")], argv[argv.index(">") + 1]
        stated = re.match(r"\s*exit (\d+)", comment)  # a comment that begins "exit N"
        expected = {int(stated.group(1)) if stated else 0}
        if argv[:2] == ["stability", "check"] and len(argv) > 2 and Path(argv[2]).exists():
            expected = {0, 1, 3, 4}  # a model trained here, shrunk: its own verdict
        long = argv[0] == "compare" or any(word in WORD_CORPORA for word in argv)
        with self.monkeypatch.context() as patch:
            if long:
                patch.setattr(module("textlm.compare"), "compare", _stop)
                patch.setattr(module("textlm.train").Trainer, "run", _stop)
            try:
                code, out, err = run(*argv)
            except _WorkStarts:
                return
        assert not long, f"{self.where(line)}: odernn {' '.join(argv)} ended (exit {code}) before its work: {err}"
        assert code in expected, (f"{self.where(line)}: odernn {' '.join(argv)} exited {code}, the page says "
                                  f"{sorted(expected)}:\n{out[-2000:]}\n{err[-2000:]}")
        if target:
            Path(target).write_text(out)
        self.output = out + err

    def script(self, path: Path, args: list[str], line: int) -> None:
        assert path.is_file(), f"{self.where(line)}: no script {path.relative_to(ROOT)}"
        if "argparse" not in path.read_text():
            assert not args, f"{self.where(line)}: {path.name} has no parser, and the page gives it {args}"
            runpy.run_path(str(path), run_name="__docs__")
            return
        real = argparse.ArgumentParser.parse_args

        def parse_then_stop(parser, args=None, namespace=None):
            real(parser, args, namespace)
            raise _WorkStarts

        with self.monkeypatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
            patch.setattr(sys, "argv", [str(path), *args])
            try:
                runpy.run_path(str(path), run_name="__main__")
            except _WorkStarts:
                return
            except SystemExit as exit_:
                pytest.fail(f"{self.where(line)}: {path.name} {' '.join(args)}: its parser refused (exit {exit_.code})")
        pytest.fail(f"{self.where(line)}: {path.name} finished without parsing its arguments")

    def shown(self, text: str, line: int) -> None:
        assert self.output is not None, f"{self.where(line)}: output shown after a block with no odernn command"
        missing = [shown for shown in text.splitlines() if shown.strip() not in ("", "…") and shown not in self.output]
        assert not missing, f"{self.where(line)}: shown but not printed: {missing}\nprinted:\n{self.output}"


@functools.cache
def _corpus(load, *args):
    return load(*args)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_of_the_page_runs(page, tmp_path, monkeypatch):
    data = Path(os.environ.get("ODERNN_DATA", "~/.cache/odernn")).expanduser().resolve()
    monkeypatch.setenv("ODERNN_DATA", str(data))  # absolute: the commands run in another folder
    monkeypatch.setenv("MPLBACKEND", "Agg")
    loader = functools.partial(_corpus, module("textlm.data").load_corpus)  # each corpus read once per session
    monkeypatch.setattr(module("textlm.data"), "load_corpus", loader)
    monkeypatch.setattr(module("textlm.train"), "load_corpus", loader)
    monkeypatch.chdir(tmp_path)
    runner, lines, previous = Page(page, monkeypatch), page.read_text().splitlines(), (None, 0)
    for language, line, text, end in blocks(page):
        assert language in LANGUAGES, f"{runner.where(line)}: fence language {language!r}: use one of {sorted(LANGUAGES)}"
        after_bash = previous[0] == "bash" and not "".join(lines[previous[1]:line - 1]).strip()
        if language == "bash":
            runner.bash(text, line)
        elif language == "python" and ">>>" not in text:
            exec(compile(text, runner.where(line), "exec"), {"__name__": "__docs__"})
        elif language == "toml":
            import tomllib
            named = re.match(r"# (\S+\.toml)\n", text)
            name = named.group(1) if named else f"{tomllib.loads(text)['name']}.toml"
            (tmp_path / name).write_text(text + "\n")
        elif language == "text" and after_bash:
            runner.shown(text, line)
        previous = (language, end)


def test_the_readme_reads_in_ten_minutes():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    titles = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    """Files and the headings named after ``#``, as GitHub renders them."""
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page.name}: links to missing files or headings {broken}"
