"""``compare`` end to end in quick mode: runs, skip-on-resume, summary, plots, report."""

from __future__ import annotations

import json

import pytest

from nvfp4.analysis.compare import SUITES, CompareConfig, _train_config, compare, run_dir

TINY = dict(
    model="tiny",
    n_layer=4,
    max_steps=6,
    batch_size=4,
    seq_len=32,
    eval_interval=3,
    eval_batches=1,
    log_interval=1,
    tokenizer="byte",
    quiet=True,
)


def test_quick_compare_writes_everything_and_resumes(tmp_path, capsys):
    cfg = CompareConfig(
        recipes=["bf16", "nvfp4"], out=str(tmp_path), seeds=[0], train=dict(TINY), command="nvfp4 compare --quick"
    )
    summary = compare(cfg)
    assert set(summary["recipes"]) == {"bf16", "nvfp4"}
    assert summary["recipes"]["bf16"]["val_gap_to_reference"] == 0.0
    nv = summary["recipes"]["nvfp4"]
    # 4 blocks: nvfp4 keeps blocks 0 and 3 in BF16 and quantizes 1 and 2, so the runs must differ.
    assert nv["val_gap_to_reference"] is not None and 0 < abs(nv["val_gap_to_reference"]) < 0.5
    for name in ("summary.json", "report.md", "loss_curves.png", "relative_loss_difference.png", "final_val_loss.png"):
        assert (tmp_path / name).stat().st_size > 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["hardware"] and "git_commit" in on_disk and on_disk["complete_runs"] == 2
    run_info = json.loads((run_dir(tmp_path, "nvfp4", 0) / "run.json").read_text())
    assert run_info["hardware"] in on_disk["hardware"]  # the runs' own hardware, not the reporting process's
    assert {r["git_commit"] for r in on_disk["runs"]} == {run_info["git_commit"]}
    # Same initialisation and data order: only the recipe differs, so the step-1 losses are close.
    first = {}
    for recipe in ("bf16", "nvfp4"):
        rows = [json.loads(line) for line in open(run_dir(tmp_path, recipe, 0) / "metrics.jsonl")]
        first[recipe] = next(r["train_loss"] for r in rows if "train_loss" in r)
    assert abs(first["bf16"] - first["nvfp4"]) < 0.05
    # A second call skips both complete runs.
    capsys.readouterr()
    compare(cfg)
    assert capsys.readouterr().out.count("complete, skipped") == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(recipes=["bf16"], suite="paper"), "either --recipes or --suite"),
        (dict(suite="nope"), "unknown suite"),
        (dict(recipes=["bf16", "nvfp5"]), "unknown recipe"),
        (dict(recipes=["nvfp4"]), "reference recipe"),
        (dict(recipes=["bf16"], train={"seed": 3}), "set per run"),
    ],
)
def test_bad_compare_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(**kwargs)


def test_paper_suite_plan_runs_mxfp4_longer():
    cfg = CompareConfig(suite="paper", seeds=[1, 2], ablation_seeds=[1], train={"max_tokens": 1000})
    plan = cfg.runs()
    assert ("nvfp4", 2) in plan and ("nvfp4-no-sr", 2) not in plan and ("nvfp4-no-sr", 1) in plan
    assert len(plan) == 5 * 2 + 8
    # main recipes first, then the seed spread of bf16 and nvfp4, then the ablations, then the other seeds
    assert plan[:7] == [
        ("bf16", 1),
        ("fp8", 1),
        ("nvfp4", 1),
        ("mxfp4", 1),
        ("mxfp4-long", 1),
        ("bf16", 2),
        ("nvfp4", 2),
    ]
    assert plan[7:15] == [(name, 1) for name in SUITES["paper"][4:]]
    assert plan[15:] == [("fp8", 2), ("mxfp4", 2), ("mxfp4-long", 2)]
    # mxfp4 trains the same tokens as the others; mxfp4-long is the mxfp4 recipe, 1.5x longer
    equal, longer = _train_config(cfg, "mxfp4", 1), _train_config(cfg, "mxfp4-long", 1)
    assert (equal.recipe, equal.max_tokens) == ("mxfp4", 1000)
    assert (longer.recipe, longer.max_tokens, longer.out) == ("mxfp4", 1500, str(run_dir(cfg.out, "mxfp4-long", 1)))
    assert ("mxfp4-long", 1) not in CompareConfig(recipes=["bf16", "mxfp4"], train={"max_tokens": 1000}).runs()
    quick = CompareConfig(recipes=["nvfp4", "bf16"], seeds=[3, 1]).runs()
    assert quick == [("nvfp4", 3), ("bf16", 3), ("nvfp4", 1), ("bf16", 1)]
    assert cfg.mxfp4_token_multiplier == 1.5


