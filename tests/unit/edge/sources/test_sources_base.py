"""What sources share (edge/sources/base.py): close() ahead of a reading loop, and the reconnect schedule."""

import threading
import time

import pytest

from edge.sources.base import CloseFirstLock, SourceUnavailable


def closed() -> SourceUnavailable:
    return SourceUnavailable("source is not open")


def test_close_waits_for_the_read_in_progress_then_later_reads_are_refused():
    lock = CloseFirstLock()
    inside, outcomes = threading.Event(), []
    state = {"reading": False, "closed_during_read": False}

    def reader():
        while True:
            try:
                with lock.reading(closed):
                    state["reading"] = True
                    inside.set()
                    time.sleep(0.02)  # holds the lock, as a fetch does; lets the GIL go
                    state["reading"] = False
                outcomes.append("frame")
            except SourceUnavailable as error:
                outcomes.append(str(error))
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert inside.wait(5.0)

    def close():
        with lock.closing():
            state["closed_during_read"] = state["reading"]

    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    closer.join(5.0)
    assert not closer.is_alive(), f"close() still waits after 5 s; the reader read {len(outcomes)} frames meanwhile"
    thread.join(5.0)
    assert not thread.is_alive(), "the reader never saw the close"
    assert outcomes[-1] == "source is not open" and set(outcomes[:-1]) <= {"frame"}
    assert not state["closed_during_read"]


def test_open_after_close_lets_reads_through_again():
    lock = CloseFirstLock()
    with lock.closing():
        pass
    with pytest.raises(SourceUnavailable, match="not open"):
        with lock.reading(closed):
            pass
    with lock.opening():
        pass
    with lock.reading(closed):
        pass


def test_reconnect_schedule_doubles_to_its_cap_resets_on_success_and_never_blocks_past_the_timeout():
    from edge.sources.base import ReconnectSchedule

    schedule = ReconnectSchedule(initial_s=0.01, max_s=0.03)

    def refuse():
        raise OSError("no device")

    delays = []
    for _ in range(3):
        with pytest.raises(OSError):
            schedule.attempt(refuse, timeout_s=1.0, down="cam is down")
        delays.append(schedule.delay_s)
    assert delays == [0.02, 0.03, 0.03]
    schedule.failed()  # the next attempt is 0.03 s away: a read with a shorter timeout is told so
    with pytest.raises(SourceUnavailable, match=r"cam is down; next reconnect in 0\.0 s"):
        schedule.attempt(lambda: "connected", timeout_s=0.0, down="cam is down")
    assert schedule.attempt(lambda: "connected", timeout_s=1.0, down="cam is down") == "connected"
    assert schedule.delay_s == 0.01
