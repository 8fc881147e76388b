"""`hlgfa bridge`: the config file (or flags for one camera), and the process around the core.

The main thread owns signals and the systemd watchdog: it pings only while every camera's thread
turns its loop, so a hung bridge is killed and restarted by systemd instead of showing a stale
"healthy" (a PLC also sees its heartbeat counter stop).
"""

import argparse
import logging
import signal
import threading
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from edge.transport import wire
from edge.bridge.health import FaultRateConfig
from edge.bridge.modbus import ModbusClientConfig, ModbusServerConfig
from edge.bridge.mqtt import MqttConfig
from edge.bridge.opcua import OpcuaConfig
from edge.core.errors import ConfigError
from edge.core.settings import Section, load, read_toml

log = logging.getLogger(__name__)

LOOP_PERIOD_S = 0.1
STALL_S = 5.0  # a camera thread whose loop has not turned for this long stops the watchdog pings


class CameraEntry(Section):
    """`[[cameras]]`: one camera daemon."""

    name: str = "cam0"
    connect: str  # its PUB endpoint (`publish.endpoint` of the daemon)
    reliable: str  # its acknowledged channel (`publish.reliable_endpoint`)
    curve_secret: Path | None = None  # this bridge's NAME.key_secret, when the daemon uses CURVE
    curve_server_key: Path | None = None  # the daemon's public server.key

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return wire.check_camera(value)
        except wire.WireError as error:
            raise ValueError(str(error)) from None

    @model_validator(mode="after")
    def _curve_pair(self):
        if (self.curve_secret is None) != (self.curve_server_key is None):
            raise ValueError("CURVE needs both curve_secret and curve_server_key")
        return self


