"""The ``odernn tableau`` commands: output, JSON, exit codes, and one-line errors."""

import contextlib
import io
import json

import pytest

from textlm.cli import main


def run_process(*args):
    """The console command in a process of its own: a fork of the command server
    (``textlm._commands``, whose output and exit codes tests/test_commands.py holds equal to
    ``python -m textlm.cli``'s), not a new interpreter's seconds of imports."""
    from textlm._commands import Command
    with Command(list(args)) as command:
        out, err = command.communicate(timeout=300)
    return command.returncode, out, err


def run(*args):
    """The entry point in this process (a subprocess costs seconds of imports per call): exit code,
    stdout, stderr. An exception escaping ``main`` fails the test, as a traceback would."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse: --help, bad options
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_help_explains_every_command():
    code, out, _ = run_process("--help")
    assert code == 0 and "tableau" in out
    code, out, _ = run("tableau", "--help")
    assert code == 0 and all(action in out for action in ("list", "show", "check", "plot"))


def test_list_and_json(capsys):
    assert main(["tableau", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= 45 and {"name", "reference", "stated_order"} <= set(rows[0])


def test_show_prints_derived_properties(capsys):
    assert main(["tableau", "show", "rk4", "--json"]) == 0
    props = json.loads(capsys.readouterr().out)
    assert props["order"] == 4 and props["stages"] == 4 and props["structure"] == "explicit"
    assert props["imaginary_stability_limit"] == "2*sqrt(2)"
    assert props["real_stability_interval_float"][0] == pytest.approx(-2.785293563405282)
    assert main(["tableau", "show", "gauss-2"]) == 0
    out = capsys.readouterr().out
    assert "A-stable                  True" in out and "order                     4" in out


def test_show_toml_round_trips_through_check(tmp_path, capsys):
    assert main(["tableau", "show", "dopri5", "--toml"]) == 0
    path = tmp_path / "mine.toml"
    path.write_text(capsys.readouterr().out)
    assert main(["tableau", "check", str(path), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["valid"] and verdict["order"] == 5 and verdict["embedded_order"] == 4


@pytest.mark.parametrize("content, message", [
    ('A = [["0", "0"], ["1/2", "0"]]\nb = ["0", "1/3"]\n', "b sums to 1/3"),
    ('A = [["0", "0"], ["1/2"]]\nb = ["0", "1"]\n', "A row 1 has 1 entries"),
    ('A = [["0", "0"], ["__import__(os)", "0"]]\nb = ["0", "1"]\n', "unknown function '__import__'"),
    ('A = [["0"]\n', "invalid TOML"),
])
def test_check_reports_bad_files_in_one_line_with_exit_code_2(tmp_path, content, message):
    path = tmp_path / "scheme.toml"
    path.write_text(content)
    code, out, err = run("tableau", "check", str(path))
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_names_and_missing_files_exit_2():
    code, _, err = run("tableau", "show", "rk5")
    assert code == 2 and "unknown method 'rk5'" in err and "Traceback" not in err
    code, _, err = run("tableau", "check", "/nonexistent/scheme.toml")
    assert code == 2 and "no such file" in err


def test_plot_writes_a_png(tmp_path):
    target = tmp_path / "regions.png"
    code, out, err = run("tableau", "plot", "euler", "rk4", "radau-iia-2", "-o", str(target), "--point=-1+1j")
    assert code == 0, err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run("tableau", "plot", "rk4", "-o", str(tmp_path / "x.png"), "--point=abc")
    assert code == 2 and "not a finite complex number" in err


def test_list_verify_derives_every_order(catalogue, capsys):
    assert main(["tableau", "list", "--verify", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert len(rows) == len(catalogue) and all(r["verified"] for r in rows)
    assert captured.err == ""  # no progress bar where stderr is not a terminal


@pytest.mark.parametrize("name, a_stable, l_stable", [
    ("backward-euler", True, True), ("trapezoid", True, False), ("implicit-midpoint", True, False),
    ("gauss-2", True, False), ("radau-iia-2", True, True), ("alexander2", True, True), ("crouzeix2", True, False),
    ("rk4", False, False), ("euler", False, False)])
def test_check_and_show_report_a_and_l_stability(tmp_path, name, a_stable, l_stable):
    """Known answers (Hairer & Wanner II, §IV.3–6): backward Euler, Radau IIA and Alexander's
    SDIRK (γ = 1 − √2/2) are L-stable; the trapezoid, implicit midpoint, Gauss and Crouzeix's
    SDIRK A-stable only; explicit methods (polynomial R) neither. ``check`` reads the file that
    ``show --toml`` writes."""
    path = tmp_path / f"{name}.toml"
    path.write_text(run("tableau", "show", name, "--toml")[1])
    code, out, err = run("tableau", "check", str(path))
    assert code == 0 and f"A-stable: {a_stable}; L-stable: {l_stable}" in out.splitlines(), (out, err)
    verdict = json.loads(run("tableau", "check", str(path), "--json")[1])
    assert (verdict["a_stable"], verdict["l_stable"]) == (a_stable, l_stable)
    out = run("tableau", "show", name)[1]
    assert f"A-stable                  {a_stable}" in out and f"L-stable                  {l_stable}" in out


@pytest.mark.parametrize("theta, verdict", [("1/3", "A-stable: False; L-stable: False"),
                                            ("2/3", "A-stable: True; L-stable: False"),
                                            ("1", "A-stable: True; L-stable: True")])
def test_check_decides_a_stability_of_a_written_scheme(tmp_path, theta, verdict):
    """The θ-method, R = (1 + (1 − θ)z)/(1 − θz): A-stable exactly for θ ≥ 1/2, L-stable at θ = 1."""
    path = tmp_path / "theta.toml"
    path.write_text(f'A = [["{theta}"]]\nb = ["1"]\n')
    code, out, err = run("tableau", "check", str(path))
    assert code == 0 and verdict in out.splitlines(), err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("args, phases", [
    (("tableau", "show", "radau-iia-2"), ("analysing radau-iia-2", "building the tableau", "order conditions",
                                          "stability function", "stability region", "principal error norm",
                                          "formatting", "6/6")),
    (("tableau", "show", "rk4", "--float"), ("numerical analysis to 1e-10", "7/7")),
    (("tableau", "show", "rk4", "--toml"), ("building the tableau", "formatting", "2/2")),
    (("tableau", "list", "--verify"), ("deriving the orders: euler", "deriving the orders: rk4", "2/2")),
    (("tableau", "plot", "rk4", "euler", "-o", "{tmp}/r.png"), ("plotting: building rk4", "plotting: building euler",
                                                              "drawing the regions", "writing r.png", "4/4")),
    (("cell", "show", "gru-ode:radau-iia-2"), ("building gru-ode:radau-iia-2: the tableau and the cell",
                                              "one token through it", "order conditions", "3/3")),
])
def test_progress_goes_to_a_terminals_stderr_and_stdout_stays_the_same(tmp_path, monkeypatch, args, phases):
    """On a terminal (here one at once: ``Steps.DELAY = 0``) a bar names each step on stderr; not on
    a terminal (a log, a pipe) or with --no-progress, nothing; stdout is the same in every case."""
    import butcher
    from textlm.cli._progress import Steps
    monkeypatch.setattr(Steps, "DELAY", 0)
    monkeypatch.setattr(butcher, "names", lambda: ["euler", "rk4"])  # list --verify: two methods, not 71
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, plain, err = run(*args)
    assert code == 0 and err == ""
    for extra in ([], ["--no-progress"]):
        terminal = _Terminal()
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(terminal):
            assert main([*args, *extra]) == 0
        assert out.getvalue() == plain
        if extra:
            assert terminal.getvalue() == ""
        else:
            assert all(phase in terminal.getvalue() for phase in phases), terminal.getvalue()


def test_plot_legend_tells_same_named_tableaux_apart(tmp_path, monkeypatch):
    """``tableau show dopri5 --toml > mine.toml`` keeps the name dopri5: drawn beside the catalogue's,
    each legend entry says where it came from; the same method twice is numbered."""
    import matplotlib.pyplot as plt

    import butcher
    figures = []
    draw = butcher.plot_stability_region
    monkeypatch.setattr(butcher, "plot_stability_region", lambda *a, **k: figures.append(draw(*a, **k)) or figures[-1])
    mine = tmp_path / "mine.toml"
    mine.write_text(run("tableau", "show", "dopri5", "--toml")[1])
    for specs, expected in ((("dopri5", str(mine), "rk4"), ["dopri5 (catalogue)", f"dopri5 ({mine})", "rk4"]),
                            (("rk4", "rk4"), ["rk4 (catalogue) [1]", "rk4 (catalogue) [2]"])):
        code, _, err = run("tableau", "plot", *specs, "-o", str(tmp_path / "r.png"))
        assert code == 0, err
        legend = figures[-1].axes[0].get_legend()
        assert [text.get_text() for text in legend.get_texts()] == expected
        plt.close(figures[-1])


def test_cell_show_and_bad_specs(capsys):
    assert main(["cell", "show", "gru-ode:rk4:steps=2", "--json", "--input-size", "3", "--hidden-size", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n"] == 4 and info["t"] == 1 and info["nfe_per_token"] == 8
    assert info["parameters"] == 3 * 4 * 3 + 3 * 4 * 4 + 2 * 3 * 4  # the nn.GRUCell layout
    assert info["sequences"] == "engine" and info["equals"] is None
    assert main(["cell", "show", "lstm", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["t"] == 2 and info["equals"] == "torch.nn.LSTMCell"
    assert main(["cell", "show", "gru-ode:gauss-2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sequences"] == "engine"  # implicit, through A's eigenvalues
    assert main(["cell", "show", "gru-ode:dopri5:rtol=1e-4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sequences"] == "engine"  # adaptive: the accepted steps replayed
    assert main(["cell", "show", "lstm:proj_size=2", "--json"]) == 0  # the projection is not elementwise
    assert json.loads(capsys.readouterr().out)["sequences"] == "token by token (autograd)"
    code, _, err = run("cell", "show", "gru-odd")
    assert code == 2 and "unknown cell field 'gru-odd'; fields: rnn, gru-ode" in err and "Traceback" not in err


def test_stability_check_exit_codes_and_plot(tmp_path):
    code, out, err = run("stability", "check", "gru-ode:rk4", "--hidden-size", "16", "--input-size", "4", "--json")
    assert code == 0 and json.loads(out)["stable"] is True
    code, out, _ = run("stability", "check", "gru-ode:euler:dt=6", "--hidden-size", "16", "--input-size", "4")
    assert code == 1 and out.startswith("UNSTABLE")
    code, _, err = run("stability", "check", "gru-odd")
    assert code == 2 and "unknown cell field" in err and "Traceback" not in err
    # the same spec is unstable without its constraint and stable with it
    code, _, _ = run("stability", "check", "rnn:rk4:dt=2.5", "--hidden-size", "16", "--input-size", "4")
    assert code == 1
    code, _, _ = run("stability", "check", "rnn:rk4:dt=2.5:constraint=spectral", "--hidden-size", "16",
                     "--input-size", "4")
    assert code == 0
    code, _, err = run("stability", "check", "gru-ode:constraint=spectral")
    assert code == 2 and "rnn field only" in err
    target = tmp_path / "eig.png"
    code, _, err = run("stability", "plot", "rnn:rk4", "--hidden-size", "8", "--input-size", "2", "-o", str(target))
    assert code == 0 and target.read_bytes()[:4] == b"\x89PNG"


def test_version_and_the_defaults_in_help():
    from importlib.metadata import version
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"odernn {version('odernn')}"
    from textlm.train import TrainConfig
    defaults = TrainConfig()
    _, text, _ = run("train", "--help")
    text = " ".join(text.split())  # argparse wraps lines
    for option, value in (("--lr", defaults.lr), ("--layers", defaults.layers), ("--hidden", defaults.hidden),
                          ("--dropout", defaults.dropout), ("--batch-size", defaults.batch_size),
                          ("--bptt", defaults.bptt)):
        assert f"{option} {option.lstrip('-').upper().replace('-', '_')}" in text and f"(default: {value})" in text
    from textlm.compare import DEFAULT_CELLS
    _, text, _ = run("compare", "--help")
    text = " ".join(text.split())
    assert f"(default: {' '.join(DEFAULT_CELLS)})" in text and "(default: 0 1 2)" in text


def test_a_plot_of_an_unstable_cell_is_written_and_succeeds(tmp_path):
    target = tmp_path / "eig.png"
    code, out, _ = run("stability", "check", "rnn:euler:dt=6", "--hidden-size", "8", "--input-size", "2")
    assert code == 1  # the verdict's exit code belongs to check
    code, out, err = run("stability", "plot", "rnn:euler:dt=6", "--hidden-size", "8", "--input-size", "2",
                         "-o", str(target))
    assert code == 0 and target.stat().st_size > 0, err


def test_unknown_methods_get_only_close_suggestions():
    code, _, err = run("tableau", "show", "nosuchmethod")
    assert code == 2 and "did you mean" not in err and "odernn tableau list" in err
    code, _, err = run("tableau", "show", "gaus-2")
    assert code == 2 and "did you mean gauss-2" in err and err.count("gauss-2,") <= 1


def test_threads_option(monkeypatch):
    """--threads is in effect while the command runs, and ``main`` puts the caller's count back."""
    import torch
    before, calls = torch.get_num_threads(), []
    set_num_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), set_num_threads(n)))
    code, out, _ = run("--threads", "3", "tableau", "show", "euler")
    assert code == 0 and calls == [3, before] and torch.get_num_threads() == before
    code, _, err = run("--threads", "0", "tableau", "show", "euler")
    assert code == 2 and "--threads: must be an integer in 1" in err


