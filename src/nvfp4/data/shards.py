"""Token shards: uint16 tokens behind a 64-byte self-checking header, written atomically, read by memmap.

Header layout (little endian), then the token body:
    magic b"NVFP4TOK" | u32 format version | u32 dtype code (1 = uint16) | u64 token count | u32 vocab size |
    version 2: u32 crc32 of the body | u32 crc32 of the preceding 32 bytes | zero padding to 64 bytes
    version 1: u32 crc32 of the preceding 28 bytes | zero padding to 64 bytes   (still read; no body checksum)
The header's token count is checked against the file size, so a truncated copy or a half-written shard
fails loudly on open instead of silently training on garbage. On open the body is checked too, in one pass
(about 1 GB/s): its crc32 (version 2), and that every token id is below the vocab size (any version), so flipped
bytes on disk or in a copy are one clear error rather than silent training or an IndexError deep in the model.

A dataset is a directory of train_NNN.bin / val_NNN.bin shards, the tokenizer.json that made them, and
a dataset.json describing both (written last, so its presence marks a complete dataset).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import struct
import sys
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nvfp4.data.corpus import Document, builtin_corpus, corpus_hash, read_user_documents, split_documents
from nvfp4.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    atomic_write,
    bpe_trainer_version,
    file_sha256,
    load_tokenizer,
    resolve_cache_dir,
    train_or_load_bpe,
)

MAGIC = b"NVFP4TOK"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
HEADER_BYTES = 64
DTYPE_UINT16 = 1
_DTYPES = {DTYPE_UINT16: np.dtype("<u2")}
_FIELDS = struct.Struct("<8sIIQI")  # magic, version, dtype code, token count, vocab size
_CRC = struct.Struct("<I")
MAX_UINT16_VOCAB = 65536


class ShardError(ValueError):
    """A token shard file that is missing, corrupt, truncated, or of an unknown format."""


@dataclass(frozen=True)
class ShardHeader:
    version: int
    dtype_code: int
    num_tokens: int
    vocab_size: int
    body_crc: int | None = None  # crc32 of the body (format version 2; None for version 1 shards)

    @property
    def dtype(self) -> np.dtype:
        return _DTYPES[self.dtype_code]


def check_vocab_fits(vocab_size: int) -> None:
    if not 0 < vocab_size <= MAX_UINT16_VOCAB:
        raise ValueError(
            f"vocab_size {vocab_size} does not fit: uint16 shards need 0 < vocab_size <= {MAX_UINT16_VOCAB}; "
            "use a smaller tokenizer vocabulary"
        )


def _encode_header(num_tokens: int, vocab_size: int, body_crc: int) -> bytes:
    fields = _FIELDS.pack(MAGIC, FORMAT_VERSION, DTYPE_UINT16, num_tokens, vocab_size) + _CRC.pack(body_crc)
    header = fields + _CRC.pack(zlib.crc32(fields))
    return header + bytes(HEADER_BYTES - len(header))


def write_shard(path: str | Path, tokens: np.ndarray | Sequence[int], vocab_size: int) -> Path:
    """Write tokens to path atomically (temp file + rename): readers never see a partial shard."""
    check_vocab_fits(vocab_size)
    path = Path(path)
    array = np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {array.shape}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= vocab_size):
        raise ValueError(
            f"tokens for {path} must be integers in [0, {vocab_size}); got dtype {array.dtype}, "
            f"range [{array.min()}, {array.max()}]"
        )
    body = array.astype("<u2", copy=False).tobytes()
    atomic_write(path, _encode_header(len(body) // 2, vocab_size, zlib.crc32(body)), body)
    return path


def read_shard_header(path: str | Path) -> ShardHeader:
    """Parse and validate the header, including that the file holds exactly the promised tokens."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            file_size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file does not exist") from None
    except IsADirectoryError:
        raise ShardError(f"{path}: is a directory, not a shard file") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: file is {len(raw)} bytes, too short for the {HEADER_BYTES}-byte shard header")
    magic, version, dtype_code, num_tokens, vocab_size = _FIELDS.unpack_from(raw)
    if magic != MAGIC:
        raise ShardError(f"{path}: bad magic bytes {magic!r} (expected {MAGIC!r}); not an nvfp4 token shard")
    if version not in READABLE_VERSIONS:
        raise ShardError(
            f"{path}: shard format version {version}, this nvfp4 reads versions {READABLE_VERSIONS}; re-run prepare"
        )
    checked = _FIELDS.size + (_CRC.size if version >= 2 else 0)  # version 2 also covers the body crc
    (crc,) = _CRC.unpack_from(raw, checked)
    if crc != zlib.crc32(raw[:checked]):
        raise ShardError(f"{path}: header checksum mismatch; the file is corrupt, re-run prepare")
    body_crc = _CRC.unpack_from(raw, _FIELDS.size)[0] if version >= 2 else None
    if dtype_code not in _DTYPES:
        raise ShardError(f"{path}: unknown token dtype code {dtype_code}")
    header = ShardHeader(version, dtype_code, num_tokens, vocab_size, body_crc)
    expected = HEADER_BYTES + num_tokens * header.dtype.itemsize
    if file_size != expected:
        problem = "truncated" if file_size < expected else "has trailing bytes"
        raise ShardError(
            f"{path}: body {problem}: header promises {num_tokens} tokens ({expected} bytes) "
            f"but the file is {file_size} bytes; re-run prepare or re-copy the file"
        )
    return header


