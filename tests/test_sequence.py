"""``odernn.ODERNN``: the sequence engine and its generated backward pass against autograd through
the per-token cell, the torch.nn sequence modules it equals, irregular gaps and variable lengths,
and the discrete adjoint's coefficients from ``butcher``."""

from copy import deepcopy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import butcher
import odernn

FIELDS = ["rnn", "gru-ode", "lstm", "antisymmetric:eps=0.5", "cornn:dt=0.3", "urnn", "lipschitz:dt=0.3", "lem:dt=0.5",
          "unicornn:dt=0.2:alpha=2", "rnn:dt=0.3:order=3:damping=0.2"]
TABLEAUX = ["rk4:steps=2", "dopri5", "ralston3", "ssprk3", "USER"]  # dopri5: its 5th-order weights, fixed steps


pytestmark = pytest.mark.usefixtures("float64")  # comparisons to round-off (tests/conftest.py)


@pytest.fixture(scope="module")
def user_tableau(tmp_path_factory):
    """A user's own file: Kutta's third-order method with a redundant fourth stage that the update
    never reads (the program must skip it)."""
    path = tmp_path_factory.mktemp("tableaux") / "kutta3-padded.toml"
    path.write_text('name = "kutta3-padded"\nA = [["0","0","0","0"], ["1/2","0","0","0"], ["-1","2","0","0"], '
                    '["1","1","1","0"]]\nb = ["1/6", "2/3", "1/6", "0"]\n')
    return path


def _spec(field: str, tableau: str, user_tableau) -> str:
    name, *options = field.split(":")
    tableau = str(user_tableau) if tableau == "USER" else tableau
    return ":".join([name, tableau, *options])


def cell_loop(cell, x, state, dt=None, lengths=None):
    """The reference: autograd through the per-token cell, each sequence stopping at its length."""
    field = cell.field
    if state is None:
        state = field.initial_state(x.shape[1], x.dtype, x.device)
    blocks = field.to_blocks(state)
    outputs = []
    for t in range(x.shape[0]):
        gap = dt if dt is None or isinstance(dt, float) else dt[t]
        new = field.to_blocks(cell(x[t], field.from_blocks(blocks), dt=gap))
        if lengths is not None:
            alive = (t < lengths)[:, None]
            new = tuple(torch.where(alive, a, b) for a, b in zip(new, blocks))
        blocks = new
        out = blocks[field.output_block]
        outputs.append(out if lengths is None else out * (t < lengths)[:, None])
    return torch.stack(outputs), blocks


def _random_state(rnn, B):
    """Random ``hx`` in the cell's state order: the tensors, and ``hx`` as ``forward`` takes it."""
    t = rnn.cells[0].t
    shape = (rnn.num_layers * rnn.num_directions, B, rnn.hidden_size)
    state = tuple(torch.randn(shape, requires_grad=True) for _ in range(t))
    return state, (state[0] if t == 1 else state)


def _gradients(loss, inputs):
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _assert_close(ours, reference, tol, what):
    for k, (a, b) in enumerate(zip(ours, reference)):
        if b is None:
            assert a is None or a.abs().max() == 0, f"{what}[{k}]"
            continue
        err = ((a - b).abs().max() / (1 + b.abs().max())).item()
        assert err <= tol, f"{what}[{k}]: relative error {err:.2e}"


# --- the engine equals autograd through the per-token cell ------------------------------------

@pytest.mark.parametrize("grad", ["backprop", "checkpoint"])
@pytest.mark.parametrize("tableau", TABLEAUX)
@pytest.mark.parametrize("field", FIELDS)
def test_engine_equals_autograd_through_the_cell(field, tableau, grad, user_tableau):
    torch.manual_seed(0)
    T, B, E, H = 5, 3, 4, 6
    rnn = odernn.ODERNN(_spec(field, tableau, user_tableau), E, H, grad=grad)
    cell = rnn.cells[0]
    x = torch.randn(T, B, E, requires_grad=True)
    blocks, hx = _random_state(rnn, B)
    out, h_n = rnn(x, hx)
    user = tuple(b[0] for b in blocks)  # the cell's own state order, as hx gives it
    ref_out, ref_blocks = cell_loop(cell, x, user[0] if len(user) == 1 else user)
    ref_h_n = cell.field.from_blocks(tuple(b[None] for b in ref_blocks))
    assert (out - ref_out).abs().max() <= 1e-12
    for a, b in zip(cell.field.to_blocks(h_n), cell.field.to_blocks(ref_h_n)):
        assert (a - b).abs().max() <= 1e-12
    weights = [torch.randn_like(out)] + [torch.randn_like(b) for b in cell.field.to_blocks(h_n)]
    inputs = [x, *blocks, *rnn.parameters()]

    def loss(o, h):
        return (o * weights[0]).sum() + sum((a * w).sum() for a, w in zip(cell.field.to_blocks(h), weights[1:]))

    _assert_close(_gradients(loss(out, h_n), inputs), _gradients(loss(ref_out, ref_h_n), inputs), 1e-10, field)


