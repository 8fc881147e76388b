"""Exceptions that carry a sysexits exit code, so a supervisor can tell causes apart."""


class HlgfaError(Exception):
    """Base of every error the CLI turns into a message and an exit code."""

    exit_code = 1


class ConfigError(HlgfaError):
    """A config file, flag or thresholds file is malformed or does not fit the model."""

    exit_code = 78  # EX_CONFIG


class InputDataError(HlgfaError):
    """An image, dataset folder or recording cannot be used as given."""

    exit_code = 65  # EX_DATAERR


class ModelFileError(HlgfaError):
    """A model directory, ONNX file or engine is missing, truncated or for another model."""

    exit_code = 66  # EX_NOINPUT


class BackendError(HlgfaError):
    """An inference backend failed to load or to run."""

    exit_code = 70  # EX_SOFTWARE


class SourceError(HlgfaError):
    """A camera or frame source cannot be opened or stopped delivering."""

    exit_code = 69  # EX_UNAVAILABLE


class StageError(HlgfaError):
    """A pipeline stage died or stalled, or the backend kept failing past its restarts: the process
    ends so that the service manager starts a clean one."""

    exit_code = 70  # EX_SOFTWARE


class OutputError(HlgfaError):
    """Decisions can no longer be published."""

    exit_code = 69  # EX_UNAVAILABLE


def exit_status(command: str, error: BaseException) -> int:
    """Report `error`, which ended `hlgfa COMMAND`, and return the status the process exits with:
    an `HlgfaError`'s own code, 130 for Ctrl-C, and 1 with the traceback for anything else (a bug),
    as the interpreter itself would."""
    import sys
    import traceback

    # The status must survive a stderr that cannot be written (a full disk under the journal): a
    # refusal that exits 1 instead of 78 makes systemd restart what it should leave stopped.
    try:
        if isinstance(error, HlgfaError):
            print(f"hlgfa {command}: error: {error}", file=sys.stderr)
        elif not isinstance(error, KeyboardInterrupt):
            traceback.print_exception(error)
    except OSError:
        pass
    if isinstance(error, HlgfaError):
        return error.exit_code
    return 130 if isinstance(error, KeyboardInterrupt) else 1
