"""Output folders checked before the work that fills them, so a path that cannot be written is a
message naming the flag and the path at once, not a traceback after minutes of scoring."""

import os
import tempfile
from pathlib import Path

from edge.errors import ConfigError


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
