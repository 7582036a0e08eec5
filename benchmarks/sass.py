"""What the Triton kernels would run on an H100/H200, measured without a GPU: compile each for sm_90 and count
its SASS instructions, registers and spills.

    python benchmarks/sass.py            # a table; --json for machine-readable output

Figure: warp-instructions per 4,096 elements = (static SASS instructions of the kernel) x (warps per program) x
4096 / (elements per program). The kernels are straight-line code except the FP8 128x128 tile (two loops of 8,
counted as static count x trip count: an upper bound), so the static count is what each warp executes. Lower is
better; local memory (register spills) should be 0. Needs Triton's NVIDIA backend (its bundled ptxas, nvdisasm and
cuobjdump); no GPU and no CUDA driver.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the CPU interpreter


def _compile(fn, signature: dict, constexprs: dict, warps: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    aligned = {
        "x_ptr",
        "amax_ptr",
        "signs_ptr",
        "packed_ptr",
        "scales_ptr",
        "out_ptr",
        "M",
        "K",
        "NB",
        "stride_r",
        "stride_p",
        "stride_s",
        "stride_o",
    }  # as a launch on an 8192 x 8192 tensor sees them
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature) if name in aligned}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton_compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "enable_fp_fusion": False}
    )


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _cubin_facts(cubin: bytes) -> tuple[int, int, int]:
    """(SASS instructions, registers per thread, bytes of local memory: > 0 means register spills)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    instructions = sum(1 for line in text.splitlines() if re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+\S", line))
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1))
    return instructions, regs, local


