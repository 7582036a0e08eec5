"""Comparison of recipes from their runs' ``metrics.jsonl``: the paper's Figures 2/4/6 at our scale.

Relative loss difference is (L − L_ref) / L_ref (SPEC §6). Curves are compared on a common
token grid (linear interpolation), averaged over seeds; train losses are smoothed with an
exponential moving average because single-batch losses are noisy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, pstdev

import numpy as np

from nvfp4.analysis.claims import assess_claims, seed_noise
from nvfp4.analysis.stats import describe, paired_comparison, token_equivalence

LONG_MXFP4 = "mxfp4-long"  # the run name of MXFP4 trained longer (``nvfp4 compare --mxfp4-token-multiplier``)
FINAL_TRAIN_WINDOW = 0.1  # the "final train loss" averages the logged losses of the last 10% of tokens


@dataclass
class RunRecord:
    recipe: str
    seed: int
    tokens: np.ndarray  # tokens at each logged train step
    train_loss: np.ndarray
    val_tokens: np.ndarray
    val_loss: np.ndarray
    result: dict = field(default_factory=dict)  # final figures written by the trainer/compare
    run_info: dict = field(default_factory=dict)  # the trainer's run.json (hardware, git commit, sizes)
    # ``--probe-interval`` records: tokens, and ||g|| / ||g_q - g|| of the whole model's block linears
    probe_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0))
    probe_snr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_sequences: list[float] | None = None  # per-sequence final val losses (``--sequence-eval-batches``)

    @property
    def final_val_loss(self) -> float:
        return float(self.result.get("final_val_loss", self.val_loss[-1] if len(self.val_loss) else math.nan))

    @property
    def final_train_loss(self) -> float:
        """Mean of the logged train losses over the last ``FINAL_TRAIN_WINDOW`` of the run's tokens: a single
        step's loss is one batch's, a few percent of noise, too much to compare recipes by."""
        if not len(self.train_loss):
            return float(self.result.get("final_train_loss", math.nan))
        window = self.tokens >= (1 - FINAL_TRAIN_WINDOW) * self.tokens[-1]
        return float(self.train_loss[window].mean())

    @property
    def diverged(self) -> bool:
        return bool(self.result.get("diverged", False))


def load_run(run_dir: str | Path, recipe: str, seed: int) -> RunRecord:
    """Read ``metrics.jsonl`` (and ``result.json`` if present) of one run."""
    run_dir = Path(run_dir)
    tokens, train, vtok, val, ptok, psnr = [], [], [], [], [], []
    with open(run_dir / "metrics.jsonl") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if "train_loss" in row and row["train_loss"] is not None and math.isfinite(row["train_loss"]):
                tokens.append(row["tokens"])
                train.append(row["train_loss"])
            if row.get("val_loss") is not None:
                vtok.append(row["tokens"])
                val.append(row["val_loss"])
            if (row.get("probe") or {}).get("grad_signal_to_noise") is not None:
                ptok.append(row["tokens"])
                psnr.append(row["probe"]["grad_signal_to_noise"])
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    info_path = run_dir / "run.json"
    run_info = json.loads(info_path.read_text()) if info_path.exists() else {}
    sequences_path = run_dir / "val_sequences.json"
    sequences = json.loads(sequences_path.read_text()).get("losses") if sequences_path.exists() else None
    return RunRecord(
        recipe,
        seed,
        np.array(tokens, float),
        np.array(train, float),
        np.array(vtok, float),
        np.array(val, float),
        result,
        run_info,
        np.array(ptok, float),
        np.array(psnr, float),
        sequences,
    )


def ema(values: np.ndarray, alpha: float | None = None) -> np.ndarray:
    """Exponential moving average of a logged loss curve. The default smoothing scales with the curve's length
    (alpha = 10 / points, between 0.1 and 0.5): a fixed 0.1 lags ~9 points behind, so on a 20-point run the curve
    would end far above where the run ended."""
    if alpha is None:
        alpha = min(0.5, max(0.1, 10 / max(len(values), 1)))
    out = np.empty_like(values, dtype=float)
    acc = values[0] if len(values) else 0.0
    for i, v in enumerate(values):
        acc = alpha * v + (1 - alpha) * acc if i else v
        out[i] = acc
    return out


def _on_grid(runs: list[RunRecord], grid: np.ndarray, which: str) -> np.ndarray:
    """Seed-averaged loss on ``grid`` (NaN where a run has no data)."""
    curves = []
    for r in runs:
        x, y = (r.tokens, ema(r.train_loss)) if which == "train" else (r.val_tokens, r.val_loss)
        if len(x) < 2:
            continue
        curve = np.interp(grid, x, y, left=np.nan, right=np.nan)
        curves.append(curve)
    return np.nanmean(np.stack(curves), axis=0) if curves else np.full_like(grid, np.nan)


def relative_gap_curve(
    runs: list[RunRecord], reference: list[RunRecord], which: str = "train", points: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, (L − L_ref)/L_ref) on the overlap of both recipes' token ranges.

    Paired by seed where the seeds overlap (a seed fixes the data order, and single-batch losses differ far more
    between data orders than between recipes); otherwise every run of each side is averaged."""
    shared = {r.seed for r in runs} & {r.seed for r in reference}
    if shared:
        runs = [r for r in runs if r.seed in shared]
        reference = [r for r in reference if r.seed in shared]

    def span(rs: list[RunRecord]) -> tuple[float, float]:
        xs = [r.tokens if which == "train" else r.val_tokens for r in rs]
        xs = [x for x in xs if len(x)]
        return (max(x[0] for x in xs), min(x[-1] for x in xs)) if xs else (0.0, 0.0)

    lo = max(span(runs)[0], span(reference)[0])
    hi = min(span(runs)[1], span(reference)[1])
    if hi <= lo:
        return np.array([]), np.array([])
    grid = np.linspace(lo, hi, points)
    loss, ref = _on_grid(runs, grid, which), _on_grid(reference, grid, which)
    return grid, (loss - ref) / ref


