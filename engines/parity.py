"""`hlgfa engine parity`: may thresholds calibrated on one engine run on another?

Two engines built from the same graph on the same GPU model differ only in the kernels TensorRT timed
and chose, so their scores differ by rounding. This check measures that on the calibration's own good
parts: the thresholds file keeps, per image, the score the calibrated engine gave it
(`details.normal_scores.by_file`); the rebuilt engine scores the same files through the same
preprocessing (calibrate/calibrate_cli.py score_images), and every score must lie within
PARITY_FRACTION of the normals' score spread (max − min at calibration) of the recorded one.

Why the spread: the threshold sits among, or just above, the good parts' scores, so what a score may
move without changing what the threshold means is measured in that range. 2 % of it is the FP16
tolerance of engines/gpu_check.py (there a fraction of the map's range, the scale a score is taken
from), and far above what two builds of one graph are expected to differ by; a wrong graph, another
precision or a broken build moves scores by a large part of the spread.

A passed check is written into the rebuilt engine's sidecar (`parity`, bound to the thresholds'
version and both engines' sha256); a failed one removes any earlier record and exits 66.
"""

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.artifacts.engine_sidecar import equivalence_mismatches, parity_record, read_sidecar, write_sidecar
from edge.artifacts.model_dir import load_model_info
from edge.artifacts.thresholds import load_thresholds
from edge.core.errors import ConfigError, InputDataError, ModelFileError

PARITY_FRACTION = 0.02


def calibration_scores(thresholds, source: Path) -> tuple[dict, dict[str, float]]:
    """(the calibrated engine's record, {normal image: score}) from a thresholds file fitted on an engine."""
    if thresholds.engine_sha256 is None:
        raise ConfigError(f"thresholds file {source}: not calibrated on an engine, so there is no engine to compare "
                          f"with; calibrate on the engine the line runs (`hlgfa calibrate --engine ENGINE ...`)")
    calibrated = thresholds.details.get("engine")
    by_file = (thresholds.details.get("normal_scores") or {}).get("by_file")
    if not isinstance(calibrated, dict) or not isinstance(by_file, dict) or not by_file:
        raise ConfigError(f"thresholds file {source}: no details.engine or details.normal_scores.by_file (what "
                          f"`hlgfa calibrate --engine` records); recalibrate with `hlgfa calibrate --engine ENGINE ...`")
    if calibrated.get("engine_sha256") != thresholds.engine_sha256:
        raise ConfigError(f"thresholds file {source}: details.engine describes engine "
                          f"{str(calibrated.get('engine_sha256'))[:12]}, engine_sha256 is {thresholds.engine_sha256[:12]}; "
                          f"the file was edited: recalibrate")
    return calibrated, {str(name): float(score) for name, score in by_file.items()}


def normal_images(thresholds, recorded: dict[str, float], folder) -> list[Path]:
    folder = Path(folder or thresholds.details.get("normals") or "")
    paths = [folder / name for name in recorded]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise InputDataError(f"normals {folder}: {len(missing)} of the {len(paths)} images the thresholds were "
                             f"calibrated on are not there (e.g. {missing[0]}); give the calibration's folder with "
                             f"--normals DIR")
    return paths


def check_parity(model_dir, backend, thresholds_path, normals=None) -> dict:
    """Score the calibration normals on the engine `backend` (a TensorRTConfig) names and record the result
    in its sidecar. Returns the parity record; raises ModelFileError when the engine does not agree."""
    from calibrate.calibrate_cli import score_images
    from edge.backends.tensorrt import TensorRTBackend

    info = load_model_info(model_dir)
    thresholds = load_thresholds(thresholds_path, info.model_hash)
    calibrated, recorded = calibration_scores(thresholds, Path(thresholds_path))
    engine = Path(backend.engine)
    if not engine.is_file():
        raise ModelFileError(f"engine {engine} does not exist; build it with `hlgfa engine ensure`")
    sidecar = read_sidecar(engine)
    if sidecar.get("engine_sha256") == thresholds.engine_sha256:
        raise ConfigError(f"engine {engine} is the engine thresholds file {thresholds_path} was calibrated on: "
                          f"it needs no parity check")
    reasons = equivalence_mismatches(calibrated, sidecar)
    if reasons:
        raise ModelFileError(f"engine {engine} is not a rebuild of the engine thresholds file {thresholds_path} was "
                             f"calibrated on ({'; '.join(reasons)}); recalibrate on it "
                             f"(`hlgfa calibrate --model {model_dir} --engine {engine} ...`)")
    paths = normal_images(thresholds, recorded, normals)
    opened = TensorRTBackend(info.directory, backend.model_copy(update={"precision": calibrated["precision"]}))
    try:
        sidecar = opened.engine_sidecar  # its sha256 checked against the file just loaded
        scores, _ = score_images(opened, info.preprocess, paths, "normal image")
    finally:
        opened.close()
    expected = np.array(list(recorded.values()))
    spread = float(expected.max() - expected.min())
    limit = PARITY_FRACTION * max(spread, abs(float(expected.max())) * 1e-6)
    differences = np.abs(scores - expected)
    worst = float(differences.max()) if np.isfinite(differences).all() else math.inf
    kept = {key: value for key, value in sidecar.items() if key not in ("format", "parity")}
    if not worst <= limit:
        write_sidecar(engine, kept)
        name = list(recorded)[int(np.argmax(np.nan_to_num(differences, nan=np.inf)))]
        raise ModelFileError(f"engine {engine} does not reproduce the calibrated engine's scores: max |Δscore| "
                             f"{worst:.4g} ({name}) over {len(paths)} normals, allowed {limit:.4g} "
                             f"({PARITY_FRACTION:.0%} of their spread {spread:.4g}); recalibrate on it "
                             f"(`hlgfa calibrate --model {model_dir} --engine {engine} ...`)")
    record = parity_record(thresholds, sidecar, len(paths), worst, limit, datetime.now(timezone.utc).isoformat())
    write_sidecar(engine, {**kept, "parity": record})
    return record


__all__ = ["PARITY_FRACTION", "calibration_scores", "check_parity"]
