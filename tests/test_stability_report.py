"""The stability report: its conditions (keys and roles), the verdict derived from them on linear
fields whose answer is known analytically, a report that never contradicts itself, and the exit
codes of ``odernn stability check --fail-on``."""

import io
import json
import math

import numpy as np
import pytest
import torch
from test_cli import run
from test_stability import linear_cell

import odernn
import stability

KEYS = ["absolute_stability", "faithful", "neutral_modes", "far_field", "ode_stability", "restoring_far_field",
        "imaginary_axis", "largest_dt", "gradient_growth", "stiffness"]


def test_the_conditions_have_stable_keys_and_roles():
    M = np.array([[-0.1, 1.0], [-1.0, -0.1]])  # λ = −0.1 ± i: every condition applies
    report = stability.check(linear_cell(M, "rk4", 1.0), samples=2)
    assert [c.key for c in report.conditions] == KEYS
    assert [c.key for c in report.conditions if c.role == "verdict"] == ["absolute_stability", "faithful",
                                                                         "neutral_modes", "far_field"]
    assert {c.role for c in report.conditions} == {"verdict", "info"}
    for c in report.conditions:  # the lookup by key, and by the start of the name as before
        assert report.condition(c.key) is c and report.condition(c.name[:12]) is c
    assert report.condition("stiffness").detail.startswith("not stiff")  # what textlm.train reads
    with pytest.raises(KeyError, match="no condition 'nope'"):
        report.condition("nope")
    data = json.loads(report.to_json())
    assert [(c["key"], c["role"], c["holds"], c["verdict"]) for c in data["conditions"]] == \
        [(c.key, c.role, c.holds, c.holds) for c in report.conditions]
    assert data["verdict"] == report.verdict == "stable" and data["stable"] is True


def _check(eigenvalues, tableau, h):
    """A linear field whose Jacobian has exactly these eigenvalues (a real block per complex pair)."""
    blocks = []
    for lam in eigenvalues:
        lam = complex(lam)
        blocks.append(np.array([[lam.real, lam.imag], [-lam.imag, lam.real]]) if lam.imag else np.array([[lam.real]]))
    M = np.zeros((sum(len(b) for b in blocks),) * 2)
    at = 0
    for b in blocks:
        M[at:at + len(b), at:at + len(b)] = b
        at += len(b)
    return stability.check(linear_cell(M, tableau, h), samples=2)


def _consistent(report):
    """What every report must say about itself: FAIL only on a condition that decides a verdict
    that faults the step, and a Δ offered only where a Δ > 0 exists."""
    text = str(report)
    fails = [line for line in text.splitlines() if line.startswith("  [FAIL]")]
    faults = report.verdict in ("marginal step", "unstable step")
    assert bool(fails) == faults, text
    assert all(report.condition(line[9:].split(":")[0]).role == "verdict" for line in fails)
    assert ("a Δ ≤" in text) == (report.max_stable_dt > 0 and not report.condition("largest_dt").holds), text
    if report.max_stable_dt == 0:
        assert "no Δ > 0 keeps every hλ in the region" in text
    return text


def test_rk4_at_h_lambda_minus_one_is_stable():
    report = _check([-1.0], "rk4", 1.0)
    assert report.verdict == "stable" and report.exit_code == 0
    assert report.margin == pytest.approx(1 - (1 - 1 + 1 / 2 - 1 / 6 + 1 / 24), abs=1e-12)  # R(−1) = 3/8
    _consistent(report)