def test_the_generated_backward_builds_no_graph_per_token():
    rnn = odernn.ODERNN("gru-ode:rk4", 3, 4)
    out, _ = rnn(torch.randn(50, 2, 3))
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    # the input projection, the recurrent weights and one node for the whole sequence: no per-token nodes
    assert len(seen) < 20 and any(type(n).__name__ == "_SequenceBackward" for n in seen)


@pytest.mark.parametrize("spec", ["gru-ode:rk4", "lstm:midpoint", "cornn:heun:dt=0.2", "rnn:dopri5:steps=2"])
def test_gradcheck_including_the_gaps(spec):
    torch.manual_seed(1)
    rnn = odernn.ODERNN(spec, 2, 3)
    T, B = 3, 2
    x = torch.randn(T, B, 2, requires_grad=True)
    dt = (0.2 + torch.rand(T, B)).requires_grad_()
    blocks, _ = _random_state(rnn, B)
    field = rnn.cells[0].field

    def run(x, dt, *tensors):
        hx = field.from_blocks(tensors) if len(tensors) > 1 else tensors[0]
        out, h_n = rnn(x, hx, dt=dt)
        return (out, *field.to_blocks(h_n))

    assert torch.autograd.gradcheck(run, (x, dt, *blocks))
    assert torch.autograd.gradcheck(lambda *p: run(x.detach(), dt.detach(), *(b.detach() for b in blocks)),
                                    list(rnn.parameters()))


# --- second derivatives: the generated backward is differentiable ----------------------------------

# rk4 (a chain of stages, every b_i used) and heun, on three fields, in both memory modes; GRU-ODE
# and LSTM under rk4 with backprop are test_torch_conformance's gradgradcheck (the same layers)
_SECOND = [(field, tableau, grad) for field in ("gru-ode", "lstm", "cornn:dt=0.3") for tableau in ("rk4", "heun")
           for grad in ("backprop", "checkpoint") if (tableau, grad) != ("rk4", "backprop") or field == "cornn:dt=0.3"]


def _second_order_check(field, tableau, grad):
    """gradgradcheck of the engine's outputs and final blocks in its inputs, initial blocks and
    weights, in fast mode: the second derivatives projected on random vectors against finite
    differences of the projected gradient, a sixth of the full Jacobian's time. A wrong block of
    the Jacobian shows in almost every projection (``test_the_second_order_check_sees_...``)."""
    torch.manual_seed(13)
    rnn = odernn.ODERNN(_spec(field, tableau, None), 2, 2, grad=grad)
    assert rnn.cells[0].runs_in_engine
    x = torch.randn(3, 2, 2, requires_grad=True)
    blocks, _ = _random_state(rnn, 2)
    names = [name for name, _ in rnn.named_parameters()]
    field_ = rnn.cells[0].field

    def run(x, *tensors):
        state, weights = tensors[:len(blocks)], tensors[len(blocks):]
        hx = state[0] if len(state) == 1 else field_.from_blocks(state)
        out, h_n = torch.func.functional_call(rnn, dict(zip(names, weights)), (x, hx))
        return (out, *field_.to_blocks(h_n))
    return torch.autograd.gradgradcheck(run, (x, *blocks, *rnn.parameters()), fast_mode=True)


@pytest.mark.parametrize("field, tableau, grad", _SECOND)
def test_gradgradcheck_through_the_engine(field, tableau, grad):
    """A backward with create_graph=True (gradient penalties, Hessian–vector products) is itself
    differentiated: once silently zero for the recurrent weights, now checked against finite
    differences of the gradient."""
    assert _second_order_check(field, tableau, grad)


def test_the_second_order_check_sees_second_derivatives_that_are_silently_zero(monkeypatch):
    """The fast check above fails on the engine's old fault: first derivatives right, a graph
    attached, and every second derivative zero."""
    import sys
    from odernn import _engine
    GradcheckError = sys.modules["torch.autograd.gradcheck"].GradcheckError  # (the name is also the function's)

    def first_order_only(ctx, grad_out, *grad_final):
        with torch.no_grad():
            result = _engine._Sequence._backward(ctx, grad_out, *grad_final)
        zero = sum((t * 0).sum() for t in ctx.saved_tensors if t is not None and t.requires_grad) + (grad_out * 0).sum()
        return tuple(r if r is None else r + zero for r in result)
    monkeypatch.setattr(_engine._Sequence, "_differentiable_backward", staticmethod(first_order_only))
    with pytest.raises(GradcheckError, match="Jacobian mismatch"):
        _second_order_check("gru-ode", "heun", "backprop")


@pytest.mark.parametrize("spec, grad", [("gru-ode:rk4", "backprop"), ("lstm:midpoint", "checkpoint"),
                                        ("rnn:dt=0.3:order=3:ssprk3", "backprop"), ("urnn:heun", "checkpoint")])
