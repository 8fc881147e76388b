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
    # Frame-quality gate: statistic → (low, high) (edge/imaging/quality.py). None: a file from before the
    # gate, which still loads; the daemon then runs without the gate and says so at WARNING.
    quality: dict | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["format"] = THRESHOLDS_FORMAT
        return data


def _require_number(data: dict, key: str, source: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{source}: key {key!r} must be a finite number, got {value!r}")
    return float(value)


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


def _check_sane(thresholds: "Thresholds", source: str) -> None:
    """Refuse thresholds no calibration produces: below every good score seen at calibration
    (every part would be rejected) or below their median (most would), or so far above them that
    every part would pass. Scores are
    not signed quantities (the fused map is centred on the good parts' 0.9 quantile), so the
    bounds are the calibration's own good scores, and a file without them is only checked for
    finite numbers."""
    normal = thresholds.details.get("normal_scores")
    if not isinstance(normal, dict):
        return  # not written by `hlgfa calibrate`: no calibrated range to compare with
    low, high = normal.get("min"), normal.get("max")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{source}: details.normal_scores must hold finite min and max, got {normal!r}")
    if thresholds.image_threshold < low:
        raise ConfigError(f"{source}: image_threshold {thresholds.image_threshold:.6g} is below every good part's "
                          f"score at calibration (min {low:.6g}): it would reject all of them; recalibrate")
    median = normal.get("median")
    if isinstance(median, (int, float)) and math.isfinite(median) and thresholds.image_threshold < median:
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
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != THRESHOLDS_FORMAT:
        raise ConfigError(f"{source}: format {data.get('format')!r}, expected {THRESHOLDS_FORMAT!r}")
    for key in ("model_hash", "version"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"{source}: key {key!r} must be a non-empty string")
    region = None
    if data.get("region") is not None:
        region_data = data["region"]
        if not isinstance(region_data, dict):
            raise ConfigError(f"{source}: key 'region' must be an object or null")
        area = region_data.get("min_area_px")
        if isinstance(area, bool) or not isinstance(area, int) or area < 1:
            raise ConfigError(f"{source}: key 'region.min_area_px' must be an integer ≥ 1, got {area!r}")
        region = RegionRule(_require_number(region_data, "pixel_threshold", f"{source} region"), area)
    thresholds = Thresholds(
        model_hash=data["model_hash"],
        image_threshold=_require_number(data, "image_threshold", source),
        version=_effective_version(data),
        region=region,
        engine_sha256=data.get("engine_sha256"),
        policy=str(data.get("policy", "frr")),
        details=dict(data.get("details") or {}),
        quality=_parse_quality(data, source),
    )
    _check_sane(thresholds, source)
    return thresholds


def _parse_quality(data: dict, source: str) -> dict | None:
    from edge.imaging.quality import parse_ranges

    return None if data.get("quality") is None else parse_ranges(data["quality"], source)


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
