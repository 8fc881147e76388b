"""OPC UA, with asyncua: OPC 40100-1 (Machine Vision) per camera from the official NodeSet, and a flat
variable folder for PLCs that only read variables.

    Objects/HLGFA/<camera>                 a VisionSystemType (MV ns=…;i=1003) instance, NodeId s=<camera>
        VisionStateMachine                 CurrentState Preoperational / Operational / Error / Halted from
                                           the camera's health; Halt and Reset bound to the bridge
            AutomaticModeStateMachine      StartSingleJob(PartId) hands the part id to the daemon; CurrentState
                                           Ready / SingleExecution; StartContinuous, Stop, Abort: BadNotSupported
        ResultManagement                   GetResultById, GetResultComponentsById, GetResultListFiltered over
                                           the last `recent_results` results
        Healthy, Reason, ...               the flat variables (`_VARIABLES`), NodeId s=<camera>.<Name>
        CmdPartId, CmdTrigger, CmdResultAck  writable: the Modbus commands for clients that only write variables
    events: HlgfaResultReadyEventType, a subtype of MV ResultReadyEventType (i=1024) with its mandatory
        fields and ours (Camera, Verdict, Score, Threshold, FrameId, Session, Seq, Reason), from the camera
        object and from the Server object; Severity by verdict (`SEVERITY`).

Every NodeId of ours is a string derived from the camera and the browse path (`s=line1.Healthy`,
`s=line1.VisionStateMachine.CurrentState`): adding a camera changes no existing NodeId. A value carries
its status: BadWaitingForInitialData until the first heartbeat (health) or decision (result), then
Good; when the daemon falls silent the daemon's values turn BadNoCommunication and the last result
UncertainLastUsableValue. SourceTimestamp is the daemon's own time of the heartbeat or decision.

The flat variables are read-only to clients but for the three commands (a write elsewhere is answered
BadUserAccessDenied). A decision counts as accepted once every variable was written and its event fired,
in the server's own event loop (a thread of its own; the core's threads hand work to it and wait).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import ipaddress
import json
import logging
import math
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from edge.transport import wire
from edge.bridge.core import DeliveryError
from edge.bridge.health import FAULT_CODES, VERDICT_CODES, CameraState, fault_kind
from edge.bridge.serving import serve_in_thread
from edge.core.errors import ConfigError, InputDataError
from edge.core.settings import Section
from edge.core.logs import camera_log

log = logging.getLogger(__name__)

NAMESPACE = "urn:hlgfa-edge:bridge"
SECURITY = ("None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt")
MV_NAMESPACE = "http://opcfoundation.org/UA/MachineVision"
NODESET = Path(__file__).parent / "third_party" / "opcua_machine_vision" / "Opc.Ua.MachineVision.NodeSet2.xml"
# MV NodeIds (third_party/opcua_machine_vision/Opc.Ua.MachineVision.NodeIds.csv)
MV_VISION_SYSTEM, MV_RESULT_MANAGEMENT, MV_AUTOMATIC_MODE, MV_RESULT_READY = 1003, 1007, 1021, 1024
# The states of VisionStateMachineType (i=1017) and VisionAutomaticModeStateMachineType (i=1021): the ids
# CurrentState.Id names.
MV_STATES = {"Preoperational": 5028, "Halted": 5029, "Error": 5030, "Operational": 5031}
MV_AUTOMATIC_STATES = {"Ready": 5057, "SingleExecution": 5058}
SEVERITY = {"ok": 100, "reject": 500, "fault": 700}  # OPC UA event severity 1-1000
RESULT_STATE = {"ok": 1, "reject": 1, "fault": 4}     # 40100-1 §12.19: 1 Completed, 4 Failed (not judged)
CERTIFICATE_DAYS = 3650


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
    recent_results: int = Field(default=100, ge=1, le=100_000)  # what ResultManagement and RecentResults hold
    write_timeout_s: float = Field(default=2.0, gt=0, le=60)
    certificate_warn_days: int = Field(default=60, ge=0, le=3650)  # warn this long before the certificate expires

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


# The flat variables: name, variant type, and which of the camera's values it shows, which sets its status:
# "health" (the bridge's own judgement: always Good), "daemon" (what the daemon's heartbeats say) or "result"
# (the last decision).
_VARIABLES = (
    ("Healthy", "Boolean", "health"), ("Reason", "String", "health"), ("ReasonCode", "Int32", "health"),
    ("Ready", "Boolean", "daemon"), ("Busy", "Boolean", "daemon"), ("Fault", "Boolean", "daemon"),
    ("Heartbeat", "UInt32", "daemon"), ("Session", "String", "daemon"),
    ("Verdict", "String", "result"), ("VerdictCode", "Int32", "result"), ("Reject", "Boolean", "result"),
    ("Score", "Double", "result"), ("Threshold", "Double", "result"), ("FrameId", "Int64", "result"),
    ("Seq", "UInt32", "result"),
    ("CountOk", "UInt64", "daemon"), ("CountReject", "UInt64", "daemon"), ("CountFault", "UInt64", "daemon"),
    ("ThresholdsVersion", "String", "daemon"),
    ("PartId", "String", "result"), ("FaultCode", "Int32", "result"), ("RecentFaults", "UInt32", "daemon"),
    ("PartsPending", "UInt32", "daemon"), ("LateResults", "UInt64", "daemon"), ("AckedSeq", "UInt32", "daemon"),
    ("TriggerAck", "UInt32", "daemon"), ("TriggerError", "String", "daemon"),
)
_COMMANDS = (("CmdPartId", "String", ""), ("CmdTrigger", "UInt32", 0), ("CmdResultAck", "UInt32", 0))
# Ours, beside the MV ResultReadyEventType's own fields.
_EVENT_FIELDS = (("Camera", "String"), ("Verdict", "String"), ("Score", "Double"), ("Threshold", "Double"),
                 ("FrameId", "Int64"), ("Session", "String"), ("Seq", "UInt32"), ("Reason", "String"))


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _utc(wall_ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(wall_ns / 1e9, datetime.timezone.utc)


def mv_state(state: CameraState) -> str:
    """The VisionStateMachine state a camera's health maps to."""
    if state.reason in ("halted", "stopping", "bridge_stopped"):
        return "Halted"
    if state.reason == "no_heartbeat_yet":
        return "Preoperational"
    return "Operational" if state.healthy else "Error"


