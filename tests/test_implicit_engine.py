"""Implicit tableaux (``odernn/_implicit.py``) and adaptive ones (``AdaptiveTokenProgram``) in the
sequence engine against the per-token cell they replace: outputs and every gradient in float64 at
a tight Newton tolerance, ``gradcheck``, the structured Jacobian against autograd's, and the
refusals the per-token path makes."""

import pytest
import torch

import butcher
import odernn
from odernn._engine import in_engine
from odernn._implicit import (FieldLinearisation, ImplicitTokenProgram, gmres, newton_plan, stage_structure,
                              structured_jacobian)
from test_sequence import cell_loop

TIGHT = ":tol=1e-14"

# every decoupling (stage by stage with one diagonal, several, an explicit first stage; eigenvalue
# pairs with and without a real eigenvalue), on fields of one, two and three blocks
SPECS = ["gru-ode:backward-euler", "gru-ode:alexander2", "rnn:trapezoid:dt=0.5", "lstm:kvaerno4",
         "gru-ode:gauss-2", "rnn:lobatto-iiia-3", "cornn:lobatto-iiic-3:dt=0.3", "lem:radau-iia-3",
         "unicornn:gauss-3:dt=0.2", "antisymmetric:sdirk4", "lipschitz:radau-iia-2", "urnn:backward-euler",
         "gru-ode:crouzeix3:order=3",
         # the matrix-free solves: Newton–Krylov forward, GMRES on the transposed systems backward
         "gru-ode:alexander2:newton=krylov", "lstm:radau-iia-3:newton=krylov", "cornn:kvaerno4:dt=0.3:newton=krylov",
         # adaptive: embedded pairs with error control, the accepted steps replayed backward
         "gru-ode:dopri5:rtol=1e-8:atol=1e-10", "lstm:bs3:rtol=1e-6:atol=1e-8", "cornn:tsit5:dt=0.5:rtol=1e-7",
         "rnn:cash-karp:dt=2:rtol=1e-5"]


def _reference_loop(cell, x, blocks, dt=None, lengths=None):
    """Autograd through the per-token cell (test_sequence's reference), from the state ``blocks``."""
    return cell_loop(cell, x, cell.field.from_blocks(blocks), dt, lengths)


def _problem(spec, seed=0, T=5, B=3, E=3, H=4):
    torch.manual_seed(seed)
    rnn = odernn.ODERNN(spec + ("" if "rtol" in spec else TIGHT), E, H, dtype=torch.float64)
    x = torch.randn(T, B, E, dtype=torch.float64, requires_grad=True)
    blocks = tuple((0.5 * torch.randn(B, H, dtype=torch.float64)).requires_grad_() for _ in range(rnn.cells[0].t))
    return rnn, x, blocks


def _gradients(outputs, inputs):
    out, final = outputs
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    loss = (weights * out).sum() + sum((b.square()).sum() for b in final)
    return [out.detach(), *(b.detach() for b in final),
            *torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)]


def _engine_run(rnn, x, blocks, **call):
    cell = rnn.cells[0]
    hx = cell.field.from_blocks(tuple(b[None] for b in blocks))
    out, h_n = rnn(x, hx, **call)
    return out, tuple(b[0] for b in cell.field.to_blocks(h_n))


@pytest.mark.parametrize("grad", ["backprop", "checkpoint"])
@pytest.mark.parametrize("spec", SPECS)
def test_the_engine_equals_the_per_token_cell_outputs_and_gradients(spec, grad):
    rnn, x, blocks = _problem(spec)
    rnn.grad = grad
    cell = rnn.cells[0]
    assert in_engine(cell), spec
    inputs = [x, *blocks, *rnn.parameters()]
    ours, nfe = _gradients(_engine_run(rnn, x, blocks), inputs), cell.nfe
    reference = _gradients(_reference_loop(cell, x, blocks), inputs)
    for a, b in zip(ours, reference):
        assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max()), spec
    if "rtol" in spec:  # adaptive: the same steps and the same evaluations, none repeated (test_cells)
        assert nfe == cell.nfe, (nfe, cell.nfe)


@pytest.mark.parametrize("spec, gain, H, batches", [
    ("rnn:alexander2:dt=4", 8, 32, 1),  # was 178 % off: a token's recompute reached another solution
    ("gru-ode:alexander2", 1, 16, 2), ("lstm:radau-iia-3:dt=2", 4, 16, 2),
    ("gru-ode:alexander2:newton=krylov", 1, 16, 2), ("gru-ode:dopri5:rtol=1e-3", 6, 16, 2), ("gru-ode:rk4", 1, 16, 2)])
