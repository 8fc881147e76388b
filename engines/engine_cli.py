"""`hlgfa engine build|check|ensure`: TensorRT engines as device-specific build artefacts.

`ensure` is what the hlgfa-engine@ oneshot unit runs before each daemon start: a hash and
version comparison that ends at once when the engine still matches, a build when it does not.
"""

import logging
from pathlib import Path

from edge.core.errors import ConfigError, ModelFileError
from edge.artifacts.model_dir import file_sha256, load_model_info
from edge.artifacts.engine_sidecar import build_command, mismatches, read_sidecar, sidecar_path

log = logging.getLogger(__name__)


def configure(parser) -> None:
    """The arguments and handler of `hlgfa engine` (edge/cli.py names the command and its one-line help)."""
    commands = parser.add_subparsers(dest="engine_command", required=True, metavar="ACTION")

    build = commands.add_parser("build", help="build a TensorRT engine from an exported ONNX file")
    build.add_argument("--onnx", required=True, help="ONNX file from `hlgfa export` (--fp16 for an FP16 engine)")
    build.add_argument("--out", required=True, help="engine file to write, e.g. engines/line1.plan")
    build.add_argument("--max-batch", type=int, help="largest batch (default: the export's --max-batch)")
    build.add_argument("--workspace", type=int, default=1024, help="builder workspace in MB (default 1024)")
    build.add_argument("--model", help="model directory: refuse an ONNX exported from another model")
    build.set_defaults(handler=run_build)

    check = commands.add_parser("check", help="does an engine match this TensorRT, this GPU and the model?")
    check.add_argument("--engine", required=True)
    check.add_argument("--model", help="model directory the engine must belong to")
    check.add_argument("--max-batch", type=int)
    check.set_defaults(handler=run_check)

    ensure = commands.add_parser("ensure", help="rebuild the engine only if it no longer matches (systemd oneshot)")
    ensure.add_argument("--config", help="daemon config TOML (reads model, backend.kind/onnx/engine/max_batch)")
    ensure.add_argument("--model", help="model directory (instead of --config)")
    ensure.add_argument("--onnx", help="ONNX file (default MODEL/model.onnx)")
    ensure.add_argument("--out", help="engine file (instead of --config)")
    ensure.add_argument("--max-batch", type=int, default=None)
    ensure.add_argument("--workspace", type=int, default=1024)
    ensure.set_defaults(handler=run_ensure)


def run_build(args) -> int:
    from engines.tensorrt_build import build_engine

    sidecar = build_engine(args.onnx, args.out, max_batch=args.max_batch, workspace_mb=args.workspace,
                           model_dir=args.model)
    print(f"{args.out}: {sidecar['precision']}, batch 1..{sidecar['max_batch']}, TensorRT "
          f"{sidecar['tensorrt_version']} on {sidecar['gpu_name']} (compute capability "
          f"{sidecar['compute_capability']}, {sidecar['gpu_sm_count']} SMs, {sidecar['gpu_memory_gib']} GiB)")
    return 0


def run_check(args) -> int:
    from edge.backends.tensorrt import running_environment

    sidecar = read_sidecar(args.engine)
    running = running_environment()
    if args.model:
        running["model_hash"] = load_model_info(args.model).model_hash
    reasons = mismatches(sidecar, running, max_batch=args.max_batch)
    if not Path(args.engine).is_file():
        reasons.insert(0, "the engine file is missing")
    if reasons:
        raise ModelFileError(f"engine {args.engine} does not match: {'; '.join(reasons)}; rebuild with "
                             f"`{sidecar.get('rebuild') or 'hlgfa engine build ...'}`")
    print(f"{args.engine}: matches (TensorRT {running['tensorrt_version']}, {running['gpu_name']})")
    return 0


def ensure_targets(args) -> tuple[Path, Path, Path, int] | None:
    """(model_dir, onnx, engine, max_batch) from --config or the flags; None: not a TensorRT camera."""
    if args.config:
        from edge.config.daemon import load_config

        from edge.backends.tensorrt import TensorRTConfig

        config = load_config(args.config)
        backend = config.backend
        if backend.kind == "auto" and backend.engine is not None:
            backend = TensorRTConfig(engine=backend.engine, max_batch=backend.max_batch)
        if not isinstance(backend, TensorRTConfig):
            log.info("%s: backend %s uses no TensorRT engine; nothing to do", args.config, backend.kind)
            return None
        model_dir = Path(config.model)
        return model_dir, backend.source_graph(model_dir), Path(backend.engine), args.max_batch or backend.max_batch
    if not (args.model and args.out):
        raise ConfigError("hlgfa engine ensure: give --config FILE, or --model DIR and --out ENGINE [--onnx FILE]")
    model_dir = Path(args.model)
    onnx = Path(args.onnx) if args.onnx else load_model_info(model_dir, verify_hash=False).default_onnx
    return model_dir, onnx, Path(args.out), args.max_batch or 1


def stale_reasons(model_dir: Path, onnx: Path, engine: Path, max_batch: int, running: dict) -> list[str]:
    """Why `engine` must be (re)built; empty when it still serves this model on this machine."""
    if not engine.is_file():
        return [f"{engine} does not exist"]
    try:
        sidecar = read_sidecar(engine)
    except ModelFileError as error:
        return [str(error)]
    running = {**running, "model_hash": load_model_info(model_dir).model_hash}
    return mismatches(sidecar, running, max_batch=max_batch,
                      onnx_sha256=file_sha256(onnx) if onnx.is_file() else None)


def run_ensure(args) -> int:
    targets = ensure_targets(args)
    if targets is None:
        return 0
    model_dir, onnx, engine, max_batch = targets
    from edge.backends.tensorrt import running_environment
    from engines.tensorrt_build import build_engine

    reasons = stale_reasons(model_dir, onnx, engine, max_batch, running_environment())
    if not reasons:
        print(f"{engine}: up to date")
        return 0
    log.info("rebuilding %s: %s", engine, "; ".join(reasons))
    if not onnx.is_file():
        raise ModelFileError(f"cannot rebuild {engine}: ONNX file {onnx} does not exist; export it where torch is "
                             f"installed with `hlgfa export --model {model_dir} --out {onnx} --fp16` and copy it here")
    build_engine(onnx, engine, max_batch=max_batch, workspace_mb=args.workspace, model_dir=model_dir)
    print(f"{engine}: rebuilt ({'; '.join(reasons)}); sidecar {sidecar_path(engine)}")
    return 0


__all__ = ["configure", "stale_reasons", "ensure_targets", "build_command"]
