"""Tokenizers: a byte-level BPE trained (deterministically, and cached) on the training split, and raw bytes.

Both expose the same small `Tokenizer` interface so the shard writer, the trainer and sampling code never
care which one is in use. `<|endoftext|>` separates documents in the token stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from nvfp4._io import atomic_write, file_sha256  # noqa: F401  (re-exported for nvfp4.data users)

EOT_TOKEN = "<|endoftext|>"
# Bump when anything about how the BPE is trained changes, so that cached tokenizers are retrained.
BPE_TRAINING_VERSION = "nvfp4-bpe-1"
BYTE_TOKENIZER_JSON = {"nvfp4_tokenizer": "byte", "version": 1}
TOKENIZERS_INSTALL_HINT = "pip install tokenizers  (or: pip install 'nvfp4[train]')"


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and the trainer need from a tokenizer."""

    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache root: the argument, else $NVFP4_CACHE, else ~/.cache/nvfp4."""
    if cache_dir is None:
        cache_dir = os.environ.get("NVFP4_CACHE") or Path.home() / ".cache" / "nvfp4"
    return Path(cache_dir).expanduser()


class ByteTokenizer:
    """Token id = UTF-8 byte value; 256 = <|endoftext|>. No training, no files, no surprises."""

    name = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if not 0 <= i <= self.eot_id:
                raise ValueError(f"token id {i} is outside the byte tokenizer's range 0..{self.eot_id}")
            if i == self.eot_id:
                parts.append(run.decode("utf-8", errors="replace"))
                parts.append(EOT_TOKEN)
                run = bytearray()
            else:
                run.append(i)
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def save(self, path: str | Path) -> None:
        atomic_write(path, json.dumps(BYTE_TOKENIZER_JSON).encode())

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps(BYTE_TOKENIZER_JSON).encode()).hexdigest()


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError(f"the BPE tokenizer needs the 'tokenizers' package: {TOKENIZERS_INSTALL_HINT}") from None
    return tokenizers


class BPETokenizer:
    """A Hugging Face byte-level BPE (GPT-2 style: no normaliser, so decode(encode(s)) == s exactly)."""

    def __init__(self, hf_tokenizer, source_json: str) -> None:
        eot_id = hf_tokenizer.token_to_id(EOT_TOKEN)
        if eot_id is None:
            raise ValueError(f"tokenizer has no {EOT_TOKEN} token; it was not made by nvfp4.data")
        self._tok = hf_tokenizer
        self._json = source_json
        self.eot_id: int = eot_id
        self.vocab_size: int = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        self.name = f"bpe{self.vocab_size}"

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        tokenizers = _import_tokenizers()
        text = Path(path).read_text(encoding="utf-8")
        try:
            tok = tokenizers.Tokenizer.from_str(text)
        except Exception as e:  # the Rust side raises a bare Exception
            raise ValueError(f"{path}: not a valid tokenizer JSON file ({e}); delete it to retrain") from e
        return cls(tok, text)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train on texts. Deterministic: the same texts and vocab_size give the same merges and ids."""
        tokenizers = _import_tokenizers()
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"BPE vocab_size must be >= 257 (256 bytes + {EOT_TOKEN}), got {vocab_size}")
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, tok.to_str())

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        atomic_write(path, self._json.encode("utf-8"))

    @property
    def hash(self) -> str:
        """sha256 of the tokenizer JSON: shards record it so a mismatched tokenizer can be detected."""
        return hashlib.sha256(self._json.encode("utf-8")).hexdigest()


def bpe_trainer_version() -> str:
    """Identifies the BPE training code: part of every cache key, so an upgrade retrains rather than mixes."""
    return f"{BPE_TRAINING_VERSION}|tokenizers={_import_tokenizers().__version__}"


def bpe_cache_key(texts: Sequence[str], vocab_size: int) -> str:
    """Hash of everything that determines the trained BPE: the text, vocab size and trainer versions."""
    h = hashlib.sha256(f"{bpe_trainer_version()}|vocab={vocab_size}".encode())
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def train_or_load_bpe(
    texts: Sequence[str], vocab_size: int = 8192, cache_dir: str | Path | None = None
) -> BPETokenizer:
    """The BPE for these training texts, from <cache>/tokenizers/ if trained before, else trained and cached."""
    key = bpe_cache_key(texts, vocab_size)
    path = resolve_cache_dir(cache_dir) / "tokenizers" / f"bpe{vocab_size}-{key[:20]}.json"
    if path.is_file():
        tokenizer = BPETokenizer.from_file(path)
    else:
        tokenizer = BPETokenizer.train(texts, vocab_size)
        tokenizer.save(path)
    if tokenizer.vocab_size < vocab_size:  # BPE stops when no pair repeats: say so rather than cut silently
        warnings.warn(
            f"the BPE vocabulary has {tokenizer.vocab_size} tokens, fewer than the {vocab_size} asked for: this text "
            "has no more pairs to merge (more text, or a smaller --vocab-size, makes them agree)",
            stacklevel=2,
        )
    return tokenizer


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """'byte', or the path of a tokenizer JSON written by this package (BPE or byte)."""
    if str(spec) == "byte":
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {str(spec)!r} is neither 'byte' nor an existing tokenizer JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a tokenizer JSON file ({e})") from e
    if isinstance(data, dict) and data.get("nvfp4_tokenizer") == "byte":
        return ByteTokenizer()
    return BPETokenizer.from_file(path)
