"""ONNX → TensorRT engine (plan), with its sidecar and a timing cache kept beside it.

Every build is strongly typed: precision comes from the graph's own types, so an FP16 engine
needs the FP16 graph (`hlgfa export --fp16`) and an FP32 graph gives an FP32 engine. TensorRT 11
knows nothing else (its STRONGLY_TYPED creation flag is deprecated and ignored, so it is passed to
TensorRT 10 only); TensorRT 10 (JetPack 6 ships 10.3) still offers the weak-typing FP16 builder
flag, which we do not use: it lets TensorRT pick FP16 for any layer, including the FP32 tail of the
graph (the whitened discrepancy's quadratic form, the smoothing sums), where FP16 overflows or
loses the score's resolution. The FP16 graph keeps that tail FP32 by construction.

One optimisation profile, batch 1..max_batch, tuned for batch 1 (opt = 1): the line inspects one
part per trigger, so batch 1 is the shape whose latency matters; larger batches (a backlog after
a stall) run with the same kernels, correct but not tuned for. A second profile tuned for
max_batch would need its own execution context and buffers bound per profile in the backend,
for a case whose speed nothing depends on.

The graph's precision (its `hlgfa.precision` metadata) must be the one asked for: `hlgfa engine
ensure` passes `[backend] precision`, so a config that names the FP32 graph for an FP16 engine is a
configuration error, never an FP32 engine built in its place. TensorRT's log goes into this module's
log (the engine unit's journal). tensorrt is imported inside the functions, pycuda by
edge/backends/cuda_rt.py: this module is imported by the CLI on machines without a GPU.
"""

import logging
import os
import time
from pathlib import Path

from edge.backends.tensorrt import import_tensorrt, running_environment, tensorrt_logger, tensorrt_major
from edge.core.errors import BackendError, ConfigError, ModelFileError
from edge.artifacts.graph import (
    INPUT_NAME,
    META_MAX_BATCH,
    META_MODEL_HASH,
    META_PRECISION,
    OUTPUT_NAMES,
)
from edge.artifacts.model_dir import file_sha256, load_model_info
from edge.artifacts.engine_sidecar import build_command, timing_cache_path, write_sidecar
from engines.export import onnx_input_size

log = logging.getLogger(__name__)

OPT_BATCH = 1  # the batch TensorRT tunes for: the line's (module docstring)


def network_flags(trt) -> int:
    """create_network() flags: strongly typed. Opt-in on TensorRT 10; always on, flag ignored, from 11."""
    if tensorrt_major(trt.__version__) == 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def use_timing_cache(config, cache_path: Path):
    """Give the builder config the timing cache kept beside the engine, or an empty one.

    A cache written by another TensorRT version or another GPU cannot be used: TensorRT returns
    no cache (or raises) for bytes it cannot read, and set_timing_cache() answers False for a
    cache from another device. Either way the build starts from an empty cache, which only
    makes it slower, and the cache written afterwards replaces the old one.
    """
    cache = None
    data = cache_path.read_bytes() if cache_path.is_file() else b""
    if data:
        try:
            cache = config.create_timing_cache(data)
        except (RuntimeError, TypeError, ValueError):  # the binding's exception for an unreadable blob
            cache = None
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return cache
        log.warning("timing cache %s cannot be used here (another TensorRT version or GPU); building with an "
                    "empty cache, which is slower once", cache_path)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BackendError(f"TensorRT refused an empty timing cache for {cache_path} (see the TensorRT log)")
    return cache


def read_onnx_metadata(onnx_path: Path) -> dict:
    try:
        import onnx
    except ImportError as error:
        raise BackendError(f"reading {onnx_path} needs the onnx package ({error}); "
                           f"pip install -c constraints.txt '.[tensorrt-cu12]' or '.[tensorrt-cu13]' ('.[jetson]' on a Jetson)") from error
    if not onnx_path.is_file():
        raise ModelFileError(f"ONNX file {onnx_path} does not exist; export it with `hlgfa export --model MODEL_DIR`")
    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ModelFileError(f"ONNX file {onnx_path}: cannot be read ({error}); it is truncated or not ONNX; "
                             f"re-export with `hlgfa export`") from error
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    if META_MODEL_HASH not in metadata:
        raise ModelFileError(f"ONNX file {onnx_path}: no hlgfa.model_hash metadata (not written by `hlgfa export`)")
    return metadata


GRAPH_PRECISIONS = ("fp16", "fp32")


