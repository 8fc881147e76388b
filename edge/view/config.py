"""The view's configuration: a TOML file (`hlgfa view --config view.toml`), every key also a flag.

    connect = "tcp://127.0.0.1:5555"         # the daemon's PUB endpoint (repeatable as a list)
    cameras = ["line1"]                      # default: every camera on the endpoint
    http = "127.0.0.1:8080"                  # loopback by default; any other address needs a password and TLS
    server_names = ["panel-3.plant"]         # the names the page is opened by (Host/Origin checks)
    records = "/var/lib/hlgfa-edge/records"
    password_hash = "scrypt$16384$8$1$..."   # operators: `hlgfa view --hash-password`
    engineer_password_hash = "scrypt$..."    # engineers: reviews, exports, counter resets
    tls_cert = "/etc/hlgfa/view.crt"         # HTTPS: both or neither
    tls_key = "/etc/hlgfa/view.key"
    [frames]  line1 = "/srv/line1/replay"    # optional: the folder each camera's daemon replays
    [retention]  max_age_days = 30, max_gb = 10, min_free_mb = 256, pass_map_every = 100

docs/VIEW.md is the reference.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from edge.core.settings import Section, load
from edge.records.store import Retention
from edge.transport import wire
from edge.view.auth import check_hash_format


class RetentionConfig(Section):
    max_age_days: float | None = Field(default=30.0, gt=0, le=3660)
    max_gb: float | None = Field(default=10.0, gt=0, le=10**6)
    min_free_mb: float = Field(default=256.0, ge=0, le=10**7)
    pass_map_every: int = Field(default=100, ge=0, le=10**6)

    def retention(self) -> Retention:
        return Retention(max_age_s=None if self.max_age_days is None else self.max_age_days * 86400.0,
                         max_bytes=None if self.max_gb is None else int(self.max_gb * 2**30),
                         min_free_bytes=int(self.min_free_mb * 2**20), pass_map_every=self.pass_map_every)


class ViewConfig(Section):
    connect: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5555"], min_length=1, max_length=64)
    cameras: list[str] | None = None
    http: str = "127.0.0.1:8080"
    server_names: list[str] = Field(default_factory=list, max_length=64)
    records: Path
    frames: dict[str, Path] = Field(default_factory=dict)
    password_hash: str | None = None
    engineer_password_hash: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    curve_secret: Path | None = None
    curve_server_key: Path | None = None
    max_pages: int = Field(default=16, ge=1, le=256)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @field_validator("password_hash", "engineer_password_hash")
    @classmethod
    def _hash(cls, value):
        return None if value is None else check_hash_format(value)

    @field_validator("frames")
    @classmethod
    def _frames(cls, value):
        for camera in value:
            wire.check_camera(camera)
        return value

    @field_validator("server_names")
    @classmethod
    def _names(cls, value):
        for name in value:
            if not name or not all(c.isalnum() or c in ".-:[]" for c in name):
                raise ValueError(f"server name {name!r}: expected a host name or an IP address, without a port")
        return [name.lower().strip("[]") for name in value]

    @field_validator("http")
    @classmethod
    def _http(cls, value):
        host, port = split_http(value)
        return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"

    @model_validator(mode="after")
    def _access(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if (self.curve_secret is None) != (self.curve_server_key is None):
            raise ValueError("curve_secret and curve_server_key go together: set both or neither")
        host, _ = split_http(self.http)
        if not is_loopback(host) and (self.password_hash is None or self.tls_cert is None):
            raise ValueError(f"http {self.http!r} is reachable from the network: set password_hash (`hlgfa view "
                             "--hash-password`) and tls_cert/tls_key (passwords never cross the network in clear "
                             "text), or bind 127.0.0.1")
        return self

    def host_names(self) -> set[str]:
        """The names a browser may address the page by (the Host header): loopback names, the address
        bound, this machine's name, and `server_names`. Any other is refused, so a page of another
        site that resolves its own name to this box (DNS rebinding) reads nothing."""
        names = {"localhost", "127.0.0.1", "::1", *self.server_names}
        if self.host not in ("0.0.0.0", "::"):
            names.add(self.host.lower())
        hostname = socket.gethostname().lower()
        names.update({hostname, hostname.split(".")[0]})
        return names

    @property
    def host(self) -> str:
        return split_http(self.http)[0]

    @property
    def port(self) -> int:
        return split_http(self.http)[1]


def split_http(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Loopback addresses and names that resolve only to loopback addresses."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


_PATH_KEYS = ("records", "tls_cert", "tls_key", "curve_secret", "curve_server_key")


def _resolve_paths(data: dict, folder: Path) -> None:
    if isinstance(data.get("connect"), str):
        data["connect"] = [data["connect"]]
    for table, keys in ((data, _PATH_KEYS), (data.get("frames"), tuple(data.get("frames") or ()))):
        if not isinstance(table, dict):
            continue
        for key in keys:
            if isinstance(table.get(key), str) and not Path(table[key]).expanduser().is_absolute():
                table[key] = str(folder / table[key])


def build_view_config(file: str | Path | None, overrides: dict) -> ViewConfig:
    """The file's keys (paths relative to its folder), then the flags given (not None)."""
    return load(ViewConfig, file, what="view config", resolve=_resolve_paths,
                overrides=[([key], value) for key, value in overrides.items() if value is not None])
