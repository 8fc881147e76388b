"""Endpoints the daemon binds, checked as strictly as the bind itself would check them."""

from __future__ import annotations

from pathlib import Path


def check_local_address(host: str, endpoint: str) -> None:
    """`host` of a tcp endpoint the daemon binds: `*`, a network interface's name, or a name or IPv4
    address of this machine. Proved by binding a plain socket to it on port 0 (any free port), so
    the check never collides with a daemon already running on the endpoint's own port."""
    import socket

    if host == "*" or host in {name for _, name in socket.if_nameindex()}:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)}
    except socket.gaierror as error:
        raise ValueError(f"{endpoint!r}: address {host!r} does not resolve to an IPv4 address ({error.strerror}); "
                         f"expected *, an interface name or an address of this machine") from None
    for address in sorted(addresses):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((address, 0))
                return
            except OSError as error:
                reason = error.strerror
    raise ValueError(f"{endpoint!r}: address {host!r} ({', '.join(sorted(addresses))}) cannot be bound here "
                     f"({reason}): not an address of this machine")


def check_bind_endpoint(endpoint: str) -> str:
    """An endpoint the daemon binds, checked as strictly as the bind itself would be, so `config check`
    refuses what `run` would: ZeroMQ binds tcp://H:99999 to another port without a word, and a
    subscriber could never find it."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{endpoint!r}: expected tcp://ADDRESS:PORT, e.g. tcp://127.0.0.1:5555")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{endpoint!r}: port {port!r} must be a number from 1 to 65535 (subscribers connect "
                             f"to it, so it cannot be left to chance)")
        check_local_address(host, endpoint)
    elif scheme == "ipc":
        folder = Path(rest).parent
        if not rest or not folder.is_dir():
            raise ValueError(f"{endpoint!r}: the folder {folder} for the socket file does not exist")
    return endpoint


def same_endpoint(first: str, second: str) -> bool:
    """Would binding both collide: the same ipc file, or tcp on one port where the addresses overlap
    (equal, resolving to a common address, or either `*`)? Interface names are compared as names."""
    import socket

    scheme, _, rest = first.partition("://")
    other_scheme, _, other_rest = second.partition("://")
    if scheme != other_scheme:
        return False
    if scheme != "tcp":
        return (Path(rest).resolve() == Path(other_rest).resolve()) if scheme == "ipc" else rest == other_rest
    (host, _, port), (other_host, _, other_port) = rest.rpartition(":"), other_rest.rpartition(":")
    if port != other_port:
        return False
    if host == other_host or "*" in (host, other_host) or "0.0.0.0" in (host, other_host):
        return True

    def addresses(name: str) -> set[str]:
        try:
            return {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)}
        except (socket.gaierror, UnicodeError):
            return set()  # an interface name, compared as a name above

    return bool(addresses(host) & addresses(other_host))
