import json

import numpy as np
import pytest
import torch

from nvfp4.data import ShardSpan, TokenLoader, val_batches, write_shard


@pytest.fixture
def position_shards(tmp_path):
    """Two shards whose token values equal their stream positions, so every batch shows where it came from."""
    a = write_shard(tmp_path / "a.bin", np.arange(0, 700), vocab_size=65536)
    b = write_shard(tmp_path / "b.bin", np.arange(700, 1001), vocab_size=65536)
    return [a, b]


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_batches_are_shifted_windows_covering_each_epoch(position_shards):
    T, B = 10, 4
    loader = TokenLoader(position_shards, batch_size=B, seq_len=T, seed=0)
    assert loader.num_windows == 100 and loader.steps_per_epoch == 25
    starts = []
    for x, y in _take(loader, loader.steps_per_epoch):
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)
        assert torch.equal(x, x[:, :1] + torch.arange(T))  # contiguous runs of the stream
        starts += x[:, 0].tolist()
    assert sorted(starts) == list(range(0, 1000, T))  # every window exactly once per epoch
    assert starts != sorted(starts)  # and shuffled
    next(loader)
    assert loader.epoch == 1


def test_order_depends_only_on_seed(position_shards):
    a = _take(TokenLoader(position_shards, 4, 10, seed=3), 30)
    b = _take(TokenLoader(position_shards, 4, 10, seed=3), 30)
    c = _take(TokenLoader(position_shards, 4, 10, seed=4), 30)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))
    epoch0 = torch.cat([x for x, _ in a[:25]])[:, 0]
    epoch1 = torch.cat([x for x, _ in _take(TokenLoader(position_shards, 4, 10, seed=3), 50)[25:]])[:, 0]
    assert not torch.equal(epoch0, epoch1)  # a fresh permutation every epoch


def test_resume_gives_the_same_subsequent_batches(position_shards):
    reference = _take(TokenLoader(position_shards, 3, 10, seed=7), 80)  # 33 steps/epoch: crosses two epochs
    for stop in (0, 5, 33, 34, 70):
        first = TokenLoader(position_shards, 3, 10, seed=7)
        _take(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON/checkpoint round trip
        resumed = TokenLoader(position_shards, 3, 10, seed=7)
        resumed.load_state_dict(state)
        for (x, y), (rx, ry) in zip(_take(resumed, 80 - stop), reference[stop:], strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_ranks_take_disjoint_rows_of_the_global_batch(position_shards):
    world, B = 3, 2
    single = TokenLoader(position_shards, batch_size=B * world, seq_len=10, seed=1)
    ranks = [TokenLoader(position_shards, B, 10, seed=1, rank=r, world_size=world) for r in range(world)]
    assert ranks[0].steps_per_epoch == single.steps_per_epoch == 16
    for _ in range(40):  # across epoch boundaries too
        gx, gy = next(single)
        parts = [next(loader) for loader in ranks]
        assert torch.equal(torch.cat([x for x, _ in parts]), gx)
        assert torch.equal(torch.cat([y for _, y in parts]), gy)


def test_resume_on_a_different_world_size_with_the_same_global_batch(position_shards):
    two = [TokenLoader(position_shards, 4, 10, seed=2, rank=r, world_size=2) for r in range(2)]
    for loader in two:
        _take(loader, 9)
    one = TokenLoader(position_shards, 8, 10, seed=2)
    one.load_state_dict(two[0].state_dict())
    x, _ = next(one)
    assert torch.equal(x, torch.cat([next(loader)[0] for loader in two]))


@pytest.mark.parametrize(
    ("change", "message"),
    [({"seed": 8}, "seed=7 but this one has 8"), ({"seq_len": 20}, "seq_len"), ({"batch_size": 4}, "global_batch")],
)
def test_resume_with_different_settings_is_refused(position_shards, change, message):
    state = TokenLoader(position_shards, 3, 10, seed=7).state_dict()
    other = TokenLoader(position_shards, **{"batch_size": 3, "seq_len": 10, "seed": 7, **change})
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(state)


def test_resume_on_different_data_is_refused(position_shards):
    state = TokenLoader(position_shards, 3, 10, seed=7).state_dict()
    with pytest.raises(ValueError, match="num_windows"):
        TokenLoader([ShardSpan(position_shards[0])], 3, 10, seed=7).load_state_dict(state)


def test_bad_loader_arguments(position_shards):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TokenLoader(position_shards, batch_size=60, seq_len=10, world_size=2)
    with pytest.raises(ValueError, match="rank must be in"):
        TokenLoader(position_shards, 2, 10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TokenLoader(position_shards, 0, 10)
    with pytest.raises(ValueError, match="seed must be a non-negative"):
        TokenLoader(position_shards, 2, 10, seed=-1)


def test_val_batches_are_sequential_and_repeatable(position_shards):
    batches = list(val_batches(position_shards, batch_size=30, seq_len=10))
    assert [x.shape[0] for x, _ in batches] == [30, 30, 30, 10]  # 100 windows, last batch smaller
    xs = torch.cat([x for x, _ in batches])
    assert torch.equal(xs, torch.arange(1000).view(100, 10))
    assert torch.equal(torch.cat([y for _, y in batches]), xs + 1)
    again = list(val_batches(position_shards, batch_size=30, seq_len=10))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert len(list(val_batches(position_shards, 30, 10, max_batches=2))) == 2


def test_val_batches_on_too_little_data(tmp_path):
    shard = write_shard(tmp_path / "v.bin", np.arange(10), vocab_size=100)
    with pytest.raises(ValueError, match="validation data has 10 tokens, fewer than one window"):
        val_batches([shard], batch_size=2, seq_len=10)
    assert len(list(val_batches([shard], batch_size=2, seq_len=9))) == 1
