"""Hugging Face transformers: convert a model so that it saves and restores as converted, and a ``TrainerCallback``
that applies the recipe's late precision switch.

    from nvfp4.integrations import hf
    model = hf.convert(AutoModelForCausalLM.from_config(config), "nvfp4-switch-fwd", seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[hf.NVFP4Callback()])
    trainer.train(); model.save_pretrained(out)           # config.json records the recipe and the SR counters
    restored = hf.restore(AutoModelForCausalLM.from_pretrained(out))   # converted again, SR counters restored

``convert`` leaves the state dict unchanged (``nvfp4.Linear`` keeps ``nn.Linear``'s keys), so ``save_pretrained``
writes the FP32 master weights; what it adds is ``config.nvfp4``: the recipe (in full, so a custom ``Recipe``
round-trips), the seed, the exclusions and the stochastic-rounding counters (kept current by the callback, or by
``record_sr_state`` before a save outside the Trainer). ``restore`` re-applies exactly that conversion.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import nvfp4
from nvfp4.recipe import Recipe

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the module is about transformers
    raise ImportError("nvfp4.integrations.hf needs transformers: pip install transformers") from None

CONFIG_KEY = "nvfp4"


def _config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("nvfp4.integrations.hf needs a transformers model (one with a .config)")
    return config


def convert(
    model: nn.Module,
    recipe: str | Recipe = "nvfp4",
    *,
    seed: int = 0,
    exclude: tuple[str, ...] = (),
    default_exclusions: bool = True,
    backend: str = "auto",
    verbose: bool = False,
) -> nn.Module:
    """``nvfp4.convert`` plus a record of the conversion in ``model.config.nvfp4`` (saved by ``save_pretrained``)."""
    recipe = nvfp4.recipes.get(recipe)
    nvfp4.convert(
        model,
        recipe,
        exclude=exclude,
        default_exclusions=default_exclusions,
        seed=seed,
        backend=backend,
        verbose=verbose,
    )
    setattr(
        _config(model),
        CONFIG_KEY,
        {
            "recipe": recipe.to_dict(),
            "seed": int(seed),
            "exclude": list(exclude),
            "default_exclusions": bool(default_exclusions),
            "sr_state": nvfp4.sr_state_dict(model),
            "version": nvfp4.__version__,
        },
    )
    return model


def record_sr_state(model: nn.Module) -> None:
    """Copy the stochastic-rounding counters into ``model.config.nvfp4`` (call before ``save_pretrained``)."""
    record = getattr(_config(model), CONFIG_KEY, None)
    if not isinstance(record, dict):
        raise ValueError("this model was not converted with nvfp4.integrations.hf.convert")
    record["sr_state"] = nvfp4.sr_state_dict(model)


def restore(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Re-apply the conversion recorded in ``model.config.nvfp4`` (a model loaded with ``from_pretrained``), with its
    SR counters; a model without a record is returned unchanged."""
    record = getattr(_config(model), CONFIG_KEY, None)
    if record is None:
        return model
    if not isinstance(record, dict) or "recipe" not in record:
        raise ValueError(f"config.{CONFIG_KEY} is not a record written by nvfp4.integrations.hf.convert")
    recipe = Recipe.from_dict(record["recipe"])
    nvfp4.convert(
        model,
        recipe,
        exclude=tuple(record.get("exclude", ())),
        default_exclusions=record.get("default_exclusions", True),
        seed=record.get("seed", 0),
        backend=backend,
    )
    if record.get("sr_state"):
        nvfp4.load_sr_state_dict(model, record["sr_state"])
    return model


class NVFP4Callback(TrainerCallback):
    """Applies the recipe's late precision switch under ``transformers.Trainer`` before each step, drops the stale
    quantized-weight caches after it, and keeps the SR counters in ``model.config.nvfp4`` for ``save_pretrained``.

    ``recipe``: whose switch to apply (default: the one ``convert`` recorded). ``tokens_per_step``: needed only for
    a switch given in tokens (``PrecisionSwitch(at_tokens=...)``)."""

    def __init__(self, recipe: str | Recipe | None = None, tokens_per_step: int | None = None) -> None:
        self.recipe = None if recipe is None else nvfp4.recipes.get(recipe)
        self.tokens_per_step = tokens_per_step

    def _recipe(self, model: nn.Module) -> Recipe:
        if self.recipe is not None:
            return self.recipe
        record = getattr(_config(model), CONFIG_KEY, None)
        if not isinstance(record, dict):
            raise ValueError("NVFP4Callback: pass recipe=..., or convert the model with nvfp4.integrations.hf.convert")
        return Recipe.from_dict(record["recipe"])

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            recipe = self._recipe(model)
            if recipe.switch is not None:
                if recipe.switch.at_tokens is not None and self.tokens_per_step is None:
                    raise ValueError("this recipe switches at a token count: pass NVFP4Callback(tokens_per_step=...)")
                tokens = state.global_step * (self.tokens_per_step or 0)
                nvfp4.apply_precision_schedule(model, recipe, state.global_step / max(state.max_steps, 1), tokens)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            nvfp4.invalidate_weight_caches(model)
            if isinstance(getattr(getattr(model, "config", None), CONFIG_KEY, None), dict):
                record_sr_state(model)
        return control
