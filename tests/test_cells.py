"""Generated cells: exact recovery of the torch.nn cells, the stepper against the reference,
convergence orders, gradients, irregular steps, and spec errors."""

import pytest
import torch
import torchdiffeq
from torch import nn

import butcher
import odernn

# the generated implicit families are slow to build and never explicit: skip them when collecting
EXPLICIT = [n for n in butcher.names()
            if not n.startswith(("gauss-", "radau-", "lobatto-")) and butcher.get(n).is_explicit]
IMPLICIT = ["backward-euler", "implicit-midpoint", "trapezoid", "gauss-2", "gauss-3", "radau-iia-2", "radau-iia-3",
            "alexander2", "alexander3", "sdirk4", "kvaerno4"]


pytestmark = pytest.mark.usefixtures("float64")  # comparisons to round-off (tests/conftest.py)


# --- exact recovery -------------------------------------------------------------------------

@pytest.mark.parametrize("module_type", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_euler_step_recovers_the_torch_cell(module_type):
    torch.manual_seed(0)
    module = module_type(7, 11)
    cell = odernn.from_torch(module)
    x = torch.randn(5, 7)
    if module_type is nn.LSTMCell:
        state = (torch.randn(5, 11), torch.randn(5, 11))
        for ours, theirs in zip(cell(x, state), module(x, state)):
            assert (ours - theirs).abs().max() <= 1e-12
    else:
        state = torch.randn(5, 11)
        assert (cell(x, state) - module(x, state)).abs().max() <= 1e-12
    assert (cell(x) - module(x)).abs().max() <= 1e-12 if module_type is not nn.LSTMCell else True
    back = cell.to_torch()
    for (name, p), (_, q) in zip(back.named_parameters(), module.named_parameters()):
        assert torch.equal(p, q), name


def test_recovery_holds_over_a_sequence_and_through_the_constructor():
    torch.manual_seed(1)
    gru = nn.GRUCell(4, 6)
    cell = odernn.cell("gru-ode:euler", 4, 6)
    cell.field.load_state_dict(gru.state_dict())
    h_ours = h_theirs = torch.zeros(3, 6)
    for x in torch.randn(20, 3, 4):
        h_ours, h_theirs = cell(x, h_ours), gru(x, h_theirs)
    assert (h_ours - h_theirs).abs().max() <= 1e-12


def test_no_torch_equivalent_is_an_error():
    with pytest.raises(ValueError, match="no torch.nn cell"):
        odernn.cell("gru-ode:rk4", 3, 4).to_torch()
    with pytest.raises(ValueError, match="tanh"):
        odernn.from_torch(nn.RNNCell(3, 4, nonlinearity="relu"))


def test_published_cornn_and_antisymmetric_updates():
    torch.manual_seed(2)
    cell = odernn.cell("cornn:dt=0.05:gamma=2.0:epsilon=3.0", 3, 4)
    f = cell.field
    x, y, z = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    # Rusch & Mishra (2021), explicit coRNN: z⁺ = z + Δ(σ(Wy + 𝒲z + Vx + b) − γy − εz), y⁺ = y + Δz⁺
    z_new = z + 0.05 * (torch.tanh(y @ f.base.weight_hh.T + z @ f.order_weights[0].T + x @ f.base.weight_ih.T + f.base.bias_ih + f.base.bias_hh)
                        - 2.0 * y - 3.0 * z)
    y_new = y + 0.05 * z_new
    out = cell(x, (y, z))
    assert (out[0] - y_new).abs().max() <= 1e-14 and (out[1] - z_new).abs().max() <= 1e-14
    cell = odernn.cell("antisymmetric:euler:eps=0.1:gamma=0.5", 3, 4)
    f = cell.field
    h = torch.randn(2, 4)
    # Chang et al. (2019): h⁺ = h + ε tanh((W − Wᵀ − γI)h + Vx + b)
    expected = h + 0.1 * torch.tanh(h @ (f.weight - f.weight.T - 0.5 * torch.eye(4)).T + x @ f.input_weight.T + f.bias)
    assert (cell(x, h) - expected).abs().max() <= 1e-14


# --- the specialised stepper against the generic reference ----------------------------------

@pytest.mark.parametrize("name", EXPLICIT)
def test_specialised_stepper_equals_reference(name):
    torch.manual_seed(3)
    tab = butcher.get(name)
    field = odernn.GRUODEField(3, 5)
    context, y = field.project(torch.randn(4, 3)), (torch.randn(4, 5),)
    f = lambda blocks: field(context, blocks)  # noqa: E731
    A, b, _, _ = tab.to_numpy()
    ours = odernn.ExplicitScheme(tab).step(f, y, 0.3)
    reference = odernn.reference_step(A, b, f, y, 0.3)
    # equal up to round-off, which grows with the size of the coefficients (DP8's reach ~1e2)
    bound = 4e-16 * (1 + abs(A).sum() + abs(b).sum())
    assert (ours[0] - reference[0]).abs().max() <= bound


def test_fsal_stage_is_not_evaluated():
    assert odernn.ExplicitScheme(butcher.get("dopri5")).evaluations == 6
    assert odernn.ExplicitScheme(butcher.get("rk4")).evaluations == 4


# --- convergence order against an independent solver -----------------------------------------

class _Smooth(nn.Module):
    """A nonlinear field with O(1) derivatives of every order (so errors show the method's order)."""

    def __init__(self, size):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.W = nn.Parameter(torch.randn(size, size, generator=g) / size**0.5 * 1.5)
        self.U = nn.Parameter(torch.randn(size, size, generator=g) / size**0.5)

    def forward(self, h, x):
        return torch.tanh(h @ self.W.T + x) - 0.5 * h + torch.sin(h @ self.U.T)


@pytest.fixture(scope="module")
def smooth_problem():
    torch.manual_seed(5)
    module = _Smooth(4)
    x, h0 = torch.randn(2, 4), torch.randn(2, 4)
    # torchdiffeq's fixed-step RK4 with h = 1/4096 (agrees with h = 1/2048 to 6e-15); its adaptive
    # dopri8 at rtol=1e-13 was off by 2e-10 here, too coarse for the sixth-order Gauss method.
    with torch.no_grad():
        exact = torchdiffeq.odeint(lambda t, h: module(h, x), h0, torch.tensor([0.0, 1.0]), method="rk4",
                                   options=dict(step_size=1 / 4096))[-1]
    return module, x, h0, exact


@pytest.mark.parametrize("name", [n for n in EXPLICIT if butcher.get(n).order() <= 5] + IMPLICIT)
def test_error_falls_at_the_rate_of_the_order(name, smooth_problem):
    """Explicit entries up to order 5 and the implicit ones (Newton-solved stages) alike."""
    module, x, h0, exact = smooth_problem
    p = butcher.get(name).order()
    field = odernn.ModuleField(module, 4, 4)
    base = {1: 32, 2: 16, 3: 8, 4: 4, 5: 16, 6: 4}[p]
    errors = []
    with torch.no_grad():
        for m in (base, 2 * base, 4 * base):
            cell = odernn.ODECell(field, name, dt=1.0, steps=m)
            errors.append((cell(x, h0) - exact).abs().max().item())
    slope = torch.log2(torch.tensor(errors[1] / errors[2])).item()
    assert slope == pytest.approx(p, abs=0.3), errors


def test_unpartitioned_two_block_field_keeps_the_order():
    torch.manual_seed(6)
    field = odernn.CoRNNField(3, 4, gamma=1.0, epsilon=0.5)
    x, state = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))
    with torch.no_grad():
        fine = odernn.ODECell(field, "rk4", dt=1.0, steps=256)(x, state)
        errors = [(odernn.ODECell(field, "rk4", dt=1.0, steps=m)(x, state)[0] - fine[0]).abs().max().item()
                  for m in (4, 8)]
    assert torch.log2(torch.tensor(errors[0] / errors[1])).item() == pytest.approx(4, abs=0.3)


