"""Devices, precisions, the per-epoch schedule, fused elementwise math and CUDA graphs.

Without a GPU the CUDA tests skip; the CPU shows the rest: device resolution and its errors,
bf16 autocast (the same code path as on CUDA), compiled elementwise math (C++ on a CPU instead of
Triton), and the bookkeeping of the CUDA-graph cache with the capture itself stubbed out.
``benchmarks/cuda_check.py`` runs the CUDA equality checks on a GPU machine as a script."""

import json
import math

import pytest
import torch

import odernn
from textlm.checkpoint import load_checkpoint
from textlm.evaluate import sample
from textlm.model import LanguageModel
from textlm.runtime import DeviceError, Runtime, resolve_device
from textlm.train import TrainConfig, Trainer

from test_cli import run

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


# --- devices ------------------------------------------------------------------------------------

def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(DeviceError, match="unknown device"):
            resolve_device(bad)
    with pytest.raises(DeviceError, match="--precision fp8"):
        Runtime.of("cpu", "fp8")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_says_so(name):
    with pytest.raises(DeviceError, match=r"no CUDA here .*use --device cpu"):
        resolve_device(name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(TrainConfig(corpus="tinyshakespeare", train_tokens=8000, valid_tokens=500, cell="gru-ode:midpoint", hidden=16,
                                  batch_size=4, bptt=16, max_tokens=4 * 16 * 4, out=str(out), progress=False,
                                  eval_tokens=500, precision="bf16", device="cpu"))
    trainer.run()
    return out


@no_cuda
@pytest.mark.parametrize("command", [
    ["train", "--corpus", "tinyshakespeare"],
    ["evaluate", "CHECKPOINT"],
    ["generate", "CHECKPOINT"],
    ["stability", "check", "gru-ode:rk4"],
    ["compare", "--cells", "torch-gru", "--out", "OUT"],
])
def test_every_command_refuses_cuda_without_it_in_one_line(command, checkpoint, tmp_path):
    args = [str(checkpoint) if a == "CHECKPOINT" else str(tmp_path) if a == "OUT" else a for a in command]
    code, _, err = run(*args, "--device", "cuda")
    assert code == 2 and err.count("\n") == 1 and "no CUDA here" in err, err


@no_cuda
def test_a_run_resumes_on_its_own_device_unless_told_otherwise(checkpoint, tmp_path):
    """A run from a GPU, resumed on a machine without one: one line saying so, then ``--device cpu``."""
    import shutil

    from textlm.checkpoint import save_checkpoint
    run_dir = tmp_path / "from-gpu"
    shutil.copytree(checkpoint, run_dir)
    data = load_checkpoint(run_dir)
    data["config"]["device"] = "cuda:0"
    save_checkpoint(data, run_dir / "checkpoint.pt")
    code, _, err = run("train", "--out", str(run_dir), "--resume", "--max-tokens", "512", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "--device cuda:0: no CUDA here" in err
    code, _, err = run("train", "--out", str(run_dir), "--resume", "--max-tokens", "512", "--no-progress",
                       "--device", "cpu", "--json")
    assert code == 0, err
    assert load_checkpoint(run_dir)["config"]["device"] == "cpu"


@pytest.mark.slow
def test_a_run_records_its_device_and_precision(checkpoint):
    data = load_checkpoint(checkpoint)
    assert data["config"]["device"] == "cpu" and data["config"]["precision"] == "bf16"
    assert data["rng"]["cpu"].dtype == torch.uint8
    result = json.loads((checkpoint / "result.json").read_text())
    assert result["device"] == "cpu" and result["precision"] == "bf16"
    code, stdout, err = run("evaluate", str(checkpoint), "--prompts", "2", "--json", "--device", "cpu")
    assert code == 0, err
    evaluated = json.loads(stdout)
    assert evaluated["precision"] == "bf16" and evaluated["device"] == "cpu"  # the run's own precision
    code, stdout, err = run("evaluate", str(checkpoint), "--prompts", "2", "--json", "--precision", "float64")
    assert code == 0, err
    exact = json.loads(stdout)
    # the same weights judged in float64: bf16 round-off moves the loss, but only a little
    assert exact["precision"] == "float64" and abs(exact["loss"] - evaluated["loss"]) < 0.02


def test_checkpoints_from_before_devices_and_precisions_load():
    old = TrainConfig.from_dict({"corpus": "ptb", "dtype": "float64"})
    assert old.precision == "float64" and old.device == "cpu"  # they were trained on the CPU
    runtime = Runtime.of("cpu")
    saved = torch.Generator().manual_seed(7).get_state()  # the bare CPU state old checkpoints hold
    runtime.set_rng_state(saved)
    a = torch.rand(3)
    torch.rand(5)  # move the stream on
    runtime.set_rng_state(saved)
    assert torch.equal(a, torch.rand(3)) and torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(7)))


