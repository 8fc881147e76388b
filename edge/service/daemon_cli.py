"""`hlgfa run` (the daemon) and `hlgfa config check FILE`.

Flags override the file key by key. The named flags cover what is set most often; `--set KEY=VALUE`
(repeatable, dotted key, TOML value) reaches every other key, so each key is settable from the
command line without a flag list that drifts from the config models.
"""

import argparse
import json
import logging
import os
import sys
import threading

from edge.core.errors import exit_status
from edge.config.daemon import DaemonConfig, build_config
from edge.core.settings import parse_override
from edge.core.errors import ConfigError
from edge.core.logs import apply_levels, camera_log

log = logging.getLogger(__name__)

DAEMON_SWITCH_INTERVAL_S = 0.0005

# flag dest → dotted config key
_FLAG_KEYS = {
    "camera": "camera", "model": "model", "thresholds": "thresholds",
    "publish": "publish.endpoint", "reliable": "publish.reliable_endpoint",
    "max_frames": "pipeline.max_frames", "deadline_ms": "pipeline.deadline_ms", "overload": "pipeline.overload",
    "backend": "backend.kind", "onnx": "backend.onnx", "engine": "backend.engine",
    "max_batch": "backend.max_batch", "threads": "backend.threads",
    "metrics_port": "health.metrics_port",
}


def _overrides(args: argparse.Namespace) -> list:
    from pathlib import Path

    from edge.sources.factory import parse_spec

    overrides = []
    if getattr(args, "source", None) is not None:
        # A flag replaces the whole [source] table: mixing a file's genicam keys into a folder
        # source would only produce "unknown key" errors. --set source.KEY refines it afterwards.
        overrides.append((["source"], parse_spec(args.source)))
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            if dest in ("model", "thresholds", "onnx", "engine"):
                value = str(Path(value).expanduser().resolve())
            overrides.append((key.split("."), value))
    # --set last, so it can refine what a named flag set (e.g. --source folder:DIR --set source.loop=true).
    overrides.extend(parse_override(text) for text in args.set or ())
    return overrides


def _config(args: argparse.Namespace) -> DaemonConfig:
    return build_config(getattr(args, "config", None), _overrides(args))


def check_files(config: DaemonConfig) -> list[str]:
    """What a start would refuse besides the schema: the model directory and its thresholds file."""
    from edge.artifacts.model_dir import load_model_info
    from edge.artifacts.thresholds import load_thresholds

    info = load_model_info(config.model)
    thresholds = load_thresholds(config.thresholds_path, info.model_hash)
    if config.publish.curve_secret_key is not None:
        from edge.transport.curve_keys import check_allowed_dir, load_keypair

        # As the publisher loads them at start: a key others may read is refused here too.
        load_keypair(config.publish.curve_secret_key)
        check_allowed_dir(config.publish.curve_allowed_clients)
    height, width = info.preprocess.input_size
    return [f"model {config.model}: hash {info.model_hash[:12]}, input {height}×{width}",
            f"thresholds {config.thresholds_path}: version {thresholds.version}, image threshold "
            f"{thresholds.image_threshold:.6g}{', region rule' if thresholds.region else ''}"]


def _print_resolved(config: DaemonConfig, notes: list[str]) -> None:
    print(json.dumps(config.resolved(), indent=2))
    for note in notes:
        print(f"# {note}", file=sys.stderr)


def _run_handler(args: argparse.Namespace) -> int:
    if args.config is None and args.model is None:
        raise ConfigError("hlgfa run: give --config FILE, or at least --model, --source and --publish")
    config = _config(args)
    apply_levels(getattr(args, "log_level", None) or config.logging.level, config.logging.levels)
    from edge.service.daemon import Daemon

    # The stage threads hand each frame on through the GIL; a thread woken by a finished inference
    # waits up to this interval for a thread running Python code to let go. 0.5 ms instead of
    # CPython's 5 ms: added latency p99 2.9 instead of 3.5 ms on average over four paired runs, a
    # small gain, throughput unchanged (BENCHMARKS.md, "Inspection daemon"). Process-wide, so set
    # here, at the daemon's own entry.
    sys.setswitchinterval(DAEMON_SWITCH_INTERVAL_S)
    daemon = Daemon(config, signals=args.signals)
    daemon.signals.install()  # the same handlers again: also when called without edge.cli.main
    if daemon.signals.stop.is_set():
        camera_log(__name__, config.camera).info("stop requested while starting; exiting before opening anything")
        return 0
    ours_before = set(threading.enumerate())
    try:
        code = daemon.run()
    except (Exception, KeyboardInterrupt) as error:
        code = exit_status("run", error)
    _leave_now_if_threads_remain({thread for thread in threading.enumerate() if thread not in ours_before}, code)
    return code


