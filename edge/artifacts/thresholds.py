"""The thresholds file: fitted by `hlgfa calibrate`, read by the daemon, bound to one model.

Kept beside the model, never inside the graph or the engine, so recalibrating never forces an
engine rebuild. Written atomically (temp file + rename) so a reader never sees half a file.
"""

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.core.errors import ConfigError

THRESHOLDS_FORMAT = "hlgfa-thresholds/1"
# An image threshold more than this many times the good scores' spread (max − min at calibration)
# above their maximum accepts every part: a typo (an extra digit) or a hand edit, not a fit (a tail
# fit extrapolates a fraction of the spread).
MAX_THRESHOLD_SPREADS = 10.0


@dataclass(frozen=True)
class RegionRule:
    """Reject when a connected region of map pixels above `pixel_threshold` covers at least
    `min_area_px` pixels of the model-resolution map."""

    pixel_threshold: float
    min_area_px: int


@dataclass(frozen=True)
class Thresholds:
    model_hash: str
    image_threshold: float
    version: str
    region: RegionRule | None = None
    engine_sha256: str | None = None
    policy: str = "frr"
    details: dict = field(default_factory=dict)
    # Frame-quality gate: statistic → (low, high) (edge/imaging/quality.py). A file always has every
    # statistic's; None only in memory, for code that judges without the gate.
    quality: dict | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["format"] = THRESHOLDS_FORMAT
        return data


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def content_digest(data: dict) -> str:
    """10 hex digits of the file's content without its `version` key: `hlgfa calibrate` ends the
    version it writes with them, and the loader compares."""
    content = {key: value for key, value in data.items() if key != "version"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _effective_version(data: dict) -> str:
    """The version decisions carry, derived from the content: the stored one while its digest
    matches, else the stored one + the content's digest. So a hand-edited threshold never judges
    parts under the version of the file it was edited from."""
    stored, digest = data["version"], content_digest(data)
    return stored if stored.endswith(f"-{digest}") else f"{stored}+{digest}"


# ---------------------------------------------------------------------------------------- the schema
# Each reader takes a key's value and returns what `Thresholds` holds, or raises ValueError saying
# what was expected.

def _format(value):
    if value != THRESHOLDS_FORMAT:
        raise ValueError(f"{value!r}, expected {THRESHOLDS_FORMAT!r}")
    return value


def _text(value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r}, expected a non-empty string")
    return value


def _text_or_null(value):
    return None if value is None else _text(value)


def _number(value):
    if not _finite(value):
        raise ValueError(f"{value!r}, expected a finite number")
    return float(value)


def _region(value):
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"pixel_threshold", "min_area_px"}:
        raise ValueError(f"{value!r}, expected null or an object of pixel_threshold and min_area_px")
    area = value["min_area_px"]
    if isinstance(area, bool) or not isinstance(area, int) or area < 1:
        raise ValueError(f"min_area_px {area!r}, expected an integer ≥ 1")
    return RegionRule(_number(value["pixel_threshold"]), area)


def _details(value):
    """What calibration saw, the sanity bounds among it: `normal_scores` (min ≤ median ≤ max of the good
    parts' scores, finite). The rest is the calibration report's, read by no check."""
    if not isinstance(value, dict):
        raise ValueError(f"a {type(value).__name__}, expected an object")
    normal = value.get("normal_scores")
    if (not isinstance(normal, dict) or not all(_finite(normal.get(k)) for k in ("min", "median", "max"))
            or not normal["min"] <= normal["median"] <= normal["max"]):
        raise ValueError(f"normal_scores {normal!r}, expected finite min ≤ median ≤ max of the good parts' scores")
    return dict(value)


def _quality(value):
    from edge.imaging.quality import STATISTICS, parse_ranges

    try:
        ranges = parse_ranges(value, "quality")
    except ConfigError as error:
        raise ValueError(str(error).removeprefix("quality: ")) from None
    missing = [name for name in STATISTICS if name not in ranges]
    if missing:
        raise ValueError(f"no range for {', '.join(missing)}: the frame-quality gate needs every statistic")
    return ranges


