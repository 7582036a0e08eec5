"""nvfp4.integrations.hf: a converted transformers model trains under HF Trainer with the recipe's late switch, and
saves / restores as converted (recipe, seed, SR counters)."""

from __future__ import annotations

import pytest
import torch

import nvfp4

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from nvfp4.integrations import hf  # noqa: E402


def tiny_llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def test_trainer_switches_precision_and_the_model_round_trips(tmp_path):
    model = hf.convert(tiny_llama(), "nvfp4-switch-fwd", seed=3)
    layers = [m for m in model.modules() if isinstance(m, nvfp4.Linear)]
    assert len(layers) == 14  # blocks 1 and 2 of 4
    torch.manual_seed(1)
    data = [{"input_ids": (ids := torch.randint(0, 128, (16,))), "labels": ids} for _ in range(10)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=5,
        report_to=[],
        per_device_train_batch_size=2,
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-3,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[hf.NVFP4Callback()])
    trainer.train()
    # the switch at 80%: the 5th step (global_step 4) ran its forward in BF16
    assert all(m.precision == {"forward": "bf16", "backward": "recipe"} for m in layers)
    assert model.config.nvfp4["sr_state"] == nvfp4.sr_state_dict(model)
    assert min(model.config.nvfp4["sr_state"].values()) >= 5
    model.save_pretrained(tmp_path / "saved")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert not any(isinstance(m, nvfp4.Linear) for m in loaded.modules())
    restored = hf.restore(loaded)
    assert nvfp4.sr_state_dict(restored) == nvfp4.sr_state_dict(model)
    assert {n for n, m in restored.named_modules() if isinstance(m, nvfp4.Linear)} == {
        n for n, m in model.named_modules() if isinstance(m, nvfp4.Linear)
    }
    x = torch.randint(0, 128, (2, 16))
    model.eval()
    for m in (model, restored):
        nvfp4.set_precision(m, ("forward", "backward"), "recipe")
    with torch.no_grad():
        assert torch.equal(model(x).logits, restored(x).logits)  # the same bits: weights, recipe, SR counters


def test_callback_needs_a_recipe_and_restore_leaves_plain_models_alone():
    plain = tiny_llama()
    assert hf.restore(plain) is plain and not any(isinstance(m, nvfp4.Linear) for m in plain.modules())
    callback = hf.NVFP4Callback()
    state = transformers.TrainerState()
    state.max_steps, state.global_step = 10, 0
    with pytest.raises(ValueError, match="pass recipe"):
        callback.on_step_begin(None, state, None, model=plain)
    assert isinstance(callback, transformers.TrainerCallback)
    with pytest.raises(ValueError, match="not converted"):
        hf.record_sr_state(plain)
