"""The inference backend in use, and its restarts when it keeps failing (`[backend]` restart_* keys)."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Callable

import numpy as np

from edge.core.errors import StageError

if TYPE_CHECKING:
    from edge.backends.base import BackendSettings
    from edge.core.logs import CameraLog


class InferenceFailed(Exception):
    """One batch failed; the message names the backend's error."""


class BackendSupervisor:
    """After `restart_after_failures` failed batches in a row the backend is closed and `reopen()` opens
    a fresh one, at most `max_restarts` times within `restart_window_s`. One more, or a reopen that
    fails, raises StageError: the daemon ends and the service manager starts a clean process.

    `report_fault(code, message)` publishes `backend_restarted` and `backend_failed`."""

    def __init__(self, backend, reopen: Callable[[], object] | None, config: BackendSettings,
                 report_fault: Callable[[str, str], None], log: CameraLog, clock: Callable[[], float] = time.monotonic):
        self.backend = backend
        self._reopen = reopen
        self._config = config
        self._report_fault = report_fault
        self._log = log
        self._clock = clock
        self.failures = 0  # failed batches in a row
        self.restarts: deque[float] = deque()  # when, within the window

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(maps, scores), one of each per frame of `batch`; InferenceFailed for anything else."""
        count = len(batch)
        try:
            maps, scores = self.backend.infer(batch)
            maps, scores = np.asarray(maps), np.asarray(scores).reshape(-1)
            if len(scores) != count or len(maps) != count:
                raise ValueError(f"backend returned {len(scores)} scores and {len(maps)} maps for a batch of {count}")
        except Exception as error:
            self.failures += 1
            message = f"{type(error).__name__}: {error}"
            self._log.error("inference failed on a batch of %d (%d in a row): %s", count, self.failures, message)
            raise InferenceFailed(message) from error
        self.failures = 0
        return maps, scores

    def recover(self, message: str) -> None:
        """After a failed batch (`message`): restart the backend once enough batches failed in a row."""
        if self.failures < self._config.restart_after_failures:
            return
        failures, self.failures = self.failures, 0
        now, window, allowed = self._clock(), self._config.restart_window_s, self._config.max_restarts
        while self.restarts and now - self.restarts[0] > window:
            self.restarts.popleft()
        if self._reopen is None or len(self.restarts) >= allowed:
            self._give_up(f"backend failed {failures} times in a row ({message}) after {len(self.restarts)} restarts "
                          f"within {window:g} s; giving up so the service manager restarts us")
        self.restarts.append(now)
        try:
            self.backend.close()
        except Exception as error:
            self._log.warning("closing the failed backend: %s", error)
        try:
            self.backend = self._reopen()
        except Exception as error:
            self._give_up(f"backend restart failed: {error}")
        self._report_fault("backend_restarted", f"backend reopened after {failures} failed batches in a row ({message}); "
                                                f"restart {len(self.restarts)} of {allowed} allowed within {window:g} s")

    def _give_up(self, reason: str) -> None:
        self._report_fault("backend_failed", reason)
        raise StageError(reason)
