"""Free loopback ports for tests that bind servers. The daemon's config refuses a wildcard port
(subscribers must know where to connect), so tests ask the kernel for one that is free now."""

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"
