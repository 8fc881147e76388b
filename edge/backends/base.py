"""The protocol every inference backend implements, and the one place that picks one.

A backend takes the preprocessed batch (N×3×S×S float32, see `edge.preprocess`) and returns
the anomaly maps (N×S×S float32) and image scores (N float32), computed entirely by the model
graph. Thresholds are never inside a backend: they live in a file beside the model.
"""

import importlib
import logging
from typing import Protocol

import numpy as np

from edge.errors import BackendError, HlgfaError

log = logging.getLogger(__name__)

# Explicit, not discovered: a missing library must fail loudly, not remove a config option.
BACKEND_KINDS = ("tensorrt", "onnxruntime", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


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


def open_backend(kind: str, model_dir, **options) -> Backend:
    """Open backend `kind` (or the best available for "auto") for the model in `model_dir`.

    options: onnx=PATH, engine=PATH, max_batch=N, threads=N, device=... (backend-specific).
    """
    if kind == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            try:
                backend = open_backend(candidate, model_dir, **options)
            except HlgfaError as error:  # a missing engine or ONNX file too: try the next backend
                reasons.append(f"{candidate}: {error}")
                continue
            log.info("backend auto: chose %s%s", candidate,
                     f" (skipped: {'; '.join(reasons)})" if reasons else "")
            return backend
        raise BackendError("backend auto: no backend could be opened:\n  " + "\n  ".join(reasons))
    if kind not in BACKEND_KINDS:
        raise BackendError(f"backend {kind!r}: unknown, expected one of {', '.join(('auto',) + BACKEND_KINDS)}")
    module = importlib.import_module(f"edge.backends.{kind}")
    return module.open(model_dir, **options)