# --- bf16 ---------------------------------------------------------------------------------------

def _loss_and_grads(rnn, x, h0, bf16=False):
    """Outputs, final blocks and the gradients of a loss of both; with ``bf16`` the forward pass
    under CPU autocast (and the backward outside it, as a training step runs)."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out, h_n = rnn(x, h0)
    blocks = (h_n,) if isinstance(h_n, torch.Tensor) else h_n
    loss = out.float().square().mean() + sum(b.float().sin().sum() for b in blocks)
    grads = torch.autograd.grad(loss, [x, *rnn.parameters()])
    return out.detach(), [b.detach() for b in blocks], grads


@pytest.mark.parametrize("spec", ["gru-ode:rk4", "lstm:euler", "rnn:midpoint:steps=2", "antisymmetric:ssprk3"])
@pytest.mark.parametrize("grad", ["backprop", "checkpoint"])
def test_bf16_autocast_engine_is_float64_to_bf16_round_off(spec, grad):
    """Under autocast the products and activations are bfloat16, the state float32: the outputs
    and every gradient are the float64 ones to bf16 round-off, and visibly not float32's."""
    torch.manual_seed(0)
    rnn = odernn.ODERNN(spec, 12, 24, num_layers=2, fused=False, grad=grad)
    x, h0 = torch.randn(20, 5, 12), None
    out, blocks, grads = _loss_and_grads(rnn, x, h0, bf16=True)
    exact = odernn.ODERNN(spec, 12, 24, num_layers=2, fused=False, grad=grad).double()
    exact.load_state_dict(rnn.state_dict())
    ref_out, ref_blocks, ref_grads = _loss_and_grads(exact, x.double(), h0)
    f32_out, _, _ = _loss_and_grads(rnn, x, h0)
    assert out.dtype == torch.float32 and all(b.dtype == torch.float32 for b in blocks)
    assert all(g.dtype == torch.float32 for g in grads)

    def rel(a, b):
        return float((a.double() - b).norm() / b.norm())
    assert rel(out, ref_out) < 2e-2 and all(rel(a, b) < 2e-2 for a, b in zip(blocks, ref_blocks))
    assert all(rel(a, b) < 5e-2 for a, b in zip(grads, ref_grads))
    assert rel(f32_out, ref_out) < 1e-5 < rel(out, ref_out)  # bf16 did run


@pytest.mark.parametrize("spec, grad", [("gru-ode:dopri5:rtol=1e-4", "backprop"),
                                        ("rnn:backward-euler", "backprop"), ("gru-ode:rk4", "adjoint")])
def test_token_by_token_solves_run_whole_in_float32_under_autocast(spec, grad):
    torch.manual_seed(1)
    rnn = odernn.ODERNN(spec, 6, 10, grad=grad)
    x = torch.randn(8, 3, 6)
    plain = _loss_and_grads(rnn, x, None)
    autocast = _loss_and_grads(rnn, x, None, bf16=True)
    assert torch.equal(plain[0], autocast[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[2], autocast[2]))


def test_bf16_training_follows_float32_training(tmp_path):
    losses = {}
    for precision in ("float32", "bf16"):
        trainer = Trainer(TrainConfig(corpus="tinyshakespeare", train_tokens=20_000, valid_tokens=2000, cell="gru-ode:rk4", hidden=32,
                                      batch_size=8, bptt=16, max_tokens=8 * 16 * 20, lr=1e-2,
                                      out=str(tmp_path / precision),
                                      progress=False, eval_tokens=2000, log_every=1, precision=precision,
                                      device="cpu"))
        result = trainer.run()
        losses[precision] = [json.loads(line)["train_loss"] for line in open(tmp_path / precision / "metrics.jsonl")
                             if "train_loss" in line]
        losses[precision + " valid"] = result["valid_loss"]
    assert losses["float32"][-1] < losses["float32"][0] - 0.3  # it learns
    # measured: 5e-4 apart at most over the run, 1e-4 in validation loss
    assert max(abs(a - b) for a, b in zip(losses["float32"], losses["bf16"])) < 0.01
    assert abs(losses["float32 valid"] - losses["bf16 valid"]) < 0.01


