"""What the page shows live, per camera and for the whole box, and the fan-out of updates to every open
page (server-sent events). Fed by the recorder's listener in the recorder's thread; read by the HTTP
threads.

**The line's state** is one level per camera and one for the box, the worst of what is wrong:
"bad" (red) for a daemon disconnected, silent (no heartbeat for `HEARTBEAT_MISSES` periods, the PLC
bridge's rule), not running, its camera unavailable, drift `drifted`, the recorder stopped or the disk
refusing records; "warn" (amber) for drift `drifting`, free space under `min_free_mb`, recorder
errors; else "ok". The page never shows green while any of these holds, nor while its own
connection to the view is down.

**Updates are batched**: each page gets at most one message per `BATCH_S` holding everything since
the last (a quiet line's single decision goes out at once), and the page draws at most once per
display frame, so a 200 decisions/s line never queues more work than the screen can show.
"""

from __future__ import annotations

import collections
import json
import queue
import threading
import time

from edge.records.recorder import Link
from edge.records.store import HOUR_NS, SCORE_BINS, score_bin
from edge.transport import wire

SCORES_KEPT = 600  # points of the strip chart per camera
FPS_WINDOW_S = 5.0
PPM_WINDOW_S = 60.0
HOURS_KEPT = 48  # the trends' hours held in memory
HEARTBEAT_MISSES = 3  # as a PLC bridge: no heartbeat for 3 periods is a dead station (docs/PROTOCOL.md)
BATCH_S = 1 / 60  # the display rate: no page draws more often
LAZY = ("map", "recorded")  # updates that wait for the next batch
LAZY_S = 0.1
OK, WARN, BAD = "ok", "warn", "bad"
_RANK = {OK: 0, WARN: 1, BAD: 2}


def worst(levels) -> str:
    return max(levels, key=_RANK.__getitem__, default=OK)


class Hub:
    """One bounded queue per open page, at most `max_clients` pages. A page that cannot keep up is cut
    off (its browser reconnects and reloads the state) rather than let its queue grow without bound."""

    def __init__(self, max_clients: int = 16, capacity: int = 256, batch_s: float = BATCH_S):
        self.max_clients = max_clients
        self.capacity = capacity
        self.batch_s = batch_s
        self._cond = threading.Condition()
        self._pending: list = []
        self._urgent = False
        self._first_at = 0.0
        self._clients: set[queue.Queue] = set()
        self._closed = threading.Event()
        self.cut_off = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._flush, name="view-hub", daemon=True)
        self._thread.start()

    def subscribe(self) -> queue.Queue | None:
        """A page's queue; None when `max_clients` pages are open already."""
        with self._cond:
            if len(self._clients) >= self.max_clients:
                self.refused += 1
                return None
            client: queue.Queue = queue.Queue(self.capacity)
            self._clients.add(client)
            return client

    def unsubscribe(self, client: queue.Queue) -> None:
        with self._cond:
            self._clients.discard(client)

    def publish(self, event: str, data: dict) -> None:
        """Queue an update for every page. A map or a stored part rides with the next batch (or goes
        within `LAZY_S`): it must not hold the next decision back by a display frame."""
        with self._cond:
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append((event, data))
            self._urgent = self._urgent or event not in LAZY
            self._cond.notify()

    def _flush(self) -> None:
        while True:
            with self._cond:
                while not self._closed.is_set() and not self._urgent:
                    if not self._pending:
                        self._cond.wait()
                        continue
                    left = LAZY_S - (time.monotonic() - self._first_at)
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._closed.is_set():
                    return
                batch, self._pending, self._urgent = self._pending, [], False
                clients = list(self._clients)
            text = f"event: batch\ndata: {json.dumps(batch, separators=(',', ':'))}\n\n".encode()
            for client in clients:
                try:
                    client.put_nowait(text)
                except queue.Full:
                    self.unsubscribe(client)
                    self.cut_off += 1
                    _put_last(client, None)
            self._closed.wait(self.batch_s)

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
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
            "thresholds_version": decision.thresholds_version, "session": decision.session, "seq": decision.seq,
            "part_id": decision.part_id}


def _empty_shift() -> dict:
    return {"ok": 0, "reject": 0, "fault": 0, "worst_latency_ms": 0.0}