# --- gradients, irregular steps, nfe ---------------------------------------------------------

def test_dt_per_batch_element_equals_separate_runs():
    torch.manual_seed(8)
    cell = odernn.cell("gru-ode:rk4:steps=3", 3, 4)
    x, h = torch.randn(3, 3), torch.randn(3, 4)
    gaps = torch.tensor([0.2, 1.0, 2.5])
    together = cell(x, h, dt=gaps)
    for k in range(3):
        alone = cell(x[k:k + 1], h[k:k + 1], dt=float(gaps[k]))
        assert (together[k] - alone[0]).abs().max() <= 1e-14


def test_nfe_is_reported():
    cell = odernn.cell("gru-ode:rk4:steps=2", 3, 4)
    cell(torch.randn(1, 3))
    assert cell.nfe == 8 and cell.n == 4 and cell.t == 1
    lstm = odernn.cell("lstm", 3, 4)
    lstm(torch.randn(1, 3))
    assert lstm.nfe == 2 and lstm.t == 2


# --- specs ---------------------------------------------------------------------------------

def test_spec_forms_are_equivalent(tmp_path):
    a = odernn.cell("gru-ode:rk4:steps=2", 3, 4)
    b = odernn.cell("gru-ode", 3, 4, tableau="rk4", steps=2)
    assert a.tableau == b.tableau and a.steps == b.steps == 2
    path = tmp_path / "mine.toml"
    path.write_text(butcher.dumps_toml(butcher.get("ralston3")))
    c = odernn.cell(f"gru-ode:{path}", 3, 4)
    assert c.tableau.order() == 3 and c.n == 3
    assert odernn.cell("antisymmetric:euler:eps=0.1", 3, 4).dt == 0.1


