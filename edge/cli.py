"""`hlgfa`: one command-line tool, one subcommand per job.

Each subcommand lives in the module that does the job and exposes `register(subparsers)`,
which adds its parser and sets `handler`. The list below is explicit: a subcommand whose
module fails to import is an error, not a silently missing option. Modules keep heavy
imports (torch, onnxruntime, harvesters, tensorrt) inside their handlers, so `hlgfa --help`
and config checks work on a box that lacks them.
"""

import argparse
import importlib
import logging
import sys
import traceback

from edge.errors import HlgfaError

SUBCOMMAND_MODULES = (
    "edge.subscriber",
    "edge.curve",
    "calibrate.train_cli",
    "calibrate.evaluate_cli",
    "calibrate.calibrate_cli",
    "edge.sources.cli",
    "edge.systemd_cli",
    "edge.daemon_cli",
    "engines.export_cli",
    "engines.engine_cli",
    "calibrate.demo",
    "edge.bridge.cli",
    "edge.records.cli",
    "edge.view.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hlgfa", description="HLGFA line-side anomaly inspection.")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="default INFO; for `hlgfa run`, the config's logging.level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand word of `argv`, without argparse (which needs every subcommand module)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    signals = None
    if _command(argv) == "run":
        # Before the imports below and the model load: a SIGHUP or Ctrl-C in the daemon's first
        # second is a request, not a death (edge.signals).
        from edge.signals import SignalRequests

        signals = SignalRequests().install()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the subcommand modules import: no traceback
        return 130
    args.signals = signals
    logging.basicConfig(level=args.log_level or "INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except (HlgfaError, KeyboardInterrupt) as error:
        return exit_status(args.command, error)


def exit_status(command: str, error: BaseException) -> int:
    """Report `error`, which ended `hlgfa COMMAND`, and return the status the process exits with:
    an `HlgfaError`'s own code, 130 for Ctrl-C, and 1 with the traceback for anything else (a bug),
    as the interpreter itself would."""
    if isinstance(error, HlgfaError):
        print(f"hlgfa {command}: error: {error}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return 130
    traceback.print_exception(error)
    return 1


if __name__ == "__main__":
    sys.exit(main())
