"""``odernn.ODERNN`` behaves as ``nn.GRU``, ``nn.LSTM`` and ``nn.RNN`` wherever a model relies on them.

PyTorch's own recurrent-module behaviours, each written once and run on four implementations of
the same layer: ``torch`` (the ``torch.nn`` module itself), ``fused`` (the default ``ODERNN`` of
the equal spec, which runs PyTorch's kernel), ``engine`` (``fused=False``: the sequence engine)
and ``rk4`` (a spec with another tableau, where the behaviour does not depend on the values).
Where the values must agree, the ``ODERNN`` is compared with the ``torch.nn`` module holding the
same weights, in float64. The deliberate differences are tested at the end and listed in the
docs/odernn.md ("Where ODERNN differs from nn.GRU").
"""

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import orthogonal, spectral_norm, weight_norm
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import odernn

pytestmark = pytest.mark.usefixtures("float64")

KINDS = {nn.GRU: "gru-ode", nn.LSTM: "lstm", nn.RNN: "rnn"}
ALL = ["torch", "fused", "engine", "rk4"]
EQUAL = ["fused", "engine"]  # the ODERNNs that equal the torch.nn module exactly


def make(kind, impl, *args, **kwargs):
    """The layer under test: the ``torch.nn`` module, or an ``ODERNN`` built with the same arguments."""
    if impl == "torch":
        return kind(*args, **kwargs)
    spec = KINDS[kind] + (":rk4" if impl == "rk4" else ":euler")
    return odernn.ODERNN(spec, *args, fused=impl != "engine", **kwargs)


def twins(kind, impl, *args, **kwargs):
    """``(torch module, impl)`` holding the same weights."""
    torch.manual_seed(0)
    reference = kind(*args, **kwargs)
    ours = make(kind, impl, *args, **kwargs)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def flat(h):
    return (h,) if isinstance(h, torch.Tensor) else tuple(h)


def state(kind, shape, requires_grad=False):
    blocks = tuple(torch.randn(shape, requires_grad=requires_grad) for _ in range(2 if kind is nn.LSTM else 1))
    return blocks if kind is nn.LSTM else blocks[0]


def assert_same(a, b, tol=1e-12):
    a, b = flat(a), flat(b)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape and (u - v).abs().max() <= tol


@pytest.fixture(params=list(KINDS), ids=lambda k: k.__name__)
def kind(request):
    return request.param


@pytest.fixture(params=ALL)
def impl(request):
    return request.param


@pytest.fixture(params=EQUAL)
def equal(request):
    return request.param


# --- shapes and layouts ----------------------------------------------------------------------------

def test_default_layout_shapes(kind, impl):
    out, h = make(kind, impl, 3, 4)(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 4) and all(b.shape == (1, 2, 4) for b in flat(h))


def test_batch_first_layout_shapes(kind, impl):
    out, h = make(kind, impl, 3, 4, batch_first=True)(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 4) and all(b.shape == (1, 2, 4) for b in flat(h))  # h_n stays (L·D, B, H)


def test_unbatched_input_gives_unbatched_output(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2, bidirectional=True)
    out, h = layer(torch.randn(5, 3))
    assert out.shape == (5, 8) and all(b.shape == (4, 4) for b in flat(h))
    batched_out, batched_h = layer(torch.randn(5, 3)[:, None])
    assert batched_out.shape == (5, 1, 8)


def test_stacked_bidirectional_shapes_and_direction_order(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2, bidirectional=True).eval()
    x = torch.randn(6, 2, 3)
    out, h = layer(x)
    assert out.shape == (6, 2, 8) and all(b.shape == (4, 2, 4) for b in flat(h))
    h0 = flat(h)[0]
    # the last layer's forward direction ends at the last token, its reverse direction at the first
    assert torch.allclose(out[-1, :, :4], h0[2]) and torch.allclose(out[0, :, 4:], h0[3])