@pytest.mark.parametrize("spec, message", [
    ("gru-odd", "unknown cell field 'gru-odd'; fields: rnn, gru-ode, lstm"),
    ("gru-ode:rk5", "unknown method 'rk5'"),
    ("gru-ode:rk4:stepz=2", "unknown option"),
    ("gru-ode:rk4:steps=two", "steps must be a number written in ASCII digits"),
    ("gru-ode:rk4:steps=0", "steps must be an integer in 1 … 1,000"),
    ("gru-ode:rk4:euler", "two tableaux"),
    ("", "a cell spec is a string"),
])
def test_bad_specs_say_what_exists(spec, message):
    with pytest.raises(odernn.CellSpecError, match=message):
        odernn.cell(spec, 3, 4)


# --- implicit tableaux ------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["gru-ode:rk4:steps=2", "lstm", "cornn:midpoint", "rnn:dopri5", "antisymmetric:heun",
                                  "gru-ode:gauss-2:steps=2", "rnn:backward-euler", "lstm:radau-iia-2",
                                  "gru-ode:alexander3", "cornn:implicit-midpoint"])
def test_gradcheck(spec):
    """Explicit cells (backpropagation through the stages) and implicit ones (the implicit
    function theorem through the converged stages), inputs, state and parameters."""
    torch.manual_seed(9)
    cell = odernn.cell(spec, 2, 3)
    x = torch.randn(2, 2, requires_grad=True)
    state = cell.field.initial_state(2, torch.float64, "cpu")
    state = tuple(torch.randn_like(s).requires_grad_() for s in state) if isinstance(state, tuple) \
        else (torch.randn_like(state).requires_grad_(),)

    def run(x, *s):
        return cell(x, s if len(s) > 1 else s[0])

    assert torch.autograd.gradcheck(run, (x, *state))
    assert torch.autograd.gradcheck(lambda *p: run(x.detach(), *(s.detach() for s in state)), list(cell.parameters()))


