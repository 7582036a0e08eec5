import json

import numpy as np
import pytest
import torch

from nvfp4.data import (
    EOT_TOKEN,
    ByteTokenizer,
    ShardError,
    TokenLoader,
    TokenStream,
    default_dataset,
    load_dataset,
    prepare_dataset,
    read_shard,
    val_batches,
    write_shard,
)


@pytest.fixture
def user_corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "nested").mkdir(parents=True)
    for i in range(12):
        (root / f"story{i:02d}.txt").write_text(f"Story number {i}. " * 20 + "The end.\n")
    lines = [json.dumps({"text": f"Record {i}: the quick brown fox jumps over the lazy dog."}) for i in range(20)]
    (root / "nested" / "records.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _decoded_documents(info, split):
    tok = info.load_tokenizer()
    text = tok.decode(TokenStream(getattr(info, split)).read(0, getattr(info, f"{split}_tokens")).tolist())
    assert text.endswith(EOT_TOKEN)
    return text.split(EOT_TOKEN)[:-1]


def test_prepare_user_files_byte_tokenizer(tmp_path, user_corpus):
    info = prepare_dataset([str(user_corpus)], tmp_path / "out", tokenizer="byte", val_fraction=0.2)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "tokenizer.json", "train_000.bin", "val_000.bin"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["tokenizer"]["name"] == "byte" and meta["tokenizer"]["vocab_size"] == 257
    splits = meta["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 32
    assert splits["val"]["documents"] >= 1
    assert info.vocab_size == 257 and info.eot_id == 256 and info.val_split == "documents"
    assert info.train_tokens == splits["train"]["tokens"] == len(read_shard(out / "train_000.bin"))
    # Every document comes back exactly, each followed by <|endoftext|>, and none is in both splits.
    docs = _decoded_documents(info, "train") + _decoded_documents(info, "val")
    expected = [f"Story number {i}. " * 20 + "The end.\n" for i in range(12)]
    expected += [f"Record {i}: the quick brown fox jumps over the lazy dog." for i in range(20)]
    assert sorted(docs) == sorted(expected)
    by_title = {f"story{i:02d}.txt": expected[i] for i in range(12)}
    by_title |= {f"nested/records.jsonl:{i + 1}": expected[12 + i] for i in range(20)}
    assert _decoded_documents(info, "val") == [by_title[t] for t in splits["val"]["titles"]]


def test_prepare_user_files_bpe_is_deterministic(tmp_path, user_corpus):
    a = prepare_dataset([str(user_corpus)], tmp_path / "a", vocab_size=300, cache_dir=tmp_path / "cache_a")
    b = prepare_dataset([str(user_corpus)], tmp_path / "b", vocab_size=300, cache_dir=tmp_path / "cache_b")
    assert a.tokenizer_sha256 == b.tokenizer_sha256 and a.tokenizer_name == "bpe300"
    for name in ("train_000.bin", "val_000.bin", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert 0 < a.val_tokens < a.train_tokens
    assert list((tmp_path / "cache_a" / "tokenizers").glob("bpe300-*.json"))
    reused = prepare_dataset(
        [str(user_corpus)], tmp_path / "c", tokenizer=str(tmp_path / "a" / "tokenizer.json"), cache_dir=tmp_path / "x"
    )
    assert reused.tokenizer_sha256 == a.tokenizer_sha256 and not (tmp_path / "x").exists()


def test_prepare_splits_into_capped_shards_and_refuses_to_overwrite(tmp_path, user_corpus):
    info = prepare_dataset([str(user_corpus)], tmp_path / "out", tokenizer="byte", max_shard_tokens=500)
    assert len(info.train) > 3 and all(len(read_shard(s.path)) <= 500 for s in info.train)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        prepare_dataset([str(user_corpus)], tmp_path / "out", tokenizer="byte")
    again = prepare_dataset([str(user_corpus)], tmp_path / "out", tokenizer="byte", overwrite=True)
    assert len(again.train) == 1  # the old capped shards are gone
    assert sorted(p.name for p in (tmp_path / "out").glob("*.bin")) == ["train_000.bin", "val_000.bin"]


def test_single_document_has_tail_validation(tmp_path):
    (tmp_path / "only.txt").write_text("word " * 2000)
    info = prepare_dataset([str(tmp_path / "only.txt")], tmp_path / "out", tokenizer="byte")
    assert info.val_split == "tail"
    assert info.val_tokens == round(0.05 * 10001)
    assert info.train_tokens + info.val_tokens == 10001


def test_load_dataset_detects_a_swapped_tokenizer(tmp_path, user_corpus):
    prepare_dataset([str(user_corpus)], tmp_path / "out", tokenizer="byte")
    (tmp_path / "out" / "tokenizer.json").write_text('{"nvfp4_tokenizer": "byte", "version": 2}')
    with pytest.raises(ShardError, match="is not the tokenizer the shards were made with"):
        load_dataset(tmp_path / "out")


def test_load_raw_shards(tmp_path):
    a = write_shard(tmp_path / "shards" / "part0.bin", np.arange(600), vocab_size=1000)
    b = write_shard(tmp_path / "shards" / "part1.bin", np.arange(400), vocab_size=1000)
    v = write_shard(tmp_path / "heldout.bin", np.arange(50), vocab_size=1000)

    info = load_dataset([a, b])  # no validation shards: the last 5% of the stream
    assert (info.val_split, info.train_tokens, info.val_tokens, info.vocab_size) == ("tail", 950, 50, 1000)
    assert info.tokenizer_path is None
    with pytest.raises(ValueError, match="no tokenizer.json"):
        info.load_tokenizer()

    info = load_dataset(tmp_path / "shards", val_data=v)
    assert (info.val_split, info.train_tokens, info.val_tokens) == ("files", 1000, 50)

    write_shard(tmp_path / "shards" / "val_000.bin", np.arange(70), vocab_size=1000)
    info = load_dataset(tmp_path / "shards")  # a directory's val_*.bin are validation
    assert (info.val_split, info.train_tokens, info.val_tokens) == ("files", 1000, 70)
    assert info.tokenizer_path is None

    ByteTokenizer().save(tmp_path / "shards" / "tokenizer.json")  # a tokenizer next to raw shards is picked up
    info = load_dataset(tmp_path / "shards")
    assert (info.tokenizer_name, info.eot_id) == ("byte", 256)

    with pytest.raises(ShardError, match="no such shard file or directory"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardError, match="has no .bin token shards"):
        load_dataset(tmp_path / "empty")


def test_default_dataset_byte_is_prepared_once(tmp_path, monkeypatch):
    info = default_dataset(cache_dir=tmp_path, tokenizer="byte")
    assert info.vocab_size == 257 and info.val_split == "documents"
    assert info.path.parent == tmp_path / "datasets"
    assert 8_000_000 < info.train_tokens and 300_000 < info.val_tokens < 1_000_000
    sources = info.metadata["sources"]
    assert sources["kjv"]["val_documents"] > 0 and sources["shakespeare"]["val_documents"] > 0

    def no_preparing(*args, **kwargs):
        raise AssertionError("should have been reused from the cache")

    monkeypatch.setattr("nvfp4.data.shards._write_dataset", no_preparing)
    assert default_dataset(cache_dir=tmp_path, tokenizer="byte").path == info.path
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [info.path.name]  # no temp dirs left


@pytest.mark.slow
def test_default_dataset_bpe_full_corpus(tmp_path):
    """The real thing: BPE-8192 on the whole built-in corpus, twice, must give identical tokens."""
    a = default_dataset(cache_dir=tmp_path / "a")
    b = default_dataset(cache_dir=tmp_path / "b")
    assert a.tokenizer_sha256 == b.tokenizer_sha256
    assert a.vocab_size == 8192 and a.eot_id == 0
    for name in ("train_000.bin", "val_000.bin"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
    assert 2_000_000 < a.train_tokens < 3_000_000 and a.val_tokens > 50_000
    tok = a.load_tokenizer()
    assert tok.decode(TokenStream(a.train).read(0, 20).tolist()).startswith("Genesis\n\nGenesis 1\n\nIn the beginning")
    vx, _ = next(val_batches(a.val, batch_size=4, seq_len=128))
    assert tok.decode(vx[0].tolist()).startswith("Hosea\n\nHosea 1\n\n")  # the first validation book
    x, y = next(TokenLoader(a.train, batch_size=4, seq_len=128, seed=0))
    assert x.shape == (4, 128) and int(x.max()) < 8192 and torch.equal(x[:, 1:], y[:, :-1])


def test_prepare_handles_a_long_line_without_whitespace_and_says_what_it_does(tmp_path, capsys):
    """Minified JSON, base64 and tables make whitespace-free lines of megabytes (issue #13 item 5). A 200 KB one
    with ordinary text prepares, round-trips through the tokenizer, and progress goes to stderr."""
    import random

    from nvfp4.data import prepare_dataset

    rng = random.Random(0)
    long_line = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+/=") for _ in range(200_000))
    src = tmp_path / "src"
    src.mkdir()
    (src / "blob.txt").write_text(long_line + "\n")
    for i in range(4):
        (src / f"doc{i}.txt").write_text(f"An ordinary document number {i}, with words and spaces.\n" * 50)
    info = prepare_dataset(
        [str(src)], tmp_path / "out", vocab_size=512, val_fraction=0.2, cache_dir=tmp_path, progress=True
    )
    err = capsys.readouterr().err
    assert "training the BPE tokenizer (vocab 512)" in err and "tokenizing train" in err
    tok = info.load_tokenizer()
    assert tok.decode(tok.encode(long_line)) == long_line
