"""What the page shows live, per camera, and the fan-out of updates to every open page (server-sent
events). Fed by the recorder's listener in the recorder's thread; read by the HTTP threads."""

from __future__ import annotations

import collections
import json
import queue
import threading
import time

from edge.transport import wire

SCORES_KEPT = 600  # points of the strip chart per camera
FPS_WINDOW_S = 5.0
HEARTBEAT_MISSES = 3  # as a PLC bridge: no heartbeat for 3 periods is a dead station (docs/PROTOCOL.md)


class Hub:
    """One bounded queue per open page. A page that cannot keep up is cut off (its browser reconnects
    and reloads the state) rather than let its queue grow without bound."""

    def __init__(self, capacity: int = 2000):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._clients: set[queue.Queue] = set()
        self.cut_off = 0

    def subscribe(self) -> queue.Queue:
        client: queue.Queue = queue.Queue(self.capacity)
        with self._lock:
            self._clients.add(client)
        return client

    def unsubscribe(self, client: queue.Queue) -> None:
        with self._lock:
            self._clients.discard(client)

    def publish(self, event: str, data: dict) -> None:
        text = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.put_nowait(text)
            except queue.Full:
                self.unsubscribe(client)
                self.cut_off += 1
                _put_last(client, None)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients), set()
        for client in clients:
            _put_last(client, None)


def _put_last(client: queue.Queue, item) -> None:
    """Put `item` even into a full queue (dropping the oldest), so a reader waiting on it wakes."""
    while True:
        try:
            client.put_nowait(item)
            return
        except queue.Full:
            try:
                client.get_nowait()
            except queue.Empty:
                pass


def decision_dict(decision: wire.Decision, row_id: int | None) -> dict:
    return {"id": row_id, "camera": decision.camera, "frame_id": decision.frame_id, "verdict": decision.verdict,
            "score": decision.score, "threshold": decision.threshold, "reason": decision.reason,
            "region_px": decision.region_px, "latency_ms": decision.latency_ms, "wall_ns": decision.wall_ns,
            "thresholds_version": decision.thresholds_version, "session": decision.session, "seq": decision.seq}


class Camera:
    def __init__(self, name: str):
        self.name = name
        self.last: dict | None = None
        self.map: wire.MapMessage | None = None
        self.heartbeat: wire.Heartbeat | None = None
        self.heartbeat_at: float | None = None
        self.arrivals: collections.deque = collections.deque()
        self.scores: collections.deque = collections.deque(maxlen=SCORES_KEPT)
        self.faults: collections.deque = collections.deque(maxlen=20)


class LiveState:
    def __init__(self, hub: Hub, clock=time.monotonic):
        self.hub = hub
        self.clock = clock
        self._lock = threading.Lock()
        self.cameras: dict[str, Camera] = {}

    def _camera(self, name: str) -> Camera:
        camera = self.cameras.get(name)
        if camera is None:
            camera = self.cameras[name] = Camera(name)
        return camera

    def on_message(self, message: wire.Message, row_id: int | None) -> None:
        """The recorder's listener."""
        now = self.clock()
        with self._lock:
            camera = self._camera(message.camera)
            if isinstance(message, wire.Decision):
                camera.last = decision_dict(message, row_id)
                camera.arrivals.append(now)
                camera.scores.append((message.wall_ns, message.score, message.threshold, message.verdict))
                event = ("decision", camera.last)
            elif isinstance(message, wire.MapMessage):
                camera.map = message
                event = ("map", {"camera": message.camera, "frame_id": message.frame_id})
            elif isinstance(message, wire.Heartbeat):
                camera.heartbeat, camera.heartbeat_at = message, now
                event = ("health", self._health(camera, now))
            else:
                fault = {"camera": message.camera, "code": message.code, "message": message.message,
                         "wall_ns": message.wall_ns}
                camera.faults.append(fault)
                event = ("fault", fault)
        self.hub.publish(*event)

    def _health(self, camera: Camera, now: float) -> dict:
        while camera.arrivals and now - camera.arrivals[0] > FPS_WINDOW_S:
            camera.arrivals.popleft()
        beat = camera.heartbeat
        health = {"camera": camera.name, "fps": len(camera.arrivals) / FPS_WINDOW_S, "healthy": False,
                  "state": "no heartbeat", "source": None, "last_frame_age_s": None, "heartbeat_age_s": None,
                  "counters": None, "drift": None}
        if beat is not None:
            age = now - camera.heartbeat_at
            source_ok = beat.source is None or beat.source.state != "unavailable"
            health.update(heartbeat_age_s=age, state=beat.state, counters=vars(beat.counters), drift=beat.drift,
                          source=None if beat.source is None else beat.source.state,
                          last_frame_age_s=None if beat.source is None else beat.source.last_frame_age_s,
                          healthy=age < HEARTBEAT_MISSES * beat.period_s and beat.state == "running" and source_ok)
            if age >= HEARTBEAT_MISSES * beat.period_s:
                health["state"] = "silent"
        return health

    def snapshot(self) -> dict:
        now = self.clock()
        with self._lock:
            return {name: {"last": camera.last, "health": self._health(camera, now),
                           "scores": list(camera.scores), "faults": list(camera.faults),
                           "map_frame_id": None if camera.map is None else camera.map.frame_id}
                    for name, camera in sorted(self.cameras.items())}

    def health(self) -> list[dict]:
        now = self.clock()
        with self._lock:
            return [self._health(camera, now) for _, camera in sorted(self.cameras.items())]

    def latest_map(self, name: str) -> wire.MapMessage | None:
        with self._lock:
            camera = self.cameras.get(name)
            return None if camera is None else camera.map
