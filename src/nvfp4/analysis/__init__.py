"""Turning training runs into evidence: loss curves, relative gaps, token efficiency, plots, reports."""

from nvfp4.analysis.claims import assess_claims, paired_gap, seed_noise
from nvfp4.analysis.report import (
    RunRecord,
    load_run,
    relative_gap_curve,
    summarize,
    token_efficiency,
    write_plots,
    write_report,
)

__all__ = [
    "RunRecord",
    "assess_claims",
    "paired_gap",
    "seed_noise",
    "load_run",
    "relative_gap_curve",
    "summarize",
    "token_efficiency",
    "write_plots",
    "write_report",
]
