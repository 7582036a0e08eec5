"""Recipe presets: names, validation, serialisation, and the layer policy at the paper's depths."""

from __future__ import annotations

import dataclasses

import pytest

import nvfp4
from nvfp4.recipe import OPERANDS, LayerPolicy, OperandConfig, PrecisionSwitch, Recipe

PAPER_NAMES = {
    "bf16",
    "fp8",
    "mxfp4",
    "nvfp4",
    "nvfp4-no-rht",
    "nvfp4-no-sr",
    "nvfp4-no-2d",
    "nvfp4-all-fp4",
    "nvfp4-sr-everywhere",
    "nvfp4-rht-everywhere",
    "nvfp4-rht4",
    "nvfp4-rht-no-signs",
    "nvfp4-base",
    "nvfp4-switch-fwd",
    "nvfp4-switch-bwd",
    "nvfp4-switch-both",
}
SUCCESSOR_NAMES = {"mxfp8", "nvfp4-mxfp8-edges", "nvfp4-4over6"}  # issue 17's recipes, as they land


def test_registry_has_every_preset_and_describes_each():
    assert set(nvfp4.recipes.names()) == PAPER_NAMES | SUCCESSOR_NAMES
    lines = nvfp4.recipes.describe().splitlines()
    assert [line.split()[0] for line in lines] == nvfp4.recipes.names()
    for name in SUCCESSOR_NAMES | {"nvfp4", "fp8", "mxfp4"}:  # every recipe beyond the ablations names its source
        assert nvfp4.recipes.get(name).source, name
        assert f"[{nvfp4.recipes.get(name).source}]" in lines[nvfp4.recipes.names().index(name)]


def test_mxfp8_recipes():
    mx = nvfp4.recipes.get("mxfp8")
    assert all(mx.operand(o) == OperandConfig("mxfp8", (1, 32), "nearest") for o in OPERANDS)
    edges, base = nvfp4.recipes.get("nvfp4-mxfp8-edges"), nvfp4.recipes.get("nvfp4")
    assert edges.layers.edge_recipe == "mxfp8"
    assert dataclasses.replace(edges.layers, edge_recipe=None) == base.layers  # the same blocks as nvfp4's BF16 ones
    assert edges.replace(layers=base.layers, name="nvfp4", description=base.description) == base


def test_unknown_recipe_lists_valid_names():
    with pytest.raises(ValueError, match="valid recipes: bf16, fp8"):
        nvfp4.recipes.get("nvfp5")


def test_nvfp4_preset_is_the_papers_recipe():
    r = nvfp4.recipes.get("nvfp4")
    assert r.fprop_x == OperandConfig("nvfp4", (1, 16), "nearest")
    assert r.fprop_w == r.dgrad_w == OperandConfig("nvfp4", (16, 16), "nearest")
    assert r.dgrad_dy == OperandConfig("nvfp4", (1, 16), "stochastic")
    assert r.wgrad_dy == OperandConfig("nvfp4", (1, 16), "stochastic", 16)
    assert r.wgrad_x == OperandConfig("nvfp4", (1, 16), "nearest", 16)
    assert r.switch is None


@pytest.mark.parametrize(
    "depth, expected",
    [
        (4, {0, 3}),  # 2/62*4 and 8/62*4 round to 0 and 1 → at least one block at each end
        (12, {0, 10, 11}),
        (62, {0, 1, 54, 55, 56, 57, 58, 59, 60, 61}),  # the paper: first 2 and last 8 of 62
    ],
)
def test_nvfp4_layer_policy_scales_with_depth(depth, expected):
    assert nvfp4.recipes.get("nvfp4").layers.bf16_blocks(depth) == expected


def test_fp8_keeps_first_one_and_last_two_blocks():
    assert nvfp4.recipes.get("fp8").layers.bf16_blocks(12) == {0, 10, 11}
    assert nvfp4.recipes.get("nvfp4-all-fp4").layers.bf16_blocks(12) == set()


def test_ablations_differ_from_nvfp4_in_exactly_their_component():
    base = nvfp4.recipes.get("nvfp4")
    assert nvfp4.recipes.get("nvfp4-no-rht").wgrad_x.hadamard is None
    assert nvfp4.recipes.get("nvfp4-no-sr").dgrad_dy.rounding == "nearest"
    assert nvfp4.recipes.get("nvfp4-no-2d").fprop_w.tile == (1, 16)
    sr_all = nvfp4.recipes.get("nvfp4-sr-everywhere")
    assert all(sr_all.operand(o).stochastic for o in ("fprop_x", "fprop_w", "dgrad_w", "wgrad_x"))
    rht_all = nvfp4.recipes.get("nvfp4-rht-everywhere")
    assert rht_all.fprop_x.hadamard == rht_all.fprop_w.hadamard == 16
    rht4, no_signs = nvfp4.recipes.get("nvfp4-rht4"), nvfp4.recipes.get("nvfp4-rht-no-signs")
    for variant in (rht4, no_signs):  # they differ from nvfp4 in the Wgrad RHT only
        assert (
            variant.replace(wgrad_dy=base.wgrad_dy, wgrad_x=base.wgrad_x, name="nvfp4", description=base.description)
            == base
        )
    assert rht4.wgrad_dy.hadamard == rht4.wgrad_x.hadamard == 4
    assert not no_signs.wgrad_dy.random_signs and not no_signs.wgrad_x.random_signs
    assert "no sign flips" in no_signs.summary() and "no sign flips" not in base.summary()
    for name, passes in (("fwd", ("forward",)), ("bwd", ("backward",)), ("both", ("forward", "backward"))):
        r = nvfp4.recipes.get(f"nvfp4-switch-{name}")
        assert r.switch.passes == passes and r.switch.at_fraction == 0.8
        assert r.replace(switch=None, name="nvfp4", description=base.description) == base


def test_recipe_round_trips_through_dict():
    for name in nvfp4.recipes.names():
        r = nvfp4.recipes.get(name)
        assert Recipe.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: OperandConfig("nvfp5"), "format"),
        (lambda: OperandConfig("nvfp4", (1, 32)), "tile"),
        (lambda: OperandConfig("nvfp4", rounding="up"), "rounding"),
        (lambda: OperandConfig("nvfp4", hadamard=12), "hadamard"),
        (lambda: OperandConfig("mxfp8", (1, 32), "stochastic"), "nearest only"),
        (lambda: OperandConfig("mxfp8", (1, 16)), "tile"),
        (lambda: OperandConfig("mxfp8", (1, 32), hadamard=32), "no Hadamard"),
        (lambda: LayerPolicy(first_fraction=1.5), "fraction"),
        (lambda: PrecisionSwitch(passes=("sideways",)), "passes"),
        (lambda: Recipe("x", wgrad_dy=OperandConfig("nvfp4", hadamard=16)), "same hadamard"),
        (
            lambda: Recipe(
                "x",
                wgrad_dy=OperandConfig("nvfp4", hadamard=16),
                wgrad_x=OperandConfig("nvfp4", hadamard=16, random_signs=False),
            ),
            "same RHT signs",
        ),
    ],
)
def test_bad_recipe_configs_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_switch_activates_at_fraction_or_tokens():
    s = PrecisionSwitch(("forward",), at_fraction=0.8)
    assert not s.active(0.79, 0) and s.active(0.8, 0)
    t = PrecisionSwitch(("backward",), at_fraction=None, at_tokens=1000)
    assert not t.active(0.99, 999) and t.active(0.0, 1000)
