"""edge.service.health against a real notify socket and a real HTTP scrape."""

import os
import socket
import time
import urllib.request

import pytest

pytest.importorskip("prometheus_client", reason="prometheus-client is a base dependency; install it")
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edge.core.errors import ConfigError  # noqa: E402
from edge.core.notify import SystemdNotifier
from edge.service.health import Health, start_metrics_server  # noqa: E402


class NotifyListener:
    """What systemd does: a bound AF_UNIX datagram socket that reads notifications."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)  # a missing datagram fails the test instead of hanging it

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode("utf-8").split("\n")

    def pending(self) -> list[list[str]]:
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(4096).decode("utf-8").split("\n"))
        except BlockingIOError:
            return messages
        finally:
            self.sock.settimeout(5.0)

    def close(self):
        self.sock.close()


@pytest.fixture
def path_listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    listener = NotifyListener(path)
    yield path, listener
    listener.close()


def test_notifier_speaks_sd_notify_over_a_path_socket(path_listener):
    path, listener = path_listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    try:
        assert notifier.enabled
        assert notifier.ready("warm\nup")
        assert listener.receive() == ["READY=1", "STATUS=warm up"]
        notifier.watchdog()
        assert listener.receive() == ["WATCHDOG=1"]
        notifier.status("42 frames")
        assert listener.receive() == ["STATUS=42 frames"]
        notifier.stopping()
        assert listener.receive() == ["STOPPING=1"]
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        reload_message = listener.receive()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert reload_message[0] == "RELOADING=1"
        key, value = reload_message[1].split("=")
        assert key == "MONOTONIC_USEC" and before <= int(value) <= after
    finally:
        notifier.close()


def test_notifier_reaches_an_abstract_socket():
    name = f"hlgfa-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = NotifyListener(b"\0" + name.encode())
    notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
    try:
        notifier.watchdog()
        assert listener.receive() == ["WATCHDOG=1"]
    finally:
        notifier.close()
        listener.close()


def test_notifier_is_a_no_op_without_notify_socket():
    notifier = SystemdNotifier({"WATCHDOG_USEC": "10000000"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval() is None


def test_notifier_survives_a_vanished_manager(tmp_path):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.watchdog() is False  # logged, not raised: the inspection keeps running
    notifier.close()


@pytest.mark.timeout(60)  # a blocking send would hang here; the timeout turns that into a failure
def test_notifier_does_not_block_when_the_manager_stops_reading(path_listener):
    path, listener = path_listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    try:
        # Until the socket queue (net.unix.max_dgram_qlen datagrams) is full, however large it is.
        sent = 0
        while notifier.watchdog():
            sent += 1
        assert sent > 0, "the first ping, with the queue empty, was not sent"
        assert notifier.ready() is False  # a state change waits a little, then gives up too
        assert listener.receive() == ["WATCHDOG=1"]  # what was sent before it filled is intact
    finally:
        notifier.close()


def test_watchdog_interval_is_half_the_timeout_and_honours_watchdog_pid(path_listener):
    path, _ = path_listener
    mine = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(mine).watchdog_interval() == pytest.approx(5.0)
    no_pid = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}
    assert SystemdNotifier(no_pid).watchdog_interval() == pytest.approx(1.5)
    someone_else = dict(mine, WATCHDOG_PID=str(os.getpid() + 1))
    assert SystemdNotifier(someone_else).watchdog_interval() is None


@pytest.mark.parametrize("env, named", [
    ({"NOTIFY_SOCKET": "vsock:2:1234"}, "NOTIFY_SOCKET"),
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "ten"}, "WATCHDOG_USEC"),
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "0"}, "WATCHDOG_USEC"),
])
def test_notifier_refuses_what_it_cannot_honour(env, named):
    with pytest.raises(ConfigError, match=named):
        SystemdNotifier(env)


def test_health_tick_pings_the_watchdog_when_due_and_reports_status(path_listener):
    path, listener = path_listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    health = Health("line1", notifier=SystemdNotifier(env), status_interval_s=10.0)
    try:
        health.ready()
        assert listener.receive()[0] == "READY=1"
        health.frame_done("ok", {"infer": 0.01})
        health.frame_done("fault", {"infer": 0.2}, fault_kind="timeout")
        health.dropped(3)
        health.tick(now=100.0)  # watchdog and status both due
        messages = listener.pending()
        assert ["WATCHDOG=1"] in messages
        assert ["STATUS=line1: 2 frames, ok 1, reject 0, fault 1, dropped 3"] in messages
        health.tick(now=101.0)  # interval is 2 s: nothing due yet
        assert listener.pending() == []
        health.tick(now=102.0)
        assert listener.pending() == [["WATCHDOG=1"]]
        health.reloading()
        assert listener.receive()[0] == "RELOADING=1"
        health.reloaded()
        assert listener.receive()[0] == "READY=1"
        health.stopping()
        assert listener.receive()[0] == "STOPPING=1"
    finally:
        health.close()


def test_health_rejects_verdicts_it_does_not_know():
    health = Health("line1", notifier=SystemdNotifier({}))
    with pytest.raises(ValueError, match="'pass'"):
        health.frame_done("pass", {})
    with pytest.raises(ValueError, match="fault_kind"):
        health.frame_done("fault", {})  # a fault must say what kind
    with pytest.raises(ValueError, match="fault_kind"):
        health.frame_done("ok", {}, fault_kind="timeout")


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_are_served_over_http_from_a_private_registry():
    health = Health("line1", metrics_port=0, metrics_address="127.0.0.1", notifier=SystemdNotifier({}))
    other = Health("line2", metrics_port=0, metrics_address="127.0.0.1", notifier=SystemdNotifier({}))
    try:
        health.model_info(model_hash="abc123", thresholds_version="7")
        health.frame_done("ok", {"preprocess": 0.002, "infer": 0.012})
        health.frame_done("reject", {"infer": 0.15})
        health.frame_done("fault", {"infer": 0.9}, fault_kind="timeout")
        health.fault("source_lost")
        health.dropped(2)
        health.queue_depth("infer", 3)

        samples = scrape(health.metrics.port)
        assert samples[("hlgfa_frames_total", ())] == 3
        assert samples[("hlgfa_verdicts_total", (("verdict", "ok"),))] == 1
        assert samples[("hlgfa_verdicts_total", (("verdict", "reject"),))] == 1
        assert samples[("hlgfa_verdicts_total", (("verdict", "fault"),))] == 1
        assert samples[("hlgfa_faults_total", (("reason_kind", "timeout"),))] == 1
        assert samples[("hlgfa_faults_total", (("reason_kind", "source_lost"),))] == 1
        assert samples[("hlgfa_dropped_frames_total", ())] == 2
        assert samples[("hlgfa_queue_depth", (("stage", "infer"),))] == 3
        assert samples[("hlgfa_latency_seconds_count", (("stage", "infer"),))] == 3
        assert samples[("hlgfa_latency_seconds_bucket", (("le", "0.02"), ("stage", "infer")))] == 1
        assert samples[("hlgfa_latency_seconds_bucket", (("le", "0.2"), ("stage", "infer")))] == 2
        assert samples[("hlgfa_model_info", (("camera", "line1"), ("model_hash", "abc123"),
                                             ("thresholds_version", "7")))] == 1

        # The second pipeline's registry is its own: nothing of line1 leaks into it.
        assert scrape(other.metrics.port)[("hlgfa_frames_total", ())] == 0
    finally:
        health.close()
        other.close()


def test_a_taken_metrics_port_is_a_config_error():
    first = Health("line1", metrics_port=0, notifier=SystemdNotifier({}))
    try:
        with pytest.raises(ConfigError, match=f"127.0.0.1:{first.metrics.port}"):
            Health("line2", metrics_port=first.metrics.port, notifier=SystemdNotifier({}))
    finally:
        first.close()


def _closed_by_the_server(connection, timeout_s: float = 10.0) -> bool:
    connection.settimeout(timeout_s)
    try:
        return connection.recv(1) == b""
    except (socket.timeout, ConnectionResetError):
        return False


def test_idle_connections_to_the_metrics_port_are_timed_out_and_a_scrape_gets_through_after():
    """Idle connections held forever took the descriptors the frame path needed (issue 25, item 7)."""
    server = start_metrics_server(0, "127.0.0.1", CollectorRegistry(), max_connections=4, idle_timeout_s=0.5)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        assert all(_closed_by_the_server(connection) for connection in idle)
        registry_text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read()
        assert registry_text is not None
    finally:
        for connection in idle:
            connection.close()
        server.stop()


def test_connections_over_the_cap_are_closed_at_once_and_those_served_stay_until_their_timeout():
    server = start_metrics_server(0, "127.0.0.1", CollectorRegistry(), max_connections=4, idle_timeout_s=120)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        closed = [connection for connection in idle if _closed_by_the_server(connection, timeout_s=0.5)]
        # the first 4 are served (each waits for its request); only they can still be open
        deadline = time.monotonic() + 10
        while len(closed) < 16 and time.monotonic() < deadline:
            closed += [c for c in idle if c not in closed and _closed_by_the_server(c, timeout_s=0.1)]
        assert len(closed) == 16
    finally:
        for connection in idle:
            connection.close()
        server.stop()


def test_a_request_that_fails_at_the_metrics_port_is_one_warning_line_not_a_traceback(capfd, caplog):
    """socketserver prints a traceback for each request whose handler raised (a client that hung up
    before the answer: BrokenPipeError); junk at the port is a line per address and cause instead."""
    server = start_metrics_server(0, "127.0.0.1", CollectorRegistry())
    try:
        with caplog.at_level("WARNING", logger="edge.service.health"):
            for _ in range(3):
                try:
                    raise BrokenPipeError(32, "Broken pipe")
                except BrokenPipeError:
                    server._server.handle_error(None, ("127.0.0.1", 40000))
    finally:
        server.stop()
    assert "Traceback" not in capfd.readouterr().err
    assert [r.getMessage() for r in caplog.records] == [
        "metrics endpoint: a request from 127.0.0.1 failed: BrokenPipeError: [Errno 32] Broken pipe"]
