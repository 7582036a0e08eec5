"""Turning training runs into evidence: loss curves, relative gaps, token efficiency, plots, reports."""

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
    "load_run",
    "relative_gap_curve",
    "summarize",
    "token_efficiency",
    "write_plots",
    "write_report",
]