def test_carrying_the_state_continues_the_sequence(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2).eval()
    x = torch.randn(7, 2, 3)
    whole, h_whole = layer(x)
    first, h = layer(x[:3])
    rest, h_rest = layer(x[3:], h)
    assert_same(torch.cat([first, rest]), whole, 1e-12)
    assert_same(h_rest, h_whole, 1e-12)


def test_an_empty_batch_gives_empty_outputs(kind, impl):
    out, h = make(kind, impl, 3, 4)(torch.randn(5, 0, 3))
    assert out.shape == (5, 0, 4) and all(b.shape == (1, 0, 4) for b in flat(h))


def test_a_packed_sequence_comes_back_packed_in_the_callers_order(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2, bidirectional=True).eval()
    x = torch.randn(6, 3, 3)
    lengths = torch.tensor([2, 6, 4])
    out, h = layer(pack_padded_sequence(x, lengths, enforce_sorted=False))
    assert type(out).__name__ == "PackedSequence" and out.batch_sizes.tolist() == [3, 3, 2, 2, 1, 1]
    padded, back = pad_packed_sequence(out)
    assert back.tolist() == lengths.tolist()
    for k in range(3):  # each sequence as if it ran alone; h_n at its own end
        alone, h_alone = layer(x[:lengths[k], k:k + 1])
        assert (padded[:lengths[k], k] - alone[:, 0]).abs().max() <= 1e-12
        assert all((a[:, k] - b[:, 0]).abs().max() <= 1e-12 for a, b in zip(flat(h), flat(h_alone)))


def test_outputs_equal_the_torch_module(kind, equal):
    reference, ours = twins(kind, equal, 3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x, h0 = torch.randn(2, 5, 3), state(kind, (4, 2, 4))
    assert_same(ours(x, h0)[0], reference(x, h0)[0])
    assert_same(ours(x, h0)[1], reference(x, h0)[1])


# --- input the layer cannot take -------------------------------------------------------------------

@pytest.mark.parametrize("bad, error", [
    (lambda k: (torch.randn(5, 2, 4),), RuntimeError),                        # wrong input_size
    (lambda k: (torch.randn(0, 2, 3),), RuntimeError),                        # no tokens
    (lambda k: (torch.randn(5, 2, 3, 1),), ValueError),                       # 4-D input
    (lambda k: (torch.randn(3),), ValueError),                                # 1-D input
    (lambda k: (torch.randn(5, 2, 3, dtype=torch.float32),), ValueError),    # dtype mismatch
    (lambda k: (torch.randn(5, 2, 3), state(k, (1, 3, 4))), RuntimeError),    # hx for another batch size
    (lambda k: (torch.randn(5, 2, 3), state(k, (1, 2, 5))), RuntimeError),    # hx of another width
    (lambda k: (torch.randn(5, 2, 3), state(k, (2, 4))), RuntimeError),       # 2-D hx, batched input
    (lambda k: (torch.randn(5, 3), state(k, (1, 1, 4))), RuntimeError),       # 3-D hx, unbatched input
], ids=["input_size", "empty", "4-D", "1-D", "dtype", "hx-batch", "hx-width", "hx-2-D", "hx-3-D"])
def test_bad_input_raises_torchs_exception_type(kind, impl, bad, error):
    with pytest.raises(error):
        make(kind, impl, 3, 4)(*bad(kind))


def test_an_lstm_takes_exactly_two_state_tensors(impl):
    with pytest.raises(RuntimeError):
        make(nn.LSTM, impl, 3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),) * 3)


# --- construction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs", [
    ((3, 4), {"bias": 0}), ((3, 4), {"bias": "True"}), ((3, 4), {"batch_first": 1}),
    ((3.0, 4), {}), ((3, "4"), {}), ((3, 4, 2.0), {}),
], ids=["bias=0", "bias='True'", "batch_first=1", "input_size float", "hidden_size str", "num_layers float"])
def test_wrong_argument_types_are_type_errors(kind, impl, args, kwargs):
    with pytest.raises(TypeError):
        make(kind, impl, *args, **kwargs)


