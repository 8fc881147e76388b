"""The view's configuration: a TOML file (`hlgfa view --config view.toml`), every key also a flag.

    connect = "tcp://127.0.0.1:5555"         # the daemon's PUB endpoint (repeatable as a list)
    cameras = ["line1"]                      # default: every camera on the endpoint
    http = "127.0.0.1:8080"                  # loopback by default; any other address needs password_hash
    records = "/var/lib/hlgfa-edge/records"
    frames = "/srv/replay"                   # optional: the folder the daemon replays, for frames + overlays
    password_hash = "scrypt$16384$8$1$..."   # `hlgfa view hash-password`
    tls_cert = "/etc/hlgfa/view.crt"         # optional HTTPS: both or neither
    tls_key = "/etc/hlgfa/view.key"
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
from edge.view.auth import check_hash_format


class RetentionConfig(Section):
    max_age_days: float | None = Field(default=30.0, gt=0)
    max_gb: float | None = Field(default=10.0, gt=0)
    min_free_mb: float = Field(default=256.0, ge=0)
    pass_map_every: int = Field(default=100, ge=0)

    def retention(self) -> Retention:
        return Retention(max_age_s=None if self.max_age_days is None else self.max_age_days * 86400.0,
                         max_bytes=None if self.max_gb is None else int(self.max_gb * 2**30),
                         min_free_bytes=int(self.min_free_mb * 2**20), pass_map_every=self.pass_map_every)


class ViewConfig(Section):
    connect: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5555"], min_length=1)
    cameras: list[str] | None = None
    http: str = "127.0.0.1:8080"
    records: Path
    frames: Path | None = None
    password_hash: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    curve_secret: Path | None = None
    curve_server_key: Path | None = None
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @field_validator("password_hash")
    @classmethod
    def _hash(cls, value):
        return None if value is None else check_hash_format(value)

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
        if not is_loopback(host) and self.password_hash is None:
            raise ValueError(f"http {self.http!r} is reachable from the network: set password_hash "
                             "(`hlgfa view hash-password`), or bind 127.0.0.1")
        return self

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


_PATH_KEYS = ("records", "frames", "tls_cert", "tls_key", "curve_secret", "curve_server_key")


def _resolve_paths(data: dict, folder: Path) -> None:
    if isinstance(data.get("connect"), str):
        data["connect"] = [data["connect"]]
    for key in _PATH_KEYS:
        if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute():
            data[key] = str(folder / data[key])


def build_view_config(file: str | Path | None, overrides: dict) -> ViewConfig:
    """The file's keys (paths relative to its folder), then the flags given (not None)."""
    return load(ViewConfig, file, what="view config", resolve=_resolve_paths,
                overrides=[([key], value) for key, value in overrides.items() if value is not None])
