import os
import struct
import zlib

import numpy as np
import pytest

from nvfp4.data import (
    ShardError,
    ShardSpan,
    ShardWriter,
    TokenStream,
    read_shard,
    read_shard_header,
    split_tail,
    write_shard,
)
from nvfp4.data.shards import HEADER_BYTES, MAGIC


def test_write_read_round_trip(tmp_path):
    tokens = np.array([0, 1, 65535, 42, 7], dtype=np.int64)
    path = write_shard(tmp_path / "s.bin", tokens, vocab_size=65536)
    assert path.stat().st_size == HEADER_BYTES + 2 * len(tokens)
    assert path.read_bytes()[:8] == MAGIC
    header = read_shard_header(path)
    assert (header.num_tokens, header.vocab_size, header.version) == (5, 65536, 2)
    assert header.body_crc == zlib.crc32(np.asarray(tokens, dtype="<u2").tobytes())
    loaded = read_shard(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, tokens)
    assert not loaded.flags.writeable
    assert len(read_shard(write_shard(tmp_path / "empty.bin", [], vocab_size=10))) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.bin", "s.bin"]  # no temp files left


def test_vocab_and_token_range_are_checked(tmp_path):
    with pytest.raises(ValueError, match="uint16 shards need 0 < vocab_size <= 65536"):
        write_shard(tmp_path / "s.bin", [1, 2], vocab_size=65537)
    with pytest.raises(ValueError, match=r"integers in \[0, 10\)"):
        write_shard(tmp_path / "s.bin", [1, 10], vocab_size=10)
    with pytest.raises(ValueError, match="integers"):
        write_shard(tmp_path / "s.bin", np.array([1.5]), vocab_size=10)
    with pytest.raises(ValueError, match="1-D"):
        write_shard(tmp_path / "s.bin", np.zeros((2, 2), dtype=np.int64), vocab_size=10)
    assert not (tmp_path / "s.bin").exists()


def test_failed_write_keeps_the_old_shard(tmp_path, monkeypatch):
    path = write_shard(tmp_path / "s.bin", [1, 2, 3], vocab_size=10)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, [4, 5], vocab_size=10)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_shard(path), [1, 2, 3])
    assert [p.name for p in tmp_path.iterdir()] == ["s.bin"]


def _shard_bytes(tmp_path) -> bytes:
    return write_shard(tmp_path / "good.bin", np.arange(100), vocab_size=100).read_bytes()


def _corrupt(tmp_path, data: bytes):
    path = tmp_path / "corrupt.bin"
    path.write_bytes(data)
    return path


def _header_with(version: int = 1, dtype_code: int = 1, num_tokens: int = 100) -> bytes:
    fields = struct.pack("<8sIIQI", MAGIC, version, dtype_code, num_tokens, 100)
    header = fields + struct.pack("<I", zlib.crc32(fields))
    return header + bytes(HEADER_BYTES - len(header))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: b"NOTTOKEN" + good[8:], "bad magic bytes"),
        (lambda good: good[:-2], "body truncated: header promises 100 tokens"),
        (lambda good: good + b"\0\0", "body has trailing bytes"),
        (lambda good: good[:30], "too short for the 64-byte shard header"),
        (lambda good: good[:20] + b"\x01" + good[21:], "header checksum mismatch"),
        (lambda good: _header_with(version=3) + good[HEADER_BYTES:], "shard format version 3"),
        (lambda good: good[:-8] + bytes([good[-8] ^ 0x01]) + good[-7:], "body checksum mismatch"),  # one flipped bit
        (lambda good: _header_with() + good[HEADER_BYTES:-2] + b"\xff\x00", "token id 255 at position 99 is not below"),
        (lambda good: _header_with(dtype_code=9) + good[HEADER_BYTES:], "unknown token dtype code 9"),
    ],
)
def test_corrupt_shards_raise_shard_error_naming_the_file(tmp_path, make, message):
    path = _corrupt(tmp_path, make(_shard_bytes(tmp_path)))
    with pytest.raises(ShardError, match=message) as info:
        read_shard(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_shard(tmp_path):
    with pytest.raises(ShardError, match="does not exist"):
        read_shard(tmp_path / "missing.bin")


def test_shard_writer_caps_shard_size(tmp_path):
    writer = ShardWriter(tmp_path, "train", vocab_size=100, max_tokens=10)
    writer.write(range(7))
    writer.write(range(7, 25))
    paths = writer.close()
    assert [p.name for p in paths] == ["train_000.bin", "train_001.bin", "train_002.bin"]
    assert [len(read_shard(p)) for p in paths] == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([read_shard(p) for p in paths]), np.arange(25))
    assert writer.num_tokens == 25


def test_token_stream_reads_across_shards_and_spans(tmp_path):
    a = write_shard(tmp_path / "a.bin", np.arange(0, 10), vocab_size=100)
    b = write_shard(tmp_path / "b.bin", np.arange(10, 13), vocab_size=100)
    c = write_shard(tmp_path / "c.bin", np.arange(13, 30), vocab_size=100)
    stream = TokenStream([a, ShardSpan(b), ShardSpan(c, 2, 12)])
    expected = np.concatenate([np.arange(0, 13), np.arange(15, 25)])
    assert len(stream) == len(expected)
    np.testing.assert_array_equal(stream.read(0, len(stream)), expected)
    np.testing.assert_array_equal(stream.read(8, 16), expected[8:16])
    assert stream.read(5, 5).size == 0
    with pytest.raises(IndexError):
        stream.read(0, len(stream) + 1)
    with pytest.raises(ShardError, match="outside its 17 tokens"):
        TokenStream([ShardSpan(c, 0, 18)])


def test_split_tail(tmp_path):
    a = write_shard(tmp_path / "a.bin", np.arange(0, 60), vocab_size=200)
    b = write_shard(tmp_path / "b.bin", np.arange(60, 100), vocab_size=200)
    head, tail = split_tail([a, b], 0.3)
    assert tail == [ShardSpan(b, 10, 40)]
    assert head == [ShardSpan(a, 0, 60), ShardSpan(b, 0, 10)]
    np.testing.assert_array_equal(TokenStream(head).read(0, 70), np.arange(70))
    head, tail = split_tail([a, b], 0.5)
    assert head == [ShardSpan(a, 0, 50)] and tail == [ShardSpan(a, 50, 60), ShardSpan(b, 0, 40)]


def test_mixing_vocab_sizes_is_refused(tmp_path):
    a = write_shard(tmp_path / "a.bin", [1, 2], vocab_size=100)
    b = write_shard(tmp_path / "b.bin", [1, 2], vocab_size=257)
    with pytest.raises(ShardError, match="different vocab sizes"):
        TokenStream([a, b])


def test_version_1_shards_are_still_read(tmp_path):
    """Shards written before the body checksum (format version 1): read, with the token-id check only."""
    body = np.arange(100, dtype="<u2").tobytes()
    path = _corrupt(tmp_path, _header_with() + body)
    header = read_shard_header(path)
    assert header.version == 1 and header.body_crc is None
    assert np.array_equal(read_shard(path), np.arange(100))
