"""engines/check_gpu.sh and engines/gpu_check.py, as far as a machine without a GPU can run them:
the script's syntax, lint and dry run, and the parity rule on real FP16 numbers (ONNX Runtime
running the FP16 graph against the FP32 graph, on real images)."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.core.errors import InputDataError
from engines.gpu_check import MAP_MAX_FRACTION, load_batch, parity, parity_failures, run_in_batches

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "engines" / "check_gpu.sh"


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    from engines.export import export_onnx

    model = tmp_path_factory.mktemp("gpu_check") / "model"
    shutil.copytree(tiny_model_dir, model)
    export_onnx(model, max_batch=8)
    export_onnx(model, model / "model.fp16.onnx", fp16=True, max_batch=8)
    return model


@pytest.fixture(scope="module")
def part_images(elpv_images, tmp_path_factory):
    """16 real cells, good and defective, in the folder layout the check reads."""
    folder = tmp_path_factory.mktemp("parts")
    for path in elpv_images["good"][30:38] + elpv_images["defect"][:8]:
        shutil.copy(path, folder / path.name)
    return folder


def run_script(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **env})


def test_script_parses_and_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make test installs it with apt-get as root)")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_prints_build_check_and_parity_and_writes_nothing(exported, part_images, tmp_path):
    work = tmp_path / "work"
    result = run_script("--dry-run", exported, part_images, work)
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    modules = ["edge.cli", "edge.cli", "engines.gpu_check"]
    assert [line.split()[1:4] for line in commands[1:]] == [[sys.executable, "-m", module] for module in modules]
    assert f"--onnx {exported / 'model.fp16.onnx'} --out {work / 'check.plan'}" in commands[1]
    assert f"--onnx {exported / 'model.onnx'}" in commands[3] and f"--images {part_images}" in commands[3]
    assert not work.exists()


def test_missing_fp16_graph_names_the_export_command(exported, part_images, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(exported, model, ignore=shutil.ignore_patterns("model.fp16.onnx"))
    result = run_script("--dry-run", model, part_images)
    assert result.returncode == 66
    assert f"hlgfa export --model {model} --fp16 --out {model / 'model.fp16.onnx'}" in result.stderr


def test_missing_arguments_print_usage():
    result = run_script()
    assert result.returncode != 0 and "usage: engines/check_gpu.sh" in result.stderr


def test_fp16_graph_is_within_the_fp16_tolerances_and_a_wrong_map_is_not(exported, part_images):
    from edge.backends.base import open_backend

    batch, paths = load_batch(exported, part_images)
    assert len(paths) == 16
    fp32 = open_backend("onnxruntime", exported, onnx=exported / "model.onnx", max_batch=8, threads=1)
    fp16 = open_backend("onnxruntime", exported, onnx=exported / "model.fp16.onnx", max_batch=8, threads=1)
    try:
        reference = run_in_batches(fp32, batch, 8)
        for size in (1, 8):
            figures = parity(reference, run_in_batches(fp16, batch, size))
            assert parity_failures(figures) == [], figures
            assert figures["max_map_diff"] > 0  # really FP16 weights, not the FP32 graph twice
    finally:
        fp32.close()
        fp16.close()

    maps, scores = reference[0].copy(), reference[1].copy()
    maps[3, 5, 5] += 1.5 * MAP_MAX_FRACTION * (maps.max() - maps.min())
    assert [failure.split()[0] for failure in parity_failures(parity(reference, (maps, scores)))] == [
        "max_map_fraction"]
    scores[0] = np.nan
    assert "non-finite" in parity_failures(parity(reference, (reference[0], scores)))[0]


def test_too_few_images_are_refused(exported, part_images, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(part_images.iterdir())[:5]:
        shutil.copy(path, few / path.name)
    with pytest.raises(InputDataError, match="5 images, expected at least 8"):
        load_batch(exported, few)


def gpu_extras() -> dict[str, list[str]]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_documented_gpu_installs_bring_everything_the_check_needs():
    import re

    extras = gpu_extras()
    doc = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    installs = [set(names.split(",")) for names in
                re.findall(r'pip install -c constraints.txt "\.\[([a-z0-9,-]+)\]"', doc)]
    gpu = [names for names in installs if names & {"tensorrt-cu12", "tensorrt-cu13", "jetson"}]
    assert len(gpu) == 2 and all(names <= set(extras) for names in installs)
    for names in gpu:  # onnxruntime is the check's reference
        required = " ".join(requirement for name in names for requirement in extras[name])
        assert "onnxruntime" in required and "pycuda>=" in required and "torch" not in required


def test_each_x86_extra_pins_tensorrt_to_one_cuda_major_and_a_pycuda_that_builds_against_it():
    """Plain `tensorrt` resolves to the newest CUDA major, which an older driver cannot run."""
    from packaging.requirements import Requirement

    extras = gpu_extras()
    for major, pycuda_floor in (("12", "2022.2"), ("13", "2025.1.2")):
        requirements = {Requirement(text).name: Requirement(text) for text in extras[f"tensorrt-cu{major}"]}
        assert f"tensorrt-cu{major}" in requirements and "tensorrt" not in requirements
        assert "12" not in requirements[f"tensorrt-cu{major}"].specifier  # TensorRT 12's API is unknown
        assert str(requirements["pycuda"].specifier) == f">={pycuda_floor}"
    assert not any(Requirement(text).name == "tensorrt" for texts in extras.values() for text in texts)


def test_the_jetson_extra_keeps_numpy_1_and_an_opencv_that_runs_on_it():
    from packaging.requirements import Requirement

    requirements = {Requirement(text).name: Requirement(text).specifier for text in gpu_extras()["jetson"]}
    assert "1.26.4" in requirements["numpy"] and "2.0.0" not in requirements["numpy"]
    # opencv-python-headless 4.11 and later require NumPy 2 (their own metadata).
    assert "4.10.0.84" in requirements["opencv-python-headless"]
    assert "4.11.0.86" not in requirements["opencv-python-headless"]


def test_check_and_backend_import_without_torch_or_scipy(exported, part_images):
    """What a Jetson has: the check's and the TensorRT backend's modules load and read the images."""
    code = f"""
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "scipy"):
            raise ImportError("not on this box: " + name)
sys.meta_path.insert(0, Refuse())
import edge.backends.tensorrt, engines.tensorrt_build, edge.artifacts.engine_sidecar
from engines.gpu_check import load_batch
print(load_batch({str(exported)!r}, {str(part_images)!r})[0].shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(16, 3, 128, 128)"
