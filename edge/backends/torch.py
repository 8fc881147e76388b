"""PyTorch backend: the training stack's own model, for development and as the reference.

Imports torch and the model code (`calibrate.model.io`) only when opened: a line box running
TensorRT or ONNX Runtime never needs them.
"""

import logging
from typing import Literal

import numpy as np
from pydantic import Field

from edge.backends.base import BackendSettings, check_batch
from edge.core.errors import BackendError


class TorchConfig(BackendSettings):
    kind: Literal["torch"] = "torch"
    threads: int | None = Field(default=None, ge=1, le=1024)
    # "cpu", "cuda" or "cuda:N".
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:[0-9]+)?)$")


class TorchBackend:
    kind = "torch"

    engine_sidecar = None  # runs no TensorRT engine

    def __init__(self, model_dir, config: TorchConfig, log: logging.Logger | logging.LoggerAdapter | None = None):
        max_batch, threads, device = config.max_batch, config.threads, config.device
        try:
            import torch

            from calibrate.model.io import load_model
        except ImportError as error:
            raise BackendError(f"torch backend: torch is not installed ({error}); "
                               f"install the training extra: pip install -c constraints.txt '.[train]'") from error
        self._torch = torch
        if threads:
            torch.set_num_threads(threads)
        if device != "cpu" and not torch.cuda.is_available():
            raise BackendError(f"torch backend: device {device!r} asked for, but CUDA is not available")
        self.model, info = load_model(model_dir)
        self.model.to(device)
        self.device = device
        self.model_hash = info.model_hash
        self.input_size = info.preprocess.input_size
        self.max_batch = max_batch
        (log or logging.getLogger(__name__)).info("torch backend: model %s on %s", info.directory, device)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = check_batch(batch, self.input_size, self.max_batch, self.kind)
        with self._torch.inference_mode():
            maps, scores = self.model(self._torch.from_numpy(batch).to(self.device))
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()

    def warmup(self) -> None:
        self.infer(np.zeros((1, 3) + self.input_size, dtype=np.float32))

    def close(self) -> None:
        self.model = None