_CHECK_CHUNK = 1 << 24  # tokens per pass of the body check (32 MB)


def _open_shard(path: str | Path) -> tuple[ShardHeader, np.ndarray]:
    header = read_shard_header(path)
    if header.num_tokens == 0:
        return header, np.zeros(0, dtype=header.dtype)
    tokens = np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,))
    _check_body(Path(path), header, tokens)
    return header, tokens


def _check_body(path: Path, header: ShardHeader, tokens: np.ndarray) -> None:
    """One pass over the body: its crc32 (version 2) and every id < vocab size."""
    crc = 0
    for start in range(0, len(tokens), _CHECK_CHUNK):
        chunk = np.asarray(tokens[start : start + _CHECK_CHUNK])
        if header.body_crc is not None:
            crc = zlib.crc32(chunk.tobytes(), crc)
        top = int(chunk.max())
        if top >= header.vocab_size:
            where = start + int(np.argmax(chunk >= header.vocab_size))
            raise ShardError(
                f"{path}: token id {int(tokens[where])} at position {where} is not below the vocab size "
                f"{header.vocab_size}; the shard is corrupt, re-run prepare or re-copy the file"
            )
    if header.body_crc is not None and crc != header.body_crc:
        raise ShardError(
            f"{path}: body checksum mismatch; the tokens changed after the shard was written (disk or "
            "copy corruption), re-run prepare or re-copy the file"
        )


def read_shard(path: str | Path) -> np.ndarray:
    """The shard's tokens as a read-only uint16 memmap (a plain empty array for an empty shard)."""
    return _open_shard(path)[1]


class ShardWriter:
    """Streams tokens into <dir>/<prefix>_000.bin, _001.bin, ... starting a new shard every max_tokens."""

    def __init__(self, out_dir: str | Path, prefix: str, vocab_size: int, max_tokens: int = 100_000_000) -> None:
        check_vocab_fits(vocab_size)
        if max_tokens < 1:
            raise ValueError(f"max_tokens per shard must be >= 1, got {max_tokens}")
        self.out_dir, self.prefix, self.vocab_size, self.max_tokens = Path(out_dir), prefix, vocab_size, max_tokens
        self.paths: list[Path] = []
        self.num_tokens = 0
        self._pending: list[np.ndarray] = []
        self._pending_tokens = 0

    def write(self, tokens: Sequence[int] | np.ndarray) -> None:
        array = np.asarray(tokens, dtype=np.int64)
        while array.size:
            take = min(array.size, self.max_tokens - self._pending_tokens)
            self._pending.append(array[:take])
            self._pending_tokens += take
            self.num_tokens += take
            array = array[take:]
            if self._pending_tokens == self.max_tokens:
                self._flush()

    def _flush(self) -> None:
        path = self.out_dir / f"{self.prefix}_{len(self.paths):03d}.bin"
        body = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.int64)
        self.paths.append(write_shard(path, body, self.vocab_size))
        self._pending, self._pending_tokens = [], 0

    def close(self) -> list[Path]:
        if self._pending_tokens:
            self._flush()
        return self.paths


