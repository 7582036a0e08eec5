"""Time of one full training step (forward, backward, AdamW) of a model preset (GPT or hybrid), per recipe vs bf16.

    python benchmarks/train_step.py --model small --batch-size 8 --seq-len 256 --recipes bf16,nvfp4

Recipes are timed in alternation in the same process (medians), so machine load affects all alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_ms, machine  # noqa: E402

import nvfp4  # noqa: E402
from nvfp4.model import build  # noqa: E402


def make_step(recipe: str, model_name: str, batch: int, seq: int, device: str, backend: str):
    torch.manual_seed(0)
    model = build(model_name, seq_len=max(seq, 64)).to(device)
    nvfp4.convert(model, recipe, backend=backend)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    vocab = model.config.vocab_size
    x = torch.randint(0, vocab, (batch, seq), device=device)

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="a preset, or several comma-separated (small,hybrid-small)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--recipes", default="bf16,nvfp4")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    models = args.model.split(",")
    pairs = [(m, r) for m in models for r in args.recipes.split(",")]
    names = [f"{m}/{r}" if len(models) > 1 else r for m, r in pairs]
    steps = {
        n: make_step(r, m, args.batch_size, args.seq_len, args.device, args.backend)
        for n, (m, r) in zip(names, pairs, strict=True)
    }
    for step in steps.values():  # warm-up (kernel compilation, allocator)
        step()
        step()
    times = interleaved_ms(steps, args.repeats)
    tokens = args.batch_size * args.seq_len
    base = statistics.median(times[names[0]])
    print(f"# {machine()}; model {args.model}, {tokens} tokens/step, device {args.device}, backend {args.backend}")
    print(f"{'run':>28s} {'step ms':>9s} {'tokens/s':>9s} {'ratio vs ' + names[0]:>22s}")
    for n in names:
        med = statistics.median(times[n])
        print(f"{n:>28s} {med:9.1f} {tokens / med * 1e3:9.0f} {med / base:22.2f}")


if __name__ == "__main__":
    main()
