"""The paper's findings (SPEC §6), checked one by one against a comparison's summary.

Each claim gets a verdict from the numbers, never by hand:
- "reproduces": the effect is there, in the paper's direction, beyond seed noise;
- "partly": in the paper's direction beyond noise, but weaker than claimed (e.g. worse, not diverged);
- "not visible": within seed noise at this scale;
- "contradicted": the opposite effect, beyond seed noise;
- "not measured": the runs it needs are not complete, or there is no seed spread yet to judge a difference by.

A difference counts when its 95% intervals exclude zero (``nvfp4.analysis.stats``): a Student-t interval over the
seeds (3+ shared seeds; with fewer, one that borrows the seed spread of the recipes run with 2+ seeds), and where
the runs wrote per-sequence validation losses, a paired bootstrap over those sequences too. Until some recipe has 2
seeds there is no interval, so every verdict that rests on a difference is "not measured" (its evidence still shows
the gap); only a divergence is a verdict without one. Differences between recipes are paired by seed (same
initialisation and data order), averaged over the seeds both finished.

Beside each end-loss verdict, ``assess_mechanisms`` gives the mechanism verdict from ``nvfp4 probe`` figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import mean, pstdev

from nvfp4.analysis.stats import describe, direction, paired_comparison

NVFP4_TRACKING_TOLERANCE = 0.015  # the paper: within ~1% of FP8 (stable phase), ~1.5% after the LR decay
TOKEN_EFFICIENCY_MARGIN = 0.05  # MXFP4 "needs more tokens" when it needs > 5% more


@dataclass
class Claim:
    claim: str
    verdict: str
    evidence: str


def seed_noise(summary: dict) -> float | None:
    """Largest relative std of the final val loss across seeds, over recipes with >= 2 finished (finite) seeds."""
    by_recipe: dict[str, list[float]] = {}
    for row in summary.get("runs", []):
        value = row.get("final_val_loss")
        if value is not None and math.isfinite(value) and not row.get("diverged"):
            by_recipe.setdefault(row["recipe"], []).append(value)
    spreads = [pstdev(v) / mean(v) for v in by_recipe.values() if len(v) >= 2]
    return max(spreads) if spreads else None


def _runs(summary: dict, recipe: str) -> dict[int, dict]:
    return {row["seed"]: row for row in summary.get("runs", []) if row["recipe"] == recipe}


def paired_gap(summary: dict, recipe: str, baseline: str, seeds: set[int] | None = None) -> tuple[float, int] | None:
    """Mean over shared seeds (within ``seeds`` if given) of (L_recipe − L_baseline) / L_baseline (final val loss),
    and how many seeds."""
    a, b = _runs(summary, recipe), _runs(summary, baseline)
    gaps = []
    for seed in sorted(a.keys() & b.keys() & (seeds if seeds is not None else a.keys())):
        la, lb = a[seed].get("final_val_loss"), b[seed].get("final_val_loss")
        if la is not None and lb is not None and math.isfinite(la) and math.isfinite(lb):
            gaps.append((la - lb) / lb)
    return (mean(gaps), len(gaps)) if gaps else None


def _diverged(summary: dict, recipe: str) -> dict | None:
    return next((row for row in _runs(summary, recipe).values() if row.get("diverged")), None)


def _pct(v: float) -> str:
    return f"{100 * v:+.2f}%"


class _Judge:
    def __init__(self, summary: dict):
        self.summary = summary
        self.noise = seed_noise(summary)

    def has(self, *recipes: str) -> bool:
        return all(_runs(self.summary, r) for r in recipes)

    def compare(self, recipe: str, baseline: str) -> tuple[float, str, str | None] | None:
        """(mean paired gap, evidence text, direction: 'worse'/'better'/'same', None = no interval yet)."""
        c = paired_comparison(self.summary, recipe, baseline)
        if c is None:
            return None
        return c["gap"], f"{recipe} vs {baseline}: {describe(c)} final val loss", direction(c)


def _ablation_claim(j: _Judge, claim: str, recipe: str, baseline: str = "nvfp4", diverges: bool = False) -> Claim:
    """The paper: ``recipe`` trains to a worse loss than ``baseline`` (or, with ``diverges``, diverges: then worse
    without diverging is only 'partly')."""
    if not j.has(recipe, baseline):
        return Claim(claim, "not measured", f"needs {recipe} and {baseline}")
    div = _diverged(j.summary, recipe)
    if div is not None:
        return Claim(claim, "reproduces", f"{recipe} diverged (step {div.get('diverged_step')})")
    got = j.compare(recipe, baseline)
    if got is None:
        return Claim(claim, "not measured", f"no finite final loss for {recipe} and {baseline} on a shared seed")
    _, text, way = got
    worse = "partly" if diverges else "reproduces"
    verdict = "not measured" if way is None else {"worse": worse, "same": "not visible", "better": "contradicted"}[way]
    return Claim(claim, verdict, f"no divergence; {text}" if diverges else text)


def _no_difference_claim(j: _Judge, claim: str, recipes: tuple[str, ...], baseline: str = "nvfp4") -> Claim:
    """The paper: at small scale these variants of ``baseline`` make no measurable difference. Reproduces when every
    measured variant's interval contains 0; any variant whose intervals exclude 0 (either way) contradicts."""
    measured = [r for r in recipes if j.has(r, baseline)]
    if not measured:
        return Claim(claim, "not measured", f"needs {baseline} and one of {', '.join(recipes)}")
    texts, differs, judged, unjudged = [], False, 0, 0
    for recipe in measured:
        div = _diverged(j.summary, recipe)
        if div is not None:
            texts.append(f"{recipe} diverged (step {div.get('diverged_step')})")
            differs = True
            continue
        got = j.compare(recipe, baseline)
        if got is None:
            texts.append(f"{recipe}: no finite final loss on a seed shared with {baseline}")
            continue
        texts.append(got[1])
        if got[2] is None:
            unjudged += 1
            continue
        judged += 1
        differs |= got[2] != "same"
    missing = [r for r in recipes if r not in measured]
    if missing:
        texts.append(f"not run: {', '.join(missing)}")
    diverged = any(_diverged(j.summary, r) is not None for r in measured)
    if diverged or differs:
        verdict = "contradicted"
    else:
        verdict = "reproduces" if judged and not unjudged else "not measured"
    return Claim(claim, verdict, "; ".join(texts))