@pytest.mark.parametrize("h, verdict", [(0.04, "marginal step"), (0.05, "unstable step")])
def test_forward_euler_on_an_imaginary_spectrum_amplifies_by_the_square_root(h, verdict):
    """λ = ±i, where the exact flow keeps every amplitude: forward Euler multiplies it by
    √(1 + h²) per step. At most 0.1 % (h ≤ 0.0447) is the marginal step; beyond, an unstable step.
    No Δ helps either way (Euler covers no segment of the imaginary axis), and the report says so."""
    report = _check([1j], "euler", h)
    gain = math.sqrt(1 + h * h)
    assert report.verdict == verdict and report.exit_code == {"marginal step": 4, "unstable step": 1}[verdict]
    assert report.condition("absolute_stability").value == pytest.approx(gain, rel=1e-12)
    assert report.condition("faithful").value == pytest.approx(gain, rel=1e-12)  # the flow's |e^{ih}| is 1
    if verdict == "marginal step":
        assert report.condition("neutral_modes").value == pytest.approx(gain, rel=1e-12)
        assert f"×{gain ** 100:.4g} over T = 100 tokens" in report.headline()
    assert report.max_stable_dt == 0 and report.condition("ode_stability").holds
    text = _consistent(report)
    assert "on the imaginary axis, which the tableau's region does not reach near 0" in text
    assert report.headline().startswith({"marginal step": "MARGINAL STEP", "unstable step": "UNSTABLE STEP"}[verdict])
    assert "EXPANDING" not in text and "expands along" not in report.headline()


def test_a_slightly_damped_oscillation_names_the_step_that_holds_it():
    """λ = −a ± i with a small: forward Euler holds it for h ≤ 2a/(a² + 1), and the report offers
    that Δ (to 0.1 %: the ray grazes the region's boundary, where |R| ≤ 1 + 1e-9 counts as on it)."""
    a, h = 1e-3, 0.01
    report = _check([-a + 1j], "euler", h)
    limit = 2 * a / (a * a + 1)
    assert report.verdict == "marginal step" and report.max_stable_dt == pytest.approx(limit, rel=1e-3)
    assert f"a Δ ≤ {report.max_stable_dt:.6g}, or more steps per token" in report.headline()
    _consistent(report)


def test_an_expanding_field_with_a_faithful_step_is_expanding_dynamics():
    """λ = 0.5, forward Euler at h = 1: |R| = 1.5 < e^0.5 = 1.6487. Not a failure of the step: no
    FAIL, and no Δ offered (every region excludes hλ > 0 near 0)."""
    report = _check([0.5, -1.0], "euler", 1.0)
    assert report.verdict == "expanding dynamics" and report.exit_code == 3
    assert report.rightmost == pytest.approx(0.5) and report.expanding_directions == 1
    assert report.condition("faithful").value == pytest.approx(1.5 / math.exp(0.5), rel=1e-12)
    text = _consistent(report)
    assert "[note] absolute stability of the step: 1.5" in text
    assert "1 eigenvalue(s) with Re λ > 0, which the exact flow expands" in text
    assert report.headline().startswith("FAITHFUL STEP, EXPANDING DYNAMICS: only modes that the learned field "
                                        "itself expands leave the region: the learned field expands along 1")


@pytest.mark.parametrize("lam", [-3.0, -2.0005])
def test_an_unstable_step_where_the_flow_contracts(lam):
    """Forward Euler at h = 1: |1 + hλ| > 1 where the flow contracts by e^{hλ}. −2.0005 is outside
    by 0.05 % only, and still a fault of the step (not the dynamics); h ≤ 2/|λ| holds it."""
    report = _check([lam], "euler", 1.0)
    assert report.verdict == "unstable step" and report.exit_code == 1
    assert report.condition("faithful").value == pytest.approx(abs(1 + lam) / math.exp(lam), rel=1e-12)
    assert report.max_stable_dt == pytest.approx(2 / abs(lam), rel=1e-9)
    assert f"a Δ ≤ {2 / abs(lam):.6g}" in report.headline()
    _consistent(report)


def test_over_damping_is_stable_and_offers_no_delta():
    """Backward Euler at hλ = 3 maps by −1/2 (stable), but the ray from 0 through hλ starts outside
    the region: the largest Δ keeping every smaller Δ stable is 0, and the report says why."""
    report = _check([1.0], "backward-euler", 3.0)
    assert report.verdict == "stable" and report.max_stable_dt == 0
    text = _consistent(report)
    assert "[note] largest stable Δ for these weights: 0" in text and "Re λ > 0" in text


