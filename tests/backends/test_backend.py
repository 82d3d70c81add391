"""The backend is chosen in one module, and CuPy is imported in one place."""
import ast
from pathlib import Path

import pytest

import nnmnist
from nnmnist.backends import get_compute, gpu_available, resolve_backend
from nnmnist.run.config import Config
from nnmnist.errors import UserError

PACKAGE = Path(nnmnist.__file__).parent


def imports(path):
    """Every module a source file imports (absolute names; relative ones as '.name')."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_cupy_is_imported_only_by_the_device_module():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if any(m == "cupy" or m.startswith("cupy.") for m in imports(p)))
    assert importers == ["backends/device.py"]


def test_cpu_backend_does_not_import_the_cuda_backend():
    assert not any(m.endswith("cuda") or m.endswith("device") for m in imports(PACKAGE / "backends" / "cpu.py"))


def test_resolve_backend(monkeypatch):
    assert resolve_backend("cpu") == "cpu"
    assert resolve_backend("auto") == ("gpu" if gpu_available() else "cpu")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")  # the simulator: "gpu" runs, "auto" never picks it
    assert resolve_backend("auto") == "cpu"
    assert resolve_backend("gpu") == "gpu"
    if not gpu_available():
        monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
        with pytest.raises(UserError, match="gpu"):
            resolve_backend("gpu")
    with pytest.raises(ValueError):
        resolve_backend("tpu")


def test_auto_builds_what_it_resolves_to():
    compute = get_compute("auto", "numpy")
    assert compute.name == ("cupy" if gpu_available() else "numpy")
    assert get_compute("cpu", "numba").name == "numba"


def test_ignored_settings_use_the_resolved_backend():
    cfg = Config(Backend="auto", Kernels="numpy")
    assert any("Kernels" in n for n in cfg.ignored_settings("gpu"))
    assert not any("Kernels" in n for n in cfg.ignored_settings("cpu"))
