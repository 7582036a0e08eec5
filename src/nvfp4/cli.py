"""Command line: ``nvfp4 <command>``. Each command's flags map one to one onto a config dataclass."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    """Quantize a heavy-tailed random matrix with every format and print error statistics."""
    import torch

    from nvfp4 import quantize_fp8_blockwise, quantize_mxfp4, quantize_nvfp4, random_hadamard_transform

    torch.manual_seed(args.seed)
    if args.heavy_tailed:
        x = torch.distributions.StudentT(3.0).sample((args.rows, args.cols))
    else:
        x = torch.randn(args.rows, args.cols)
    rows = [
        ("nvfp4 1x16 RN", quantize_nvfp4(x).dequantize()),
        ("nvfp4 1x16 SR", quantize_nvfp4(x, stochastic=True, seed=args.seed).dequantize()),
        ("nvfp4 16x16 RN", quantize_nvfp4(x, tile=(16, 16)).dequantize()),
        ("mxfp4 (ceil)", quantize_mxfp4(x).dequantize()),
        ("mxfp4 (OCP floor)", quantize_mxfp4(x, scale_rule="floor").dequantize()),
        ("fp8 1x128", quantize_fp8_blockwise(x).dequantize()),
        ("fp8 128x128", quantize_fp8_blockwise(x, tile=(128, 128)).dequantize()),
    ]
    h = random_hadamard_transform(x).float()
    rows.append(("RHT16 + nvfp4 (vs RHT(x))", quantize_nvfp4(h).dequantize() - h + x))
    print(f"{'format':28s} {'rel. RMS err':>12s} {'max abs err':>12s}")
    for name, y in rows:
        err = y - x
        print(f"{name:28s} {float(err.norm() / x.norm()):12.5f} {float(err.abs().max()):12.5f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nvfp4", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="quantization error of every format on a random matrix")
    demo.add_argument("--rows", type=int, default=1024)
    demo.add_argument("--cols", type=int, default=1024)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--heavy-tailed", action="store_true", help="Student-t (3 dof) instead of normal")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