def test_a_gradient_penalty_step_equals_the_cell_loop(spec, grad):
    """One training step of ``loss + λ‖∂loss/∂x‖²`` (double backward) moves the weights exactly as
    the same model run as a per-token cell loop under autograd."""
    torch.manual_seed(14)
    rnn = odernn.ODERNN(spec, 3, 4, grad=grad)
    twin = odernn.ODERNN(spec, 3, 4)
    twin.load_state_dict(rnn.state_dict())
    x = torch.randn(5, 2, 3)
    target = torch.randn(5, 2, 4)

    def penalised(out, x):
        loss = (out - target).square().mean()
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        return loss + 0.5 * g.square().sum()

    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    engine_loss = penalised(rnn(xs[0])[0], xs[0])
    cell = twin.cells[0]
    reference_loss = penalised(cell_loop(cell, xs[1], None)[0], xs[1])
    assert abs(engine_loss.item() - reference_loss.item()) <= 1e-12
    for model, loss in ((rnn, engine_loss), (twin, reference_loss)):
        torch.optim.SGD(model.parameters(), lr=0.1).zero_grad()
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(p.grad.abs().max() > 0 for p in rnn.parameters())
    for (name, p), q in zip(rnn.named_parameters(), twin.parameters()):
        assert (p - q).abs().max() <= 1e-12, name


@pytest.mark.parametrize("spec, grad", [("gru-ode:rk4", "backprop"), ("lstm:midpoint", "checkpoint")])
def test_torch_func_transforms_through_the_engine(spec, grad):
    """torch.func.grad, jacrev (vmap over the backward) and per-sample gradients (vmap over grad)
    equal autograd; forward mode, which the engine does not implement, raises."""
    torch.manual_seed(19)
    rnn = odernn.ODERNN(spec, 3, 4, grad=grad)
    x = torch.randn(4, 3, 3)
    names = [name for name, _ in rnn.named_parameters()]

    def loss(weights, x):
        return torch.func.functional_call(rnn, dict(zip(names, weights)), (x,))[0].square().sum()
    weights = tuple(p.detach() for p in rnn.parameters())
    expected = torch.autograd.grad(loss(tuple(rnn.parameters()), x), list(rnn.parameters()))
    _assert_close(torch.func.grad(loss)(weights, x), expected, 1e-13, "grad")
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 1))(weights, x[:, :, None])
    for k in range(3):
        one = torch.autograd.grad(loss(tuple(rnn.parameters()), x[:, k:k + 1]), list(rnn.parameters()))
        _assert_close([g[k] for g in per_sample], one, 1e-13, "per-sample")
    jacobian = torch.func.jacrev(lambda v: rnn(v)[0][-1].sum(0))(x)
    xr = x.clone().requires_grad_()
    last = rnn(xr)[0][-1].sum(0)
    rows = torch.stack([torch.autograd.grad(last[i], xr, retain_graph=True)[0] for i in range(4)])
    assert (jacobian - rows).abs().max() <= 1e-13
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jacfwd(lambda v: rnn(v)[0].sum())(x)


@pytest.mark.parametrize("spec", ["rnn:bs3:dt=0.2:rtol=1e-6:atol=1e-6", "USER_FIELD"])
@pytest.mark.parametrize("grad", ["backprop", "checkpoint"])
def test_the_per_token_path_is_twice_differentiable(spec, grad):
    """Adaptive tableaux and users' own fields run token by token under autograd; their
    checkpointed form recomputes each token in the backward and differentiates that."""
    torch.manual_seed(15)
    if spec == "USER_FIELD":
        rnn = odernn.ODERNN(lambda i, h: odernn.ODECell(odernn.ModuleField(_Decay(), i, h), "midpoint"), 4, 4,
                            grad=grad)
    else:
        rnn = odernn.ODERNN(spec, 2, 2, grad=grad)
    x = torch.randn(2, 2, rnn.input_size, requires_grad=True)
    names = [name for name, _ in rnn.named_parameters()]

    def run(x, *weights):
        return torch.func.functional_call(rnn, dict(zip(names, weights)), (x,))[0]
    assert torch.autograd.gradgradcheck(run, (x, *rnn.parameters()), fast_mode=True)  # as _second_order_check


def test_first_order_torch_func_through_an_implicit_cell_is_exact_and_forward_mode_is_refused():
    """torch.func builds a graph even for first derivatives: that passes (jacrev equals finite
    differences); forward mode would miss (I − ∂F/∂K)⁻¹ and is refused, with or without grad mode."""
    torch.manual_seed(17)
    rnn = odernn.ODERNN("gru-ode:gauss-2", 3, 4)
    x, h0, v = torch.randn(4, 2, 3), torch.randn(1, 2, 4), torch.randn(1, 2, 4)
    jacobian = torch.func.jacrev(lambda h: rnn(x, h)[1])(h0)
    eps = 1e-6
    finite = (rnn(x, h0 + eps * v)[1] - rnn(x, h0 - eps * v)[1]) / (2 * eps)
    assert ((jacobian.reshape(8, 8) @ v.reshape(8)).reshape(1, 2, 4) - finite).abs().max() <= 1e-8
    with pytest.raises(odernn.ImplicitSolveError, match="forward-mode"):
        torch.func.jacfwd(lambda h: rnn(x, h)[1])(h0)
    with pytest.raises(odernn.ImplicitSolveError, match="forward-mode"), torch.no_grad():
        with torch.autograd.forward_ad.dual_level():
            rnn(x, torch.autograd.forward_ad.make_dual(h0, v))


