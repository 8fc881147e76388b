"""close() gets in ahead of a thread that reads in a loop (edge/sources/base.py CloseFirstLock)."""

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
