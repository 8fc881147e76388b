"""`hlgfa engine build|check|ensure|parity`: TensorRT engines as device-specific build artefacts.

`ensure` is what the hlgfa-engine@ oneshot unit runs before each daemon start: a hash and
version comparison that ends at once when the engine still matches, a build when it does not. It
reads `[backend]` through the daemon's own config model, so it builds the engine `hlgfa run` will
load, from the graph and at the precision that section names; a graph of another precision is a
configuration error (exit 78), never an engine of another precision.

`parity` lets thresholds calibrated on one engine run on another built from the same graph on the
same GPU model (engines are not bit-reproducible: tactics are timed at build): it scores the
calibration normals on the new engine, compares each score with the one recorded at calibration, and
records a passed check in the new engine's sidecar, which the daemon accepts under
`[backend] engine_binding = "parity"` (edge/artifacts/engine_sidecar.py binding_problem).
"""

import logging
from pathlib import Path

from edge.artifacts.engine_sidecar import mismatches, read_sidecar, sidecar_path
from edge.artifacts.model_dir import file_sha256, load_model_info
from edge.core.errors import ConfigError, ModelFileError

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")


def configure(parser) -> None:
    """The arguments and handler of `hlgfa engine` (edge/cli.py names the command and its one-line help)."""
    commands = parser.add_subparsers(dest="engine_command", required=True, metavar="ACTION")

    build = commands.add_parser("build", help="build a TensorRT engine from an exported ONNX file")
    build.add_argument("--onnx", required=True, help="ONNX file from `hlgfa export` (--fp16 for an FP16 engine)")
    build.add_argument("--out", required=True, help="engine file to write, e.g. engines/line1.plan")
    build.add_argument("--max-batch", type=int, help="largest batch (default: the export's --max-batch)")
    build.add_argument("--workspace", type=int, default=1024, help="builder workspace in MB (default 1024)")
    build.add_argument("--model", help="model directory: refuse an ONNX exported from another model")
    build.add_argument("--precision", choices=PRECISIONS, help="refuse a graph of another precision")
    build.set_defaults(handler=run_build)

    check = commands.add_parser("check", help="does an engine match this TensorRT, this GPU and the model?")
    check.add_argument("--engine", required=True)
    check.add_argument("--model", help="model directory the engine must belong to")
    check.add_argument("--max-batch", type=int)
    check.set_defaults(handler=run_check)

    ensure = commands.add_parser("ensure", help="rebuild the engine only if it no longer matches (systemd oneshot)")
    ensure.add_argument("--config", help="daemon config TOML (reads model and [backend])")
    ensure.add_argument("--model", help="model directory (instead of --config)")
    ensure.add_argument("--out", help="engine file (instead of --config)")
    ensure.add_argument("--precision", choices=PRECISIONS, default="fp16",
                        help="with --model: the engine's precision (default fp16)")
    ensure.add_argument("--onnx", help="with --model: the graph to build from (default: MODEL/model.fp16.onnx for "
                                       "fp16, MODEL/model.onnx for fp32)")
    ensure.add_argument("--max-batch", type=int, default=None)
    ensure.add_argument("--workspace", type=int, default=1024)
    ensure.set_defaults(handler=run_ensure)

    parity = commands.add_parser("parity", help="let thresholds calibrated on one engine run on a rebuild of it")
    parity.add_argument("--config", help="daemon config TOML (reads model, thresholds and [backend])")
    parity.add_argument("--model", help="model directory (instead of --config)")
    parity.add_argument("--engine", help="the rebuilt engine (instead of --config)")
    parity.add_argument("--thresholds", help="with --model: thresholds file (default MODEL/thresholds.json)")
    parity.add_argument("--normals", help="the calibration's good images (default: the folder the thresholds "
                                          "file names)")
    parity.add_argument("--max-batch", type=int, default=None)
    parity.set_defaults(handler=run_parity)


def run_build(args) -> int:
    from engines.tensorrt_build import build_engine

    sidecar = build_engine(args.onnx, args.out, max_batch=args.max_batch, workspace_mb=args.workspace,
                           model_dir=args.model, precision=args.precision)
    print(f"{args.out}: {sidecar['precision']}, batch 1..{sidecar['max_batch']}, TensorRT "
          f"{sidecar['tensorrt_version']} on {sidecar['gpu_name']} (compute capability "
          f"{sidecar['compute_capability']}, {sidecar['gpu_sm_count']} SMs at {sidecar['gpu_sm_clock_mhz']} MHz, "
          f"{sidecar['gpu_memory_gib']} GiB)")
    return 0


def run_check(args) -> int:
    from edge.backends.tensorrt import running_environment

    if not Path(args.engine).is_file():
        raise ModelFileError(f"engine {args.engine} does not exist; build it with `hlgfa engine build` or "
                             f"`hlgfa engine ensure`")
    sidecar = read_sidecar(args.engine)
    running = running_environment()
    if args.model:
        running["model_hash"] = load_model_info(args.model).model_hash
    reasons = mismatches(sidecar, running, max_batch=args.max_batch)
    if sidecar.get("engine_sha256") != file_sha256(Path(args.engine)):
        reasons.insert(0, "the engine file is not the one its sidecar describes (sha256 differs)")
    if reasons:
        raise ModelFileError(f"engine {args.engine} does not match: {'; '.join(reasons)}; rebuild with "
                             f"`{sidecar.get('rebuild') or 'hlgfa engine build ...'}`")
    print(f"{args.engine}: matches (TensorRT {running['tensorrt_version']}, {running['gpu_name']})")
    return 0