@pytest.mark.parametrize("spec", ["gru-ode:gauss-2", "rnn:bs3:dt=0.5:rtol=1e-6:atol=1e-6", "gru-ode:rk4"])
@pytest.mark.parametrize("grad", ["backprop", "checkpoint", "adjoint"])
def test_a_backward_differentiates_what_its_forward_ran(spec, grad):
    """Settings and weights changed between the forward and the backward (the next batch's
    functional_call, a cell's steps) do not leak into the gradient of the earlier call."""
    if grad == "adjoint" and "gauss" in spec:
        return  # the adjoint's backward solver runs explicit tableaux only (tested elsewhere)
    torch.manual_seed(18)
    rnn = odernn.ODERNN(spec, 3, 4, grad=grad)
    x = torch.randn(4, 2, 3, requires_grad=True)
    names = [name for name, _ in rnn.named_parameters()]
    weights = {name: p.detach() * 1.5 for name, p in rnn.named_parameters()}
    expected = torch.autograd.grad(torch.func.functional_call(rnn, weights, (x,))[1].sum(), x)[0]
    _, h = torch.func.functional_call(rnn, weights, (x,))
    torch.func.functional_call(rnn, {name: w * 0 for name, w in weights.items()}, (x,))  # another call in between
    rnn.cells[0].steps = 3
    assert torch.equal(torch.autograd.grad(h.sum(), x)[0], expected) and len(names) > 0


@pytest.mark.parametrize("spec, grad, message", [
    ("gru-ode:gauss-2", "backprop", "second derivatives through an implicit tableau"),
    ("lstm:backward-euler", "checkpoint", "second derivatives through an implicit tableau"),
    ("gru-ode:rk4", "adjoint", "the continuous adjoint gives first derivatives only"),
])
def test_paths_without_second_derivatives_refuse_a_graph_with_one_message(spec, grad, message):
    """Never silently zero or wrong: the implicit function theorem's gradient and the continuous
    adjoint are first order, and say so when a backward is asked to build a graph."""
    torch.manual_seed(16)
    rnn = odernn.ODERNN(spec, 3, 4, grad=grad)
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, _ = rnn(x)
    first = torch.autograd.grad(out.square().sum(), x)[0]  # first order works
    assert first.abs().max() > 0
    out, _ = rnn(x)
    with pytest.raises(RuntimeError, match=message):
        (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)  # the adjoint refuses here,
        torch.autograd.grad(g.square().sum(), x)  # an implicit step when its gradient is differentiated


# --- exact recovery of the torch.nn sequence modules -------------------------------------------

@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("kind", [nn.RNN, nn.GRU, nn.LSTM])
def test_from_torch_equals_the_torch_module(kind, with_h0):
    torch.manual_seed(2)
    module = kind(4, 5, num_layers=2, bidirectional=True, batch_first=True)
    ours = odernn.from_torch(module)
    assert isinstance(ours, odernn.ODERNN) and list(ours.state_dict()) == list(module.state_dict())
    ours.fused = False  # the sequence engine itself, not PyTorch's kernel (tested equal below)
    x = torch.randn(3, 6, 4, requires_grad=True)  # (B, T, E)
    args = []
    if with_h0:
        h0 = tuple(torch.randn(4, 3, 5, requires_grad=True) for _ in range(2 if kind is nn.LSTM else 1))
        args = [h0 if kind is nn.LSTM else h0[0]]
    theirs_out, theirs_h = module(x, *args)
    ours_out, ours_h = ours(x, *args)
    flat = lambda h: (h,) if isinstance(h, torch.Tensor) else tuple(h)  # noqa: E731
    assert (ours_out - theirs_out).abs().max() <= 1e-12
    for a, b in zip(flat(ours_h), flat(theirs_h)):
        assert (a - b).abs().max() <= 1e-12
    w = torch.randn_like(theirs_out)
    inputs_theirs = [x, *(args and flat(args[0])), *module.parameters()]
    inputs_ours = [x, *(args and flat(args[0])), *ours.parameters()]
    g_theirs = _gradients((theirs_out * w).sum() + sum(h.sum() for h in flat(theirs_h)), inputs_theirs)
    g_ours = _gradients((ours_out * w).sum() + sum(h.sum() for h in flat(ours_h)), inputs_ours)
    _assert_close(g_ours, g_theirs, 1e-10, kind.__name__)
    back = ours.to_torch()
    assert type(back) is kind and all(torch.equal(p, q) for p, q in zip(back.parameters(), module.parameters()))


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM])
def test_the_fused_kernel_equals_the_engine(kind):
    """Where the layers equal a torch module, ``fused=True`` hands them to PyTorch's kernel: the
    same outputs, states and gradients as the engine, packed input included."""
    torch.manual_seed(10)
    fused = odernn.from_torch(kind(3, 4, num_layers=2, bidirectional=True, dropout=0.0))
    engine = odernn.ODERNN(fused.spec, 3, 4, num_layers=2, bidirectional=True, fused=False)
    engine.load_state_dict(fused.state_dict())
    assert fused.torch_equivalent is kind and odernn.ODERNN("gru-ode:rk4", 3, 4).torch_equivalent is None
    x = torch.randn(5, 2, 3, requires_grad=True)
    lengths = torch.tensor([5, 3])
    flat = lambda h: (h,) if isinstance(h, torch.Tensor) else tuple(h)  # noqa: E731
    for rnn_input in (lambda: x, lambda: pack_padded_sequence(x, lengths)):
        results = []
        for rnn in (fused, engine):
            out, h = rnn(rnn_input())
            data = out.data if not isinstance(out, torch.Tensor) else out
            loss = data.square().sum() + sum(v.sum() for v in flat(h))
            results.append((data, flat(h), _gradients(loss, [x, *rnn.parameters()])))
        (a, ha, ga), (b, hb, gb) = results
        assert (a - b).abs().max() <= 1e-12 and all((u - v).abs().max() <= 1e-12 for u, v in zip(ha, hb))
        _assert_close(ga, gb, 1e-12, kind.__name__)


