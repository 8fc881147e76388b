"""What bench/ may use of the product, read from the source with `ast`. A bench that reaches into a
module's internals freezes them: PUBLIC below is the list of names the benches rely on, so a change to
one of them is a change to a stated API, and everything else in calibrate/, engines/ and edge/ stays free
to change. No bench imports a name with a leading underscore, from anywhere."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Packages of this repository: an import from one of them must be listed in PUBLIC (bench's own modules
# excepted, as long as the name is not underscore-prefixed).
PROJECT = {"calibrate", "edge", "engines", "tests", "conftest"}
# module → the names bench may import from it (a name may be a submodule: `from edge.transport import wire`).
PUBLIC = {
    "calibrate": {"synth"},
    "calibrate.calibrate_cli": {"labelled_images", "score_images"},
    "calibrate.dataset": {"Sample", "evaluation_samples", "list_images", "read_image", "read_mask",
                          "training_folder"},
    "calibrate.demo.run": {"UNUSABLE", "elpv_cells", "unusable_frame"},
    "calibrate.evaluate": {"compute_metrics", "evaluate", "score_samples"},
    "calibrate.metrics": {"image_auroc"},
    "calibrate.model.backbones": {"build_backbone"},
    "calibrate.model.gaussian": {"ERROR_SHRINKAGE", "PositionMoments", "position_moments", "shrunk_inverse",
                                 "whitened_distance"},
    "calibrate.model.io": {"load_model"},
    "calibrate.quality_fit": {"MIN_NORMALS", "fit_quality_ranges"},
    "calibrate.thresholds_fit": {"SmallSampleWarning", "clopper_pearson", "fit_image_threshold",
                                 "fit_region_rule"},
    "calibrate.train": {"refit", "train"},
    "engines.export": {"export_onnx"},
    "edge.artifacts.model_dir": {"compute_model_hash", "load_model_info"},
    "edge.artifacts.thresholds": {"Thresholds", "load_thresholds"},
    "edge.backends": {"cuda_rt"},
    "edge.backends.base": {"BackendSettings", "open_backend"},
    "edge.bridge": {"registers"},
    "edge.bridge.opcua": {"MV_NAMESPACE", "NAMESPACE"},
    "edge.config.daemon": {"build_config"},
    "edge.core.frame": {"Frame"},
    "edge.core.notify": {"SystemdNotifier"},
    "edge.core.paths": {"write_json_atomic"},
    "edge.imaging": {"quality"},
    "edge.imaging.files": {"image_files", "read_image"},
    "edge.imaging.preprocess": {"IMAGENET_MEAN", "IMAGENET_STD", "PreprocessSpec", "normalize", "preprocess",
                                "resize_rgb8", "resize_to"},
    "edge.imaging.quality": {"STATISTIC_DOMAINS"},
    "edge.inspection": {"pipeline"},
    "edge.inspection.conclude": {"VerdictSettings"},
    "edge.inspection.decide": {"decide", "largest_region_area"},
    "edge.inspection.drift": {"DriftWatch", "QUANTILE_POINTS"},
    "edge.inspection.pipeline": {"Pipeline", "PipelineConfig"},
    "edge.records.frames": {"FrameFolder"},
    "edge.records.store": {"RecordStore", "Retention", "open_reader", "saved_counters"},
    "edge.service.daemon": {"Daemon"},
    "edge.service.daemon_cli": {"DAEMON_SWITCH_INTERVAL_S"},
    "edge.service.health": {"Health"},
    "edge.sources.base": {"SourceExhausted", "SourceUnavailable"},
    "edge.sources.genicam": {"GenicamSource", "simulated_producer"},
    "edge.transport": {"publisher", "wire"},
    "edge.transport.curve_keys": {"ClientCurve", "generate"},
    "edge.transport.publisher": {"PublishConfig", "Publisher"},
    "edge.transport.subscriber": {"ReliableClient", "Subscriber"},
    # the tests' real counterparts, so a bench measures against what the tests check against
    "tests.integration.bridge_parts": {"FakeCamera", "Mosquitto", "MqttRecorder", "RecordingPlc", "free_port",
                                       "wait_for"},
    "conftest": {"elpv_labels"},
}


def private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def violations(source: str, filename: str = "<bench>") -> list[str]:
    """Every import in `source`, at any depth, that bench may not make."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            pairs = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            pairs = [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(f"{filename}:{node.lineno}: relative import; name the module")
            continue
        else:
            continue
        for module, name in pairs:
            shown = module if name is None else f"{module}.{name}"
            if private(shown):
                found.append(f"{filename}:{node.lineno}: {shown} is private (leading underscore)")
            elif module.split(".")[0] in PROJECT and (name is None or name not in PUBLIC.get(module, ())):
                found.append(f"{filename}:{node.lineno}: {shown} is not in PUBLIC of tests/unit/test_bench_imports.py")
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "bench").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_bench_imports_only_public_names_of_the_product(path):
    assert violations(path.read_text(), str(path.relative_to(ROOT))) == []


@pytest.mark.parametrize("source", [
    "from calibrate.train import position_moments",
    "from calibrate.model.gaussian import _helper",
    "from edge.inspection.pipeline import _Stage",
    "import calibrate.train",
    "def lazily():\n    from engines.build import build_engine",
    "from torch._dynamo import config",
    "from bench.harness import _private",
    "from .harness import ROOT",
])
def test_an_internal_or_unlisted_import_is_flagged(source):
    assert len(violations(source)) == 1


@pytest.mark.parametrize("source", [
    "from calibrate.train import train",
    "from bench.harness import ROOT",
    "import numpy as np",
    "from __future__ import annotations",
])
def test_a_listed_public_name_and_a_third_party_import_pass(source):
    assert violations(source) == []


def test_every_listed_name_exists_and_is_public():
    """The list is documentation: a name it keeps after the product dropped it would mislead."""
    import importlib.util

    missing = []
    for module, names in PUBLIC.items():
        if module == "conftest" or module.startswith("tests."):
            continue
        loaded = importlib.import_module(module)
        missing += [f"{module}.{name}" for name in sorted(names) if private(name) or not (
            hasattr(loaded, name) or importlib.util.find_spec(f"{module}.{name}"))]
    assert missing == []