@dataclass(frozen=True)
class ShardSpan:
    """Tokens [start, stop) of one shard file (stop None = to its end): lets validation be a tail slice."""

    path: Path
    start: int = 0
    stop: int | None = None


class TokenStream:
    """Read-only view of several shards (or spans of them) as one concatenated token sequence."""

    def __init__(self, shards: Sequence[str | Path | ShardSpan]) -> None:
        if isinstance(shards, str | Path):
            shards = [shards]
        self.spans = [s if isinstance(s, ShardSpan) else ShardSpan(Path(s)) for s in shards]
        if not self.spans:
            raise ValueError("no shards given; pass at least one .bin token shard")
        self._arrays: list[np.ndarray] = []
        vocab_sizes: dict[int, Path] = {}
        for span in self.spans:
            header, tokens = _open_shard(span.path)
            stop = len(tokens) if span.stop is None else span.stop
            if not 0 <= span.start <= stop <= len(tokens):
                raise ShardError(f"{span.path}: span [{span.start}, {stop}) is outside its {len(tokens)} tokens")
            self._arrays.append(tokens[span.start : stop])
            vocab_sizes.setdefault(header.vocab_size, span.path)
        if len(vocab_sizes) > 1:
            (a, path_a), (b, path_b) = list(vocab_sizes.items())[:2]
            raise ShardError(
                f"shards were written with different vocab sizes ({path_a}: {a}, {path_b}: {b}); "
                "they come from different tokenizers and cannot be mixed"
            )
        self.vocab_size: int = next(iter(vocab_sizes))
        self._offsets = np.cumsum([0] + [len(a) for a in self._arrays]).tolist()

    def __len__(self) -> int:
        return self._offsets[-1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the concatenation, copied out as int64."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"token range [{start}, {stop}) outside stream of {len(self)} tokens")
        out = np.empty(stop - start, dtype=np.int64)
        i = bisect.bisect_right(self._offsets, start) - 1
        filled = 0
        while filled < out.size:
            lo = start + filled - self._offsets[i]
            take = min(out.size - filled, len(self._arrays[i]) - lo)
            out[filled : filled + take] = self._arrays[i][lo : lo + take]
            filled += take
            i += 1
        return out


def split_tail(shards: Sequence[str | Path | ShardSpan], fraction: float) -> tuple[list[ShardSpan], list[ShardSpan]]:
    """Split a token stream into (head, tail) spans, the tail holding ~fraction of the tokens."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"tail fraction must be in (0, 1), got {fraction}")
    stream = TokenStream(shards)
    cut = len(stream) - max(1, round(len(stream) * fraction))
    head: list[ShardSpan] = []
    tail: list[ShardSpan] = []
    for span, lo, hi in zip(stream.spans, stream._offsets[:-1], stream._offsets[1:], strict=True):
        start = span.start
        if hi <= cut:
            head.append(ShardSpan(span.path, start, start + hi - lo))
        elif lo >= cut:
            tail.append(ShardSpan(span.path, start, start + hi - lo))
        else:
            head.append(ShardSpan(span.path, start, start + cut - lo))
            tail.append(ShardSpan(span.path, start + cut - lo, start + hi - lo))
    return head, tail


# ----------------------------------------------------------------------------------------------------
# Datasets: a directory of train/val shards + tokenizer.json + dataset.json


DATASET_FORMAT = "nvfp4-dataset"
DATASET_FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_VAL_FRACTION = 0.08  # 7 of the 104 built-in documents (~5% of the text), from both sources
TAIL_VAL_FRACTION = 0.05
DEFAULT_MAX_SHARD_TOKENS = 100_000_000


@dataclass
class DatasetInfo:
    """Where a dataset's train/val tokens are, and what produced them. Pass .train/.val to the loaders."""

    train: list[ShardSpan]
    val: list[ShardSpan]
    vocab_size: int
    train_tokens: int
    val_tokens: int
    val_split: str  # "documents" (prepared), "files" (separate val shards) or "tail" (end of the train stream)
    path: Path | None = None
    tokenizer_path: Path | None = None
    tokenizer_name: str | None = None
    tokenizer_sha256: str | None = None
    eot_id: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def load_tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is None:
            raise ValueError(
                "this dataset has no tokenizer.json next to its shards, so ids cannot be decoded; "
                "put the tokenizer.json used to make the shards in the shard directory"
            )
        return load_tokenizer(self.tokenizer_path)


def _make_tokenizer(
    tokenizer: str, train_docs: Sequence[Document], vocab_size: int, cache_dir: str | Path | None
) -> BPETokenizer | ByteTokenizer:
    if tokenizer == "bpe":
        check_vocab_fits(vocab_size)  # before spending time on training
        return train_or_load_bpe([d.text for d in train_docs], vocab_size, cache_dir)
    if tokenizer == "byte":
        return ByteTokenizer()
    if Path(tokenizer).expanduser().is_file():
        loaded = load_tokenizer(tokenizer)
        assert isinstance(loaded, BPETokenizer | ByteTokenizer)
        return loaded
    raise ValueError(f"tokenizer must be 'bpe', 'byte' or the path of a tokenizer JSON file, got {tokenizer!r}")


def _progress(docs: Sequence[Document], label: str, enabled: bool):
    """A per-document progress bar on stderr (weighted by characters, so one huge document moves it too), or one
    line when stderr is not a terminal; the documents unchanged when disabled."""
    if not enabled:
        return docs
    total = sum(len(d.text) for d in docs)
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not sys.stderr.isatty():
        print(f"{label}: {len(docs):,} documents, {total:,} characters", file=sys.stderr, flush=True)
        return docs

    def walk():
        with tqdm(total=total, desc=label, unit="char", unit_scale=True, file=sys.stderr) as bar:
            for doc in docs:
                yield doc
                bar.update(len(doc.text))

    return walk()


def _clear_old_dataset(out_dir: Path, overwrite: bool) -> None:
    old = sorted(out_dir.glob("train_*.bin")) + sorted(out_dir.glob("val_*.bin"))
    if (out_dir / "dataset.json").exists():
        old.append(out_dir / "dataset.json")
    if old and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds a dataset ({old[0].name}, ...); pass overwrite=True (--overwrite) "
            "or choose another output directory"
        )
    for path in old:
        path.unlink()


