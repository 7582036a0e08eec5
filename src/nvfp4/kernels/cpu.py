"""Fast CPU backend: a small C kernel (``csrc/``, one translation unit ``csrc/nvfp4_cpu.c`` that includes the other
files), compiled on first use and called through ctypes.

Why a C kernel: the plain-PyTorch reference materialises a dozen full-size temporaries per quantization;
the kernel reads the input twice (tensor amax, then a fused block-amax/scale/round/pack pass) and writes only
the packed codes and scales. It reproduces the reference bit for bit (tests/kernels/test_cpu_backend.py,
tests/kernels/test_fused_ops.py).

Two layouts: blocks along the rows of the input, or (``transpose=True``) along its columns, i.e. quantizing
``x.t()`` without a transposed copy: the kernel loads 16x16 tiles, in which a block of ``x.t()`` is one lane across
16 registers. ``fake_quantize_nvfp4`` writes the GEMM operand value(q)·s_b directly (no packed intermediate).
A transposed view given as input is read in place through the other layout instead of being copied.

Build: ``$CC`` (else gcc, else cc) with OpenMP and ``-march=native``, falling back to plainer flags if those
fail. The shared library is cached in ``$NVFP4_CACHE/kernels/`` (default ``~/.cache/nvfp4/kernels/``) under a
name keyed by every file of ``csrc/``, the flags and the CPU, compiled to a temporary file and renamed atomically so
that concurrent processes never load a half-written file. ``NVFP4_DISABLE_CPU_KERNEL=1`` turns the backend off.

ABI: every kernel entry point takes one argument, a pointer to ``struct nvfp4_call`` (``csrc/call.h``), mirrored
here by :class:`KernelCall`; tests/kernels/test_cpu_abi.py checks that the two layouts agree.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from nvfp4.formats.nvfp4 import BLOCK
from nvfp4.formats.rng import derive_keys
from nvfp4.kernels.contract import BackendBase, Quantized, QuantSpec, Unsupported, logical_shape, offset_value

_CSRC = Path(__file__).with_name("csrc")
_SOURCE = _CSRC / "nvfp4_cpu.c"  # the translation unit; it #includes the other files of csrc/
_ABI_VERSION = 6
_DT_F32, _DT_BF16 = 0, 1
_OUT_PACKED, _OUT_F32, _OUT_BF16 = 0, 1, 2
# Bit-exactness: no -ffast-math (it reassociates and flushes subnormals); -ffp-contract=off stops GCC from
# fusing a*b+c into an FMA, which rounds once where the reference rounds twice.
_COMMON_FLAGS = ("-O3", "-std=c11", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off")
# Tried in order; the first that compiles is used.
_VARIANTS = (
    ("-fopenmp", "-march=native"),
    ("-fopenmp",),
    (),
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_load_error: str | None = None
_warned = False


def _disabled() -> bool:
    return os.environ.get("NVFP4_DISABLE_CPU_KERNEL", "").strip() not in ("", "0")


def _cache_dir() -> Path:
    root = os.environ.get("NVFP4_CACHE")
    return Path(root) / "kernels" if root else Path.home() / ".cache" / "nvfp4" / "kernels"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("cc")


@functools.cache
def _cpu_fingerprint() -> str:
    """CPU model and feature flags: a -march=native library must not be reused on a different CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("vendor_id", "model name", "flags", "Features")]
    return "\n".join(dict.fromkeys(keep))  # first processor's lines (all processors repeat them)


def _source_files() -> list[Path]:
    """Every file of csrc/ (sorted by name): any of them may be included, so all of them key the build."""
    return sorted((f for f in _CSRC.iterdir() if f.is_file()), key=lambda f: f.name)


def _library_path(cc: str, flags: tuple[str, ...]) -> Path:
    key = hashlib.sha256()
    for f in _source_files():
        data = f.read_bytes()
        key.update(f"{f.name}\0{len(data)}\0".encode())
        key.update(data)
    key.update("\0".join((cc, *flags, platform.machine())).encode())
    if "-march=native" in flags:
        key.update(_cpu_fingerprint().encode())
    return _cache_dir() / f"nvfp4_cpu-{key.hexdigest()[:20]}.so"