def test_a_torch_state_dict_loads_into_the_matching_field_and_unbatched_input_works():
    torch.manual_seed(3)
    gru = nn.GRU(3, 4, num_layers=2)
    ours = odernn.ODERNN("gru-ode:euler", 3, 4, num_layers=2)
    ours.load_state_dict(gru.state_dict())
    x = torch.randn(7, 3)  # unbatched (T, E)
    h0 = torch.randn(2, 4)
    for a, b in zip(ours(x, h0), gru(x, h0)):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-12
    with pytest.raises(ValueError, match="no torch.nn cell equals"):
        odernn.ODERNN("gru-ode:rk4", 3, 4).to_torch()
    with pytest.raises(odernn.CellSpecError, match="proj_size"):  # the projection is the LSTM's
        odernn.ODERNN("gru-ode:rk4", 3, 4, proj_size=2)


def test_conversion_moves_the_cells_with_the_module():
    rnn = odernn.ODERNN("lstm:rk4", 3, 4, num_layers=2).float()
    assert rnn.cells[1].field.weight_hh is rnn.weight_hh_l1 and rnn.weight_hh_l1.dtype == torch.float32
    out, (h, c) = rnn(torch.randn(2, 1, 3, dtype=torch.float32))
    assert out.dtype == h.dtype == c.dtype == torch.float32
    replacement = {name: torch.zeros_like(p) for name, p in rnn.named_parameters()}
    rnn.load_state_dict(replacement, assign=True)  # new tensors: the cells must see them
    assert rnn.cells[0].field.weight_ih is rnn.weight_ih_l0
    assert rnn(torch.randn(2, 1, 3, dtype=torch.float32))[0].abs().max() == 0



