"""Part ids from the PLC: which part the next frame shows, and a fault for a part no frame came for.

The handshake is OPC 40100-1's single job (docs/PLC.md): the PLC starts a job for one part (its part
id), the daemon arms it, the next frame read is that part's frame and its decision carries the part
id back. One camera sees one part at a time, so at most one part is armed: a part id handed over
while another is still armed means the earlier part passed without a frame, and it becomes a `fault`
decision for its part id (`part_missing`), as does a part armed for `timeout_s` with no frame. A
lost frame is never a silent gap, and never shifts the later verdicts onto the wrong parts.
Without part ids (no PLC hands any over) frames carry none and nothing here runs.

Threads: `arm` is called from the publisher's I/O thread (the bridge's request), `bind` from the
acquire stage, `missing` from the daemon's main loop; one lock guards the state.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from edge.core.settings import Section
from edge.transport import wire

REMEMBERED_JOBS = 256  # requests answered again without arming twice when a bridge resends them


class PartsConfig(Section):
    """`[parts]`: part ids handed over by the PLC through the bridge."""

    # A part armed this long with no frame read is a fault for its part id ("part_missing").
    timeout_s: float = Field(default=2.0, gt=0, le=3600)
    # "always": the camera delivers frames as it does (free-running or hardware-triggered) and an
    # armed part binds to the next one. "per_part": a frame is read only while a part is armed: the
    # part's arrival is the trigger (a replay, a software-triggered camera).
    acquire: Literal["always", "per_part"] = "always"


@dataclass(frozen=True)
class MissingPart:
    """A part armed that no frame was read for: its decision is a fault with this message."""

    part_id: str
    message: str


class PartTracker:
    def __init__(self, settings: PartsConfig, clock=time.monotonic):
        self.settings = settings
        self.per_part = settings.acquire == "per_part"
        self._clock = clock
        self._lock = threading.Lock()
        self._armed_changed = threading.Condition(self._lock)
        self._armed: tuple[str, float] | None = None  # (part id, armed at)
        self._missing: list[MissingPart] = []
        self._answered: collections.OrderedDict[tuple[str, int], str | None] = collections.OrderedDict()
        self.armed_count = 0
        self.bound_count = 0

    def arm(self, request: wire.PartRequest) -> str | None:
        """Arm `request.part_id` for the next frame; None when armed, else why not. A resent request
        gets its first answer again."""
        key = (request.origin, request.job)
        with self._lock:
            if key in self._answered:
                return self._answered[key]
            now = self._clock()
            if self._armed is not None:
                earlier, armed_at = self._armed
                self._missing.append(MissingPart(earlier, f"no frame for part {earlier!r} in the {now - armed_at:.3f} s "
                                                          f"before part {request.part_id!r} was handed over"))
            self._armed = (request.part_id, now)
            self.armed_count += 1
            self._answered[key] = None
            if len(self._answered) > REMEMBERED_JOBS:
                self._answered.popitem(last=False)
            self._armed_changed.notify_all()
        return None

    def bind(self) -> str | None:
        """The armed part id, now taken by the frame just read; None when none is armed."""
        with self._lock:
            if self._armed is None:
                return None
            part_id, self._armed = self._armed[0], None
            self.bound_count += 1
            return part_id

    def wait_armed(self, timeout_s: float) -> bool:
        """True once a part is armed; False after `timeout_s` without one."""
        with self._armed_changed:
            return self._armed_changed.wait_for(lambda: self._armed is not None, timeout_s)

    def missing(self) -> list[MissingPart]:
        """The parts that will get no frame: replaced by a later part, or armed past the timeout."""
        with self._lock:
            now = self._clock()
            if self._armed is not None and now - self._armed[1] > self.settings.timeout_s:
                part_id, armed_at = self._armed
                self._armed = None
                self._missing.append(MissingPart(part_id, f"no frame for part {part_id!r} within "
                                                          f"{self.settings.timeout_s:g} s of its hand-over"))
            missing, self._missing = self._missing, []
        return missing