@pytest.mark.parametrize("verdict", list(stability.VERDICTS))
@pytest.mark.parametrize("fail_on", ["expanding", "marginal", "unstable", "never"])
def test_fail_on_gives_the_verdicts_code_from_the_chosen_verdict_on(verdict, fail_on):
    from textlm.cli._stability import exit_code
    order = ["stable", "expanding dynamics", "marginal step", "unstable step"]
    first_failing = {"expanding": 1, "marginal": 2, "unstable": 3, "never": 4}[fail_on]
    code = {"stable": 0, "expanding dynamics": 3, "marginal step": 4, "unstable step": 1}[verdict]
    assert exit_code(verdict, fail_on) == (code if order.index(verdict) >= first_failing else 0)


def test_the_command_line_on_an_antisymmetric_cell_says_marginal_step():
    """AntisymmetricRNN with forward Euler: its modes sit just left of the imaginary axis, where
    Euler amplifies them by 0.025 % a step; before, this was called expanding dynamics "along 0
    directions"."""
    code, out, _ = run("stability", "check", "antisymmetric:euler", "--hidden-size", "64")
    assert code == 4 and out.startswith("MARGINAL STEP: ") and "EXPANDING" not in out and "expands along" not in out
    for fail_on, expected in (("expanding", 4), ("marginal", 4), ("unstable", 0), ("never", 0)):
        code, _, _ = run("stability", "check", "antisymmetric:euler", "--hidden-size", "16", "--fail-on", fail_on)
        assert code == expected, fail_on
    code, out, err = run("stability", "check", "antisymmetric:euler", "--hidden-size", "16", "--json")
    data = json.loads(out)
    assert data["verdict"] == "marginal step" and err == ""
    assert [(c["key"], c["role"]) for c in data["conditions"]][:3] == [
        ("absolute_stability", "verdict"), ("faithful", "verdict"), ("neutral_modes", "verdict")]


@pytest.mark.parametrize("spec, verdict", [("gru-ode:rk4", "stable"), ("rnn:euler:dt=6", "unstable step")])
def test_fail_on_from_the_command_line(spec, verdict):
    for fail_on in ("expanding", "marginal", "unstable", "never"):
        code, out, _ = run("stability", "check", spec, "--hidden-size", "8", "--input-size", "2", "--fail-on", fail_on)
        assert code == (stability.VERDICTS[verdict] if fail_on != "never" else 0), (fail_on, out)
    code, _, err = run("stability", "check", spec, "--fail-on", "sometimes")
    assert code == 2 and "invalid choice" in err


@pytest.fixture(scope="module")
def expanding_checkpoint(tmp_path_factory):
    """A trained language model whose rnn:euler:dt=0.5 layer is set to tanh(3h + …) − h: J = 2I
    at the zero state (hλ = 1, |R| = 2 < e), contracting where it saturates: expanding dynamics."""
    from textlm import TrainConfig, Trainer, load_checkpoint, save_checkpoint
    out = tmp_path_factory.mktemp("expanding")
    Trainer(TrainConfig(corpus="tinyshakespeare", train_tokens=5000, valid_tokens=2000, cell="rnn:euler:dt=0.5", hidden=8, batch_size=4,
                        bptt=16, max_tokens=256, out=str(out), progress=False, eval_tokens=200, device="cpu")).run()
    data = load_checkpoint(out / "checkpoint.pt")
    key = "layers.0.rnn.weight_hh_l0"
    data["model"][key] = 3 * torch.eye(8, dtype=data["model"][key].dtype)
    save_checkpoint(data, out / "checkpoint.pt")
    return out


