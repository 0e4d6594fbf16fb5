"""Perplexity, sampling, and the generation metrics.

**Generation metrics.** ``prompts`` positions, evenly spaced through the split, give a prompt (the
``prompt_tokens`` tokens before the position) and a reference (the ``continuation_tokens`` tokens
after it). The model continues each prompt by sampling (temperature ``T``, top-k, fixed seed) and
the continuations are scored with:

- **BLEU** (``sacrebleu``, corpus level, 0–100; on characters for character-level models, so that
  short continuations are not all zero 4-gram matches; ``13a`` word tokens otherwise);
- **ROUGE-L** F-measure (``rouge-score``; characters are spaced out first at character level);
- **distinct-n**: distinct n-grams / all n-grams over the continuations (n = 1, 2), and
  **self-BLEU**: the BLEU of each continuation against the others (lower is more diverse);
- the **combined score** ``100 · (BLEU/100 · ROUGE-L · distinct-2 · (1 − self-BLEU/100))^(1/4)``,
  a geometric mean: it is high only when a model matches the references *and* varies its output;
  a model that copies one plausible line everywhere gets a high self-BLEU and a low score.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import batchify
from .model import ModelError

__all__ = ["GenerationMetrics", "corrupted", "evaluate_loss", "evaluate_within", "generation_metrics", "perplexity",
           "sample"]


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean loss in nats, ``inf`` where that overflows (a diverged model)."""
    return math.exp(loss) if loss < 709.0 else float("inf")


def evaluate_loss(model, data: torch.Tensor, batch_size: int = 10, bptt: int = 128,
                  tokens: int | None = None, progress: str | None = None, inputs: torch.Tensor | None = None) -> float:
    """Mean cross-entropy (nats per token) over ``data`` (``(N,)`` ids; the first ``tokens`` if
    given), with the hidden state carried across chunks, in eval mode (no dropout), on the model's
    device (the data moves there once; the sum stays there until the end). ``inputs``: what the
    model reads instead of ``data`` (the same length; :func:`corrupted`), scored against ``data``."""
    return evaluate_within(model, data, batch_size, bptt, tokens, progress, inputs=inputs)[0]