class BridgeConfig(Section):
    cameras: list[CameraEntry] = Field(min_length=1)
    misses: int = Field(3, ge=1)  # heartbeat periods without one before a camera is unhealthy
    retry_s: float = Field(0.5, gt=0)  # a protocol that refused a decision gets it again after this
    backlog: int = Field(10_000, ge=1)  # decisions held for a refusing protocol before the daemon must buffer
    fault_rate: FaultRateConfig = Field(default_factory=FaultRateConfig)  # when parts' faults make a camera unhealthy
    # A result the PLC must acknowledge (Modbus RESULT_ACK, OPC UA ResultAck) within this time, or it is
    # counted and reported late; unset: the PLC acknowledges nothing.
    result_ack_timeout_s: float | None = Field(None, gt=0, le=3600)
    part_answer_timeout_s: float = Field(1.0, gt=0, le=60)  # a part id the daemon does not confirm by then is refused
    modbus_server: ModbusServerConfig | None = None
    modbus_client: ModbusClientConfig | None = None
    mqtt: MqttConfig | None = None
    opcua: OpcuaConfig | None = None

    @model_validator(mode="after")
    def _sane(self):
        names = [camera.name for camera in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names {names}: each may appear once")
        if not any((self.modbus_server, self.modbus_client, self.mqtt, self.opcua)):
            raise ValueError("no protocol enabled: configure at least one of [modbus_server], [modbus_client], "
                             "[mqtt], [opcua]")
        return self


_PATH_KEYS = ("curve_secret", "curve_server_key", "password_file", "tls_ca", "tls_cert", "tls_key",
              "certificate", "private_key", "trusted_clients")


def _resolve_paths(data: dict, base: Path) -> None:
    """Paths in a file are relative to its directory."""
    tables = [data, *data.get("cameras", [])] + [v for v in data.values() if isinstance(v, dict)]
    for table in tables:
        if isinstance(table, dict):
            for key in _PATH_KEYS:
                if isinstance(table.get(key), str):
                    table[key] = str((base / table[key]).resolve()) if not Path(table[key]).is_absolute() \
                        else table[key]


def build_config(file: Path | None, flags: dict) -> BridgeConfig:
    if "cameras" in flags and file is not None and read_toml(Path(file))[0].get("cameras"):
        raise ConfigError("--connect/--reliable describe one camera; the config file already lists cameras")
    return load(BridgeConfig, file, resolve=_resolve_paths, overrides=[([key], value) for key, value in flags.items()])


def make_adapters(config: BridgeConfig) -> list:
    adapters = []
    if config.modbus_server is not None:
        from edge.bridge.modbus import ModbusServer

        adapters.append(ModbusServer(config.modbus_server))
    if config.modbus_client is not None:
        from edge.bridge.modbus import ModbusClient

        adapters.append(ModbusClient(config.modbus_client))
    if config.opcua is not None:
        from edge.bridge.opcua import OpcuaServer

        adapters.append(OpcuaServer(config.opcua))
    if config.mqtt is not None:
        from edge.bridge.mqtt import Mqtt

        adapters.append(Mqtt(config.mqtt))
    return adapters


def make_links(config: BridgeConfig) -> list:
    from edge.bridge.core import CameraLink
    from edge.transport.curve_keys import ClientCurve

    return [CameraLink(camera.name, camera.connect, camera.reliable,
                       ClientCurve(camera.curve_secret, camera.curve_server_key) if camera.curve_secret else None)
            for camera in config.cameras]


def camera_options(config: BridgeConfig) -> dict:
    """What each camera's thread takes from the config (edge.bridge.core.CameraBridge)."""
    return dict(misses=config.misses, retry_s=config.retry_s, backlog=config.backlog, fault_rate=config.fault_rate,
                result_ack_timeout_s=config.result_ack_timeout_s, part_answer_timeout_s=config.part_answer_timeout_s)


def _flags(args: argparse.Namespace) -> dict:
    flags: dict = {}
    if args.connect or args.reliable:
        if not (args.connect and args.reliable):
            raise ConfigError("--connect and --reliable go together: the daemon's PUB endpoint and its "
                              "acknowledged channel (`hlgfa run --publish ... --reliable ...`)")
        flags["cameras"] = [{"name": args.camera, "connect": args.connect, "reliable": args.reliable}]
    if args.modbus_server:
        flags["modbus_server"] = {"listen": args.modbus_server}
    if args.modbus_client:
        flags["modbus_client"] = {"plc": args.modbus_client}
    if args.opcua_server:
        # The quick start has no certificates: no security, anonymous. A config file is the way to
        # Basic256Sha256 (docs/PLC.md); the server's start logs which it serves.
        flags["opcua"] = {"endpoint": args.opcua_server, "security": ["None"], "allow_anonymous": True}
    if args.mqtt_broker:
        flags["mqtt"] = {"broker": args.mqtt_broker}
    return flags


def _certs(args: argparse.Namespace) -> int:
    import socket

    from edge.bridge.opcua import endpoint_names, make_certificates

    if args.out is None:
        raise ConfigError("hlgfa bridge certs needs --out DIR")
    hostnames, addresses = list(args.hostname or []), list(args.ip or [])
    endpoint = args.endpoint
    if endpoint is None and args.config is not None and not args.client_uri:
        opcua = build_config(args.config, {}).opcua
        endpoint = opcua.endpoint if opcua is not None else None
    if endpoint is not None:
        names, ips = endpoint_names(endpoint)
        hostnames, addresses = hostnames + names, addresses + ips
    if not hostnames:
        hostnames = [socket.gethostname()]
    certificate, key = make_certificates(args.out, args.name, hostnames, addresses, args.client_uri, days=args.days,
                                         renew=args.renew)
    print(f"certificate {certificate} ({'renewed, ' if args.renew else ''}valid {args.days} days; DNS "
          f"{', '.join(dict.fromkeys(hostnames))}; IP {', '.join(dict.fromkeys(addresses)) or '-'})\n"
          f"private key {key} (mode 0600)")
    return 0


def _nodeset(args: argparse.Namespace) -> int:
    import asyncio

    from edge.bridge.opcua import export_nodeset

    if args.out is None:
        raise ConfigError("hlgfa bridge nodeset needs --out FILE")
    cameras = ([camera.name for camera in build_config(args.config, {}).cameras] if args.config is not None
               else [wire.check_camera(args.camera)])
    count = asyncio.run(export_nodeset(cameras, args.out))
    print(f"{args.out}: {count} nodes of namespace urn:hlgfa-edge:bridge for {', '.join(cameras)} (it requires the "
          "OPC 40100-1 Machine Vision NodeSet, shipped in edge/bridge/third_party/opcua_machine_vision/)")
    return 0


def _handler(args: argparse.Namespace) -> int:
    from edge.bridge.core import Bridge
    from edge.core.notify import SystemdNotifier

    # asyncua logs every node of the standard address space it loads at INFO
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.action == "certs":
        return _certs(args)
    if args.action == "nodeset":
        return _nodeset(args)
    config = build_config(args.config, _flags(args))
    if args.check:
        print(config.model_dump_json(indent=2))
        return 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    notifier = SystemdNotifier()
    bridge = Bridge(make_links(config), make_adapters(config), **camera_options(config))
    try:
        bridge.start()
        names = ", ".join(adapter.name for adapter in bridge.adapters)
        log.info("bridge serving %s on %s", ", ".join(bridge.cameras), names)
        notifier.ready(f"serving {len(bridge.cameras)} camera(s) on {names}")
        interval = notifier.watchdog_interval()
        last_ping = 0.0
        last_status = ""
        import time

        while not stop.wait(LOOP_PERIOD_S):
            stalled = bridge.stalled(STALL_S)
            if stalled:
                log.error("camera thread(s) %s stalled or died: no more watchdog pings", ", ".join(stalled))
                continue
            now = time.monotonic()
            if interval is not None and now - last_ping >= interval:
                notifier.watchdog()
                last_ping = now
            status = "; ".join(f"{name} {'healthy' if s.healthy else s.reason}" for name, s in bridge.states().items())
            status += "".join(f"; OPC UA certificate expires in {adapter.certificate_days_left} days"
                              for adapter in bridge.adapters
                              if getattr(adapter, "certificate_days_left", None) is not None
                              and adapter.certificate_days_left < adapter.config.certificate_warn_days)
            if status != last_status:
                notifier.status(status)
                last_status = status
        notifier.stopping("stopping")
    finally:
        bridge.close()
    return 0


def configure(parser) -> None:
    """The arguments and handler of `hlgfa bridge` (edge/cli.py names the command and its one-line help)."""
    parser.description = (
        "Subscribe to camera daemons and serve their decisions and health over Modbus TCP "
        "(server the PLC polls, or client writing into the PLC), OPC UA (server) and MQTT "
        "(to a broker). A camera that goes quiet, faults or restarts is shown not healthy on "
        "every protocol at once. See docs/PLC.md.")
    parser.add_argument("action", nargs="?", choices=("certs", "nodeset"),
                        help="certs: make (or --renew) a self-signed OPC UA application certificate and key (--out "
                             "DIR); nodeset: write the bridge's OPC UA address space as a NodeSet2 file (--out FILE)")
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML config (docs/PLC.md)")
    parser.add_argument("--check", action="store_true", help="validate the config, print it, exit")
    parser.add_argument("--camera", default="cam0", help="camera name, with --connect/--reliable (default cam0)")
    parser.add_argument("--connect", metavar="EP", help="the daemon's PUB endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--reliable", metavar="EP", help="the daemon's acknowledged channel, e.g. tcp://127.0.0.1:5556")
    parser.add_argument("--modbus-server", metavar="HOST:PORT", help="Modbus TCP server for the PLC to poll")
    parser.add_argument("--modbus-client", metavar="HOST:PORT", help="Modbus TCP PLC to write into")
    parser.add_argument("--opcua-server", metavar="opc.tcp://HOST:PORT", help="OPC UA server endpoint")
    parser.add_argument("--mqtt-broker", metavar="HOST:PORT", help="MQTT broker to publish to")
    certs = parser.add_argument_group("certs and nodeset")
    certs.add_argument("--out", type=Path, metavar="PATH", help="certs: the directory for NAME.der and NAME.key.pem; "
                                                                "nodeset: the file to write")
    certs.add_argument("--name", default="server", help="file and common name (default server)")
    certs.add_argument("--hostname", action="append", metavar="NAME",
                       help="a DNS name for the certificate (repeatable; default the endpoint's host, else this host's name)")
    certs.add_argument("--ip", action="append", metavar="ADDRESS", help="an IP address for the certificate (repeatable)")
    certs.add_argument("--endpoint", metavar="opc.tcp://HOST:PORT",
                       help="take the names from this endpoint (default: [opcua] endpoint of --config)")
    certs.add_argument("--days", type=int, default=3650, help="validity in days (default 3650, ten years)")
    certs.add_argument("--renew", action="store_true", help="a new certificate for the existing key (the old one "
                                                            "is kept as NAME.der.old)")
    certs.add_argument("--client-uri", metavar="URI",
                       help="make a client certificate with this application URI instead of the server's")
    parser.set_defaults(handler=_handler)
