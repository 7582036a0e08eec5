"""Host time of one small layer step (fwd+bwd), where kernels are cheap and Python/dispatch overhead dominates, as
a ratio to nn.Linear; and the same with PYTHONDONTWRITEBYTECODE=1 and no Triton (issue #12 item 0's 4-6x slowdown
hid there: a failed import retried per operand).

    python benchmarks/host_overhead.py                         # 256 tokens x 256 features, recipes nvfp4,mxfp4,fp8
    PYTHONDONTWRITEBYTECODE=1 python benchmarks/host_overhead.py --block-triton
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--recipes", default="nvfp4,mxfp4,fp8")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--block-triton", action="store_true", help="make `import triton` fail, as without Triton")
    args = parser.parse_args()
    if args.block_triton:
        sys.modules["triton"] = None  # type: ignore[assignment]
    import torch
    from torch import nn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _timing import interleaved_ms, machine

    import nvfp4

    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.features, requires_grad=True)
    layers = {"nn.Linear": nn.Linear(args.features, args.features, bias=False)}
    for name in args.recipes.split(","):
        layers[name] = nvfp4.Linear(args.features, args.features, bias=False, recipe=name)

    def step(layer):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.sum().backward()
        if isinstance(layer, nvfp4.Linear):
            layer.invalidate_weight_cache()  # as after an optimizer step: the weight is quantized every step

    steps = {name: functools.partial(step, layer) for name, layer in layers.items()}
    for fn in steps.values():
        for _ in range(20):
            fn()
    times = {name: [t * 1e3 for t in ts] for name, ts in interleaved_ms(steps, args.repeats).items()}  # us
    base = statistics.median(times["nn.Linear"])
    print(
        f"# {machine()}; {args.tokens} tokens x {args.features} features, fwd+bwd, bf16 autocast"
        + (", Triton blocked" if args.block_triton else "")
    )
    print(f"{'layer':>12s} {'us/step':>9s} {'ratio':>7s}")
    for name in layers:
        med = statistics.median(times[name])
        print(f"{name:>12s} {med:9.0f} {med / base:7.2f}")


if __name__ == "__main__":
    main()
