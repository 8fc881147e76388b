import json
import math

import numpy as np
import pytest

from edge.transport import wire
from edge.transport.wire import WireError

SESSION = "0123456789abcdef"


def _decision(**overrides) -> wire.Decision:
    values = dict(camera="cam1", frame_id=42, verdict="reject", reason="score 0.9 > threshold 0.5", score=0.9,
                  threshold=0.5, device_timestamp_ns=123, receive_ns=1_000, decision_ns=5_001_000, latency_ms=5.0,
                  model_hash="ab" * 32, thresholds_version="2024-01-01", region_px=17, session=SESSION, seq=3,
                  wall_ns=1_700_000_000_000_000_000)
    values.update(overrides)
    return wire.Decision(**values)


def _heartbeat(source: wire.SourceStatus | None = None) -> wire.Heartbeat:
    return wire.Heartbeat("cam1", 1.0, 12.5, wire.Counters(frames=10, ok=7, reject=2, fault=1, dropped=0),
                          seqs={"decision": 10, "map": 10, "fault": 1}, state="running",
                          reliable={"pending": 0, "capacity": 1000}, overruns=0, session=SESSION, seq=9, wall_ns=5,
                          source=source)


@pytest.mark.parametrize("message", [
    _decision(),
    _decision(verdict="ok", reason=""),
    _decision(verdict="fault", reason="backend timeout", score=None, threshold=None),
    _heartbeat(),
    _heartbeat(wire.SourceStatus("idle", 312.5)),
    wire.Fault("cam1", "camera_lost", "no frame for 2 s", None, SESSION, 1, 7),
    wire.Fault("cam1", "backend_error", "CUDA error", 12, SESSION, 2, 7),
])
def test_round_trip_of_every_kind_is_exact(message):
    frames = wire.encode(message)
    assert len(frames) == 2
    assert wire.decode(frames) == message


def test_non_finite_score_of_a_fault_travels_as_null():
    frames = wire.encode(_decision(verdict="fault", reason="non-finite score nan", score=math.nan))
    assert json.loads(frames[1])["score"] is None
    assert wire.decode(frames).score is None


@pytest.mark.parametrize("score", [math.nan, math.inf, None])
def test_an_ok_or_reject_without_a_finite_score_is_refused(score):
    with pytest.raises(WireError, match="only a fault may lack a finite score"):
        wire.encode(_decision(verdict="ok", score=score))


def test_topics_end_in_slash_so_cam1_never_matches_cam10():
    assert wire.topic("decision", "cam1") == b"decision.cam1/"
    assert not wire.topic("decision", "cam10").startswith(wire.subscription_prefix("decision", "cam1"))
    assert wire.topic("decision", "cam10").startswith(wire.subscription_prefix("decision", None))
    assert not wire.topic("decision", "cam1").startswith(wire.subscription_prefix("map", None))


@pytest.mark.parametrize("camera", ["cam.1", "cam/1", "", "c" * 65, "kamera ü", None, ["cam1"], "line1\n"])
def test_camera_names_that_would_break_topics_are_refused(camera):
    with pytest.raises(WireError, match="camera name"):
        wire.topic("decision", camera)


def test_a_topic_or_session_with_a_final_newline_is_refused():
    with pytest.raises(WireError, match="camera part"):
        wire.parse_topic(b"decision.line1\n/")
    frames = wire.encode(_decision())
    header = frames[1].replace(b'"session":"', b'"session":"0123456789abcdef\\n', 1)
    with pytest.raises(WireError, match="session"):
        wire.decode([frames[0], header])


def test_a_camera_name_is_checked_once_but_a_refused_one_is_refused_on_every_message():
    assert wire.encode(_decision())[0] is wire.encode(_decision(frame_id=43))[0], "the topic was built twice"
    for _ in range(2):
        with pytest.raises(WireError, match="camera name 'cam.1'"):
            wire.encode(_decision(camera="cam.1"))


