"""TrainConfig validation and (de)serialization: bad values fail at construction with a clear message."""

from __future__ import annotations

import json

import pytest

from nvfp4.train import TrainConfig
from nvfp4.train.config import DEFAULT_MAX_STEPS


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(lr=-1.0), "lr must be a positive number"),
        (dict(lr=float("nan")), "lr must be a positive number"),
        (dict(lr=3.4e38), r"lr=3.4e\+38 is too large to train with"),
        (dict(max_steps=10, max_tokens=1000), "either max_steps or max_tokens, not both"),
        (dict(warmup_steps=10, warmup_fraction=0.1), "either warmup_steps or warmup_fraction"),
        (dict(recipe="fp3"), "unknown recipe 'fp3'; valid recipes: bf16"),
        (dict(model="huge"), "unknown model preset 'huge'; valid presets: tiny"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
        (dict(max_steps=0), "max_steps must be a positive integer"),
        (dict(keep_steps=[0]), "keep_steps must be positive integers"),
        (dict(branch_from=""), "branch_from must be a checkpoint file path"),
        (dict(schedule="linear"), "schedule must be one of wsd, cosine, constant"),
        (dict(distributed="horovod"), "distributed must be one of none, ddp, fsdp"),
        (dict(min_lr_ratio=1.5), "min_lr_ratio must be a number in"),
        (dict(betas=(0.9, 1.0)), "betas must be two numbers"),
        (dict(eval_interval=-1), "eval_interval must be a non-negative integer"),
        (dict(data=[]), "data must be a non-empty list of paths"),
        (dict(mlp="gelu"), "mlp must be relu2 or swiglu"),
        (dict(d_model=90), "d_model=90 is not divisible by n_head=4"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TrainConfig(**values)


def test_defaults_are_valid_and_length_resolves():
    config = TrainConfig()
    assert config.total_steps() == DEFAULT_MAX_STEPS
    assert TrainConfig(max_steps=7).total_steps() == 7
    per_step = TrainConfig().tokens_per_step(world_size=2)
    assert per_step == 2 * config.batch_size * config.seq_len * config.grad_accum
    assert TrainConfig(max_tokens=per_step * 3).total_steps(world_size=2) == 3
    assert TrainConfig(max_tokens=per_step * 3 + 1).total_steps(world_size=2) == 4
    assert TrainConfig(warmup_steps=7).warmup(100) == 7
    assert TrainConfig(warmup_fraction=0.1).warmup(100) == 10
    assert TrainConfig().warmup(100) == 5


def test_toml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('recipe = "bf16"\nlr = 0.001\nbetas = [0.8, 0.9]\ndata = ["a", "b"]\nmax_steps = 12\n')
    config = TrainConfig.from_toml(path, lr=0.002)
    assert (config.recipe, config.lr, config.betas, config.data, config.max_steps) == (
        "bf16",
        0.002,
        (0.8, 0.9),
        ["a", "b"],
        12,
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_toml_unknown_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('recipe = "bf16"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match=r"run.toml: unknown config keys \['learning_rate'\]; valid keys: recipe, "):
        TrainConfig.from_toml(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('lr = "fast"\n', "'lr' has the wrong type"),
        ("max_steps = 1.5\n", "'max_steps' has the wrong type"),
        ("lr = -0.1\n", "lr must be a positive number"),
        ("lr = = 1\n", "invalid TOML"),
    ],
)
def test_toml_bad_values(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_toml(path)


def test_missing_toml_file(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        TrainConfig.from_toml(tmp_path / "nope.toml")
