"""The oracle is a fact of the import graph: ``nvfp4.formats`` imports only itself, torch and the standard library.

A reference that imported a fast backend (even inside a function) could silently test a kernel against itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nvfp4.formats

FORMATS_DIR = Path(nvfp4.formats.__file__).parent
ALLOWED_THIRD_PARTY = {"torch", "numpy"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, module- or function-level."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: "." is nvfp4.formats, ".." is nvfp4
                package = ["nvfp4", "formats"][: 3 - node.level]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from nvfp4 import kernels` imports the submodule nvfp4.kernels: record each name under the base
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(path: Path) -> list[str]:
    bad = []
    for line, name in imported_modules(path):
        top = name.split(".")[0]
        if top == "nvfp4":
            if not (name == "nvfp4.formats" or name.startswith("nvfp4.formats.")):
                bad.append(f"{path.name}:{line} imports {name}")
        elif top not in ALLOWED_THIRD_PARTY and top not in _stdlib():
            bad.append(f"{path.name}:{line} imports {name}")
    return bad


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("path", sorted(FORMATS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_formats_import_nothing_fast(path):
    assert violations(path) == []


def test_the_check_catches_a_kernel_import(tmp_path):
    """The rule above must be able to fail: every way of reaching the kernels is caught, relative ones included."""
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "import torch\n"
        "from nvfp4 import kernels\n"
        "def f():\n"
        "    from nvfp4.kernels.cpu import CPUBackend\n"
        "    import nvfp4.linear\n"
        "    from ..kernels import ops\n"
        "    from .e2m1 import E2M1_MAX\n"
    )
    assert violations(sneaky) == [
        "sneaky.py:2 imports nvfp4.kernels",
        "sneaky.py:4 imports nvfp4.kernels.cpu.CPUBackend",
        "sneaky.py:5 imports nvfp4.linear",
        "sneaky.py:6 imports nvfp4.kernels.ops",
    ]