def test_implicit_gradient_does_not_unroll_the_iterations():
    cell = odernn.cell("gru-ode:gauss-3", 3, 4)
    out = cell(torch.randn(2, 3), torch.randn(2, 4))
    # the graph holds one evaluation of the stage function, not one per Newton iteration
    seen, stack, tanh_nodes = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        tanh_nodes += type(node).__name__.startswith("TanhBackward")
        stack.extend(n for n, _ in node.next_functions)
    assert cell.nfe > 3 * 2 and tanh_nodes == 1


def test_implicit_non_convergence_is_an_error_naming_the_tolerance():
    """Two chord iterations from ``K = f(y)`` cannot reach a relative update of 1e-14 (an
    unreachable tolerance alone is not a test: float32 iterates can land on an exact fixed point,
    an update of 0, on one machine's rounding and not on another's)."""
    cell = odernn.cell("gru-ode:gauss-2:tol=1e-14", 3, 4).double()
    cell.scheme.max_iterations = 2
    with pytest.raises(odernn.ImplicitSolveError, match=r"in 2 simplified-Newton iterations .*tolerance 1\.0e-14"):
        cell(torch.randn(2, 3, dtype=torch.float64))


def test_backward_euler_is_stable_where_forward_euler_explodes():
    """A stiff linear field (eigenvalues −50): Δ = 1 is far outside Euler's interval [−2, 0] and
    inside backward Euler's (−∞, 0] — the butcher verdicts, observed on the cell."""
    lam = torch.full((3,), -50.0)
    field = odernn.ModuleField(lambda h, x: lam * h + x, 3, 3)
    x, h0 = torch.zeros(1, 3), torch.ones(1, 3)
    explicit, implicit = odernn.ODECell(field, "euler"), odernn.ODECell(field, "backward-euler")
    he, hi = h0, h0
    for _ in range(10):
        he, hi = explicit(x, he), implicit(x, hi)
    assert he.abs().max() > 1e15 and hi.abs().max() < 1e-15


# --- adaptive stepping with embedded pairs ------------------------------------------------------

@pytest.mark.parametrize("name", ["dopri5", "bs3", "cash-karp", "tsit5"])
def test_adaptive_error_follows_the_tolerance(name, smooth_problem, monkeypatch):
    """The error falls with the tolerance, the work grows, and ``nfe`` is the field's calls: no state
    is evaluated twice — a retry reuses its rejected attempt's first stage, and a first-same-as-last
    pair (all but Cash–Karp here) its last accepted step's final stage, so each attempt costs one
    evaluation fewer than the pair's stages, and each token one more for its start."""
    module, x, h0, exact = smooth_problem
    calls = {"field": 0, "attempts": 0}
    module.register_forward_hook(lambda *_: calls.__setitem__("field", calls["field"] + 1))
    step_with_error = odernn.ExplicitScheme.step_with_error

    def counted(self, *args):
        calls["attempts"] += 1
        return step_with_error(self, *args)
    monkeypatch.setattr(odernn.ExplicitScheme, "step_with_error", counted)
    field = odernn.ModuleField(module, 4, 4)
    scheme = odernn.ExplicitScheme(butcher.get(name), embedded=True)
    errors, nfes = [], []
    with torch.no_grad():
        for tol in (1e-4, 1e-6, 1e-8, 1e-10):
            cell = odernn.ODECell(field, name, dt=1.0, rtol=tol, atol=tol)
            calls.update(field=0, attempts=0)
            errors.append((cell(x, h0) - exact).abs().max().item())
            nfes.append(cell.nfe)
            starts = cell.nfe - (scheme.evaluations - 1) * calls["attempts"]  # the evaluations at a step's start
            assert cell.nfe == calls["field"] and (starts == 1 if scheme.at_end is not None else
                                                   1 <= starts < calls["attempts"]), (tol, cell.nfe, calls)
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])) and errors[-1] < 1e-8
    assert all(n2 > n1 for n1, n2 in zip(nfes, nfes[1:]))