def _run_tokens(r: RunRecord) -> float:
    return float(r.result.get("tokens") or (r.tokens[-1] if len(r.tokens) else math.nan))


def token_efficiency(equal: list[RunRecord], longer: list[RunRecord], target: list[RunRecord]) -> dict:
    """How many more tokens MXFP4 needs to reach NVFP4's final val loss (the paper: +36% at 8B/1T).

    From the final losses of two complete MXFP4 runs, one with NVFP4's token budget (``equal``) and one longer
    (``longer``), each with its own full LR schedule: the loss is taken as linear in log(tokens) between them
    and solved for NVFP4's loss. A point inside one run's curve would not do: before its LR decay a run sits far
    above the loss a run of that length ends at, so the crossing would measure the schedule, not the format."""
    goal = mean(r.final_val_loss for r in target)
    budget = mean(_run_tokens(r) for r in target)
    out: dict = {
        "target_val_loss": goal,
        "reference_tokens": budget,
        "tokens_needed": None,
        "extra_tokens_fraction": None,
        "extrapolated": None,
        "points": [],
        "note": "",
    }
    if not equal or not longer:
        out["note"] = f"needs complete runs of mxfp4 and {LONG_MXFP4} (--mxfp4-token-multiplier > 1)"
        return out
    (t1, l1), (t2, l2) = [
        (mean(_run_tokens(r) for r in rs), mean(r.final_val_loss for r in rs)) for rs in (equal, longer)
    ]
    out["points"] = [[t1, l1], [t2, l2]]
    if not all(math.isfinite(v) for v in (goal, budget, t1, l1, t2, l2)) or t2 <= t1:
        out["note"] = "no finite losses on two different token budgets"
        return out
    slope = (l2 - l1) / (math.log(t2) - math.log(t1))
    if slope >= 0:
        out["note"] = f"the longer MXFP4 run ended no lower ({l2:.4f} vs {l1:.4f}): no estimate"
        return out
    needed = math.exp(math.log(t1) + (goal - l1) / slope)
    out.update(tokens_needed=needed, extra_tokens_fraction=needed / budget - 1, extrapolated=not t1 <= needed <= t2)
    return out


