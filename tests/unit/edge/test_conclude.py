"""The concluder: one decision per frame, in the order concluded, published over a real socket."""

import numpy as np
import pytest

from edge.transport import wire
from edge.inspection.conclude import Concluder, Deadline, Result, VerdictSettings
from edge.inspection.parts import PartsConfig, PartTracker
from edge.core.errors import OutputError
from edge.core.frame import Frame
from edge.service.health import Health
from edge.core.logs import camera_log
from edge.transport.publisher import PublishConfig, Publisher
from edge.transport.subscriber import Subscriber
from edge.artifacts.thresholds import Thresholds
from tests.integration.test_zmq_publish import handshake
from tests.ports import free_endpoint

pytestmark = pytest.mark.timeout(30)

THRESHOLDS = Thresholds(model_hash="0" * 64, image_threshold=0.5, version="v1")
MAP = np.zeros((8, 8), np.float32)


class Clock:
    def __init__(self):
        self.now_ns = 0

    def __call__(self):
        return self.now_ns


@pytest.fixture
def line(tmp_path):
    """(concluder, subscriber, errors given to `fail`, clock of the deadlines) for camera cam1."""
    publisher = Publisher("cam1", PublishConfig(endpoint=free_endpoint(), linger_ms=100, maps=False))
    subscriber = Subscriber(publisher.endpoint, cameras=["cam1"], topics=(wire.DECISION, wire.FAULT, wire.HEARTBEAT))
    health = Health("cam1")
    errors = []
    concluder = Concluder("cam1", VerdictSettings(deadline_ms=100, publish_maps=False), THRESHOLDS, "0" * 64, publisher,
                          health, errors.append, camera_log(__name__, "cam1"))
    clock = Clock()
    concluder.deadline = Deadline(100, clock_ns=clock)
    handshake(publisher, subscriber)
    yield concluder, subscriber, errors, clock
    subscriber.close()
    publisher.close()
    health.close()


def frame(frame_id: int) -> Frame:
    return Frame(frame_id, "test", "Mono8", None, receive_ns=0)


def received(subscriber, count: int) -> list:
    messages = []
    while len(messages) < count:
        message = subscriber.recv(timeout=5)
        assert message is not None, f"only {messages} arrived"
        if not isinstance(message, wire.Heartbeat):
            messages.append(message)
    return messages


def test_decisions_leave_in_the_order_concluded_and_a_fault_is_also_on_the_fault_topic(line):
    concluder, subscriber, errors, _ = line
    first, second, third = (concluder.register(frame(n)) for n in (1, 2, 3))
    assert concluder.conclude(Result(second, 0.9, MAP))
    assert concluder.conclude(Result(first, 0.1, MAP))
    assert concluder.conclude(Result(third, fault_kind="overload", fault_message="infer queue full"))
    messages = received(subscriber, 4)
    assert [(type(m).__name__, m.frame_id) for m in messages] == [
        ("Decision", 2), ("Decision", 1), ("Decision", 3), ("Fault", 3)]
    assert [m.verdict for m in messages[:3]] == ["reject", "ok", "fault"]
    assert messages[2].reason == messages[3].message == "overload: infer queue full" and messages[3].code == "overload"
    assert concluder.health.counters() == wire.Counters(frames=3, ok=1, reject=1, fault=1, dropped=1)
    assert not errors and concluder.open_items() == []


def test_a_frame_is_concluded_once_whichever_path_comes_second(line):
    concluder, subscriber, _, _ = line
    item = concluder.register(frame(7))
    assert concluder.conclude(Result(item, fault_kind="shutdown", fault_message="not inspected"))
    assert not concluder.conclude(Result(item, 0.1, MAP)), "a late score published a second decision"
    later = concluder.register(frame(8))
    assert concluder.open_items() == [later]
    concluder.conclude(Result(later, 0.1, MAP))
    assert [(type(m).__name__, m.frame_id) for m in received(subscriber, 3)] == [
        ("Decision", 7), ("Fault", 7), ("Decision", 8)]
    assert concluder.health.counters().frames == 2


def test_a_score_ready_after_the_deadline_is_a_deadline_fault_not_a_pass(line):
    concluder, subscriber, _, clock = line
    item = concluder.register(frame(1))
    clock.now_ns = 100_000_001  # receipt at 0, deadline 100 ms
    concluder.conclude(Result(item, 0.1, MAP))
    decision, fault = received(subscriber, 2)
    assert decision.verdict == "fault" and decision.score == pytest.approx(0.1)
    assert fault.message == "deadline: score ready 100.0 ms after receipt, past the 100 ms deadline"


class Stepping(Clock):
    """Each reading is `step_ns` later than the one before: work between two readings takes that long."""

    def __init__(self, step_ns: int):
        super().__init__()
        self.step_ns = step_ns

    def __call__(self):
        self.now_ns += self.step_ns
        return self.now_ns


@pytest.mark.parametrize("score", [0.1, 0.9])
def test_a_verdict_in_time_when_scored_but_late_when_handed_to_the_socket_is_a_deadline_fault(line, score):
    concluder, subscriber, _, _ = line
    concluder.deadline = Deadline(100, clock_ns=Stepping(60_000_000))  # scored at 60 ms, handed over at 120 ms
    concluder.conclude(Result(concluder.register(frame(1)), score, MAP))
    decision, fault = received(subscriber, 2)
    assert (decision.verdict, fault.code, fault.frame_id) == ("fault", "deadline", 1)
    assert decision.reason == fault.message == ("deadline: handed to the socket 120.0 ms after receipt, past the "
                                                "100 ms deadline")
    assert decision.latency_ms == 120.0 and decision.score == pytest.approx(score)
    assert concluder.health.counters() == wire.Counters(frames=1, fault=1)