def test_a_pair_with_two_stages_at_the_start_evaluates_there_once_on_both_paths():
    """A user's pair whose first two stages are both ``f(y)``: one evaluation there, and ``nfe`` the
    field's calls, on the per-token path; the engine's count equal to it, as its outputs are."""
    from test_sequence import cell_loop
    pair = butcher.ButcherTableau([[0, 0, 0], [0, 0, 0], ["1/2", "1/2", 0]], ["1/4", "1/4", "1/2"],
                                  b_hat=["1/2", "1/2", 0])
    assert [row for _, row in odernn.ExplicitScheme(pair, embedded=True).program][:2] == [(), ()]
    for spec in ("rnn", "lstm"):
        torch.manual_seed(0)
        cell = odernn.ODECell(odernn.cell(spec + ":euler", 3, 4).field.double(), pair, rtol=1e-3, atol=1e-5)
        x = torch.randn(5, 2, 3, dtype=torch.float64)
        blocks = tuple(torch.zeros(2, 4, dtype=torch.float64) for _ in range(cell.t))
        engine, _ = odernn._engine.run_sequence(cell, x, blocks, 1.0)
        nfe = cell.nfe  # the last token's
        _, before = cell_loop(cell, x[:4], None)
        calls = [0]
        hook = cell.field.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        try:
            cell(x[4], cell.field.from_blocks(before))
        finally:
            hook.remove()
        reference, _ = cell_loop(cell, x, None)
        assert (engine - reference).abs().max() < 1e-12, spec
        assert nfe == cell.nfe == calls[0], (spec, nfe, cell.nfe, calls)


def test_a_cell_pickled_before_its_scheme_derived_its_shared_stages_still_runs():
    """``ExplicitScheme.at_start``/``at_end`` (the stages an error-controlled loop shares) are derived
    on unpickling a scheme saved without them."""
    import pickle
    torch.manual_seed(0)
    for spec in ("gru-ode:dopri5:rtol=1e-5", "gru-ode:rk4"):
        rnn = odernn.ODERNN(spec, 3, 4, dtype=torch.float64)
        x = torch.randn(4, 2, 3, dtype=torch.float64)
        expected = rnn(x)[0]
        scheme = rnn.cells[0].scheme
        scheme = getattr(scheme, "scheme", scheme)
        del scheme.at_start, scheme.at_end  # as a pickle from before they existed holds it
        assert torch.equal(pickle.loads(pickle.dumps(rnn))(x)[0], expected), spec


def test_adaptive_gradcheck_and_reproducibility():
    torch.manual_seed(10)
    cell = odernn.cell("gru-ode:dopri5:rtol=1e-10:atol=1e-12:dt=2", 2, 3)
    x, h = torch.randn(2, 2, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    # the step sizes are chosen, not differentiated: the gradient misses only O(tolerance)
    assert torch.autograd.gradcheck(lambda a, b: cell(a, b), (x, h), atol=1e-6)
    assert torch.equal(cell(x, h), cell(x, h))


def test_adaptive_step_size_underflow_is_a_clear_error():
    blow_up = odernn.ModuleField(lambda h, x: h * h, 1, 1)  # h' = h², h(0) = 1: singular at τ = 1
    cell = odernn.ODECell(blow_up, "dopri5", dt=2.0, rtol=1e-6, atol=1e-9)
    with pytest.raises(odernn.StepSizeUnderflow, match=r"at τ = 0\.99|NaN|underflow"):
        cell(torch.zeros(1, 1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="no embedded weights"):
        odernn.cell("gru-ode:rk4:rtol=1e-3", 2, 3)


# --- torchdiffeq interop ----------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in EXPLICIT if butcher.get(n).stages <= 13])
def test_torchdiffeq_runs_the_same_tableau_to_the_same_states(name):
    torch.manual_seed(11)
    cell = odernn.cell(f"lstm:{name}:steps=4:partitioned=false", 3, 4)
    x, state = torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 4))
    ode = odernn.TokenODE(cell.field, x)
    y = torchdiffeq.odeint(ode, ode.pack(state), torch.tensor([0.0, 1.0]), method=odernn.torchdiffeq_method(name),
                           options=dict(step_size=0.25))[-1]
    assert (ode.pack(cell(x, state)) - y).abs().max() <= 1e-13


