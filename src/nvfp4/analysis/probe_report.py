"""``nvfp4 probe``'s report.md and plots, from the probe.json figures alone (so they can be redrawn any time)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from nvfp4._io import atomic_write
from nvfp4.recipe import OPERANDS

GEMM_NAMES = ("fprop", "dgrad", "wgrad")
_SHORT = {
    "fprop_x": "F·x",
    "fprop_w": "F·W",
    "dgrad_dy": "D·dy",
    "dgrad_w": "D·W",
    "wgrad_dy": "W·dy",
    "wgrad_x": "W·x",
}


def mean_operand_sqnr(recipe: dict[str, Any]) -> dict[str, float | None]:
    """Mean SQNR (dB) of each operand over the recipe's quantized layers (None where no layer is quantized)."""
    values: dict[str, list[float]] = defaultdict(list)
    for layer in recipe["layers"].values():
        for op, figures in layer.get("operands", {}).items():
            if figures.get("sqnr_db") is not None:
                values[op].append(figures["sqnr_db"])
    return {op: (sum(v) / len(v) if v else None) for op in OPERANDS for v in [values.get(op, [])]}


def max_fwd_bwd_difference(recipe: dict[str, Any]) -> float | None:
    values = [
        layer["fwd_bwd_weight_difference"]
        for layer in recipe["layers"].values()
        if "fwd_bwd_weight_difference" in layer
    ]
    return max(values) if values else None


def depth_figure(recipe: dict[str, Any], kind: str = "weight_grad", key: str = "relative_error") -> dict[int, float]:
    """A gradient figure per block: the layers of each block pooled (mean over the block's layers)."""
    per_block: dict[int, list[float]] = defaultdict(list)
    for layer in recipe["layers"].values():
        value = layer.get(kind, {}).get(key)
        if layer["block"] is not None and value is not None:
            per_block[layer["block"]].append(value)
    return {b: sum(v) / len(v) for b, v in sorted(per_block.items())}


