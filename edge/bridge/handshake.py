"""The PLC's side of the line contract, as the bridge keeps it per camera: part ids handed over to the
daemon (`PartJobs`) and results the PLC acknowledges (`ResultAcks`). Pure logic, time injected;
docs/PLC.md draws the handshake.

A part id goes to the daemon as a job (`wire.PartRequest`) and is resent until the daemon answers; no
answer within `answer_timeout_s` is a refusal the PLC sees, never a part silently not armed. A
result the PLC was expected to acknowledge (`result_ack_timeout_s` set) and did not within that time
is counted as late and logged, so a PLC program that stopped consuming results is noticed.
"""

from __future__ import annotations

import collections
import secrets
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from edge.transport import wire

RESEND_S = 0.25  # a job not answered is sent again this often until answer_timeout_s
NOT_ANSWERED = 0  # the job number of a refusal the daemon never gave: not heard from, or no answer in time


@dataclass
class _Job:
    request: wire.PartRequest
    future: Future
    first_sent: float
    last_sent: float


@dataclass
class PartJobs:
    """Jobs of one camera: `submit` from any thread, the rest from the camera's thread."""

    answer_timeout_s: float = 1.0
    origin: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self):
        self._lock = threading.Lock()
        self._submitted: collections.deque[tuple[str, Future]] = collections.deque()
        self._jobs: dict[int, _Job] = {}
        self._last_job = 0
        # part ids the daemon armed whose decision has not come yet (the PLC waits before the next part)
        self.pending_parts: collections.OrderedDict[str, None] = collections.OrderedDict()

    def submit(self, part_id: str) -> Future:
        """Queue part `part_id`; the future's result is the daemon's `wire.PartReply`, or a refusal of
        job NOT_ANSWERED when the daemon was not heard from or did not answer."""
        future: Future = Future()
        with self._lock:
            self._submitted.append((part_id, future))
        return future

    def due(self, session: str, now: float) -> list[wire.PartRequest]:
        """The requests to send now: new ones as jobs of daemon session `session` (refused at once while
        it is unknown), and those unanswered for RESEND_S. Jobs unanswered for answer_timeout_s are refused."""
        with self._lock:
            submitted, self._submitted = list(self._submitted), collections.deque()
        out = []
        for part_id, future in submitted:
            if not session:
                future.set_result(wire.PartReply(part_id, NOT_ANSWERED, self.origin, False,
                                                 "the daemon has not been heard from yet (no heartbeat)"))
                continue
            self._last_job += 1
            job = _Job(wire.PartRequest(part_id, self._last_job, self.origin, session), future, now, now)
            self._jobs[job.request.job] = job
            out.append(job.request)
        for number, job in list(self._jobs.items()):
            if now - job.first_sent > self.answer_timeout_s:
                del self._jobs[number]
                job.future.set_result(wire.PartReply(job.request.part_id, NOT_ANSWERED, self.origin, False,
                                                     f"the daemon did not answer within {self.answer_timeout_s:g} s"))
            elif now - job.last_sent >= RESEND_S:
                job.last_sent = now
                out.append(job.request)
        return out

    def answered(self, reply: wire.PartReply) -> None:
        if reply.origin != self.origin:
            return  # an answer to an earlier run of this bridge
        job = self._jobs.pop(reply.job, None)
        if job is None:
            return  # answered already (a resend's second answer) or timed out
        if reply.accepted:
            self.pending_parts[reply.part_id] = None
        job.future.set_result(reply)

    def decided(self, part_id: str | None) -> None:
        """A decision for `part_id` arrived: that part is no longer pending."""
        if part_id is not None:
            self.pending_parts.pop(part_id, None)

    def forget_pending(self) -> None:
        """The daemon restarted: what it had armed is gone with it."""
        self.pending_parts.clear()


class ResultAcks:
    """Results the PLC must acknowledge within `timeout_s` (None: no acknowledgement expected).
    `delivered` from the camera's thread, `acknowledge` from any, `expire` from the camera's thread."""

    def __init__(self, timeout_s: float | None):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._waiting: collections.OrderedDict[tuple[str, int], float] = collections.OrderedDict()
        self.late = 0
        self.acked_seq = 0
        self._session = ""

    def delivered(self, decision: wire.Decision, now: float) -> None:
        if self.timeout_s is None:
            return
        with self._lock:
            self._waiting[(decision.session, decision.seq)] = now + self.timeout_s
            self._session = decision.session

    def acknowledge(self, seq: int) -> None:
        """The PLC consumed every result up to `seq` of the current daemon session."""
        with self._lock:
            self.acked_seq = seq
            for key in [key for key in self._waiting if key[0] == self._session and key[1] <= seq]:
                del self._waiting[key]

    def expire(self, now: float) -> list[tuple[str, int]]:
        """The (session, seq) of the results that just became late."""
        with self._lock:
            late = [key for key, due in self._waiting.items() if due <= now]
            for key in late:
                del self._waiting[key]
            self.late += len(late)
        return late