def corrupted(data: torch.Tensor, fraction: float, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """``data`` with ``round(fraction · N)`` of its tokens, at positions drawn without replacement,
    each replaced by a different token drawn uniformly from the rest of the vocabulary (fixed
    ``seed``): the robustness test's noisy inputs."""
    g = torch.Generator().manual_seed(seed)
    out = data.clone()
    where = torch.randperm(len(data), generator=g)[:round(fraction * len(data))].to(data.device)
    shift = torch.randint(1, vocab_size, (len(where),), generator=g).to(data.device)
    out[where] = (out[where] + shift) % vocab_size
    return out


@torch.no_grad()
def evaluate_within(model, data: torch.Tensor, batch_size: int = 10, bptt: int = 128, tokens: int | None = None,
                    progress: str | None = None, deadline: float | None = None,
                    inputs: torch.Tensor | None = None) -> tuple[float, int, int]:
    """:func:`evaluate_loss` that stops after the chunk that passes ``deadline`` (a
    ``time.perf_counter()`` value; at least one chunk runs): ``(loss, tokens evaluated, tokens in
    all)``."""
    was_training = model.training
    model.eval()
    if inputs is not None and inputs.shape != data.shape:
        raise ValueError(f"inputs of {tuple(inputs.shape)} tokens for data of {tuple(data.shape)}")
    if tokens is not None:
        data = data[: tokens + 1]
        inputs = None if inputs is None else inputs[: tokens + 1]
    batch_size = max(1, min(batch_size, (len(data) - 1) // 2))
    rows = batchify(data, batch_size).to(_device(model))
    read = rows if inputs is None else batchify(inputs, batch_size).to(_device(model))
    total, count, state = 0.0, 0, None
    chunks = range(0, rows.shape[1] - 1, bptt)
    if progress:  # a bar (on stderr) named by the caller: "validation", …
        from tqdm import tqdm
        chunks = tqdm(chunks, desc=progress, unit="chunk", dynamic_ncols=True, leave=False, file=sys.stderr)
    for start in chunks:
        x = read[:, start:start + bptt]
        y = rows[:, start + 1:start + 1 + bptt]
        x = x[:, : y.shape[1]]
        _, loss, state = model(x, y, state)
        total = total + loss.double() * y.numel()
        count += y.numel()
        if deadline is not None and time.perf_counter() >= deadline:
            break
    if progress:
        chunks.close()
    model.train(was_training)
    return float(total) / max(count, 1), count, rows.shape[0] * (rows.shape[1] - 1)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sample(model, prompt_ids: list[int], length: int, temperature: float = 1.0, top_k: int | None = None,
           greedy: bool = False, generator: torch.Generator | None = None, deadline: float | None = None,
           progress: str | None = None) -> list[int]:
    """Continue ``prompt_ids`` by ``length`` tokens: ``multinomial(softmax(logits / T))``, over the
    ``top_k`` most likely tokens if given, or the argmax with ``greedy``; fewer where ``deadline``
    (a ``time.perf_counter()`` value) passes first. ``progress``: a bar with that label on stderr."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if temperature <= 0 and not greedy:
        raise ValueError("temperature must be positive (or use greedy decoding)")
    was_training = model.training
    model.eval()
    device = _device(model)
    idx = torch.tensor([prompt_ids], device=device)
    logits, _, state = model(idx)
    out = []
    steps = range(length)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=progress, unit="token", dynamic_ncols=True, leave=False, file=sys.stderr)
    for _ in steps:
        last = logits[0, -1].double().cpu()  # drawn on the CPU: the same seed gives the same text on any device
        if not bool(torch.isfinite(last).all()):
            raise ModelError("the model's outputs are not finite (NaN or inf): it has diverged; sample from an "
                             "earlier checkpoint, or train again with a lower --lr")
        if greedy:
            token = int(last.argmax())
        else:
            last = last / temperature
            if top_k is not None and top_k < last.numel():
                threshold = torch.topk(last, top_k).values[-1]
                last = last.masked_fill(last < threshold, -math.inf)
            token = int(torch.multinomial(F.softmax(last, dim=-1), 1, generator=generator))
        out.append(token)
        if deadline is not None and time.perf_counter() >= deadline:
            break
        logits, _, state = model(torch.tensor([[token]], device=device), state=state)
    model.train(was_training)
    return out


@dataclass
class GenerationMetrics:
    bleu: float
    rouge_l: float
    distinct_1: float
    distinct_2: float
    self_bleu: float
    combined: float
    samples: list[tuple[str, str, str]]  # (prompt, reference, continuation)


def _distinct(sequences: list[list[str]], n: int) -> float:
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def generation_metrics(model, vocab, data: torch.Tensor, prompts: int = 20, prompt_tokens: int | None = None,
                       continuation_tokens: int | None = None, temperature: float = 0.8, top_k: int | None = None,
                       seed: int = 0, progress: str | None = None) -> GenerationMetrics:
    import sacrebleu
    from rouge_score import rouge_scorer

    char = vocab.level == "char"
    prompt_tokens = prompt_tokens or (64 if char else 20)
    continuation_tokens = continuation_tokens or (64 if char else 20)
    span = prompt_tokens + continuation_tokens
    if len(data) < span + prompts:
        raise ValueError(f"the split has {len(data)} tokens, too few for {prompts} prompts of {span}")
    starts = torch.linspace(0, len(data) - span - 1, prompts).long().tolist()
    generator = torch.Generator().manual_seed(seed)
    triples, hyp_tokens = [], []
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=progress, unit="prompt", dynamic_ncols=True, leave=False, file=sys.stderr)
    for start in starts:
        prompt = data[start:start + prompt_tokens].tolist()
        reference = data[start + prompt_tokens:start + span].tolist()
        continuation = sample(model, prompt, continuation_tokens, temperature, top_k, generator=generator)
        triples.append((vocab.decode(prompt), vocab.decode(reference), vocab.decode(continuation)))
        hyp_tokens.append([vocab.tokens[i] for i in continuation])
    references = [t[1] for t in triples]
    hypotheses = [t[2] for t in triples]
    tokenize = "char" if char else "13a"
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def spaced(text):  # rouge-score tokenises on words: at character level score characters
        return " ".join(c if c.strip() else "_" for c in text) if char else text
    rouge = sum(scorer.score(spaced(r), spaced(h))["rougeL"].fmeasure for r, h in zip(references, hypotheses))
    rouge /= len(hypotheses)
    self_bleu = 0.0
    if len(hypotheses) > 1:
        self_bleu = sum(sacrebleu.sentence_bleu(h, [o for j, o in enumerate(hypotheses) if j != i],
                                                tokenize=tokenize).score
                        for i, h in enumerate(hypotheses)) / len(hypotheses)
    d1, d2 = _distinct(hyp_tokens, 1), _distinct(hyp_tokens, 2)
    combined = 100 * max(bleu / 100 * rouge * d2 * (1 - self_bleu / 100), 0.0) ** 0.25
    return GenerationMetrics(bleu, rouge, d1, d2, self_bleu, combined, triples)