def _f(value: Any, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def write_probe_report(probe: dict[str, Any], out_dir: str | Path) -> Path:
    meta, results = probe["meta"], probe["recipes"]
    if meta.get("source") == "checkpoint":
        src = (
            f"checkpoint `{meta.get('checkpoint')}` (step {meta.get('step')}, {meta.get('tokens'):,} tokens, "
            f"trained with {meta.get('trained_recipe')})"
        )
    else:
        src = f"fresh weights (seed {meta.get('seed')})"
    lines = [
        f"# Probe: model `{meta.get('model')}`, {src}",
        "",
        f"- batch: {meta.get('batch_sequences')} validation sequences × {meta.get('seq_len')} tokens; "
        f"{meta.get('draws')} stochastic-rounding draws per recipe; autocast {meta.get('autocast')}",
        f"- {meta.get('hardware')}; git {meta.get('git_commit')}; {meta.get('date')}; "
        f"{meta.get('wall_time_s', 0) / 60:.1f} min",
    ]
    if meta.get("command"):
        lines += ["", "```bash", meta["command"], "```"]
    lines += [
        "",
        "Gradients are held against the FP32 gradient of the same model on the same batch (*vs FP32*) and against the "
        "gradient of the same quantized forward with an exact backward (*backward only*, what the backward pass "
        "loses). Alignment ⟨ḡ, g⟩/‖g‖² and relative bias ‖E[g_q] − g‖/‖g‖ use the mean of the draws (its noise "
        "taken out of the bias); a concentration slope of −1 means unbiased, → 0 a bias floor. Operand SQNR is the "
        "mean over the quantized layers, on the operands of the FP32 pass. fwd/bwd W: ‖W_fprop − W_dgrad‖/‖W‖, "
        "largest over layers.",
        "",
        "## Recipes",
        "",
        "| recipe | quantized layers | "
        + " | ".join(f"SQNR {_SHORT[o]} (dB)" for o in OPERANDS)
        + " | W-grad cosine | alignment | rel. bias | slope | bwd-only alignment | bwd-only bias | bwd-only slope "
        "| fwd/bwd W |",
        "|---|---|" + "---|" * len(OPERANDS) + "---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        sqnr = mean_operand_sqnr(r)
        g = r["model"]["weight_grad"]["all_layers"]
        b = (r["model"].get("weight_backward_only_grad") or {}).get("all_layers") or {}
        lines.append(
            f"| {name} | {r['quantized_layers']} | "
            + " | ".join(_f(sqnr[o], ".2f") for o in OPERANDS)
            + f" | {_f(g.get('cosine'))} | {_f(g.get('alignment'))} | {_f(g.get('relative_bias'))} "
            f"| {_f(g.get('concentration_slope'), '.2f')} | {_f(b.get('alignment'))} | {_f(b.get('relative_bias'))} "
            f"| {_f(b.get('concentration_slope'), '.2f')} | {_f(max_fwd_bwd_difference(r), '.4f')} |"
        )
    blocks = sorted({b for r in results.values() for b in depth_figure(r)})
    lines += [
        "",
        "## By depth: weight-gradient error of one draw, ‖g_q − g‖/‖g‖ (mean over the block's linears)",
        "",
        "| recipe | " + " | ".join(f"block {b}" for b in blocks) + " |",
        "|---|" + "---|" * len(blocks),
    ]
    for name, r in results.items():
        d = depth_figure(r)
        lines.append(f"| {name} | " + " | ".join(_f(d.get(b)) for b in blocks) + " |")
    lines += ["", "## Per layer", ""]
    for name, r in results.items():
        lines += [
            f"### {name}",
            "",
            f"{r['description']}",
            "",
            "| layer | treatment | "
            + " | ".join(f"SQNR {_SHORT[o]}" for o in OPERANDS)
            + " | Fprop err | Dgrad err | Wgrad err | W-grad cos | align | bias | slope | dx cos | fwd/bwd W |",
            "|---|---|" + "---|" * len(OPERANDS) + "---|---|---|---|---|---|---|---|---|",
        ]
        for lname, layer in r["layers"].items():
            ops = layer.get("operands", {})
            gemms = layer.get("gemms", {})
            g, dx = layer["weight_grad"], layer["input_grad"]
            lines.append(
                f"| {lname} | {layer['treatment']} | "
                + " | ".join(_f(ops.get(o, {}).get("sqnr_db"), ".2f") for o in OPERANDS)
                + " | "
                + " | ".join(_f(gemms.get(k, {}).get("relative_error"), ".4f") for k in GEMM_NAMES)
                + f" | {_f(g.get('cosine'))} | {_f(g.get('alignment'))} | {_f(g.get('relative_bias'))} "
                f"| {_f(g.get('concentration_slope'), '.2f')} | {_f(dx.get('cosine'))} "
                f"| {_f(layer.get('fwd_bwd_weight_difference'), '.4f')} |"
            )
        lines.append("")
    lines += [
        "Plots: [concentration](probe_concentration.png), [operand SQNR](probe_sqnr.png), "
        "[gradient error by depth](probe_depth.png).",
        "",
    ]
    path = Path(out_dir) / "report.md"
    atomic_write(path, "\n".join(lines).encode())
    return path


def write_probe_plots(probe: dict[str, Any], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    results = probe["recipes"]
    names = list(results)
    colors = {n: plt.cm.tab20(i % 20) for i, n in enumerate(names)}
    paths = []

    # 1. concentration curves, log-log, both references
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, key, title in (
        (axes[0], "weight_grad", "vs the FP32 gradient"),
        (axes[1], "weight_backward_only_grad", "vs an exact backward of the same forward"),
    ):
        for n in names:
            figures = (results[n]["model"].get(key) or {}).get("all_layers") or {}
            curve = figures.get("concentration")
            if not curve or not all(e and e > 0 for e in curve["error"]):
                continue
            ax.plot(curve["k"], curve["error"], marker="o", ms=3, color=colors[n], label=n)
        k_max = probe["meta"].get("draws", 2)
        ax.plot([1, k_max], [1, 1 / k_max], ls="--", color="0.5", lw=1, label="slope −1 (unbiased), from 1")
        ax.set(xscale="log", yscale="log", xlabel="draws averaged, k", title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("‖mean_k(g_q) − g‖² / ‖g‖²  (all block linears)")
    axes[1].legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle("Concentration of the weight gradient over stochastic-rounding draws")
    paths.append(_save(fig, out_dir / "probe_concentration.png"))

    # 2. SQNR per operand per recipe, bars from 0 dB
    fig, ax = plt.subplots(figsize=(12, 4.6))
    quantized = [n for n in names if results[n]["quantized_layers"]]
    width = 0.8 / max(1, len(quantized))
    for i, n in enumerate(quantized):
        sqnr = mean_operand_sqnr(results[n])
        xs = [j + (i - (len(quantized) - 1) / 2) * width for j in range(len(OPERANDS))]
        ax.bar(xs, [sqnr[o] or 0.0 for o in OPERANDS], width=width, color=colors[n], label=n)
    ax.set_xticks(range(len(OPERANDS)), [o for o in OPERANDS])
    ax.set(ylabel="SQNR (dB, mean over quantized layers)", ylim=(0, None), title="Operand error per GEMM operand")
    ax.legend(fontsize=7, ncol=4)
    ax.grid(True, axis="y", alpha=0.3)
    paths.append(_save(fig, out_dir / "probe_sqnr.png"))

    # 3. gradient error by depth
    fig, ax = plt.subplots(figsize=(12, 4.6))
    blocks = sorted({b for n in names for b in depth_figure(results[n])})
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        d = depth_figure(results[n])
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(blocks))]
        ax.bar(xs, [d.get(b, 0.0) for b in blocks], width=width, color=colors[n], label=n)
    ax.set_xticks(range(len(blocks)), [f"block {b}" for b in blocks])
    ax.set(ylabel="‖g_q − g‖ / ‖g‖ (one draw, weight gradient)", ylim=(0, None), title="Weight-gradient error by depth")
    ax.legend(fontsize=7, ncol=4)
    ax.grid(True, axis="y", alpha=0.3)
    paths.append(_save(fig, out_dir / "probe_depth.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def mechanism_figures(probe: dict[str, Any]) -> dict[str, Any]:
    """The compact per-recipe numbers the claims judge reads (``summary["mechanisms"]``), from a probe.json."""
    out: dict[str, Any] = {"meta": {k: probe["meta"].get(k) for k in ("source", "model", "step", "tokens", "draws")}}
    for name, r in probe["recipes"].items():
        q = [layer for layer in r["layers"].values() if layer.get("operands")]
        sqnr = mean_operand_sqnr(r)
        g = r["model"]["weight_grad"]["all_layers"]
        b = (r["model"].get("weight_backward_only_grad") or {}).get("all_layers") or {}
        per_block: dict[int, list[float]] = defaultdict(list)
        for layer in q:
            per_block[layer["block"]] += [
                o["relative_mse"]
                for o in layer["operands"].values()
                if o.get("relative_mse") is not None and o["format"] != "bf16"
            ]
        entry = {
            "quantized_layers": r["quantized_layers"],
            "sqnr_db": sqnr,
            "sqnr_db_mean": _mean([v for o, v in sqnr.items() if v is not None and _quantized_operand(q, o)]),
            "wgrad_underflow": _mean([layer["operands"]["wgrad_dy"]["underflow_fraction"] for layer in q]),
            "fwd_bwd_weight_difference": max_fwd_bwd_difference(r),
            "weight_grad": {
                k: g.get(k) for k in ("cosine", "alignment", "relative_bias", "relative_error", "concentration_slope")
            },
            "weight_grad_backward_only": {
                k: b.get(k) for k in ("cosine", "alignment", "relative_bias", "concentration_slope")
            },
            "operand_relative_mse_by_block": {blk: _mean(v) for blk, v in sorted(per_block.items())},
            "weight_grad_error_by_block": depth_figure(r),
        }
        for gemm in GEMM_NAMES:
            entry[f"{gemm}_gemm_error"] = _mean([layer["gemms"][gemm]["relative_error"] for layer in q])
        for gemm in ("dgrad", "wgrad"):
            est = [layer["gemm_estimates"][gemm] for layer in q if "gemm_estimates" in layer]
            entry[f"{gemm}_estimate"] = {
                k: _mean([e.get(k) for e in est])
                for k in ("relative_bias", "relative_variance", "alignment", "concentration_slope")
            }
        out[name] = entry
    return out


def _quantized_operand(layers: list[dict[str, Any]], operand: str) -> bool:
    return any(layer["operands"][operand]["format"] != "bf16" for layer in layers)
