"""OPC UA, with asyncua: a server with one object per camera under Objects/HLGFA, flat variables a PLC
reads or subscribes to, and a `ResultReadyEventType` event per decision.

    Objects/HLGFA/<camera>/
        Healthy (Boolean), Reason (String), ReasonCode (Int32), Ready, Busy, Fault (Boolean),
        Heartbeat (UInt32: daemon heartbeats received), Session (String),
        Verdict (String: ok/reject/fault), VerdictCode (Int32: 1/2/3), Reject (Boolean),
        Score, Threshold (Double; NaN for a fault without a score), FrameId (UInt64), Seq (UInt32),
        CountOk, CountReject, CountFault (UInt64), ThresholdsVersion (String),
        RecentResults (String[]: the last `recent_results` decisions as JSON, newest last)
    events: ResultReadyEventType (subtype of BaseEventType) emitted by the camera object, with
        Camera, Verdict, Score, Threshold, FrameId, Session, Seq, Reason.

The variables are read-only to clients (a write is answered BadUserAccessDenied). A
decision counts as accepted once every variable was written and its event fired, in the server's own
event loop (a thread of its own; the core's threads hand work to it and wait for the result).

This is not the OPC 40100-1 (Machine Vision) `VisionSystemType`: docs/PLC.md says which of its
conformance units this covers and which it does not.
"""

import asyncio
import collections
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import field_validator, model_validator

from edge.transport import wire
from edge.bridge.core import DeliveryError
from edge.bridge.health import VERDICT_CODES, CameraState
from edge.bridge.serving import serve_in_thread
from edge.core.errors import ConfigError
from edge.core.settings import Section
from edge.core.logs import camera_log

log = logging.getLogger(__name__)

NAMESPACE = "urn:hlgfa-edge:bridge"
SECURITY = ("None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt")


class OpcuaConfig(Section):
    """`[opcua]`. Secure by default: Basic256Sha256 SignAndEncrypt with the certificate and key from
    `hlgfa bridge certs`; "None" (no signing, no encryption) must be asked for."""

    endpoint: str = "opc.tcp://127.0.0.1:4840/hlgfa/"
    security: list[Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]] = \
        ["Basic256Sha256_SignAndEncrypt"]
    certificate: Path | None = None  # the server's certificate (DER or PEM)
    private_key: Path | None = None  # its private key (PEM)
    allow_anonymous: bool = False  # without it, a client identifies itself with its certificate
    trusted_clients: Path | None = None  # directory of the client certificates (DER/PEM) allowed to connect
    recent_results: int = 20
    write_timeout_s: float = 2.0

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        url = urlparse(value)
        if url.scheme != "opc.tcp" or not url.hostname or url.port is None:
            raise ValueError("expected opc.tcp://HOST:PORT[/path], e.g. opc.tcp://127.0.0.1:4840/hlgfa/")
        return value

    @model_validator(mode="after")
    def _certificates(self):
        secure = any(policy != "None" for policy in self.security)
        if secure and (self.certificate is None or self.private_key is None or self.trusted_clients is None):
            raise ValueError(f"security {self.security} needs certificate, private_key (make them with `hlgfa "
                             "bridge certs --out DIR`) and trusted_clients (a directory of the client certificates "
                             "to accept; without it any certificate would do), or security = [\"None\"]")
        if not self.security:
            raise ValueError("security: expected at least one policy")
        if not secure and not self.allow_anonymous:
            raise ValueError('security = ["None"] has no client certificate to identify a client by: it needs '
                             "allow_anonymous = true (or a Basic256Sha256 policy)")
        return self


_VARIABLES = (  # name, variant type name, initial value
    ("Healthy", "Boolean", False), ("Reason", "String", "no_heartbeat_yet"), ("ReasonCode", "Int32", 1),
    ("Ready", "Boolean", False), ("Busy", "Boolean", False), ("Fault", "Boolean", False),
    ("Heartbeat", "UInt32", 0), ("Session", "String", ""),
    ("Verdict", "String", ""), ("VerdictCode", "Int32", 0), ("Reject", "Boolean", False),
    ("Score", "Double", math.nan), ("Threshold", "Double", math.nan), ("FrameId", "UInt64", 0), ("Seq", "UInt32", 0),
    ("CountOk", "UInt64", 0), ("CountReject", "UInt64", 0), ("CountFault", "UInt64", 0),
    ("ThresholdsVersion", "String", ""),
)
_EVENT_FIELDS = (("Camera", "String"), ("Verdict", "String"), ("Score", "Double"), ("Threshold", "Double"),
                 ("FrameId", "UInt64"), ("Session", "String"), ("Seq", "UInt32"), ("Reason", "String"))


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