def test_torchdiffeq_adaptive_pair_agrees_within_tolerance(smooth_problem):
    module, x, h0, exact = smooth_problem
    field = odernn.ModuleField(module, 4, 4)
    ode = odernn.TokenODE(field, x)
    with torch.no_grad():
        theirs = torchdiffeq.odeint(ode, h0, torch.tensor([0.0, 1.0]), method=odernn.torchdiffeq_method("dopri5", adaptive=True),
                                    rtol=1e-9, atol=1e-9)[-1]
        ours = odernn.ODECell(field, "dopri5", rtol=1e-9, atol=1e-9)(x, h0)
    assert (theirs - exact).abs().max() < 1e-7 and (ours - exact).abs().max() < 1e-7
    with pytest.raises(ValueError, match="no adaptive solver"):
        odernn.torchdiffeq_method("rk4", adaptive=True)


def test_odeint_adjoint_gradient_matches_backpropagation_through_the_cell():
    torch.manual_seed(12)
    cell = odernn.cell("gru-ode:rk4:steps=32", 3, 4)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    target = torch.randn(2, 4)
    params = list(cell.parameters())
    loss = (cell(x, h) - target).square().sum()
    backprop = torch.autograd.grad(loss, params)
    ode = odernn.TokenODE(cell.field, x)
    y = torchdiffeq.odeint_adjoint(ode, h, torch.tensor([0.0, 1.0]), method=odernn.torchdiffeq_method("rk4"),
                                   options=dict(step_size=1 / 32), adjoint_params=params)[-1]
    adjoint = torch.autograd.grad((y - target).square().sum(), params)
    for a, b in zip(adjoint, backprop):  # continuous vs discrete adjoint: equal up to O(h⁴)
        assert (a - b).abs().max() <= 1e-6 * (1 + b.abs().max())


def test_evolution_between_observations_is_a_semigroup():
    torch.manual_seed(13)
    cell = odernn.cell("gru-ode:rk4:steps=64", 3, 4)
    h = torch.randn(3, 4)
    gaps = torch.tensor([0.3, 1.1, 2.0])
    once = cell.evolve(h, dt=gaps)
    twice = cell.evolve(cell.evolve(h, dt=gaps / 2), dt=gaps / 2)
    assert (once - twice).abs().max() < 1e-8  # both integrate the same autonomous flow
    # with zero input the GRU-ODE field only feels its biases: x = 0 is the same as evolve
    assert torch.equal(once, cell(torch.zeros(3, 3), h, dt=gaps))


def test_cells_take_the_shapes_nn_grucell_takes_and_say_what_is_wrong():
    torch.manual_seed(11)
    gru = nn.GRUCell(3, 4)
    cell = odernn.from_torch(gru)
    x, h = torch.randn(3), torch.randn(4)
    assert cell(x, h).shape == (4,) and (cell(x, h) - gru(x, h)).abs().max() <= 1e-6  # unbatched
    assert cell(x).shape == (4,)
    lstm = odernn.cell("lstm", 3, 4)
    assert [b.shape for b in lstm(x, (h, h))] == [(4,), (4,)]
    for call, message in [
        (lambda: cell(torch.randn(5, 2, 3)), r"goes to odernn.ODERNN"),
        (lambda: cell(torch.randn(2, 3), torch.randn(3, 4)), r"shape \(2, 4\)"),
        (lambda: cell(torch.randn(2, 3), torch.randn(4)), r"shape \(2, 4\)"),
        (lambda: lstm(torch.randn(2, 3), torch.randn(2, 4)), r"tuple of 2 tensors"),
        (lambda: cell(torch.randn(2, 5)), r"input_size=3"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


def test_gru_is_not_read_as_a_field_silently():
    with pytest.raises(odernn.CellSpecError, match="gru-ode.*torch-gru"):
        odernn.cell("gru:rk4", 3, 4)