def kernels() -> dict[str, tuple]:
    """name -> (kernel, signature, constexprs, warps, elements per program, loop factor)."""
    from nvfp4.kernels import triton_kernels as tk

    q_sig = {
        "x_ptr": "*i16",
        "amax_ptr": "*fp32",
        "signs_ptr": "*fp32",
        "packed_ptr": "*u8",
        "scales_ptr": "*u8",
        "M": "i32",
        "K": "i32",
        "NB": "i32",
        "stride_r": "i32",
        "stride_k": "constexpr",
        "stride_p": "i32",
        "stride_s": "i32",
        "key1": "i32",
        "key2": "i32",
        "offset_ptr": "*i64",
        "BF16_BITS": "constexpr",
        "TILE_ROWS": "constexpr",
        "STOCHASTIC": "constexpr",
        "DEVICE_OFFSET": "constexpr",
        "INDEX64": "constexpr",
        "RHT": "constexpr",
        "OUT_VALUES": "constexpr",
        "OUT_BF16": "constexpr",
        "BLOCK_M": "constexpr",
        "BLOCKS_K": "constexpr",
        "FOUR_OVER_SIX": "constexpr",
    }
    mx_sig = {
        "x_ptr": "*i16",
        "signs_ptr": "*fp32",
        "out_ptr": "*i16",
        "scales_ptr": "*u8",
        "M": "i32",
        "K": "i32",
        "NB": "i32",
        "stride_r": "i32",
        "stride_k": "constexpr",
        "stride_o": "i32",
        "stride_s": "i32",
        "key1": "i32",
        "key2": "i32",
        "offset_ptr": "*i64",
        "BF16_BITS": "constexpr",
        "CEIL_RULE": "constexpr",
        "STOCHASTIC": "constexpr",
        "DEVICE_OFFSET": "constexpr",
        "INDEX64": "constexpr",
        "RHT": "constexpr",
        "OUT_VALUES": "constexpr",
        "OUT_BF16": "constexpr",
        "BLOCK_M": "constexpr",
        "BLOCKS_K": "constexpr",
    }
    fp8_sig = {
        "x_ptr": "*i16",
        "out_ptr": "*u8",
        "scales_ptr": "*fp32",
        "M": "i32",
        "K": "i32",
        "NB": "i32",
        "stride_r": "i32",
        "stride_k": "constexpr",
        "stride_o": "i32",
        "stride_s": "i32",
        "BF16_BITS": "constexpr",
        "TILE_ROWS": "constexpr",
        "OUT_VALUES": "constexpr",
        "BLOCK_M": "constexpr",
    }
    q_elems = tk.Q_BLOCK_M * tk.Q_BLOCKS_K * 16
    mx_elems = tk.Q_BLOCK_M * tk.MX_BLOCKS_K * 32
    out = {}
    for name, (tile_rows, sr, rht, values, stride_k, device_offset, *fos) in {
        "nvfp4 1x16 RN packed": (1, False, False, False, 1, False),
        "nvfp4 16x16 RN packed (weights)": (16, False, False, False, 1, False),
        "nvfp4 1x16 SR values (dgrad dy)": (1, True, False, True, 1, False),
        "nvfp4 1x16 SR values, device offset": (1, True, False, True, 1, True),
        "nvfp4 RHT16 SR values, transposed (wgrad dy)": (1, True, True, True, None, False),
        "nvfp4 RHT16 SR values, transposed, device offset": (1, True, True, True, None, True),
        "nvfp4 RHT16 RN packed, transposed (wgrad x)": (1, False, True, False, None, False),
        "nvfp4 4/6 1x16 RN values (fprop x)": (1, False, False, True, 1, False, True),
        "nvfp4 4/6 16x16 RN packed (weights)": (16, False, False, False, 1, False, True),
        "nvfp4 4/6 RHT16 SR values, transposed (wgrad dy)": (1, True, True, True, None, False, True),
    }.items():
        sig = dict(q_sig, packed_ptr="*i16") if values else dict(q_sig)
        consts = {
            "BF16_BITS": True,
            "TILE_ROWS": tile_rows,
            "STOCHASTIC": sr,
            "DEVICE_OFFSET": device_offset,
            "INDEX64": False,
            "RHT": rht,
            "OUT_VALUES": values,
            "OUT_BF16": True,
            "BLOCK_M": tk.Q_BLOCK_M,
            "BLOCKS_K": tk.Q_BLOCKS_K,
            "FOUR_OVER_SIX": bool(fos and fos[0]),
        }
        if stride_k == 1:
            consts["stride_k"] = 1
        else:  # a transposed operand: stride_k is the row stride of the original, stride_r = 1
            sig["stride_k"] = "i32"
            consts["stride_r"] = 1
            sig["stride_r"] = "constexpr"
        out[name] = (tk.nvfp4_quantize_kernel, sig, consts, tk.Q_WARPS, q_elems, 1)
    out["mxfp4 RHT32 SR values"] = (
        tk.mxfp4_quantize_kernel,
        mx_sig,
        {
            "stride_k": 1,
            "BF16_BITS": True,
            "CEIL_RULE": True,
            "STOCHASTIC": True,
            "DEVICE_OFFSET": False,
            "INDEX64": False,
            "RHT": True,
            "OUT_VALUES": True,
            "OUT_BF16": True,
            "BLOCK_M": tk.Q_BLOCK_M,
            "BLOCKS_K": tk.MX_BLOCKS_K,
        },
        tk.Q_WARPS,
        mx_elems,
        1,
    )
    for tile_rows, values in ((1, True), (128, False)):
        sig = dict(fp8_sig, out_ptr="*fp32") if values else fp8_sig
        consts = {
            "stride_k": 1,
            "BF16_BITS": True,
            "TILE_ROWS": tile_rows,
            "OUT_VALUES": values,
            "BLOCK_M": tk.FP8_BLOCK_M,
        }
        label = "fp8 1x128 values" if tile_rows == 1 else "fp8 128x128 packed (weights)"
        loops = 1 if tile_rows == 1 else 128 // tk.FP8_BLOCK_M  # the tile's row chunks
        out[label] = (tk.fp8_quantize_kernel, sig, consts, 4, tk.FP8_BLOCK_M * 128 * loops, loops)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        import triton.backends

        if "nvidia" not in triton.backends.backends:
            raise ImportError
    except ImportError:
        print("benchmarks/sass.py: Triton with its NVIDIA backend is needed (pip install triton)")
        sys.exit(2)
    rows = {}
    for name, (fn, sig, consts, warps, elems, loops) in kernels().items():
        k = _compile(fn, sig, consts, warps)
        instructions, regs, local = _cubin_facts(k.asm["cubin"])
        # a loop body runs `loops` times: approximate the dynamic count by the static count times the trip count
        per_4096 = instructions * loops * warps * 4096 / elems if loops > 1 else instructions * warps * 4096 / elems
        rows[name] = {
            "sass": instructions,
            "regs": regs,
            "local_bytes": local,
            "warps": warps,
            "elements": elems,
            "warp_instr_per_4096": round(per_4096),
        }
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        return
    print("# sm_90 (H100/H200) code from Triton, no GPU; warp-instructions per 4,096 elements (lower is better)")
    print(f"{'kernel':<46s} {'SASS':>6s} {'regs':>5s} {'local B':>7s} {'instr/4096':>10s}")
    for name, r in rows.items():
        print(f"{name:<46s} {r['sass']:6d} {r['regs']:5d} {r['local_bytes']:7d} {r['warp_instr_per_4096']:10d}")


if __name__ == "__main__":
    main()
