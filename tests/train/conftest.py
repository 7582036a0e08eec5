"""Shared fixtures: the built-in corpus tokenized to bytes (prepared once per session) and a tiny run config."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nvfp4.data import default_dataset
from nvfp4.train import TrainConfig

# A 4-block model so that the nvfp4 recipe quantizes blocks 1-2 (it keeps the first and last in BF16).
TINY = dict(model="tiny", n_layer=4, d_model=64, d_ff=256, batch_size=4, seq_len=64)


@pytest.fixture(scope="session")
def byte_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The KJV + Shakespeare corpus with the byte tokenizer (vocab 257: a small, fast embedding)."""
    return str(default_dataset(cache_dir=tmp_path_factory.mktemp("cache"), tokenizer="byte").path)


@pytest.fixture
def make_config(byte_data: str, tmp_path) -> Callable[..., TrainConfig]:
    """TrainConfig for a few-second CPU run; keyword arguments override any field."""

    def make(**overrides) -> TrainConfig:
        values = dict(
            TINY,
            recipe="bf16",
            data=[byte_data],
            max_steps=8,
            eval_interval=4,
            eval_batches=2,
            log_interval=1,
            checkpoint_interval=4,
            lr=3e-3,
            out=str(tmp_path / "run"),
            quiet=True,
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make
