"""Forward+backward time and saved-activation memory of nvfp4.Linear vs nn.Linear (bf16 autocast).

    python benchmarks/linear.py                     # tokens 4096, 1024->4096 and 4096->1024, CPU
    python benchmarks/linear.py --backend reference # force the plain-PyTorch quantizers

Ratios are against nn.Linear measured in the same run. Saved memory counts the tensors each
layer keeps for backward (nn.Linear under autocast keeps BF16 copies of x and W; nvfp4.Linear
keeps the RHT'd NVFP4 copy of x; its cached quantized weight is per step, not per activation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, median_ms  # noqa: E402

import nvfp4  # noqa: E402


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of tensors autograd keeps for this layer's backward, as saved-tensor hooks see them (nvfp4.Linear saves
    its quantized x through save_for_backward), without the FP32 master weight and nvfp4's cached quantized weight,
    which exist once per layer, not per micro-batch."""
    total = 0
    weights = {layer.weight.untyped_storage().data_ptr()}

    def pack(t: torch.Tensor):
        nonlocal total
        if t.untyped_storage().data_ptr() not in weights:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            if isinstance(layer, nvfp4.Linear):
                for operand in ("fprop_w", "dgrad_w"):
                    weights.add(layer._weight_operand(operand).values().untyped_storage().data_ptr())
            layer(x)
    return total


def bench(tokens: int, fan_in: int, fan_out: int, recipe: str, backend: str, repeats: int, device: str):
    torch.manual_seed(0)
    ref = nn.Linear(fan_in, fan_out, bias=False, device=device)
    q = nvfp4.Linear(fan_in, fan_out, bias=False, device=device, recipe=recipe, backend=backend)
    q.load_state_dict(ref.state_dict())
    x = torch.randn(tokens, fan_in, device=device, requires_grad=True)
    dy = torch.randn(tokens, fan_out, device=device, dtype=torch.bfloat16)

    def step(layer):
        def run():
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                y = layer(x)
            y.backward(dy)
            # a new weight version each step, so the quantized-weight cache is rebuilt like in training
            with torch.no_grad():
                layer.weight.add_(0.0)

        return run

    t_ref = median_ms(step(ref), repeats)
    t_q = median_ms(step(q), repeats)
    return t_ref, t_q, saved_bytes(ref, x), saved_bytes(q, x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--recipe", default="nvfp4")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"# {machine()}; recipe {args.recipe}, backend {args.backend}, tokens {args.tokens}, bf16 autocast")
    print(
        f"{'shape':>12s} {'nn.Linear ms':>13s} {'nvfp4 ms':>9s} {'ratio':>6s} {'saved MB (nn)':>14s} "
        f"{'saved MB (nvfp4)':>17s} {'mem ratio':>9s}"
    )
    for fan_in, fan_out in ((1024, 4096), (4096, 1024)):
        t_ref, t_q, m_ref, m_q = bench(
            args.tokens, fan_in, fan_out, args.recipe, args.backend, args.repeats, args.device
        )
        print(
            f"{fan_in:>5d}->{fan_out:<5d} {t_ref:13.1f} {t_q:9.1f} {t_q / t_ref:6.2f} {m_ref / 2**20:14.1f} "
            f"{m_q / 2**20:17.1f} {m_ref / m_q:9.2f}"
        )


if __name__ == "__main__":
    main()