def result_id(decision: wire.Decision) -> str:
    """Unique over daemon restarts: the daemon's session and the decision's seq."""
    return f"{decision.session}-{decision.seq}"


@dataclass
class _Camera:
    nodes: dict
    recent: collections.deque
    event: object
    trigger_ack: int = 0
    trigger_error: str = ""
    job_ids: dict = field(default_factory=dict)  # part id → the JobId StartSingleJob returned for it


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
        self._cameras: dict[str, _Camera] = {}
        self._controls = None
        self._idx = 0
        self._mv = 0
        self._stopped: asyncio.Event | None = None
        self._written_last: dict = {}  # NodeId → (value, status, source time) last written
        self.certificate_days_left: int | None = None

    # ----------------------------------------------------------------------------- start

    def start(self, cameras: list[str], controls=None) -> None:
        self._controls = controls

        async def setup() -> None:
            self._stopped = asyncio.Event()
            await self._build(cameras)
            await self._server.start()

        async def serve() -> None:
            await self._stopped.wait()
            await self._server.stop()

        where = f"opcua.endpoint {self.config.endpoint}"
        try:
            self._loop, self._thread = serve_in_thread("opcua-server", setup, serve, timeout_s=120)
        except TimeoutError:
            raise ConfigError(f"{where}: the server did not start within 120 s") from None
        except ConfigError:
            raise
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
        await _build_info(server)
        server.set_security_policy([getattr(ua.SecurityPolicyType, "NoSecurity" if p == "None" else p)
                                    for p in config.security])
        secure = any(policy != "None" for policy in config.security)
        server.set_identity_tokens(([ua.X509IdentityToken] if secure else [])
                                   + ([ua.AnonymousIdentityToken] if config.allow_anonymous else []))
        if config.certificate is not None:
            await server.load_certificate(str(config.certificate))
            await server.load_private_key(str(config.private_key))
            self._check_certificate(config.certificate)
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
        await build_address_space(self, server, cameras)
        from asyncua.common.callback import CallbackType

        server.subscribe_server_callback(CallbackType.PostWrite, self._written)

    def _check_certificate(self, path: Path) -> None:
        not_after = certificate_expiry(path)
        days = (not_after - datetime.datetime.now(datetime.timezone.utc)).days
        self.certificate_days_left = days
        if days < self.config.certificate_warn_days:
            log.warning("OPC UA certificate %s expires on %s, in %d day(s): renew it with `hlgfa bridge certs --renew "
                        "--out %s --name %s` and give the new certificate to every client", path,
                        not_after.date().isoformat(), days, path.parent, path.stem)

    # ----------------------------------------------------------- called from the core's threads

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

    def deliver(self, decision: wire.Decision, state: CameraState) -> None:
        self._run(self._deliver(decision, state), f"writing decision seq {decision.seq}")

    def show(self, state: CameraState) -> None:
        try:
            self._run(self._show(state), "writing the health")
        except DeliveryError as error:
            camera_log(__name__, state.camera).warning("%s", error)

    def close(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(15)

    # ------------------------------------------------------------------ in the server's loop

    async def _show(self, state: CameraState, decision: wire.Decision | None = None) -> None:
        from asyncua import ua

        camera = self._cameras[state.camera]
        last = decision if decision is not None else (camera.recent[-1][0] if camera.recent else None)
        values = flat_values(state, last, camera)
        heard = state.heartbeats > 0
        silent = state.reason in ("heartbeat_timeout", "bridge_stopped")
        now = datetime.datetime.now(datetime.timezone.utc)
        daemon_time = _utc(state.heartbeat_wall_ns) if state.heartbeat_wall_ns else now
        for name, kind, shows in _VARIABLES:
            if shows == "health":
                status, stamp = ua.StatusCodes.Good, now
            elif shows == "daemon":
                status = (ua.StatusCodes.BadWaitingForInitialData if not heard else
                          ua.StatusCodes.BadNoCommunication if silent else ua.StatusCodes.Good)
                stamp = daemon_time
            else:
                status = (ua.StatusCodes.BadWaitingForInitialData if last is None else
                          ua.StatusCodes.UncertainLastUsableValue if silent else ua.StatusCodes.Good)
                stamp = _utc(last.wall_ns) if last is not None and last.wall_ns else now
            await self._write(camera.nodes[name], ua.Variant(values[name], getattr(ua.VariantType, kind)), status, stamp,
                              new_time_is_news=shows == "result")
        if decision is not None:
            recent = [text for _, _, text in camera.recent]
            await self._write(camera.nodes["RecentResults"], ua.Variant(recent, ua.VariantType.String),
                              ua.StatusCodes.Good, _utc(last.wall_ns) if last.wall_ns else now)
        machine = mv_state(state)
        await self._write_state(camera.nodes["CurrentState"], camera.nodes["CurrentState.Id"], machine,
                                ua.NodeId(MV_STATES[machine], self._mv))
        automatic = "SingleExecution" if state.parts_pending else "Ready"
        await self._write_state(camera.nodes["AutomaticState"], camera.nodes["AutomaticState.Id"], automatic,
                                ua.NodeId(MV_AUTOMATIC_STATES[automatic], self._mv))

    async def _write(self, node, variant, status, stamp, new_time_is_news: bool = True) -> None:
        """Write a value with its status and source time; skipped when it holds them already (a decision
        changes a dozen of the values, a heartbeat a few). With `new_time_is_news` False a new source time
        alone is not written (the bridge's own judgement, stamped when it changes)."""
        from asyncua import ua

        key = None if isinstance(variant.Value, list) else \
            (variant.Value, status, stamp) if new_time_is_news else (variant.Value, status)
        if key is not None and self._written_last.get(node.nodeid) == key:
            return
        self._written_last[node.nodeid] = key
        await self._server.write_attribute_value(node.nodeid, ua.DataValue(
            variant, StatusCode=ua.StatusCode(status), SourceTimestamp=stamp,
            ServerTimestamp=datetime.datetime.now(datetime.timezone.utc)))

    async def _write_state(self, state_node, id_node, name: str, state_id) -> None:
        from asyncua import ua

        now = datetime.datetime.now(datetime.timezone.utc)
        await self._write(state_node, ua.Variant(ua.LocalizedText(name), ua.VariantType.LocalizedText),
                          ua.StatusCodes.Good, now, new_time_is_news=False)
        await self._write(id_node, ua.Variant(state_id, ua.VariantType.NodeId), ua.StatusCodes.Good, now,
                          new_time_is_news=False)

    async def _deliver(self, decision: wire.Decision, state: CameraState) -> None:
        from asyncua import ua

        camera = self._cameras[decision.camera]
        job_id = camera.job_ids.pop(decision.part_id, None) if decision.part_id is not None else None
        job_id = job_id or (f"part:{decision.part_id}" if decision.part_id is not None else f"frames:{decision.session}")
        camera.recent.append((decision, job_id, json.dumps(summary(decision), separators=(",", ":"))))
        await self._show(state, decision)
        generator = camera.event
        event = generator.event
        for name, value in mv_result_fields(decision, job_id).items():
            setattr(event, name, value)
        event.Camera, event.Verdict, event.Reason = decision.camera, decision.verdict, decision.reason
        event.Score, event.Threshold = _number(decision.score), _number(decision.threshold)
        event.FrameId, event.Session, event.Seq = decision.frame_id, decision.session, decision.seq
        event.Severity = SEVERITY[decision.verdict]
        part = "" if decision.part_id is None else f" part {decision.part_id}"
        await generator.trigger(time_attr=_utc(decision.wall_ns) if decision.wall_ns else None,
                                message=f"{decision.camera} frame {decision.frame_id}{part}: {decision.verdict}")
        # the same event (same EventId) from the Server object, for clients subscribed there
        event.emitting_node = ua.NodeId(ua.ObjectIds.Server)
        try:
            await self._server.iserver.isession.subscription_service.trigger_event(event)
        finally:
            event.emitting_node = camera.nodes["object"].nodeid

    # ---------------------------------------------------------------- the PLC's writes and calls

    async def _written(self, event, dispatcher) -> None:
        """After a client's Write: a new CmdTrigger hands CmdPartId to the daemon; CmdResultAck acknowledges."""
        from asyncua import ua

        for item, result in zip(event.request_params.NodesToWrite, event.response_params):
            if not result.is_good() or item.NodeId.NamespaceIndex != self._idx or not isinstance(item.NodeId.Identifier, str):
                continue
            camera_name, _, name = item.NodeId.Identifier.partition(".")
            camera = self._cameras.get(camera_name)
            if camera is None or self._controls is None:
                continue
            if name == "CmdTrigger":
                part_id = await camera.nodes["CmdPartId"].read_value()
                trigger = int(item.Value.Value.Value)
                try:
                    reply = await asyncio.wrap_future(self._controls.request_part(camera_name, part_id))
                except wire.WireError as error:
                    camera.trigger_error = str(error)
                else:
                    if reply.accepted:
                        camera.trigger_ack, camera.trigger_error = trigger, ""
                    else:
                        camera.trigger_error = reply.error
                await self._write(camera.nodes["TriggerAck"], ua.Variant(camera.trigger_ack, ua.VariantType.UInt32),
                                  ua.StatusCodes.Good, datetime.datetime.now(datetime.timezone.utc))
                await self._write(camera.nodes["TriggerError"], ua.Variant(camera.trigger_error, ua.VariantType.String),
                                  ua.StatusCodes.Good, datetime.datetime.now(datetime.timezone.utc))
            elif name == "CmdResultAck":
                self._controls.acknowledge_result(camera_name, int(item.Value.Value.Value))

    async def start_single_job(self, camera_name: str, part_id: str) -> tuple[object, int]:
        """StartSingleJob: (JobIdDataType, Error 0) once the daemon armed the part; a refusal is a Bad StatusCode."""
        from asyncua import ua
        from asyncua.ua.uaerrors import UaStatusCodeError

        camera = self._cameras[camera_name]
        if self._controls is None:
            raise UaStatusCodeError(ua.StatusCodes.BadNotSupported)
        try:
            future = self._controls.request_part(camera_name, part_id)
        except wire.WireError:
            raise UaStatusCodeError(ua.StatusCodes.BadInvalidArgument) from None
        reply = await asyncio.wrap_future(future)
        if not reply.accepted:
            camera_log(__name__, camera_name).warning("StartSingleJob for part %r refused: %s", part_id, reply.error)
            raise UaStatusCodeError(ua.StatusCodes.BadNoCommunication if reply.job == 0 else
                                    ua.StatusCodes.BadInvalidState)
        job_id = f"{reply.origin}-{reply.job}"
        camera.job_ids[part_id] = job_id
        while len(camera.job_ids) > self.config.recent_results:
            camera.job_ids.pop(next(iter(camera.job_ids)))
        return ua.JobIdDataType(Id=job_id), 0

    def halt(self, camera_name: str, halted: bool) -> None:
        """Halt: the camera is Halted and not healthy (the line stops) until Reset; Reset also forgets a
        latched error."""
        if self._controls is None:
            return
        if halted:
            self._controls.halt(camera_name)
        else:
            self._controls.reset(camera_name)

    def results(self, camera_name: str) -> list[tuple[wire.Decision, str]]:
        """(decision, job id) of the recent results, oldest first."""
        return [(decision, job_id) for decision, job_id, _ in self._cameras[camera_name].recent]


def flat_values(state: CameraState, last: wire.Decision | None, camera: _Camera) -> dict:
    return {"Healthy": state.healthy, "Reason": state.reason, "ReasonCode": state.reason_code,
            "Ready": state.ready, "Busy": state.busy, "Fault": state.fault,
            "Heartbeat": state.heartbeats & 0xFFFFFFFF, "Session": state.session,
            "Verdict": "" if last is None else last.verdict,
            "VerdictCode": VERDICT_CODES["" if last is None else last.verdict],
            "Reject": last is not None and last.verdict in ("reject", "fault"),
            "Score": _number(None if last is None else last.score),
            "Threshold": _number(None if last is None else last.threshold),
            "FrameId": 0 if last is None else last.frame_id, "Seq": 0 if last is None else last.seq & 0xFFFFFFFF,
            "CountOk": state.counts.get("ok", 0), "CountReject": state.counts.get("reject", 0),
            "CountFault": state.counts.get("fault", 0), "ThresholdsVersion": state.thresholds_version,
            "PartId": "" if last is None or last.part_id is None else last.part_id,
            "FaultCode": FAULT_CODES[fault_kind(last)], "RecentFaults": state.recent_faults,
            "PartsPending": state.parts_pending, "LateResults": state.late_results,
            "AckedSeq": state.acked_seq & 0xFFFFFFFF, "TriggerAck": camera.trigger_ack,
            "TriggerError": camera.trigger_error}


def summary(decision: wire.Decision) -> dict:
    """One result as RecentResults shows it (JSON)."""
    return {"seq": decision.seq, "frame_id": decision.frame_id, "verdict": decision.verdict, "score": decision.score,
            "session": decision.session, "part_id": decision.part_id, "reason": decision.reason}


def mv_result_fields(decision: wire.Decision, job_id: str) -> dict:
    """A decision as 40100-1's result fields (the ResultReady event's and ResultDataType's): `ua` classes
    generated from the NodeSet when it was loaded."""
    from asyncua import ua

    created = _utc(decision.wall_ns) if decision.wall_ns else datetime.datetime.now(datetime.timezone.utc)
    return {"ResultId": ua.ResultIdDataType(Id=result_id(decision)), "IsPartial": False,
            "ResultState": RESULT_STATE[decision.verdict], "JobId": ua.JobIdDataType(Id=job_id),
            "CreationTime": created,
            "InternalRecipeId": ua.RecipeIdInternalDataType(Id=decision.model_hash, HashAlgorithm="SHA-256"),
            "InternalConfigurationId": ua.ConfigurationIdDataType(Id=decision.thresholds_version),
            "PartId": None if decision.part_id is None else ua.PartIdDataType(Id=decision.part_id)}


def result_data(decision: wire.Decision, job_id: str):
    """A ResultDataType for ResultManagement, with our verdict, score, threshold, reason and frame id as
    its ResultContent."""
    from asyncua import ua

    fields = mv_result_fields(decision, job_id)
    content = [ua.Variant(decision.verdict, ua.VariantType.String),
               ua.Variant(_number(decision.score), ua.VariantType.Double),
               ua.Variant(_number(decision.threshold), ua.VariantType.Double),
               ua.Variant(decision.reason, ua.VariantType.String),
               ua.Variant(decision.frame_id, ua.VariantType.Int64)]
    return ua.ResultDataType(IsSimulated=False, ResultContent=content, **fields)


# ------------------------------------------------------------------------------ address space

async def _build_info(server) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        software = version("hlgfa-edge")
    except PackageNotFoundError:
        software = "unknown"
    await server.set_build_info("urn:hlgfa-edge", "hlgfa-edge", "hlgfa-edge PLC bridge", software, software,
                                datetime.datetime.now(datetime.timezone.utc))


async def build_address_space(owner: OpcuaServer, server, cameras: list[str]) -> None:
    """Load the MV NodeSet and add one VisionSystemType per camera with the flat variables, methods
    bound to `owner`, and the event generator."""
    from asyncua import ua
    from asyncua.common.instantiate_util import instantiate

    owner._server = server
    await server.import_xml(str(NODESET))
    owner._mv = mv = await server.get_namespace_index(MV_NAMESPACE)
    owner._idx = idx = await server.register_namespace(NAMESPACE)
    base = server.get_node(ua.NodeId(MV_RESULT_READY, mv))
    event_type = await server.create_custom_event_type(
        idx, "HlgfaResultReadyEventType", base.nodeid,
        [(name, getattr(ua.VariantType, kind)) for name, kind in _EVENT_FIELDS])
    folder = await server.nodes.objects.add_folder(ua.NodeId("HLGFA", idx), ua.QualifiedName("HLGFA", idx))
    for camera in cameras:
        node_id = lambda path, camera=camera: ua.NodeId(f"{camera}.{path}" if path else camera, idx)  # noqa: E731
        [obj, *_] = await instantiate(folder, server.get_node(ua.NodeId(MV_VISION_SYSTEM, mv)), nodeid=node_id(""),
                                      bname=ua.QualifiedName(camera, idx), instantiate_optional=False)
        machine = server.get_node(node_id("VisionStateMachine"))
        await instantiate(obj, server.get_node(ua.NodeId(MV_RESULT_MANAGEMENT, mv)),
                          nodeid=node_id("ResultManagement"), bname=ua.QualifiedName("ResultManagement", mv),
                          instantiate_optional=False)
        await instantiate(machine, server.get_node(ua.NodeId(MV_AUTOMATIC_MODE, mv)),
                          nodeid=node_id("VisionStateMachine.AutomaticModeStateMachine"),
                          bname=ua.QualifiedName("AutomaticModeStateMachine", mv), instantiate_optional=False)
        nodes = {"object": obj, "CurrentState": server.get_node(node_id("VisionStateMachine.CurrentState")),
                 "CurrentState.Id": server.get_node(node_id("VisionStateMachine.CurrentState.Id")),
                 "AutomaticState": server.get_node(node_id("VisionStateMachine.AutomaticModeStateMachine.CurrentState")),
                 "AutomaticState.Id": server.get_node(
                     node_id("VisionStateMachine.AutomaticModeStateMachine.CurrentState.Id"))}
        waiting = ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)
        for name, kind, _ in _VARIABLES:
            variant = ua.Variant(ua.get_default_value(getattr(ua.VariantType, kind)), getattr(ua.VariantType, kind))
            nodes[name] = await obj.add_variable(node_id(name), ua.QualifiedName(name, idx), variant)
            await server.write_attribute_value(nodes[name].nodeid, ua.DataValue(variant, StatusCode=waiting))
        nodes["RecentResults"] = await obj.add_variable(node_id("RecentResults"), ua.QualifiedName("RecentResults", idx),
                                                        ua.Variant([], ua.VariantType.String))
        await nodes["RecentResults"].write_value_rank(ua.ValueRank.OneDimension)
        await nodes["RecentResults"].write_array_dimensions([0])
        await server.write_attribute_value(nodes["RecentResults"].nodeid,
                                           ua.DataValue(ua.Variant([], ua.VariantType.String), StatusCode=waiting))
        for name, kind, initial in _COMMANDS:
            nodes[name] = await obj.add_variable(node_id(name), ua.QualifiedName(name, idx),
                                                 ua.Variant(initial, getattr(ua.VariantType, kind)))
            await nodes[name].set_writable()
        generator = await server.get_event_generator(event_type, obj)
        _typed_event_fields(generator.event)
        owner._cameras[camera] = _Camera(nodes, collections.deque(maxlen=owner.config.recent_results), generator)
        _link_methods(owner, server, camera, node_id)
        await owner._write_state(nodes["CurrentState"], nodes["CurrentState.Id"], "Preoperational",
                                 ua.NodeId(MV_STATES["Preoperational"], mv))
        await owner._write_state(nodes["AutomaticState"], nodes["AutomaticState.Id"], "Ready",
                                 ua.NodeId(MV_AUTOMATIC_STATES["Ready"], mv))