def test_a_checkpointed_backward_solves_each_token_as_its_forward_did(spec, gain, H, batches):
    """``grad="checkpoint"`` solves each token again in the backward. It starts each from what the
    forward's solve of that token carried from the tokens before (an implicit step's kept
    factorisations) and records as the forward did, so it takes the forward's path to the
    forward's solution: outputs and gradients bit for bit those of ``grad="backprop"``, which keeps
    the forward's stages, batch after batch (a backward leaves the next forward unchanged). In
    float32 with strong recurrent weights, where the stage equations have more than one solution:
    the recompute used to start from the kept factorisations the backward had left, and record
    the stages the forward had not: its gradients differed from backprop's by up to the tolerance,
    and in the first case by 178 %, those of another trajectory."""
    runs = []
    for grad in ("backprop", "checkpoint"):
        torch.manual_seed(1)
        rnn = odernn.ODERNN(spec, 8, H, grad=grad)
        with torch.no_grad():
            rnn.weight_hh_l0.mul_(gain)
        seen = []
        for _ in range(batches):
            out, _ = rnn(torch.randn(6, 4, 8))
            rnn.zero_grad()
            out.square().sum().backward()
            seen += [out.detach(), *(p.grad.clone() for p in rnn.parameters())]
        runs.append(seen)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_gaps_per_token_and_lengths_equal_the_per_token_cell_dt_gradient_included():
    for spec in ("gru-ode:alexander2", "lstm:radau-iia-3"):
        rnn, x, blocks = _problem(spec, seed=1, T=6)
        gaps = (0.2 + torch.rand(6, 3, dtype=torch.float64)).requires_grad_()
        lengths = torch.tensor([6, 2, 4])
        inputs = [x, gaps, *blocks, *rnn.parameters()]
        ours = _gradients(_engine_run(rnn, x, blocks, dt=gaps, lengths=lengths), inputs)
        reference = _gradients(_reference_loop(rnn.cells[0], x, blocks, dt=gaps, lengths=lengths), inputs)
        for a, b in zip(ours, reference):
            assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max()), spec


@pytest.mark.parametrize("spec", ["gru-ode:backward-euler", "gru-ode:alexander2", "lstm:radau-iia-3"])
def test_gradients_are_as_accurate_relative_to_themselves_at_any_loss_scale(spec):
    """The backward's linear solves stop on an error relative to the adjoint itself: a loss scaled
    by 1e-9 (a mean over many tokens, say) gets gradients as accurate relative to their size as a
    loss of order one. A test against ``1 + max|x|``, as the forward's stage solves use, would stop
    at once on adjoints of size 1e-9, about 1e-5 of them off."""
    rnn, x, blocks = _problem(spec, T=4)
    inputs = [x, *blocks, *rnn.parameters()]

    def grads(outputs):
        out, final = outputs
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        return torch.autograd.grad(1e-9 * ((weights * out).sum() + sum(b.square().sum() for b in final)), inputs,
                                   allow_unused=True, materialize_grads=True)
    ours = grads(_engine_run(rnn, x, blocks))
    reference = grads(_reference_loop(rnn.cells[0], x, blocks))
    for a, b in zip(ours, reference):
        assert (a - b).abs().max() <= 1e-8 * b.abs().max(), spec


@pytest.mark.parametrize("spec", ["gru-ode:alexander2", "rnn:gauss-2", "cornn:radau-iia-3:dt=0.5"])
def test_gradcheck(spec):
    rnn, x, blocks = _problem(spec, T=3, B=2, E=2, H=3)
    parameters = list(rnn.parameters())

    def run(x, *tensors):
        state, weights = tensors[:len(blocks)], tensors[len(blocks):]
        out, final = torch.func.functional_call(rnn, {name: w for (name, _), w in zip(rnn.named_parameters(), weights)},
                                                (x, rnn.cells[0].field.from_blocks(tuple(b[None] for b in state))))
        return out
    assert torch.autograd.gradcheck(run, (x, *blocks, *parameters), atol=1e-7)


FIELDS = ["gru-ode", "rnn", "lstm", "cornn", "lem", "unicornn", "antisymmetric", "lipschitz", "urnn",
          "gru-ode:rk4:order=3"]


