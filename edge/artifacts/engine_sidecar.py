"""The JSON written beside every TensorRT engine, the one rule that says when it is stale, and the
rule that says which engine a thresholds file may run on.

An engine is a device-specific build artefact: it is valid for one TensorRT version, one GPU
model and one model. Name and compute capability do not tell Jetson modules apart (every Orin
reports "Orin" and 8.7), so the number of SMs, the memory size and the SM clock are part of the
GPU's identity: an engine tuned on an AGX Orin is rebuilt on an Orin Nano, and one tuned on an Orin
NX 8 GB (8 SMs, 8 GB, as the Orin Nano 8 GB) on the Nano, whose GPU clocks lower. `NAME.plan` gets
`NAME.plan.json`; everything that loads or ensures an engine compares it with what is running, and a
mismatch means "rebuild".

Thresholds calibrated on an engine record its sha256 (`hlgfa calibrate --engine`) and, in
`details.engine`, what makes another engine equivalent: the graph it was built from, its precision
and the GPU model. The daemon runs them on that engine only, or, with `engine_binding = "parity"`,
on an engine rebuilt from the same graph on the same GPU model that `hlgfa engine parity` checked
against the calibration normals' scores and recorded in its sidecar (`parity`).
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
GPU_KEYS = ("compute_capability", "gpu_name", "gpu_sm_count", "gpu_memory_gib", "gpu_sm_clock_mhz")
MATCH_KEYS = ("tensorrt_version", *GPU_KEYS, "model_hash")
# What makes a rebuilt engine equivalent to the one thresholds were calibrated on, before its scores
# are compared: the same graph, the same precision, the same GPU model (the TensorRT version may differ).
EQUIVALENCE_KEYS = ("onnx_sha256", "precision", *GPU_KEYS)


def device_identity(tensorrt_version: str, gpu_name: str, compute_capability: tuple[int, int], sm_count: int,
                    total_memory_bytes: int, sm_clock_khz: int) -> dict:
    """What the sidecar records of the TensorRT and GPU an engine is built on.

    Memory is rounded to whole GiB: the exact byte count of a Jetson's shared memory moves with
    kernel carve-outs (a changed CMA size), which must not force a rebuild, while the modules
    differ by several GiB. The SM clock is the one the CUDA driver reports, in whole MHz; on a
    Jetson it may follow the power mode (nvpmodel), so a changed mode can mean a rebuild, which
    times the tactics again at the clock they will run at.
    """
    major, minor = compute_capability
    return {"tensorrt_version": str(tensorrt_version), "gpu_name": str(gpu_name),
            "compute_capability": f"{major}.{minor}", "gpu_sm_count": int(sm_count),
            "gpu_memory_gib": round(total_memory_bytes / 2**30), "gpu_sm_clock_mhz": round(sm_clock_khz / 1000)}


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


def calibration_record(sidecar: dict) -> dict:
    """What `hlgfa calibrate --engine` keeps of the engine's sidecar in the thresholds' `details.engine`."""
    return {key: sidecar.get(key) for key in ("engine_sha256", "tensorrt_version", *EQUIVALENCE_KEYS)}


def equivalence_mismatches(calibrated: dict, sidecar: dict) -> list[str]:
    """Why the engine of `sidecar` is not a rebuild of the engine `calibrated` (a calibration_record) describes:
    another graph, precision or GPU model. Empty: its scores may be compared with the calibration's."""
    return [f"{key} is {sidecar.get(key)!r}, the calibrated engine's was {calibrated.get(key)!r}"
            for key in EQUIVALENCE_KEYS if sidecar.get(key) != calibrated.get(key)]


def parity_record(thresholds, sidecar: dict, images: int, max_score_diff: float, limit: float, checked_utc: str) -> dict:
    """The `parity` entry `hlgfa engine parity` writes into the rebuilt engine's sidecar when it passed."""
    return {"thresholds_version": thresholds.version, "calibrated_engine_sha256": thresholds.engine_sha256,
            "engine_sha256": sidecar["engine_sha256"], "images": images, "max_score_diff": max_score_diff,
            "limit": limit, "checked_utc": checked_utc}


def binding_problem(thresholds, sidecar: dict | None, binding: str, backend_kind: str) -> str | None:
    """Why `thresholds` must not judge parts scored by the loaded backend, or None when they may.

    sidecar: the loaded engine's (its sha256 checked against the file); None when the backend runs no
    engine. binding: `[backend] engine_binding` ("exact" or "parity"). The message ends with the fix.
    Scores of an FP16 engine and of the FP32 graph differ by FP16 rounding, and two builds of one graph
    by their kernels: a threshold fitted on one is exact only for that one.
    """
    calibrated = thresholds.engine_sha256
    recalibrate = "recalibrate on the engine that runs: `hlgfa calibrate --model MODEL --engine ENGINE ...`"
    if sidecar is None:
        if calibrated is None:
            return None
        return (f"they were calibrated on TensorRT engine {calibrated[:12]}, but the {backend_kind} backend runs no "
                f"engine; configure that engine ([backend] kind = \"tensorrt\") or recalibrate with "
                f"`hlgfa calibrate --backend {backend_kind} ...`")
    loaded = sidecar.get("engine_sha256")
    if calibrated is None:
        return (f"they were calibrated without an engine (backend {thresholds.details.get('backend', '?')}), but "
                f"engine {str(loaded)[:12]} ({sidecar.get('precision')}) runs here; {recalibrate}")
    if calibrated == loaded:
        return None
    problem = f"they were calibrated on engine {calibrated[:12]}, but engine {str(loaded)[:12]} is loaded"
    if binding != "parity":
        return (f"{problem}; {recalibrate}, or, for an engine rebuilt from the same graph on the same GPU model, "
                f"check it with `hlgfa engine parity` and set [backend] engine_binding = \"parity\"")
    record = sidecar.get("parity")
    expected = {"thresholds_version": thresholds.version, "calibrated_engine_sha256": calibrated,
                "engine_sha256": loaded}
    if not isinstance(record, dict) or any(record.get(key) != value for key, value in expected.items()):
        return (f"{problem}, and its sidecar holds no passed parity check against thresholds version "
                f"{thresholds.version}; run `hlgfa engine parity` for this engine and these thresholds, or {recalibrate}")
    return None
