"""`hlgfa calibrate`: score good parts (and optionally defects) and fit the thresholds file.

Nothing is written until everything is fitted: a failure at any step leaves the old thresholds
file and report as they were. The report is rendered into a temporary folder first; the
thresholds are written atomically; then the report folder is moved into place.
"""

import hashlib
import json
import logging
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.backends.base import BACKEND_KINDS
from edge.inspection.drift import QUANTILE_POINTS
from edge.core.errors import BackendError, ConfigError, InputDataError, ModelFileError
from edge.imaging.files import IMAGE_SUFFIXES, image_files, read_image

log = logging.getLogger(__name__)

BATCH = 16


def configure(parser) -> None:
    """The arguments and handler of `hlgfa calibrate` (edge/cli.py names the command and its one-line help)."""
    parser.description = (
        "Score good images (and optionally defect images) with the model and write a thresholds "
        "file bound to the model's hash.")
    parser.add_argument("--model", required=True, help="model directory (output of `hlgfa train`)")
    normals = parser.add_mutually_exclusive_group(required=True)
    normals.add_argument("--normals",
                         help="folder of good images (png/jpg/bmp/tif) or a `hlgfa camera grab` recording")
    normals.add_argument("--normals-from-model", action="store_true",
                         help="the good images `hlgfa train --holdout` kept out of training (listed in model.json)")
    parser.add_argument("--allow-training-normals", action="store_true",
                        help="accept normals the model was trained on (their scores are too low: the threshold "
                             "then rejects more good parts than the target)")
    parser.add_argument("--defects", help="folder of defect images (subfolders are defect classes)")
    parser.add_argument("--target-frr", type=float, default=0.01, help="target false-reject rate (default 0.01)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence of the FRR bound (default 0.95)")
    parser.add_argument("--policy", default="frr", help="frr | f1 | cost:R (R = escape cost vs false reject)")
    parser.add_argument("--backend", default="auto", choices=("auto",) + BACKEND_KINDS)
    parser.add_argument("--onnx", help="ONNX file (default: MODEL_DIR/model.onnx)")
    parser.add_argument("--engine", help="TensorRT engine; its sha256 is recorded in the thresholds file")
    parser.add_argument("--out", required=True, help="thresholds JSON to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out and --report")
    parser.add_argument("--report", help="folder for the HTML report and plots")
    parser.add_argument("--no-region-rule", action="store_true", help="fit the image threshold only")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tail-fit bootstrap")
    parser.set_defaults(handler=handle)


@dataclass
class Scored:
    paths: list[Path]
    scores: np.ndarray
    maps: np.ndarray
    classes: list[str] = field(default_factory=list)


def labelled_images(folder: str | Path, what: str, classes: bool = False) -> tuple[list[Path], list[str]]:
    """Image files in `folder` (sorted; with `classes`, also one level of class subfolders)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"{what} folder {folder}: does not exist or is not a folder")
    paths = image_files(folder)
    labels = [folder.name] * len(paths)
    if classes:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if sub.name == "good":
                raise InputDataError(f"{what} folder {folder}: has a 'good' subfolder; point --defects at the "
                                     f"defect images only")
            found = image_files(sub)
            paths += found
            labels += [sub.name] * len(found)
    if not paths:
        raise InputDataError(f"{what} folder {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths, labels


def score_images(backend, spec, paths: list[Path], what: str, *,
                 skipped: list | None = None, stats: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores and maps of `paths`. With a `skipped` list, an unreadable file (empty, damaged, a header
    claiming too many pixels) is appended to it as (path, reason) and left out, as the daemon faults
    that one frame and reads on; the arrays then hold the readable files in order. Without, it raises.
    With `stats`, also appends each scored image's frame-quality statistics (edge/imaging/quality.py),
    computed from the same pixels the model scored."""
    from edge.imaging import quality
    from edge.imaging.preprocess import preprocess

    batch_size = max(1, min(BATCH, int(getattr(backend, "max_batch", 1))))
    maps = np.empty((len(paths),) + spec.input_size, dtype=np.float32)
    scores = np.empty(len(paths), dtype=np.float64)
    done = 0  # rows filled: fewer than the files read when some were skipped
    for first in range(0, len(paths), batch_size):
        chunk = paths[first:first + batch_size]
        images = []
        for path in list(chunk):
            try:
                image = read_image(path)
            except InputDataError as error:
                if skipped is None:
                    raise
                skipped.append((path, str(error)))
                log.warning("%s %s skipped: %s", what, path, error)
                chunk.remove(path)
                continue
            images.append(image)
        if not images:
            continue
        start = done
        try:
            batch = preprocess(images, spec)
        except InputDataError as error:
            raise InputDataError(f"{what} {chunk}: {error}") from error
        try:
            batch_maps, batch_scores = backend.infer(batch)
        except BackendError as error:
            raise BackendError(f"{what} {chunk[0]}…: {error}") from error
        batch_maps = np.asarray(batch_maps)
        batch_scores = np.asarray(batch_scores).reshape(-1)
        if batch_maps.shape != (len(chunk),) + spec.input_size or batch_scores.shape != (len(chunk),):
            raise BackendError(f"backend returned maps {batch_maps.shape} and scores {batch_scores.shape} for "
                               f"{len(chunk)} images; expected {(len(chunk),) + spec.input_size} and {(len(chunk),)}")
        for index, path in enumerate(chunk):
            if not (np.isfinite(batch_scores[index]) and np.isfinite(batch_maps[index]).all()):
                raise BackendError(f"{what} {path}: the model returned non-finite values; refusing to calibrate")
        maps[start:start + len(chunk)] = batch_maps
        scores[start:start + len(chunk)] = batch_scores
        if stats is not None:
            stats.extend({**quality.image_stats(image, spec.input_size, str(path)), **quality.map_stats(anomaly_map)}
                         for image, path, anomaly_map in zip(images, chunk, batch_maps))
        done += len(chunk)
        log.info("scored %d/%d %s", first + len(chunk), len(paths), what)
    return scores[:done], maps[:done]


