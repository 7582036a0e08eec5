"""Model conversion: swap ``nn.Linear`` modules for ``nvfp4.Linear`` following a recipe's layer policy.

The model code never knows about quantization (torchtitan's converter pattern): ``convert``
finds the transformer blocks, keeps the recipe's first/last blocks and excluded names (output
head, embeddings) in BF16 as plain ``nn.Linear``, and wraps every other linear in place.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn

from nvfp4 import recipes
from nvfp4.linear import PRECISIONS, AmaxReducer, Linear, checkpoint_context, layer_seed
from nvfp4.recipe import PASSES, LayerPolicy, Recipe

# Name patterns that stay high precision unless ``default_exclusions=False``: output heads of the common model
# families (GPT/Llama ``lm_head``, GPT-NeoX/Pythia ``embed_out``, Megatron ``output_layer``, sequence-classification
# ``score`` and ``classifier``, ``output``) and embeddings. A pattern matches a full name or one dotted part.
DEFAULT_EXCLUDE = (
    "lm_head",
    "output",
    "embed",
    "embed_out",
    "output_layer",
    "score",
    "classifier",
    "embed_tokens",
    "wte",
    "wpe",
)
FilterFn = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class ConvertedLayer:
    name: str
    block: int | None  # transformer block index, None outside the blocks
    treatment: str  # the recipe name, or why it stayed BF16
    in_features: int
    out_features: int
    kind: str | None = None  # the block's kind where blocks have one (the hybrid: mamba, attention, mlp)

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features


class ConversionReport(list):
    """Rows of ``ConvertedLayer``; ``str()`` gives the table that ``convert(verbose=True)`` prints.
    ``model_parameters``: every parameter of the model, so the report says what share got quantized."""

    model_parameters: int = 0

    @property
    def quantized_parameters(self) -> int:
        return sum(r.parameters for r in self if r.treatment.startswith("quantized"))

    def __str__(self) -> str:
        width = max([len(r.name) for r in self] + [5])
        kinds = any(r.kind for r in self)
        kind_head = f"  {'kind':9s}" if kinds else ""
        lines = [f"{'layer':{width}s}  {'block':>5s}{kind_head}  {'shape':>11s}  treatment"]
        for r in self:
            block = "-" if r.block is None else str(r.block)
            shape = f"{r.in_features}->{r.out_features}"
            kind = f"  {r.kind or '-':9s}" if kinds else ""
            lines.append(f"{r.name:{width}s}  {block:>5s}{kind}  {shape:>11s}  {r.treatment}")
        quantized = sum(r.treatment.startswith("quantized") for r in self)
        share = f", {100 * self.quantized_parameters / self.model_parameters:.1f}%" if self.model_parameters else ""
        lines.append(
            f"{quantized} of {len(self)} linear layers quantized: {self.quantized_parameters:,} of "
            f"{self.model_parameters:,} parameters{share}"
        )
        return "\n".join(lines)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ModuleList whose children are all of one class (the repeated transformer blocks)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and (best is None or len(module) > len(best[1])):
                best = (name, module)
    return best


def _matches(name: str, patterns: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(fnmatch.fnmatch(name, p) or any(fnmatch.fnmatch(part, p) for part in parts) for p in patterns)


def _edge_recipe(recipe: Recipe) -> Recipe | None:
    """The recipe of the first/last blocks when the layer policy names one (``LayerPolicy.edge_recipe``)."""
    name = recipe.layers.edge_recipe
    if name is None:
        return None
    edge = recipes.get(name)
    if edge.layers.edge_recipe is not None:
        raise ValueError(f"recipe {recipe.name!r}: its edge recipe {name!r} names an edge recipe of its own")
    return edge.replace(layers=LayerPolicy(), switch=recipe.switch)


def convert(
    model: nn.Module,
    recipe: str | Recipe = "nvfp4",
    blocks: nn.ModuleList | None = None,
    exclude: Iterable[str] = (),
    *,
    filter_fn: FilterFn | None = None,
    default_exclusions: bool = True,
    seed: int = 0,
    backend: str = "auto",
    verbose: bool = False,
) -> nn.Module:
    """Replace the model's ``nn.Linear`` modules in place; returns the model.

    ``exclude``: name globs kept in high precision, *in addition to* ``DEFAULT_EXCLUDE`` (output heads,
    embeddings) unless ``default_exclusions=False``. ``filter_fn(module, fqn)``: return False to keep a linear in
    high precision (torchao's ``module_filter_fn``), applied after the recipe's layer policy. The table of what
    happened to each linear is in ``conversion_report(model)`` (printed with ``verbose=True``). Parameters of
    3-D (grouped MoE expert) weights are not quantized: a warning names them with their share of the model.
    ``seed`` keys the stochastic-rounding streams (distinct per layer).
    """
    recipe = recipes.get(recipe)
    if isinstance(exclude, str):
        raise ValueError(f"exclude must be a sequence of name patterns, not the string {exclude!r}: use ({exclude!r},)")
    exclude = (DEFAULT_EXCLUDE if default_exclusions else ()) + tuple(exclude)
    if blocks is None:
        found = find_blocks(model)
        blocks_prefix, blocks = found if found else ("", None)
    else:
        blocks_prefix = next((n for n, m in model.named_modules() if m is blocks), None)
        if blocks_prefix is None:
            raise ValueError("`blocks` is not a submodule of `model`; pass the model's own ModuleList")
    depth = len(blocks) if blocks is not None else 0
    bf16_blocks = recipe.layers.bf16_blocks(depth) if depth else set()
    edge_recipe = _edge_recipe(recipe)

    report = ConversionReport()
    targets = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear or isinstance(m, Linear)]
    for index, (name, module) in enumerate(targets):
        block = _block_index(name, blocks_prefix) if blocks is not None else None
        if _matches(name, exclude):
            treatment = "bf16 (excluded by name)"
        elif not recipe.quantized:
            treatment = f"bf16 (recipe {recipe.name})"
        elif block is not None and block in bf16_blocks:
            edge = "first blocks" if block < depth / 2 else "last blocks"
            treatment = f"quantized ({edge_recipe.name}, {edge})" if edge_recipe else f"bf16 ({edge})"
        elif _matches(name, recipe.layers.bf16_names):
            treatment = "bf16 (recipe bf16_names)"
        elif filter_fn is not None and not filter_fn(module, name):
            treatment = "bf16 (filter_fn)"
        else:
            treatment = f"quantized ({recipe.name})"
        base = module if type(module) is nn.Linear else _unwrap(module)
        if treatment.startswith("quantized"):
            layer_recipe = edge_recipe if edge_recipe and block in bf16_blocks else recipe
            replacement = Linear.from_linear(base, layer_recipe, seed=layer_seed(seed, index), backend=backend)
        else:
            replacement = base
        if replacement is not module:
            _set_submodule(model, name, replacement)
        kind = getattr(blocks[block], "kind", None) if block is not None and blocks is not None else None
        report.append(ConvertedLayer(name, block, treatment, base.in_features, base.out_features, kind))
    report.model_parameters = sum(p.numel() for p in model.parameters())
    if recipe.quantized:
        _warn_grouped_weights(model, report.model_parameters)
    model._nvfp4_report = report  # type: ignore[attr-defined]
    if hasattr(model, "checkpoint_context"):  # nvfp4.model.GPT: its activation checkpointing replays SR counters
        model.checkpoint_context = checkpoint_context
    if verbose:
        print(report)
    return model


def _warn_grouped_weights(model: nn.Module, total: int) -> None:
    """MoE experts stored as 3-D parameters (transformers 5.x Mixtral, Qwen2-MoE: one (experts, out, in) tensor run
    as a grouped GEMM) are not nn.Linear: say so, with their share of the model, instead of skipping them silently."""
    grouped = [
        (f"{m}.{n}" if m else n, p.numel())
        for m, module in model.named_modules()
        if not isinstance(module, nn.modules.conv._ConvNd)  # a conv's 3-D kernel is no expert stack
        for n, p in module.named_parameters(recurse=False)
        if p.dim() == 3
    ]
    if not grouped:
        return
    count = sum(n for _, n in grouped)
    names = ", ".join(n for n, _ in grouped[:3]) + (f" and {len(grouped) - 3} more" if len(grouped) > 3 else "")
    warnings.warn(
        f"nvfp4.convert: {len(grouped)} 3-D (grouped expert) weight parameters, {100 * count / max(total, 1):.1f}% "
        f"of the model's parameters ({names}), are not nn.Linear and stay in high precision: grouped MoE GEMMs are "
        "not quantized yet",
        stacklevel=3,
    )


def conversion_report(model: nn.Module) -> ConversionReport:
    """The table of the last ``convert`` of this model."""
    report = getattr(model, "_nvfp4_report", None)
    if report is None:
        raise ValueError("this model has not been converted with nvfp4.convert")
    return report


def _unwrap(layer: Linear) -> nn.Linear:
    plain = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(plain)
    plain.in_features, plain.out_features = layer.in_features, layer.out_features
    plain.weight, plain.bias = layer.weight, layer.bias
    return plain


def _block_index(name: str, prefix: str) -> int | None:
    head = f"{prefix}." if prefix else ""
    if not name.startswith(head):
        return None
    first = name[len(head) :].split(".", 1)[0]
    return int(first) if first.isdigit() else None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def quantized_layers(model: nn.Module) -> list[tuple[str, Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Linear)]


def set_precision(model: nn.Module, passes: Iterable[str] = ("forward",), precision: str = "bf16") -> None:
    """Run the named passes of every quantized linear in ``precision`` ("bf16" or "recipe")."""
    passes = tuple(passes)
    if precision not in PRECISIONS or not passes or any(p not in PASSES for p in passes):
        raise ValueError(f"set_precision needs passes from {PASSES} and precision from {PRECISIONS}")
    for _, layer in quantized_layers(model):
        for p in passes:
            layer.precision[p] = precision


def apply_precision_schedule(model: nn.Module, recipe: str | Recipe, progress: float, tokens: int) -> bool:
    """Apply the recipe's late precision switch for this point of training; True once it is active."""
    switch = recipes.get(recipe).switch
    if switch is None:
        return False
    active = switch.active(progress, tokens)
    set_precision(model, switch.passes, "bf16" if active else "recipe")
    return active


def set_amax_reducer(model: nn.Module, reducer: AmaxReducer | None) -> None:
    """Install a callable that reduces weight amax across ranks (sharded weights), or None."""
    for _, layer in quantized_layers(model):
        layer.amax_reducer = reducer


def invalidate_weight_caches(model: nn.Module) -> None:
    """Drop every quantized-weight cache (see ``Linear.invalidate_weight_cache``)."""
    for _, layer in quantized_layers(model):
        layer.invalidate_weight_cache()


def set_sr_rank(model: nn.Module, rank: int) -> None:
    """Give each data-parallel rank its own stochastic-rounding stream for activations and gradients."""
    if rank < 0 or rank >= 1 << 15:
        raise ValueError(f"rank must be in [0, 32768), got {rank}")
    for _, layer in quantized_layers(model):
        layer.sr_rank = int(rank)


def sr_state_dict(model: nn.Module) -> dict[str, int]:
    """The stochastic-rounding call counters, for exact resume (save with the checkpoint)."""
    return {name: layer.sr_calls for name, layer in quantized_layers(model)}


def load_sr_state_dict(model: nn.Module, state: dict[str, int]) -> None:
    layers = dict(quantized_layers(model))
    missing = set(layers) - set(state)
    if missing:
        raise ValueError(f"SR state lacks layers {sorted(missing)[:3]}...: was the checkpoint made with this recipe?")
    for name, layer in layers.items():
        layer.sr_calls = int(state[name])