def _write_dataset(
    docs: Sequence[Document],
    inputs: list[str] | None,
    out_dir: Path,
    tokenizer: str,
    vocab_size: int,
    val_fraction: float,
    cache_dir: str | Path | None,
    max_shard_tokens: int,
    overwrite: bool,
    progress: bool = False,
) -> None:
    train_docs, val_docs = split_documents(docs, val_fraction)
    if progress and tokenizer == "bpe":
        chars = sum(len(d.text) for d in train_docs)
        print(f"training the BPE tokenizer (vocab {vocab_size}) on {chars:,} characters", file=sys.stderr, flush=True)
    tok = _make_tokenizer(tokenizer, train_docs, vocab_size, cache_dir)
    check_vocab_fits(tok.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_old_dataset(out_dir, overwrite)
    splits: dict[str, Any] = {}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        writer = ShardWriter(out_dir, split, tok.vocab_size, max_shard_tokens)
        for doc in _progress(split_docs, f"tokenizing {split}", progress):
            writer.write(tok.encode(doc.text) + [tok.eot_id])  # <|endoftext|> closes every document
        paths = writer.close()
        splits[split] = {
            "shards": [p.name for p in paths],
            "tokens": writer.num_tokens,
            "documents": len(split_docs),
            "characters": sum(len(d.text) for d in split_docs),
        }
        if split == "val" and len(split_docs) <= 200:
            splits[split]["titles"] = [d.title for d in split_docs]
    tok.save(out_dir / "tokenizer.json")
    sources: dict[str, dict[str, int]] = {}
    val_titles = {d.title for d in val_docs}
    for doc in docs:
        counts = sources.setdefault(doc.source, {"train_documents": 0, "val_documents": 0})
        counts["val_documents" if doc.title in val_titles else "train_documents"] += 1
    metadata = {
        "format": DATASET_FORMAT,
        "version": DATASET_FORMAT_VERSION,
        "inputs": inputs if inputs is not None else "builtin",
        "corpus_sha256": corpus_hash(docs),
        "val_fraction": val_fraction,
        "sources": sources,
        "tokenizer": {
            "name": tok.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "sha256": tok.hash,
            "file": "tokenizer.json",
        },
        "splits": splits,
    }
    # Written last: its presence marks a complete dataset.
    atomic_write(out_dir / "dataset.json", (json.dumps(metadata, indent=2) + "\n").encode())


def prepare_dataset(
    inputs: list[str] | None,
    out_dir: str | Path,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    cache_dir: str | Path | None = None,
    max_shard_tokens: int = DEFAULT_MAX_SHARD_TOKENS,
    overwrite: bool = False,
    progress: bool = False,
) -> DatasetInfo:
    """Tokenize the built-in corpus (inputs None) or .txt/.jsonl files/directories into out_dir (``progress``: say
    what it is doing on stderr, as ``nvfp4 prepare`` does).

    tokenizer: "bpe" (trained on the train split with vocab_size, cached), "byte" (vocab 257, vocab_size
    ignored) or the path of an existing tokenizer JSON file (vocab_size ignored).
    """
    if isinstance(inputs, str | Path):
        inputs = [str(inputs)]
    docs = builtin_corpus() if inputs is None else read_user_documents(inputs)
    out_dir = Path(out_dir).expanduser()
    _write_dataset(
        docs,
        None if inputs is None else [str(i) for i in inputs],
        out_dir,
        tokenizer,
        vocab_size,
        val_fraction,
        cache_dir,
        max_shard_tokens,
        overwrite,
        progress,
    )
    return load_dataset(out_dir)


def default_dataset(
    cache_dir: str | Path | None = None,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = DEFAULT_VAL_FRACTION,
) -> DatasetInfo:
    """The built-in corpus, prepared once into <cache>/datasets/ (keyed by content + settings) and reused."""
    if tokenizer not in ("bpe", "byte"):
        raise ValueError(f"default_dataset tokenizer must be 'bpe' or 'byte', got {tokenizer!r}")
    docs = builtin_corpus()
    key_parts = [DATASET_FORMAT, DATASET_FORMAT_VERSION, corpus_hash(docs), tokenizer, val_fraction]
    if tokenizer == "bpe":
        key_parts += [vocab_size, bpe_trainer_version()]
    key = hashlib.sha256("|".join(map(str, key_parts)).encode()).hexdigest()
    name = "bpe" + str(vocab_size) if tokenizer == "bpe" else "byte"
    root = resolve_cache_dir(cache_dir) / "datasets"
    final = root / f"builtin-{name}-{key[:16]}"
    if (final / "dataset.json").is_file():
        return load_dataset(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        _write_dataset(docs, None, tmp, tokenizer, vocab_size, val_fraction, cache_dir, DEFAULT_MAX_SHARD_TOKENS, False)
        if final.exists() and not (final / "dataset.json").is_file():
            shutil.rmtree(final)  # left over from an interrupted copy
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "dataset.json").is_file():  # not "another process finished first"
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return load_dataset(final)


def _shard_files(item: str | Path) -> list[Path]:
    path = Path(item).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.bin"))
        if not files:
            raise ShardError(f"{path}: directory has no .bin token shards; run `nvfp4 prepare` to make some")
        return files
    if not path.exists():
        raise ShardError(f"{path}: no such shard file or directory")
    return [path]


def _assemble(train_files: list[Path], val_files: list[Path], **fields: Any) -> DatasetInfo:
    """DatasetInfo from train/val shard files; no val files means the train stream's tail is validation."""
    train: list[ShardSpan] = [ShardSpan(f) for f in train_files]
    val: list[ShardSpan] = [ShardSpan(f) for f in val_files]
    vocab_size = TokenStream(train).vocab_size
    val_split = fields.pop("val_split", "files")
    if val:
        if TokenStream(val).vocab_size != vocab_size:
            raise ShardError(
                f"validation shards have vocab {TokenStream(val).vocab_size} but training shards {vocab_size}; "
                "they were made with different tokenizers"
            )
    else:
        train, val = split_tail(train, TAIL_VAL_FRACTION)
        val_split = "tail"
    expected_vocab = fields.pop("vocab_size", vocab_size)
    if vocab_size != expected_vocab:
        raise ShardError(f"{train_files[0]}: shard vocab {vocab_size} differs from the dataset's {expected_vocab}")
    return DatasetInfo(
        train=train,
        val=val,
        vocab_size=vocab_size,
        train_tokens=len(TokenStream(train)),
        val_tokens=len(TokenStream(val)),
        val_split=val_split,
        **fields,
    )


def _load_prepared(directory: Path, val_files: list[Path] | None) -> DatasetInfo:
    meta_path = directory / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != DATASET_FORMAT:
            raise ValueError(f"'format' is {meta.get('format')!r}, not {DATASET_FORMAT!r}")
        if meta.get("version") != DATASET_FORMAT_VERSION:
            raise ValueError(f"version {meta.get('version')!r}, this nvfp4 reads {DATASET_FORMAT_VERSION}")
        tok_meta, splits = meta["tokenizer"], meta["splits"]
        train_files = [directory / name for name in splits["train"]["shards"]]
        prepared_val_files = [directory / name for name in splits["val"]["shards"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ShardError(f"{meta_path}: not a usable dataset description ({e}); re-run prepare") from e
    if not train_files:
        raise ShardError(f"{meta_path}: the dataset has no training shards; prepare it from more data")
    tokenizer_path = directory / tok_meta["file"]
    if not tokenizer_path.is_file():
        raise ShardError(f"{tokenizer_path}: missing; the dataset's shards cannot be decoded without it")
    if file_sha256(tokenizer_path) != tok_meta["sha256"]:
        raise ShardError(
            f"{tokenizer_path}: is not the tokenizer the shards were made with (sha256 differs); "
            "restore it or re-run prepare"
        )
    return _assemble(
        train_files,
        prepared_val_files if val_files is None else val_files,
        val_split="documents" if val_files is None else "files",
        vocab_size=tok_meta["vocab_size"],
        path=directory,
        tokenizer_path=tokenizer_path,
        tokenizer_name=tok_meta["name"],
        tokenizer_sha256=tok_meta["sha256"],
        eot_id=tok_meta["eot_id"],
        metadata=meta,
    )


def load_dataset(
    path: str | Path | Sequence[str | Path], val_data: str | Path | Sequence[str | Path] | None = None
) -> DatasetInfo:
    """Open a prepared dataset directory, or existing shards (files or directories of .bin files).

    Without a dataset.json, a directory's val_*.bin files are validation and its other .bin files train.
    val_data (shard files or directories) replaces any validation shards. With no validation shards at
    all, the last 5% of the train token stream is held out as validation (val_split == "tail").
    """
    items = [Path(path).expanduser()] if isinstance(path, str | Path) else [Path(p).expanduser() for p in path]
    if not items:
        raise ValueError("load_dataset needs a dataset directory or at least one shard file")
    val_override: list[Path] | None = None
    if val_data is not None:
        val_items = [val_data] if isinstance(val_data, str | Path) else list(val_data)
        val_override = [f for item in val_items for f in _shard_files(item)]
    if len(items) == 1 and (items[0] / "dataset.json").is_file():
        return _load_prepared(items[0], val_override)
    train_files: list[Path] = []
    val_files: list[Path] = []
    for item in items:
        for file in _shard_files(item):
            is_val = item.is_dir() and file.name.startswith("val_")
            (val_files if is_val else train_files).append(file)
    if not train_files:
        raise ShardError(f"no training shards among {[str(i) for i in items]} (only val_*.bin files)")
    directory = items[0] if len(items) == 1 and items[0].is_dir() else None
    tokenizer_fields: dict[str, Any] = {}
    if directory and (directory / "tokenizer.json").is_file():
        tok = load_tokenizer(directory / "tokenizer.json")
        tokenizer_fields = {
            "tokenizer_path": directory / "tokenizer.json",
            "tokenizer_name": tok.name,
            "tokenizer_sha256": file_sha256(directory / "tokenizer.json"),
            "eot_id": tok.eot_id,
        }
    return _assemble(
        train_files, val_files if val_override is None else val_override, path=directory, **tokenizer_fields
    )