def _tracking_claim(j: _Judge) -> Claim:
    """Reproduces when the interval of every measured gap lies below the tolerance; contradicted when one lies
    wholly above it; otherwise not visible (the interval straddles the tolerance)."""
    claim = "NVFP4 tracks the higher-precision loss (within ~1-1.5%)"
    parts, intervals = [], []
    for baseline in ("bf16", "fp8"):
        if j.has("nvfp4", baseline):
            c = paired_comparison(j.summary, "nvfp4", baseline)
            if c is not None:
                parts.append(f"nvfp4 vs {baseline}: {describe(c)}")
                intervals.append(c.get("interval"))
    if not parts:
        return Claim(claim, "not measured", "needs nvfp4 with bf16 or fp8")
    if _diverged(j.summary, "nvfp4") is not None:
        return Claim(claim, "contradicted", "nvfp4 diverged")
    if any(i is None for i in intervals):
        return Claim(claim, "not measured", "; ".join(parts))
    if all(hi <= NVFP4_TRACKING_TOLERANCE for _, hi in intervals):
        verdict = "reproduces"
    elif any(lo > NVFP4_TRACKING_TOLERANCE for lo, _ in intervals):
        verdict = "contradicted"
    else:
        verdict = "not visible"
    return Claim(claim, verdict, "; ".join(parts) + f" (tolerance {100 * NVFP4_TRACKING_TOLERANCE:.1f}%)")