# The thresholds file, key by key: key → reader. Every key is required (a null where the reader takes
# one) and no other is allowed, so a file is exactly what `hlgfa calibrate` writes: a key this daemon
# does not know would be a setting it silently ignores, and a missing one a check it silently skips.
SCHEMA = {
    "format": _format,
    "model_hash": _text,
    "image_threshold": _number,
    "version": _text,
    "region": _region,
    "engine_sha256": _text_or_null,
    "policy": _text,
    "details": _details,
    "quality": _quality,
}


def _check_sane(thresholds: "Thresholds", source: str) -> None:
    """Refuse thresholds no calibration produces: below every good score seen at calibration
    (every part would be rejected) or below their median (most would), or so far above them that
    every part would pass. Scores are not signed quantities (the fused map is centred on the good
    parts' 0.9 quantile), so the bounds are the calibration's own good scores, `details.normal_scores`,
    which the version's content digest covers like the threshold itself."""
    normal = thresholds.details["normal_scores"]
    low, median, high = normal["min"], normal["median"], normal["max"]
    if thresholds.image_threshold < low:
        raise ConfigError(f"{source}: image_threshold {thresholds.image_threshold:.6g} is below every good part's "
                          f"score at calibration (min {low:.6g}): it would reject all of them; recalibrate")
    if thresholds.image_threshold < median:
        # No false-reject target calibrates to this: it rejects most good parts.
        raise ConfigError(f"{source}: image_threshold {thresholds.image_threshold:.6g} is below the median good "
                          f"score at calibration ({median:.6g}): it would reject more than half of the good parts; "
                          f"recalibrate")
    ceiling = high + MAX_THRESHOLD_SPREADS * max(high - low, abs(high) * 1e-6)
    if thresholds.image_threshold > ceiling:
        raise ConfigError(f"{source}: image_threshold {thresholds.image_threshold:.6g} is over "
                          f"{MAX_THRESHOLD_SPREADS:g} spreads of the good scores at calibration above the highest "
                          f"({low:.6g}..{high:.6g}): it would pass every part; recalibrate")


def parse_thresholds(data: object, source: str) -> Thresholds:
    """`data` checked against `SCHEMA`, strictly; ConfigError naming `source`, the key and the fix."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SCHEMA))
    missing = [key for key in SCHEMA if key not in data]
    if unknown or missing:
        raise ConfigError(f"{source}: " + "; ".join(
            [f"unknown key {key!r}" for key in unknown] + [f"key {key!r} is missing" for key in missing])
            + f"; expected exactly the keys `hlgfa calibrate` writes ({', '.join(SCHEMA)}): recalibrate with "
              f"`hlgfa calibrate --model MODEL_DIR --normals DIR` to write a complete file")
    values = {}
    for key, read in SCHEMA.items():
        try:
            values[key] = read(data[key])
        except ValueError as error:
            raise ConfigError(f"{source}: key {key!r}: {error}; recalibrate with `hlgfa calibrate`") from None
    del values["format"]
    thresholds = Thresholds(**{**values, "version": _effective_version(data)})
    _check_sane(thresholds, source)
    return thresholds


def load_thresholds(path: str | Path, expected_model_hash: str | None = None) -> Thresholds:
    """Read and check a thresholds file; refuse one fitted on another model."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"thresholds file {path}: does not exist (create it with `hlgfa calibrate`)") from None
    except OSError as error:
        raise ConfigError(f"thresholds file {path}: cannot be read ({error})") from error
    except UnicodeDecodeError as error:
        # Not a ValueError the caller expects from a file: on SIGHUP it would end the daemon.
        raise ConfigError(f"thresholds file {path}: not UTF-8 text ({error}); expected the JSON "
                          f"`hlgfa calibrate` writes") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"thresholds file {path}: not valid JSON ({error})") from error
    thresholds = parse_thresholds(data, f"thresholds file {path}")
    if expected_model_hash is not None and thresholds.model_hash != expected_model_hash:
        raise ConfigError(
            f"thresholds file {path}: fitted on model {thresholds.model_hash[:12]}, but the loaded model is "
            f"{expected_model_hash[:12]}; recalibrate with `hlgfa calibrate --model MODEL_DIR ...`")
    return thresholds