def _typed_event_fields(event) -> None:
    """asyncua types a field of a structured DataType as Null (it takes the type from the field's empty
    value); the MV fields must travel as what they are."""
    from asyncua import ua

    for name in ("ResultId", "JobId", "InternalRecipeId", "InternalConfigurationId", "PartId", "MeasId", "ProductId",
                 "ExternalRecipeId", "ExternalConfigurationId", "ProcessingTimes"):
        event.data_types[name] = ua.VariantType.ExtensionObject
    event.data_types.update(IsPartial=ua.VariantType.Boolean, IsSimulated=ua.VariantType.Boolean,
                            ResultState=ua.VariantType.Int32, CreationTime=ua.VariantType.DateTime,
                            ResultContent=ua.VariantType.Variant)
    event.IsSimulated = False


def _link_methods(owner: OpcuaServer, server, camera: str, node_id) -> None:
    from asyncua import ua
    from asyncua.ua.uaerrors import UaStatusCodeError

    def method(path):
        return server.get_node(node_id(path))

    def halt(halted: bool):
        async def call(parent, cause, description):
            owner.halt(camera, halted)
            camera_log(__name__, camera).warning("%s over OPC UA (cause %s: %s)", "Halt" if halted else "Reset",
                                                 cause.Value, description.Value)
            return [ua.Variant(0, ua.VariantType.Int32)]
        return call

    async def start_single_job(parent, meas_id, part_id, recipe_id, product_id, parameters):
        identifier = getattr(part_id.Value, "Id", None)
        if not identifier:
            raise UaStatusCodeError(ua.StatusCodes.BadInvalidArgument)
        job, error = await owner.start_single_job(camera, identifier)
        return [ua.Variant(job, ua.VariantType.ExtensionObject), ua.Variant(error, ua.VariantType.Int32)]

    async def not_supported(parent, *arguments):
        raise UaStatusCodeError(ua.StatusCodes.BadNotSupported)

    def lookup(result_id_argument):
        wanted = getattr(result_id_argument.Value, "Id", None)
        for decision, job_id in reversed(owner.results(camera)):
            if result_id(decision) == wanted:
                return decision, job_id
        raise UaStatusCodeError(ua.StatusCodes.BadNotFound)

    async def get_result_by_id(parent, result, timeout):
        decision, job_id = lookup(result)
        return [ua.Variant(0, ua.VariantType.UInt32), ua.Variant(result_data(decision, job_id), ua.VariantType.ExtensionObject),
                ua.Variant(0, ua.VariantType.Int32)]

    async def get_result_components_by_id(parent, result, timeout):
        decision, job_id = lookup(result)
        data = result_data(decision, job_id)
        structure = ua.VariantType.ExtensionObject
        return [ua.Variant(False, ua.VariantType.Boolean), ua.Variant(0, ua.VariantType.UInt32),
                ua.Variant(False, ua.VariantType.Boolean), ua.Variant(False, ua.VariantType.Boolean),
                ua.Variant(data.ResultState, ua.VariantType.Int32), ua.Variant(None, structure),
                ua.Variant(data.PartId, structure), ua.Variant(None, structure),
                ua.Variant(data.InternalRecipeId, structure), ua.Variant(None, structure),
                ua.Variant(None, structure), ua.Variant(data.InternalConfigurationId, structure),
                ua.Variant(data.JobId, structure), ua.Variant(data.CreationTime, ua.VariantType.DateTime),
                ua.Variant(None, structure), ua.Variant(data.ResultContent, ua.VariantType.Variant),
                ua.Variant(0, ua.VariantType.Int32)]

    async def get_result_list_filtered(parent, state, meas_id, part_id, external_recipe, internal_recipe,
                                       external_configuration, internal_configuration, product_id, job_id,
                                       max_results, start_index, timeout):
        wanted_state = state.Value or 0
        wanted_part = getattr(part_id.Value, "Id", "") or ""
        wanted_job = getattr(job_id.Value, "Id", "") or ""
        found = [(d, j) for d, j in owner.results(camera)
                 if (not wanted_state or RESULT_STATE[d.verdict] == wanted_state)
                 and (not wanted_part or d.part_id == wanted_part) and (not wanted_job or j == wanted_job)]
        start, limit = start_index.Value or 0, max_results.Value or len(found)
        page = found[start:start + limit]
        return [ua.Variant(start + len(page) >= len(found), ua.VariantType.Boolean),
                ua.Variant(len(page), ua.VariantType.UInt32), ua.Variant(0, ua.VariantType.UInt32),
                ua.Variant([result_data(d, j) for d, j in page], ua.VariantType.ExtensionObject),
                ua.Variant(0, ua.VariantType.Int32)]

    def link(path, call):
        async def answered(parent, *arguments):
            # asyncua answers any exception with BadUnexpectedError; a refusal must say what it is
            try:
                return await call(parent, *arguments)
            except UaStatusCodeError as error:
                return ua.StatusCode(error.code)
        server.link_method(method(path), answered)

    link("VisionStateMachine.Halt", halt(True))
    link("VisionStateMachine.Reset", halt(False))
    automatic = "VisionStateMachine.AutomaticModeStateMachine"
    link(f"{automatic}.StartSingleJob", start_single_job)
    for name in ("StartContinuous", "Stop", "Abort"):
        link(f"{automatic}.{name}", not_supported)
    link("ResultManagement.GetResultById", get_result_by_id)
    link("ResultManagement.GetResultComponentsById", get_result_components_by_id)
    link("ResultManagement.GetResultListFiltered", get_result_list_filtered)