def engine_settings(args, command: str):
    """(model_dir, TensorRTConfig, thresholds file) from --config or the flags of `hlgfa engine COMMAND`;
    None: the config's backend runs no engine."""
    from edge.backends.tensorrt import TensorRTConfig

    if args.config:
        from edge.config.daemon import load_config

        config = load_config(args.config)
        backend = config.backend
        if backend.kind == "auto" and backend.engine is not None:
            backend = TensorRTConfig(engine=backend.engine, max_batch=backend.max_batch)
        if not isinstance(backend, TensorRTConfig):
            return None
        if args.max_batch:
            backend = backend.model_copy(update={"max_batch": args.max_batch})
        return Path(config.model), backend, config.thresholds_path
    engine = getattr(args, "out", None) or getattr(args, "engine", None)
    if not (args.model and engine):
        flag = "--out" if command == "ensure" else "--engine"
        raise ConfigError(f"hlgfa engine {command}: give --config FILE, or --model DIR and {flag} ENGINE")
    model_dir = Path(args.model)
    keys = {"engine": engine, "max_batch": args.max_batch or 1}
    if command == "ensure":
        keys.update(onnx=args.onnx, precision=args.precision)
    thresholds = Path(args.thresholds) if getattr(args, "thresholds", None) else None
    from edge.config.daemon import DEFAULT_THRESHOLDS_NAME

    return model_dir, TensorRTConfig(**keys), thresholds or model_dir / DEFAULT_THRESHOLDS_NAME


def stale_reasons(model_dir: Path, backend, running: dict) -> list[str]:
    """Why the engine `backend` (a TensorRTConfig) names must be (re)built; empty when it still serves this
    model, from its source graph at its precision, on this machine."""
    engine, onnx = Path(backend.engine), backend.source_graph(model_dir)
    if not engine.is_file():
        return [f"{engine} does not exist"]
    try:
        sidecar = read_sidecar(engine)
    except ModelFileError as error:
        return [str(error)]
    running = {**running, "model_hash": load_model_info(model_dir).model_hash}
    reasons = mismatches(sidecar, running, max_batch=backend.max_batch,
                         onnx_sha256=file_sha256(onnx) if onnx.is_file() else None)
    if sidecar.get("precision") != backend.precision:
        reasons.append(f"the engine is {sidecar.get('precision')!r}, backend.precision is {backend.precision!r}")
    if sidecar.get("engine_sha256") != file_sha256(engine):
        reasons.append("the engine file is not the one its sidecar describes (sha256 differs)")
    return reasons


def run_ensure(args) -> int:
    targets = engine_settings(args, "ensure")
    if targets is None:
        log.info("%s: the backend uses no TensorRT engine; nothing to do", args.config)
        return 0
    model_dir, backend, thresholds_path = targets
    onnx, engine = backend.source_graph(model_dir), Path(backend.engine)
    from edge.backends.tensorrt import running_environment
    from engines.tensorrt_build import build_engine, graph_precision, read_onnx_metadata

    if onnx.is_file():
        # Before anything else: an engine of another precision than asked for must never be built or kept.
        graph_precision(read_onnx_metadata(onnx), onnx, backend.precision)
    reasons = stale_reasons(model_dir, backend, running_environment())
    if not reasons:
        print(f"{engine}: up to date")
        return 0
    log.info("rebuilding %s: %s", engine, "; ".join(reasons))
    if not onnx.is_file():
        flag = " --fp16" if backend.precision == "fp16" else ""
        raise ModelFileError(f"cannot rebuild {engine}: ONNX file {onnx} does not exist; export it where torch is "
                             f"installed with `hlgfa export --model {model_dir}{flag} --out {onnx}` and copy it here")
    sidecar = build_engine(onnx, engine, max_batch=backend.max_batch, workspace_mb=args.workspace,
                           model_dir=model_dir, precision=backend.precision)
    print(f"{engine}: rebuilt ({'; '.join(reasons)}); sidecar {sidecar_path(engine)}")
    warn_unbound_thresholds(thresholds_path, model_dir, sidecar, backend.engine_binding)
    return 0


def warn_unbound_thresholds(thresholds_path: Path, model_dir: Path, sidecar: dict, binding: str) -> None:
    """Say in the engine unit's journal, before the daemon refuses to start, that the thresholds beside
    the model were calibrated on another engine than the one just built (and what to do)."""
    from edge.artifacts.engine_sidecar import binding_problem
    from edge.artifacts.thresholds import load_thresholds

    if not thresholds_path.is_file():
        return
    try:
        thresholds = load_thresholds(thresholds_path, load_model_info(model_dir, verify_hash=False).model_hash)
    except (ConfigError, ModelFileError) as error:
        log.warning("%s: %s", thresholds_path, error)
        return
    problem = binding_problem(thresholds, sidecar, binding, "tensorrt")
    if problem is not None:
        log.warning("the daemon will refuse thresholds file %s with the rebuilt engine: %s", thresholds_path, problem)


def run_parity(args) -> int:
    from engines.parity import check_parity

    targets = engine_settings(args, "parity")
    if targets is None:
        raise ConfigError(f"hlgfa engine parity: {args.config}: [backend] names no TensorRT engine")
    model_dir, backend, thresholds = targets
    record = check_parity(model_dir, backend, thresholds, args.normals)
    print(f"{backend.engine}: scores {record['images']} calibration normals within {record['limit']:.4g} of the "
          f"calibrated engine's (max |Δscore| {record['max_score_diff']:.4g}); recorded in {sidecar_path(backend.engine)} "
          f"for thresholds version {record['thresholds_version']}")
    return 0


__all__ = ["configure", "stale_reasons", "engine_settings"]