def test_reading_cells_binds_nothing_and_the_cells_follow_every_change_of_the_tensors():
    """``cells`` is a plain read; the registered tensors reach the cells when they change, a call's
    own (``functional_call``'s, a parametrisation's value) only for the call; ``bind_cells`` is
    the explicit step that evaluates a parametrisation into them."""
    torch.manual_seed(0)
    rnn = odernn.ODERNN("gru-ode:rk4", 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    original = rnn.weight_hh_l1
    zeros = {name: torch.zeros_like(p) for name, p in rnn.named_parameters()}
    assert torch.func.functional_call(rnn, zeros, (x,))[0].abs().max() == 0
    assert rnn.cells[1].field.weight_hh is original  # the call's tensors left with the call
    held = [dict(cell.field.named_parameters()) for cell in rnn._cells]
    rnn._bind_cells = None  # a read that tried to bind would fail here
    assert [dict(cell.field.named_parameters()) for cell in rnn.cells] == held
    del rnn._bind_cells
    rnn.weight_hh_l1 = nn.Parameter(torch.full((12, 4), 0.1))  # assignment
    assert rnn.cells[1].field.weight_hh is rnn.weight_hh_l1
    rnn.load_state_dict({**rnn.state_dict(), "weight_ih_l0": torch.ones(12, 3)}, assign=True)
    assert rnn.cells[0].field.weight_ih is rnn.weight_ih_l0 and (rnn.weight_ih_l0 == 1).all()
    rnn.double()
    assert all(p.dtype == torch.float64 for cell in rnn.cells for p in cell.field.parameters())
    assert rnn.cells[1].field.weight_hh is rnn.weight_hh_l1
    torch.nn.utils.parametrize.register_parametrization(rnn, "weight_hh_l1", _Scaled(3.0))
    raw = rnn.cells[1].field.weight_hh
    rnn(x.double())
    assert rnn.cells[1].field.weight_hh is raw  # the evaluated weight was the call's
    copy = deepcopy(rnn)  # (torch pickles a parametrised module through its state_dict only)
    assert (copy(x.double())[0] - rnn(x.double())[0]).abs().max() == 0
    evaluated = rnn.bind_cells()[1].field.weight_hh
    assert (evaluated - 3 * rnn.parametrizations.weight_hh_l1.original).abs().max() == 0


class _Scaled(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, weight):
        return self.factor * weight


# --- irregular gaps, variable lengths ---------------------------------------------------------

@pytest.mark.parametrize("spec", ["gru-ode:rk4:steps=2", "lstm:ralston3", "cornn:ssprk3:dt=0.2"])
def test_gaps_per_token_and_sequence_equal_the_cell_loop(spec):
    torch.manual_seed(4)
    T, B = 6, 3
    rnn = odernn.ODERNN(spec, 2, 5, batch_first=True)
    cell = rnn.cells[0]
    x = torch.randn(B, T, 2)
    gaps = 0.1 + 2 * torch.rand(B, T)
    out, h_n = rnn(x, dt=gaps)
    ref_out, ref_blocks = cell_loop(cell, x.transpose(0, 1), None, dt=gaps.T)
    # relative: gaps up to 2.1 take coRNN's SSPRK3 outside its stability region, to 1e10
    _assert_close([out.transpose(0, 1), *(b[0] for b in cell.field.to_blocks(h_n))], [ref_out, *ref_blocks], 1e-12, spec)
    # a float gap is the same as that gap everywhere
    same = rnn(x, dt=0.7)[0]
    assert (same - rnn(x, dt=torch.full((B, T), 0.7))[0]).abs().max() <= 1e-14


@pytest.mark.parametrize("spec", ["gru-ode:midpoint", "lstm", "antisymmetric:rk4", "gru-ode:gauss-2",
                                  "rnn:dopri5:rtol=1e-8:atol=1e-10"])
def test_variable_lengths_equal_each_sequence_alone(spec):
    torch.manual_seed(5)
    T, B = 7, 4
    rnn = odernn.ODERNN(spec, 3, 4, bidirectional=True)
    x = torch.randn(T, B, 3)
    lengths = torch.tensor([7, 3, 5, 1])
    out, h_n = rnn(x, lengths=lengths)
    flat = lambda h: (h,) if isinstance(h, torch.Tensor) else tuple(h)  # noqa: E731
    # adaptive steps are shared by the batch (the worst sequence decides): alone, a sequence takes
    # other steps, and agrees to the tolerance rather than to round-off
    tol = 1e-7 if "rtol" in spec else 1e-12
    for k in range(B):
        alone_out, alone_h = rnn(x[:lengths[k], k:k + 1])
        assert (out[:lengths[k], k] - alone_out[:, 0]).abs().max() <= tol
        assert torch.all(out[lengths[k]:, k] == 0)  # zero after the end, as nn.GRU pads
        for a, b in zip(flat(h_n), flat(alone_h)):
            assert (a[:, k] - b[:, 0]).abs().max() <= tol


def test_a_packed_sequence_gives_what_the_torch_module_gives():
    torch.manual_seed(6)
    lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    ours = odernn.from_torch(lstm)
    x = torch.randn(6, 4, 3, requires_grad=True)
    pack = lambda: pack_padded_sequence(x, torch.tensor([4, 6, 2, 6]), enforce_sorted=False)  # noqa: E731
    (theirs, (h, c)), (mine, (h2, c2)) = lstm(pack()), ours(pack())
    assert torch.equal(theirs.batch_sizes, mine.batch_sizes) and torch.equal(theirs.sorted_indices, mine.sorted_indices)
    assert (theirs.data - mine.data).abs().max() <= 1e-12
    assert (h - h2).abs().max() <= 1e-12 and (c - c2).abs().max() <= 1e-12
    g = _gradients(mine.data.sum() + h2.sum(), [x])[0]
    assert (g - _gradients(theirs.data.sum() + h.sum(), [x])[0]).abs().max() <= 1e-12


# --- the per-token paths: user fields, implicit and adaptive tableaux, the continuous adjoint ---

class _Decay(nn.Module):
    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(4, 4) / 2)

    def forward(self, h, x):
        return torch.tanh(h @ self.W.T + x[..., :4]) - h


@pytest.mark.parametrize("spec", ["gru-ode:gauss-2", "lstm:backward-euler", "gru-ode:dopri5:rtol=1e-9:atol=1e-9"])
def test_implicit_and_adaptive_tableaux_run_token_by_token(spec):
    torch.manual_seed(7)
    rnn = odernn.ODERNN(spec, 3, 4)
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, _ = rnn(x)
    ref, _ = cell_loop(rnn.cells[0], x, None)
    assert (out - ref).abs().max() <= 1e-12
    _assert_close(_gradients(out.sum(), [x]), _gradients(ref.sum(), [x]), 1e-10, spec)


def test_a_module_field_sequence_is_differentiated_by_autograd():
    torch.manual_seed(8)
    field = odernn.ModuleField(_Decay(), 4, 4)
    cell = odernn.ODECell(field, "rk4", steps=2)
    x = torch.randn(5, 2, 4)
    out, h = odernn._engine.run_sequence(cell, x, (torch.zeros(2, 4),), 1.0)
    ref, ref_h = cell_loop(cell, x, torch.zeros(2, 4))
    assert (out - ref).abs().max() <= 1e-14 and (h[0] - ref_h[0]).abs().max() <= 1e-14
    assert out.grad_fn is not None and type(out.grad_fn).__name__ != "_SequenceBackward"


