"""The ZeroMQ wire format: the one definition the publisher, the subscriber library and the tests import.

A message is a multipart ZeroMQ message:

    frame 0  topic     ascii, "<kind>.<camera>/"  e.g. b"decision.cam1/"
    frame 1  header    utf-8 JSON object (never pickle)
    frame 2  payload   raw bytes, only for kind "map": the heat map, C order, shape and dtype in the header

The topic ends in "/" so that a subscription to "decision.cam1/" never prefix-matches "decision.cam10/".
Camera names are restricted to [A-Za-z0-9_-] so they cannot contain "." or "/".

Versioning: `SCHEMA_VERSION` is in every header as "schema". Adding an optional header field does not
change it (decoders ignore fields they do not know). Removing or renaming a field, changing a field's
type, unit or meaning, or changing a payload layout increments it; a decoder refuses any other schema
with an error naming both versions, so a mismatched bridge faults instead of misreading.

Every message carries the publisher's "session" (random per publisher start) and a "seq" that counts
1, 2, 3, ... per topic within that session, so a subscriber can count every lost message and tell a
restart (new session) from a loss (skipped seq). docs/PROTOCOL.md describes the semantics.
"""

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np

from edge.core.errors import InputDataError

SCHEMA_VERSION = 1

DECISION, MAP, HEARTBEAT, FAULT = "decision", "map", "heartbeat", "fault"
KINDS = (DECISION, MAP, HEARTBEAT, FAULT)
VERDICTS = ("ok", "reject", "fault")
SOURCE_STATES = ("delivering", "idle", "unavailable")
DRIFT_STATES = ("unknown", "stable", "drifting", "drifted")
MAP_DTYPES = {"uint8": np.dtype("u1"), "float16": np.dtype("<f2")}

# The reliable channel (ROUTER in the daemon, DEALER in the subscriber): the verb, frame 0 of each message.
# REFUSED (daemon → bridge, then the reason): a HELLO of another schema, or while another bridge owns the
# channel. PING (daemon → bridge, nothing else): is the owner still connected? The bridge ignores it.
RELIABLE_HELLO, RELIABLE_DECISION, RELIABLE_ACK = b"HELLO", b"DECISION", b"ACK"
RELIABLE_REFUSED, RELIABLE_PING = b"REFUSED", b"PING"
# The PLC's part ids on the same channel, bridge → daemon and the daemon's answer (docs/PROTOCOL.md).
RELIABLE_PART, RELIABLE_PART_ACK = b"PART", b"PART_ACK"
# The fault kinds that concern one part (a decision with verdict "fault" names one in its reason, and the
# fault topic repeats it with the frame id): the part is diverted, the line goes on. Every other fault
# code concerns the system (camera lost, backend restarted, buffer full, ...).
PART_FAULTS = ("frame_error", "preprocess", "frame_quality", "overload", "deadline", "backend", "decide",
               "shutdown", "part_missing")
# The frame id of a decision on a part the daemon never saw a frame for (reason "part_missing: ...").
NO_FRAME = -1
PART_ID_MAX_CHARS = 64

# fullmatch, never match with "$": "$" also matches before a final newline, and "line1\n" is no camera name.
_CAMERA_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SESSION_RE = re.compile(r"[0-9a-f]{16}")


class WireError(InputDataError):
    """A message that does not follow this schema; the text names the topic and what is wrong."""


def ack_body(session: str, seq: int) -> bytes:
    """The ACK's second frame: which decision of which publisher run is acknowledged."""
    return f"{session}:{seq}".encode("ascii")


def parse_ack_body(body: bytes) -> tuple[str, int]:
    try:
        session, _, seq = body.decode("ascii").partition(":")
        return session, int(seq)
    except (UnicodeDecodeError, ValueError):
        raise WireError(f"ACK {body[:60]!r}: expected b'SESSION:SEQ'") from None


def check_part_id(part_id: object, where: str = "part id") -> str:
    """A PLC's part id: 1-64 printable characters (a number, a serial, a DMC code's text)."""
    if not isinstance(part_id, str) or not 1 <= len(part_id) <= PART_ID_MAX_CHARS or not part_id.isprintable():
        raise WireError(f"{where} {part_id!r}: expected 1-{PART_ID_MAX_CHARS} printable characters")
    return part_id


def check_camera(camera: object) -> str:
    if not isinstance(camera, str) or not _CAMERA_RE.fullmatch(camera):
        raise WireError(f"camera name {camera!r}: expected 1-64 characters from [A-Za-z0-9_-] "
                        "(no '.' or '/', which delimit topics)")
    return camera