def _training_record(info) -> tuple[Path, list[str], list[str]] | None:
    """(training folder, names of the images the model was fitted on, held-out file names) from
    model.json, or None when the model does not say (trained before these were recorded). Fitted
    on: the training images and the validation images its fusion was fitted on."""
    from calibrate.dataset import training_folder

    training = info.description.get("training") or {}
    if not isinstance(training.get("data"), str) or not isinstance(training.get("train_files"), list):
        return None
    fitted_on = [*training["train_files"], *(training.get("validation_files") or [])]
    return (training_folder(training["data"]), [str(n) for n in fitted_on],
            [str(n) for n in training.get("held_out_files") or []])


def held_out_normals(info) -> list[Path]:
    """The good images `hlgfa train --holdout` kept out of training, as model.json lists them."""
    record = _training_record(info)
    if record is None or not record[2]:
        raise InputDataError(f"model {info.directory}: model.json lists no held-out images; train with "
                             f"`hlgfa train --holdout 0.2` or give --normals DIR")
    folder, _, held_out = record
    paths = [folder / name for name in held_out]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise InputDataError(f"model {info.directory}: {len(missing)} of its {len(paths)} held-out images are gone "
                             f"(e.g. {missing[0]}); restore the training folder or give --normals DIR")
    return paths


def training_normals(info, normal_paths: list[Path]) -> list[Path]:
    """The normals that are images the model was trained on, compared by content (a copy of a
    training image in another folder is one too). A model scores its own training images lower
    than new good parts, so a threshold fitted on them rejects far more good parts than its target
    (the issue's case: 55 % at 5 %)."""
    record = _training_record(info)
    if record is None:
        return []
    folder, train_names, _ = record
    by_size: dict[int, list[Path]] = {}
    for name in train_names:
        path = folder / name
        if path.is_file():
            by_size.setdefault(path.stat().st_size, []).append(path)
    if train_names and not by_size:
        log.warning("model %s: its training images (%s) are not here; cannot check that the normals are not "
                    "among them", info.directory, folder)
        return []
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return digests[path]

    found = []
    for path in normal_paths:
        candidates = by_size.get(path.stat().st_size, [])
        if candidates and digest(path) in {digest(c) for c in candidates}:
            found.append(path)
    return found


