"""The self-describing model directory that `hlgfa train` writes and everything else reads.

    MODEL_DIR/
      model.json      format, hash, backbone id, preprocessing, architecture, fitted constants
      module.pt       the learned alignment module's weights and, per level, the alignment
                      error statistics its whitened discrepancy is fitted with (the backbone is
                      frozen and comes from its own package, identified in model.json)
      model.onnx      optional: `hlgfa export` writes here by default

The hash covers everything that changes the model's outputs (weights bytes and the canonical
JSON of backbone, preprocessing, architecture and fitted constants), never training metadata,
so thresholds bound to it stay valid exactly as long as the answers do.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from edge.core.errors import ModelFileError
from edge.imaging.preprocess import PreprocessSpec

MODEL_FORMAT = "hlgfa-model/1"
MODEL_JSON = "model.json"
MODULE_WEIGHTS = "module.pt"
DEFAULT_ONNX = "model.onnx"
# The FP16 export (`hlgfa export --fp16`): what a TensorRT FP16 engine is built from.
DEFAULT_ONNX_FP16 = "model.fp16.onnx"
HASHED_KEYS = ("backbone", "preprocess", "architecture", "fitted")


def read_format_json(path: Path, expected_format: str, what: str, remedy: str) -> dict:
    """A JSON object whose "format" key names its layout version, or a ModelFileError saying
    what is wrong with `what` and how to fix it (`remedy`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFileError(f"{what} {path}: not valid JSON ({error}); {remedy}") from error
    if not isinstance(data, dict) or data.get("format") != expected_format:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelFileError(f"{what} {path}: format {found!r}, expected {expected_format!r}; {remedy}")
    return data


def compute_model_hash(description: dict, weights_path: Path) -> str:
    digest = hashlib.sha256()
    canonical = {key: description.get(key) for key in HASHED_KEYS}
    digest.update(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())
    digest.update(Path(weights_path).read_bytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    directory: Path
    description: dict

    @property
    def model_hash(self) -> str:
        return self.description["hash"]

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.description["preprocess"])

    @property
    def weights_path(self) -> Path:
        return self.directory / MODULE_WEIGHTS

    @property
    def default_onnx(self) -> Path:
        return self.directory / DEFAULT_ONNX


def load_model_info(directory: str | Path, verify_hash: bool = True) -> ModelInfo:
    """Read and check a model directory; errors name the directory and what is wrong."""
    directory = Path(directory)
    json_path = directory / MODEL_JSON
    if not directory.is_dir():
        raise ModelFileError(f"model directory {directory}: does not exist (expected the output of `hlgfa train`)")
    if not json_path.is_file():
        raise ModelFileError(f"model directory {directory}: no {MODEL_JSON} (expected the output of `hlgfa train`)")
    description = read_format_json(json_path, MODEL_FORMAT, "model description",
                                   "the file is damaged or from another version: retrain or restore it")
    missing = [key for key in (*HASHED_KEYS, "hash") if key not in description]
    if missing:
        raise ModelFileError(f"{json_path}: missing keys {missing}")
    info = ModelInfo(directory, description)
    try:
        info.preprocess  # every stage needs it; a damaged entry must fail here, naming the file
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{json_path}: 'preprocess' must hold input_size, mean and std "
                             f"({type(error).__name__}: {error}); the file is damaged: retrain or restore it") from None
    if verify_hash:
        if not info.weights_path.is_file():
            raise ModelFileError(f"model directory {directory}: no {MODULE_WEIGHTS} (weights of the learned module)")
        actual = compute_model_hash(description, info.weights_path)
        if actual != description["hash"]:
            raise ModelFileError(
                f"model directory {directory}: content hash {actual[:12]} does not match model.json's "
                f"{description['hash'][:12]}; {MODULE_WEIGHTS} or {MODEL_JSON} was changed or truncated")
    return info
