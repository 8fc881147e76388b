"""`hlgfa`: one command-line tool, one subcommand per job.

The table below names every subcommand, the module that does the job and its one-line help. Only the
module of the command typed is imported (its `configure(parser)` adds the arguments and the
handler), so one module that cannot import (a missing optional library, a Python too old for it)
takes down its own command and no other, and `hlgfa --help` lists every command without importing
any. The list is explicit: a command is never discovered, so none can silently vanish. Modules keep
heavy imports (torch, onnxruntime, harvesters, tensorrt) inside their handlers.
"""

import argparse
import importlib
import logging
import sys

from edge.core.errors import HlgfaError, exit_status

# command → (module:function that configures its parser, one-line help)
COMMANDS = {
    "run": ("edge.service.daemon_cli:configure_run", "run the inspection daemon for one camera"),
    "config": ("edge.service.daemon_cli:configure_config", "check a daemon config file"),
    "train": ("calibrate.train_cli:configure", "train HLGFA on good images (MVTec layout or a folder)"),
    "eval": ("calibrate.evaluate_cli:configure", "evaluate a model on MVTec-layout test data"),
    "calibrate": ("calibrate.calibrate_cli:configure",
                  "fit image and region thresholds on good parts at a target false-reject rate"),
    "export": ("engines.export_cli:configure", "export a model directory to ONNX (for ONNX Runtime / TensorRT)"),
    "engine": ("engines.engine_cli:configure", "build and check TensorRT engines"),
    "camera": ("edge.sources.cli:configure", "GenICam cameras: list devices, grab frames"),
    "subscribe": ("edge.transport.subscriber:configure", "print decisions from a running daemon's ZeroMQ output"),
    "keys": ("edge.transport.curve_keys:configure", "manage CURVE keys for the ZeroMQ output"),
    "bridge": ("edge.bridge.cli:configure",
               "serve decisions to PLCs: Modbus TCP (server/client), OPC UA, MQTT (docs/PLC.md)"),
    "view": ("edge.view.cli:configure",
             "the operator's web page and the inspection record (a subscriber of the daemons)"),
    "records": ("edge.records.cli:configure", "query or export the inspection record (hlgfa view --records)"),
    "systemd": ("edge.service.systemd_cli:configure", "install the systemd units (one daemon per camera)"),
    "demo": ("calibrate.demo.run:configure",
             "end-to-end demo on solar-cell images: train, export, calibrate, inspect"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed, and the arguments of `command` (if it is one) filled in."""
    parser = argparse.ArgumentParser(prog="hlgfa", description="HLGFA line-side anomaly inspection.")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="default INFO; for `hlgfa run`, the config's logging.level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (target, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module, _, function = target.partition(":")
            getattr(importlib.import_module(module), function)(subparser)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand word of `argv`, read before argparse (which needs to know which module to import)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    signals = None
    if command == "run":
        # Before the imports below and the model load: a SIGHUP or Ctrl-C in the daemon's first
        # second is a request, not a death (edge.core.signals).
        from edge.core.signals import SignalRequests

        signals = SignalRequests().install()
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the command's module imports: no traceback
        return 130
    args.signals = signals
    logging.basicConfig(level=args.log_level or "INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (HlgfaError, KeyboardInterrupt) as error:
        return exit_status(args.command, error)


if __name__ == "__main__":
    sys.exit(main())