def _compile(cc: str, flags: tuple[str, ...], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
    os.close(fd)
    try:
        cmd = [cc, *flags, "-I", str(_CSRC), str(_SOURCE), "-o", tmp, "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent process sees either no file or a complete one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class KernelCall(ctypes.Structure):
    """The arguments of a kernel entry point: mirrors ``struct nvfp4_call`` in csrc/call.h, field for field and in
    the same order (see there for what each kernel reads; the fields a kernel ignores are left 0). Change both
    together and bump ``_ABI_VERSION``; tests/kernels/test_cpu_abi.py compares the layouts."""

    _fields_ = [
        ("x", ctypes.c_void_p),
        ("out", ctypes.c_void_p),
        ("scales", ctypes.c_void_p),
        ("signbits", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("stride_r", ctypes.c_int64),
        ("stride_k", ctypes.c_int64),
        ("tile_rows", ctypes.c_int64),
        ("global_amax", ctypes.c_float),
        ("k1", ctypes.c_uint32),
        ("k2", ctypes.c_uint32),
        ("dtype", ctypes.c_int32),
        ("out_kind", ctypes.c_int32),
        ("transpose", ctypes.c_int32),
        ("stochastic", ctypes.c_int32),
        ("ceil_rule", ctypes.c_int32),
        ("nthreads", ctypes.c_int32),
    ]


def _call(**fields):
    """``byref`` of a KernelCall of these fields (nthreads: torch's thread count unless given)."""
    fields.setdefault("nthreads", torch.get_num_threads())
    return ctypes.byref(KernelCall(**fields))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32, u32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_uint32, ctypes.c_float
    call = [ctypes.POINTER(KernelCall)]
    sigs = {
        "nvfp4_abi_version": (i32, []),
        "nvfp4_simd_width": (i32, []),
        "nvfp4_call_layout": (i64, [p]),
        "nvfp4_call_fields": (ctypes.c_char_p, []),
        "nvfp4_amax": (f32, call),
        "nvfp4_rht_amax": (f32, call),
        "nvfp4_rht_amax_t": (f32, call),
        "nvfp4_quantize": (i32, call),
        "nvfp4_scaled_values": (None, call),
        "mxfp4_quantize": (None, call),
        "fp8_quantize": (i32, call),
        "mxfp8_quantize": (None, call),
        "fouroversix_quantize": (None, call),
        # probes for the tests, plain arguments
        "nvfp4_e4m3_encode": (None, [p, i64, p]),
        "nvfp4_random_bytes": (None, [ctypes.c_uint64, i64, u32, u32, p]),
        "nvfp4_random_bytes_lanes": (None, [p, u32, u32, u32, p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    if lib.nvfp4_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"{lib._name} has ABI version {lib.nvfp4_abi_version()}, expected {_ABI_VERSION}")
    return lib


def build_library(variants: tuple[tuple[str, ...], ...] = _VARIANTS) -> ctypes.CDLL:
    """Compile (or reuse from the cache) and load the kernel; raises RuntimeError with the reasons if none builds.

    ``variants`` are extra flag sets tried in order (tests pass ``(("-DNVFP4_PORTABLE",),)`` for the scalar path).
    """
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc)")
    errors = []
    for extra in variants:
        flags = (*_COMMON_FLAGS, *extra)
        path = _library_path(cc, flags)
        try:
            if not path.exists():
                _compile(cc, flags, path)
            return _bind(ctypes.CDLL(str(path)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            errors.append(f"[{' '.join(extra) or 'no extra flags'}] {exc}")
    raise RuntimeError("\n".join(errors))


def _library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (with one warning per process) when it cannot be built."""
    global _lib, _load_error, _warned
    with _lock:
        if _lib is None and _load_error is None:
            try:
                _lib = build_library()
            except RuntimeError as exc:
                _load_error = str(exc)
        if _lib is None and not _warned:
            _warned = True
            warnings.warn(
                "nvfp4: the fast CPU quantization kernel could not be built, so the slower pure-PyTorch reference "
                "is used instead (same results). Fix: install a C compiler with OpenMP support (e.g. "
                "`apt install gcc`), or point $CC at one; set NVFP4_DISABLE_CPU_KERNEL=1 to silence this. "
                f"Details:\n{_load_error}",
                RuntimeWarning,
                stacklevel=3,
            )
        return _lib


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _kernel_layout(x2d: torch.Tensor, transpose: bool) -> tuple[torch.Tensor, int, bool]:
    """(x, dtype code, kernel_transpose): a row-major fp32/bf16 tensor that the kernel reads, and whether it must
    quantize its transpose, so that the logical tensor is ``x2d.t()`` if ``transpose`` else ``x2d``.

    A logical tensor that is a transposed view of row-major memory (``x2d.t()`` of a contiguous ``x2d``, or a
    ``.t()`` view passed with ``transpose=False``) is read in place through the transposed path; any other
    layout is copied to row-major first.
    """
    if x2d.dtype == torch.bfloat16:
        dt = _DT_BF16
    else:
        x2d, dt = x2d.to(torch.float32), _DT_F32  # keeps the strides of a dense tensor
    t = x2d.t() if transpose else x2d
    if t.is_contiguous():
        return t, dt, False
    if t.t().is_contiguous():
        return t.t(), dt, True
    return t.contiguous(), dt, False


def _strided_layout(x2d: torch.Tensor, transpose: bool) -> tuple[torch.Tensor, int, int, int, int, int]:
    """(x, dtype code, M, K, sr, sk): element (r, k) of the logical (M, K) tensor (x2d, or x2d.t()) is at
    x[r * sr + k * sk], read in place for row-major and transposed layouts (what the MXFP4 and FP8 kernels take)."""
    x, dt, kernel_t = _kernel_layout(x2d, transpose)
    if kernel_t:
        return x, dt, x.shape[1], x.shape[0], 1, x.shape[1]
    return x, dt, x.shape[0], x.shape[1], x.shape[1], 1


def _signbits(signs: torch.Tensor | None, size: int = 16) -> torch.Tensor | None:
    """The RHT sign vector as the kernel's sign-bit words; Unsupported (-> the reference) if not size x ±1.

    The layer passes the same cached sign tensor every call, so the conversion is remembered for it (keyed on the
    tensor's identity and version: an in-place change is seen)."""
    if signs is None:
        return None
    if isinstance(signs, torch.Tensor):
        key = (id(signs), signs._version, size)
        hit = _SIGNBITS_CACHE.get(key)
        if hit is not None and hit[0] is signs:
            return hit[1]
        bits = _signbits_uncached(signs, size)
        if len(_SIGNBITS_CACHE) > 64:
            _SIGNBITS_CACHE.clear()
        _SIGNBITS_CACHE[key] = (signs, bits)
        return bits
    return _signbits_uncached(signs, size)


_SIGNBITS_CACHE: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _signbits_uncached(signs, size: int) -> torch.Tensor:
    signs_t = torch.as_tensor(signs)
    if signs_t.numel() != size:
        raise Unsupported(f"this fused RHT kernel supports Hadamard size {size} only")
    signs_f = signs_t.detach().to(device="cpu", dtype=torch.float32).reshape(size)
    if not bool(((signs_f == 1) | (signs_f == -1)).all()):
        raise Unsupported("signs must be ±1; the reference reports the error")
    return torch.where(signs_f < 0, -(2**31), 0).to(torch.int32)


def _amax_cpu(global_amax: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(global_amax).to(device="cpu", dtype=torch.float32).reshape(())


def _negative(amax: torch.Tensor) -> bool:
    """A negative (or -0) tensor amax is outside the contract: the reference handles it."""
    value = float(_amax_cpu(amax))
    return not math.isnan(value) and math.copysign(1.0, value) < 0


def _outputs(rows: int, cols: int, block: int, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(out, scale bytes or None, out kind) for an FP4 quantize of a logical (rows, cols) operand in ``block``-element
    blocks: packed codes + one scale byte per block, or the GEMM values in BF16/FP32 (what the kernel writes)."""
    if spec.packed:
        nblk = -(-cols // block)
        packed = torch.empty((rows, nblk * block // 2), dtype=torch.uint8)
        return packed, torch.empty((rows, nblk), dtype=torch.uint8), _OUT_PACKED
    native = spec.out_dtype if spec.out_dtype in (torch.bfloat16, torch.float32) else torch.float32
    return torch.empty((rows, cols), dtype=native), None, _OUT_BF16 if native == torch.bfloat16 else _OUT_F32


def _result(
    out: torch.Tensor,
    scales: torch.Tensor | None,
    scale_dtype: torch.dtype,
    amax: torch.Tensor | None,
    spec: QuantSpec,
) -> Quantized:
    if spec.packed:
        return Quantized(out, scales.view(scale_dtype), amax)
    return Quantized(out if out.dtype == spec.out_dtype else out.to(spec.out_dtype), None, amax)


class CPUBackend(BackendBase):
    """Bit-exact C implementation of the reference's kernels for CPU tensors."""

    name = "cpu"
    _FUSED_RHT = {"nvfp4": 16, "mxfp4": 32, "fp8": None, "mxfp8": None}

    def __init__(self, lib: ctypes.CDLL | None = None):
        lib = lib if lib is not None else _library()
        if lib is None:
            raise RuntimeError(f"the nvfp4 CPU kernel is unavailable: {_load_error}")
        self.lib = lib

    @classmethod
    def is_available(cls, device: torch.device | str) -> bool:
        if torch.device(device).type != "cpu" or _disabled():
            return False
        return _library() is not None

    @classmethod
    @functools.cache
    def instance(cls) -> CPUBackend:
        return cls()

    @property
    def vectorized(self) -> bool:
        """True when the library was built with the AVX-512 path."""
        return self.lib.nvfp4_simd_width() > 1

    def supports(
        self,
        op: str,
        x: torch.Tensor,
        spec: QuantSpec | None = None,
        *,
        signs: torch.Tensor | None = None,
        amax: torch.Tensor | None = None,
    ) -> str | None:
        if x.device.type != "cpu":
            return "CPU tensors only"
        if x.dim() != 2 or x.numel() == 0:
            return "non-empty 2-D tensors only"
        if op != "quantize":
            return None
        if spec.four_over_six and spec.tile[0] not in (1, 16):
            return f"Four Over Six tiles (1, 16) and (16, 16) only, got {spec.tile}"
        if spec.four_over_six and spec.rht is not None and spec.tile[0] != 1:
            return "Four Over Six fuses the RHT with (1, 16) blocks only"
        if not x.is_floating_point():
            return f"floating-point input only, got {x.dtype}"
        if spec.rht is not None:
            fused = self._FUSED_RHT[spec.format]
            if spec.rht != fused or signs is None:
                return f"no fused {spec.rht}-point RHT for {spec.format}"
            if logical_shape(x, spec)[1] % spec.rht:
                return f"K is not a multiple of the RHT size {spec.rht}"
            try:
                _signbits(signs, fused)
            except Unsupported as exc:
                return str(exc)
        elif signs is not None:
            return "signs without spec.rht"
        if spec.format == "nvfp4" and amax is not None and _negative(amax):
            return "negative tensor amax"
        return None

    def amax_kernel(self, x2d: torch.Tensor) -> torch.Tensor:
        """max|x| as an FP32 0-d tensor (NaN if any NaN)."""
        x, dt, _ = _kernel_layout(x2d, False)  # the layout does not matter for a max
        value = self.lib.nvfp4_amax(_call(x=_ptr(x), dtype=dt, rows=x.shape[0], cols=x.shape[1]))
        return torch.tensor(value, dtype=torch.float32)

    def quantize_kernel(
        self,
        x2d: torch.Tensor,
        spec: QuantSpec,
        *,
        amax: torch.Tensor | None = None,
        signs: torch.Tensor | None = None,
        seed: int = 0,
        offset: int | torch.Tensor = 0,
    ) -> Quantized:
        """One C pass per operand (after the amax pass when NVFP4 has no amax): no transposed copy, no packed
        intermediate for the GEMM values."""
        off = offset_value(offset)
        if spec.format == "nvfp4":
            return self._nvfp4(x2d, spec, amax, signs, int(seed), off)
        if spec.format == "mxfp4":
            return self._mxfp4(x2d, spec, signs, int(seed), off)
        if spec.format == "mxfp8":
            return self._mxfp8(x2d, spec)
        return self._fp8(x2d, spec)

    def scaled_values_kernel(
        self, packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16
    ) -> torch.Tensor:
        """value(q) × block scale for every (padded) element: (M, ceil(K/16)*16), exact in BF16."""
        if scales.dim() != 2 or packed.shape != (scales.shape[0], scales.shape[1] * 8):
            raise ValueError(
                f"packed {tuple(packed.shape)} and scales {tuple(scales.shape)} do not match: "
                "expected packed (M, 8*nblk) uint8 and scales (M, nblk)"
            )
        rows, nblk = scales.shape
        packed_c = packed.contiguous().view(torch.uint8)
        scales_c = scales.to("cpu").contiguous().view(torch.uint8)
        native = dtype if dtype in (torch.bfloat16, torch.float32) else torch.float32
        out = torch.empty((rows, nblk * BLOCK), dtype=native)
        out_kind = _OUT_BF16 if native == torch.bfloat16 else _OUT_F32
        self.lib.nvfp4_scaled_values(
            _call(
                x=_ptr(packed_c), scales=_ptr(scales_c), rows=rows, cols=nblk * BLOCK, out_kind=out_kind, out=_ptr(out)
            )
        )
        return out if native == dtype else out.to(dtype)  # the reference also rounds from FP32

    # -- NVFP4 -----------------------------------------------------------------------------------------------
    def _prepare(self, x2d: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, int, bool]:
        x, dt, kernel_t = _kernel_layout(x2d, bool(spec.transpose))
        # The transposed paths read 16x16 tiles of x in place: NVFP4's for 1x16 blocks and 16x16 tiles, Four Over
        # Six's for 1x16 blocks; any other transposed operand is copied to row-major first.
        in_place = (1,) if spec.four_over_six else (1, 16)
        if kernel_t and spec.tile[0] not in in_place:
            x, kernel_t = x.t().contiguous(), False
        return x, dt, kernel_t

    def _tensor_amax(self, x: torch.Tensor, dt: int, kernel_t: bool, signbits: torch.Tensor | None) -> torch.Tensor:
        """max|t| (after the RHT if signbits) of the logical tensor t (x, or x.t() if kernel_t), FP32 0-d."""
        rows, cols = x.shape
        if signbits is None:
            value = self.lib.nvfp4_amax(_call(x=_ptr(x), dtype=dt, rows=rows, cols=cols))
        else:
            rht_amax = self.lib.nvfp4_rht_amax_t if kernel_t else self.lib.nvfp4_rht_amax
            value = rht_amax(_call(x=_ptr(x), dtype=dt, rows=rows, cols=cols, signbits=_ptr(signbits)))
        return torch.tensor(value, dtype=torch.float32)

    def _nvfp4(
        self,
        x2d: torch.Tensor,
        spec: QuantSpec,
        amax: torch.Tensor | None,
        signs: torch.Tensor | None,
        seed: int,
        offset: int,
    ) -> Quantized:
        """NVFP4 (csrc/nvfp4.c) or, with spec.four_over_six, Four Over Six (csrc/fouroversix.c): one C pass after the
        amax pass; the RHT16 is fused, a transposed view of row-major memory read in place (see _prepare)."""
        tile_rows = spec.tile[0]
        x, dt, kernel_t = self._prepare(x2d, spec)
        rows, cols = x.shape[::-1] if kernel_t else x.shape
        signbits = _signbits(signs) if spec.rht else None
        amax_t = self._tensor_amax(x, dt, kernel_t, signbits) if amax is None else _amax_cpu(amax)
        out, scales, out_kind = _outputs(rows, cols, BLOCK, spec)
        k1, k2 = derive_keys(seed, offset) if spec.stochastic else (0, 0)
        kernel = self.lib.fouroversix_quantize if spec.four_over_six else self.lib.nvfp4_quantize
        rc = kernel(
            _call(
                x=_ptr(x),
                dtype=dt,
                rows=x.shape[0],
                cols=x.shape[1],
                transpose=int(kernel_t),  # x's own shape
                signbits=None if signbits is None else _ptr(signbits),
                global_amax=float(amax_t),
                tile_rows=int(tile_rows),
                stochastic=int(spec.stochastic),
                k1=k1,
                k2=k2,
                out_kind=out_kind,
                out=_ptr(out),
                scales=None if scales is None else _ptr(scales),
            )
        )
        if rc:  # nvfp4_quantize's scratch buffers (fouroversix_quantize needs none and returns nothing)
            raise MemoryError("nvfp4_quantize could not allocate its scratch buffers")
        return _result(out, scales, torch.float8_e4m3fn, amax_t, spec)

    # -- MXFP4 -----------------------------------------------------------------------------------------------
    def _mxfp4(self, x2d: torch.Tensor, spec: QuantSpec, signs: torch.Tensor | None, seed: int, offset: int):
        rows, cols = logical_shape(x2d, spec)
        signbits = _signbits(signs, 32) if spec.rht else None
        out, scales, out_kind = _outputs(rows, cols, 32, spec)
        x, dt, rows, cols, sr, sk = _strided_layout(x2d, spec.transpose)
        k1, k2 = derive_keys(seed, offset) if spec.stochastic else (0, 0)
        self.lib.mxfp4_quantize(
            _call(
                x=_ptr(x),
                dtype=dt,
                rows=rows,
                cols=cols,
                stride_r=sr,
                stride_k=sk,
                signbits=None if signbits is None else _ptr(signbits),
                ceil_rule=int(spec.scale_rule == "ceil"),
                stochastic=int(spec.stochastic),
                k1=k1,
                k2=k2,
                out_kind=out_kind,
                out=_ptr(out),
                scales=None if scales is None else _ptr(scales),
            )
        )
        return _result(out, scales, torch.float8_e8m0fnu, None, spec)

    # -- FP8 (blockwise E4M3, FP32 scales) ------------------------------------------------------------------
    def _mxfp8(self, x2d: torch.Tensor, spec: QuantSpec) -> Quantized:
        x, dt, rows, cols, sr, sk = _strided_layout(x2d, spec.transpose)
        if spec.packed:
            out_kind, out = _OUT_PACKED, torch.empty((rows, cols), dtype=torch.uint8)
            scales = torch.empty((rows, -(-cols // 32)), dtype=torch.uint8)
        else:
            native = spec.out_dtype if spec.out_dtype == torch.bfloat16 else torch.float32
            out_kind = _OUT_BF16 if native == torch.bfloat16 else _OUT_F32
            out, scales = torch.empty((rows, cols), dtype=native), None
        self.lib.mxfp8_quantize(
            _call(
                x=_ptr(x),
                dtype=dt,
                rows=rows,
                cols=cols,
                stride_r=sr,
                stride_k=sk,
                out_kind=out_kind,
                out=_ptr(out),
                scales=_ptr(scales) if scales is not None else None,
            )
        )
        if spec.packed:
            return Quantized(out.view(torch.float8_e4m3fn), scales.view(torch.float8_e8m0fnu), None)
        return Quantized(out if out.dtype == spec.out_dtype else out.to(spec.out_dtype), None, None)

    def _fp8(self, x2d: torch.Tensor, spec: QuantSpec) -> Quantized:
        x, dt, rows, cols, sr, sk = _strided_layout(x2d, spec.transpose)
        out_kind = _OUT_PACKED if spec.packed else _OUT_F32
        out = torch.empty((rows, cols), dtype=torch.uint8 if spec.packed else torch.float32)
        scales = torch.empty((rows, -(-cols // 128)), dtype=torch.float32)
        rc = self.lib.fp8_quantize(
            _call(
                x=_ptr(x),
                dtype=dt,
                rows=rows,
                cols=cols,
                stride_r=sr,
                stride_k=sk,
                tile_rows=spec.tile[0],
                out_kind=out_kind,
                out=_ptr(out),
                scales=_ptr(scales),
            )
        )
        if rc != 0:
            raise MemoryError("fp8_quantize could not allocate its scratch buffers")
        if spec.packed:
            return Quantized(out.view(torch.float8_e4m3fn), scales, None)
        return Quantized(out if spec.out_dtype == torch.float32 else out.to(spec.out_dtype), None, None)