def test_a_checkpoint_with_expanding_dynamics_prints_no_fail(expanding_checkpoint):
    code, out, _ = run("stability", "check", str(expanding_checkpoint))
    assert code == 3 and out.startswith("FAITHFUL STEP, EXPANDING DYNAMICS") and "[FAIL]" not in out, out
    assert "[note] absolute stability of the step" in out and "a Δ ≤" not in out and "no Δ > 0" in out
    for fail_on in ("marginal", "unstable", "never"):  # `… --fail-on marginal && odernn train …` goes on
        assert run("stability", "check", str(expanding_checkpoint), "--fail-on", fail_on)[0] == 0
    # sizes are a spec's: given with a checkpoint they were silently ignored
    code, _, err = run("stability", "check", str(expanding_checkpoint), "--input-size", "3", "--hidden-size", "64")
    assert code == 2 and "--input-size and --hidden-size: for a cell spec" in err and err.count("\n") == 1, err


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_shown_on_a_terminal_only(monkeypatch):
    cell = linear_cell(-np.eye(2), "euler", 1.0)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    stability.check(cell, samples=2, progress="checking")
    assert "checking" in terminal.getvalue() and "condition" in terminal.getvalue()
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    stability.check(cell, samples=2, progress="checking")
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    stability.check(cell, samples=2)  # no label: no bar
    assert pipe.getvalue() == "" and terminal.getvalue() == ""


# -- the far field: where the bounded nonlinearities saturate ----------------------------------------
def _norm_after(cell, state, tokens, x):
    with torch.no_grad():
        for _ in range(tokens):
            state = cell(x, state)
    return float(state.norm())


@pytest.mark.parametrize("tableau, dt", [("euler", 3.0), ("midpoint", 2.5), ("rk4", 3.0)])
def test_the_far_field_growth_of_a_leaky_tanh_rnn_is_the_stability_function_at_minus_dt(tableau, dt):
    """f = tanh(…) − h: far out the tanh is bounded and −h decides, so one token multiplies a large
    state by |R(−Δ)|, the tableau's own constant (euler |1 − 3| = 2, midpoint 1 − 2.5 + 3.125 =
    1.625, rk4 at −3 1.375), up to the bounded part's push, which fades as 1/radius."""
    torch.manual_seed(0)
    cell = odernn.cell(f"rnn:{tableau}:dt={dt:g}", input_size=3, hidden_size=6).double()
    report = stability.check(cell, samples=4)
    expected = abs(float(cell.tableau.amplification(np.array([-dt]))[0]))
    assert report.condition("far_field").value == pytest.approx(expected, rel=1e-3)
    assert report.verdict == "unstable step" and not report.condition("far_field").holds
    stable = stability.check(odernn.cell(f"rnn:{tableau}:dt=1", input_size=3, hidden_size=6).double(), samples=4)
    assert stable.condition("far_field").holds and stable.condition("far_field").value < 1


def test_a_step_stable_near_the_trajectory_that_pushes_large_states_out_is_an_unstable_step():
    """GRU-ODE with the midpoint rule at Δ = 3 and update gates biased shut (z ≈ σ(4)): near the
    origin 1 − z ≈ 0.018 and every hλ is inside the region, but far out half the gates open, −h
    decides and R(−3) = 2.5. The verdict says so, and a state put out of range runs away, while
    the same cell at Δ = 1 pulls it back."""
    def cell_at(dt):
        torch.manual_seed(0)
        cell = odernn.cell(f"gru-ode:midpoint:dt={dt}", input_size=3, hidden_size=8).double()
        with torch.no_grad():
            cell.field.bias_hh[8:16] = 4.0  # the update gate z, shut: 1 − z ≈ 0.018 near the origin
        return cell
    report = stability.check(cell_at(3), samples=8)
    assert report.condition("absolute_stability").holds and report.margin > 0
    assert not report.condition("far_field").holds and report.verdict == "unstable step"
    assert report.headline().startswith("UNSTABLE STEP AT LARGE STATES: from ")
    assert "a smaller Δ or more steps per token" in report.headline()
    _consistent(report)
    x, state = torch.zeros(1, 3, dtype=torch.float64), torch.full((1, 8), 10.0, dtype=torch.float64)
    assert _norm_after(cell_at(3), state, 20, x) > 1e3 * float(state.norm())  # runs away
    assert _norm_after(cell_at(1), state, 20, x) < float(state.norm())  # pulled back
    assert stability.check(cell_at(1), samples=8).verdict == "stable"
    assert stability.check(cell_at(1), samples=8, dt=3).verdict == "unstable step"  # judged at the Δ asked for