@pytest.mark.parametrize("args, kwargs", [
    ((0, 4), {}), ((3, 0), {}), ((3, 4, 0), {}), ((3, 4, 2), {"dropout": -0.1}), ((3, 4, 2), {"dropout": 1.5}),
    ((3, 4, 2), {"dropout": True}),
], ids=["input_size=0", "hidden_size=0", "num_layers=0", "dropout<0", "dropout>1", "dropout=True"])
def test_wrong_argument_values_are_value_errors(kind, impl, args, kwargs):
    with pytest.raises(ValueError):
        make(kind, impl, *args, **kwargs)


def test_dropout_one_is_allowed_and_one_layer_dropout_warns(kind, impl):
    layer = make(kind, impl, 3, 4, 2, dropout=1.0)
    assert layer.dropout == 1.0
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        make(kind, impl, 3, 4, 1, dropout=0.5)


def test_factory_keywords_place_and_type_the_parameters(kind, impl):
    layer = make(kind, impl, 3, 4, 2, device="meta", dtype=torch.float32)
    assert all(p.device.type == "meta" and p.dtype == torch.float32 for p in layer.parameters())


def test_proj_size_is_refused_except_for_the_lstm(impl):
    for kind in (nn.GRU, nn.RNN):
        with pytest.raises(ValueError, match="proj_size"):
            make(kind, impl, 3, 4, proj_size=2)


def test_an_lstm_projection_is_nn_lstms(impl):
    """``proj_size``: ``h`` has P entries, ``h = W_hr (o ⊙ tanh c)``; from_torch and back keep it."""
    torch.manual_seed(4)
    reference = nn.LSTM(3, 5, num_layers=2, proj_size=2, bidirectional=True, batch_first=True)
    ours = make(nn.LSTM, impl, 3, 5, num_layers=2, proj_size=2, bidirectional=True, batch_first=True)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]
    x = torch.randn(4, 6, 3, requires_grad=True)
    h0 = (torch.randn(4, 4, 2), torch.randn(4, 4, 5))
    out, (h, c) = ours(x, h0)
    assert out.shape == (4, 6, 4) and h.shape == (4, 4, 2) and c.shape == (4, 4, 5)
    with pytest.raises(RuntimeError):
        ours(x, (torch.randn(4, 4, 5), torch.randn(4, 4, 5)))  # h must have proj_size entries
    if impl in EQUAL:
        ours.load_state_dict(reference.state_dict())
        expected, (h2, c2) = reference(x, h0)
        out, (h, c) = ours(x, h0)
        assert_same((out, h, c), (expected, h2, c2))
        grads = [torch.autograd.grad(o.square().sum() + k.sum(), [x, *m.parameters()])
                 for o, k, m in ((out, c, ours), (expected, c2, reference))]
        assert all((a - b).abs().max() <= 1e-12 for a, b in zip(*grads))
        back = odernn.from_torch(reference).to_torch()
        assert back.proj_size == 2 and all(torch.equal(a, b) for a, b in zip(back.parameters(), reference.parameters()))


def test_the_same_seed_gives_the_same_initial_weights(kind, impl):
    torch.manual_seed(3)
    reference = kind(3, 4, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    ours = make(kind, impl, 3, 4, num_layers=2, bidirectional=True)
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), ours.parameters()))


# --- parameters and state ---------------------------------------------------------------------------

def test_parameter_names_order_and_shapes_are_torchs(kind, impl):
    reference = kind(3, 4, num_layers=2, bidirectional=True, bias=False)
    ours = make(kind, impl, 3, 4, num_layers=2, bidirectional=True, bias=False)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]


def test_state_dicts_load_both_ways(kind, impl):
    reference = kind(3, 4, num_layers=2)
    ours = make(kind, impl, 3, 4, num_layers=2)
    ours.load_state_dict(reference.state_dict())
    reference.load_state_dict(ours.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), ours.parameters()))


def test_all_weights_lists_each_layer_and_directions_parameters(kind, impl):
    ours, reference = make(kind, impl, 3, 4, num_layers=2, bidirectional=True), kind(3, 4, 2, bidirectional=True)
    assert [[w.shape for w in ws] for ws in ours.all_weights] == [[w.shape for w in ws] for ws in reference.all_weights]
    assert ours.all_weights[3][1] is ours.weight_hh_l1_reverse


