import os
import subprocess
import sys
from pathlib import Path

import pytest

from nvfp4.data import (
    EOT_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    builtin_corpus,
    load_tokenizer,
    resolve_cache_dir,
    split_documents,
    train_or_load_bpe,
)

SAMPLE = "To be, or not to be: that is the question.\r\n\tUnicode: café, 日本語, emoji 🎉  double  space\n\n"


@pytest.fixture(scope="module")
def small_texts() -> list[str]:
    train, _ = split_documents(builtin_corpus(), 0.08)
    return [d.text for d in train if d.title in ("kjv/Ruth", "kjv/Jonah", "shakespeare/macbeth")]


def test_byte_tokenizer_round_trip_and_eot():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.eot_id, tok.name) == (257, 256, "byte")
    ids = tok.encode(SAMPLE)
    assert ids == list(SAMPLE.encode("utf-8"))
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([104, 105, 256, 33]) == "hi" + EOT_TOKEN + "!"
    with pytest.raises(ValueError, match="outside the byte tokenizer's range"):
        tok.decode([257])


def test_bpe_training_is_deterministic_and_cached(tmp_path, small_texts):
    tok_a = train_or_load_bpe(small_texts, 512, cache_dir=tmp_path / "a")
    tok_b = train_or_load_bpe(small_texts, 512, cache_dir=tmp_path / "b")
    files_a = list((tmp_path / "a" / "tokenizers").glob("*.json"))
    files_b = list((tmp_path / "b" / "tokenizers").glob("*.json"))
    assert len(files_a) == len(files_b) == 1
    assert files_a[0].read_bytes() == files_b[0].read_bytes()
    assert tok_a.hash == tok_b.hash
    assert tok_a.encode(SAMPLE) == tok_b.encode(SAMPLE)
    assert isinstance(tok_a, Tokenizer)
    assert tok_a.vocab_size == 512 and tok_a.name == "bpe512"
    assert tok_a.eot_id == 0 and tok_a.encode(EOT_TOKEN) == [0]
    assert len(tok_a.encode(small_texts[0])) < len(small_texts[0].encode()) / 2  # it actually merges


def test_bpe_cache_is_reused_and_keyed_by_content_and_vocab(tmp_path, small_texts, monkeypatch):
    first = train_or_load_bpe(small_texts, 300, cache_dir=tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("should have been loaded from the cache")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    again = train_or_load_bpe(small_texts, 300, cache_dir=tmp_path)
    assert again.hash == first.hash
    with pytest.raises(AssertionError, match="from the cache"):
        train_or_load_bpe(small_texts, 301, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="from the cache"):
        train_or_load_bpe(small_texts[:1], 300, cache_dir=tmp_path)


def test_bpe_round_trip_exact(tmp_path, small_texts):
    tok = train_or_load_bpe(small_texts, 512, cache_dir=tmp_path)
    for text in (SAMPLE, small_texts[1][:5000], " leading space", "", "a" + EOT_TOKEN + "b"):
        assert tok.decode(tok.encode(text)) == text


def test_bpe_is_identical_with_one_thread(tmp_path, small_texts):
    """tokenizers trains with a thread pool; the merges must not depend on the thread count."""
    in_process = train_or_load_bpe(small_texts, 512, cache_dir=tmp_path / "multi")
    script = (
        "import sys; from nvfp4.data import builtin_corpus, split_documents, train_or_load_bpe\n"
        "train, _ = split_documents(builtin_corpus(), 0.08)\n"
        "texts = [d.text for d in train if d.title in ('kjv/Ruth', 'kjv/Jonah', 'shakespeare/macbeth')]\n"
        "print(train_or_load_bpe(texts, 512, cache_dir=sys.argv[1]).hash)\n"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONPATH": src}
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "single")], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == in_process.hash


def test_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size must be >= 257"):
        BPETokenizer.train(["abc"], 100)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("NVFP4_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("NVFP4_CACHE")
    assert resolve_cache_dir() == Path.home() / ".cache" / "nvfp4"


def test_load_tokenizer(tmp_path, small_texts):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    bpe = train_or_load_bpe(small_texts, 300, cache_dir=tmp_path)
    bpe.save(tmp_path / "bpe.json")
    ByteTokenizer().save(tmp_path / "byte.json")
    assert load_tokenizer(tmp_path / "bpe.json").encode(SAMPLE) == bpe.encode(SAMPLE)
    assert isinstance(load_tokenizer(tmp_path / "byte.json"), ByteTokenizer)
    (tmp_path / "junk.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="junk.json: not a valid tokenizer JSON"):
        load_tokenizer(tmp_path / "junk.json")
    with pytest.raises(FileNotFoundError, match="neither 'byte' nor an existing"):
        load_tokenizer(tmp_path / "missing.json")


def test_a_vocabulary_smaller_than_asked_for_is_reported(tmp_path):
    from nvfp4.data.tokenizer import train_or_load_bpe

    with pytest.warns(UserWarning, match=r"has \d+ tokens, fewer than the 8192 asked for"):
        tokenizer = train_or_load_bpe(["a tiny corpus, far too small for 8192 tokens"] * 3, 8192, cache_dir=tmp_path)
    assert tokenizer.vocab_size < 8192
    with pytest.warns(UserWarning, match="fewer than the 8192"):  # loading it back from the cache says so too
        train_or_load_bpe(["a tiny corpus, far too small for 8192 tokens"] * 3, 8192, cache_dir=tmp_path)
