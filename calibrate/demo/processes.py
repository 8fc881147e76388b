"""The demo's steps run each tool as its own process, as a user would, on ports nobody else holds."""

import socket
import subprocess
import sys

from edge.core.errors import HlgfaError

DEMO_CAMERA = "demo"


def hlgfa(*arguments: str) -> None:
    """Run one subcommand as its own process, as a user would, streaming its output."""
    command = [sys.executable, "-m", "edge.cli", *arguments]
    result = subprocess.run(command)
    if result.returncode != 0:
        raise HlgfaError(f"demo: `hlgfa {' '.join(arguments)}` failed with exit code {result.returncode}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
