"""``nvfp4 generate`` and ``nvfp4 eval``: a checkpoint loaded as trained, sampled and evaluated."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import nvfp4
from nvfp4.cli import main
from nvfp4.data import default_dataset, prepare_dataset
from nvfp4.inference import evaluate_data, evaluate_tokens, generate, generate_ids, load_trained
from nvfp4.train import TrainConfig, train

TINY = dict(
    model="tiny",
    n_layer=4,
    d_model=64,
    d_ff=128,
    n_head=2,
    n_kv_head=1,
    batch_size=2,
    seq_len=32,
    eval_batches=1,
    quiet=True,
)


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory) -> str:
    return str(default_dataset(cache_dir=tmp_path_factory.mktemp("cache"), tokenizer="byte").path)


@pytest.fixture(scope="module")
def run(byte_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "nvfp4"
    train(TrainConfig(**TINY, recipe="nvfp4", max_steps=4, data=[byte_data], out=str(out)))
    return out


def test_load_trained_converts_as_trained(run):
    trained = load_trained(run, device="cpu")
    assert trained.step == 4 and trained.recipe == "nvfp4"
    layers = [m for m in trained.model.modules() if isinstance(m, nvfp4.Linear)]
    assert layers and all(m.precision["forward"] == "recipe" for m in layers)
    assert not trained.model.training
    bf16 = load_trained(run, device="cpu", precision="bf16")
    assert all(
        m.precision == {"forward": "bf16", "backward": "bf16"}
        for m in bf16.model.modules()
        if isinstance(m, nvfp4.Linear)
    )
    with pytest.raises(ValueError, match="precision"):
        load_trained(run, precision="fp8")


def test_a_late_switch_that_had_begun_is_applied(byte_data, tmp_path):
    out = tmp_path / "switch"
    train(TrainConfig(**TINY, recipe="nvfp4-switch-fwd", max_steps=5, data=[byte_data], out=str(out)))
    layers = [m for m in load_trained(out).model.modules() if isinstance(m, nvfp4.Linear)]
    assert layers and all(m.precision["forward"] == "bf16" for m in layers)


def test_generate_is_reproducible_and_greedy_is_argmax(run):
    trained = load_trained(run, device="cpu")
    a = generate(trained, "In the beginning", max_tokens=12, seed=3)
    assert a == generate(trained, "In the beginning", max_tokens=12, seed=3)
    prompt = trained.tokenizer.encode("In the beginning")
    assert 0 < len(generate_ids(trained, prompt, max_tokens=12, seed=3)) <= 12
    greedy = generate(trained, "And", max_tokens=1, temperature=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = trained.model(torch.tensor([trained.tokenizer.encode("And")]))
    expected = int(logits[0, -1].float().argmax())
    assert greedy == ("" if expected == trained.tokenizer.eot_id else trained.tokenizer.decode([expected]))
    for bad in (dict(max_tokens=0), dict(temperature=-1.0), dict(top_k=0)):
        with pytest.raises(ValueError):
            generate(trained, "x", **bad)


def test_eval_loss_and_bits_per_byte(run, tmp_path):
    trained = load_trained(run, device="cpu")
    ids = trained.tokenizer.encode("And God said, Let there be light: and there was light. " * 4)
    windows = (len(ids) - 1) // 16
    result = evaluate_tokens(trained, ids, seq_len=16, batch_size=windows)  # one batch, as the check below
    stream = torch.tensor(ids)
    x = torch.stack([stream[w * 16 : w * 16 + 16] for w in range(windows)])
    y = torch.stack([stream[w * 16 + 1 : w * 16 + 17] for w in range(windows)])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = trained.model(x)
    expected = float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1)))
    assert result.tokens == windows * 16 and result.loss == pytest.approx(expected, rel=1e-5)
    assert result.bytes == result.tokens  # the byte tokenizer: one token per byte
    assert result.bits_per_byte == pytest.approx(result.loss / math.log(2), rel=1e-9)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    with pytest.raises(ValueError, match="fewer than one window"):
        evaluate_tokens(trained, ids[:5], seq_len=16)


def test_eval_on_text_files_and_on_prepared_shards(run, byte_data, tmp_path):
    trained = load_trained(run, device="cpu")
    text = tmp_path / "doc.txt"
    text.write_text("To be, or not to be, that is the question. " * 10)
    on_text = evaluate_data(trained, [str(text)], seq_len=32)
    assert on_text.documents == 1 and on_text.tokens > 0 and math.isfinite(on_text.loss)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"Document {i}: " + "the lazy dog. " * 30}) for i in range(20)))
    prepared = prepare_dataset([str(corpus)], tmp_path / "prepared", tokenizer="byte")
    on_shards = evaluate_data(trained, [str(prepared.path)], seq_len=32)
    assert on_shards.tokens > 100 and math.isfinite(on_shards.bits_per_byte)  # its validation documents


def test_cli_generate_eval_and_errors(run, tmp_path, capsys):
    assert main(["generate", str(run), "--prompt", "And", "--max-tokens", "5", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 2
    text = tmp_path / "doc.txt"
    text.write_text("Let there be light. " * 20)
    assert main(["eval", str(run), "--data", str(text), "--seq-len", "32", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["step"] == 4 and record["recipe"] == "nvfp4" and record["bits_per_byte"] > 0

    def error(args) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "no readable checkpoint" in error(["generate", str(tmp_path)])
    assert "does not exist" in error(["eval", str(run), "--data", str(tmp_path / "nope.txt")])
    assert "top-k" in error(["generate", str(run), "--top-k", "0"])
    assert "exceeds the model's context" in error(["eval", str(run), "--data", str(text), "--seq-len", "4096"])
