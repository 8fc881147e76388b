"""Daemon health: the systemd notify protocol and Prometheus metrics, for one camera's pipeline.

The pipeline calls one object, `Health`, and never talks to systemd or Prometheus itself:

    health = Health(camera="line1", metrics_port=9101)
    health.model_info(model_hash=..., thresholds_version=..., backend="tensorrt")
    health.ready()                              # after the backend's warm-up inference
    loop:
        health.frame_done("ok", {"preprocess": 0.002, "infer": 0.011, "decide": 0.001})
        health.frame_done("fault", {...}, fault_kind="timeout")
        health.fault("source_lost")             # a fault that belongs to no single frame
        health.dropped(1); health.queue_depth("infer", 3)
        health.tick()                           # ~every 100 ms: watchdog ping + STATUS= when due
    health.stopping(); ...; health.close()

`tick()` must be called from the loop whose stall should count as a hang: the watchdog ping
is the proof that this loop still turns. A loop that is alive but idle (no trigger, no
parts on the line) still ticks, so an idle line is never mistaken for a hang.

systemd's notify protocol is edge/core/notify.py's.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass


from edge.core.errors import ConfigError
from edge.core.http import ConnectionCap
from edge.core.notify import SystemdNotifier
from edge.core.logs import RepeatLimiter, camera_log
from edge.transport.wire import DRIFT_STATES, VERDICTS, Counters

log = logging.getLogger(__name__)

# Per-stage latency on a Jetson runs from ~1 ms (decide) to ~200 ms (a large model end to
# end); the buckets are dense there and have a few wide ones above to show stalls.
LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.010, 0.020, 0.030, 0.050, 0.075, 0.100,
                     0.150, 0.200, 0.300, 0.500, 1.0, 2.5)


# At most this many connections to the metrics port are served at once (a Prometheus server needs
# one); more are closed at once, so idle or junk connections never take the descriptors the frame
# path needs ("Too many open files" on reading a frame).
MAX_METRICS_CONNECTIONS = 8
# A connection that sends no complete request within this long is closed.
METRICS_IDLE_TIMEOUT_S = 5.0


@dataclass
class MetricsServer:
    """A running Prometheus endpoint; `port` is the bound port (useful when 0 was asked for)."""

    address: str
    port: int
    _server: object
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(port: int, address: str, registry, max_connections: int = MAX_METRICS_CONNECTIONS,
                         idle_timeout_s: float = METRICS_IDLE_TIMEOUT_S) -> MetricsServer:
    """Serve `registry` at http://address:port/metrics in a daemon thread: one thread per connection,
    at most `max_connections` at once, each closed after `idle_timeout_s` without a request."""
    import socket
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    if not 0 <= port <= 65535:
        raise ConfigError(f"metrics port {port}: expected 0..65535")
    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as error:
        raise ConfigError(f"metrics endpoint {address}:{port}: the address does not resolve ({error.strerror})") from None
    failures = RepeatLimiter()
    cap = max_connections

    class Handler(WSGIRequestHandler):
        timeout = idle_timeout_s

        def log_message(self, format, *args):
            """Scrapes and timed-out connections are not worth a log line each."""

    class Server(ConnectionCap, ThreadingMixIn, WSGIServer):
        daemon_threads = True
        max_connections = cap
        address_family = family  # an IPv6 address too

        def handle_error(self, request, client_address):
            """A client that hangs up or sends junk: one line per address and cause a minute, no traceback."""
            error = sys.exc_info()[1]
            failures.log(log, logging.WARNING, (client_address[0], type(error).__name__),
                         "metrics endpoint: a request from %s failed: %s: %s", client_address[0],
                         type(error).__name__, error)

    try:
        server = make_server(address, port, make_wsgi_app(registry), Server, handler_class=Handler)
    except OSError as error:
        # Two camera instances configured with the same port is the usual cause; restarting
        # would not fix it, so it is a configuration error (exit 78, no restart loop).
        raise ConfigError(f"metrics endpoint {address}:{port}: cannot listen ({error}); "
                          "expected a free port, one per camera instance") from error
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return MetricsServer(address, server.server_port, server, thread)


class Health:
    """Counters, the systemd watchdog and the metrics endpoint of one camera's pipeline."""

    def __init__(self, camera: str, metrics_port: int | None = None, metrics_address: str = "127.0.0.1",
                 notifier: SystemdNotifier | None = None, status_interval_s: float = 2.0):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.camera = camera
        self.notifier = notifier if notifier is not None else SystemdNotifier()
        self._status_interval_s = status_interval_s
        self._watchdog_interval_s = self.notifier.watchdog_interval()
        self._next_watchdog = 0.0
        self._next_status = 0.0
        self._counts = {verdict: 0 for verdict in VERDICTS}
        self._dropped = 0
        self._lock = threading.Lock()

        # Our own registry: the global one would collide across pipelines in one process
        # (tests, a multi-camera bench) and would also carry process metrics twice.
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._frames = Counter("hlgfa_frames", "Frames that reached a verdict.", registry=r)
        self._verdicts = Counter("hlgfa_verdicts", "Frames by verdict.", ["verdict"], registry=r)
        self._faults = Counter("hlgfa_faults", "Faults by kind (frame faults and others).", ["reason_kind"],
                               registry=r)
        self._dropped_frames = Counter("hlgfa_dropped_frames", "Frames dropped because a queue was full.",
                                       registry=r)
        self._queue_depth = Gauge("hlgfa_queue_depth", "Frames waiting per pipeline stage.", ["stage"],
                                  registry=r)
        self._latency = Histogram("hlgfa_latency_seconds", "Time spent per pipeline stage.", ["stage"],
                                  buckets=LATENCY_BUCKETS_S, registry=r)
        self._info = Info("hlgfa_model", "Model and thresholds in use.", registry=r)
        self._drift_state = Gauge("hlgfa_drift_state", "Drift watch (edge/inspection/drift.py): 1 for the current state.",
                                  ["state"], registry=r)
        self._drift_figures = Gauge("hlgfa_drift", "Drift watch figures of the last passed parts: ks, ks_drifting, "
                                    "ks_drifted, above_p95, above_p99, n.", ["figure"], registry=r)
        self._info.info({"camera": camera})
        # Children are looked up once: labels() takes a lock and builds a key on every call.
        # Creating the verdict children now also exports zeros, so rate() works from the start.
        self._verdict_children = {verdict: self._verdicts.labels(verdict=verdict) for verdict in VERDICTS}
        self._latency_children: dict[str, object] = {}

        self.metrics: MetricsServer | None = None
        if metrics_port is not None:
            self.metrics = start_metrics_server(metrics_port, metrics_address, self.registry)
            camera_log(__name__, camera).info("metrics at http://%s:%d/metrics", metrics_address, self.metrics.port)

    def model_info(self, **fields: str) -> None:
        """Publish e.g. model_hash=, thresholds_version=, backend= (again after a reload)."""
        self._info.info({"camera": self.camera, **{key: str(value) for key, value in fields.items()}})

    def frame_done(self, verdict: str, latency_s_by_stage: Mapping[str, float],
                   fault_kind: str | None = None) -> None:
        """One call per frame that got its verdict. A fault verdict names its kind."""
        verdict = getattr(verdict, "value", verdict)
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r}: expected one of {VERDICTS}")
        if (verdict == "fault") != (fault_kind is not None):
            raise ValueError(f"verdict {verdict!r} with fault_kind={fault_kind!r}: a fault verdict needs "
                             "a fault_kind, and only a fault verdict may have one")
        with self._lock:
            self._counts[verdict] += 1
        self._frames.inc()
        self._verdict_children[verdict].inc()
        if fault_kind is not None:
            self._faults.labels(reason_kind=fault_kind).inc()
        for stage, seconds in latency_s_by_stage.items():
            if math.isfinite(seconds) and seconds >= 0:
                child = self._latency_children.get(stage)
                if child is None:
                    child = self._latency_children[stage] = self._latency.labels(stage=stage)
                child.observe(seconds)

    def drift(self, status: Mapping) -> None:
        """The drift watch's status, as the heartbeat carries it."""
        for state in DRIFT_STATES:
            self._drift_state.labels(state=state).set(1.0 if status.get("state") == state else 0.0)
        for figure in ("ks", "ks_drifting", "ks_drifted", "above_p95", "above_p99", "n"):
            value = status.get(figure)
            self._drift_figures.labels(figure=figure).set(float("nan") if value is None else float(value))

    def fault(self, kind: str) -> None:
        """A fault that is not one frame's verdict: a lost camera, a failed reload."""
        self._faults.labels(reason_kind=kind).inc()

    def dropped(self, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"dropped frames {n}: expected ≥ 0")
        with self._lock:
            self._dropped += n
        self._dropped_frames.inc(n)

    def queue_depth(self, stage: str, n: int) -> None:
        self._queue_depth.labels(stage=stage).set(n)

    def counters(self) -> Counters:
        """The frames that got their verdict, as heartbeats carry them."""
        with self._lock:
            counts, dropped = dict(self._counts), self._dropped
        return Counters(sum(counts.values()), counts["ok"], counts["reject"], counts["fault"], dropped)

    def status_text(self) -> str:
        c = self.counters()
        return f"{self.camera}: {c.frames} frames, ok {c.ok}, reject {c.reject}, fault {c.fault}, dropped {c.dropped}"

    def tick(self, now: float | None = None) -> None:
        """Ping the watchdog and refresh STATUS= when each is due; cheap to call often."""
        now = time.monotonic() if now is None else now
        if self._watchdog_interval_s is not None and now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + self._watchdog_interval_s
        if now >= self._next_status:
            self.notifier.status(self.status_text())
            self._next_status = now + self._status_interval_s

    def ready(self) -> None:
        """The backend has warmed up and the first frame can be taken."""
        self.notifier.ready(self.status_text())
        self._next_watchdog = 0.0  # ping on the next tick, whatever happened before

    def reloading(self) -> None:
        self.notifier.reloading(f"{self.camera}: reloading thresholds")

    def reloaded(self) -> None:
        self.notifier.ready(self.status_text())

    def stopping(self) -> None:
        self.notifier.stopping(f"{self.camera}: stopping, finishing frames in flight")

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        self.notifier.close()