@pytest.mark.parametrize("name", ["dopri5", "rk4", "tsit5", "euler", "ssprk104"])
def test_the_region_plot_window_holds_every_bounded_region_whole(name):
    """Dormand–Prince's region has two lobes right of the imaginary axis, near 1 ± 3.6i."""
    import numpy as np

    import butcher
    from butcher._plot import default_window
    tab = butcher.get(name)
    (x0, x1), (y0, y1) = default_window([tab])
    g = np.linspace(-12, 12, 1201)
    Z = g[None, :] + 1j * g[:, None]
    inside = Z[tab.amplification(Z) <= 1]
    assert inside.real.min() >= x0 and inside.real.max() <= x1
    assert inside.imag.min() >= y0 and inside.imag.max() <= y1


def test_cell_show_prints_a_constraints_cap_and_tableau_list_the_references():
    code, out, _ = run("cell", "show", "rnn:rk4:dt=2:constraint=spectral")
    assert code == 0 and "spectral, ‖weight_hh‖₂ ≤ 0.39" in out  # the README's value, 0.392
    import butcher
    code, out, _ = run("tableau", "list")
    assert code == 0 and butcher.entry("dopri5").reference in out


def test_the_default_thread_count_leaves_busy_cores_alone(monkeypatch):
    """One thread per core that the load average leaves free, at least 1, at most PyTorch's choice."""
    import os

    import torch

    from textlm.cli import default_threads
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        for load, expected in ((0.1, 4), (1.2, 3), (2.6, 1), (3.9, 1), (12.0, 1)):
            monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
            assert default_threads() == expected, load
        torch.set_num_threads(2)  # never more than PyTorch's own choice
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert default_threads() == 2
    finally:
        torch.set_num_threads(before)