def graph_precision(metadata: dict, onnx_path: Path, expected: str | None = None) -> str:
    """The precision `hlgfa export` wrote into the graph; a ConfigError naming both when it is not `expected`."""
    precision = metadata.get(META_PRECISION)
    if precision not in GRAPH_PRECISIONS:
        raise ModelFileError(f"ONNX file {onnx_path}: {META_PRECISION} is {precision!r}, expected one of "
                             f"{', '.join(GRAPH_PRECISIONS)}; re-export it with `hlgfa export`")
    if expected is not None and precision != expected:
        flag = " --fp16" if expected == "fp16" else ""
        raise ConfigError(f"backend.precision is {expected!r} but the graph {onnx_path} is {precision!r} (its "
                          f"{META_PRECISION}); builds are strongly typed, so the graph decides the engine's precision: "
                          f"name the {expected} export in backend.onnx (`hlgfa export --model MODEL{flag} --out FILE`) "
                          f"or set backend.precision = {precision!r}")
    return precision


def build_engine(onnx_path, out, *, max_batch: int | None = None, workspace_mb: int = 1024, model_dir=None,
                 precision: str | None = None) -> dict:
    """Build `out` from `onnx_path`; writes the engine, its sidecar and the timing cache. Returns the sidecar.

    precision: the precision the graph must have ("fp16", "fp32"); None takes the graph's."""
    onnx_path, out = Path(onnx_path), Path(out)
    trt = import_tensorrt()  # first: on a box without TensorRT, say so before anything else
    metadata = read_onnx_metadata(onnx_path)
    precision = graph_precision(metadata, onnx_path, precision)
    if model_dir is not None:
        info = load_model_info(model_dir)
        if info.model_hash != metadata[META_MODEL_HASH]:
            raise ModelFileError(
                f"ONNX file {onnx_path} was exported from model {metadata['hlgfa.model_hash'][:12]}, but model "
                f"directory {model_dir} is {info.model_hash[:12]}; re-export with "
                f"`hlgfa export --model {model_dir} --out {onnx_path}`")
    source_sha256 = file_sha256(onnx_path)  # of the bytes TensorRT is about to parse
    height, width = onnx_input_size(metadata)
    max_batch = max_batch or int(metadata.get(META_MAX_BATCH, 8))
    if max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch}: expected ≥ 1")

    environment = running_environment(trt)
    logger = tensorrt_logger(trt, log)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFileError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp32":
        log.warning("%s is an FP32 graph, so this is an FP32 engine; export with --fp16 for an FP16 engine", onnx_path)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, height, width), (OPT_BATCH, 3, height, width), (max_batch, 3, height, width))
    if config.add_optimization_profile(profile) < 0:
        raise BackendError(f"TensorRT {trt.__version__} refused the optimisation profile batch 1..{max_batch} "
                           f"for {onnx_path} (see the TensorRT log above)")
    use_timing_cache(config, timing_cache_path(out))
    log.info("building %s from %s (TensorRT %s, %s, batch 1..%d, workspace %d MB)", out, onnx_path,
             trt.__version__, precision, max_batch, workspace_mb)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT {trt.__version__} failed to build {onnx_path} (see the TensorRT log above)")
    seconds = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.tmp")
    with open(temp, "wb") as handle:
        handle.write(memoryview(serialized))
    os.replace(temp, out)
    cache_path = timing_cache_path(out)
    cache_temp = cache_path.with_name(f".{cache_path.name}.tmp")
    with open(cache_temp, "wb") as handle:
        handle.write(memoryview(config.get_timing_cache().serialize()))
    os.replace(cache_temp, cache_path)
    sidecar = {
        **environment,
        "model_hash": metadata[META_MODEL_HASH],
        "onnx": str(onnx_path),
        "onnx_sha256": source_sha256,
        "precision": precision,
        "strongly_typed": True,
        "input_size": [height, width],
        "max_batch": max_batch,
        "opt_batch": OPT_BATCH,
        "inputs": {INPUT_NAME: ["batch", 3, height, width]},
        "outputs": {OUTPUT_NAMES[0]: ["batch", height, width], OUTPUT_NAMES[1]: ["batch"]},
        "engine_sha256": file_sha256(out),
        "build_seconds": round(seconds, 1),
        "rebuild": build_command(onnx_path, out, max_batch, model_dir),
    }
    write_sidecar(out, sidecar)
    log.info("built %s in %.0f s", out, seconds)
    return sidecar