def _mxfp4_claim(j: _Judge) -> Claim:
    """Judged on the equal-token gap (beyond seed noise, paired by seed); the token efficiency (from a longer MXFP4
    run) is reported with it and turns a gap without it into 'partly'."""
    claim = "MXFP4 falls behind NVFP4 and needs more tokens (+36% at 8B/1T)"
    if not j.has("mxfp4", "nvfp4"):
        return Claim(claim, "not measured", "needs mxfp4 and nvfp4")
    mx, nv = _runs(j.summary, "mxfp4"), _runs(j.summary, "nvfp4")
    if any(mx[s].get("tokens") != nv[s].get("tokens") for s in mx.keys() & nv.keys()):
        return Claim(claim, "not measured", "mxfp4 and nvfp4 trained different token counts: no equal-token gap")
    judged = _ablation_claim(j, claim, "mxfp4")
    if judged.verdict == "not measured":
        return judged
    text = judged.evidence
    eff = j.summary.get("token_efficiency_mxfp4_vs_nvfp4") or {}
    extra = eff.get("extra_tokens_fraction")
    if extra is not None:
        how = "extrapolated" if eff.get("extrapolated") else "interpolated"
        text += (f"; tokens MXFP4 needs to reach NVFP4's final val loss: {_pct(extra)} ({how} from its runs of two "
                 "lengths)")  # fmt: skip
    elif eff.get("note"):
        text += f"; token efficiency: {eff['note']}"
    catches_up = extra is not None and extra <= TOKEN_EFFICIENCY_MARGIN and _diverged(j.summary, "mxfp4") is None
    return Claim(claim, "partly" if judged.verdict == "reproduces" and catches_up else judged.verdict, text)


def _switch_claim(j: _Judge) -> Claim:
    claim = "a late switch of the forward pass to BF16 recovers most of the gap; backward-only does not"
    needed = ("bf16", "nvfp4", "nvfp4-switch-fwd", "nvfp4-switch-bwd")
    if not j.has(*needed):
        return Claim(claim, "not measured", f"needs {', '.join(needed)}")
    # every gap on the seeds all four runs share, so that the recovered share compares like with like
    shared = set.intersection(*(set(_runs(j.summary, r)) for r in needed))
    base = paired_gap(j.summary, "nvfp4", "bf16", shared)
    fwd = paired_gap(j.summary, "nvfp4-switch-fwd", "bf16", shared)
    bwd = paired_gap(j.summary, "nvfp4-switch-bwd", "bf16", shared)
    if base is None or fwd is None or bwd is None:
        return Claim(claim, "not measured", "no finite final losses on a shared seed")
    gap = base[0]
    base_c = paired_comparison(j.summary, "nvfp4", "bf16")
    text = (f"gap to bf16: nvfp4 {_pct(gap)}, switch-fwd {_pct(fwd[0])}, switch-bwd {_pct(bwd[0])}"
            f" (seed{'s' * (len(shared) > 1)} {', '.join(map(str, sorted(shared)))}; nvfp4 vs bf16 "
            f"{describe(base_c)})")  # fmt: skip
    way = direction(base_c)
    if way is None:
        return Claim(claim, "not measured", text)
    if way != "worse":
        return Claim(claim, "not visible", f"no NVFP4 gap to recover: {text}")
    rec_fwd, rec_bwd = (gap - fwd[0]) / gap, (gap - bwd[0]) / gap
    text += f"; recovered: fwd {100 * rec_fwd:.0f}%, bwd {100 * rec_bwd:.0f}%"
    if rec_fwd >= 0.5 and rec_bwd < 0.5:
        return Claim(claim, "reproduces", text)
    if rec_fwd >= 0.5 or rec_bwd < 0.5:
        return Claim(claim, "partly", text)
    return Claim(claim, "contradicted", text)


def assess_claims(summary: dict) -> list[dict]:
    """One row per paper claim: {"claim", "verdict", "evidence"} (see the module doc for the verdicts)."""
    j = _Judge(summary)
    claims = [
        _tracking_claim(j),
        _mxfp4_claim(j),
        _ablation_claim(j, "removing stochastic rounding (gradients) makes the loss worse", "nvfp4-no-sr"),
        _ablation_claim(j, "removing the RHT (Wgrad) makes the loss worse", "nvfp4-no-rht"),
        _ablation_claim(j, "removing 2D weight scaling makes the loss worse", "nvfp4-no-2d"),
        _ablation_claim(j, "SR on activations and weights too diverges", "nvfp4-sr-everywhere", diverges=True),
        _ablation_claim(j, "the RHT on Fprop/Dgrad too hurts", "nvfp4-rht-everywhere"),
        _ablation_claim(j, "all-FP4 (no BF16 layers) diverges", "nvfp4-all-fp4", diverges=True),
        _switch_claim(j),
        _no_difference_claim(
            j, "at small scale the Hadamard size and the sign randomisation make no measurable difference",
            ("nvfp4-rht4", "nvfp4-rht-no-signs"),
        ),
    ]
    return [asdict(c) for c in claims]
