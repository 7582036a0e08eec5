"""``nvfp4 compare``: train several recipes with everything else identical, then report.

Only the recipe differs between runs: the same seed gives the same initialisation (the model is
built and initialised before conversion), the same data order and the same LR schedule. Each run
lives in ``OUT/runs/<recipe>/seed<k>/``; a run with a ``result.json`` is complete and skipped, an
interrupted one resumes from its checkpoint, so ``compare`` itself can be stopped and resumed.

A late-switch recipe (``nvfp4-switch-*``) trains exactly like its base recipe (``nvfp4``) until the switch, so
the base run keeps a checkpoint at the switch step and the switch run branches from it (``branch_from``),
training only the last 20%. The result is bit-identical to training it from scratch (tested).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvfp4 import recipes
from nvfp4._io import atomic_write
from nvfp4._provenance import git_commit, hardware
from nvfp4.analysis.report import LONG_MXFP4, RunRecord, load_run, summarize, write_plots, write_report
from nvfp4.train.checkpoint import checkpoint_path

MODEL_OVERRIDES = ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "mlp")

MAIN_RECIPES = ("bf16", "fp8", "nvfp4", "mxfp4")
MAIN_RUNS = (*MAIN_RECIPES, LONG_MXFP4)  # run with the main seeds and first in the plan
PAPER_SUITE = (
    "bf16",
    "fp8",
    "nvfp4",
    "mxfp4",
    "nvfp4-no-rht",
    "nvfp4-no-sr",
    "nvfp4-no-2d",
    "nvfp4-all-fp4",
    "nvfp4-sr-everywhere",
    "nvfp4-switch-fwd",
    "nvfp4-switch-bwd",
    "nvfp4-switch-both",
)
SUITES: dict[str, tuple[str, ...]] = {
    "paper": PAPER_SUITE,
    # every SPEC §6 claim: the paper suite plus the RHT on Fprop/Dgrad, the Hadamard size and the sign flips
    "paper-full": (*PAPER_SUITE, "nvfp4-rht-everywhere", "nvfp4-rht4", "nvfp4-rht-no-signs"),
    "main": MAIN_RECIPES,
    "quick": ("bf16", "nvfp4"),
    # issue #17: the recipes beyond the paper, next to the paper's own and BF16
    "successors": ("bf16", "nvfp4", "mxfp8", "nvfp4-mxfp8-edges", "nvfp4-4over6"),
}


@dataclass
class CompareConfig:
    """A comparison of recipes. ``train`` holds the TrainConfig fields shared by every run."""

    recipes: list[str] | None = None
    suite: str | None = None
    out: str = "runs/compare"
    seeds: list[int] = field(default_factory=lambda: [0])
    # Seeds for recipes outside MAIN_RECIPES (ablations); None = the same as ``seeds``.
    ablation_seeds: list[int] | None = None
    reference: str = "bf16"
    # Also train MXFP4 this many times longer (the run "mxfp4-long", with its own full schedule): with the equal-token
    # "mxfp4" run it measures how many more tokens MXFP4 needs to reach NVFP4's loss (the paper: 1.36x). 1 = none.
    mxfp4_token_multiplier: float | None = None
    train: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    # Branch late-switch runs from their base run's checkpoint at the switch step instead of training from scratch.
    branch: bool = True
    # After the runs, probe every recipe (nvfp4 probe) on fresh weights and on a trained checkpoint (nvfp4's first
    # seed, else the reference's), for the mechanism verdicts; the runs also log --probe-interval records.
    probe: bool = False
    probe_draws: int = 32

    def __post_init__(self) -> None:
        if (self.recipes is None) == (self.suite is None):
            raise ValueError("give either --recipes or --suite (one of them lists the runs)")
        if self.suite is not None and self.suite not in SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; valid suites: {', '.join(SUITES)}")
        for name in self.recipe_names:
            recipes.get(name)  # ValueError listing valid recipe names
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        if self.reference not in self.recipe_names:
            raise ValueError(f"the reference recipe {self.reference!r} is not among the compared recipes")
        if self.mxfp4_token_multiplier is None:
            self.mxfp4_token_multiplier = 1.5 if self.suite in ("paper", "paper-full") else 1.0
        if self.mxfp4_token_multiplier < 1.0:
            raise ValueError("mxfp4_token_multiplier must be >= 1")
        if self.probe_draws < 2:
            raise ValueError(f"--probe-draws must be at least 2, got {self.probe_draws}")
        if self.probe and "probe_interval" not in self.train:
            self.train["probe_interval"] = self.train.get("eval_interval", 50) or 50
        for key in ("recipe", "seed", "out", "resume", "keep_steps", "branch_from"):
            if key in self.train:
                raise ValueError(f"train option {key!r} is set per run by compare; remove it")

    @property
    def recipe_names(self) -> list[str]:
        return list(SUITES[self.suite]) if self.suite else list(self.recipes or [])

    @property
    def run_names(self) -> list[str]:
        """The recipes, plus "mxfp4-long" after "mxfp4" when MXFP4 also trains longer (token efficiency)."""
        names = self.recipe_names
        if "mxfp4" in names and self.mxfp4_token_multiplier != 1.0:
            names.insert(names.index("mxfp4") + 1, LONG_MXFP4)
        return names

    def runs(self) -> list[tuple[str, int]]:
        """(run name, seed) pairs, ordered so that a partly finished comparison says the most: the first seed of
        the main recipes (bf16, fp8, nvfp4, mxfp4, mxfp4-long), then the other seeds of the reference and NVFP4
        (the seed spread every verdict is judged against, and the headline gap on more seeds), then the first seed
        of the ablations, then everything else, seed-major."""
        all_runs = []
        for seed in dict.fromkeys(self.seeds + (self.ablation_seeds or [])):
            for name in self.run_names:
                seeds = self.seeds if name in MAIN_RUNS or self.ablation_seeds is None else self.ablation_seeds
                if seed in seeds:
                    all_runs.append((name, seed))
        first_seed = {}
        for name, seed in all_runs:
            first_seed.setdefault(name, seed)

        def priority(run: tuple[str, int]) -> int:
            name, seed = run
            if seed == first_seed[name]:
                return 0 if name in MAIN_RUNS else 2
            return 1 if name in (self.reference, "nvfp4") else 3

        return sorted(all_runs, key=priority)  # stable: seed-major within each group

    def branch_points(self) -> dict[tuple[str, int], tuple[str, int]]:
        """(switch recipe, seed) -> (base recipe, step): the planned base run that trains identically until
        ``step``, where the switch run's precision switch begins (see the module doc)."""
        if not self.branch:
            return {}
        planned = set(self.runs())
        points = {}
        for name, seed in self.runs():
            recipe = recipes.get(recipe_of(name))
            if recipe.switch is None:
                continue
            base = next(
                (
                    b
                    for b in self.recipe_names
                    if (b, seed) in planned
                    and recipes.get(b).switch is None
                    and recipes.get(b).same_until_switch(recipe)
                ),
                None,
            )
            if base is None:
                continue
            cfg, base_cfg = _train_config(self, name, seed), _train_config(self, base, seed)
            if cfg.total_steps() != base_cfg.total_steps():
                continue
            step = recipe.switch.first_active_step(cfg.total_steps(), cfg.tokens_per_step())
            if step:  # None: never switches; 0: nothing to share
                points[(name, seed)] = (base, step)
        return points


