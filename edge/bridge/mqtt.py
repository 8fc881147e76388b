"""MQTT, with paho-mqtt: decisions, health and faults to a broker, for MES, historians and dashboards.

Topics (`prefix` default "hlgfa", `bridge_id` default the host name):

    {prefix}/{bridge_id}/status              "online" / "offline"  retained, QoS 1; "offline" is the Last Will
    {prefix}/{bridge_id}/{camera}/decision   one JSON object per decision (the wire's fields: the part's
                                             verdict, reason and part id)                        QoS 1
    {prefix}/{bridge_id}/{camera}/health     JSON health (the system's signal) and counters, on change and
                                             each heartbeat                                      retained, QoS 1
    {prefix}/{bridge_id}/{camera}/fault      JSON {code, message, ...} for each fault the daemon reports  QoS 1

A decision counts as accepted when the broker's PUBACK for it arrived (paho's on_publish). While the
broker is away paho keeps the message and sends it on reconnect; the core retries the same decision
and this adapter then waits for that first publication instead of publishing a second copy. QoS 1 is
at-least-once by definition (a PUBACK lost on a dropped connection makes the broker see it twice), so
consumers de-duplicate by (camera, session, seq), which every decision payload carries.
"""

import json
import logging
import socket
import threading
import time
from pathlib import Path

from pydantic import field_validator

from edge.transport import wire
from edge.bridge.core import DeliveryError
from edge.bridge.health import CameraState
from edge.core.errors import ConfigError
from edge.core.settings import Section

log = logging.getLogger(__name__)

# A copy still unconfirmed after this long (paho did not resend it across a reconnect) is published
# again: at-least-once allows the duplicate, never the loss.
REPUBLISH_S = 10.0


class MqttConfig(Section):
    """`[mqtt]`."""

    broker: str  # HOST:PORT
    prefix: str = "hlgfa"
    bridge_id: str = ""  # "" = this host's name
    client_id: str = ""  # "" = "hlgfa-bridge-<bridge_id>"
    username: str | None = None
    password_file: Path | None = None  # the password, alone in a file (not in the config, not on the command line)
    tls_ca: Path | None = None  # set to use TLS; the broker's certificate must be signed by this CA
    tls_cert: Path | None = None  # client certificate and key, for brokers that authenticate clients by certificate
    tls_key: Path | None = None
    keepalive_s: int = 10
    puback_timeout_s: float = 0.5

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        from edge.bridge.modbus import parse_host_port

        parse_host_port(value, "broker")
        return value

    @field_validator("prefix", "bridge_id")
    @classmethod
    def _topic_level(cls, value: str) -> str:
        if any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
            raise ValueError("expected topic levels without '#', '+' or a leading/trailing '/'")
        return value


def _topic_base(config: MqttConfig) -> str:
    return f"{config.prefix}/{config.bridge_id or socket.gethostname()}"


