"""The protocol every inference backend implements, its settings per kind, and the one place that opens one.

A backend takes the preprocessed batch (N×3×H×W float32, see `edge.imaging.preprocess`) and returns
the anomaly maps (N×H×W float32) and image scores (N float32), computed entirely by the model
graph. Thresholds are never inside a backend: they live in a file beside the model.

`[backend]` is one typed model per kind, joined by its `kind` (`BackendConfig`): each backend's module
holds its own settings beside its code, so a setting a backend has no use for (threads to TensorRT) is
refused by `hlgfa config check`, `hlgfa run` and `hlgfa engine ensure` alike, naming the key.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import Field, ValidationError

from edge.core.errors import BackendError, ConfigError, HlgfaError, ModelFileError
from edge.core.settings import Section, describe

module_log = logging.getLogger(__name__)

# Explicit, not discovered: a missing library must fail loudly, not remove a config option.
BACKEND_KINDS = ("tensorrt", "onnxruntime", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")
# kind → (module, backend class, config class), imported only when that kind is opened or validated.
_REGISTRY = {"tensorrt": ("edge.backends.tensorrt", "TensorRTBackend", "TensorRTConfig"),
             "onnxruntime": ("edge.backends.onnxruntime", "OnnxRuntimeBackend", "OnnxRuntimeConfig"),
             "torch": ("edge.backends.torch", "TorchBackend", "TorchConfig")}


class BackendSettings(Section):
    """What every kind of `[backend]` has: the batch and the supervisor's restart policy."""

    max_batch: int = Field(default=1, ge=1, le=256)
    # Consecutive failed batches before the backend is closed and opened again.
    restart_after_failures: int = Field(default=3, ge=1, le=1000)
    # Restarts allowed within restart_window_s; one more ends the daemon (exit 70) for systemd to restart.
    max_restarts: int = Field(default=3, ge=0, le=1000)
    restart_window_s: float = Field(default=600.0, gt=0, le=7 * 86400)


class AutoConfig(BackendSettings):
    """`kind = "auto"`: the first of tensorrt, onnxruntime, torch that opens, each given the keys it has."""

    kind: Literal["auto"] = "auto"
    onnx: Path | None = None
    engine: Path | None = None
    threads: int | None = Field(default=None, ge=1, le=1024)
    device: str | None = None


class Backend(Protocol):
    kind: str
    input_size: tuple[int, int]  # (height, width)
    max_batch: int
    model_hash: str
    # The loaded TensorRT engine's sidecar (its sha256 checked against the file); None for a backend that
    # runs no engine. Thresholds are bound to it (edge/artifacts/engine_sidecar.py binding_problem).
    engine_sidecar: dict | None

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


def _kind_module(kind: str):
    return importlib.import_module(_REGISTRY[kind][0])


def config_class(kind: str) -> type[BackendSettings]:
    """The settings model of backend `kind` (its module is imported; its heavy library is not)."""
    if kind == "auto":
        return AutoConfig
    if kind not in _REGISTRY:
        raise ConfigError(f"backend {kind!r}: unknown, expected one of {', '.join(('auto',) + BACKEND_KINDS)}")
    return getattr(_kind_module(kind), _REGISTRY[kind][2])


def backend_config(data: dict, origin: str = "backend") -> BackendSettings:
    """`data` (a `[backend]` table, `kind` included; default "auto") as its kind's settings model."""
    kind = data.get("kind", "auto")
    if not isinstance(kind, str):
        raise ConfigError(f"{origin}: key kind: expected one of {', '.join(('auto',) + BACKEND_KINDS)}, got {kind!r}")
    try:
        return config_class(kind).model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe(error, None, origin)) from None


def _asked_for(candidate: str, model_dir, config: AutoConfig, error: HlgfaError) -> str | None:
    """Why a failure of `candidate` under "auto" must be an error instead of a step to the next
    backend, or None. A file the user named (onnx, engine), or the model's own exported ONNX file
    present but unusable (truncated, another model's), means that graph was meant to run: quietly
    running another backend would change speed (deadline faults on a loaded box) and, for a
    foreign file, hide that the export is stale."""
    from edge.artifacts.model_dir import DEFAULT_ONNX

    if candidate == "onnxruntime" and config.onnx is not None:
        return f"the ONNX file {config.onnx} was named"
    if candidate == "tensorrt" and config.engine is not None:
        return f"the engine {config.engine} was named"
    if candidate == "onnxruntime" and isinstance(error, ModelFileError) and (Path(model_dir) / DEFAULT_ONNX).is_file():
        return f"{Path(model_dir) / DEFAULT_ONNX} is present"
    return None


def _candidate(kind: str, config: AutoConfig) -> BackendSettings:
    """The settings of `kind` taken from an auto config: the keys that kind has, and were set."""
    given = config.model_dump(exclude_none=True, exclude={"kind"})
    if kind == "tensorrt":
        given.pop("onnx", None)  # under auto, `onnx` names ONNX Runtime's graph, not the engine's source graph
    return backend_config({"kind": kind, **{key: value for key, value in given.items()
                                            if key in config_class(kind).model_fields}}, origin=f"backend {kind}")


def open_backend(config: BackendSettings | str, model_dir, allow_torch: bool = True,
                 log: logging.Logger | logging.LoggerAdapter | None = None, **options) -> Backend:
    """Open the backend `config` describes (or the first available for "auto") for the model in `model_dir`.

    `config` is a validated `[backend]` model, or a kind with its keys as `options` (onnx=PATH,
    engine=PATH, max_batch=N, threads=N, ...), validated here: a key the kind does not have is a
    ConfigError. `allow_torch=False` keeps "auto" from ending on the PyTorch module (the daemon:
    without an exported graph it is an error naming `hlgfa export`, not a slower backend chosen in
    silence). `log` is where the backend and its library write (the daemon: the camera's log);
    default: the backend module's logger.
    """
    if isinstance(config, str):
        config = backend_config({"kind": config, **options}, origin=f"backend {config}")
    elif options:
        raise TypeError("open_backend: options go with a kind, not with a config model")
    if config.kind != "auto":
        module, backend_class, _ = _REGISTRY[config.kind]
        return getattr(importlib.import_module(module), backend_class)(model_dir, config, log)
    reasons = []
    for candidate in AUTO_ORDER:
        if candidate == "torch" and not allow_torch:
            raise ModelFileError(
                f"backend auto: no exported graph can run model {model_dir} ({'; '.join(reasons)}); run "
                f"`hlgfa export --model {model_dir}` first, or choose the PyTorch module explicitly "
                f"(--backend torch, slower)")
        try:
            backend = open_backend(_candidate(candidate, config), model_dir, log=log)  # a missing key, too: skipped
        except HlgfaError as error:  # a missing engine or ONNX file too: try the next backend
            why = _asked_for(candidate, model_dir, config, error)
            if why is not None:
                raise type(error)(f"backend auto: {why} but cannot be used, so no other backend is "
                                  f"tried: {error}") from error
            reasons.append(f"{candidate} skipped: {error}")
            continue
        # WARNING, not INFO: which graph runs decides speed and parity; it must show in a default log.
        (log or module_log).warning("backend auto: chose %s%s", candidate, f" ({'; '.join(reasons)})" if reasons else
                    " (the first in the order tensorrt, onnxruntime, torch that opened)")
        return backend
    raise BackendError("backend auto: no backend could be opened:\n  " + "\n  ".join(reasons))
