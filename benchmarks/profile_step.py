"""Profile of one training step (after warm-up): the top operators by time, and the host<->device copy and
synchronisation counts that a sync-free step should keep at zero.

    python benchmarks/profile_step.py --device cuda --model base --recipe nvfp4 --out profile.txt
    python benchmarks/profile_step.py --device cpu --model tiny --recipe nvfp4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import make_step  # noqa: E402

_SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaMemcpyAsync")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--recipe", default="nvfp4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", default=None, help="also write the full table here")
    args = parser.parse_args()
    step = make_step(args.recipe, args.model, args.batch_size, args.seq_len, args.device, "auto")
    step()
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    table = averages.table(sort_by=sort, row_limit=args.rows)
    print(table)
    if args.out:
        Path(args.out).write_text(averages.table(sort_by=sort, row_limit=200))
    counts = {e.key: e.count for e in averages if e.key in _SYNC_EVENTS}
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx"))
    print(
        f"SUMMARY: {args.model}/{args.recipe} one step: kernel launches {launches}, "
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in _SYNC_EVENTS)
    )


if __name__ == "__main__":
    main()