def test_a_cell_factory_takes_a_users_own_field():
    torch.manual_seed(11)
    rnn = odernn.ODERNN(lambda i, h: odernn.ODECell(odernn.ModuleField(_Decay(), i, h), "midpoint"), 4, 4,
                        num_layers=2)
    assert [name for name, _ in rnn.named_parameters()] == ["module_W_l0", "module_W_l1"]
    x = torch.randn(5, 2, 4, requires_grad=True)
    out, h_n = rnn(x)
    first, _ = cell_loop(rnn.cells[0], x, None)
    second, last = cell_loop(rnn.cells[1], first, None)
    assert (out - second).abs().max() <= 1e-14 and (h_n[1] - last[0]).abs().max() <= 1e-14
    _assert_close(_gradients(out.sum(), [x, *rnn.parameters()]), _gradients(second.sum(), [x, *rnn.parameters()]),
                  1e-12, "factory")
    # layers may differ: each integrates over its own Δ
    dts = iter([0.5, 2.0])
    mixed = odernn.ODERNN(lambda i, h: odernn.cell("gru-ode:rk4", i, h, dt=next(dts)), 4, 4, num_layers=2)
    first, _ = cell_loop(mixed.cells[0], x, None)
    second, _ = cell_loop(mixed.cells[1], first, None)
    assert (mixed(x)[0] - second).abs().max() <= 1e-14 and mixed.torch_equivalent is None
    with pytest.raises(TypeError, match="not an odernn.ODECell"):
        odernn.ODERNN(lambda i, h: nn.GRUCell(i, h), 4, 4)


def test_a_constrained_cell_trains_its_parametrised_weight():
    """``constraint=spectral`` parametrises W_hh (stability): the layer registers the original
    weight under its torch-style name and runs the parametrised one."""
    torch.manual_seed(12)
    rnn = odernn.ODERNN("rnn:rk4:dt=2:constraint=spectral", 3, 5)
    assert "weight_hh_original_l0" in dict(rnn.named_parameters())
    x = torch.randn(4, 2, 3)
    out, _ = rnn(x)
    ref, _ = cell_loop(rnn.cells[0], x, None)
    assert (out - ref).abs().max() <= 1e-12
    out.sum().backward()
    assert rnn.weight_hh_original_l0.grad.abs().sum() > 0


def test_the_gradient_modes_agree():
    torch.manual_seed(9)
    runs = {mode: odernn.ODERNN("gru-ode:rk4:steps=4", 3, 5, grad=mode) for mode in odernn.GRAD_MODES}
    for rnn in list(runs.values())[1:]:
        rnn.load_state_dict(runs["backprop"].state_dict())
    x = torch.randn(6, 2, 3)
    grads = {}
    for mode, rnn in runs.items():
        out, h = rnn(x)
        grads[mode] = torch.autograd.grad(out.square().sum() + h.sum(), list(rnn.parameters()))
    _assert_close(grads["checkpoint"], grads["backprop"], 1e-12, "checkpoint")
    # the continuous adjoint differs from the discrete one by the discretisation error, O(h⁴)
    _assert_close(grads["adjoint"], grads["backprop"], 1e-5, "adjoint")


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda r: r(torch.randn(4, 2, 5)), "input_size. Expected 3, got 5"),
    (lambda r: r(torch.randn(2, 3, 4, 3)), r"expected input to be 2-D \(T, E\) or 3-D \(T, B, E\)"),
    (lambda r: r(torch.randn(4, 2, 3), torch.zeros(2, 2, 6)), r"hx must have shape \(1, 2, 6\)"),
    (lambda r: r(torch.randn(4, 2, 3), dt=torch.ones(2, 4)), r"dt must be a float or a tensor of shape \(4, 2\)"),
    (lambda r: r(torch.randn(4, 2, 3), dt=-1.0), "dt must be a finite number greater than zero"),
    (lambda r: r(torch.randn(4, 2, 3), lengths=[4, 5]), "lengths must be 2 integers in 1..4"),
    (lambda r: r(torch.randn(4, 2, 3), lengths=torch.tensor([[4, 3]])), r"got shape \(1, 2\)"),
    (lambda r: r(torch.randn(4, 2, 3), lengths=torch.tensor([True, True])), "dtype torch.bool"),
    (lambda r: r(torch.randn(4, 2, 3), lengths=[4.0, 3.0]), "dtype torch.float"),
    (lambda r: r(torch.randn(4, 2, 3), lengths="43"), "got str"),
    (lambda r: r(torch.randn(4, 2, 3), dt=-torch.ones(4, 2)), "finite numbers greater than zero"),
    (lambda r: r(torch.randn(4, 2, 3), dt=torch.full((4, 2), float("nan"))), "finite numbers greater than zero"),
    (lambda r: r(torch.randn(4, 2, 3), dt="0.5"), "got str"),
    (lambda r: r(torch.randn(0, 2, 3)), "sequence length to be larger than 0"),
])
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(odernn.InputError, match=message):
        call(odernn.ODERNN("gru-ode:rk4", 3, 6))


