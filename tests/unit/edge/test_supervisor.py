"""The backend supervisor's restart policy, on an injected clock: no sleeps, no timing."""

import numpy as np
import pytest

from edge.backends.base import BackendSettings
from edge.core.errors import StageError
from edge.core.logs import camera_log
from edge.inspection.supervisor import BackendSupervisor, InferenceFailed

BATCH = np.zeros((2, 3, 8, 8), dtype=np.float32)


class Backend:
    """Answers a batch with one map and one score per frame, or raises while `failing`."""

    opened = 0

    def __init__(self, scores_per_batch=None):
        Backend.opened += 1
        self.number = Backend.opened
        self.failing = False
        self.closed = False
        self.scores_per_batch = scores_per_batch

    def infer(self, batch):
        if self.failing:
            raise RuntimeError(f"backend {self.number} broke")
        count = len(batch) if self.scores_per_batch is None else self.scores_per_batch
        return np.zeros((count, 8, 8), np.float32), np.arange(count, dtype=np.float32)

    def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def supervisor(backend, reopen, faults, clock, **policy):
    config = BackendSettings(**{"restart_after_failures": 2, "max_restarts": 2, "restart_window_s": 600, **policy})
    return BackendSupervisor(backend, reopen, config, lambda code, message: faults.append((code, message)),
                             camera_log(__name__, "cam1"), clock=clock)


def fail_batch(sup) -> str:
    sup.backend.failing = True
    with pytest.raises(InferenceFailed) as failure:
        sup.infer(BATCH)
    sup.recover(str(failure.value))
    return str(failure.value)


def test_a_failed_batch_raises_naming_the_backends_error_and_a_good_one_returns_one_score_per_frame():
    faults = []
    sup = supervisor(Backend(), Backend, faults, Clock())
    maps, scores = sup.infer(BATCH)
    assert maps.shape == (2, 8, 8) and scores.tolist() == [0.0, 1.0]
    assert fail_batch(sup).startswith("RuntimeError: backend") and sup.failures == 1 and not faults


def test_a_backend_answering_with_too_few_scores_is_a_failed_batch():
    sup = supervisor(Backend(scores_per_batch=1), Backend, [], Clock())
    with pytest.raises(InferenceFailed, match="1 scores and 1 maps for a batch of 2"):
        sup.infer(BATCH)


def test_the_backend_is_reopened_after_enough_failures_in_a_row_and_a_success_resets_the_count():
    faults, first = [], Backend()
    sup = supervisor(first, Backend, faults, Clock())
    fail_batch(sup)
    first.failing = False
    sup.infer(BATCH)  # resets: the next failure is the first in a row again
    fail_batch(sup)
    assert sup.backend is first and not faults
    fail_batch(sup)
    assert first.closed and sup.backend is not first and not sup.backend.failing
    assert [code for code, _ in faults] == ["backend_restarted"]
    assert "after 2 failed batches in a row" in faults[0][1] and "restart 1 of 2 allowed within 600 s" in faults[0][1]


def test_restarts_past_the_allowance_within_the_window_give_up_and_old_ones_age_out():
    faults, clock = [], Clock()
    sup = supervisor(Backend(), Backend, faults, clock)
    for now in (0.0, 300.0):
        clock.now = now
        fail_batch(sup)
        fail_batch(sup)
    clock.now = 599.0  # both restarts still within 600 s
    fail_batch(sup)
    with pytest.raises(StageError, match="after 2 restarts within 600 s; giving up") as error:
        fail_batch(sup)
    assert error.value.exit_code == StageError.exit_code
    assert [code for code, _ in faults] == ["backend_restarted", "backend_restarted", "backend_failed"]

    faults.clear()
    clock.now = 601.0  # the restart at 0 s has left the window: one more is allowed
    fail_batch(sup)
    fail_batch(sup)
    assert [code for code, _ in faults] == ["backend_restarted"] and len(sup.restarts) == 2


def test_without_a_way_to_reopen_or_when_reopening_fails_the_supervisor_gives_up():
    faults = []
    sup = supervisor(Backend(), None, faults, Clock(), restart_after_failures=1)
    with pytest.raises(StageError, match="after 0 restarts"):
        fail_batch(sup)

    def reopen():
        raise OSError("device lost")

    faults.clear()
    sup = supervisor(Backend(), reopen, faults, Clock(), restart_after_failures=1)
    with pytest.raises(StageError, match="backend restart failed: device lost"):
        fail_batch(sup)
    assert faults == [("backend_failed", "backend restart failed: device lost")]