def test_paper_suite_branches_the_switch_runs_from_nvfp4():
    cfg = CompareConfig(suite="paper", seeds=[1, 2], ablation_seeds=[1], train={"max_steps": 100})
    assert cfg.branch_points() == {(f"nvfp4-switch-{p}", 1): ("nvfp4", 80) for p in ("fwd", "bwd", "both")}
    assert CompareConfig(suite="paper", seeds=[1], branch=False, train={"max_steps": 100}).branch_points() == {}
    # no base recipe in the plan: nothing to branch from
    assert CompareConfig(recipes=["bf16", "nvfp4-switch-fwd"], train={"max_steps": 100}).branch_points() == {}


def test_switch_run_branches_bit_identically(tmp_path, capsys):
    """compare keeps nvfp4's checkpoint at the switch step and branches the switch run from it: the same metrics as
    the switch run trained from scratch (--no-branch)."""
    train = dict(TINY, checkpoint_interval=0, keep_checkpoints=1)
    runs = {}
    for branch in (True, False):
        out = tmp_path / ("branched" if branch else "scratch")
        cfg = CompareConfig(
            recipes=["bf16", "nvfp4", "nvfp4-switch-fwd"], out=str(out), seeds=[0], train=train, branch=branch
        )
        compare(cfg)
        printed = capsys.readouterr().out
        assert ("(branching from nvfp4 at step 5)" in printed) == branch  # 6 steps: 5/6 >= 0.8 > 4/6
        rows = [json.loads(line) for line in open(run_dir(out, "nvfp4-switch-fwd", 0) / "metrics.jsonl")]
        runs[branch] = [(r["step"], r.get("train_loss"), r.get("val_loss"), r.get("precision")) for r in rows]
    assert runs[True] == runs[False]
    assert runs[True][-1][3] == {"forward": "bf16", "backward": "nvfp4"}


def test_cli_quick_compare_and_errors(tmp_path, capsys):
    from nvfp4.cli import main

    out = tmp_path / "q"
    assert main(["compare", "--quick", "--max-steps", "4", "--eval-interval", "2", "--out", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "final_val_loss.png").exists()
    assert "nvfp4" in capsys.readouterr().out
    # --report-only rebuilds the report from the runs; the report shows the command that made them
    (out / "report.md").unlink()
    argv = ["compare", "--quick", "--max-steps", "4", "--eval-interval", "2", "--out", str(out)]
    assert main([*argv, "--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert "--report-only" not in report and "nvfp4 compare --quick --max-steps 4" in report
    assert main(["compare", "--recipes", "bf16,nvfp5", "--out", str(out)]) == 2
    assert "unknown recipe 'nvfp5'" in capsys.readouterr().err
    assert main(["compare", "--suite", "paper", "--seeds", "a,b", "--out", str(out)]) == 2
    assert "comma-separated list of int" in capsys.readouterr().err


def test_compare_probe_gives_mechanism_verdicts_and_paired_statistics(tmp_path):
    cfg = CompareConfig(
        recipes=["bf16", "nvfp4", "nvfp4-no-2d"],
        out=str(tmp_path),
        seeds=[0, 1],
        ablation_seeds=[0],
        train=dict(TINY, sequence_eval_batches=2),
        probe=True,
        probe_draws=2,
    )
    assert cfg.train["probe_interval"] == TINY["eval_interval"]  # the runs log probe records too
    summary = compare(cfg)
    for kind in ("fresh", "trained"):
        probe = json.loads((tmp_path / "probe" / kind / "probe.json").read_text())
        assert list(probe["recipes"]) == ["bf16", "nvfp4", "nvfp4-no-2d"]
    assert json.loads((tmp_path / "probe" / "trained" / "probe.json").read_text())["meta"]["step"] == 6
    claims = {c["claim"]: c for c in summary["claims"]}
    two_d = next(c for k, c in claims.items() if "2D" in k)
    assert two_d["mechanism_verdict"] == "reproduces" and "16×16 tiles" in two_d["mechanism_evidence"]
    snr = next(c for k, c in claims.items() if "√3" in k)
    assert snr["mechanism_verdict"] != "not measured" and "√3" in snr["mechanism_evidence"]
    paired = summary["paired"]["nvfp4"]["vs_reference"]
    assert paired["seeds"] == [0, 1] and len(paired["bootstrap_interval"]) == 2 and paired["sequences"] == 8
    assert summary["paired"]["nvfp4"]["token_equivalence"]["per_seed"].keys() == {0, 1}
    report = (tmp_path / "report.md").read_text()
    assert "mechanism verdict" in report and "Paired statistics" in report and "## Mechanisms" in report
    assert (tmp_path / "gradient_signal_to_noise.png").stat().st_size > 0


def test_the_successors_suite_names_real_recipes():
    import nvfp4

    assert set(SUITES["successors"]) <= set(nvfp4.recipes.names())
    assert {"bf16", "nvfp4", "nvfp4-4over6", "mxfp8", "nvfp4-mxfp8-edges"} == set(SUITES["successors"])