class Hours:
    """Per UTC hour and camera: decisions per verdict and the score histogram (`score_bin`), counted as
    decisions arrive and seeded from the record once at start, so the trends never scan the record."""

    def __init__(self):
        self._lock = threading.Lock()
        self._hours: dict[tuple[int, str], dict] = {}

    def _entry(self, hour_ns: int, camera: str) -> dict:
        entry = self._hours.get((hour_ns, camera))
        if entry is None:
            entry = self._hours[(hour_ns, camera)] = {"ok": 0, "reject": 0, "fault": 0, "scores": [0] * (SCORE_BINS + 1)}
            oldest = hour_ns - HOURS_KEPT * HOUR_NS
            for key in [k for k in self._hours if k[0] < oldest]:
                del self._hours[key]
        return entry

    def add(self, decision: wire.Decision) -> None:
        with self._lock:
            entry = self._entry(decision.wall_ns // HOUR_NS * HOUR_NS, decision.camera)
            entry[decision.verdict] += 1
            bin_ = score_bin(decision.score, decision.threshold)
            if bin_ is not None:
                entry["scores"][bin_] += 1

    def merge(self, rows: list[dict]) -> None:
        """Counts of the record (`store.hourly`) from before this view started."""
        with self._lock:
            for row in rows:
                entry = self._entry(row["hour_ns"], row["camera"])
                for key in ("ok", "reject", "fault"):
                    entry[key] += row[key]
                entry["scores"] = [a + b for a, b in zip(entry["scores"], row["scores"])]

    def since(self, since_ns: int, cameras: list[str] | None = None) -> list[dict]:
        """Per hour from `since_ns` on, summed over `cameras` (all when None), oldest first."""
        out: dict[int, dict] = {}
        with self._lock:
            for (hour, camera), entry in self._hours.items():
                if hour + HOUR_NS <= since_ns or (cameras and camera not in cameras):
                    continue
                total = out.setdefault(hour, {"hour_ns": hour, "ok": 0, "reject": 0, "fault": 0,
                                              "scores": [0] * (SCORE_BINS + 1)})
                for key in ("ok", "reject", "fault"):
                    total[key] += entry[key]
                total["scores"] = [a + b for a, b in zip(total["scores"], entry["scores"])]
        return [out[hour] for hour in sorted(out)]


class Camera:
    def __init__(self, name: str):
        self.name = name
        self.endpoint: str | None = None
        self.last: dict | None = None
        self.last_at: float | None = None
        self.map: wire.MapMessage | None = None
        self.heartbeat: wire.Heartbeat | None = None
        self.heartbeat_at: float | None = None
        self.arrivals: collections.deque = collections.deque()
        self.scores: collections.deque = collections.deque(maxlen=SCORES_KEPT)
        self.faults: collections.deque = collections.deque(maxlen=20)
        self.shift = _empty_shift()


class LiveState:
    def __init__(self, hub: Hub, endpoints: list[str] = (), clock=time.monotonic):
        self.hub = hub
        self.clock = clock
        self._lock = threading.Lock()
        self.cameras: dict[str, Camera] = {}
        self.links: dict[str, bool | None] = {endpoint: None for endpoint in endpoints}  # None: never connected
        self.shift_since: dict = {"wall_ns": time.time_ns(), "by": None}
        self.hours = Hours()
        self._reset_here = False

    def _camera(self, name: str) -> Camera:
        camera = self.cameras.get(name)
        if camera is None:
            camera = self.cameras[name] = Camera(name)
        return camera

    # --------------------------------------------------------------------------------- input

    def on_message(self, message, endpoint: str | None = None) -> None:
        """The recorder's listener: every message and link change as it arrives."""
        now = self.clock()
        events = []
        with self._lock:
            if isinstance(message, Link):
                self.links[message.endpoint] = message.connected
                events.append(("link", {"endpoint": message.endpoint, "connected": message.connected}))
                events += [("health", self._health(c, now)) for c in self.cameras.values()
                           if c.endpoint == message.endpoint]
            else:
                camera = self._camera(message.camera)
                if endpoint is not None:
                    camera.endpoint = endpoint
                if isinstance(message, wire.Decision):
                    camera.last, camera.last_at = decision_dict(message, None), now
                    camera.arrivals.append(now)
                    camera.scores.append((message.wall_ns, message.score, message.threshold, message.verdict))
                    camera.shift[message.verdict] += 1
                    camera.shift["worst_latency_ms"] = max(camera.shift["worst_latency_ms"], message.latency_ms)
                    self.hours.add(message)
                    events.append(("decision", camera.last))
                elif isinstance(message, wire.MapMessage):
                    camera.map = message
                    events.append(("map", {"camera": message.camera, "frame_id": message.frame_id}))
                elif isinstance(message, wire.Heartbeat):
                    camera.heartbeat, camera.heartbeat_at = message, now
                    events.append(("health", self._health(camera, now)))
                elif isinstance(message, wire.Fault):
                    fault = {"camera": message.camera, "code": message.code, "message": message.message,
                             "wall_ns": message.wall_ns}
                    camera.faults.append(fault)
                    events.append(("fault", fault))
        for event in events:
            self.hub.publish(*event)

    def on_stored(self, decision: wire.Decision, row_id: int) -> None:
        """The recorder stored a decision: a reject or fault joins the parts gallery of open pages."""
        if decision.verdict != "ok":
            self.hub.publish("recorded", decision_dict(decision, row_id))

    def seed_shift(self, since: dict | None, counts: dict) -> None:
        """The shift counters as the record held them (since the last reset) when this view started,
        added to what arrived since (nothing, when the counters were reset meanwhile)."""
        with self._lock:
            if self._reset_here:
                return
            if since is not None:
                self.shift_since = since
            for name, entry in counts.items():
                camera = self._camera(name)
                for key in ("ok", "reject", "fault"):
                    camera.shift[key] += entry[key]
                camera.shift["worst_latency_ms"] = max(camera.shift["worst_latency_ms"], entry["worst_latency_ms"])

    def reset_shift(self, wall_ns: int, by: str) -> None:
        with self._lock:
            self._reset_here = True
            self.shift_since = {"wall_ns": wall_ns, "by": by}
            for camera in self.cameras.values():
                camera.shift = _empty_shift()
        self.hub.publish("shift", self.shift())

    # ------------------------------------------------------------------------------- state

    def _health(self, camera: Camera, now: float) -> dict:
        while camera.arrivals and now - camera.arrivals[0] > PPM_WINDOW_S:
            camera.arrivals.popleft()
        recent = sum(1 for t in camera.arrivals if now - t <= FPS_WINDOW_S)
        problems: list[tuple[str, str]] = []
        connected = self.links.get(camera.endpoint) if camera.endpoint is not None else None
        if connected is False:
            problems.append((BAD, f"disconnected from the daemon ({camera.endpoint})"))
        beat = camera.heartbeat
        health = {"camera": camera.name, "fps": recent / FPS_WINDOW_S, "ppm": len(camera.arrivals) * 60.0 / PPM_WINDOW_S,
                  "healthy": False, "state": "no heartbeat", "source": None, "last_frame_age_s": None,
                  "heartbeat_age_s": None, "counters": None, "drift": None, "connected": connected,
                  "last_age_s": None if camera.last_at is None else now - camera.last_at}
        if beat is None:
            problems.append((BAD, "no heartbeat from the daemon yet"))
        else:
            age = now - camera.heartbeat_at
            health.update(heartbeat_age_s=age, state=beat.state, counters=vars(beat.counters), drift=beat.drift,
                          source=None if beat.source is None else beat.source.state,
                          last_frame_age_s=None if beat.source is None else beat.source.last_frame_age_s)
            if age >= HEARTBEAT_MISSES * beat.period_s:
                health["state"] = "silent"
                problems.append((BAD, f"the daemon is silent: no heartbeat for {age:.0f} s"))
            elif beat.state != "running":
                problems.append((BAD, f"the daemon is {beat.state}"))
            if beat.source is not None and beat.source.state == "unavailable":
                problems.append((BAD, "the camera is unavailable"))
            drift = (beat.drift or {}).get("state")
            if drift == "drifted":
                problems.append((BAD, "drift: drifted — recalibrate or fix the cause"))
            elif drift == "drifting":
                problems.append((WARN, "drift: drifting — check the light, lens and mount"))
        health["level"] = worst(level for level, _ in problems)
        health["problems"] = [text for _, text in problems]
        health["healthy"] = health["level"] == OK
        return health

    def box(self, recorder: dict) -> dict:
        """The whole box's state: every camera's, the daemons' links, the recorder's and the disk's."""
        now = self.clock()
        with self._lock:
            cameras = [self._health(camera, now) for camera in self.cameras.values()]
            links = dict(self.links)
        problems: list[tuple[str, str]] = [(c["level"], f"{c['camera']}: {p}") for c in cameras for p in c["problems"]]
        served = {c.endpoint for c in self.cameras.values()}
        for endpoint, connected in links.items():
            if not connected and endpoint not in served:
                problems.append((BAD, f"no daemon at {endpoint}" + (" (disconnected)" if connected is False else "")))
        if not recorder.get("alive", True):
            problems.append((BAD, f"the recorder stopped: {recorder.get('error')}"))
        elif recorder.get("errors"):
            problems.append((WARN, f"the recorder met {recorder['errors']} error(s), the latest: {recorder.get('error')}"))
        if recorder.get("disk_alarm"):
            problems.append((BAD if recorder.get("refusing") else WARN, f"records: {recorder['disk_alarm']}"))
        if recorder.get("replaced"):
            problems.append((WARN, f"a damaged records database was moved to {recorder['replaced']}"))
        return {"level": worst(level for level, _ in problems), "problems": [text for _, text in problems]}

    def shift(self) -> dict:
        with self._lock:
            return {"since": self.shift_since, "cameras": {name: dict(c.shift) for name, c in sorted(self.cameras.items())}}

    def snapshot(self) -> dict:
        now = self.clock()
        with self._lock:
            return {name: {"last": camera.last, "health": self._health(camera, now),
                           "scores": list(camera.scores), "faults": list(camera.faults)}
                    for name, camera in sorted(self.cameras.items())}

    def health(self) -> list[dict]:
        now = self.clock()
        with self._lock:
            return [self._health(camera, now) for _, camera in sorted(self.cameras.items())]

    def latest(self, name: str) -> tuple[dict | None, wire.MapMessage | None]:
        """The camera's latest decision and its map (None when that decision has none, e.g. a fault)."""
        with self._lock:
            camera = self.cameras.get(name)
            if camera is None or camera.last is None:
                return None, None
            last, map_ = camera.last, camera.map
            same = map_ is not None and (map_.session, map_.frame_id) == (last["session"], last["frame_id"])
            return last, map_ if same else None