@pytest.mark.parametrize("spec", FIELDS)
def test_the_structured_jacobian_equals_autograds(spec):
    """The fields' contract the implicit engine relies on: unit j of f reads only unit j of pre
    and of the state blocks (else this Jacobian would miss entries)."""
    torch.manual_seed(3)
    cell = odernn.cell(spec, 3, 5).double()
    field = cell.field
    B = 4
    x = torch.randn(B, 3, dtype=torch.float64)
    Y = tuple(torch.randn(B, 5, dtype=torch.float64) for _ in range(field.blocks))
    context = field.project(x)
    W, b = field.recurrent()
    y_in = field.recurrent_input(Y)
    act = field.activate(context, field.preactivation(context, y_in, W, b))
    ours = structured_jacobian(field, act, Y, W)
    reference = cell.jacobian(x, field.from_blocks(Y))
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() <= 1e-12
    linear = FieldLinearisation(field, act, Y, W)  # matrix-free: one product with W each way
    v = torch.randn(B, reference.shape[-1], dtype=torch.float64)
    assert (linear.jvp(v) - (reference @ v[..., None])[..., 0]).abs().max() <= 1e-12
    assert (linear.vjp(v) - (reference.transpose(1, 2) @ v[..., None])[..., 0]).abs().max() <= 1e-12
    base = torch.randn_like(v)
    assert (linear.scaled(0.3).vjp(v, base) - base - 0.3 * linear.vjp(v)).abs().max() <= 1e-12
    # the whole pullback of ⟨v, f⟩ from the diagonals: the state's, the input projection's (the
    # context, whose unit j also reaches only unit j of f) and the recurrent weights' gradients
    leaves = [t.detach().requires_grad_() for t in (context, *Y, W, *(() if b is None else (b,)))]
    Yg = tuple(leaves[1:1 + len(Y)])
    f = field.derivative(field.activate(leaves[0], field.preactivation(
        leaves[0], field.recurrent_input(Yg), leaves[1 + len(Y)], None if b is None else leaves[-1])), Yg,
        tuple(range(field.blocks)))
    expected = torch.autograd.grad(torch.cat(f, dim=-1), leaves, v, allow_unused=True, materialize_grads=True)

    class Gathered:
        def add(self, g_pre, y_in):
            self.W, self.b = g_pre.T @ y_in, g_pre.sum(dim=0)
    weights = Gathered()
    mu, g_context = linear.pullback(v, y_in, weights)
    assert (mu - torch.cat(expected[1:1 + len(Y)], dim=-1)).abs().max() <= 1e-12
    assert (g_context - expected[0]).abs().max() <= 1e-12
    assert (weights.W - expected[1 + len(Y)]).abs().max() <= 1e-12
    if b is not None:
        assert (weights.b - expected[-1]).abs().max() <= 1e-12


def test_every_implicit_catalogue_tableau_runs_in_the_engine_and_a_defective_one_does_not(catalogue):
    """Lower-triangular A stage by stage; any other implicit A through well-conditioned eigenvectors
    (Lobatto IIIA/IIIB included: their singular A has distinct eigenvalues); an A with a Jordan
    block decouples neither way and runs token by token."""
    for name, tableau in catalogue.items():
        if tableau.is_explicit:
            continue
        lower = all(tableau.A[i, j] == 0 for i in range(tableau.stages) for j in range(i + 1, tableau.stages))
        assert stage_structure(tableau) == ("lower" if lower else "eigen"), name
    defective = butcher.ButcherTableau([[1, 1], [0, 1]], [1, 0], name="jordan")
    assert stage_structure(defective) is None
    field = odernn.cell("gru-ode", 2, 3).field
    assert not in_engine(odernn.ODECell(field, defective))


_INIT = ImplicitTokenProgram.__init__


def _programs(monkeypatch, **options):
    """Every ImplicitTokenProgram the layer makes from now on, built with ``options``."""
    made, original = [], _INIT

    def record(self, cell, shared=True, solver=None):
        original(self, cell, options.get("shared", shared), options.get("solver", solver))
        made.append(self)
    monkeypatch.setattr(ImplicitTokenProgram, "__init__", record)
    return made


def _solves(monkeypatch, owner, name: str, method: bool) -> list[dict]:
    """Every solve ``owner.name(…, system, K, …)`` starts from now on (a method of the engine's
    program, or ``odernn._newton.newton_with_fallbacks`` as the per-token cell or the engine calls it): its
    ``system``, its first ``guess`` and, once it returns, its ``solution``."""
    solves, original = [], getattr(owner, name)

    def kept(*args, **kwargs):
        system, K = args[method:method + 2]
        solves.append({"system": system, "guess": K})
        solved = original(*args, **kwargs)
        solves[-1]["solution"] = solved[0]
        return solved
    monkeypatch.setattr(owner, name, kept)
    return solves