def _leave_now_if_threads_remain(threads: set, code: int) -> None:
    """End the process with `code` at once when threads the daemon started are still alive.

    Such a thread is still inside a call that outlasted the drain timeout: an onnxruntime or
    TensorRT inference, a GenTL fetch. A normal exit finalises the interpreter under it; when the
    call returns and the thread asks for the GIL, the interpreter ends it with pthread_exit, whose
    unwinding through the library's C++ frames calls std::terminate, and the process dies with
    SIGABRT instead of `code`. A supervisor would then count a clean stop as a crash. Everything
    that matters has happened by now (every frame read has its decision, the last heartbeat and
    the publisher's queue are flushed, the parts not in use are closed), so only the interpreter's
    own teardown is skipped. This belongs here, at the process's entry point, not in `Daemon`:
    a `Daemon` run inside another process (the tests) must not end that process.
    """
    alive = sorted(thread.name for thread in threads if thread.is_alive())
    if not alive:
        return
    log.error("threads still running at exit: %s; exiting with %d without interpreter teardown",
              ", ".join(alive), code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_handler(args: argparse.Namespace) -> int:
    config = build_config(args.file, _overrides(args))
    notes = [] if args.schema_only else check_files(config)
    _print_resolved(config, notes)
    print(f"config {args.file}: OK", file=sys.stderr)
    return 0


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="set any config key, dotted, TOML value (e.g. pipeline.deadline_ms=200); repeatable")


def configure_run(run) -> None:
    """The arguments and handler of `hlgfa run` (edge/cli.py names the command and its one-line help)."""
    run.description = ("Run the inspection daemon: camera → model → decision → ZeroMQ. Flags override the "
                       "config file's keys (docs/CONFIG.md). SIGTERM stops after the frames in flight, "
                       "SIGHUP reloads the thresholds file.")
    run.add_argument("--config", type=str, default=None, metavar="FILE", help="TOML config file")
    run.add_argument("--camera", help="camera name used in topics ([A-Za-z0-9_-])")
    run.add_argument("--model", metavar="MODEL_DIR")
    run.add_argument("--thresholds", metavar="FILE", help="default: MODEL_DIR/thresholds.json")
    run.add_argument("--source", metavar="SPEC", help="folder:DIR, opencv:INDEX|URL|FILE, genicam[:SERIAL]")
    run.add_argument("--publish", metavar="ENDPOINT", help="PUB endpoint to bind, e.g. tcp://127.0.0.1:5555")
    run.add_argument("--reliable", metavar="ENDPOINT", help="acknowledged channel endpoint for the PLC bridge")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    run.add_argument("--backend", choices=("auto", "onnxruntime", "torch", "tensorrt"))
    run.add_argument("--onnx", metavar="FILE")
    run.add_argument("--engine", metavar="FILE")
    run.add_argument("--max-batch", type=int, metavar="N")
    run.add_argument("--threads", type=int, metavar="N")
    run.add_argument("--deadline-ms", type=float, metavar="MS")
    run.add_argument("--overload", choices=("fault", "block"))
    run.add_argument("--metrics-port", type=int, metavar="PORT")
    _add_set(run)
    run.set_defaults(handler=_run_handler)


def configure_config(config) -> None:
    """The arguments and handler of `hlgfa config`."""
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate FILE (exit 78 naming the key), print the resolved config",
                               description="Validate a daemon config: schema (unknown keys, types, ranges, "
                                           "with the offending key and line), then the model directory and "
                                           "that the thresholds file is bound to that model.")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--schema-only", action="store_true", help="skip the model and thresholds checks")
    _add_set(check)
    check.set_defaults(handler=_check_handler)