def test_an_ok_carries_the_latency_of_its_handover(line):
    concluder, subscriber, _, _ = line
    concluder.deadline = Deadline(100, clock_ns=Stepping(30_000_000))
    concluder.conclude(Result(concluder.register(frame(1)), 0.1, MAP))
    (decision,) = received(subscriber, 1)
    assert (decision.verdict, decision.latency_ms, decision.decision_ns) == ("ok", 60.0, 60_000_000)


def test_new_thresholds_judge_the_next_frame_and_are_named_in_its_decision(line):
    concluder, subscriber, _, _ = line
    concluder.set_thresholds(Thresholds(model_hash="0" * 64, image_threshold=0.05, version="v2"))
    concluder.conclude(Result(concluder.register(frame(1)), 0.1, MAP))
    (decision,) = received(subscriber, 1)
    assert (decision.verdict, decision.thresholds_version, decision.threshold) == ("reject", "v2", 0.05)


def test_a_publisher_that_is_gone_is_an_output_error_and_the_frame_still_counts(line):
    concluder, _, errors, _ = line
    concluder.publisher.close()
    assert concluder.conclude(Result(concluder.register(frame(1)), 0.1, MAP))
    assert [type(error) for error in errors] == [OutputError] and "cannot publish" in str(errors[0])
    assert errors[0].exit_code == OutputError.exit_code and concluder.health.counters().frames == 1


class Monotonic:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _request(part_id: str, job: int) -> wire.PartRequest:
    return wire.PartRequest(part_id, job, "a" * 16, "b" * 16)


def test_a_part_id_rides_on_the_next_frame_and_a_part_no_frame_came_for_is_a_fault_never_a_gap(line):
    concluder, subscriber, errors, _ = line
    clock = Monotonic()
    concluder.parts = PartTracker(PartsConfig(timeout_s=2.0), clock=clock)
    assert concluder.parts.arm(_request("P1", 1)) is None
    first = concluder.register(frame(1))
    second = concluder.register(frame(2))  # no part armed: a frame of the free-running camera
    assert concluder.parts.arm(_request("P2", 2)) is None
    assert concluder.parts.arm(_request("P2", 2)) is None  # the bridge resent it: armed once
    assert concluder.parts.arm(_request("P3", 3)) is None  # P2's frame never came: P3 replaces it
    third = concluder.register(frame(3))
    assert concluder.conclude_missing_parts() == 1
    assert concluder.parts.arm(_request("P4", 4)) is None
    clock.now += 2.5
    assert concluder.conclude_missing_parts() == 1  # P4: no frame within the timeout
    for item in (first, second, third):
        assert concluder.conclude(Result(item, 0.1, MAP))
    decisions = [m for m in received(subscriber, 7) if isinstance(m, wire.Decision)]
    by_part = {d.part_id: d for d in decisions}
    assert set(by_part) == {None, "P1", "P2", "P3", "P4"} and len(decisions) == 5
    assert by_part["P1"].frame_id == 1 and by_part["P3"].frame_id == 3 and by_part[None].frame_id == 2
    for part in ("P2", "P4"):
        missing = by_part[part]
        assert missing.verdict == "fault" and missing.frame_id == wire.NO_FRAME
        assert missing.reason.startswith("part_missing: no frame for part"), missing.reason
    assert "before part 'P3' was handed over" in by_part["P2"].reason and "within 2 s" in by_part["P4"].reason
    assert concluder.health.counters().frames == 3 and not errors


def test_a_map_anomalous_everywhere_is_a_reject_and_a_map_below_every_good_part_a_fault(line):
    concluder, subscriber, _, _ = line
    concluder.set_thresholds(Thresholds(model_hash="0" * 64, image_threshold=0.5, version="v2",
                                        quality={"map_mean": (0.2, 0.4)}))
    everywhere, below, inside = (concluder.register(frame(n)) for n in (1, 2, 3))
    concluder.conclude(Result(everywhere, 0.1, np.full((8, 8), 0.45, np.float32)))
    concluder.conclude(Result(below, 0.1, np.full((8, 8), 0.1, np.float32)))
    concluder.conclude(Result(inside, 0.1, np.full((8, 8), 0.3, np.float32)))
    decisions = [m for m in received(subscriber, 4) if isinstance(m, wire.Decision)]
    assert [d.verdict for d in decisions] == ["reject", "fault", "ok"]
    assert decisions[0].reason == "map_mean 0.45 above the calibrated range [0.2, 0.4]: anomalous everywhere"
    assert decisions[1].reason == "frame_quality: map_mean 0.1 outside the calibrated range [0.2, 0.4]"


def test_a_part_armed_wakes_an_acquisition_that_waits_for_parts():
    import threading

    parts = PartTracker(PartsConfig(acquire="per_part"))
    assert parts.per_part and not parts.wait_armed(0.01)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(parts.wait_armed(30)))
    waiter.start()
    parts.arm(_request("P1", 1))
    waiter.join(30)
    assert woke == [True] and parts.bind() == "P1" and parts.bind() is None
