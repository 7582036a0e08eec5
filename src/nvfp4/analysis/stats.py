"""Sound statistics for end-loss comparisons of runs that differ only in their recipe.

Runs are paired by seed (same initialisation and data order) and evaluated on the same fixed validation sequences,
so two sources of uncertainty can be told apart:

- **between seeds** (training noise): the per-seed paired relative gaps g_s = (L_a,s − L_b,s) / L_b,s get a
  Student-t interval over the seeds (3+ shared seeds). With fewer, the interval borrows the seed spread measured on
  the recipes that have 2+ seeds (pooled relative std s, a difference of two runs having at most √2·s), with the
  pooled degrees of freedom: wider than the data alone would claim, never narrower;
- **over validation sequences** (evaluation noise): a paired bootstrap that resamples the same sequences for both
  arms (``val_sequences.json`` of ``nvfp4 train --sequence-eval-batches``).

A difference counts when every interval available excludes zero. Token equivalence reads, off the reference run's
validation curve, how many tokens the reference needed to reach each arm's final loss.
"""

from __future__ import annotations

import math
from statistics import mean, stdev
from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the report is a function of the runs: the same resamples every time
# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (beyond: the normal 1.96 plus a 1/df correction).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile(df: int) -> float:
    """t_{0.975, df}: the half-width multiplier of a two-sided 95% interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.960 + 2.4 / df


def _finite_loss(row: dict) -> float | None:
    v = row.get("final_val_loss")
    return v if v is not None and math.isfinite(v) and not row.get("diverged") else None


def _by_seed(summary: dict, recipe: str) -> dict[int, dict]:
    return {row["seed"]: row for row in summary.get("runs", []) if row["recipe"] == recipe}


def pooled_seed_spread(summary: dict) -> tuple[float, int] | None:
    """(pooled relative std of the final val loss across seeds, its degrees of freedom) over the recipes with 2+
    finished seeds; None without any."""
    ss, df = 0.0, 0
    for recipe in {row["recipe"] for row in summary.get("runs", [])}:
        values = [v for v in (_finite_loss(r) for r in _by_seed(summary, recipe).values()) if v is not None]
        if len(values) >= 2:
            rel = stdev(values) / mean(values)
            ss += rel**2 * (len(values) - 1)
            df += len(values) - 1
    return (math.sqrt(ss / df), df) if df else None


def paired_comparison(summary: dict, recipe: str, baseline: str) -> dict[str, Any] | None:
    """Per-seed paired relative gaps of ``recipe`` vs ``baseline`` with their intervals (see the module doc);
    None when no seed has finite final losses for both."""
    a, b = _by_seed(summary, recipe), _by_seed(summary, baseline)
    seeds, gaps = [], []
    for seed in sorted(a.keys() & b.keys()):
        la, lb = _finite_loss(a[seed]), _finite_loss(b[seed])
        if la is not None and lb is not None:
            seeds.append(seed)
            gaps.append((la - lb) / lb)
    if not gaps:
        return None
    n, gap = len(gaps), mean(gaps)
    interval, kind = None, "no seed spread measured yet (run 2+ seeds of a recipe)"
    if n >= 3:
        half = t_quantile(n - 1) * stdev(gaps) / math.sqrt(n)
        interval, kind = [gap - half, gap + half], f"t over {n} seeds"
    else:
        pooled = pooled_seed_spread(summary)
        if pooled is not None:
            spread, df = pooled
            half = t_quantile(df) * math.sqrt(2) * spread / math.sqrt(n)
            interval = [gap - half, gap + half]
            kind = f"{n} seed{'s' * (n > 1)}; spread borrowed from the recipes with 2+ seeds (pooled, {df} df)"
    result = {
        "recipe": recipe,
        "baseline": baseline,
        "seeds": seeds,
        "gaps": gaps,
        "gap": gap,
        "interval": interval,
        "interval_kind": kind,
    }
    result.update(bootstrap_over_sequences([a[s] for s in seeds], [b[s] for s in seeds]))
    return result


def bootstrap_over_sequences(runs_a: list[dict], runs_b: list[dict]) -> dict[str, Any]:
    """Paired bootstrap over the validation sequences of seed-paired runs: the mean over seeds of the relative gap
    of the resampled mean losses (the same resampled sequences for every run). Empty if a run lacks them."""
    la = [r.get("val_sequence_losses") for r in runs_a]
    lb = [r.get("val_sequence_losses") for r in runs_b]
    if not la or any(x is None for x in la + lb) or len({len(x) for x in la + lb}) != 1:
        return {}
    a, b = np.array(la, float), np.array(lb, float)  # (seeds, sequences)
    m = a.shape[1]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    gaps = np.empty(BOOTSTRAP_RESAMPLES)
    for i in range(BOOTSTRAP_RESAMPLES):
        idx = rng.integers(0, m, m)
        ma, mb = a[:, idx].mean(axis=1), b[:, idx].mean(axis=1)
        gaps[i] = float(np.mean((ma - mb) / mb))
    lo, hi = np.quantile(gaps, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return {
        "sequences": m,
        "sequence_gap": float(np.mean((a.mean(1) - b.mean(1)) / b.mean(1))),
        "bootstrap_interval": [float(lo), float(hi)],
    }


def direction(comparison: dict[str, Any] | None) -> str | None:
    """'worse' / 'better' when every available interval lies above / below 0, 'same' when one contains 0, None when
    there is no seed interval to judge by."""
    if comparison is None or comparison.get("interval") is None:
        return None
    intervals = [comparison["interval"]] + (
        [comparison["bootstrap_interval"]] if "bootstrap_interval" in comparison else []
    )
    if all(lo > 0 for lo, _ in intervals):
        return "worse"
    if all(hi < 0 for _, hi in intervals):
        return "better"
    return "same"


def describe(comparison: dict[str, Any]) -> str:
    """One phrase: the gap, its interval(s), the seeds."""
    text = f"{_pct(comparison['gap'])}"
    if comparison.get("interval") is not None:
        lo, hi = comparison["interval"]
        text += f" [95% CI {_pct(lo)}, {_pct(hi)}; {comparison['interval_kind']}]"
    else:
        text += f" ({len(comparison['seeds'])} seed{'s' * (len(comparison['seeds']) > 1)}; no seed spread yet)"
    if "bootstrap_interval" in comparison:
        lo, hi = comparison["bootstrap_interval"]
        text += f" [sequence bootstrap {_pct(lo)}, {_pct(hi)}; {comparison['sequences']} sequences]"
    return text


def token_equivalence(summary: dict, recipe: str, reference: str) -> dict[str, Any] | None:
    """Tokens the reference run (same seed) needed to first reach ``recipe``'s final val loss, as a fraction of the
    tokens ``recipe`` trained (linear between the reference's evaluations): 0.9 = the arm is worth 90% of its tokens
    in reference training. None per seed when the reference never got that low (then the arm beat it)."""
    a, b = _by_seed(summary, recipe), _by_seed(summary, reference)
    per_seed: dict[int, float | None] = {}
    for seed in sorted(a.keys() & b.keys()):
        target, tokens, curve = _finite_loss(a[seed]), a[seed].get("tokens"), b[seed].get("val_curve")
        if target is None or not tokens or not curve:
            continue
        per_seed[seed] = None
        for (t0, l0), (t1, l1) in zip(curve, curve[1:], strict=False):
            if l1 <= target:
                t = t1 if l0 == l1 else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
                per_seed[seed] = max(t0, min(t1, t)) / tokens
                break
    if not per_seed:
        return None
    values = [v for v in per_seed.values() if v is not None]
    return {"per_seed": per_seed, "mean": mean(values) if len(values) == len(per_seed) else None}


def _pct(v: float) -> str:
    return f"{100 * v:+.2f}%"
