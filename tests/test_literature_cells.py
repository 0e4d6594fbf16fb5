"""The ODE-derived cells of the literature against their published updates, in float64 to 1e-12,
and the derivative-order construction (``order=t``) that makes coRNN its ``t = 2`` member.

Each reference below is the published discrete update, written as the authors' official code
computes it (row vectors, ``h @ W``), so the test also shows how their weights map onto the field's
(``torch.nn`` layout, ``W h``). Equation numbers: coRNN's discrete scheme is eq. (3) of Rusch &
Mishra (ICLR 2021). The bodies of the other papers could not be read from the machine these tests
were written on, so their updates are cited by the official repository, file and commit, the code
that produced the published results, and no equation number is claimed for them.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

import odernn

pytestmark = pytest.mark.usefixtures("float64")


def _run(cell, xs, state):
    """The states after each token, per-token cell and the sequence engine agreeing."""
    states = []
    for x in xs:
        state = cell(x, state)
        states.append(state)
    return states


def _close(a, b, tol=1e-12):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return max((p - q).abs().max().item() for p, q in zip(a, b)) <= tol


# --- expRNN: forward Euler with Δ = 1 on the urnn field -----------------------------------------

def _exprnn_reference(R, T, b, cayley=False):
    """expRNN (Lezcano-Casado & Martínez-Rubio, ICML 2019), lezcano/expRNN ``orthogonal.py``
    (commit 00cbf564, static mode, i.e. ``--mode exprnn``): ``A = triu₁(R) − triu₁(R)ᵀ``,
    ``B = exp(A)`` (or ``cayley_map(A) = (I − A)⁻¹(I + A)``), ``h⁺ = modrelu(x Tᵀ + h B)`` with
    ``modrelu(z) = sign(z)·relu(|z| + b)``; no other bias."""
    A = (R.triu(1) - R.triu(1).T).numpy()
    I = np.eye(len(A))
    B = torch.from_numpy(np.linalg.solve(I - A, I + A) if cayley else scipy.linalg.expm(A))

    def step(x, h):
        z = x @ T.T + h @ B
        return torch.sign(z) * F.relu(torch.abs(z) + b)
    return step


@pytest.mark.parametrize("orthogonal_map", ["exp", "cayley"])
def test_urnn_with_forward_euler_is_exprnn(orthogonal_map):
    torch.manual_seed(0)
    E, H, B = 3, 6, 4
    R, T, b = torch.randn(H, H), torch.randn(H, E), torch.rand(H) - 0.5  # b < 0 in places: modReLU's dead band
    cell = odernn.cell(f"urnn:map={orthogonal_map}", E, H)
    field = cell.field
    with torch.no_grad():
        # PyTorch's maps use S = tril(X) − tril(X)ᵀ and W h = h Wᵀ; expRNN's use A and h B. X = Rᵀ
        # gives W = exp(Aᵀ) = Bᵀ; the Cayley map of PyTorch is (I − S/2)⁻¹(I + S/2), hence X = 2Rᵀ
        field.parametrizations.weight_hh.original.copy_(R.T * (2 if orthogonal_map == "cayley" else 1))
        field.weight_ih.copy_(T)
        field.bias.copy_(b)
    reference = _exprnn_reference(R, T, b, cayley=orthogonal_map == "cayley")
    xs = torch.randn(6, B, E)
    h = torch.randn(B, H)
    expected, mine = [], _run(cell, xs, h)
    for x in xs:
        h = reference(x, h)
        expected.append(h)
    assert all(_close(a, e) for a, e in zip(mine, expected))
    assert sum((e == 0).sum().item() for e in expected) > 0  # the dead band was exercised
    rnn = odernn.ODERNN(f"urnn:map={orthogonal_map}", E, H)  # the sequence engine, same weights
    rnn.cells[0].field.load_state_dict(field.state_dict())
    out, _ = rnn(xs)
    h = torch.zeros(B, H)
    for t, x in enumerate(xs):
        h = reference(x, h)
        assert _close(out[t], h)


def test_the_urnn_weight_stays_orthogonal_through_training():
    torch.manual_seed(1)
    rnn = odernn.ODERNN("urnn:rk4", 3, 8)
    optimiser = torch.optim.Adam(rnn.parameters(), lr=0.05)
    for _ in range(3):
        out, _ = rnn(torch.randn(5, 2, 3))
        out.square().sum().backward()
        optimiser.step()
        optimiser.zero_grad()
    W = rnn.cells[0].field.weight_hh
    assert (W.T @ W - torch.eye(8)).abs().max() <= 1e-12
    assert torch.linalg.eigvals(W).abs().sub(1).abs().max() <= 1e-12  # the spectrum on the unit circle


# --- Lipschitz RNN: forward Euler with step ε ---------------------------------------------------

def test_lipschitz_with_forward_euler_is_the_published_cell():
    """erichson/LipschitzRNN ``models.py`` (commit 5de6b7dd), ``rnn_models.forward``, branch
    ``'LipschitzRNN'`` with ``alpha = 1``: ``A = β(B − Bᵀ) + (1 − β)(B + Bᵀ) − γI``, ``W`` the same
    of ``C``, ``h⁺ = h + ε h A + ε tanh(h W + E(x))`` with ``E = nn.Linear``."""
    torch.manual_seed(2)
    E, H, beta, gamma, eps = 3, 5, 0.75, 0.1, 0.03
    Bm, Cm, V, c = torch.randn(H, H), torch.randn(H, H), torch.randn(H, E), torch.randn(H)
    I = torch.eye(H)
    A = beta * (Bm - Bm.transpose(1, 0)) + (1 - beta) * (Bm + Bm.transpose(1, 0)) - gamma * I
    W = beta * (Cm - Cm.transpose(1, 0)) + (1 - beta) * (Cm + Cm.transpose(1, 0)) - gamma * I
    cell = odernn.cell(f"lipschitz:dt={eps}:beta={beta}:gamma={gamma}", E, H)
    with torch.no_grad():  # h A = Aᵀ h, and A(M)ᵀ = A(Mᵀ): the field's M is the code's Bᵀ
        cell.field.weight_a.copy_(Bm.T)
        cell.field.weight_w.copy_(Cm.T)
        cell.field.weight_ih.copy_(V)
        cell.field.bias.copy_(c)
    xs, h = torch.randn(6, 4, E), torch.randn(4, H)
    mine = _run(cell, xs, h)
    for x, got in zip(xs, mine):
        h = h + eps * torch.matmul(h, A) + eps * torch.tanh(torch.matmul(h, W) + (x @ V.T + c))
        assert _close(got, h)


# --- LEM: the partitioned forward-Euler step ------------------------------------------------------

def test_lem_with_partitioned_euler_is_the_published_cell():
    """tk-rusch/LEM ``psMNIST/network.py`` (commit 28ec5df0), ``LEMCell.forward``: the gates read
    the old ``y``, ``z`` is updated first and ``y`` reads the new ``z``."""
    torch.manual_seed(3)
    E, H, dt = 3, 5, 0.31
    Wi, bi = torch.randn(4 * H, E), torch.randn(4 * H)  # inp2hid
    Wh, bh = torch.randn(3 * H, H), torch.randn(3 * H)  # hid2hid
    Wz, bz = torch.randn(H, H), torch.randn(H)  # transform_z

    def reference(x, y, z):
        i_dt1, i_dt2, i_z, i_y = (x @ Wi.T + bi).chunk(4, 1)
        h_dt1, h_dt2, h_y = (y @ Wh.T + bh).chunk(3, 1)
        ms_dt_bar = dt * torch.sigmoid(i_dt1 + h_dt1)
        ms_dt = dt * torch.sigmoid(i_dt2 + h_dt2)
        z = (1. - ms_dt) * z + ms_dt * torch.tanh(i_y + h_y)
        y = (1. - ms_dt_bar) * y + ms_dt_bar * torch.tanh(z @ Wz.T + bz + i_z)
        return y, z

    cell = odernn.cell(f"lem:dt={dt}", E, H)
    f = cell.field
    rows = [0, 1, 3, 2]  # the field's rows are [Δ_y, Δ_z, z-candidate, y-candidate]
    with torch.no_grad():
        f.weight_ih.copy_(torch.cat([Wi.chunk(4)[k] for k in rows]))
        f.bias_ih.copy_(torch.cat([bi.chunk(4)[k] for k in rows]))
        f.weight_hh_y.copy_(Wh)
        f.weight_hh_z.copy_(Wz)
        f.bias_hh.copy_(torch.cat((bh, bz)))
    xs, state = torch.randn(6, 4, E), (torch.randn(4, H), torch.randn(4, H))
    mine = _run(cell, xs, state)
    for x, got in zip(xs, mine):
        state = reference(x, *state)
        assert _close(got, state)


# --- UnICORNN: symplectic Euler -------------------------------------------------------------------

def test_unicornn_with_partitioned_euler_is_the_published_cell():
    """tk-rusch/unicornn ``health_care/network.py`` (commit 6132b50f), the CUDA kernel
    ``unicornn_fwd``: ``hz −= dt·σ(c)·(tanh(hy·w + x) + α·hy); hy += dt·σ(c)·hz`` with
    ``x = V u + b`` computed for the whole sequence beforehand."""
    torch.manual_seed(4)
    E, H, dt, alpha = 3, 5, 0.19, 30.65
    w, c, V, b = torch.rand(H), torch.randn(H), torch.randn(H, E), torch.randn(H)
    cell = odernn.cell(f"unicornn:dt={dt}:alpha={alpha}", E, H)
    with torch.no_grad():
        cell.field.weight_hh.copy_(w)
        cell.field.c.copy_(c)
        cell.field.weight_ih.copy_(V)
        cell.field.bias.copy_(b)
    xs, (hy, hz) = torch.randn(6, 4, E), (torch.randn(4, H), torch.randn(4, H))
    mine = _run(cell, xs, (hy, hz))
    for u, got in zip(xs, mine):
        xp = u @ V.T + b
        hz = hz - dt * torch.sigmoid(c) * (torch.tanh(hy * w + xp) + alpha * hy)
        hy = hy + dt * torch.sigmoid(c) * hz
        assert _close(got, (hy, hz))


# --- derivative order t ---------------------------------------------------------------------------

def test_cornn_is_the_order_two_tanh_rnn():
    """``rnn:order=2`` with leak γ and damping ε, stepped by partitioned forward Euler, is coRNN's
    IMEX scheme, eq. (3) of Rusch & Mishra (ICLR 2021):
    ``z⁺ = z + Δt(tanh(W y + 𝒲 z + V u + b) − γ y − ε z)``, ``y⁺ = y + Δt z⁺`` (tk-rusch/coRNN
    ``psMNIST/network.py``, commit 32958131, ``coRNNCell``)."""
    torch.manual_seed(5)
    E, H, dt, gamma, eps = 3, 4, 0.05, 2.0, 3.0
    lifted = odernn.cell(f"rnn:dt={dt}:order=2:gamma={gamma}:damping={eps}", E, H)
    cornn = odernn.cell(f"cornn:dt={dt}:gamma={gamma}:epsilon={eps}", E, H)
    assert isinstance(cornn.field, odernn.HigherOrderField) and cornn.field.order == 2
    assert lifted.partitioned and lifted.n == 1 and lifted.t == 2
    lifted.field.load_state_dict(cornn.field.state_dict())  # the same parameters, named the same
    f = lifted.field
    W, Wz, V, b = f.base.weight_hh, f.order_weights[0], f.base.weight_ih, f.base.bias_ih + f.base.bias_hh
    xs, (y, z) = torch.randn(5, 2, E), (torch.randn(2, H), torch.randn(2, H))
    mine, theirs = _run(lifted, xs, (y, z)), _run(cornn, xs, (y, z))
    for u, a, c in zip(xs, mine, theirs):
        z = z + dt * (torch.tanh(y @ W.T + z @ Wz.T + u @ V.T + b) - gamma * y - eps * z)
        y = y + dt * z
        assert _close(a, (y, z)) and _close(c, (y, z))


def test_an_old_cornn_checkpoint_loads():
    torch.manual_seed(6)
    H = 4
    old = {"weight_y": torch.randn(H, H), "weight_z": torch.randn(H, H), "input_weight": torch.randn(H, 3),
           "bias": torch.randn(H)}
    field = odernn.CoRNNField(3, H)
    field.load_state_dict(old)
    assert torch.equal(field.base.weight_hh, old["weight_y"]) and torch.equal(field.order_weights[0], old["weight_z"])
    assert torch.equal(field.base.bias_ih + field.base.bias_hh, old["bias"])


def test_order_three_with_partitioned_euler_is_the_chain_of_derivatives():
    """``h‴ = tanh(W₀h + W₁h′ + W₂h″ + Vx + b) − h − ε(h′ + h″)``: the top derivative first, then
    each lower one with the new value above it."""
    torch.manual_seed(7)
    E, H, dt, eps = 3, 4, 0.3, 0.2
    cell = odernn.cell(f"rnn:dt={dt}:order=3:damping={eps}", E, H)
    f = cell.field
    W0, (W1, W2) = f.base.weight_hh, list(f.order_weights)
    x, state = torch.randn(2, E), tuple(torch.randn(2, H) for _ in range(3))
    h, h1, h2 = state
    drive = x @ f.base.weight_ih.T + f.base.bias_ih + f.base.bias_hh
    h3 = torch.tanh(drive + h @ W0.T + h1 @ W1.T + h2 @ W2.T) - h - eps * (h1 + h2)
    h2 = h2 + dt * h3
    h1 = h1 + dt * h2
    h = h + dt * h1
    assert _close(cell(x, state), (h, h1, h2))


def test_order_t_is_a_proper_ode_system():
    """Unpartitioned RK4 on the order-3 system converges at its order: the lift is one smooth
    first-order system, not a splitting."""
    torch.manual_seed(8)
    cell = odernn.cell("gru-ode:rk4:order=3:damping=0.5", 3, 4)
    assert not odernn.cell("gru-ode:rk4:order=3:partitioned=false", 3, 4).partitioned
    field = cell.field
    x, state = torch.randn(2, 3), tuple(torch.randn(2, 4) for _ in range(3))
    with torch.no_grad():
        fine = odernn.ODECell(field, "rk4", dt=1.0, steps=256)(x, state)
        errors = [(odernn.ODECell(field, "rk4", dt=1.0, steps=m)(x, state)[0] - fine[0]).abs().max().item()
                  for m in (4, 8)]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(4, abs=0.3)


@pytest.mark.parametrize("order", [3, 4])
def test_critical_damping_puts_every_root_of_the_linear_part_at_minus_one(order):
    """With the recurrent matrices zero the Jacobian is the companion matrix of
    ``λᵗ + Σ ε_k λᵏ + 1``: undamped, ``λ³ = −1`` has roots at ``½ ± i√3/2`` (and ``λ⁴ = −1`` at
    ``±√½ ± i√½``), an unstable ODE; the default, critical damping, makes it ``(λ + 1)ᵗ``."""
    import stability
    rightmost = {}
    for damping in ("0", "critical"):
        cell = odernn.cell(f"rnn:order={order}:damping={damping}:dt=0.1", 2, 3)
        with torch.no_grad():
            for W in (cell.field.base.weight_hh, *cell.field.order_weights):
                W.zero_()
        rightmost[damping] = stability.check(cell).condition("stability of the ODE itself").value
    assert rightmost["0"] == pytest.approx(math.cos(math.pi / order), abs=1e-9)
    assert rightmost["critical"] == pytest.approx(-1.0, abs=2e-3)  # a t-fold root: eig error ~ eps^(1/t)


@pytest.mark.parametrize("field", ["rnn", "gru-ode", "urnn", "lipschitz", "antisymmetric"])
def test_parameters_grow_linearly_in_the_order(field):
    H, E = 6, 3
    counts = [sum(p.numel() for p in odernn.cell(f"{field}:order={t}" if t > 1 else field, E, H).parameters())
              for t in range(1, 6)]
    rows = odernn.cell(field, E, H).field.recurrent()[0].shape[0]
    assert [b - a for a, b in zip(counts, counts[1:])] == [rows * H] * 4  # one recurrent matrix per order


@pytest.mark.parametrize("spec, message", [
    ("lstm:order=2", "one-block field"),
    ("cornn:order=3", "one-block field"),
    ("rnn:damping=0.1", "give order= too"),
    ("rnn:order=3:damping=1,2,3", "2 numbers"),
    ("rnn:order=3:damping=soft", "critical"),
    ("rnn:order=0", "order must be an integer in 1 … 16"),
    ("urnn:map=householder", "map must be"),
])
def test_bad_order_specs_say_why(spec, message):
    with pytest.raises(odernn.CellSpecError, match=message):
        odernn.cell(spec, 3, 4)


# --- gradients: each new field with two tableaux, through the sequence engine ---------------------

@pytest.mark.parametrize("spec", ["urnn:euler", "urnn:rk4", "lipschitz:heun:dt=0.3", "lipschitz:rk4:dt=0.3",
                                  "lem:euler:dt=0.5", "lem:rk4:dt=0.5", "unicornn:euler:alpha=2:dt=0.3",
                                  "unicornn:ssprk3:alpha=2:dt=0.3", "rnn:euler:order=3:dt=0.3:damping=0.2",
                                  "gru-ode:rk4:order=4:dt=0.3"])
def test_gradcheck(spec):
    torch.manual_seed(9)
    rnn = odernn.ODERNN(spec, 2, 3)
    assert rnn.cells[0].runs_in_engine
    field = rnn.cells[0].field
    T, B = 3, 2
    x = torch.randn(T, B, 2, requires_grad=True)
    blocks = tuple(torch.randn(1, B, 3, requires_grad=True) for _ in range(field.blocks))

    def run(x, *tensors):
        out, h_n = rnn(x, field.from_blocks(tensors) if len(tensors) > 1 else tensors[0])
        return (out, *field.to_blocks(h_n))

    assert torch.autograd.gradcheck(run, (x, *blocks))
    assert torch.autograd.gradcheck(lambda *p: run(x.detach(), *(b.detach() for b in blocks)),
                                    [p for p in rnn.parameters()])
