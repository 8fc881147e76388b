"""What the page is told, without a browser: the map's fixed colour scale and the region's contour
(edge/view/images.py), and the line's state per camera and for the box (edge/view/live.py) under an
injected clock."""

import numpy as np

from edge.records.recorder import Link
from edge.transport import wire
from edge.view import images
from edge.records.store import HOUR_NS
from edge.view.live import Hours, Hub, LiveState


def test_a_colour_means_the_same_score_whatever_the_map_range():
    threshold = 2.0
    # the same model value (3.0 = 1.5 × the threshold) quantised in two maps of different ranges
    a = np.array([[0, 255, 153]], np.uint8)  # range 0 … 5: 153 → 3.0
    b = np.array([[0, 255, 51]], np.uint8)  # range 2 … 7: 51 → 3.0
    colour_a = images.colour(images.relative(a, 0.0, 5.0, threshold), a)
    colour_b = images.colour(images.relative(b, 2.0, 7.0, threshold), b)
    assert (colour_a[0, 2] == colour_b[0, 2]).all()
    below = images.colour(images.relative(np.array([[40]], np.uint8), 0.0, 5.0, threshold), a)[0, 0]
    assert below[0] == below[1] == below[2] < images.NEUTRAL_HIGH  # under the threshold: grey, no heat
    assert len(set(map(tuple, colour_a[0, 1:]))) == 2 and tuple(colour_a[0, 2]) != tuple(below)
    assert images.relative(a, 0.0, 5.0, None) is None  # a fault before scoring: no scale to anchor


def test_the_region_above_the_threshold_is_outlined_and_nothing_else_changes():
    frame = np.full((120, 120, 3), 90, np.uint8)
    values = np.zeros((30, 30), np.float32)
    values[10:20, 5:15] = 3.0
    rel = values / 2.0
    out = images.overlay(frame, rel)
    changed = (out != frame).any(axis=2)
    ys, xs = np.nonzero(changed)
    # the region is rows 40-80, columns 20-60 at the frame's size; the contour hugs it
    assert 30 <= ys.min() and ys.max() <= 90 and 10 <= xs.min() and xs.max() <= 70
    assert (out == images.CONTOUR_BGR).all(axis=2).sum() > 100
    assert not changed[:25].any() and not changed[:, 80:].any()
    thumb = images.thumb_png(None, rel, (values * 60).astype(np.uint8))
    assert thumb[:4] == b"\x89PNG"


def beat(camera="line1", drift=None, state="running", period=1.0):
    return wire.Heartbeat(camera, period, 1.0, wire.Counters(), state=state, session="0123456789abcdef", seq=1,
                          source=wire.SourceStatus("delivering", 0.0), drift=None if drift is None else {"state": drift})


def test_the_line_state_is_the_worst_of_what_is_wrong():
    now = [100.0]
    hub = Hub()
    try:
        live = LiveState(hub, ["tcp://a:1", "tcp://b:2"], clock=lambda: now[0])
        healthy = {"alive": True, "errors": 0, "disk_alarm": None}
        assert live.box(healthy)["level"] == "bad"  # no daemon connected yet
        for endpoint in ("tcp://a:1", "tcp://b:2"):
            live.on_message(Link(endpoint, True), endpoint)
        live.on_message(beat(), "tcp://a:1")
        assert live.box(healthy) == {"level": "ok", "problems": []}
        live.on_message(beat(drift="drifting"), "tcp://a:1")
        assert live.box(healthy)["level"] == "warn"
        assert live.box({**healthy, "alive": False, "error": "boom"})["level"] == "bad"
        assert live.box({**healthy, "disk_alarm": "full", "refusing": True})["level"] == "bad"
        live.on_message(beat(), "tcp://a:1")
        now[0] += 3.0  # three heartbeat periods: silent
        assert live.health()[0]["state"] == "silent" and live.box(healthy)["level"] == "bad"
        live.on_message(beat(), "tcp://a:1")
        live.on_message(Link("tcp://a:1", False), "tcp://a:1")
        health = live.health()[0]
        assert health["level"] == "bad" and "disconnected" in health["problems"][0]
    finally:
        hub.close()


def test_the_trends_hours_count_what_arrives_on_top_of_the_record():
    hours = Hours()
    t0 = 500 * HOUR_NS
    d = wire.Decision("line1", 1, "reject", "", 0.9, 0.5, 0, 0, 0, 1.0, "ab" * 32, "v1", wall_ns=t0 + 10)
    hours.add(d)
    hours.add(wire.Decision(**{**vars(d), "camera": "line2", "verdict": "ok", "score": 0.2}))
    hours.merge([{"hour_ns": t0 - HOUR_NS, "camera": "line1", "ok": 5, "reject": 0, "fault": 1, "scores": [5] + [0] * 16}])
    both = hours.since(t0 - HOUR_NS)
    assert [(h["hour_ns"], h["ok"], h["reject"], h["fault"]) for h in both] == [(t0 - HOUR_NS, 5, 0, 1), (t0, 1, 1, 0)]
    assert both[1]["scores"][14] == 1 and both[1]["scores"][3] == 1  # 0.9 / 0.5 → 14/8; 0.2 / 0.5 → 3/8
    assert [h["ok"] for h in hours.since(t0, ["line1"])] == [0]
