"""What a probe costs: ``nvfp4 probe`` per recipe, as a multiple of one BF16 training step of the same model and batch.

    python benchmarks/probe.py --model small --batch-size 8 --seq-len 256 --draws 32 --recipes bf16,nvfp4,nvfp4-no-sr

The baseline (a BF16-autocast forward + backward + AdamW step) is timed in the same process, so the ratios hold on
another machine; a stochastic recipe costs about ``draws`` quantized passes plus the GEMM estimators, a
deterministic one a single pass.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine  # noqa: E402

from nvfp4.analysis.probe import probe_recipe, reference_pass  # noqa: E402
from nvfp4.model import build, from_config  # noqa: E402


def bf16_step_seconds(model: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--recipes", default="bf16,nvfp4,nvfp4-no-sr")
    args = p.parse_args()
    torch.manual_seed(0)
    model = build(args.model, seq_len=max(args.seq_len, 64))
    x = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seq_len))
    batch = (x, torch.roll(x, -1, 1))
    step = bf16_step_seconds(from_config(model.config), x)
    t0 = time.perf_counter()
    ref = reference_pass(model, batch)
    ref_time = time.perf_counter() - t0
    print(f"# {machine()}; model {args.model}, {x.numel()} tokens, {args.draws} draws")
    print(f"bf16 training step (baseline)   {step:8.2f} s   1.0x")
    print(f"FP32 reference pass (once)      {ref_time:8.2f} s   {ref_time / step:5.1f}x")
    for name in args.recipes.split(","):
        t0 = time.perf_counter()
        result = probe_recipe(model, name, batch, draws=args.draws, reference=ref)
        dt = time.perf_counter() - t0
        print(f"{name:24s} {result['passes']:3d} passes {dt:8.2f} s  {dt / step:5.1f}x")


if __name__ == "__main__":
    main()
