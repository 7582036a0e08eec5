"""The Python examples of the docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nvfp4.data import default_dataset
from nvfp4.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_deploy_guide_example_runs(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    pytest.importorskip("compressed_tensors")
    data = str(default_dataset(cache_dir=tmp_path / "cache", tokenizer="byte").path)
    run = tmp_path / "run"
    train(
        TrainConfig(
            model="tiny",
            n_layer=4,
            d_model=64,
            d_ff=128,
            n_head=2,
            n_kv_head=1,
            batch_size=2,
            seq_len=32,
            max_steps=2,
            eval_batches=1,
            data=[data],
            out=str(run),
            quiet=True,
        )
    )
    blocks = python_blocks(ROOT / "docs" / "deploy.md")
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/deploy.md", "exec"), {"RUN": str(run), "OUT": str(tmp_path / "out")})
