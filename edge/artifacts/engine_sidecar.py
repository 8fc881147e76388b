"""The JSON written beside every TensorRT engine, and the one rule that says when it is stale.

An engine is a device-specific build artefact: it is valid for one TensorRT version, one GPU
model and one model. Name and compute capability do not tell Jetson modules apart (every Orin
reports "Orin" and 8.7), so the number of SMs and the memory size are part of the GPU's identity:
an engine tuned on an AGX Orin is rebuilt on an Orin Nano. `NAME.plan` gets `NAME.plan.json`; everything that
loads or ensures an engine compares it with what is running, and a mismatch means "rebuild".
Pure JSON and comparisons: testable without TensorRT.
"""

import json
import os
from pathlib import Path

from edge.core.errors import ModelFileError
from edge.artifacts.model_dir import read_format_json

SIDECAR_FORMAT = "hlgfa-engine/1"
# What makes an engine unusable when it differs: TensorRT refuses (or silently mis-runs) a plan
# from another version or GPU architecture, tactics timed on another module of the same
# architecture may not fit or be slow there; another model means other answers.
MATCH_KEYS = ("tensorrt_version", "compute_capability", "gpu_name", "gpu_sm_count", "gpu_memory_gib", "model_hash")


def device_identity(tensorrt_version: str, gpu_name: str, compute_capability: tuple[int, int], sm_count: int,
                    total_memory_bytes: int) -> dict:
    """What the sidecar records of the TensorRT and GPU an engine is built on.

    Memory is rounded to whole GiB: the exact byte count of a Jetson's shared memory moves with
    kernel carve-outs (a changed CMA size), which must not force a rebuild, while the modules
    differ by several GiB.
    """
    major, minor = compute_capability
    return {"tensorrt_version": str(tensorrt_version), "gpu_name": str(gpu_name),
            "compute_capability": f"{major}.{minor}", "gpu_sm_count": int(sm_count),
            "gpu_memory_gib": round(total_memory_bytes / 2**30)}


def sidecar_path(engine_path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def timing_cache_path(engine_path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".timing-cache")


def build_command(onnx_path, engine_path, max_batch, model_dir=None) -> str:
    command = f"hlgfa engine build --onnx {onnx_path} --out {engine_path} --max-batch {max_batch}"
    return command + (f" --model {model_dir}" if model_dir else "")


def write_sidecar(engine_path, data: dict) -> Path:
    path = sidecar_path(engine_path)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps({"format": SIDECAR_FORMAT, **data}, indent=2, sort_keys=True) + "\n")
    os.replace(temp, path)
    return path


def read_sidecar(engine_path) -> dict:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelFileError(f"engine {engine_path}: no sidecar {path} (written by `hlgfa engine build`); "
                             f"rebuild the engine with `hlgfa engine build`")
    return read_format_json(path, SIDECAR_FORMAT, "engine sidecar", "rebuild with `hlgfa engine build`")


def mismatches(sidecar: dict, running: dict, *, max_batch: int | None = None, onnx_sha256: str | None = None) -> list[str]:
    """Why the engine described by `sidecar` cannot serve `running` (empty: it can).

    running: the keys of MATCH_KEYS known here (device_identity() and the model hash).
    """
    reasons = []
    for key in MATCH_KEYS:
        if key not in running:
            continue
        if key not in sidecar:
            reasons.append(f"{key} is {running[key]!r} here, the engine's sidecar does not record it "
                           f"(written by an older hlgfa)")
        elif sidecar[key] != running[key]:
            reasons.append(f"{key} is {running[key]!r} here, the engine was built for {sidecar[key]!r}")
    if max_batch is not None and int(sidecar.get("max_batch", 0)) < max_batch:
        reasons.append(f"max_batch {max_batch} is asked for, the engine was built for ≤ {sidecar.get('max_batch')}")
    if onnx_sha256 is not None and sidecar.get("onnx_sha256") != onnx_sha256:
        reasons.append("the ONNX file changed since the engine was built (sha256 differs)")
    return reasons