def topic(kind: str, camera: str) -> bytes:
    """The exact topic frame, e.g. topic("decision", "cam1") == b"decision.cam1/". A camera's names are
    checked at its first message of each kind, not on every one (the frame path encodes several per frame)."""
    return _checked_topic(kind, camera if isinstance(camera, str) else check_camera(camera))


@lru_cache(maxsize=256)
def _checked_topic(kind: str, camera: str) -> bytes:
    if kind not in KINDS:
        raise WireError(f"message kind {kind!r}: expected one of {', '.join(KINDS)}")
    return f"{kind}.{check_camera(camera)}/".encode("ascii")


def subscription_prefix(kind: str, camera: str | None) -> bytes:
    """The SUB prefix for one kind of one camera, or of every camera when `camera` is None."""
    if camera is None:
        if kind not in KINDS:
            raise WireError(f"message kind {kind!r}: expected one of {', '.join(KINDS)}")
        return f"{kind}.".encode("ascii")
    return topic(kind, camera)


def parse_topic(raw: bytes) -> tuple[str, str]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise WireError(f"topic {raw[:80]!r}: not ASCII") from None
    kind, dot, rest = text.partition(".")
    if not dot or not rest.endswith("/") or kind not in KINDS:
        raise WireError(f"topic {text[:80]!r}: expected '<kind>.<camera>/' with kind one of {', '.join(KINDS)}")
    camera = rest[:-1]
    if not _CAMERA_RE.fullmatch(camera):
        raise WireError(f"topic {text[:80]!r}: camera part {camera!r} is not a valid camera name")
    return kind, camera


@dataclass(frozen=True)
class Decision:
    """The verdict on one frame. `score`/`threshold` are None only for a fault that happened before
    scoring (JSON has no NaN). Monotonic times are host `time.monotonic_ns()`: compare them with each
    other only; `wall_ns` (`time.time_ns()` at publish) is the one to compare across hosts."""

    camera: str
    frame_id: int
    verdict: str
    reason: str
    score: float | None
    threshold: float | None
    device_timestamp_ns: int
    receive_ns: int
    decision_ns: int
    latency_ms: float
    model_hash: str
    thresholds_version: str
    region_px: int = 0
    session: str = ""
    seq: int = 0
    wall_ns: int = 0
    # optional: the part id the PLC handed over for this frame (docs/PLC.md), None when it gave none
    part_id: str | None = None


@dataclass(frozen=True)
class PartRequest:
    """Bridge → daemon on the acknowledged channel: the next frame is part `part_id`. `job` counts the
    requests of one bridge run (`origin`, random per start), so a resent request is answered again
    without arming the part twice; `session` is the daemon session the bridge last heard from, so a
    request queued while the daemon restarted is refused instead of binding a later frame."""

    part_id: str
    job: int
    origin: str
    session: str


@dataclass(frozen=True)
class PartReply:
    """Daemon → bridge: request `job` of `origin` was armed (`accepted`) or refused, with `error` saying why."""

    part_id: str
    job: int
    origin: str
    accepted: bool
    error: str = ""


def encode_part_request(request: PartRequest) -> bytes:
    check_part_id(request.part_id)
    if not _SESSION_RE.fullmatch(request.origin) or not _SESSION_RE.fullmatch(request.session):
        raise WireError(f"PART origin {request.origin!r} / session {request.session!r}: expected 16 lowercase hex digits")
    return _dumps({"schema": SCHEMA_VERSION, **asdict(request)})


def encode_part_reply(reply: PartReply) -> bytes:
    return _dumps({"schema": SCHEMA_VERSION, **asdict(reply)})