def test_uint8_map_round_trip_keeps_shape_scale_and_values():
    rng = np.random.default_rng(0)
    values = rng.uniform(0.0, 2.0, size=(64, 48)).astype(np.float32)
    message = wire.make_map("cam1", 5, values, size=None, dtype="uint8", value_range=(0.0, 2.0))
    message = wire.MapMessage(**{**message.__dict__, "session": SESSION, "seq": 1})
    frames = wire.encode(message)
    assert len(frames) == 3 and len(frames[2]) == 64 * 48
    header = json.loads(frames[1])
    assert header["shape"] == [64, 48] and header["dtype"] == "uint8" and header["value_range"] == [0.0, 2.0]
    decoded = wire.decode(frames)
    np.testing.assert_array_equal(decoded.data, message.data)
    np.testing.assert_allclose(decoded.values(), values, atol=2.0 / 255)


def test_float16_map_is_resized_and_little_endian():
    values = np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(1, 128, 128)
    message = wire.make_map("cam1", 5, values, size=(32, 16), dtype="float16")
    assert message.data.shape == (32, 16) and message.dtype == "float16"
    message = wire.MapMessage(**{**message.__dict__, "session": SESSION, "seq": 1})
    frames = wire.encode(message)
    assert frames[2] == message.data.astype("<f2").tobytes()
    decoded = wire.decode(frames)
    np.testing.assert_array_equal(decoded.data, message.data)
    assert decoded.value_range is None


def test_uint8_map_with_non_finite_values_is_clipped_not_refused():
    values = np.array([[0.0, np.nan], [np.inf, 1.0]], dtype=np.float32)
    message = wire.make_map("cam1", 1, values, size=None, value_range=(0.0, 1.0))
    assert message.data.tolist() == [[0, 0], [255, 255]]


def test_to_json_dict_leaves_pixels_out():
    message = wire.make_map("cam1", 1, np.zeros((4, 4)), size=None)
    record = wire.to_json_dict(message)
    assert record["type"] == "map" and record["shape"] == [4, 4] and "data" not in record
    json.dumps(record)


def _good_decision_frames():
    return wire.encode(_decision())


def _with_header(**changes):
    frames = _good_decision_frames()
    header = json.loads(frames[1])
    for key, value in changes.items():
        if value is KeyError:
            del header[key]
        else:
            header[key] = value
    return [frames[0], json.dumps(header).encode()]


def test_a_heartbeat_without_source_status_is_what_publishers_before_it_sent():
    """`source` is an optional field added within schema 1: older headers lack it and still decode."""
    frames = wire.encode(_heartbeat())
    assert "source" not in json.loads(frames[1])
    assert wire.decode(frames).source is None
    with_source = json.loads(wire.encode(_heartbeat(wire.SourceStatus("delivering", 0.02)))[1])
    assert with_source["schema"] == 1 and with_source["source"] == {"state": "delivering", "last_frame_age_s": 0.02}


@pytest.mark.parametrize("source, expected", [
    ({"state": "asleep", "last_frame_age_s": 1.0}, "source state 'asleep', expected one of delivering, idle"),
    ({"state": "idle"}, "source: header lacks field 'last_frame_age_s'"),
    ("idle", "field 'source' is 'idle'"),
])
def test_a_heartbeat_with_a_malformed_source_status_is_refused(source, expected):
    frames = wire.encode(_heartbeat())
    header = json.loads(frames[1])
    header["source"] = source
    with pytest.raises(WireError, match=expected):
        wire.decode([frames[0], json.dumps(header).encode()])


def test_an_unknown_source_state_is_not_encoded():
    with pytest.raises(WireError, match="source state 'asleep'"):
        wire.encode(_heartbeat(wire.SourceStatus("asleep", 1.0)))


def _map_frames():
    message = wire.make_map("cam1", 1, np.zeros((4, 4)), size=None)
    return wire.encode(wire.MapMessage(**{**message.__dict__, "session": SESSION, "seq": 1}))