def summarize(
    runs: list[RunRecord], reference: str = "bf16", meta: dict | None = None, mechanisms: dict | None = None
) -> dict:
    """The content of ``summary.json``: per run and per recipe, with relative gaps to ``reference``."""
    by_recipe: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_recipe.setdefault(r.recipe, []).append(r)
    ref_runs = by_recipe.get(reference, [])
    ref_by_seed = {r.seed: r for r in ref_runs}
    ref_val = mean(r.final_val_loss for r in ref_runs) if ref_runs else math.nan
    ref_train = mean(r.final_train_loss for r in ref_runs) if ref_runs else math.nan

    def gap(value: float, ref: float) -> float | None:
        return None if not (math.isfinite(value) and math.isfinite(ref)) else (value - ref) / ref

    run_rows = []
    for r in runs:
        same_seed = ref_by_seed.get(r.seed)
        run_rows.append(
            {
                "recipe": r.recipe,
                "seed": r.seed,
                "final_train_loss": r.final_train_loss,
                "final_val_loss": r.final_val_loss,
                "val_gap_to_reference": gap(r.final_val_loss, same_seed.final_val_loss if same_seed else ref_val),
                "train_gap_to_reference": gap(
                    r.final_train_loss, same_seed.final_train_loss if same_seed else ref_train
                ),
                "tokens": r.result.get("tokens"),
                "tokens_per_s": r.result.get("tokens_per_s"),
                "wall_time_s": r.result.get("wall_time_s"),
                "diverged": r.diverged,
                "diverged_step": r.result.get("diverged_step"),
                "git_commit": r.run_info.get("git_commit"),
                "val_curve": [[float(t), float(v)] for t, v in zip(r.val_tokens, r.val_loss, strict=True)],
                "val_sequence_losses": r.val_sequences,
                "probe_snr": [[float(t), float(v)] for t, v in zip(r.probe_tokens, r.probe_snr, strict=True)],
            }
        )
    recipes = {}
    for name, rs in by_recipe.items():
        vals = [r.final_val_loss for r in rs]
        recipes[name] = {
            "seeds": [r.seed for r in rs],
            "final_val_loss_mean": mean(vals),
            "final_val_loss_std": pstdev(vals) if len(vals) > 1 else 0.0,
            "final_train_loss_mean": mean(r.final_train_loss for r in rs),
            "val_gap_to_reference": gap(mean(vals), ref_val),
            "train_gap_to_reference": gap(mean(r.final_train_loss for r in rs), ref_train),
            "diverged": any(r.diverged for r in rs),
            "tokens_per_s_mean": _mean_or_none([r.result.get("tokens_per_s") for r in rs]),
        }
    summary = {"reference": reference, "recipes": recipes, "runs": run_rows, **(meta or {})}
    if "mxfp4" in by_recipe and "nvfp4" in by_recipe:
        mx, longer, nv = by_recipe["mxfp4"], by_recipe.get(LONG_MXFP4, []), by_recipe["nvfp4"]
        eff = token_efficiency(mx, longer, nv)
        # the same solve on each seed's own three runs: how much the seed-mean estimate rests on one seed
        eff["extra_tokens_fraction_per_seed"] = {
            seed: token_efficiency(*([r for r in rs if r.seed == seed] for rs in (mx, longer, nv)))[
                "extra_tokens_fraction"
            ]
            for seed in sorted({r.seed for r in mx} & {r.seed for r in longer} & {r.seed for r in nv})
        }
        summary["token_efficiency_mxfp4_vs_nvfp4"] = eff
    summary["seed_noise"] = seed_noise(summary)
    summary["paired"] = {
        name: {
            "vs_reference": paired_comparison(summary, name, reference) if name != reference else None,
            "vs_nvfp4": paired_comparison(summary, name, "nvfp4") if name != "nvfp4" and "nvfp4" in by_recipe else None,
            "token_equivalence": token_equivalence(summary, name, reference) if name != reference else None,
        }
        for name in by_recipe
    }
    if mechanisms:
        summary["mechanisms"] = mechanisms
    summary["claims"] = assess_claims(summary)
    return summary


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return mean(values) if values else None