def _newton_krylov_solves(monkeypatch) -> list[dict]:
    """The engine's Newton–Krylov solves (see :func:`_solves`)."""
    return _solves(monkeypatch, ImplicitTokenProgram, "_newton_krylov", method=True)


def _per_token_newton_solves(monkeypatch) -> list[dict]:
    """The stage solves the per-token cell hands to Newton's method (see :func:`_solves`)."""
    return _solves(monkeypatch, odernn._stepping, "newton_with_fallbacks", method=False)


def test_one_factorisation_serves_the_batch_while_it_contracts_and_per_sample_ones_where_it_does_not(monkeypatch):
    """Alike states: one batch-shared matrix, made at the first token and kept, solves every token;
    gaps that turn large and inputs that turn diverse half-way make it stop contracting, and later
    steps build it afresh; a stiff, diverse batch needs per-sample factorisations. Either way the
    states and every gradient are those of per-sample factorisations alone, to the tolerance."""
    torch.manual_seed(4)
    rnn = odernn.ODERNN("gru-ode:alexander2" + TIGHT, 2, 6, dtype=torch.float64)
    gentle_then_stiff = torch.cat([torch.full((6, 5), 0.5), torch.full((6, 5), 5.0)]).double()
    cases = {"alike": (1.0, 0.1 * torch.ones(12, 1, 1)), "turns stiff": (gentle_then_stiff, torch.cat(
        [0.1 * torch.ones(6, 1, 1), 4 * torch.ones(6, 1, 1)])), "stiff": (5.0, 4 * torch.ones(12, 1, 1))}
    for case, (dt, scale) in cases.items():
        x = (scale.double() * torch.randn(12, 5, 2, dtype=torch.float64)).requires_grad_()
        results, made = [], []
        for shared in (True, False):
            programs = _programs(monkeypatch, shared=shared)
            out = rnn(x, dt=dt)[0] if isinstance(dt, torch.Tensor) else (setattr(rnn.cells[0], "dt", dt), rnn(x)[0])[1]
            results.append([out.detach(), *torch.autograd.grad(out.square().sum(), [x, *rnn.parameters()])])
            made.append(programs[-1].made)
            monkeypatch.undo()
        for a, b in zip(*results):
            assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max()), case
        assert made[1] == {"shared": 0, "kept": 0, "samples": 12}  # one per step: the SDIRK's stages share it
        if case == "alike":
            assert made[0] == {"shared": 1, "kept": 11, "samples": 0}
        elif case == "turns stiff":
            assert made[0]["kept"] >= 5 and made[0]["shared"] >= 2, made[0]
        else:
            assert made[0]["samples"] > 0


def test_auto_follows_the_shared_factorisation_with_newton_krylov_on_wide_states(monkeypatch):
    """From D = 150 on, where the shared factorisation does not converge (here: made to give up at
    once), ``auto`` solves matrix-free (and the backward by GMRES), equal to the dense path's
    per-sample factorisations."""
    assert newton_plan(odernn.cell("gru-ode:alexander2", 3, 160)) == (("shared",), True)
    monkeypatch.setattr(odernn._implicit, "_SLOW_RATE", 1e-9)
    torch.manual_seed(6)
    rnn = odernn.ODERNN("gru-ode:alexander2" + TIGHT, 3, 160, dtype=torch.float64)
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    solves = _newton_krylov_solves(monkeypatch)
    results = []
    for solver in ("auto", "dense"):
        _programs(monkeypatch, solver=solver)
        out = rnn(x)[0]
        results.append([out.detach(), *torch.autograd.grad(out.square().sum(), [x, *rnn.parameters()])])
    assert len(solves) == 2 * 3  # both stages of each token, with auto only
    for a, b in zip(*results):
        assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max())


@pytest.mark.parametrize("spec, gain, scale", [("rnn:alexander2:dt=2", 6, 1), ("gru-ode:alexander2:dt=4", 4, 1),
                                               ("lstm:alexander2:dt=4", 6, 1), ("rnn:radau-iia-3:dt=2", 4, 1)])