@pytest.mark.parametrize("cell", ["torch-rnn", "torch-lstm", "torch-gru", "lstm:euler"])
def test_every_layer_kind_trains_under_bf16_autocast_on_a_cpu(cell):
    """oneDNN builds no bfloat16 LSTM without AVX512-BF16: PyTorch's layers run float32 there."""
    torch.manual_seed(5)
    model = LanguageModel(11, cell, layers=2, hidden=8)
    idx = torch.randint(0, 11, (3, 6))
    with Runtime.of("cpu", "bf16").autocast():
        _, loss, state = model(idx, idx)
    loss.backward()
    assert math.isfinite(loss.item()) and all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- the learning-rate schedule -----------------------------------------------------------------

def test_step_schedule_halves_the_rate_every_epoch_after_the_first_k(tmp_path):
    trainer = Trainer(TrainConfig(corpus="tinyshakespeare", train_tokens=2000, valid_tokens=2000, cell="torch-gru", hidden=8,
                                  batch_size=4, bptt=16, epochs=4, optimizer="sgd", lr=1.0, schedule="step",
                                  decay_after=2, decay=0.5, out=str(tmp_path), progress=False, log_every=1,
                                  eval_tokens=200, device="cpu"))
    per_epoch = (2000 // 4 - 1) // 16
    assert trainer.steps_per_epoch == per_epoch and trainer.total_steps == 4 * per_epoch
    result = trainer.run()
    assert result["epochs"] == pytest.approx(4) and result["step"] == 4 * per_epoch
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rates = {(r["epoch"], r["lr"]) for r in records if "lr" in r}
    assert rates == {(0, 1.0), (1, 1.0), (2, 0.5), (3, 0.25)}  # Zaremba: ×½ per epoch from the (k+1)-th


def test_a_float64_run_extends_by_epochs_and_evaluates_in_bf16(tmp_path):
    settings = dict(corpus="tinyshakespeare", train_tokens=2000, valid_tokens=2000, cell="gru-ode:euler", hidden=8, batch_size=4,
                    bptt=16, epochs=1, out=str(tmp_path), progress=False, eval_tokens=200, device="cpu",
                    precision="float64")
    first = Trainer(TrainConfig(**settings)).run()
    assert first["epochs"] == pytest.approx(1)
    code, stdout, err = run("train", "--out", str(tmp_path), "--resume", "--epochs", "2", "--no-progress", "--json")
    assert code == 0, err
    assert json.loads(stdout)["epochs"] == pytest.approx(2) and json.loads(stdout)["step"] == 2 * first["step"]
    code, stdout, err = run("evaluate", str(tmp_path), "--prompts", "2", "--json", "--precision", "bf16")
    assert code == 0, err
    assert json.loads(stdout)["precision"] == "bf16"


# --- fused elementwise math ---------------------------------------------------------------------

@pytest.mark.slow
def test_compiled_elementwise_math_equals_the_eager_engine(monkeypatch, spec="gru-ode:rk4"):
    """Inductor's C++ kernels for a field's elementwise functions (about 15 s of this suite's CPU
    on a cold cache, and 3–6 s more a field): one field here; every field of its SPECS, compiled
    against float64, is checked by ``python benchmarks/cuda_check.py --device cpu``. The vector
    instruction set is the one the CPU's flags name, as ``TORCHINDUCTOR_VEC_ISA_OK=1`` takes it:
    Inductor's own probe builds and loads a test library per instruction set, each in a fresh
    interpreter (5 s of a cold cache); the kernels themselves are built and compared all the same."""
    import torch._inductor.config
    from torch._dynamo.utils import counters
    monkeypatch.setattr(torch._inductor.config.cpp, "vec_isa_ok", True)
    counters.clear()
    torch.manual_seed(2)
    eager = odernn.ODERNN(spec, 5, 7, fused=False).double()
    compiled = odernn.ODERNN(spec, 5, 7, fused=False, compile_elementwise=True).double()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    a, b = _loss_and_grads(eager, x, None), _loss_and_grads(compiled, x, None)
    assert (a[0] - b[0]).abs().max() < 1e-12
    assert all((g - h).abs().max() < 1e-12 for g, h in zip(a[2], b[2]))
    assert counters["stats"]["unique_graphs"] >= 4  # the four elementwise functions did compile


@pytest.fixture
def traced_not_built(monkeypatch):
    """``torch.compile`` with Dynamo's ``eager`` backend: the same tracing, guards and recompile
    limit, without building C++ kernels (seconds each on a cold cache), for the tests of what the
    engine does around the compiled functions rather than of their numbers. Nothing traced here
    outlives the test: neither the engine's functions nor Dynamo's cache entries for them (an
    entry for another backend would use up one of a later compile's recompiles)."""
    import functools

    import torch._dynamo
    from odernn import _engine
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(_engine._FieldMath, "_compiled", {})
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("spec", ["gru-ode:rk4", "gru-ode:dopri5:rtol=1e-6"])
def test_second_derivatives_through_compiled_math_run_it_eagerly(monkeypatch, spec):
    """A graph-building backward runs the sequence again with the field's math uncompiled (a
    compiled function's backward is not differentiable again), an adaptive cell's too: its steps'
    program is inside it (the adaptive cell raised, Dynamo refusing the second pass). AOTAutograd's
    ``aot_eager`` backend traces as Inductor does, without building kernels."""
    import functools

    import torch._dynamo
    from odernn import _engine
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    monkeypatch.setattr(_engine._FieldMath, "_compiled", {})
    try:
        results = []
        for compiled in (False, True):
            torch.manual_seed(0)
            rnn = odernn.ODERNN(spec, 3, 4, fused=False, compile_elementwise=compiled).double()
            x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
            out, _ = rnn(x)
            g, = torch.autograd.grad(out.square().sum(), x, create_graph=True)
            results.append(torch.autograd.grad(g.square().sum(), [x, *rnn.parameters()]))
        assert all((a - b).abs().max() < 1e-12 for a, b in zip(*results))
    finally:
        torch._dynamo.reset()


def test_compiled_math_keeps_no_field_alive(traced_not_built):
    import gc
    import weakref
    rnn = odernn.ODERNN("gru-ode:euler", 3, 4, fused=False, compile_elementwise=True)
    rnn(torch.randn(2, 1, 3))
    field = weakref.ref(rnn.cells[0].field)
    del rnn
    gc.collect()
    assert field() is None


def test_compiled_math_falls_back_to_eager_at_the_recompile_limit(traced_not_built):
    import torch._dynamo
    # torch's own patch: pytest's monkeypatch (9.2) deletes a config module's attribute on undo,
    # which hides it from Dynamo for the rest of the process
    with torch._dynamo.config.patch(recompile_limit=1):
        torch._dynamo.reset()
        torch.manual_seed(6)
        single = odernn.ODERNN("gru-ode:euler", 3, 4, fused=False, compile_elementwise=True)
        double = odernn.ODERNN("gru-ode:euler", 3, 4, fused=False, compile_elementwise=True).double()
        eager = odernn.ODERNN("gru-ode:euler", 3, 4, fused=False).double()
        eager.load_state_dict(double.state_dict())
        x = torch.randn(4, 2, 3)
        single(x)
        with pytest.warns(RuntimeWarning, match="recompile limit"):
            out = double(x.double())[0]  # float64 after float32: a second variant, past the limit of one
        assert torch.equal(out, eager(x.double())[0])
    torch._dynamo.reset()


# --- CUDA graphs: the cache, with the capture stubbed (the capture itself needs a GPU) ------------

def test_graph_cache_captures_a_shape_the_second_time_and_keeps_the_last_six(monkeypatch):
    """The capture is stubbed by what a CUDA graph does to its caller: the warm-up draws random
    numbers, and every replay writes its outputs into the same static buffers."""
    captured = []

    def capture(module, sample, **kwargs):  # stands in for torch.cuda.make_graphed_callables
        captured.append(tuple(t.shape for t in sample))
        torch.rand(10)  # the warm-up passes' dropout masks
        buffers = {}

        def replay(*args):
            outputs = module(*args)
            flat, spec = torch.utils._pytree.tree_flatten(outputs)
            for i, o in enumerate(flat):
                buffers.setdefault(i, torch.empty_like(o)).copy_(o.detach())
            return torch.utils._pytree.tree_unflatten([buffers[i] for i in range(len(flat))], spec)
        return replay
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    torch.manual_seed(3)
    rnn = odernn.ODERNN("lstm:euler", 4, 6, fused=False)
    graphs = rnn.graphs

    def call(T, B, hx=None):
        x = torch.randn(T, B, 4, requires_grad=True)
        before = torch.get_rng_state()
        out, h_n = graphs(rnn, x, hx, None)
        assert torch.equal(before, torch.get_rng_state())  # a capture leaves the random stream alone
        ref_out, ref_h = rnn.eager_forward(x, hx)
        assert torch.allclose(out, ref_out) and all(torch.allclose(a, b) for a, b in zip(h_n, ref_h))
        return out, h_n
    _, state = call(8, 2)
    assert graphs.captures == 0  # first sight: eager
    first, state = call(8, 2)
    assert graphs.captures == 1 and captured == [((8, 2, 4),)]
    kept = first.clone()
    call(8, 2)
    assert graphs.captures == 1  # replayed
    assert torch.equal(first, kept)  # the next replay did not write into what the caller kept
    call(8, 2, state)  # with a carried (h, c): another signature
    call(8, 2, state)
    assert captured[-1] == ((8, 2, 4), (1, 2, 6), (1, 2, 6))
    call(3, 2)  # the last, shorter batch: eager, and captured only if it comes back
    assert graphs.captures == 2
    for T in (4, 5, 6, 7, 9, 10):
        call(T, 2)
        call(T, 2)
    assert graphs.captures == 8 and len(graphs.graphs) == 6
    rnn.eval()
    with torch.no_grad():
        call(8, 2)
    assert graphs.captures == 8  # evaluation mode is a signature of its own


def test_only_engine_layers_are_captured():
    """Implicit and adaptive cells synchronise with the host (a capture forbids it), and the
    continuous adjoint solves outside the engine: those run eagerly."""
    assert odernn.ODERNN("gru-ode:rk4", 3, 4, cuda_graphs=True).graphable
    assert not odernn.ODERNN("gru-ode:rk4", 3, 4, cuda_graphs=True, grad="adjoint").graphable
    assert not odernn.ODERNN("gru-ode:dopri5:rtol=1e-4", 3, 4, cuda_graphs=True).graphable
    assert not odernn.ODERNN("rnn:gauss-2", 3, 4, cuda_graphs=True).graphable


def test_graphs_are_used_only_for_cuda_inputs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", lambda *a, **k: pytest.fail("captured on a CPU"))
    rnn = odernn.ODERNN("gru-ode:euler", 3, 4, cuda_graphs=True, fused=False)
    for _ in range(3):
        rnn(torch.randn(5, 2, 3))
    assert rnn.graphs.captures == 0 and not rnn.graphs.seen


# --- on a GPU ------------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("options", [{}, {"compile_elementwise": True}, {"cuda_graphs": True},
                                     {"compile_elementwise": True, "cuda_graphs": True}])