@pytest.mark.parametrize("frames, expected", [
    ([b"decision.cam1/"], "expected \\[topic, header\\]"),
    ([b"decision.cam1", b"{}"], "expected '<kind>.<camera>/'"),
    ([b"status.cam1/", b"{}"], "kind one of"),
    ([b"decision.cam1/", b"\xff"], "not UTF-8 JSON"),
    ([b"decision.cam1/", b"[1, 2]"], "expected an object"),
    ([b"decision.cam1/", b"{}", b"extra"], "3 frames, expected 2"),
    (_with_header(schema=2), "schema 2, this decoder reads schema 1"),
    (_with_header(camera="cam2"), "header camera 'cam2' does not match the topic"),
    (_with_header(kind="map"), "header kind 'map' does not match"),
    (_with_header(verdict="maybe"), "verdict 'maybe'"),
    (_with_header(score=None), "field 'score' is None"),
    (_with_header(frame_id="42"), "field 'frame_id' is '42' \\(str\\), expected int"),
    (_with_header(frame_id=True), "field 'frame_id' is True"),
    (_with_header(seq=0), "seq 0, expected ≥ 1"),
    (_with_header(session="xyz"), "session 'xyz'"),
    (_with_header(model_hash=KeyError), "header lacks field 'model_hash'"),
    (_map_frames()[:2], "2 frames, expected 3"),
    (_map_frames()[:2] + [b"\x00" * 15], "payload of 15 bytes, expected 16 for uint8 4×4"),
])
def test_malformed_messages_raise_an_error_naming_the_fault(frames, expected):
    with pytest.raises(WireError, match=expected) as caught:
        wire.decode(frames)
    if frames and frames[0].endswith(b"/") and b"." in frames[0]:
        assert "topic" in str(caught.value)


def test_map_header_with_bad_shape_is_refused():
    frames = _map_frames()
    header = json.loads(frames[1])
    header["shape"] = [4, -4]
    with pytest.raises(WireError, match="map shape"):
        wire.decode([frames[0], json.dumps(header).encode(), frames[2]])


def test_wire_error_is_a_data_error_with_sysexits_code():
    assert WireError("x").exit_code == 65


def test_a_decision_carries_the_plcs_part_id_and_a_header_without_one_still_decodes():
    with_part = _decision(part_id="DMC-0815/7")
    assert wire.decode(wire.encode(with_part)) == with_part
    missing = _decision(verdict="fault", reason="part_missing: no frame", score=None, threshold=None,
                        frame_id=wire.NO_FRAME, part_id="4711")
    assert wire.decode(wire.encode(missing)) == missing
    topic, header = wire.encode(_decision())
    body = json.loads(header)
    assert body["part_id"] is None
    del body["part_id"]  # a publisher that predates the field
    assert wire.decode([topic, json.dumps(body).encode()]).part_id is None


@pytest.mark.parametrize("part_id", ["", "x" * 65, "line\nfeed", 17])
def test_a_part_id_that_is_no_printable_text_of_1_to_64_characters_is_refused_both_ways(part_id):
    with pytest.raises(WireError, match="part_id"):
        wire.encode(_decision(part_id=part_id))
    topic, header = wire.encode(_decision())
    with pytest.raises(WireError, match="part_id"):
        wire.decode([topic, json.dumps({**json.loads(header), "part_id": part_id}).encode()])


def test_part_requests_and_replies_round_trip_and_malformed_ones_name_the_fault():
    request = wire.PartRequest("P-1", 3, "a" * 16, SESSION)
    assert wire.decode_part_request(wire.encode_part_request(request)) == request
    reply = wire.PartReply("P-1", 3, "a" * 16, False, "daemon restarted")
    assert wire.decode_part_reply(wire.encode_part_reply(reply)) == reply
    for body, says in [(b"\xff", "not UTF-8 JSON"), (b"[]", "expected a JSON object"),
                       (json.dumps({"schema": 9}).encode(), "schema 9"),
                       (json.dumps({"schema": 1, "job": 0, "origin": "a" * 16}).encode(), "job 0"),
                       (json.dumps({"schema": 1, "job": 1, "origin": "A"}).encode(), "origin 'A'"),
                       (json.dumps({"schema": 1, "job": 1, "origin": "a" * 16, "session": SESSION,
                                    "part_id": ""}).encode(), "part_id")]:
        with pytest.raises(WireError, match=says):
            wire.decode_part_request(body)