def run_dir(out: str | Path, recipe: str, seed: int) -> Path:
    return Path(out) / "runs" / recipe / f"seed{seed}"


def recipe_of(run_name: str) -> str:
    """The recipe a run trains: its name, except "mxfp4-long" (the recipe "mxfp4", trained longer)."""
    return "mxfp4" if run_name == LONG_MXFP4 else run_name


def _train_config(config: CompareConfig, name: str, seed: int):
    from nvfp4.train import TrainConfig

    options = dict(config.train)
    if name == LONG_MXFP4:
        for key in ("max_tokens", "max_steps"):
            if options.get(key):
                options[key] = int(round(options[key] * config.mxfp4_token_multiplier))
    options.setdefault("quiet", False)
    out = str(run_dir(config.out, name, seed))
    return TrainConfig.from_dict({**options, "recipe": recipe_of(name), "seed": seed, "out": out})


def compare(config: CompareConfig) -> dict:
    """Run every missing run, then write summary.json, plots and report.md; returns the summary."""
    from nvfp4.train import train

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str))
    plan = config.runs()
    branches = config.branch_points()
    keep_steps: dict[tuple[str, int], set[int]] = {}
    for (_, seed), (base, step) in branches.items():
        keep_steps.setdefault((base, seed), set()).add(step)
    started = time.time()
    for i, (recipe, seed) in enumerate(plan, 1):
        rdir = run_dir(out, recipe, seed)
        if (rdir / "result.json").exists():
            print(f"[{i}/{len(plan)}] {recipe} seed {seed}: complete, skipped", flush=True)
            continue
        resume = any((rdir / "checkpoints").glob("*.pt")) if (rdir / "checkpoints").exists() else False
        cfg = _train_config(config, recipe, seed)
        cfg.resume = resume
        cfg.keep_steps = sorted(keep_steps.get((recipe, seed), ())) or None
        how = " (resuming)" if resume else ""
        if (recipe, seed) in branches and not resume:
            base, step = branches[(recipe, seed)]
            point = checkpoint_path(run_dir(out, base, seed) / "checkpoints", step)
            if point.exists():
                cfg.branch_from = str(point)
                how = f" (branching from {base} at step {step})"
            else:
                how = f" (from scratch: {base} seed {seed} kept no checkpoint at step {step})"
        elapsed = time.time() - started
        print(f"[{i}/{len(plan)}] {recipe} seed {seed}{how} — {elapsed / 60:.1f} min elapsed", flush=True)
        result = train(cfg)
        if result.interrupted:
            print("interrupted: rerun the same command to continue", flush=True)
            break
        record = dataclasses.asdict(result)
        _atomic_write(rdir / "result.json", json.dumps(record, indent=2))
    else:
        if config.probe:
            run_probes(config)
    return write_outputs(config)


