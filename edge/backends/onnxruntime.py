"""ONNX Runtime backend: the exported graph on CPU (CUDA / TensorRT execution providers when present).

The ONNX file carries the hash of the model it was exported from (`hlgfa.model_hash` in its
metadata); it must equal the model directory's, so thresholds calibrated for one model are
never applied to another model's scores.
"""

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edge.backends.base import BackendSettings, check_batch
from edge.core.errors import BackendError, ModelFileError
from edge.artifacts.graph import INPUT_NAME, META_MODEL_HASH, META_PRECISION, OUTPUT_NAMES
from edge.artifacts.model_dir import load_model_info

module_log = logging.getLogger(__name__)



class OnnxRuntimeConfig(BackendSettings):
    kind: Literal["onnxruntime"] = "onnxruntime"
    # The exported graph (default MODEL/model.onnx; `model.fp16.onnx` is the FP16 export).
    onnx: Path | None = None
    # Intra-op threads (default: ONNX Runtime's, one per core).
    threads: int | None = Field(default=None, ge=1, le=1024)

# Best first; CPU is always there. The TensorRT EP builds its own engine at first run (slow);
# it is used only when asked for, the tensorrt backend being the way to run TensorRT.
PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _reexport_hint(model_dir, onnx_path) -> str:
    return f"re-export with `hlgfa export --model {model_dir} --out {onnx_path}`"


class OnnxRuntimeBackend:
    kind = "onnxruntime"

    engine_sidecar = None  # runs no TensorRT engine

    def __init__(self, model_dir, config: OnnxRuntimeConfig, log: logging.Logger | logging.LoggerAdapter | None = None):
        onnx, max_batch, threads = config.onnx, config.max_batch, config.threads
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendError(f"onnxruntime backend: onnxruntime is not installed ({error}); "
                               f"pip install -c constraints.txt '.[onnx]'") from error
        info = load_model_info(model_dir)
        path = Path(onnx) if onnx else info.default_onnx
        if not path.is_file():
            raise ModelFileError(f"onnxruntime backend: ONNX file {path} does not exist; {_reexport_hint(model_dir, path)}")
        self.input_size = info.preprocess.input_size
        self.max_batch = max_batch
        self.model_hash = info.model_hash
        self.onnx_path = path
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads spin by default; on a line box the same cores acquire and
        # preprocess the next frame, and spinning threads steal them (measured: BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = onnxruntime.get_available_providers()
        chosen = [p for p in PROVIDERS if p in available]
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=chosen)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelFileError(f"onnxruntime backend: cannot load ONNX file {path} ({type(error).__name__}: "
                                 f"{str(error).strip()[:300]}); the file is truncated or not an ONNX model; "
                                 f"{_reexport_hint(model_dir, path)}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        exported_hash = metadata.get(META_MODEL_HASH)
        if exported_hash is None:
            raise ModelFileError(f"onnxruntime backend: ONNX file {path} has no hlgfa.model_hash metadata "
                                 f"(not written by `hlgfa export`); {_reexport_hint(model_dir, path)}")
        if exported_hash != info.model_hash:
            raise ModelFileError(
                f"onnxruntime backend: ONNX file {path} was exported from model {exported_hash[:12]}, but model "
                f"directory {info.directory} is {info.model_hash[:12]}; {_reexport_hint(model_dir, path)}")
        inputs = [value.name for value in self.session.get_inputs()]
        outputs = [value.name for value in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or tuple(outputs) != OUTPUT_NAMES:
            raise ModelFileError(f"onnxruntime backend: ONNX file {path} has inputs {inputs} and outputs {outputs}, "
                                 f"expected [{INPUT_NAME!r}] and {list(OUTPUT_NAMES)}")
        self.precision = metadata.get(META_PRECISION, "fp32")
        self.providers = self.session.get_providers()
        (log or module_log).info("onnxruntime backend: %s (%s) on %s", path, self.precision, ", ".join(self.providers))

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.session is None:
            raise BackendError("onnxruntime backend: infer() after close()")
        batch = check_batch(batch, self.input_size, self.max_batch, self.kind)
        try:
            maps, scores = self.session.run(None, {INPUT_NAME: batch})
        except Exception as error:
            raise BackendError(f"onnxruntime backend: inference on {self.onnx_path} failed: {error}") from error
        return maps, scores

    def warmup(self) -> None:
        self.infer(np.zeros((1, 3) + self.input_size, dtype=np.float32))

    def close(self) -> None:
        self.session = None