def write_plots(runs: list[RunRecord], out_dir: str | Path, reference: str = "bf16") -> list[Path]:
    """Three PNGs: loss curves, relative difference vs the reference, final val loss per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    by_recipe: dict[str, list[RunRecord]] = {}
    for r in runs:
        by_recipe.setdefault(r.recipe, []).append(r)
    # tab10's strong colours first, then tab20's lighter shades for recipes 11-20
    colors = {name: plt.cm.tab10(i) if i < 10 else plt.cm.tab20((2 * i + 1) % 20) for i, name in enumerate(by_recipe)}
    paths = []

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, rs in by_recipe.items():
        for k, r in enumerate(rs):
            ax.plot(r.tokens, ema(r.train_loss), color=colors[name], lw=1.2, alpha=0.9, label=name if k == 0 else None)
            ax.plot(r.val_tokens, r.val_loss, "o", color=colors[name], ms=3)
    ax.set(xlabel="tokens", ylabel="loss (lines: train EMA, dots: validation)", title="Loss curves")
    _tight_ylim(ax, runs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    paths.append(_save(fig, out_dir / "loss_curves.png"))

    if reference in by_recipe:
        ref_tokens = mean(_run_tokens(r) for r in by_recipe[reference])
        # a run of another length has another LR schedule: its gap over tokens means little
        same_length = [
            name
            for name, rs in by_recipe.items()
            if name != reference and math.isclose(mean(_run_tokens(r) for r in rs), ref_tokens, rel_tol=0.01)
        ]
        panels = _gap_panels(same_length)
        fig, axes = plt.subplots(len(panels), 1, figsize=(9, 1.5 + 3.2 * len(panels)), sharex=True, squeeze=False)
        for ax, (title, names, base_on_their_seeds) in zip(axes[:, 0], panels, strict=True):
            # nvfp4 beside its ablations: only on the seeds they ran, so the panel compares paired runs
            others = {r.seed for n in names if n != "nvfp4" for r in by_recipe[n]}
            for name in names:
                rs = by_recipe[name]
                if name == "nvfp4" and base_on_their_seeds:
                    rs = [r for r in rs if r.seed in others] or rs
                grid, rel = relative_gap_curve(rs, by_recipe[reference], "train")
                if len(grid):
                    ax.plot(grid, 100 * rel, color=colors[name], label=name, lw=1.8 if name == "nvfp4" else 1.2)
            ax.axhline(0, color="k", lw=0.8)
            ax.set(ylabel=f"vs {reference} (%)", title=title)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, ncol=2)
        axes[-1, 0].set_xlabel("tokens")
        fig.suptitle(f"Relative train-loss difference (L − L_{reference}) / L_{reference} (EMA, paired by seed)")
        paths.append(_save(fig, out_dir / "relative_loss_difference.png"))

    fig, ax = plt.subplots(figsize=(9, 5.5))
    names = list(by_recipe)
    for i, name in enumerate(names):
        vals = [r.final_val_loss for r in by_recipe[name]]
        finite = [v for v in vals if math.isfinite(v)]
        if finite:  # a dot plot, not bars: the axis is zoomed to the data, and a cut bar's length would lie
            ax.hlines(mean(finite), i - 0.3, i + 0.3, color=colors[name], lw=3)
            ax.plot([i] * len(finite), finite, "k.", ms=6)
        if any(r.diverged for r in by_recipe[name]):
            ax.text(i, ax.get_ylim()[0], "diverged", rotation=90, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    finite_all = [r.final_val_loss for r in runs if math.isfinite(r.final_val_loss)]
    if finite_all:
        lo, hi = min(finite_all), max(finite_all)
        pad = max(0.02, (hi - lo) * 0.3)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set(
        ylabel="final validation loss (line: mean, dots: seeds)",
        title="Final validation loss per recipe (axis zoomed to the data)",
    )
    ax.grid(alpha=0.3, axis="y")
    paths.append(_save(fig, out_dir / "final_val_loss.png"))
    probed = [r for r in runs if len(r.probe_snr)]
    if probed:
        paths.append(plot_gradient_signal_to_noise(probed, out_dir / "gradient_signal_to_noise.png", colors))
    plt.close("all")
    return paths


def plot_gradient_signal_to_noise(runs: list[RunRecord], path: Path, colors: dict | None = None) -> Path:
    """||g|| / ||g_q − g|| over training (``--probe-interval``) against FP4-all-the-way's sqrt(3) threshold, below
    which quantized gradients stop helping: the mechanism behind the late switch to BF16."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for k, r in enumerate(runs):
        color = (colors or {}).get(r.recipe, plt.cm.tab10(k % 10))
        ax.plot(r.probe_tokens, r.probe_snr, marker="o", ms=3, color=color, label=f"{r.recipe} seed {r.seed}")
    ax.axhline(math.sqrt(3), color="k", ls="--", lw=1, label="√3 (FP4-all-the-way)")
    ax.set(
        xlabel="tokens",
        ylabel="‖g‖ / ‖g_q − g‖  (log scale)",
        yscale="log",
        title="Gradient signal to quantization noise over training (fixed validation batch)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _gap_panels(names: list[str]) -> list[tuple[str, list[str], bool]]:
    """The paper's figure groups: number formats; NVFP4 recipe ablations; late switches to BF16. Each ablation
    panel repeats nvfp4 for comparison (the flag: draw it on the seeds of the runs beside it). Empty groups are
    dropped; there is always one panel."""
    switches = [n for n in names if n.startswith("nvfp4-switch")]
    ablations = [n for n in names if n.startswith("nvfp4-") and n not in switches]
    formats = [n for n in names if n not in switches and n not in ablations]
    base = ["nvfp4"] if "nvfp4" in names else []
    panels = [("number formats", formats, False)] if formats or not (ablations or switches) else []
    if ablations:
        panels.append(("NVFP4 recipe ablations", base + ablations, True))
    if switches:
        panels.append(("late switch to BF16 (last 20% of tokens)", base + switches, True))
    return panels


def _tight_ylim(ax, runs: list[RunRecord]) -> None:
    """From the lowest loss to the highest smoothed one: the whole drawn curve, nothing clipped at the start."""
    highs = [float(np.nanmax(ema(r.train_loss))) for r in runs if len(r.train_loss)]
    lows = [float(np.nanmin(np.concatenate([r.train_loss, r.val_loss]))) for r in runs if len(r.train_loss)]
    if highs and lows:
        ax.set_ylim(min(lows) - 0.05, max(highs) + 0.1)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def _mechanism_table(mech: dict) -> list[str]:
    """The probe's per-recipe numbers (``summary["mechanisms"]``) as a table."""

    def f(v, fmt=".3f"):
        return "–" if v is None else format(v, fmt)

    m = mech.get("meta", {})
    where = f"the final checkpoint (step {m.get('step')})" if m.get("source") == "checkpoint" else "fresh weights"
    lines = [
        "",
        "## Mechanisms (`nvfp4 probe`)",
        "",
        f"Probed on {where} of model `{m.get('model')}`, {m.get('draws')} stochastic-rounding draws (full "
        "tables: `probe/trained/report.md`, `probe/fresh/report.md`). Wgrad estimator: the Wgrad GEMM of each "
        "quantized layer as an estimator of dyᵀx (bias with the draws' noise taken out; slope −1 = unbiased). "
        "Weight gradient: the whole model's, against the FP32 gradient.",
        "",
        "| recipe | quantized layers | mean SQNR (dB) | Wgrad GEMM error | Wgrad estimator bias | slope "
        "| fwd/bwd W | W-grad cosine | alignment | bias |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in mech.items():
        if name == "meta":
            continue
        est, g = e.get("wgrad_estimate") or {}, e.get("weight_grad") or {}
        lines.append(
            f"| {name} | {e.get('quantized_layers')} | {f(e.get('sqnr_db_mean'), '.2f')} "
            f"| {f(e.get('wgrad_gemm_error'), '.4f')} | {f(est.get('relative_bias'), '.4f')} "
            f"| {f(est.get('concentration_slope'), '.2f')} | {f(e.get('fwd_bwd_weight_difference'), '.4f')} "
            f"| {f(g.get('cosine'))} | {f(g.get('alignment'))} | {f(g.get('relative_bias'))} |"
        )
    return lines


def write_report(summary: dict, out_dir: str | Path, command: str | None = None) -> Path:
    """``report.md``: the table and the plots, readable on its own."""
    out_dir = Path(out_dir)
    ref = summary["reference"]
    lines = ["# Recipe comparison", ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    meta = {k: summary.get(k) for k in ("model", "max_tokens", "git_commit", "hardware", "date") if summary.get(k)}
    lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    lines += [
        f"Relative gap = (L − L_{ref}) / L_{ref} on the final loss (mean over seeds). The final train loss is "
        f"the mean of the logged train losses over the last {100 * FINAL_TRAIN_WINDOW:.0f}% of each run's tokens "
        "(one batch's loss is too noisy); the verdicts use the validation loss.",
        "",
    ]
    lines += [
        "| recipe | seeds | final val loss (mean ± std) | val gap | final train loss | train gap | tokens/s "
        "| diverged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["recipes"].items():

        def pct(v):
            return "—" if v is None else f"{100 * v:+.2f}%"

        tps = "—" if r["tokens_per_s_mean"] is None else f"{r['tokens_per_s_mean']:.0f}"
        lines.append(
            f"| {name} | {len(r['seeds'])} | {r['final_val_loss_mean']:.4f} ± {r['final_val_loss_std']:.4f} "
            f"| {pct(r['val_gap_to_reference'])} | {r['final_train_loss_mean']:.4f} "
            f"| {pct(r['train_gap_to_reference'])} | {tps} | {'yes' if r['diverged'] else 'no'} |"
        )
    multiplier = summary.get("mxfp4_token_multiplier") or 1.0
    if LONG_MXFP4 in summary["recipes"]:
        lines += [
            "",
            f"{LONG_MXFP4} is the mxfp4 recipe trained {multiplier:g}× the tokens, with its own full "
            "schedule: its gap above is not at equal tokens; it serves the token efficiency below.",
        ]
    eff = summary.get("token_efficiency_mxfp4_vs_nvfp4")
    if eff:
        lines += ["", "## Token efficiency: MXFP4 vs NVFP4", ""]
        if eff["extra_tokens_fraction"] is not None:
            (t1, l1), (t2, l2) = eff["points"]
            how = "extrapolated beyond" if eff["extrapolated"] else "interpolated between"
            lines.append(
                f"MXFP4 would reach NVFP4's final validation loss ({eff['target_val_loss']:.4f}) with "
                f"{eff['tokens_needed']:,.0f} tokens, {100 * eff['extra_tokens_fraction']:+.1f}% vs NVFP4's "
                f"{eff['reference_tokens']:,.0f} ({how} its complete runs of {t1:,.0f} tokens, final "
                f"{l1:.4f}, and {t2:,.0f} tokens, final {l2:.4f}; loss linear in log tokens). The paper: "
                "+36% at 8B/1T."
            )
            per_seed = {k: v for k, v in (eff.get("extra_tokens_fraction_per_seed") or {}).items() if v is not None}
            if len(per_seed) > 1:
                lines.append(
                    "Per seed (the same solve on each seed's own runs): "
                    + ", ".join(f"seed {k} {100 * v:+.1f}%" for k, v in per_seed.items())
                    + "."
                )
        else:
            lines.append(
                f"No estimate of how many more tokens MXFP4 needs to reach NVFP4's final validation loss "
                f"({eff['target_val_loss']:.4f}): {eff['note']}."
            )
    paired = summary.get("paired") or {}
    if any(p.get("vs_reference") for p in paired.values()):
        lines += [
            "",
            "## Paired statistics",
            "",
            f"Per-seed paired relative gaps of the final validation loss with 95% intervals (Student t over "
            f"the seeds; with fewer than 3 seeds the spread is borrowed from the recipes run with 2+ seeds), "
            f"and where the runs wrote per-sequence losses (`--sequence-eval-batches`), a paired bootstrap over "
            f"the validation sequences. Token equivalence: the {ref} tokens needed to reach the arm's final "
            f"loss, read off {ref}'s validation curve, as a fraction of the arm's tokens.",
            "",
            f"| recipe | vs {ref} | vs nvfp4 | token equivalence (× own tokens) |",
            "|---|---|---|---|",
        ]
        for name, p in paired.items():
            if name == ref:
                continue
            te = p.get("token_equivalence") or {}
            te_text = (
                "—"
                if not te
                else ", ".join(
                    f"seed {k}: {'beyond ' + ref if v is None else f'{v:.2f}'}" for k, v in te["per_seed"].items()
                )
            )
            lines.append(
                f"| {name} | {describe(p['vs_reference']) if p.get('vs_reference') else '—'} "
                f"| {describe(p['vs_nvfp4']) if p.get('vs_nvfp4') else '—'} | {te_text} |"
            )
    mech = summary.get("mechanisms")
    if mech:
        lines += _mechanism_table(mech)
    claims = summary.get("claims")
    if claims:
        lines += [
            "",
            "## The paper's claims (SPEC §6) at this scale",
            "",
            "Verdicts are computed from the numbers (nvfp4/analysis/claims.py); differences are paired by seed "
            "and count when their 95% intervals exclude zero.",
            "The mechanism verdict comes from `nvfp4 probe` figures (compare --probe): what the component does "
            "to operands and gradients, measured on fixed batches.",
            "",
            "| claim | end-loss verdict | evidence | mechanism verdict | mechanism evidence |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} | **{c.get('mechanism_verdict', '—')}** "
            f"| {c.get('mechanism_evidence', '')} |"
            for c in claims
        ]
    lines += ["", "## Plots", ""]
    for png, caption in (
        ("loss_curves.png", "Loss curves"),
        ("relative_loss_difference.png", f"Relative loss difference to {ref}"),
        ("final_val_loss.png", "Final validation loss per recipe"),
        ("gradient_signal_to_noise.png", "Gradient signal to quantization noise over training"),
    ):
        if (out_dir / png).exists():
            lines += [f"![{caption}]({png})", ""]
    path = out_dir / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