def check_out(path: Path, force: bool, model_hash: str | None = None) -> None:
    """Refuse to overwrite without --force, and say when the old file belongs to another model."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"--out {path}: is a folder, expected a JSON file path")
    if force:
        return
    note = ""
    try:
        old = json.loads(path.read_text())
        if model_hash and isinstance(old, dict) and old.get("model_hash") not in (None, model_hash):
            note = f" (it is bound to another model, {str(old['model_hash'])[:12]})"
    except (OSError, ValueError):
        note = " (and is not a readable thresholds file)"
    raise ConfigError(f"--out {path}: already exists{note}; pass --force to overwrite it")


def check_report_dir(path: Path | None, force: bool) -> None:
    if path is None or not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"--report {path}: exists and is not a folder")
    if any(path.iterdir()) and not force:
        raise ConfigError(f"--report {path}: exists and is not empty; pass --force to replace it")


def scores_by_file(paths: list[Path], scores: np.ndarray, folder: Path) -> dict[str, float]:
    """{image path relative to `folder`: score}, in scoring order."""
    return {str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path): float(score)
            for path, score in zip(paths, scores)}


def make_version(content: dict) -> str:
    from edge.artifacts.thresholds import content_digest

    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{content_digest(content)}"


def fit_all(normal: Scored, defect: Scored | None, target_frr: float, confidence: float, policy: str,
            seed: int, region_rule: bool) -> tuple[float, dict, object, list[str]]:
    """Every statistic, before anything is written. Returns (threshold, details, region, warnings)."""
    from calibrate import thresholds_fit as tf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", tf.SmallSampleWarning)
        image_fit = tf.fit_image_threshold(normal.scores, target_frr, confidence, seed=seed)
    notes = [str(w.message) for w in caught if issubclass(w.category, tf.SmallSampleWarning)]
    choice = tf.choose_threshold(policy, image_fit, normal.scores, None if defect is None else defect.scores)
    notes += list(choice.warnings)
    details = {"image": image_fit.to_details(), "policy": choice.to_details()}
    if defect is not None:
        per_class = {}
        for name in sorted(set(defect.classes)):
            mask = np.array([c == name for c in defect.classes])
            escapes = int((defect.scores[mask] <= choice.threshold).sum())
            per_class[name] = {"n": int(mask.sum()), "escapes": escapes, "escape_rate": escapes / int(mask.sum())}
        details["policy"]["escape_by_class"] = per_class
    region = None
    if region_rule:
        from edge.artifacts.thresholds import RegionRule

        fit = tf.fit_region_rule(normal.maps, target_frr)
        details["region"] = fit.to_details()
        if fit.min_area_px > normal.maps.shape[1] * normal.maps.shape[2] // 2:
            details["region"]["dropped"] = ("the minimum area exceeds half the map: the normals' maps are "
                                            "anomalous over large areas, so a region rule would never fire usefully")
        else:
            region = RegionRule(fit.pixel_threshold, fit.min_area_px)
    else:
        details["region"] = {"dropped": "--no-region-rule"}
    from edge.inspection.decide import largest_region_area

    combined = normal.scores > choice.threshold
    if region is not None:
        combined |= np.array([largest_region_area(m, region.pixel_threshold) >= region.min_area_px
                              for m in normal.maps])
    details["combined_calibration_rejects"] = int(combined.sum())
    details["warnings"] = notes
    return choice.threshold, details, region, notes


def handle(args) -> int:
    out, report_dir, info = _check_before_scoring(args)
    normal_paths = _normal_images(args, info)
    defect_paths, defect_classes = labelled_images(args.defects, "defects", classes=True) if args.defects else ([], [])
    if args.policy != "frr" and not defect_paths:
        raise ConfigError(f"policy {args.policy!r} needs defect images (--defects DIR); only 'frr' works without")
    scoring = _score(args, info, normal_paths, defect_paths, defect_classes)
    data, threshold, region, notes = _fitted(args, info, scoring, out)
    for note in notes:
        print(f"hlgfa calibrate: WARNING: {note}", file=sys.stderr)
    _write(out, report_dir, data, scoring, args.force, info.model_hash)
    image, policy = data["details"]["image"], data["details"]["policy"]
    print(f"wrote {out}: image threshold {threshold:.6g} ({policy['policy']}; "
          f"{image['method']}, FRR {image['frr_point']:.3%} [{image['frr_ci'][0]:.3%}, {image['frr_ci'][1]:.3%}] "
          f"at {args.confidence:.0%}, upper bound {image['frr_upper']:.3%})"
          + (f", region {region.min_area_px} px above {region.pixel_threshold:.6g}" if region else "")
          + (f"; escape rate {policy['escape_rate']:.2%}" if scoring.defect is not None else "")
          + (f"; report {report_dir}/index.html" if report_dir else ""))
    return 0


def _check_before_scoring(args):
    """--out, --report and the model, checked and loaded; the flags' values checked."""
    from calibrate.thresholds_fit import check_target, parse_policy
    from edge.artifacts.model_dir import load_model_info
    from edge.core.paths import writable_dir

    # Cheap checks first: a bad flag should not cost minutes of scoring.
    check_target(args.target_frr, args.confidence)
    parse_policy(args.policy)
    out = Path(args.out)
    report_dir = Path(args.report) if args.report else None
    info = load_model_info(args.model)
    check_out(out, args.force, info.model_hash)
    check_report_dir(report_dir, args.force)
    # Where the file and the report are staged (a temp file / folder beside each): before the scoring.
    writable_dir(out.parent, f"--out {out}")
    if report_dir is not None:
        writable_dir(report_dir.parent, f"--report {report_dir}")
    return out, report_dir, info


