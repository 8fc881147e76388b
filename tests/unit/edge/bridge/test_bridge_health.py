"""Per-camera health rules with injected time: each way to become unhealthy, and how it clears."""

import pytest

from edge.transport import wire
from edge.bridge.health import REASONS, CameraHealth
from edge.bridge.registers import block, read_number, HEARTBEAT, REASON, SCORE, STATUS, HEALTHY, NO_SCORE


def beat(state="running", source="delivering", period=1.0, session="0123456789abcdef"):
    return wire.Heartbeat("cam1", period, 1.0, wire.Counters(), state=state, session=session,
                          source=wire.SourceStatus(source, 0.0))


def decision(verdict="ok"):
    score = None if verdict == "fault" else 0.2
    return wire.Decision("cam1", 1, verdict, "", score, None if score is None else 0.5, 0, 0, 0, 0.0, "m", "t1",
                         session="0123456789abcdef", seq=1)


def test_unhealthy_until_the_first_heartbeat_then_healthy_ready_and_busy():
    health = CameraHealth("cam1")
    assert health.state(0.0).reason == "no_heartbeat_yet" and not health.state(0.0).healthy
    health.heartbeat(beat(), 0.0)
    state = health.state(0.1)
    assert state.healthy and state.ready and state.busy and not state.fault and state.heartbeats == 1


def test_three_missed_periods_is_a_timeout_and_the_next_heartbeat_heals_it():
    health = CameraHealth("cam1", misses=3)
    health.heartbeat(beat(period=0.5), 10.0)
    assert health.state(11.5).healthy  # exactly 3 periods: not yet late
    assert health.state(11.51).reason == "heartbeat_timeout"
    health.heartbeat(beat(period=0.5), 12.0)
    assert health.state(12.0).healthy


@pytest.mark.parametrize("event, reason", [("fault", "fault"), ("gap", "seq_gap"), ("restart", "restart")])
def test_fault_gap_and_restart_latch_for_three_periods(event, reason):
    health = CameraHealth("cam1")
    health.heartbeat(beat(), 0.0)
    getattr(health, event)(0.5, *(("source_unavailable", "lost") if event == "fault" else ()))
    health.heartbeat(beat(), 1.0)
    health.heartbeat(beat(), 2.0)
    health.heartbeat(beat(), 3.0)
    assert health.state(3.4).reason == reason and not health.state(3.4).healthy
    assert health.state(3.4).fault == (reason == "fault")
    assert health.state(3.5).healthy


def test_a_fault_verdict_latches_like_a_fault_and_counts_by_verdict():
    health = CameraHealth("cam1")
    health.heartbeat(beat(), 0.0)
    health.decision(decision("ok"), 0.1)
    health.decision(decision("fault"), 0.2)
    state = health.state(0.3)
    assert state.reason == "fault" and state.counts == {"ok": 1, "reject": 0, "fault": 1}


@pytest.mark.parametrize("kwargs, reason", [({"state": "stopping"}, "stopping"),
                                            ({"source": "unavailable"}, "source_unavailable")])
def test_a_stopping_daemon_or_a_lost_camera_is_not_healthy(kwargs, reason):
    health = CameraHealth("cam1")
    health.heartbeat(beat(**kwargs), 0.0)
    assert health.state(0.1).reason == reason and not health.state(0.1).healthy


def test_idle_line_is_healthy_and_ready_but_not_busy():
    health = CameraHealth("cam1")
    health.heartbeat(beat(source="idle"), 0.0)
    state = health.state(0.1)
    assert state.healthy and state.ready and not state.busy


def test_register_block_packs_health_and_a_fault_without_score():
    health = CameraHealth("cam1")
    health.heartbeat(beat(), 0.0)
    health.decision(decision("fault"), 0.1)
    state = health.state(0.2)
    words = block(state, state.last, toggle=True)
    assert not words[STATUS] & HEALTHY and words[REASON] == REASONS["fault"] and words[HEARTBEAT] == 1
    assert read_number(words, SCORE, 2, signed=True) == NO_SCORE
    assert all(0 <= word <= 0xFFFF for word in words) and len(words) == 32
