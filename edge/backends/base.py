"""The protocol every inference backend implements, and the one place that picks one.

A backend takes the preprocessed batch (N×3×S×S float32, see `edge.preprocess`) and returns
the anomaly maps (N×S×S float32) and image scores (N float32), computed entirely by the model
graph. Thresholds are never inside a backend: they live in a file beside the model.
"""

import importlib
import logging
from typing import Protocol

import numpy as np

from edge.errors import BackendError, ConfigError, HlgfaError

log = logging.getLogger(__name__)

# Explicit, not discovered: a missing library must fail loudly, not remove a config option.
BACKEND_KINDS = ("tensorrt", "onnxruntime", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


# Each backend module declares `OPTIONS`, the keyword arguments its constructor takes: an option given
# to a backend that has no use for it (threads to TensorRT) is an error when that backend was asked
# for, and is left out when "auto" tries it.


class Backend(Protocol):
    kind: str
    input_size: tuple[int, int]  # (height, width)
    max_batch: int
    model_hash: str

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """N×3×H×W float32 → (N×H×W float32 maps, N float32 scores)."""

    def warmup(self) -> None:
        """One inference on zeros so the first real frame does not pay for lazy init."""

    def close(self) -> None:
        """Release device memory and sessions; safe to call twice."""


def check_batch(batch: np.ndarray, input_size: tuple[int, int], max_batch: int, kind: str) -> np.ndarray:
    """Refuse a batch the model was not built for, naming what was expected."""
    if not isinstance(batch, np.ndarray):
        raise BackendError(f"{kind} backend: expected a numpy array, got {type(batch).__name__}")
    if batch.dtype != np.float32:
        raise BackendError(f"{kind} backend: expected float32 input, got {batch.dtype}")
    height, width = input_size
    expected = f"N×3×{height}×{width} with 1 ≤ N ≤ {max_batch}"
    if batch.ndim != 4 or batch.shape[1:] != (3, height, width):
        raise BackendError(f"{kind} backend: input shape {batch.shape}, expected {expected}")
    if not 1 <= batch.shape[0] <= max_batch:
        raise BackendError(f"{kind} backend: batch of {batch.shape[0]}, expected {expected}")
    return np.ascontiguousarray(batch)


def _asked_for(candidate: str, model_dir, options: dict, error: HlgfaError) -> str | None:
    """Why a failure of `candidate` under "auto" must be an error instead of a step to the next
    backend, or None. A file the user named (onnx, engine), or the model's own exported ONNX file
    present but unusable (truncated, another model's), means that graph was meant to run: quietly
    running another backend would change speed (deadline faults on a loaded box) and, for a
    foreign file, hide that the export is stale."""
    from pathlib import Path

    from edge.errors import ModelFileError
    from edge.model_dir import DEFAULT_ONNX

    if candidate == "onnxruntime" and options.get("onnx") is not None:
        return f"the ONNX file {options['onnx']} was named"
    if candidate == "tensorrt" and options.get("engine") is not None:
        return f"the engine {options['engine']} was named"
    if candidate == "onnxruntime" and isinstance(error, ModelFileError) and (Path(model_dir) / DEFAULT_ONNX).is_file():
        return f"{Path(model_dir) / DEFAULT_ONNX} is present"
    return None


def open_backend(kind: str, model_dir, allow_torch: bool = True, **options) -> Backend:
    """Open backend `kind` (or the best available for "auto") for the model in `model_dir`.

    options: onnx=PATH, engine=PATH, max_batch=N, threads=N, device=... (backend-specific).
    `allow_torch=False` keeps "auto" from ending on the PyTorch module (the daemon: without an
    exported graph it is an error naming `hlgfa export`, not a slower backend chosen in silence).
    """
    if kind == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            if candidate == "torch" and not allow_torch:
                from edge.errors import ModelFileError

                raise ModelFileError(
                    f"backend auto: no exported graph can run model {model_dir} ({'; '.join(reasons)}); run "
                    f"`hlgfa export --model {model_dir}` first, or choose the PyTorch module explicitly "
                    f"(--backend torch, slower)")
            try:
                backend = open_backend(candidate, model_dir, **_applicable(candidate, options, explicit=False))
            except HlgfaError as error:  # a missing engine or ONNX file too: try the next backend
                why = _asked_for(candidate, model_dir, options, error)
                if why is not None:
                    raise type(error)(f"backend auto: {why} but cannot be used, so no other backend is "
                                      f"tried: {error}") from error
                reasons.append(f"{candidate} skipped: {error}")
                continue
            # WARNING, not INFO: which graph runs decides speed and parity; it must show in a default log.
            log.warning("backend auto: chose %s%s", candidate, f" ({'; '.join(reasons)})" if reasons else
                        " (the first in the order tensorrt, onnxruntime, torch that opened)")
            return backend
        raise BackendError("backend auto: no backend could be opened:\n  " + "\n  ".join(reasons))
    if kind not in BACKEND_KINDS:
        raise BackendError(f"backend {kind!r}: unknown, expected one of {', '.join(('auto',) + BACKEND_KINDS)}")
    return _module(kind).open(model_dir, **_applicable(kind, options, explicit=True))


def _module(kind: str):
    return importlib.import_module(f"edge.backends.{kind}")


def _applicable(kind: str, options: dict, explicit: bool) -> dict:
    accepted = _module(kind).OPTIONS
    unknown = sorted(set(options) - accepted)
    if unknown and explicit:
        raise ConfigError(f"backend {kind}: option {', '.join(unknown)} does not apply to it; "
                          f"it takes {', '.join(sorted(accepted))}")
    return {key: value for key, value in options.items() if key in accepted}