def test_a_field_without_a_restoring_term_is_said_to_drift():
    """AntisymmetricRNN, f = tanh((W − Wᵀ − γI) h + V x + b): nothing pulls a large state back, so
    a constant input keeps adding to it — the state keeps growing over a carried stream, far past
    the ‖·‖ ≤ √6 that the leaky tanh-RNN's −h holds (tanh ≤ 1 per unit). The diagnostic says which."""
    torch.manual_seed(0)
    drifting = odernn.cell("antisymmetric:euler:dt=0.5", input_size=3, hidden_size=6).double()
    leaky = odernn.cell("rnn:euler:dt=0.5", input_size=3, hidden_size=6).double()
    x, zero = torch.ones(1, 3, dtype=torch.float64), torch.zeros(1, 6, dtype=torch.float64)
    assert _norm_after(drifting, zero, 400, x) > 1.2 * _norm_after(drifting, zero, 100, x) > 6 * math.sqrt(6)
    assert _norm_after(leaky, zero, 400, x) == pytest.approx(_norm_after(leaky, zero, 100, x), rel=1e-6)
    assert _norm_after(leaky, zero, 400, x) < math.sqrt(6)
    memory = stability.check(drifting, samples=4).condition("restoring_far_field")
    assert not memory.holds and memory.value == math.inf and "accumulates" in memory.detail
    assert stability.check(leaky, samples=4).condition("restoring_far_field").holds


def test_the_far_field_is_not_measured_where_the_dtype_has_no_room():
    """float16 holds no state of norm 10⁴ with room to grow: the condition says so and holds, and
    the verdict is the rest's (bfloat16, with float32's range, is measured)."""
    torch.manual_seed(0)
    half = odernn.cell("gru-ode:rk4", input_size=3, hidden_size=8).half()
    far = stability.check(half, samples=4).condition("far_field")
    assert far.holds and far.detail.startswith("not measured: states of norm 1e+04 do not fit torch.float16")
    brain = stability.check(odernn.cell("gru-ode:rk4", input_size=3, hidden_size=8).to(torch.bfloat16), samples=4)
    assert not brain.condition("far_field").detail.startswith("not measured")


def test_compare_aggregates_the_far_field_flags_over_layers():
    """A check fraction's flags over the layers: False if any layer fails, else None if one was not
    measured (an implicit step at large states), else True; the verdict is the most severe."""
    from textlm.compare import checks

    def record(layer, verdict, far, restoring=True):
        return {"event": "check", "fraction": 0.0, "layer": layer, "verdict": verdict, "margin": 0.1 * layer,
                "far_field": far, "restoring_far_field": restoring}
    assert checks([record(0, "stable", True), record(1, "unstable step", False)])["check_0"] == \
        {"verdict": "unstable step", "margin": 0.0, "far_field": False, "restoring_far_field": True}
    assert checks([record(0, "stable", None), record(1, "stable", True, False)])["check_0"]["far_field"] is None
    assert checks([record(0, "stable", None), record(1, "stable", False)])["check_0"]["far_field"] is False
    assert checks([record(0, "stable", True, False)])["check_0"]["restoring_far_field"] is False
    assert "far_field" not in checks([{"event": "check", "fraction": 0.0, "layer": 0, "verdict": "stable",
                                       "margin": 0.1}])["check_0"]  # a check from before the far field