class OpcuaServer:
    name = "opcua"

    def __init__(self, config: OpcuaConfig):
        try:
            import asyncua  # noqa: F401
        except ImportError:
            raise ConfigError("OPC UA needs asyncua: pip install -c constraints.txt 'hlgfa-edge[bridge]'") from None
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._nodes: dict[str, dict] = {}
        self._events: dict[str, object] = {}
        self._recent: dict[str, collections.deque] = {}
        self._stopped: asyncio.Event | None = None

    def start(self, cameras: list[str]) -> None:
        async def setup() -> None:
            self._stopped = asyncio.Event()
            await self._build(cameras)
            await self._server.start()

        async def serve() -> None:
            await self._stopped.wait()
            await self._server.stop()

        where = f"opcua.endpoint {self.config.endpoint}"
        try:
            self._loop, self._thread = serve_in_thread("opcua-server", setup, serve, timeout_s=60)
        except TimeoutError:
            raise ConfigError(f"{where}: the server did not start within 60 s") from None
        except Exception as error:  # noqa: BLE001 - whatever the library raised, named in the message
            raise ConfigError(f"{where}: cannot serve ({error!r}); expected a local address, a free port, and "
                              "readable certificate files") from None
        if "None" in self.config.security and self.config.allow_anonymous:
            log.warning("OPC UA server %s: no signing, no encryption, anonymous clients allowed: anyone who "
                        "reaches the port reads the line; use Basic256Sha256 on a plant network (docs/PLC.md)",
                        self.config.endpoint)
        log.info("OPC UA server on %s (security %s, anonymous %s)", self.config.endpoint,
                 ", ".join(self.config.security), "allowed" if self.config.allow_anonymous else "refused")

    async def _build(self, cameras: list[str]) -> None:
        from asyncua import Server, ua

        config = self.config
        server = Server()
        await server.init()
        server.set_endpoint(config.endpoint)
        server.set_server_name("hlgfa bridge")
        await server.set_application_uri(NAMESPACE)
        server.set_security_policy([getattr(ua.SecurityPolicyType, "NoSecurity" if p == "None" else p)
                                    for p in config.security])
        secure = any(policy != "None" for policy in config.security)
        server.set_identity_tokens(([ua.X509IdentityToken] if secure else [])
                                   + ([ua.AnonymousIdentityToken] if config.allow_anonymous else []))
        if config.certificate is not None:
            await server.load_certificate(str(config.certificate))
            await server.load_private_key(str(config.private_key))
        if secure:
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

            if not config.trusted_clients.is_dir():
                raise ConfigError(f"opcua.trusted_clients {config.trusted_clients}: not a directory")
            store = TrustStore([config.trusted_clients], [])
            await store.load()
            options = (CertificateValidatorOptions.EXT_VALIDATION | CertificateValidatorOptions.TRUSTED
                       | CertificateValidatorOptions.PEER_CLIENT)
            server.set_certificate_validator(CertificateValidator(options, store))
        idx = await server.register_namespace(NAMESPACE)
        event_type = await server.create_custom_event_type(
            idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType,
            [(name, getattr(ua.VariantType, kind)) for name, kind in _EVENT_FIELDS])
        folder = await server.nodes.objects.add_folder(idx, "HLGFA")
        for camera in cameras:
            obj = await folder.add_object(idx, camera)
            nodes = {}
            for name, kind, initial in _VARIABLES:
                nodes[name] = await obj.add_variable(idx, name, ua.Variant(initial, getattr(ua.VariantType, kind)))
            nodes["RecentResults"] = await obj.add_variable(
                idx, "RecentResults", ua.Variant([], ua.VariantType.String))
            self._nodes[camera] = nodes
            self._recent[camera] = collections.deque(maxlen=config.recent_results)
            self._events[camera] = await server.get_event_generator(event_type, obj)
        self._server = server

    def _run(self, coroutine, what: str):
        if self._loop is None or not self._thread.is_alive():
            coroutine.close()
            raise DeliveryError("OPC UA server is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(self.config.write_timeout_s)
        except TimeoutError:
            future.cancel()
            raise DeliveryError(f"OPC UA server: {what} took longer than {self.config.write_timeout_s} s") from None

    async def _write(self, camera: str, values: dict) -> None:
        from asyncua import ua

        nodes = self._nodes[camera]
        kinds = {name: kind for name, kind, _ in _VARIABLES}
        for name, value in values.items():
            kind = ua.VariantType.String if name == "RecentResults" else getattr(ua.VariantType, kinds[name])
            await nodes[name].write_value(ua.Variant(value, kind))

    def _state_values(self, state: CameraState) -> dict:
        return {"Healthy": state.healthy, "Reason": state.reason, "ReasonCode": state.reason_code,
                "Ready": state.ready, "Busy": state.busy, "Fault": state.fault,
                "Heartbeat": state.heartbeats & 0xFFFFFFFF, "Session": state.session,
                "CountOk": state.counts.get("ok", 0), "CountReject": state.counts.get("reject", 0),
                "CountFault": state.counts.get("fault", 0), "ThresholdsVersion": state.thresholds_version}

    async def _deliver(self, decision: wire.Decision, state: CameraState) -> None:
        camera = decision.camera
        recent = self._recent[camera]
        recent.append(json.dumps({"seq": decision.seq, "frame_id": decision.frame_id, "verdict": decision.verdict,
                                  "score": decision.score, "session": decision.session}, separators=(",", ":")))
        await self._write(camera, {
            **self._state_values(state), "Verdict": decision.verdict, "VerdictCode": VERDICT_CODES[decision.verdict],
            "Reject": decision.verdict in ("reject", "fault"), "Score": _number(decision.score),
            "Threshold": _number(decision.threshold), "FrameId": decision.frame_id, "Seq": decision.seq,
            "RecentResults": list(recent)})
        generator = self._events[camera]
        event = generator.event
        event.Camera, event.Verdict, event.Reason = camera, decision.verdict, decision.reason
        event.Score, event.Threshold = _number(decision.score), _number(decision.threshold)
        event.FrameId, event.Session, event.Seq = decision.frame_id, decision.session, decision.seq
        await generator.trigger(message=f"{camera} frame {decision.frame_id}: {decision.verdict}")

    def deliver(self, decision: wire.Decision, state: CameraState) -> None:
        self._run(self._deliver(decision, state), f"writing decision seq {decision.seq}")

    def show(self, state: CameraState) -> None:
        try:
            self._run(self._write(state.camera, self._state_values(state)), "writing the health")
        except DeliveryError as error:
            camera_log(__name__, state.camera).warning("%s", error)

    def close(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(15)


def make_certificates(out: Path, name: str, hostname: str, client_uri: str | None) -> tuple[Path, Path]:
    """A self-signed application certificate (DER) and its key (PEM, mode 0600) in `out`: the server's
    (application URI = NAMESPACE) or, with `client_uri`, a client's. Returns (certificate, key)."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out.mkdir(parents=True, exist_ok=True)
    certificate, key = out / f"{name}.der", out / f"{name}.key.pem"
    if certificate.exists() or key.exists():
        raise ConfigError(f"{certificate} or {key} exists already; remove them first (a new key invalidates every "
                          "trust list that holds the old certificate)")
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client_uri else ExtendedKeyUsageOID.SERVER_AUTH
    previous = os.umask(0o077)  # the key is never readable by others, not even for a moment
    try:
        asyncio.run(setup_self_signed_certificate(key, certificate, client_uri or NAMESPACE, hostname, [usage],
                                                  {"commonName": name, "organizationName": "hlgfa-edge"}))
    finally:
        os.umask(previous)
    return certificate, key