def _normal_images(args, info) -> list[Path]:
    """The good images to calibrate on: enough of them, and none the model was trained on unless allowed.
    With --normals-from-model, `args.normals` becomes their folder."""
    from calibrate.thresholds_fit import MIN_NORMALS

    if args.normals_from_model:
        normal_paths = held_out_normals(info)
        args.normals = str(normal_paths[0].parent)
    else:
        normal_paths, _ = labelled_images(args.normals, "normals")
    seen = training_normals(info, normal_paths)
    if seen and not args.allow_training_normals:
        raise InputDataError(
            f"normals {args.normals}: {len(seen)} of {len(normal_paths)} images are images model {info.directory} "
            f"was trained on (e.g. {', '.join(p.name for p in seen[:3])}); it scores them lower than new good "
            f"parts, so the threshold would reject more good parts than the target. Use good parts it has not "
            f"seen (`hlgfa train --holdout 0.2`, then `--normals-from-model`), or pass --allow-training-normals")
    if seen:
        log.warning("normals %s: %d images the model was trained on, accepted by --allow-training-normals",
                    args.normals, len(seen))
    if len(normal_paths) < MIN_NORMALS:
        raise InputDataError(f"normals folder {args.normals}: {len(normal_paths)} images, need at least "
                             f"{MIN_NORMALS} good parts to calibrate")
    return normal_paths


def _backend_options(args) -> dict:
    options = {}
    if args.onnx:
        if not Path(args.onnx).is_file():
            raise ModelFileError(f"--onnx {args.onnx}: does not exist")
        options["onnx"] = args.onnx
    if args.engine:
        if not Path(args.engine).is_file():
            raise ModelFileError(f"--engine {args.engine}: does not exist")
        options["engine"] = args.engine
    return options


@dataclass
class _Scoring:
    """The readable images' scores and quality statistics, the unreadable ones left out, and what ran."""
    normal: Scored
    defect: Scored | None
    normal_stats: list
    defect_stats: list
    skipped: list  # (path, reason) of each unreadable image, left out of the fit
    backend_kind: str
    engine_sidecar: dict | None


def _score(args, info, normal_paths: list[Path], defect_paths: list[Path], defect_classes: list[str]) -> _Scoring:
    from calibrate.thresholds_fit import MIN_NORMALS
    from edge.backends.base import open_backend

    backend = open_backend(args.backend, info.directory, **_backend_options(args))
    # The engine's sidecar, its sha256 checked against the file the backend loaded: what the daemon binds to.
    engine_sidecar = backend.engine_sidecar
    skipped: list = []
    normal_stats, defect_stats = [], []
    defect = None
    try:
        backend_hash = getattr(backend, "model_hash", None)
        if backend_hash and backend_hash != info.model_hash:
            raise ModelFileError(f"backend {backend.kind} runs model {backend_hash[:12]}, but {info.directory} is "
                                 f"model {info.model_hash[:12]}; re-export the ONNX/engine from this model")
        spec = info.preprocess
        scores, maps = score_images(backend, spec, normal_paths, "normal image", skipped=skipped, stats=normal_stats)
        normal_paths = [path for path in normal_paths if path not in {p for p, _ in skipped}]
        if len(normal_paths) < MIN_NORMALS:
            raise InputDataError(f"normals folder {args.normals}: {len(normal_paths)} readable images after "
                                 f"skipping {len(skipped)} unreadable ({', '.join(p.name for p, _ in skipped[:3])}), "
                                 f"need at least {MIN_NORMALS} good parts")
        normal = Scored(normal_paths, scores, maps)
        if defect_paths:
            scores, maps = score_images(backend, spec, defect_paths, "defect image", skipped=skipped, stats=defect_stats)
            unreadable = {p for p, _ in skipped}
            kept = [index for index, path in enumerate(defect_paths) if path not in unreadable]
            defect_paths = [defect_paths[index] for index in kept]
            defect_classes = [defect_classes[index] for index in kept]
            defect = Scored(defect_paths, scores, maps, defect_classes)
    finally:
        backend.close()
    return _Scoring(normal, defect, normal_stats, defect_stats, skipped, backend.kind, engine_sidecar)