@pytest.mark.parametrize("spec", ["gru-ode:euler", "gru-ode:rk4", "lstm:euler"])
def test_cuda_equals_cpu_float64_to_float32_round_off(spec, options, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(4)
    rnn = odernn.ODERNN(spec, 32, 64, num_layers=2, fused=False, **options).cuda()
    exact = odernn.ODERNN(spec, 32, 64, num_layers=2, fused=False).double()
    exact.load_state_dict(rnn.state_dict())
    for _ in range(3):  # fresh inputs each time; with graphs the later ones replay
        x = torch.randn(16, 8, 32)
        out, blocks, grads = _loss_and_grads(rnn, x.cuda(), None)
        ref_out, _, ref_grads = _loss_and_grads(exact, x.double(), None)
        assert float((out.cpu().double() - ref_out).abs().max()) < 1e-4
        assert all(float((g.cpu().double() - r).norm() / r.norm()) < 1e-4 for g, r in zip(grads, ref_grads))


@cuda
def test_a_model_trained_on_cuda_evaluates_and_generates_on_the_cpu(tmp_path):
    trainer = Trainer(TrainConfig(corpus="tinyshakespeare", train_tokens=8000, valid_tokens=2000, cell="gru-ode:rk4", hidden=16,
                                  batch_size=4, bptt=16, max_tokens=4 * 16 * 4, out=str(tmp_path), progress=False,
                                  eval_tokens=500, device="cuda"))
    result = trainer.run()
    assert result["device"].startswith("cuda")
    code, stdout, err = run("evaluate", str(tmp_path), "--prompts", "2", "--json", "--device", "cpu")
    assert code == 0, err
    assert json.loads(stdout)["loss"] == pytest.approx(result["valid_loss"], abs=1e-4)
    model = LanguageModel.from_checkpoint(load_checkpoint(tmp_path), "cpu")
    assert len(sample(model, [1, 2, 3], 10, generator=torch.Generator().manual_seed(0))) == 10
    assert math.isfinite(result["valid_loss"])