def test_lengths_may_be_any_sequence_of_integers():
    rnn = odernn.ODERNN("gru-ode:rk4", 3, 4)
    x = torch.randn(5, 3, 3)
    expected = rnn(x, lengths=torch.tensor([5, 3, 2]))[0]
    for lengths in ([5, 3, 2], (5, 3, 2), np.array([5, 3, 2]), torch.tensor([5, 3, 2], dtype=torch.int32)):
        assert torch.equal(rnn(x, lengths=lengths)[0], expected)


@pytest.mark.parametrize("spec", ["rnn:bs3:rtol=1e-4:atol=1e-4", "gru-ode:rk4:GRAD=adjoint"])
def test_a_gap_tensor_where_one_dt_is_shared_is_an_input_error(spec):
    spec, _, grad = spec.partition(":GRAD=")
    rnn = odernn.ODERNN(spec, 3, 4, grad=grad or "backprop")
    with pytest.raises(odernn.InputError, match="dt"):
        rnn(torch.randn(4, 2, 3), dt=torch.ones(4, 2))


def test_bad_constructor_arguments():
    with pytest.raises(odernn.CellSpecError, match="unknown cell field"):
        odernn.ODERNN("gru-odd", 3, 4)
    with pytest.raises(ValueError, match="unknown gradient mode"):
        odernn.ODERNN("gru-ode", 3, 4, grad="magic")
    with pytest.raises(ValueError, match="num_layers"):
        odernn.ODERNN("gru-ode", 3, 4, num_layers=0)


# --- the discrete adjoint's coefficients, exactly --------------------------------------------------

def test_the_reverse_program_is_the_transpose_of_the_forward_one(catalogue):
    for name, tab in catalogue.items():
        if not tab.is_explicit:
            continue
        program = tab.stage_program()
        evaluated = [i for i, _ in program.stages]
        reverse = program.reverse().stages
        assert [i for i, _, _ in reverse] == evaluated[::-1], name
        for i, b_i, row in reverse:  # κ_i reads b_i and a_ji of the later evaluated stages
            assert b_i == tab.b[i], name
            assert dict(row) == {j: tab.A[j, i] for j in evaluated if j > i and tab.A[j, i] != 0}, name
        unused = set(range(tab.stages)) - set(evaluated)
        assert all(tab.b[i] == 0 and all(tab.A[j, i] == 0 for j in evaluated) for i in unused), name
    assert butcher.get("dopri5").stage_program().evaluations == 6


def test_the_adjoint_partner_of_known_methods():
    """Forward Euler's partner is backward Euler; Gauss methods are their own partners; Lobatto
    IIIA and IIIB are each other's (the classic symplectic pair); every partner pairs
    symplectically with its method: b_i ā_ij + b_j a_ji = b_i b_j."""
    assert butcher.get("euler").adjoint_partner().A == butcher.get("backward-euler").A
    for s in (2, 3):
        gauss = butcher.get(f"gauss-{s}")
        assert (gauss.adjoint_partner().A - gauss.A).applyfunc(lambda v: v.simplify()).is_zero_matrix
    for s in (2, 3, 4):
        partner = butcher.get(f"lobatto-iiia-{s}").adjoint_partner()
        assert (partner.A - butcher.get(f"lobatto-iiib-{s}").A).applyfunc(lambda v: v.simplify()).is_zero_matrix
    for name in ("rk4", "heun", "ralston3", "ssprk3", "radau-iia-2"):
        tab = butcher.get(name)
        A, Abar, b = tab.A, tab.adjoint_partner().A, tab.b
        s = tab.stages
        assert all((b[i] * Abar[i, j] + b[j] * A[j, i] - b[i] * b[j]).simplify() == 0
                   for i in range(s) for j in range(s)), name
    with pytest.raises(ValueError, match="b_1 = 0"):
        butcher.get("midpoint").adjoint_partner()


@pytest.mark.parametrize("spec", ["cornn:dt=0.3", "rnn:order=3:dt=0.3", "lstm:midpoint"])
def test_a_sequence_and_its_tapes_are_freed_after_backward(spec):
    """A final block that a tape also held (the partitioned step's earlier groups) once tied each
    sequence's graph into a cycle through its grad_fn that the collector missed: a leak per batch."""
    import gc
    import weakref
    rnn = odernn.ODERNN(spec, 3, 8)
    out, state = rnn(torch.randn(6, 2, 3))
    nodes, seen = [out.grad_fn], []
    while nodes:  # the sequence's node, whose context holds the tapes
        node = nodes.pop()
        if node is not None and not any(node is n for n in seen):
            seen.append(node)
            nodes.extend(n for n, _ in node.next_functions)
    tapes = [weakref.ref(tape) for node in seen for tape in getattr(node, "tapes", None) or []]
    assert tapes
    out.sum().backward()
    del out, state, nodes, seen, node
    gc.collect()
    assert all(ref() is None for ref in tapes)
