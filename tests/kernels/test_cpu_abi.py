"""The ctypes mirror of the kernel's argument struct must match the C layout the compiler produces.

cpu.KernelCall mirrors ``struct nvfp4_call`` (csrc/call.h); the library reports the C side through
``nvfp4_call_layout`` (sizeof, then offsetof and sizeof of each field) and ``nvfp4_call_fields`` (their names).
"""

from __future__ import annotations

import ctypes

import pytest

from nvfp4.kernels import cpu as cpu_mod
from nvfp4.kernels.cpu import CPUBackend, KernelCall, build_library

if not CPUBackend.is_available("cpu"):
    pytest.skip(f"the nvfp4 CPU kernel is unavailable: {cpu_mod._load_error}", allow_module_level=True)


def c_layout(lib: ctypes.CDLL) -> tuple[int, list[tuple[str, int, int]]]:
    """(sizeof, [(name, offset, size)]) of struct nvfp4_call as compiled into lib."""
    buf = (ctypes.c_int64 * 128)()
    n = lib.nvfp4_call_layout(buf)
    names = lib.nvfp4_call_fields().decode().split()
    assert len(names) == n
    return buf[0], [(names[i], buf[1 + 2 * i], buf[2 + 2 * i]) for i in range(n)]


def py_layout(struct: type[ctypes.Structure]) -> tuple[int, list[tuple[str, int, int]]]:
    fields = [(name, getattr(struct, name).offset, getattr(struct, name).size) for name, _ in struct._fields_]
    return ctypes.sizeof(struct), fields


def layout_mismatches(lib: ctypes.CDLL, struct: type[ctypes.Structure]) -> list[str]:
    (c_size, c_fields), (py_size, py_fields) = c_layout(lib), py_layout(struct)
    problems = [] if c_size == py_size else [f"sizeof: C {c_size}, ctypes {py_size}"]
    if [f[0] for f in c_fields] != [f[0] for f in py_fields]:
        problems.append(f"fields: C {[f[0] for f in c_fields]}, ctypes {[f[0] for f in py_fields]}")
    for c, p in zip(c_fields, py_fields, strict=False):
        if c != p:
            problems.append(f"field: C {c} (name, offset, size), ctypes {p}")
    return problems


@pytest.mark.parametrize("build", ["native", "portable"])
def test_kernel_call_matches_the_c_struct(build):
    lib = CPUBackend.instance().lib if build == "native" else build_library((("-DNVFP4_PORTABLE",),))
    assert layout_mismatches(lib, KernelCall) == []
    offsets = [offset for _, offset, _ in c_layout(lib)[1]]
    assert offsets == sorted(offsets), "nvfp4_call_layout must list the fields in declaration order"


def test_a_wrong_mirror_is_caught():
    """The check is not vacuous: a swapped pair, a narrowed type or a missing field are each reported."""
    lib = CPUBackend.instance().lib
    fields = list(KernelCall._fields_)
    swapped = fields.copy()
    swapped[4], swapped[5] = swapped[5], swapped[4]  # rows <-> cols: same types, names out of place
    narrowed = [(n, ctypes.c_int32 if n == "tile_rows" else t) for n, t in fields]
    for bad_fields in (swapped, narrowed, fields[:-1]):
        bad = type("BadCall", (ctypes.Structure,), {"_fields_": bad_fields})
        assert layout_mismatches(lib, bad), bad_fields
