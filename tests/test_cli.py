"""The `nvfp4` command line: train/prepare/recipes, and one clear error line (exit 2) for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nvfp4
from nvfp4.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY_FLAGS = [
    "--model",
    "tiny",
    "--n-layer",
    "3",
    "--d-model",
    "32",
    "--d-ff",
    "64",
    "--n-head",
    "2",
    "--n-kv-head",
    "1",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
    "--eval-batches",
    "1",
    "--quiet",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small byte-level dataset prepared through `nvfp4 prepare` itself."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "docs.jsonl"
    lines = [
        json.dumps({"text": f"Document {i}: " + "the quick brown fox jumps over the lazy dog. " * 20})
        for i in range(24)
    ]
    corpus.write_text("\n".join(lines) + "\n")
    assert main(["prepare", "--data", str(corpus), "--out", str(root / "data"), "--tokenizer", "byte"]) == 0
    return root / "data"


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_recipes_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(nvfp4.recipes.names())
    assert [line.split()[0] for line in out] == nvfp4.recipes.names()


def test_train_writes_outputs_and_summary(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text('lr = 0.5\nrecipe = "nvfp4"\nmax_steps = 3\n')
    argv = ["train", "--config", str(config), "--lr", "0.002", "--data", str(dataset), "--out", str(out), *TINY_FLAGS]
    assert main([a for a in argv if a != "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "final train loss" in printed and "val loss" in printed and "tokens/s" in printed
    saved = json.loads((out / "config.json").read_text())
    assert (saved["lr"], saved["recipe"], saved["max_steps"]) == (0.002, "nvfp4", 3)  # the flag beat the file
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps[0] == 0 and steps[-1] == 3
    assert (out / "checkpoints" / "step_00000003.pt").is_file()
    # Continuing a finished run to more steps with --resume picks up at step 3.
    assert (
        main(
            [
                "train",
                "--config",
                str(config),
                "--lr",
                "0.002",
                "--data",
                str(dataset),
                "--out",
                str(out),
                "--max-steps",
                "4",
                "--resume",
                *TINY_FLAGS,
            ]
        )
        == 0
    )
    steps = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert steps[-2:] == [3, 4] and len(steps) == len(set(steps))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--recipe", "nvfp5"], "error: unknown recipe 'nvfp5'; valid recipes: bf16, fp8"),
        (["train", "--model", "huge"], "error: unknown model preset 'huge'; valid presets: tiny"),
        (["train", "--lr", "-1"], "error: lr must be a positive number"),
        (["train", "--lr", "fast"], "error: nvfp4 train: argument --lr: invalid float value: 'fast'"),
        (["train", "--max-steps", "5", "--max-tokens", "9"], "error: give either max_steps or max_tokens"),
        (["train", "--bogus"], "error: nvfp4: unrecognized arguments: --bogus"),
        (["train", "--data", "/no/such/shards"], "error: /no/such/shards: no such shard file or directory"),
        (["train", "--schedule", "step"], "error: nvfp4 train: argument --schedule: invalid choice: 'step'"),
        (["prepare", "--tokenizer", "byte"], "error: nvfp4 prepare: the following arguments are required: --out"),
        (["prepare", "--data", "/no/such/text", "--out", "x"], "error: /no/such/text: no such file or directory"),
        (["frobnicate"], "error: nvfp4: argument command: invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    assert error_line(capsys).startswith(message)


def test_corrupt_shard_names_the_file(tmp_path, capsys):
    (tmp_path / "train_000.bin").write_bytes(b"NVFP4TOK" + b"\0" * 10)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert str(tmp_path / "train_000.bin") in error_line(capsys)


def test_unknown_toml_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("learning_rate = 0.1\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown config keys ['learning_rate']; valid keys: recipe, model" in error_line(capsys)


def test_existing_run_without_resume_is_refused(dataset, tmp_path, capsys):
    argv = [
        "train",
        "--recipe",
        "bf16",
        "--max-steps",
        "1",
        "--data",
        str(dataset),
        "--out",
        str(tmp_path),
        *TINY_FLAGS,
    ]
    assert main(argv) == 0
    assert main(argv) == 2
    assert "pass --resume to continue that run" in error_line(capsys)


def test_subprocess_error_has_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run(
        [sys.executable, "-m", "nvfp4.cli", "train", "--recipe", "nope", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: unknown recipe 'nope'")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
