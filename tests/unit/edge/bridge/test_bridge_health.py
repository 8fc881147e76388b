"""Per-camera health rules with injected time: each way to become unhealthy, and how it clears."""

import pytest

from edge.transport import wire
from edge.bridge.health import FAULT_CODES, REASONS, CameraHealth, FaultRateConfig
from edge.bridge.registers import (BLOCK, FAULT_CODE, HEALTHY, HEARTBEAT, NO_SCORE, PART_ID, PART_ID_NOT_A_NUMBER,
                                   REASON, REJECT, SCORE, STATUS, block, part_number, read_number)


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


def test_a_fault_verdict_diverts_the_part_and_leaves_the_camera_healthy():
    health = CameraHealth("cam1")
    health.heartbeat(beat(), 0.0)
    health.decision(decision("ok"), 0.1)
    health.decision(decision("fault"), 0.2)
    state = health.state(0.3)
    assert state.healthy and state.reason == "" and not state.fault
    assert state.counts == {"ok": 1, "reject": 0, "fault": 1} and state.recent_faults == 1
    assert state.fault_code == "fault_verdict" and state.faults == 1


def test_a_part_fault_message_is_shown_without_latching_but_a_system_fault_latches():
    health = CameraHealth("cam1")
    health.heartbeat(beat(), 0.0)
    for code in wire.PART_FAULTS:
        health.fault(0.1, code, "one part")
    assert health.state(0.2).healthy and health.state(0.2).fault_code == wire.PART_FAULTS[-1]
    health.fault(0.3, "backend_restarted", "the backend restarted")
    assert health.state(0.4).reason == "fault" and health.state(0.4).fault


@pytest.mark.parametrize("pattern, trips_at", [
    (["fault"] * 10, 9),                                 # 10 in a row (default consecutive)
    (["fault", "fault", "ok"] * 18, 52),                 # 36 of the last 100 (more than max_in_window 35)
])
def test_a_fault_rate_makes_the_camera_unhealthy_for_the_hold_time_then_counts_afresh(pattern, trips_at):
    health = CameraHealth("cam1", fault_rate=FaultRateConfig())
    health.heartbeat(beat(), 0.0)
    for index, verdict in enumerate(pattern):
        health.decision(decision(verdict), 0.5)
        assert health.state(0.5).healthy == (index < trips_at), index
        if index == trips_at:
            break
    state = health.state(0.5)
    assert state.reason == "fault_rate" and state.reason_code == REASONS["fault_rate"] and state.fault
    assert state.fault_code == "fault_rate" and state.recent_faults == 0
    health.heartbeat(beat(), 3.0)
    assert health.state(3.6).healthy  # the hold time (3 periods) has passed: counting starts afresh
    health.decision(decision("fault"), 3.7)
    assert health.state(3.7).healthy


def test_fault_rate_settings_that_could_never_trip_are_refused():
    with pytest.raises(ValueError, match="max_in_window 10 must be below window 10"):
        FaultRateConfig(window=10, max_in_window=10)


def test_reset_forgets_a_latched_fault_at_once():
    health = CameraHealth("cam1")
    health.heartbeat(beat(), 0.0)
    health.fault(0.1, "source_unavailable", "lost")
    assert health.state(0.2).reason == "fault"
    health.clear()
    assert health.state(0.2).healthy


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
    faulted = wire.Decision("cam1", 1, "fault", "frame_quality: mean 3 outside", None, None, 0, 0, 0, 0.0, "m", "t1",
                            session="0123456789abcdef", seq=1, part_id="4711")
    health.decision(faulted, 0.1)
    state = health.state(0.2)
    words = block(state, state.last, toggle=True)
    assert words[STATUS] & HEALTHY and words[STATUS] & REJECT and words[REASON] == REASONS[""]
    assert words[HEARTBEAT] == 1 and words[FAULT_CODE] == FAULT_CODES["frame_quality"]
    assert read_number(words, SCORE, 2, signed=True) == NO_SCORE and read_number(words, PART_ID, 2) == 4711
    assert all(0 <= word <= 0xFFFF for word in words) and len(words) == BLOCK == 64


@pytest.mark.parametrize("part_id, number", [(None, 0), ("1", 1), ("4294967294", 4294967294),
                                             ("4294967295", PART_ID_NOT_A_NUMBER), ("0", PART_ID_NOT_A_NUMBER),
                                             ("A-17", PART_ID_NOT_A_NUMBER), ("٣", PART_ID_NOT_A_NUMBER)])
def test_a_part_id_shows_as_its_number_or_as_not_a_number(part_id, number):
    assert part_number(part_id) == number


def test_every_part_fault_kind_has_a_code():
    assert set(FAULT_CODES) - {""} == set(wire.PART_FAULTS)
