"""The bridge's Modbus register map: one 64-register block per camera, a pure function of its state.

Used as is by the Modbus server (the PLC reads it) and the Modbus client (the bridge writes it into
the PLC), so both modes show the same map. docs/PLC.md has it as a table. Multi-register numbers are
big-endian word order (high word at the lower address), the Modbus convention most PLCs read as
DINT/UDINT/LINT with no swapping.

Offsets 0-39 are the camera's status (read-only); 40-47 are the PLC's commands to the bridge (the
Modbus server lets the PLC write them: a part id and its trigger, the result acknowledgement); 48-63
are reserved.
"""

import hashlib

from edge.transport import wire
from edge.bridge.health import FAULT_CODES, VERDICT_CODES, CameraState, fault_kind

MAP_VERSION = 2
BLOCK = 64  # registers per camera; camera i (in config order) starts at base + i × BLOCK

# Offsets within a camera's block: status (read-only).
STATUS, VERDICT, SCORE, THRESHOLD, FRAME_ID, SEQ = 0, 1, 2, 4, 6, 10
COUNT_OK, COUNT_REJECT, COUNT_FAULT, HEARTBEAT, REASON, THRESHOLDS_VERSION, SESSION, LAYOUT = (
    12, 14, 16, 18, 19, 20, 22, 26)
FAULT_CODE, PART_ID, TRIGGER_ACK, TRIGGER_ERROR, LATE_RESULTS, ACKED_SEQ, RECENT_FAULTS = 27, 28, 30, 31, 32, 34, 36
STATUS_WORDS = 40
# ... and the commands (the PLC writes them; read back as written).
COMMAND, COMMAND_WORDS = 40, 8
CMD_PART_ID, CMD_TRIGGER, CMD_RESULT_ACK = 40, 42, 44

# Status word bits.
HEALTHY, READY, BUSY, FAULT, REJECT, TOGGLE, PART_PENDING = (1 << bit for bit in range(7))

NO_SCORE = -(2**31)  # score/threshold registers when the decision has none (a fault before scoring)
PART_ID_NOT_A_NUMBER = 0xFFFFFFFF  # the last part id is not a number 1..4294967294 (read it over OPC UA)
# Why the last trigger was not armed (TRIGGER_ERROR): 0 none.
TRIGGER_ERRORS = {"": 0, "refused": 1, "no_answer": 2, "bad_part_id": 3}


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


def part_number(part_id: str | None) -> int:
    """A part id as the UDINT the map shows: its number when it is one (1..4294967294), 0 when there is
    none, PART_ID_NOT_A_NUMBER otherwise."""
    if part_id is None:
        return 0
    if part_id.isascii() and part_id.isdigit() and 0 < int(part_id) < PART_ID_NOT_A_NUMBER:
        return int(part_id)
    return PART_ID_NOT_A_NUMBER


def block(state: CameraState, last: wire.Decision | None, toggle: bool, commands: list[int] | None = None,
          trigger_ack: int = 0, trigger_error: str = "") -> list[int]:
    """The 64 registers of one camera: health and counters from `state`, the result from `last` (the
    decision this protocol delivered last) and `toggle` (flipped on each decision it delivered); the
    commands as the PLC last wrote them, and the last trigger the daemon armed or why not."""
    reject = last is not None and last.verdict in ("reject", "fault")
    status = ((HEALTHY if state.healthy else 0) | (READY if state.ready else 0) | (BUSY if state.busy else 0)
              | (FAULT if state.fault else 0) | (REJECT if reject else 0) | (TOGGLE if toggle else 0)
              | (PART_PENDING if state.parts_pending else 0))
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
    words[FAULT_CODE] = FAULT_CODES[fault_kind(last)]
    words[PART_ID:PART_ID + 2] = _words(part_number(None if last is None else last.part_id), 2)
    words[TRIGGER_ACK] = trigger_ack & 0xFFFF
    words[TRIGGER_ERROR] = TRIGGER_ERRORS[trigger_error]
    words[LATE_RESULTS:LATE_RESULTS + 2] = _words(state.late_results, 2)
    words[ACKED_SEQ:ACKED_SEQ + 2] = _words(state.acked_seq, 2)
    words[RECENT_FAULTS] = min(state.recent_faults, 0xFFFF)
    if commands is not None:
        words[COMMAND:COMMAND + COMMAND_WORDS] = commands
    return words


def read_number(words: list[int], offset: int, count: int, signed: bool = False) -> int:
    """The inverse of the packing above, for tests and for anyone reading the map from Python."""
    value = 0
    for word in words[offset:offset + count]:
        value = (value << 16) | word
    if signed and value >= 1 << (16 * count - 1):
        value -= 1 << (16 * count)
    return value