async def export_nodeset(cameras: list[str], out: Path) -> int:
    """Our address space for `cameras` (namespace NAMESPACE) as a NodeSet2 XML file, for engineering tools
    (TIA Portal, CODESYS); it requires the MV NodeSet. Returns the number of nodes written."""
    from asyncua import Server

    owner = OpcuaServer(OpcuaConfig(endpoint="opc.tcp://127.0.0.1:4840/hlgfa/", security=["None"],
                                    allow_anonymous=True))
    server = Server()
    await server.init()
    await build_address_space(owner, server, cameras)
    nodes = [node for node in await _walk(server.get_node(f"ns={owner._idx};s=HLGFA"))]
    event_type = await server.nodes.base_event_type.get_child(
        [f"{owner._mv}:ResultReadyEventType", f"{owner._idx}:HlgfaResultReadyEventType"])
    nodes += [event_type, *await event_type.get_children()]
    await server.export_xml(nodes, str(out))
    return len(nodes)


async def _walk(node) -> list:
    out = [node]
    for child in await node.get_children():
        if child.nodeid.NamespaceIndex == node.nodeid.NamespaceIndex:
            out.extend(await _walk(child))
    return out


# ------------------------------------------------------------------------------ certificates

def certificate_expiry(path: Path) -> datetime.datetime:
    from cryptography import x509

    data = path.read_bytes()
    try:
        certificate = x509.load_pem_x509_certificate(data) if data.startswith(b"-----") else \
            x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise InputDataError(f"opcua.certificate {path}: not a DER or PEM certificate ({error})") from None
    return certificate.not_valid_after_utc


