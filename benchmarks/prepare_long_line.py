"""`nvfp4 prepare` on one very long line without whitespace (minified JSON, base64, tables), against the same
characters cut into ordinary 80-character lines, in one run: the ratio says whether long lines cost extra.

    python benchmarks/prepare_long_line.py --megabytes 5
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine  # noqa: E402

from nvfp4.data import prepare_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=5.0)
    parser.add_argument("--vocab-size", type=int, default=8192)
    args = parser.parse_args()
    rng = random.Random(0)
    n = int(args.megabytes * 1e6)
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+/=") for _ in range(n))
    layouts = {"one line": text + "\n", "80-char lines": "\n".join(text[i : i + 80] for i in range(0, n, 80)) + "\n"}
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, body in layouts.items():
            src = Path(tmp) / name.replace(" ", "_") / "data.txt"
            src.parent.mkdir()
            src.write_text(body)
            start = time.perf_counter()
            prepare_dataset(
                [str(src)],
                Path(tmp) / f"out-{len(times)}",
                vocab_size=args.vocab_size,
                cache_dir=Path(tmp) / f"cache-{len(times)}",
            )
            times[name] = time.perf_counter() - start
    print(f"# {machine()}; {args.megabytes:g} MB of whitespace-free text, BPE vocab {args.vocab_size}")
    base = times["80-char lines"]
    for name, seconds in times.items():
        print(f"{name:>14s} {seconds:7.1f} s {seconds / base:6.2f}x")


if __name__ == "__main__":
    main()
