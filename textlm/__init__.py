"""``textlm`` — corpora, the shared language model, the trainer, sampling and metrics, and the
``odernn`` command line (``textlm.cli``).

>>> import torch, textlm
>>> model = textlm.LanguageModel(vocab_size=10, cell="gru-ode:rk4", hidden=8)
>>> logits, loss, state = model(torch.randint(0, 10, (2, 5)), torch.randint(0, 10, (2, 5)))
>>> logits.shape, loss.item() > 0
(torch.Size([2, 5, 10]), True)

``textlm.train`` is the function ``train(config, resume=False) -> (trainer, result)``; its module
``textlm/train.py`` (``TrainConfig``, ``Trainer``, …) is imported by name, ``from textlm.train import
Trainer``, or ``importlib.import_module("textlm.train")`` (``import textlm.train as m`` gives the
function: a package's attribute wins over its submodule).
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import CORPORA, Corpus, CorpusError, Vocabulary, batchify, data_root, load_corpus
from .evaluate import GenerationMetrics, evaluate_loss, generation_metrics, sample
from .model import GRAD_MODES, TORCH_CELLS, LanguageModel, ModelConfig, ModelError
from .runtime import PRECISIONS, DeviceError, Runtime, resolve_device
from .train import TrainConfig, Trainer, TrainingError, TrainingInterrupted, train

__all__ = ["CORPORA", "PRECISIONS", "CheckpointError", "Corpus", "CorpusError", "DeviceError", "GRAD_MODES",
           "GenerationMetrics", "LanguageModel", "ModelConfig", "ModelError", "Runtime", "TORCH_CELLS", "TrainConfig",
           "Trainer", "TrainingError", "TrainingInterrupted", "Vocabulary", "batchify", "data_root", "evaluate_loss",
           "generation_metrics", "load_checkpoint", "load_corpus", "resolve_device", "sample", "save_checkpoint",
           "train"]