def make_certificates(out: Path, name: str, hostnames: list[str], addresses: list[str], client_uri: str | None,
                      days: int = CERTIFICATE_DAYS, renew: bool = False) -> tuple[Path, Path]:
    """A self-signed application certificate (DER) and its key (PEM, mode 0600) in `out`: the server's
    (application URI = NAMESPACE) or, with `client_uri`, a client's; valid `days`, with the host names
    as DNS and the addresses as IP subject alternative names. `renew`: a new certificate for the key
    already there (the old certificate is kept as NAME.der.old). Returns (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, \
        generate_self_signed_app_certificate

    if not 1 <= days <= 36500:
        raise ConfigError(f"--days {days}: expected 1-36500")
    try:
        ips = [ipaddress.ip_address(address) for address in addresses]
    except ValueError as error:
        raise ConfigError(f"--ip: {error}") from None
    out.mkdir(parents=True, exist_ok=True)
    certificate, key_file = out / f"{name}.der", out / f"{name}.key.pem"
    if renew:
        if not key_file.exists():
            raise ConfigError(f"--renew: {key_file} does not exist; make a certificate first (without --renew)")
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    elif certificate.exists() or key_file.exists():
        raise ConfigError(f"{certificate} or {key_file} exists already: renew the certificate with --renew (same "
                          "key), or remove both first (a new key invalidates every trust list that holds the old "
                          "certificate)")
    else:
        key = generate_private_key()
    uri = client_uri or NAMESPACE
    names = [x509.UniformResourceIdentifier(uri)] + [x509.DNSName(h) for h in dict.fromkeys(hostnames)] + \
        [x509.IPAddress(ip) for ip in dict.fromkeys(ips)]
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client_uri else ExtendedKeyUsageOID.SERVER_AUTH
    made = generate_self_signed_app_certificate(key, name, {"organizationName": "hlgfa-edge"}, names, [usage], days)
    previous = os.umask(0o077)  # the key is never readable by others, not even for a moment
    try:
        if renew and certificate.exists():
            certificate.replace(certificate.with_name(certificate.name + ".old"))
        else:
            key_file.write_bytes(dump_private_key_as_pem(key))
        certificate.write_bytes(made.public_bytes(serialization.Encoding.DER))
    finally:
        os.umask(previous)
    return certificate, key_file


def endpoint_names(endpoint: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a certificate for `endpoint` must name: its host, and for a wildcard
    host (0.0.0.0, ::) this machine's name and the addresses it resolves to."""
    host = urlparse(endpoint).hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [host], []
    if not address.is_unspecified:
        return [], [str(address)]
    name = socket.gethostname()
    try:
        resolved = sorted({info[4][0] for info in socket.getaddrinfo(name, None) if info[0] == socket.AF_INET})
    except OSError:
        resolved = []
    return [name], resolved
