"""The bridge's MQTT side through a real Mosquitto broker on a free loopback port."""

import pytest

pytest.importorskip("paho.mqtt")

from edge.bridge.core import Bridge, CameraLink  # noqa: E402
from edge.bridge.health import FaultRateConfig  # noqa: E402
from edge.bridge.mqtt import Mqtt, MqttConfig  # noqa: E402
from tests.integration.bridge_parts import (  # noqa: E402
    FakeCamera, Mosquitto, MqttRecorder, wait_for, wait_resends_or_ack)


@pytest.fixture
def broker(tmp_path):
    broker = Mosquitto(tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def camera():
    camera = FakeCamera("cam1")
    yield camera
    camera.close()


def _bridge(camera, broker, **options):
    mqtt = Mqtt(MqttConfig(broker=f"127.0.0.1:{broker.port}", bridge_id="line3", puback_timeout_s=0.5))
    return Bridge([CameraLink(camera.camera, camera.endpoint, camera.reliable)], [mqtt], **options)


def test_decisions_in_order_health_retained_faults_and_offline_on_stop(broker, camera):
    recorder = MqttRecorder(broker.port, "hlgfa/line3/#")
    try:
        with _bridge(camera, broker) as bridge:
            bridge.start()
            wait_for(lambda: any(h["healthy"] for h in recorder.payloads("cam1/health")), "a healthy health message")
            assert "online" in recorder.payloads("line3/status")
            sent = [camera.decide(v) for v in ["ok", "reject", "ok"] * 10]
            wait_for(lambda: camera.acked() == len(sent), "every decision acknowledged after its PUBACK")
            wait_for(lambda: len(recorder.payloads("cam1/decision")) >= len(sent), "every decision at the subscriber")
            got = recorder.payloads("cam1/decision")
            assert [(d["seq"], d["verdict"], d["frame_id"]) for d in got] == [(d.seq, d.verdict, d.frame_id) for d in sent]
            assert all(d["session"] == camera.publisher.session and d["type"] == "decision" for d in got)

            camera.publisher.publish_fault("source_unavailable", "camera lost")
            fault = wait_for(lambda: recorder.payloads("cam1/fault"), "the fault message")[0]
            assert fault["code"] == "source_unavailable" and fault["message"] == "camera lost"
            wait_for(lambda: any(h["reason"] == "fault" and not h["healthy"] for h in recorder.payloads("cam1/health")),
                     "health showing the fault")
        wait_for(lambda: recorder.payloads("line3/status")[-1:] == ["offline"], "offline on a clean stop")
        assert recorder.payloads("cam1/health")[-1]["reason"] == "bridge_stopped"
    finally:
        recorder.close()


def test_a_broker_that_goes_away_and_returns_loses_no_decision_and_none_is_acked_early(broker, camera):
    recorder = MqttRecorder(broker.port, "hlgfa/line3/cam1/decision")
    recorder.close()  # its durable session keeps collecting at the broker while it is away
    with _bridge(camera, broker, retry_s=0.2) as bridge:
        bridge.start()
        wait_for(lambda: bridge.states()["cam1"].healthy, "healthy")
        before = [camera.decide("ok") for _ in range(5)]
        wait_for(lambda: camera.acked() == 5, "acked while the broker is up")
        broker.stop()
        refused = bridge.cameras["cam1"].refused["mqtt"]
        during = [camera.decide(v) for v in ("reject", "ok", "reject")]
        wait_for(lambda: bridge.cameras["cam1"].refused["mqtt"] > refused, "a refusal by the absent broker")
        wait_resends_or_ack(camera, 5, 2 * len(during), "each decision resent twice while the broker is down")
        assert camera.acked() == 5, "a decision was acknowledged without a PUBACK"
        broker.start()
        wait_for(lambda: camera.acked() == 8, "the decisions made while the broker was away acknowledged")
        recorder = MqttRecorder(broker.port, "hlgfa/line3/cam1/decision")
        try:
            sent = [d.seq for d in before + during]
            wait_for(lambda: sorted({d["seq"] for d in recorder.payloads("decision")}) == sent, "all at the subscriber")
            seqs = [d["seq"] for d in recorder.payloads("decision")]
            assert seqs == sorted(seqs), seqs
        finally:
            recorder.close()


def test_a_fault_verdict_diverts_one_part_and_only_a_run_of_faults_makes_the_camera_unhealthy(broker, camera):
    recorder = MqttRecorder(broker.port, "hlgfa/line3/#")
    try:
        with _bridge(camera, broker) as bridge:
            bridge.start()
            wait_for(lambda: any(h["healthy"] for h in recorder.payloads("cam1/health")), "healthy")
            for verdict in ("ok", "fault", "ok", "fault", "reject"):
                camera.decide(verdict)
            wait_for(lambda: camera.acked() == 5, "acknowledged")
            wait_for(lambda: len(recorder.payloads("cam1/decision")) == 5, "every decision")
            assert bridge.states()["cam1"].healthy and bridge.states()["cam1"].recent_faults == 2
            assert all(h["healthy"] for h in recorder.payloads("cam1/health") if h["heartbeats"])
            for _ in range(FaultRateConfig().consecutive):
                camera.decide("fault")
            health = wait_for(lambda: [h for h in recorder.payloads("cam1/health") if h["reason"] == "fault_rate"],
                              "unhealthy after the run of faults")[0]
            assert health["healthy"] is False and health["reason_code"] == 9
            decisions = recorder.payloads("cam1/decision")
            assert [d["verdict"] for d in decisions].count("fault") >= 2 + 5
    finally:
        recorder.close()