def _fitted(args, info, scoring: _Scoring, out: Path):
    """The thresholds file's content, checked as the daemon reads it; its image threshold, region rule
    and warnings."""
    from calibrate.quality_fit import fit_quality_ranges, floor_note, gate_summary
    from edge.artifacts.thresholds import Thresholds, parse_thresholds

    normal, defect = scoring.normal, scoring.defect
    threshold, details, region, notes = fit_all(normal, defect, args.target_frr, args.confidence, args.policy,
                                                args.seed, not args.no_region_rule)
    notes = [f"skipped unreadable image {path}: {reason}" for path, reason in scoring.skipped] + notes
    details["skipped_images"] = [{"file": str(path), "reason": reason} for path, reason in scoring.skipped]
    quality_ranges, details["quality"] = fit_quality_ranges(scoring.normal_stats)
    if (note := floor_note(len(scoring.normal_stats))) is not None:
        notes.append(note)
        details["warnings"].append(note)
    if defect is not None:
        details["quality"]["defects"] = gate_summary(scoring.defect_stats, quality_ranges)
    details.update(_provenance(args, scoring))
    if scoring.engine_sidecar is not None:
        from edge.artifacts.engine_sidecar import calibration_record

        details["engine"] = calibration_record(scoring.engine_sidecar)
    if args.normals_from_model:
        details["normals_held_out_by"] = str(info.directory)  # the held-out list of model.json
    engine_sha256 = scoring.engine_sidecar["engine_sha256"] if scoring.engine_sidecar else None
    content = Thresholds(model_hash=info.model_hash, image_threshold=float(threshold), version="pending",
                         region=region, engine_sha256=engine_sha256, policy=args.policy, details=details,
                         quality=quality_ranges)
    data = content.to_dict()
    data.pop("version")
    data["version"] = make_version(data)
    parse_thresholds(json.loads(json.dumps(data)), f"fitted thresholds for {out}")  # same check as the daemon
    return data, threshold, region, notes


def _provenance(args, scoring: _Scoring) -> dict:
    normal = scoring.normal
    return {"created_by": "hlgfa calibrate", "created_utc": datetime.now(timezone.utc).isoformat(),
            "backend": scoring.backend_kind, "seed": args.seed, "normals": str(Path(args.normals).resolve()),
            "n_normals": len(normal.paths), "defects": str(Path(args.defects).resolve()) if args.defects
            else None, "n_defects": len(scoring.defect.paths) if scoring.defect is not None else 0,
            "normal_scores": {"min": float(normal.scores.min()), "median": float(np.median(normal.scores)),
                              "max": float(normal.scores.max()),
                              # the daemon's drift watch compares passed parts with these (edge/inspection/drift.py)
                              "quantiles": [float(q) for q in np.quantile(
                                  normal.scores, np.linspace(0.0, 1.0, QUANTILE_POINTS))],
                              # per image: what `hlgfa engine parity` compares a rebuilt engine with
                              "by_file": scores_by_file(normal.paths, normal.scores, Path(args.normals))}}


def _write(out: Path, report_dir: Path | None, data: dict, scoring: _Scoring, force: bool, model_hash: str) -> None:
    """The report rendered aside, the thresholds written atomically, then the report moved into place:
    a failure at any step leaves the old file and report as they were."""
    from edge.core.paths import write_json_atomic

    staged = None
    if report_dir is not None:
        from calibrate.report import write_report

        report_dir.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{report_dir.name}.", dir=report_dir.parent))
        try:
            write_report(staged, data, scoring.normal, scoring.defect)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    try:
        check_out(out, force, model_hash)  # again: another run may have written it meanwhile
        write_json_atomic(out, data)
    except BaseException:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    if staged is not None:
        if report_dir.exists():
            shutil.rmtree(report_dir)
        staged.rename(report_dir)
