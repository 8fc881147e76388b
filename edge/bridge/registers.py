"""The bridge's Modbus register map: one 32-register block per camera, a pure function of its state.

Used as is by the Modbus server (the PLC reads it) and the Modbus client (the bridge writes it into
the PLC), so both modes show the same map. docs/PLC.md has it as a table. Multi-register numbers are
big-endian word order (high word at the lower address), the Modbus convention most PLCs read as
DINT/UDINT/LINT with no swapping.
"""

import hashlib

from edge.transport import wire
from edge.bridge.health import VERDICT_CODES, CameraState

MAP_VERSION = 1
BLOCK = 32  # registers per camera; camera i (in config order) starts at base + i × BLOCK

# Offsets within a camera's block.
STATUS, VERDICT, SCORE, THRESHOLD, FRAME_ID, SEQ = 0, 1, 2, 4, 6, 10
COUNT_OK, COUNT_REJECT, COUNT_FAULT, HEARTBEAT, REASON, THRESHOLDS_VERSION, SESSION, LAYOUT = (
    12, 14, 16, 18, 19, 20, 22, 26)

# Status word bits.
HEALTHY, READY, BUSY, FAULT, REJECT, TOGGLE = (1 << bit for bit in range(6))

NO_SCORE = -(2**31)  # score/threshold registers when the decision has none (a fault before scoring)


def _words(value: int, count: int) -> list[int]:
    value &= (1 << (16 * count)) - 1
    return [(value >> (16 * (count - 1 - i))) & 0xFFFF for i in range(count)]


def _milli(value: float | None) -> int:
    if value is None:
        return NO_SCORE
    return max(-(2**31) + 1, min(2**31 - 1, round(value * 1000)))


def version_code(version: str) -> int:
    """A thresholds version string as 32 bits a PLC can compare: the first 4 bytes of its SHA-256
    (0 when there is none yet)."""
    if not version:
        return 0
    return int.from_bytes(hashlib.sha256(version.encode("utf-8")).digest()[:4], "big")


def block(state: CameraState, last: wire.Decision | None, toggle: bool) -> list[int]:
    """The 32 registers of one camera: health and counters from `state`, the result from `last` (the
    decision this protocol delivered last) and `toggle` (flipped on each decision it delivered)."""
    reject = last is not None and last.verdict in ("reject", "fault")
    status = ((HEALTHY if state.healthy else 0) | (READY if state.ready else 0) | (BUSY if state.busy else 0)
              | (FAULT if state.fault else 0) | (REJECT if reject else 0) | (TOGGLE if toggle else 0))
    words = [0] * BLOCK
    words[STATUS] = status
    words[VERDICT] = VERDICT_CODES["" if last is None else last.verdict]
    words[SCORE:SCORE + 2] = _words(_milli(None if last is None else last.score), 2)
    words[THRESHOLD:THRESHOLD + 2] = _words(_milli(None if last is None else last.threshold), 2)
    words[FRAME_ID:FRAME_ID + 4] = _words(0 if last is None else last.frame_id, 4)
    words[SEQ:SEQ + 2] = _words(0 if last is None else last.seq, 2)
    words[COUNT_OK:COUNT_OK + 2] = _words(state.counts.get("ok", 0), 2)
    words[COUNT_REJECT:COUNT_REJECT + 2] = _words(state.counts.get("reject", 0), 2)
    words[COUNT_FAULT:COUNT_FAULT + 2] = _words(state.counts.get("fault", 0), 2)
    words[HEARTBEAT] = state.heartbeats & 0xFFFF
    words[REASON] = state.reason_code
    words[THRESHOLDS_VERSION:THRESHOLDS_VERSION + 2] = _words(version_code(state.thresholds_version), 2)
    words[SESSION:SESSION + 4] = _words(int(state.session, 16) if state.session else 0, 4)
    words[LAYOUT] = MAP_VERSION
    return words


def read_number(words: list[int], offset: int, count: int, signed: bool = False) -> int:
    """The inverse of the packing above, for tests and for anyone reading the map from Python."""
    value = 0
    for word in words[offset:offset + count]:
        value = (value << 16) | word
    if signed and value >= 1 << (16 * count - 1):
        value -= 1 << (16 * count)
    return value