def test_flatten_parameters_changes_nothing(kind, impl):
    layer = make(kind, impl, 3, 4).eval()
    x = torch.randn(5, 2, 3)
    before = layer(x)[0]
    assert layer.flatten_parameters() is None
    assert torch.equal(layer(x)[0], before)


def test_a_replaced_parameter_is_used(kind, equal):
    reference, ours = twins(kind, equal, 3, 4)
    new = torch.randn_like(reference.weight_hh_l0)
    reference.weight_hh_l0 = nn.Parameter(new.clone())
    ours.weight_hh_l0 = nn.Parameter(new.clone())
    x = torch.randn(5, 2, 3)
    assert_same(ours(x)[0], reference(x)[0])


def test_functional_call_and_assigned_state_dicts_are_used(kind, equal):
    reference, ours = twins(kind, equal, 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    weights = {name: torch.randn_like(p) for name, p in reference.named_parameters()}
    expected = torch.func.functional_call(reference, weights, (x,))[0]
    assert_same(torch.func.functional_call(ours, weights, (x,))[0], expected)
    ours.load_state_dict(weights, assign=True)
    assert_same(ours(x)[0], expected)


def test_conversion_and_the_input_dtype_follow_the_module(kind, impl):
    layer = make(kind, impl, 3, 4).float()
    out, h = layer(torch.randn(5, 2, 3, dtype=torch.float32))
    assert out.dtype == torch.float32 and all(b.dtype == torch.float32 for b in flat(h))


def test_pickle_and_deepcopy_give_an_equal_independent_module(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2).eval()
    x = torch.randn(5, 2, 3)
    for twin in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert_same(twin(x)[0], layer(x)[0], 0)
        with torch.no_grad():
            twin.weight_hh_l0.add_(1)
        assert not torch.equal(twin(x)[0], layer(x)[0])


def test_a_call_leaves_nothing_behind_and_copies_stay_possible(kind, impl):
    """What a call was given (functional_call's tensors, a hypernetwork's output) is kept alive no
    longer than until the next call (nn.GRU keeps it in its flat weights that long), and deepcopy
    and pickle work after such calls."""
    import gc
    import weakref
    layer = make(kind, impl, 3, 4)
    x = torch.randn(5, 2, 3)
    weights = {name: p.detach() * 2 for name, p in layer.named_parameters()}
    refs = [weakref.ref(w) for w in weights.values()]
    torch.func.functional_call(layer, weights, (x,))
    del weights
    layer(x)
    gc.collect()
    assert all(ref() is None for ref in refs)
    names = [name for name, _ in layer.named_parameters()]
    torch.func.grad(lambda p: torch.func.functional_call(layer, dict(zip(names, p)), (x,))[0].sum())(
        tuple(layer.parameters()))
    assert_same(copy.deepcopy(layer)(x)[0], layer(x)[0], 0)
    assert_same(pickle.loads(pickle.dumps(layer))(x)[0], layer(x)[0], 0)


def test_threads_may_share_a_layer(kind, impl):
    """Several threads running one module at once (inference servers, data-parallel threads) get
    each its own result, as with nn.GRU: no call changes anything another call reads."""
    import sys
    import threading
    layer = make(kind, impl, 4, 4).eval()
    xs = [torch.randn(3, 2, 4) for _ in range(6)]
    with torch.no_grad():
        expected = [layer(x)[0] for x in xs]
    failures = []

    def work(k):
        for _ in range(60):
            with torch.no_grad():
                try:
                    if not torch.equal(layer(xs[k])[0], expected[k]):
                        failures.append("values")
                except Exception as err:  # noqa: BLE001 — any error is a failure to report
                    failures.append(repr(err))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished (a deadlock)"
    assert not failures, failures[:3]


# --- attributes a model changes after construction --------------------------------------------------

def test_batch_first_set_after_construction_is_honoured(kind, equal):
    reference, ours = twins(kind, equal, 3, 4)
    reference.batch_first = ours.batch_first = True
    x = torch.randn(2, 6, 3)
    assert_same(ours(x)[0], reference(x)[0])


def test_dropout_set_after_construction_is_honoured(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2, dropout=0.5).train()
    layer.dropout = 0.0
    x = torch.randn(5, 2, 3)
    assert torch.equal(layer(x)[0], layer(x)[0])


def test_dropout_acts_between_layers_in_training_only(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2, dropout=1.0)
    x = torch.randn(5, 2, 3)
    dropped = layer.train()(x)[0]
    with torch.no_grad():  # dropout 1 zeroes the second layer's input: as if its input weights were 0
        layer.weight_ih_l1.zero_()
    assert_same(dropped, layer.eval()(x)[0], 1e-12)
    layer.dropout = 0.5
    assert torch.equal(layer(x)[0], layer(x)[0])  # evaluation mode: no dropout


def test_dropout_masks_are_torchs_for_the_same_seed(kind, equal):
    reference, ours = twins(kind, equal, 3, 4, num_layers=3, dropout=0.5)
    x = torch.randn(5, 2, 3)
    torch.manual_seed(1)
    expected = reference(x)[0]
    torch.manual_seed(1)
    assert_same(ours(x)[0], expected)


# --- gradients --------------------------------------------------------------------------------------

def test_gradients_equal_the_torch_module(kind, equal):
    reference, ours = twins(kind, equal, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, requires_grad=True)
    h0 = state(kind, (4, 2, 4), requires_grad=True)
    grads = []
    for layer in (reference, ours):
        out, h = layer(x, h0)
        loss = out.square().sum() + sum(b.sum() for b in flat(h))
        grads.append(torch.autograd.grad(loss, [x, *flat(h0), *layer.parameters()]))
    assert all((a - b).abs().max() <= 1e-12 for a, b in zip(*grads))


def test_second_derivatives_equal_the_torch_module(kind, equal):
    """A gradient penalty on the input (a backward with create_graph=True, differentiated again)."""
    reference, ours = twins(kind, equal, 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    grads = []
    for layer in (reference, ours):
        out, _ = layer(x)
        (g,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        grads.append(torch.autograd.grad(out.sum() + g.square().sum(), list(layer.parameters())))
    assert all((a - b).abs().max() <= 1e-11 for a, b in zip(*grads))
    assert grads[1][1].abs().max() > 0


def test_second_derivatives_pass_gradgradcheck(kind, impl):
    layer = make(kind, impl, 2, 2)
    x = torch.randn(3, 2, 2, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]

    def run(x, *weights):
        out, h = torch.func.functional_call(layer, dict(zip(names, weights)), (x,))
        return (out, *flat(h))
    # fast mode: random projections of the second derivatives (test_sequence.py's _second_order_check)
    assert torch.autograd.gradgradcheck(run, (x, *layer.parameters()), fast_mode=True)


def test_no_grad_outputs_need_no_gradient(kind, impl):
    with torch.no_grad():
        out, h = make(kind, impl, 3, 4)(torch.randn(5, 2, 3))
    assert not out.requires_grad and not any(b.requires_grad for b in flat(h))


def test_the_initial_state_gets_its_gradient(kind, impl):
    layer = make(kind, impl, 3, 4)
    h0 = state(kind, (1, 2, 4), requires_grad=True)
    out, _ = layer(torch.randn(5, 2, 3), h0)
    grads = torch.autograd.grad(out.sum(), flat(h0), allow_unused=True)
    assert grads[0] is not None and grads[0].abs().max() > 0


# --- parametrisations -------------------------------------------------------------------------------

class _Symmetric(nn.Module):
    def forward(self, w):
        return w + w.flip(0)


@pytest.mark.parametrize("apply", [
    lambda m: weight_norm(m, "weight_hh_l0"),
    lambda m: weight_norm(m, "weight_ih_l1", dim=1),
    lambda m: orthogonal(m, "weight_hh_l0"),
    lambda m: parametrize.register_parametrization(m, "weight_hh_l1", _Symmetric()),
    lambda m: spectral_norm(m, "weight_hh_l0").eval(),
], ids=["weight_norm", "weight_norm dim=1", "orthogonal", "own", "spectral_norm eval"])
def test_a_parametrised_weight_is_the_torch_modules(kind, equal, apply):
    reference, ours = twins(kind, equal, 3, 4, num_layers=2)
    torch.manual_seed(5)
    apply(reference)
    torch.manual_seed(5)
    apply(ours)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3)
    outs = [layer(x)[0] for layer in (reference, ours)]
    assert_same(outs[1], outs[0])
    grads = [torch.autograd.grad(out.sum(), list(layer.parameters())) for out, layer in zip(outs, (reference, ours))]
    assert all((a - b).abs().max() <= 1e-12 for a, b in zip(*grads))
    parametrize.remove_parametrizations(ours, next(iter(ours.parametrizations)))
    assert isinstance(ours.weight_hh_l0, nn.Parameter) or isinstance(ours.weight_hh_l1, nn.Parameter)


def test_every_path_runs_a_parametrised_layer(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2)
    spectral_norm(layer, "weight_hh_l0")
    weight_norm(layer, "weight_ih_l1")
    out, _ = layer(torch.randn(5, 2, 3))
    out.sum().backward()
    assert layer.parametrizations.weight_ih_l1.original1.grad.abs().max() > 0


# --- compilers --------------------------------------------------------------------------------------

def test_torch_compile_gives_the_eager_values(kind, impl):
    layer = make(kind, impl, 3, 4, num_layers=2)
    model = nn.Sequential(nn.Linear(3, 3))
    x = torch.randn(5, 2, 3)

    def run(x):
        out, h = layer(model(x))
        return out.sum() + flat(h)[0].sum()
    compiled = torch.compile(run, backend="eager")
    assert (compiled(x) - run(x)).abs() <= 1e-12


def test_torch_compile_does_not_trace_into_the_layer(impl):
    """The layer is one opaque call to Dynamo (as nn.GRU is): what it captures around the layer
    does not grow with the tokens, and compiles in about a second (the token loop unrolled took
    tens of seconds; benchmarks/compile_speed.py measures the whole model)."""
    import time
    layer = make(nn.GRU, impl, 3, 4)
    head = nn.Linear(4, 2)
    captured = []

    def backend(graph_module, example_inputs):
        captured.append(len(graph_module.graph.nodes))
        return graph_module.forward

    def run(x):
        out, h = layer(x)
        return head(out).sum() + h.sum()
    sizes = {}
    for T in (4, 40):
        torch._dynamo.reset()
        captured.clear()
        x = torch.randn(T, 2, 3)
        start = time.perf_counter()
        result = torch.compile(run, backend=backend, dynamic=False)(x)
        assert time.perf_counter() - start < 10
        assert (result - run(x)).abs() <= 1e-12
        sizes[T] = sum(captured)
    assert sizes[4] == sizes[40] < 30


# --- single steps: the cells ------------------------------------------------------------------------

CELLS = {nn.GRUCell: "gru-ode", nn.LSTMCell: "lstm", nn.RNNCell: "rnn"}


@pytest.mark.parametrize("impl", ["torch", "euler", "rk4"])
@pytest.mark.parametrize("kind", list(CELLS), ids=lambda k: k.__name__)
@pytest.mark.parametrize("bad, error", [
    (lambda k: (torch.randn(2, 4),), RuntimeError),                                       # wrong input_size
    (lambda k: (torch.randn(2, 2, 3),), ValueError),                                      # 3-D input
    (lambda k: (torch.randn(2, 3), state(k is nn.LSTMCell and nn.LSTM, (2, 5))), RuntimeError),  # hx width
], ids=["input_size", "3-D", "hx-width"])
def test_a_cells_bad_input_raises_torchs_exception_type(kind, impl, bad, error):
    cell = kind(3, 4) if impl == "torch" else odernn.cell(f"{CELLS[kind]}:{impl}", 3, 4)
    with pytest.raises(error):
        cell(*bad(kind))


@pytest.mark.parametrize("kind", list(CELLS), ids=lambda k: k.__name__)
def test_a_cell_takes_unbatched_input_as_torchs_does(kind):
    reference = kind(3, 4)
    ours = odernn.from_torch(reference)
    x = torch.randn(3)
    assert_same(ours(x), reference(x))


def test_a_cells_interval_changed_after_construction_is_honoured_on_every_path():
    """The default layer equals nn.GRU only while Δ = 1: a changed Δ leaves PyTorch's kernel."""
    torch.manual_seed(6)
    fused = odernn.from_torch(nn.GRU(3, 4))
    x = torch.randn(5, 2, 3)
    before = fused(x)[0]
    fused.cells[0].dt = 0.5
    assert fused.torch_equivalent is None
    expected = fused(x, dt=0.5)[0]  # the engine with an explicit Δ
    assert_same(fused(x)[0], expected)
    assert not torch.allclose(expected, before)
    with pytest.raises(ValueError):
        fused.cells[0].dt = -1.0
    with pytest.raises(AttributeError, match="tableau cannot change"):
        fused.cells[0].tableau = "rk4"


# --- deliberate differences (docs/odernn.md: "Where ODERNN differs from nn.GRU") -----------------------------

@pytest.mark.parametrize("attribute, value", [("num_layers", 3), ("hidden_size", 5), ("input_size", 2),
                                              ("bidirectional", True), ("bias", False), ("proj_size", 2)])
def test_layout_attributes_cannot_change_after_construction(kind, attribute, value):
    """nn.GRU accepts the assignment and then fails or computes with the old parameters."""
    layer = make(kind, "engine", 3, 4, num_layers=2)
    with pytest.raises(AttributeError, match=f"{attribute} cannot change after construction"):
        setattr(layer, attribute, value)


@pytest.mark.parametrize("attribute, value, error", [("dropout", 2.0, ValueError), ("batch_first", "yes", TypeError),
                                                     ("grad", "magic", ValueError), ("fused", 1, TypeError)])
def test_runtime_attributes_are_checked_on_assignment(attribute, value, error):
    layer = make(nn.GRU, "engine", 3, 4)
    with pytest.raises(error):
        setattr(layer, attribute, value)


def test_bidirectional_must_be_a_bool(kind):
    """nn.GRU reads any truthy value (bidirectional="False" gives two directions)."""
    with pytest.raises(TypeError, match="bidirectional"):
        make(kind, "engine", 3, 4, bidirectional="False")


def test_a_one_block_state_given_as_a_tuple_is_refused_with_its_shape(impl):
    """nn.GRU fails on ``hx.dim()`` with an AttributeError; ODERNN says what hx must be."""
    layer = make(nn.GRU, impl, 3, 4)
    error = AttributeError if impl == "torch" else odernn.InputError
    with pytest.raises(error):
        layer(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),))
    if impl != "torch":
        with pytest.raises(odernn.InputError, match=r"hx for the GRUODEField is a tensor of shape \(1, 2, 4\)"):
            layer(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),))


def test_torch_jit_script_is_refused_with_one_message(kind):
    torch.jit.script(kind(3, 4))  # nn.GRU scripts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(RuntimeError, match="use torch.compile"):
            torch.jit.script(nn.Sequential(make(kind, "engine", 3, 4)))


def test_spectral_norm_in_training_runs_its_power_iteration_once_per_call():
    """nn.GRU evaluates a parametrised weight four times per forward (``hasattr`` and ``getattr``,
    twice, in its flat-weight refresh), so in training spectral_norm's power iteration runs four
    times per call there; ODERNN evaluates it once, as spectral_norm documents. With four
    iterations per call ODERNN gives nn.GRU's values."""
    torch.manual_seed(0)
    reference = nn.GRU(3, 4)
    ours = odernn.from_torch(reference)
    spectral_norm(reference, "weight_hh_l0", n_power_iterations=1)
    spectral_norm(ours, "weight_hh_l0", n_power_iterations=4)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3)
    for _ in range(3):
        assert_same(ours(x)[0], reference(x)[0])