def test_where_the_chord_iteration_cannot_converge_in_its_budget_newton_krylov_solves_the_step(spec, gain, scale,
                                                                                              monkeypatch):
    """Strong recurrent weights and a long step: the state moves far within the step, so the chord
    iteration with ``J₀`` at the step's start contracts slowly. In its default budget of 50
    iterations the per-token cell's chord iteration does not get there (it does in 5,000), and the
    cell hands over to Newton's method (Jacobians at the iterate, LU); the engine's dense plan hands
    such stages to Newton–Krylov. All three give the same outputs and gradients."""
    torch.manual_seed(0)
    rnn = odernn.ODERNN(spec + TIGHT, 3, 4, dtype=torch.float64)
    assert newton_plan(rnn.cells[0]) == (("shared", "samples"), True)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(gain)
    x = (scale * torch.randn(4, 3, 3, dtype=torch.float64)).requires_grad_()
    blocks = tuple(torch.zeros(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(rnn.cells[0].t))
    solves = _newton_krylov_solves(monkeypatch)
    inputs = [x, *blocks, *rnn.parameters()]
    ours = _gradients(_engine_run(rnn, x, blocks), inputs)
    assert solves
    cell = rnn.cells[0]
    newton = _per_token_newton_solves(monkeypatch)
    by_newton = _gradients(_reference_loop(cell, x, blocks), inputs)
    assert newton
    monkeypatch.setattr(odernn._stepping, "newton_with_fallbacks", _refused)
    with pytest.raises(AssertionError, match="the chord iteration was to converge"):
        _reference_loop(cell, x, blocks)
    cell.scheme.max_iterations = 5000
    by_chord = _gradients(_reference_loop(cell, x, blocks), inputs)
    for a, b, c in zip(ours, by_newton, by_chord):
        assert (a - c).abs().max() <= 1e-10 * (1 + c.abs().max()), spec
        assert (b - c).abs().max() <= 1e-10 * (1 + c.abs().max()), spec


def _refused(*args, **kwargs):
    raise AssertionError("the chord iteration was to converge")


def test_newton_krylov_tries_again_with_a_line_search_where_plain_newton_does_not_converge():
    """``arctan(K) = 0`` from ``K = ±2, 3, 10``: Newton's full steps overshoot and |K| grows without
    bound (the classic divergence); the second try from the same start, each row's step halved until
    its residual falls, converges to 0. A row that plain Newton solves (0.5) is solved either way."""
    program = ImplicitTokenProgram(odernn.cell("gru-ode:alexander2:tol=1e-12", 1, 4))
    K0 = torch.tensor([[2.0], [-2.0], [3.0], [10.0], [0.5]], dtype=torch.float64)

    def system(K):  # F(K) = K − arctan(K): residual F − K, and (I − ∂F/∂K) v = v / (1 + K²)
        return -torch.atan(K), lambda v, K=K: v / (1 + K.square())
    gmres_update = lambda apply, G: gmres(apply, G, 1e-6, 1)[0]  # noqa: E731 (1 × 1 systems)
    solved, count, _ = odernn._newton.newton(system, K0, 1e-12, 50, gmres_update, 1e-6)
    assert solved is None  # plain Newton diverges
    K, evaluations = program._newton_krylov(system, K0, 1e-12)
    assert K.abs().max() <= 1e-12 and evaluations > count
    plain, _, _ = odernn._newton.newton(system, K0[4:], 1e-12, 50, gmres_update, 1e-6)
    assert plain.abs().max() <= 1e-12


@pytest.mark.parametrize("spec, dt, gain, scale, tokens, without", [
    # the tokens up to the one that needs the try (measured: the line search at token 3 of the
    # first, continuation at token 0 of the second and at token 1 of the third)
    ("rnn:alexander2", 4, 8, 1, 4, {"HALVINGS": 0, "CONTINUATION": (1.0,)}),  # the line search solves it
    ("rnn:alexander2", 4, 16, 1, 1, {"CONTINUATION": (1.0,)}),  # continuation in the step solves it
    ("rnn:radau-iia-3", 8, 8, 3, 2, {"CONTINUATION": (1.0,)}),  # a coupled tableau: continuation solves it
])
@pytest.mark.slow
def test_newton_krylov_solves_stages_plain_newton_cannot(spec, dt, gain, scale, tokens, without, monkeypatch):
    """Strong recurrent weights and long steps: plain Newton–Krylov wanders for its whole budget on
    some token (as on the study's trained SDIRK GRU-ODEs, docs/results.md §9), and so does the
    per-token cell's chord iteration. Without the try that solves it the layer raises; with it,
    every stage equation holds to 1e-10 at the solution, the gradient along a random direction
    is the central difference's, and the per-token cell (whose Newton's method takes the same
    tries, its linear systems by LU) gives the same outputs."""
    torch.manual_seed(0)
    rnn = odernn.ODERNN(f"{spec}:newton=krylov:dt={dt}:tol=1e-12", 3, 4, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(gain)
    x = (scale * torch.randn(4, 3, 3, dtype=torch.float64))[:tokens].clone()
    for name, value in without.items():
        monkeypatch.setattr(odernn._newton, name, value)
    monkeypatch.setattr(odernn._implicit, "NEWTON_UPDATES", ("gmres",))  # the updates by LU: the next test
    with pytest.raises(odernn.ImplicitSolveError, match="with or without a line search"):
        rnn(x)
    monkeypatch.undo()
    solves = _newton_krylov_solves(monkeypatch)
    out = rnn(x.requires_grad_())[0]
    for solve in solves:
        K = solve["solution"]
        assert solve["system"](K)[0].abs().max() <= 1e-10 * (1 + K.abs().max())
    assert solves
    weights, direction, eps = torch.randn_like(out), torch.randn_like(x), 1e-6
    (grad,) = torch.autograd.grad((weights * out).sum(), x)
    with torch.no_grad():
        ahead, behind = (weights * rnn(x + eps * direction)[0]).sum(), (weights * rnn(x - eps * direction)[0]).sum()
        difference = (ahead - behind) / (2 * eps)
    assert abs(float((grad * direction).sum()) - float(difference)) <= 1e-6 * (1 + abs(float(difference)))
    cell = rnn.cells[0]
    zero = tuple(torch.zeros(3, 4, dtype=torch.float64) for _ in range(cell.t))
    newton = _per_token_newton_solves(monkeypatch)
    with torch.no_grad():
        reference = _reference_loop(cell, x.detach(), zero)[0]
    assert newton and (out.detach() - reference).abs().max() <= 1e-10 * (1 + reference.abs().max())


@pytest.mark.parametrize("grad", ["backprop", "checkpoint"])
@pytest.mark.parametrize("spec, refused_from", [("gru-ode:alexander2:newton=krylov", 0),
                                                ("gru-ode:alexander2:newton=krylov", 1),
                                                ("lstm:kvaerno4:newton=krylov", 0),
                                                ("cornn:sdirk4:dt=0.3:newton=krylov", 2)])
def test_a_step_solved_all_stages_at_once_equals_the_per_token_cell(spec, refused_from, grad, monkeypatch):
    """The lower-triangular step's last resort, every stage at once (``_whole_step``), taken at
    every step of every token here (the stage-by-stage solve made to fail at its first implicit
    stage, or at a later one, after the earlier stages were solved and recorded): the outputs and
    every gradient, whose backward then solves matrix-free, are the per-token cell's to the
    tolerance, on SDIRK, ESDIRK (an explicit first stage) and a two-block field, in both memory
    modes (the checkpointed one solves each step again in its backward)."""
    step, solve_stages, solved = ImplicitTokenProgram._step, ImplicitTokenProgram._solve_stages, [0]

    def counted(self, *args, **kwargs):  # each step counts its implicit stages afresh
        solved[0] = 0
        return step(self, *args, **kwargs)

    def refused(self, *args, **kwargs):  # the step's implicit stages from number refused_from on
        if solved[0] >= refused_from:
            raise odernn.ImplicitSolveError("stage by stage: refused by the test")
        solved[0] += 1
        return solve_stages(self, *args, **kwargs)
    wholes = _solves(monkeypatch, ImplicitTokenProgram, "_whole_step", method=True)
    monkeypatch.setattr(ImplicitTokenProgram, "_step", counted)
    monkeypatch.setattr(ImplicitTokenProgram, "_solve_stages", refused)
    rnn, x, blocks = _problem(spec)
    rnn.grad = grad
    inputs = [x, *blocks, *rnn.parameters()]
    ours = _gradients(_engine_run(rnn, x, blocks), inputs)
    assert len(wholes) == x.shape[0] * (2 if grad == "checkpoint" else 1)
    reference = _gradients(_reference_loop(rnn.cells[0], x, blocks), inputs)
    for a, b in zip(ours, reference):
        assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max()), spec
    monkeypatch.setattr(odernn._implicit, "WHOLE_STEP", False)
    with pytest.raises(odernn.ImplicitSolveError, match="refused by the test"):
        _engine_run(rnn, x, blocks)


def test_where_one_stages_equations_fold_the_whole_step_is_continued(monkeypatch):
    """Strong recurrent weights and a long step (one of 6 such layers a search over 270 small ones
    found; its second token): a stage's equations alone, continued in its own ``h·a_ii`` from its
    base, are not solved by any try (as at two of the seeds study's SDIRK stops, where that
    continuation folds: docs/results.md §9); the whole step, continued from the explicit limit, is.
    Every stage equation then holds, and the outputs are the per-token cell's (whose continuation
    is in the whole step)."""
    torch.manual_seed(1)
    rnn = odernn.ODERNN("gru-ode:alexander2:newton=krylov:dt=4:tol=1e-12", 3, 4, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(16)
    x = (3 * torch.randn(4, 3, 3, dtype=torch.float64))[:2]
    monkeypatch.setattr(odernn._implicit, "WHOLE_STEP", False)
    with pytest.raises(odernn.ImplicitSolveError, match="with or without a line search"):
        rnn(x)
    monkeypatch.undo()
    whole_step, spent = ImplicitTokenProgram._whole_step, []

    def counted(self, *args):  # the evaluations the step had taken when it turned to the whole step
        spent.append(args[-1])
        return whole_step(self, *args)
    monkeypatch.setattr(ImplicitTokenProgram, "_whole_step", counted)
    wholes = _solves(monkeypatch, ImplicitTokenProgram, "_newton_krylov", method=True)
    with torch.no_grad():
        out = rnn(x)[0]
    assert spent and min(spent) >= rnn.cells[0].scheme.max_iterations  # the failed tries' count kept
    stacked = [solve for solve in wholes if solve["guess"].shape[-1] > 4]  # the whole step's (B, s·D)
    assert stacked
    for solve in stacked:
        K = solve["solution"]
        assert solve["system"](K)[0].abs().max() <= 1e-10 * (1 + K.abs().max())
    cell = rnn.cells[0]
    zero = tuple(torch.zeros(3, 4, dtype=torch.float64) for _ in range(cell.t))
    with torch.no_grad():
        reference = _reference_loop(cell, x, zero)[0]
    assert (out - reference).abs().max() <= 1e-10 * (1 + reference.abs().max())


def test_where_gmres_updates_cannot_converge_newton_tries_again_with_lu_solved_updates(monkeypatch):
    """GMRES held to one iteration per update (a Krylov space too small for the system, as 60
    iterations were for 257 units at the seeds study's SDIRK stop, docs/results.md §9): in a budget
    of 6 iterations Newton with such updates does not reach 1e-14, with or without its fallbacks;
    the same tries with each update by LU of the assembled operator do (Newton's quadratic
    convergence). The outputs and every gradient are the per-token cell's (whose Newton's method
    solves by LU)."""
    monkeypatch.setattr(odernn._implicit, "_KRYLOV_ITERATIONS", 1)
    solves = _solves(monkeypatch, odernn._implicit, "newton_with_fallbacks", method=False)  # each way's tries
    rnn, x, blocks = _problem("gru-ode:alexander2:newton=krylov")
    rnn.cells[0].scheme.max_iterations = 6
    inputs = [x, *blocks, *rnn.parameters()]
    ours = _gradients(_engine_run(rnn, x, blocks), inputs)
    tries = [solve["solution"] is not None for solve in solves]
    assert tries.count(False) >= 1 and tries[tries.index(False) + 1], tries  # GMRES's tries failed, LU's solved
    reference = _gradients(_reference_loop(rnn.cells[0], x, blocks), inputs)
    for a, b in zip(ours, reference):
        assert (a - b).abs().max() <= 1e-10 * (1 + b.abs().max())
    rnn.cells[0].scheme.max_iterations = 1  # and where LU's updates cannot converge either, the error says both
    with pytest.raises(odernn.ImplicitSolveError, match="their linear systems solved by GMRES or by LU"):
        _engine_run(rnn, x, blocks)
    # where the batch's matrices would pass the memory cap, no LU updates: the error says so
    monkeypatch.setattr(odernn._implicit, "_LU_ELEMENTS", 3 * 4 * 4 - 1)  # B·N² = 3·4² here
    with pytest.raises(odernn.ImplicitSolveError, match=r"their linear systems solved by GMRES \(relative"):
        _engine_run(rnn, x, blocks)


def test_newton_krylovs_jacobian_product_is_the_residuals_derivative(monkeypatch):
    """For stage-by-stage and coupled tableaux, ``apply`` is ``−∂G/∂K`` of the residual
    ``G(K) = F(K) − K`` (autograd's, at an iterate away from the solution): stage ``i`` of a coupled
    system has ``h J(Y_i) Σ_j a_ij v_j``, the Jacobian at its own value (it once had ``J(Y_j)``: Newton
    then converged at most linearly)."""
    solves = _newton_krylov_solves(monkeypatch)
    for spec in ("gru-ode:alexander2", "lstm:radau-iia-3", "gru-ode:gauss-2", "cornn:kvaerno4:dt=0.3"):
        rnn, x, blocks = _problem(spec + ":newton=krylov")
        with torch.no_grad():
            _engine_run(rnn, x.detach(), tuple(b.detach() for b in blocks))
        system, K = solves[-1]["system"], solves[-1]["guess"]
        K = K + 0.1 * torch.randn_like(K)
        v = torch.randn_like(K)
        _, apply = system(K)
        _, derivative = torch.autograd.functional.jvp(lambda k: system(k)[0], K, v)
        assert (apply(v) + derivative).abs().max() <= 1e-10 * (1 + derivative.abs().max()), spec


def test_second_derivatives_are_refused_and_torch_func_takes_the_per_token_cell():
    rnn, x, blocks = _problem("gru-ode:radau-iia-3", T=3)
    out, _ = _engine_run(rnn, x, blocks)
    (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    with pytest.raises(odernn.ImplicitSolveError, match="second derivatives"):
        torch.autograd.grad(g.sum(), rnn.weight_hh_l0)
    # torch.func.grad through the layer equals autograd through the engine
    hx = rnn.cells[0].field.from_blocks(tuple(b[None].detach() for b in blocks))
    xd = x.detach()
    by_func = torch.func.grad(lambda v: rnn(v, hx)[0].square().sum())(xd)
    (by_engine,) = torch.autograd.grad(rnn(xd.requires_grad_(), hx)[0].square().sum(), xd)
    assert (by_func - by_engine).abs().max() <= 1e-10


def test_a_stage_system_that_does_not_converge_raises_the_per_token_cells_error(monkeypatch):
    """Every solver of the plan held to one iteration (the shared and per-sample chords, then
    Newton–Krylov) cannot reach 1e-14: the error names the tolerance, as the per-token cell's does."""
    monkeypatch.setattr(odernn._implicit, "_SHARED_ITERATIONS", 1)
    rnn = odernn.ODERNN("gru-ode:gauss-2" + TIGHT, 3, 4, dtype=torch.float64)
    rnn.cells[0].scheme.max_iterations = 1
    said = r"in 1 Newton iterations, with or without a line search .*tolerance 1\.0e-14"
    with pytest.raises(odernn.ImplicitSolveError, match=said):
        rnn(torch.randn(2, 1, 3, dtype=torch.float64))


def test_batched_gmres_solves_each_row_to_its_tolerance():
    torch.manual_seed(5)
    M = torch.eye(30, dtype=torch.float64) + 0.3 * torch.randn(6, 30, 30, dtype=torch.float64)
    rhs = torch.randn(6, 30, dtype=torch.float64)
    rhs[2] = 0  # a row already solved
    x, residual = gmres(lambda v: (M @ v[..., None])[..., 0], rhs, 1e-12, 30)
    assert residual <= 1e-12
    assert (x - torch.linalg.solve(M, rhs)).abs().max() <= 1e-10


def test_newton_option_chooses_the_linear_solves_and_refuses_what_it_cannot_mean():
    dense, wide = (("shared", "samples"), True), (("shared",), True)
    assert newton_plan(odernn.cell("gru-ode:alexander2", 3, 64)) == dense
    assert newton_plan(odernn.cell("gru-ode:alexander2", 3, 256)) == wide  # auto: from D = 150 on
    assert newton_plan(odernn.cell("lstm:alexander2", 3, 80)) == wide  # D = 2 × 80
    assert newton_plan(odernn.cell("gru-ode:alexander2:newton=dense", 3, 256)) == dense
    assert newton_plan(odernn.cell("gru-ode:alexander2:newton=krylov", 3, 8)) == ((), True)
    with pytest.raises(odernn.CellSpecError, match="rk4 is explicit"):
        odernn.cell("gru-ode:rk4:newton=krylov", 3, 4)
    with pytest.raises(odernn.CellSpecError, match="one of auto, dense, krylov"):
        odernn.cell("gru-ode:alexander2:newton=fast", 3, 4)