class Mqtt:
    name = "mqtt"

    def __init__(self, config: MqttConfig):
        try:
            import paho.mqtt.client  # noqa: F401
        except ImportError:
            raise ConfigError("MQTT needs paho-mqtt: pip install -c constraints.txt 'hlgfa-edge[bridge]'") from None
        from edge.bridge.modbus import parse_host_port

        self.config = config
        self.host, self.port = parse_host_port(config.broker, "mqtt.broker")
        self.base = _topic_base(config)
        self.status_topic = f"{self.base}/status"
        self._client = None
        # Message ids are 16 bits and paho reuses them, so a PUBACK is matched to a publication by when it
        # came: mid → the number of PUBACKs seen when it arrived (bounded: at most 65,536 keys).
        self._puback_at: dict[int, int] = {}
        self._pubacks = 0
        # camera → ((session, seq), mid, after, published at)
        self._in_flight: dict[str, tuple[tuple[str, int], int, int, float]] = {}
        self._changed = threading.Condition()
        self._latest: dict[str, CameraState] = {}
        self._faults_sent: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, cameras: list[str], controls=None) -> None:  # MQTT only publishes: no PLC commands
        import paho.mqtt.client as mqtt

        config = self.config
        client_id = config.client_id or f"hlgfa-bridge-{config.bridge_id or socket.gethostname()}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                             clean_session=True)
        client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        if config.username is not None:
            password = None
            if config.password_file is not None:
                try:
                    password = config.password_file.read_text().strip()
                except OSError as error:
                    raise ConfigError(f"mqtt.password_file {config.password_file}: cannot be read ({error})") from None
            client.username_pw_set(config.username, password)
        if config.tls_ca is not None:
            try:
                client.tls_set(ca_certs=str(config.tls_ca), certfile=config.tls_cert and str(config.tls_cert),
                               keyfile=config.tls_key and str(config.tls_key))
            except (OSError, ValueError) as error:
                raise ConfigError(f"mqtt TLS files (tls_ca {config.tls_ca}, tls_cert {config.tls_cert}, tls_key "
                                  f"{config.tls_key}): {error}") from None
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        self._client = client
        for camera in cameras:
            self._latest[camera] = CameraState(camera=camera)
        try:
            client.connect_async(self.host, self.port, keepalive=config.keepalive_s)
        except (OSError, ValueError) as error:
            raise ConfigError(f"mqtt.broker {config.broker}: {error}") from None
        client.loop_start()

    # paho's network thread calls these

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info("MQTT connected to %s:%d; publishing under %s/", self.host, self.port, self.base)
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        with self._lock:
            latest = list(self._latest.values())
        for state in latest:  # what changed while away: the retained health must be current
            self._publish_health(state)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code != 0:
            log.warning("MQTT connection to %s:%d lost (%s); reconnecting", self.host, self.port, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._changed:
            self._pubacks += 1
            self._puback_at[mid] = self._pubacks
            self._changed.notify_all()

    # the core's threads call these

    def deliver(self, decision: wire.Decision, state: CameraState) -> None:
        key = (decision.session, decision.seq)
        with self._lock:
            in_flight = self._in_flight.get(decision.camera)
        if in_flight is not None and in_flight[0] == key and time.monotonic() - in_flight[3] < REPUBLISH_S:
            _, mid, after, _ = in_flight  # published before and not yet confirmed: wait for that copy
        else:
            if not self._client.is_connected():
                raise DeliveryError(f"MQTT broker {self.host}:{self.port} not connected")
            payload = json.dumps(wire.to_json_dict(decision), separators=(",", ":"))
            with self._changed:
                after = self._pubacks  # its PUBACK can only come after this
            # not under our lock: paho calls on_publish holding its own, which publish() also takes
            info = self._client.publish(f"{self.base}/{decision.camera}/decision", payload, qos=1)
            mid = info.mid
            with self._lock:
                self._in_flight[decision.camera] = (key, mid, after, time.monotonic())
        deadline = time.monotonic() + self.config.puback_timeout_s
        with self._changed:
            while self._puback_at.get(mid, 0) <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeliveryError(f"MQTT broker {self.host}:{self.port}: no PUBACK for decision seq "
                                        f"{decision.seq} within {self.config.puback_timeout_s} s")
                self._changed.wait(left)
        with self._lock:
            self._in_flight.pop(decision.camera, None)

    def show(self, state: CameraState) -> None:
        with self._lock:
            self._latest[state.camera] = state
            new_fault = state.faults > self._faults_sent.get(state.camera, 0)
            self._faults_sent[state.camera] = state.faults
        if not self._client.is_connected():
            return  # published on reconnect (_on_connect), not queued stale
        self._publish_health(state)
        if new_fault:
            fault = {"camera": state.camera, "code": state.fault_code, "message": state.fault_message,
                     "session": state.session, "faults": state.faults, "wall_ns": time.time_ns()}
            self._client.publish(f"{self.base}/{state.camera}/fault", json.dumps(fault, separators=(",", ":")), qos=1)

    def _publish_health(self, state: CameraState) -> None:
        health = {"camera": state.camera, "healthy": state.healthy, "reason": state.reason,
                  "reason_code": state.reason_code, "ready": state.ready, "busy": state.busy, "fault": state.fault,
                  "session": state.session, "heartbeats": state.heartbeats, "counts": state.counts,
                  "thresholds_version": state.thresholds_version, "recent_faults": state.recent_faults,
                  "parts_pending": state.parts_pending, "late_results": state.late_results, "wall_ns": time.time_ns()}
        self._client.publish(f"{self.base}/{state.camera}/health", json.dumps(health, separators=(",", ":")),
                             qos=1, retain=True)

    def close(self) -> None:
        if self._client is None:
            return
        if self._client.is_connected():
            # A clean disconnect does not fire the Last Will: say it ourselves, and wait for it.
            info = self._client.publish(self.status_topic, b"offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError):
                pass
        self._client.disconnect()
        self._client.loop_stop()