def probe_dirs(config: CompareConfig) -> dict[str, Path]:
    return {"trained": Path(config.out) / "probe" / "trained", "fresh": Path(config.out) / "probe" / "fresh"}


def run_probes(config: CompareConfig) -> None:
    """``nvfp4 probe`` of the compared recipes on fresh weights and on the final checkpoint of nvfp4's first seed
    (else the reference's); each is skipped when its probe.json exists, so a stopped compare resumes here too."""
    from nvfp4.analysis.probe import ProbeConfig, run_probe

    names = [r for r in config.recipe_names if r != LONG_MXFP4]
    source = "nvfp4" if "nvfp4" in names else config.reference
    trained_run = run_dir(config.out, source, config.seeds[0])
    train = config.train
    for kind, out in probe_dirs(config).items():
        if (out / "probe.json").exists():
            print(f"probe ({kind}): complete, skipped", flush=True)
            continue
        print(f"probe ({kind}): {len(names)} recipes, {config.probe_draws} draws", flush=True)
        if kind == "trained":
            if not (trained_run / "checkpoints").is_dir():
                print(f"probe (trained): {trained_run} has no checkpoint; skipped", flush=True)
                continue
            cfg = ProbeConfig(out=str(out), checkpoint=str(trained_run), recipes=names, draws=config.probe_draws)
        else:
            cfg = ProbeConfig(
                out=str(out),
                model=train.get("model", "tiny"),
                recipes=names,
                draws=config.probe_draws,
                seed=config.seeds[0],
                data=train.get("data"),
                tokenizer=train.get("tokenizer", "bpe"),
                batch_size=train.get("batch_size", 8),
                seq_len=train.get("seq_len", 128),
                **{k: train[k] for k in MODEL_OVERRIDES if train.get(k) is not None},
            )
        run_probe(cfg, command=(config.command or "nvfp4 compare") + f" (probe: {kind})")


def collect_runs(config: CompareConfig) -> list[RunRecord]:
    runs = []
    for recipe, seed in config.runs():
        rdir = run_dir(config.out, recipe, seed)
        if (rdir / "result.json").exists():
            runs.append(load_run(rdir, recipe, seed))
    return runs


def write_outputs(config: CompareConfig) -> dict:
    """summary.json, the three plots and report.md from whatever runs are complete."""
    out = Path(config.out)
    runs = collect_runs(config)
    if not runs:
        raise ValueError(f"no complete runs in {out / 'runs'}; nothing to report")
    meta = {
        "model": config.train.get("model", "tiny"),
        "max_tokens": config.train.get("max_tokens"),
        "max_steps": config.train.get("max_steps"),
        "mxfp4_token_multiplier": config.mxfp4_token_multiplier,
        "git_commit": git_commit(),
        "hardware": "; ".join(sorted({r.run_info["hardware"] for r in runs if r.run_info.get("hardware")}))
        or hardware(config.train.get("device", "auto")),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "complete_runs": len(runs),
        "planned_runs": len(config.runs()),
    }
    mechanisms = _mechanisms(config)
    summary = summarize(runs, config.reference, meta, mechanisms)
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=float))
    write_plots(runs, out, config.reference)
    write_report(summary, out, config.command)
    return summary


def _mechanisms(config: CompareConfig) -> dict | None:
    """The compact probe figures the mechanism verdicts read: the trained checkpoint's probe, else the fresh one."""
    from nvfp4.analysis.probe_report import mechanism_figures

    for out in probe_dirs(config).values():
        if (out / "probe.json").exists():
            return mechanism_figures(json.loads((out / "probe.json").read_text()))
    return None


def _atomic_write(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def command_line(argv: list[str] | None = None) -> str:
    return "nvfp4 " + shlex.join(sys.argv[1:] if argv is None else argv)