def _part_body(body: bytes, verb: str) -> tuple[dict, str]:
    where = f"{verb} message {body[:80]!r}"
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError(f"{where}: not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise WireError(f"{where}: expected a JSON object")
    if header.get("schema") != SCHEMA_VERSION:
        raise WireError(f"{where}: schema {header.get('schema')!r}, this decoder reads schema {SCHEMA_VERSION}")
    job = _field(header, "job", int, where)
    if job < 1:
        raise WireError(f"{where}: job {job}, expected ≥ 1")
    origin = _field(header, "origin", str, where)
    if not _SESSION_RE.fullmatch(origin):
        raise WireError(f"{where}: origin {origin!r}, expected 16 lowercase hex digits")
    return header, where


def decode_part_request(body: bytes) -> PartRequest:
    header, where = _part_body(body, "PART")
    session = _field(header, "session", str, where)
    if not _SESSION_RE.fullmatch(session):
        raise WireError(f"{where}: session {session!r}, expected 16 lowercase hex digits")
    return PartRequest(check_part_id(_field(header, "part_id", str, where), f"{where}: part_id"), header["job"],
                       header["origin"], session)


def decode_part_reply(body: bytes) -> PartReply:
    header, where = _part_body(body, "PART_ACK")
    return PartReply(_field(header, "part_id", str, where), header["job"], header["origin"],
                     _field(header, "accepted", bool, where), _field(header, "error", str, where))


@dataclass(frozen=True)
class MapMessage:
    """A heat map for one frame. For uint8, `value_range` = (lo, hi) maps 0 → lo and 255 → hi:
    value = lo + u8 * (hi - lo) / 255. For float16 the values are the model's map values."""

    camera: str
    frame_id: int
    data: np.ndarray
    value_range: tuple[float, float] | None = None
    session: str = ""
    seq: int = 0
    wall_ns: int = 0

    @property
    def dtype(self) -> str | None:
        """"uint8", "float16", or None for an array this schema cannot carry."""
        return _dtype_name(self.data.dtype)

    def values(self) -> np.ndarray:
        """The map as float32 in model units (de-quantised for uint8)."""
        if self.data.dtype == np.uint8:
            lo, hi = self.value_range if self.value_range is not None else (0.0, 255.0)
            return (lo + self.data.astype(np.float32) * ((hi - lo) / 255.0)).astype(np.float32)
        return self.data.astype(np.float32)


@dataclass(frozen=True)
class Counters:
    """What the pipeline has done since it started; every frame lands in exactly one of ok/reject/fault,
    or in dropped when it never reached the model (queue overrun). Dropped frames are also faults."""

    frames: int = 0
    ok: int = 0
    reject: int = 0
    fault: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class SourceStatus:
    """What the camera did last: "delivering" (a frame, or no read has ended yet), "idle" (it waits
    for a hardware trigger and answers: not a fault), "unavailable" (lost, or no frame where one was
    due: the fault topic says why); and the seconds since its last frame (since the start, before the
    first)."""

    state: str
    last_frame_age_s: float


@dataclass(frozen=True)
class Heartbeat:
    """Proof of life at a fixed period. `seqs` holds the last seq published on each other topic of this
    camera, so a subscriber also notices losses that no later message would reveal."""

    camera: str
    period_s: float
    uptime_s: float
    counters: Counters
    seqs: dict = field(default_factory=dict)
    state: str = "running"
    reliable: dict | None = None
    overruns: int = 0
    session: str = ""
    seq: int = 0
    wall_ns: int = 0
    source: SourceStatus | None = None  # optional: absent from publishers that predate it
    # optional: the drift watch (edge/inspection/drift.py): "state" one of DRIFT_STATES and its figures
    drift: dict | None = None


@dataclass(frozen=True)
class Fault:
    """A condition an operator must see: a per-frame fault (also published as a decision with verdict
    "fault"), or one not tied to a frame (camera lost, reliable buffer full, backend restarted)."""

    camera: str
    code: str
    message: str
    frame_id: int | None = None
    session: str = ""
    seq: int = 0
    wall_ns: int = 0


def _dtype_name(dtype: np.dtype) -> str | None:
    if dtype == np.uint8:
        return "uint8"
    if dtype.kind == "f" and dtype.itemsize == 2:
        return "float16"
    return None


Message = Decision | MapMessage | Heartbeat | Fault
_KIND_OF = {Decision: DECISION, MapMessage: MAP, Heartbeat: HEARTBEAT, Fault: FAULT}


def kind_of(message: Message) -> str:
    try:
        return _KIND_OF[type(message)]
    except KeyError:
        raise WireError(f"cannot encode a {type(message).__name__}: expected one of "
                        f"{', '.join(cls.__name__ for cls in _KIND_OF)}") from None


# ---------------------------------------------------------------------------------------------- maps

def make_map(camera: str, frame_id: int, anomaly_map: np.ndarray, size: tuple[int, int] | None,
             dtype: str = "uint8", value_range: tuple[float, float] | None = None) -> MapMessage:
    """Resize and convert a model map for the wire. A pure function, run in the caller's thread.

    `size` is (height, width) or None to keep the model's size. For uint8, `value_range` fixes the
    scale (so maps are comparable frame to frame); None uses this map's own min..max. Non-finite
    values are clipped: the decision already faulted on them, the picture is only for people.
    """
    if dtype not in MAP_DTYPES:
        raise WireError(f"map dtype {dtype!r}: expected one of {', '.join(MAP_DTYPES)}")
    import cv2  # the runtime already depends on opencv-python-headless

    values = np.asarray(anomaly_map, dtype=np.float32)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2 or values.size == 0:
        raise WireError(f"anomaly map of shape {values.shape}: expected a non-empty H×W (or 1×H×W) array")
    if size is not None and tuple(size) != values.shape:
        height, width = int(size[0]), int(size[1])
        if height < 1 or width < 1:
            raise WireError(f"map size {size!r}: expected (height, width) ≥ 1")
        shrinking = height * width < values.shape[0] * values.shape[1]
        values = cv2.resize(values, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    finite = bool(np.isfinite(values).all())
    if dtype == "float16":
        if not finite:
            values = np.nan_to_num(values, nan=0.0, posinf=65504.0, neginf=-65504.0)
        return MapMessage(camera, frame_id, np.clip(values, -65504.0, 65504.0).astype("<f2"), None)
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
    elif finite:
        lo, hi = float(values.min()), float(values.max())
    else:
        kept = values[np.isfinite(values)]
        lo, hi = (float(kept.min()), float(kept.max())) if kept.size else (0.0, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise WireError(f"map value range ({lo}, {hi}): expected finite numbers")
    if hi <= lo:
        hi = lo + 1.0  # a constant map: any scale reproduces it
    if not finite:
        values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    # clip first, so convertScaleAbs (one fused, rounding, saturating pass: ~10× numpy's chain) never
    # sees a negative it would mirror
    scale = 255.0 / (hi - lo)
    data = cv2.convertScaleAbs(np.clip(values, lo, hi), alpha=scale, beta=-lo * scale)
    return MapMessage(camera, frame_id, data, (lo, hi))


# ------------------------------------------------------------------------------------------ encoding

def _dumps(header: dict) -> bytes:
    try:
        return json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except ValueError as error:
        raise WireError(f"{header.get('kind')} header for camera {header.get('camera')!r}: {error} "
                        "(JSON has no NaN/Infinity; a non-finite score must be a fault with score None)") from None


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return value


def encode(message: Message) -> list[bytes]:
    """Message → multipart frames [topic, header] or [topic, header, payload] for maps."""
    kind = kind_of(message)
    topic_frame = topic(kind, message.camera)
    if message.session and not _SESSION_RE.fullmatch(message.session):
        raise WireError(f"session {message.session!r}: expected 16 lowercase hex digits")
    header = {"schema": SCHEMA_VERSION, "kind": kind}
    if isinstance(message, MapMessage):
        data = np.ascontiguousarray(message.data)
        if data.ndim != 2:
            raise WireError(f"map for camera {message.camera!r}: shape {data.shape}, expected H×W")
        dtype_name = _dtype_name(data.dtype)
        if dtype_name is None:
            raise WireError(f"map for camera {message.camera!r}: dtype {data.dtype}, expected uint8 or float16")
        header.update(camera=message.camera, frame_id=int(message.frame_id), session=message.session,
                      seq=int(message.seq), wall_ns=int(message.wall_ns), dtype=dtype_name,
                      shape=list(data.shape), byte_order="little",
                      value_range=None if message.value_range is None else [float(v) for v in message.value_range])
        payload = data.astype(MAP_DTYPES[dtype_name], copy=False).tobytes()
        return [topic_frame, _dumps(header), payload]
    # not dataclasses.asdict: it deep-copies and was most of the cost of encoding a decision
    body = {f.name: getattr(message, f.name) for f in fields(message)}
    if isinstance(message, Heartbeat):
        body["counters"] = asdict(message.counters)
        if message.source is None:
            del body["source"]
        else:
            if message.source.state not in SOURCE_STATES:
                raise WireError(f"heartbeat of camera {message.camera!r}: source state {message.source.state!r}, "
                                f"expected one of {', '.join(SOURCE_STATES)}")
            body["source"] = asdict(message.source)
        if message.drift is None:
            del body["drift"]
        elif message.drift.get("state") not in DRIFT_STATES:
            raise WireError(f"heartbeat of camera {message.camera!r}: drift state {message.drift.get('state')!r}, "
                            f"expected one of {', '.join(DRIFT_STATES)}")
    if isinstance(message, Decision):
        if message.verdict not in VERDICTS:
            raise WireError(f"decision for camera {message.camera!r} frame {message.frame_id}: verdict "
                            f"{message.verdict!r}, expected one of {', '.join(VERDICTS)}")
        body["score"] = _finite_or_none(message.score)
        body["threshold"] = _finite_or_none(message.threshold)
        if message.verdict != "fault" and (body["score"] is None or body["threshold"] is None):
            raise WireError(f"decision for camera {message.camera!r} frame {message.frame_id}: verdict "
                            f"{message.verdict!r} with score {message.score!r} and threshold "
                            f"{message.threshold!r}; only a fault may lack a finite score and threshold")
        body["latency_ms"] = float(message.latency_ms)
        if message.part_id is not None:
            check_part_id(message.part_id, f"decision for camera {message.camera!r} frame {message.frame_id}: part_id")
    header.update(body)
    return [topic_frame, _dumps(header)]


# ------------------------------------------------------------------------------------------ decoding

def _field(header: dict, key: str, types, where: str, optional: bool = False):
    if key not in header:
        if optional:
            return None
        raise WireError(f"{where}: header lacks field {key!r}")
    value = header[key]
    if value is None and optional:
        return None
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if not ok:
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise WireError(f"{where}: field {key!r} is {value!r} ({type(value).__name__}), expected {names}")
    return value


def _part_id(header: dict, where: str) -> str | None:
    part_id = _field(header, "part_id", str, where, optional=True)
    return None if part_id is None else check_part_id(part_id, f"{where}: part_id")


def _as_tuple(types):
    return types if isinstance(types, tuple) else (types,)


_NUMBER = (int, float)


def decode(frames: list[bytes]) -> Message:
    """Multipart frames → message. Raises WireError naming the topic and the fault on any deviation."""
    kind, camera, header, frames, where = _envelope(frames)
    common = dict(camera=camera, **_sequence_fields(header, where))
    if kind == DECISION:
        return _decode_decision(header, where, common)
    if kind == MAP:
        return _decode_map(header, frames[2], where, common)
    if kind == HEARTBEAT:
        return _decode_heartbeat(header, where, common)
    frame_id = _field(header, "frame_id", int, where, optional=True)
    return Fault(code=_field(header, "code", str, where), message=_field(header, "message", str, where),
                 frame_id=frame_id, **common)


def _envelope(frames) -> tuple[str, str, dict, list[bytes], str]:
    """Kind, camera, header and frames of a message whose frame count, schema, kind and camera agree
    with its topic, and `where`, naming the topic, for every later error."""
    if not isinstance(frames, (list, tuple)) or len(frames) < 2:
        raise WireError(f"message of {len(frames) if isinstance(frames, (list, tuple)) else '?'} frame(s): "
                        "expected [topic, header] or [topic, header, payload]")
    frames = [bytes(f) if not isinstance(f, bytes) else f for f in frames]
    kind, camera = parse_topic(frames[0])
    where = f"message on topic {frames[0].decode('ascii')!r}"
    expected_frames = 3 if kind == MAP else 2
    if len(frames) != expected_frames:
        raise WireError(f"{where}: {len(frames)} frames, expected {expected_frames}")
    try:
        header = json.loads(frames[1].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WireError(f"{where}: header is not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict):
        raise WireError(f"{where}: header is a JSON {type(header).__name__}, expected an object")
    schema = header.get("schema")
    if schema != SCHEMA_VERSION:
        raise WireError(f"{where}: schema {schema!r}, this decoder reads schema {SCHEMA_VERSION}; "
                        "upgrade the older side")
    if header.get("kind") != kind:
        raise WireError(f"{where}: header kind {header.get('kind')!r} does not match the topic")
    if header.get("camera") != camera:
        raise WireError(f"{where}: header camera {header.get('camera')!r} does not match the topic")
    return kind, camera, header, frames, where


def _sequence_fields(header: dict, where: str) -> dict:
    """session, seq and wall_ns: the fields every kind carries."""
    session = _field(header, "session", str, where)
    if not _SESSION_RE.fullmatch(session):
        raise WireError(f"{where}: session {session!r}, expected 16 lowercase hex digits")
    seq = _field(header, "seq", int, where)
    if seq < 1:
        raise WireError(f"{where}: seq {seq}, expected ≥ 1")
    return dict(session=session, seq=seq, wall_ns=_field(header, "wall_ns", int, where))


def _decode_decision(header: dict, where: str, common: dict) -> Decision:
    verdict = _field(header, "verdict", str, where)
    if verdict not in VERDICTS:
        raise WireError(f"{where}: verdict {verdict!r}, expected one of {', '.join(VERDICTS)}")
    score = _field(header, "score", _NUMBER, where, optional=verdict == "fault")
    threshold = _field(header, "threshold", _NUMBER, where, optional=verdict == "fault")
    return Decision(
        frame_id=_field(header, "frame_id", int, where), verdict=verdict,
        reason=_field(header, "reason", str, where),
        score=None if score is None else float(score), threshold=None if threshold is None else float(threshold),
        device_timestamp_ns=_field(header, "device_timestamp_ns", int, where),
        receive_ns=_field(header, "receive_ns", int, where),
        decision_ns=_field(header, "decision_ns", int, where),
        latency_ms=float(_field(header, "latency_ms", _NUMBER, where)),
        model_hash=_field(header, "model_hash", str, where),
        thresholds_version=_field(header, "thresholds_version", str, where),
        region_px=_field(header, "region_px", int, where), part_id=_part_id(header, where), **common)


def _decode_map(header: dict, payload: bytes, where: str, common: dict) -> MapMessage:
    dtype_name = _field(header, "dtype", str, where)
    if dtype_name not in MAP_DTYPES:
        raise WireError(f"{where}: map dtype {dtype_name!r}, expected one of {', '.join(MAP_DTYPES)}")
    if header.get("byte_order", "little") != "little":
        raise WireError(f"{where}: byte_order {header.get('byte_order')!r}, expected 'little'")
    shape = _field(header, "shape", list, where)
    if len(shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise WireError(f"{where}: map shape {shape!r}, expected [height, width] of positive integers")
    dtype = MAP_DTYPES[dtype_name]
    expected_bytes = shape[0] * shape[1] * dtype.itemsize
    if len(payload) != expected_bytes:
        raise WireError(f"{where}: payload of {len(payload)} bytes, expected {expected_bytes} for "
                        f"{dtype_name} {shape[0]}×{shape[1]}")
    value_range = _field(header, "value_range", list, where, optional=True)
    if value_range is not None:
        if len(value_range) != 2 or not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in value_range):
            raise WireError(f"{where}: value_range {value_range!r}, expected [lo, hi] numbers")
        value_range = (float(value_range[0]), float(value_range[1]))
    elif dtype_name == "uint8":
        raise WireError(f"{where}: uint8 map without value_range; cannot be de-quantised")
    data = np.frombuffer(payload, dtype=dtype).reshape(shape)
    return MapMessage(frame_id=_field(header, "frame_id", int, where), data=data, value_range=value_range,
                      **common)


def _decode_heartbeat(header: dict, where: str, common: dict) -> Heartbeat:
    raw_counters = _field(header, "counters", dict, where)
    counters = {}
    for f in fields(Counters):
        counters[f.name] = _field(raw_counters, f.name, int, f"{where} counters")
    seqs = _field(header, "seqs", dict, where)
    for key, value in seqs.items():
        if key not in KINDS or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise WireError(f"{where}: seqs entry {key!r}: {value!r}, expected a kind → integer ≥ 0")
    source = _field(header, "source", dict, where, optional=True)
    if source is not None:
        state = _field(source, "state", str, f"{where} source")
        if state not in SOURCE_STATES:
            raise WireError(f"{where}: source state {state!r}, expected one of {', '.join(SOURCE_STATES)}")
        source = SourceStatus(state, float(_field(source, "last_frame_age_s", _NUMBER, f"{where} source")))
    drift = _field(header, "drift", dict, where, optional=True)
    if drift is not None and drift.get("state") not in DRIFT_STATES:
        raise WireError(f"{where}: drift state {drift.get('state')!r}, expected one of {', '.join(DRIFT_STATES)}")
    return Heartbeat(period_s=float(_field(header, "period_s", _NUMBER, where)),
                     uptime_s=float(_field(header, "uptime_s", _NUMBER, where)),
                     counters=Counters(**counters), seqs=seqs,
                     state=_field(header, "state", str, where),
                     reliable=_field(header, "reliable", dict, where, optional=True),
                     overruns=_field(header, "overruns", int, where), source=source, drift=drift, **common)


def to_json_dict(message: Message) -> dict:
    """A JSON-ready dict of a message (maps without their pixels) for logs and `hlgfa subscribe`."""
    if isinstance(message, MapMessage):
        out = {k: v for k, v in asdict(message).items() if k != "data"}
        out.update(dtype=message.dtype, shape=list(message.data.shape))
    else:
        out = asdict(message)
    out["type"] = kind_of(message)
    return out
