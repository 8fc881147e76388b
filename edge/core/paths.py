"""Writing files: output folders checked before the work that fills them (a path that cannot be
written is a message naming the flag and the path at once, not a traceback after minutes of
scoring), and files replaced atomically."""

import json
import os
import tempfile
from pathlib import Path

from edge.core.errors import ConfigError


def writable_dir(directory: str | Path, what: str) -> Path:
    """Create `directory` if needed and prove a file can be written in it; else ConfigError (78)
    naming `what` (e.g. "--save-maps maps/") and the reason. A probe file, not os.access: access
    bits do not see read-only mounts, ACLs or a full disk's refusals the same way."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".hlgfa-write-probe.", dir=directory)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{what}: cannot write in {directory} ({error.strerror or error}); choose a folder "
                          f"this user can write, or fix its permissions") from None
    return directory


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the new one, never a mix: a temporary file beside `path`,
    flushed to disk, renamed over it. `mode` because the temporary file is created 0600, and the
    daemon's user must read what an administrator wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
