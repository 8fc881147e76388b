"""`hlgfa view` as a process, fed by a real Publisher on a random loopback port, read over real HTTP:
the record it keeps, the live state, server-sent events, sign-in, roles and reviews, access rules,
every parameter checked; the gap across a restart of the view; each camera's own frames; a damaged
database; and the recorder's gap counting against a raw PUB socket that skips sequence numbers."""

import hashlib
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.transport import wire
from edge.transport.publisher import PublishConfig
from edge.transport.publisher import Publisher
from edge.records.recorder import TOPICS, Recorder
from edge.records.store import RecordStore, open_reader, query, saved_counters
from edge.transport.subscriber import Subscriber
from edge.view.auth import hash_password
from tests.ports import free_endpoint

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


class ViewProcess:
    """`hlgfa view` in a subprocess; `url` once it printed where it serves."""

    def __init__(self, *args: str, preexec_fn=None):
        self.process = subprocess.Popen([sys.executable, "-m", "edge.cli", "view", *args], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=preexec_fn)
        self.url = None
        line = self._readline(WAIT_S)
        if line and line.startswith("view: "):
            self.url = line.split()[1]

    def _readline(self, timeout: float) -> str | None:
        result = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        return result[0] if result else None

    def stop(self) -> int:
        """SIGTERM; the exit status. What it wrote to stderr is in `stderr` afterwards."""
        if self.process.stderr.closed:  # stopped before
            return self.process.returncode
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        finally:
            self.stderr = self.process.stderr.read()
            self.process.stdout.close()
            self.process.stderr.close()


class Client:
    """urllib with a cookie jar: what a browser does, minus the page."""

    def __init__(self, url: str):
        import http.cookiejar

        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str):
        with self.opener.open(self.url + path.lstrip("/"), timeout=30) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: dict, content_type: str = "application/json"):
        request = urllib.request.Request(self.url + path.lstrip("/"), json.dumps(data).encode(),
                                         {"Content-Type": content_type}, method="POST")
        with self.opener.open(request, timeout=30) as response:
            return json.loads(response.read())

    def status(self, call, *args) -> int:
        try:
            call(*args)
            return 200
        except urllib.error.HTTPError as error:
            error.close()
            return error.code


def wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def new_publisher(camera: str = "cam1") -> Publisher:
    return Publisher(camera, PublishConfig(endpoint=free_endpoint(), heartbeat_period_s=5.0, linger_ms=0))


@pytest.fixture
def publisher():
    pub = new_publisher()
    yield pub
    pub.close()


def decision(frame_id: int, verdict: str, camera: str = "cam1") -> wire.Decision:
    return wire.Decision(camera=camera, frame_id=frame_id, verdict=verdict,
                         reason="" if verdict == "ok" else "score 0.9 > threshold 0.5",
                         score=0.9 if verdict == "reject" else 0.1, threshold=0.5, device_timestamp_ns=0,
                         receive_ns=0, decision_ns=0, latency_ms=3.0, model_hash="ab" * 32,
                         thresholds_version="v1", region_px=12 if verdict == "reject" else 0)


def until_seen(publisher, client: Client):
    """Heartbeats until the view lists the camera: the subscription is live, nothing sent is lost."""
    def seen():
        publisher.heartbeat(wire.Counters(), source=wire.SourceStatus("delivering", 0.0))
        return publisher.camera in client.get("/api/state")["cameras"]
    wait_for(seen, "the view to receive a heartbeat")


def raw(url: str, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, dict]:
    """One request with exactly these headers (urllib would fix a bad Content-Length or Host)."""
    split = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(split.hostname, split.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.startswith(b"{") else {}
    finally:
        conn.close()


def test_view_records_serves_and_takes_reviews(tmp_path, publisher, rng):
    view = ViewProcess("--connect", publisher.config.endpoint, "--http", "127.0.0.1:0", "--records", str(tmp_path))
    try:
        assert view.url, view.process.stderr.read() if view.process.poll() is not None else "no URL printed"
        client = Client(view.url)
        assert b"hlgfa view" in client.get("/")
        until_seen(publisher, client)

        # a page listening for pushed updates
        events = urllib.request.urlopen(view.url + "events", timeout=30)
        assert events.readline().startswith(b"retry:")
        verdicts = ["ok", "reject", "ok", "ok", "reject", "ok"]
        for frame_id, verdict in enumerate(verdicts):
            publisher.publish_decision(decision(frame_id, verdict), rng.random((32, 32), dtype=np.float32))
        pushed = []
        while len(pushed) < len(verdicts):  # batched: each message holds every update since the last
            line = events.readline()
            if line.startswith(b"data:"):
                pushed += [data for event, data in json.loads(line[5:]) if event == "decision"]
        events.close()
        assert [p["verdict"] for p in pushed] == verdicts

        rows = wait_for(lambda: (r := client.get("/api/records?limit=50")) and len(r) == 6 and r, "six records")
        assert [r["frame_id"] for r in rows] == [5, 4, 3, 2, 1, 0]  # newest first
        rejects = client.get("/api/records?verdict=reject")
        assert [r["frame_id"] for r in rejects] == [4, 1]
        png = wait_for(lambda: client.status(client.get, f"/api/records/{rejects[0]['id']}/map.png") == 200
                       and client.get(f"/api/records/{rejects[0]['id']}/map.png"), "the reject's map")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        state = client.get("/api/state")
        assert state["cameras"]["cam1"]["last"]["frame_id"] == 5
        assert state["cameras"]["cam1"]["health"]["healthy"] is True
        assert client.get("/api/live/cam1/map.png")[:4] == b"\x89PNG"
        assert client.status(client.get, "/api/records/999999") == 404
        assert client.status(client.get, "/api/records?limit=many") == 400
        assert client.status(client.get, "/api/records?since=yesterday") == 400

        # reviews: a name first, JSON only, and the verdict must fit
        target = rejects[0]["id"]
        assert client.status(client.post, f"/api/records/{target}/review", {"review": "false_reject"}) == 401
        client.post("/api/login", {"name": "anna"})
        assert client.status(client.post, f"/api/records/{target}/review", {"review": "false_reject"},
                             "application/x-www-form-urlencoded") == 415
        ok_row = rows[0]["id"]
        assert client.status(client.post, f"/api/records/{ok_row}/review", {"review": "false_reject"}) == 400
        reviewed = client.post(f"/api/records/{target}/review", {"review": "false_reject"})
        assert (reviewed["review"], reviewed["reviewer"]) == ("false_reject", "anna")
        trends = client.get("/api/trends")
        assert trends["false_rejects"] == 1 and trends["rejected"] == 2
    finally:
        assert view.stop() == 0
    conn = open_reader(tmp_path)
    stored = query(conn, reviewed=True)
    conn.close()
    assert [(r["frame_id"], r["review"], r["reviewer"]) for r in stored] == [(4, "false_reject", "anna")]


@pytest.mark.parametrize("password", [False, True])
def test_a_network_bind_without_a_password_and_tls_is_refused(tmp_path, password):
    config = tmp_path / "view.toml"
    config.write_text(f'records = "rec"\nhttp = "0.0.0.0:0"\nconnect = "tcp://127.0.0.1:1"\n' +
                      (f'password_hash = "{hash_password("line-3-secret")}"\n' if password else ""))
    view = ViewProcess("--config", str(config))
    code = view.process.wait(timeout=60)
    error = view.process.stderr.read()
    view.stop()
    assert code == 78
    assert "password_hash" in error and "tls_cert" in error and "hlgfa view --hash-password" in error


def test_with_a_password_nothing_is_served_before_sign_in(tmp_path, publisher):
    config = tmp_path / "view.toml"
    config.write_text(f'records = "rec"\nhttp = "127.0.0.1:0"\nconnect = "{publisher.config.endpoint}"\n'
                      f'password_hash = "{hash_password("line-3-secret")}"\n')
    view = ViewProcess("--config", str(config))
    try:
        assert view.url
        client = Client(view.url)
        assert client.status(client.get, "/api/state") == 401
        assert client.status(client.get, "/api/records") == 401
        assert client.status(client.post, "/api/login", {"name": "bo", "password": "guess"}) == 401
        # a guesser waits: the next try from this address is refused until the backoff has passed
        assert client.status(client.post, "/api/login", {"name": "bo", "password": "line-3-secret"}) == 429
        signed_in = wait_for(lambda: client.status(client.post, "/api/login",
                                                   {"name": "bo", "password": "line-3-secret"}) == 200, "the backoff")
        assert signed_in
        state = client.get("/api/state")
        assert (state["user"], state["role"]) == ("bo", "operator")
    finally:
        assert view.stop() == 0
    assert (tmp_path / "rec" / "records.sqlite").is_file()  # relative to the config file


def test_the_recorder_counts_and_records_every_gap(tmp_path):
    import zmq

    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    store = RecordStore(tmp_path)
    subscriber = Subscriber(f"tcp://127.0.0.1:{port}", topics=TOPICS, context=context)
    recorder = Recorder(store, [subscriber])
    session = "00112233aabbccdd"

    def beat(seq, last_decision):
        return wire.Heartbeat("cam1", 1.0, 1.0, wire.Counters(), seqs={"decision": last_decision, "map": 0, "fault": 0},
                              session=session, seq=seq, wall_ns=time.time_ns())

    try:
        wait_for(lambda: pub.send_multipart(wire.encode(beat(1, 0))) or recorder.step(0.05) > 0, "the subscription")
        for seq in (1, 2, 5):  # 3 and 4 never sent; then a heartbeat says 6 was sent
            pub.send_multipart(wire.encode(
                wire.Decision(**{**vars(decision(seq, "ok")), "session": session, "seq": seq, "wall_ns": time.time_ns()})))
        pub.send_multipart(wire.encode(beat(2, 6)))
        # heartbeats repeated while subscribing may still be queued: wait for the gaps, not a message count
        wait_for(lambda: recorder.step(0.5) >= 0 and store.counters["gaps_lost"] >= 3, "both gaps")
        store.commit()
        conn = open_reader(tmp_path)
        events = conn.execute("SELECT kind, lost, detail FROM events WHERE kind = 'gap' ORDER BY id").fetchall()
        conn.close()
        assert [(e[0], e[1]) for e in events][-2:] == [("gap", 2), ("gap", 1)]
        assert store.counters["gaps_lost"] >= 3
    finally:
        recorder.stop()
        subscriber.close()
        store.close()
        pub.close(linger=0)
        context.term()


def test_https_with_a_provided_certificate_and_a_hashed_password_from_the_cli(tmp_path):
    import ssl

    from edge.view.auth import verify_password

    cert, key = tmp_path / "view.crt", tmp_path / "view.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    hashed = subprocess.run([sys.executable, "-m", "edge.cli", "view", "--hash-password"], input="line-3-secret\n",
                            capture_output=True, text=True, check=True, cwd=ROOT, timeout=60).stdout.strip()
    assert verify_password("line-3-secret", hashed) and not verify_password("line-3-secreT", hashed)
    config = tmp_path / "view.toml"
    config.write_text(f'records = "rec"\nhttp = "127.0.0.1:0"\npassword_hash = "{hashed}"\n'
                      f'tls_cert = "view.crt"\ntls_key = "view.key"\nconnect = "tcp://127.0.0.1:1"\n')
    view = ViewProcess("--config", str(config))
    try:
        assert view.url and view.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        request = urllib.request.Request(view.url + "api/login", json.dumps({"name": "bo", "password": "line-3-secret"})
                                         .encode(), {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            cookie = response.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        with pytest.raises(OSError):  # plain HTTP on the HTTPS port gets nothing
            urllib.request.urlopen(view.url.replace("https://", "http://") + "api/state", timeout=10).read()
    finally:
        assert view.stop() == 0


def test_every_parameter_is_checked_and_another_name_is_refused(tmp_path, publisher):
    view = ViewProcess("--connect", publisher.config.endpoint, "--http", "127.0.0.1:0", "--records", str(tmp_path))
    try:
        assert view.url
        client = Client(view.url)
        until_seen(publisher, client)
        publisher.publish_decision(decision(12, "reject"), np.zeros((8, 8), np.float32))
        wait_for(lambda: client.get("/api/records"), "a record")
        bad = {"/api/trends?hours=inf": "hours", "/api/trends?hours=1e300": "hours", "/api/trends?hours=-1": "hours",
               "/api/trends?hours=nan": "hours", "/api/records?since=99999999999999999999d": "time",
               "/api/records?since=0001-01-01": "time", "/api/records/99999999999999999999999": "not a record id",
               "/api/records?limit=-1": "limit", "/api/records?limit=0": "limit", "/api/records?limit=501": "limit",
               "/api/records?frame=12a": "not a frame id", "/api/records?frame=-1": "not a frame id",
               "/api/records?frame=%2012": "not a frame id", "/api/records?frame=": "not a frame id",
               "/api/records?before=x": "before",
               "/api/records?verdict=good": "verdict", "/api/records?session=xyz": "session",
               "/api/records?limit=1&limit=2": "limit"}
        for path, named in bad.items():
            status, body = raw(view.url, "GET", path, {"Host": urllib.parse.urlsplit(view.url).netloc})
            assert (status, named in body.get("error", "")) == (400, True), (path, status, body)
        assert [r["frame_id"] for r in client.get("/api/records?frame=12")] == [12]
        trends = client.get("/api/trends?hours=1")  # nothing reviewed yet: zero reviews, not a failed page
        assert [(h["reject"], h["false_reject"], h["scores"][14]) for h in trends["hours"]] == [(1, 0, 1)]
        assert client.status(client.get, "/api/records?frame=13") == 200 and client.get("/api/records?frame=13") == []

        host = urllib.parse.urlsplit(view.url).netloc
        port = urllib.parse.urlsplit(view.url).port
        # DNS rebinding: a page served as another name reaches this address; it is refused, reads and writes
        for headers in ({"Host": f"evil.example:{port}"}, {"Host": host, "Origin": f"http://evil.example:{port}"},
                        {"Host": host, "Sec-Fetch-Site": "cross-site"}):
            for method, path in (("GET", "/api/records"), ("GET", "/"), ("POST", "/api/login")):
                status, body = raw(view.url, method, path, {**headers, "Content-Type": "application/json",
                                                            "Content-Length": "2"}, b"{}")
                assert status == 403, (headers, path, status)
        assert raw(view.url, "GET", "/api/state", {"Host": host, "Origin": f"http://{host}"})[0] == 200

        # a negative Content-Length is refused at once instead of leaving a thread waiting for a body
        status, body = raw(view.url, "POST", "/api/login", {"Host": host, "Content-Type": "application/json",
                                                           "Content-Length": "-1"})
        assert status == 400 and "Content-Length" in body["error"]

        # live pages are bounded (max_pages, 16 by default): the 17th is told so
        streams = [urllib.request.urlopen(view.url + "events", timeout=30) for _ in range(16)]
        try:
            assert all(s.readline().startswith(b"retry:") for s in streams)
            assert client.status(client.get, "/events") == 503
        finally:
            for stream in streams:
                stream.close()
        wait_for(lambda: client.status(lambda: urllib.request.urlopen(view.url + "events", timeout=30).close()) == 200,
                 "a page slot to free up")
    finally:
        assert view.stop() == 0


def test_operators_mark_engineers_review_and_every_step_is_kept(tmp_path, publisher):
    config = tmp_path / "view.toml"
    config.write_text(f'records = "rec"\nhttp = "127.0.0.1:0"\nconnect = "{publisher.config.endpoint}"\n'
                      f'password_hash = "{hash_password("operator-pass")}"\n'
                      f'engineer_password_hash = "{hash_password("engineer-pass")}"\n')
    view = ViewProcess("--config", str(config))
    try:
        assert view.url
        operator, engineer = Client(view.url), Client(view.url)
        assert operator.post("/api/login", {"name": "olga", "password": "operator-pass"})["role"] == "operator"
        assert engineer.post("/api/login", {"name": "emil", "password": "engineer-pass"})["role"] == "engineer"
        until_seen(publisher, operator)
        for frame_id in range(4):
            publisher.publish_decision(decision(frame_id, "reject" if frame_id % 2 else "ok"),
                                       np.zeros((8, 8), np.float32))
        rejects = wait_for(lambda: (r := operator.get("/api/records?verdict=reject")) and len(r) == 2 and r, "rejects")
        target = rejects[0]["id"]
        assert operator.status(operator.post, f"/api/records/{target}/review", {"review": "false_reject"}) == 403
        assert operator.status(operator.get, "/api/export.csv?verdict=reject") == 403
        assert operator.status(operator.post, "/api/counters/reset", {}) == 403
        assert operator.post(f"/api/records/{target}/mark", {"note": "looks fine to me"})["marked_by"] == "olga"
        engineer.post(f"/api/records/{target}/review", {"review": "false_reject"})
        row = engineer.post(f"/api/records/{target}/review", {"review": "defect_confirmed", "label": "crack"})
        assert (row["review"], row["review_label"], row["reviewer"]) == ("defect_confirmed", "crack", "emil")
        assert [(h["who"], h["role"], h["action"], h["old"], h["new"]) for h in row["history"]] == [
            ("olga", "operator", "mark", None, "looks fine to me"), ("emil", "engineer", "review", None, "false_reject"),
            ("emil", "engineer", "review", "false_reject", "defect_confirmed")]
        csv_text = engineer.get("/api/export.csv?verdict=reject").decode()
        assert len(csv_text.splitlines()) == 3 and "defect_confirmed" in csv_text

        assert sum(operator.get("/api/state")["shift"]["cameras"]["cam1"][k] for k in ("ok", "reject")) == 4
        shift = engineer.post("/api/counters/reset", {})
        assert shift["cameras"]["cam1"] == {"ok": 0, "reject": 0, "fault": 0, "worst_latency_ms": 0.0}
        assert shift["since"]["by"] == "emil (engineer)"
    finally:
        assert view.stop() == 0
    conn = open_reader(tmp_path / "rec")
    resets = conn.execute("SELECT detail FROM events WHERE kind = 'counters_reset'").fetchall()
    conn.close()
    assert [r[0] for r in resets] == ["emil (engineer)"]  # the reset is itself a row of the record
    # a restarted view counts the shift from that reset: nothing since
    view = ViewProcess("--config", str(config))
    try:
        client = Client(view.url)
        client.post("/api/login", {"name": "olga", "password": "operator-pass"})
        wait_for(lambda: client.get("/api/state")["shift"]["since"]["by"] == "emil (engineer)", "the shift seeded")
    finally:
        assert view.stop() == 0


def test_decisions_published_while_the_view_was_stopped_are_counted_as_lost(tmp_path, publisher):
    def run_view(decisions: range):
        view = ViewProcess("--connect", publisher.config.endpoint, "--http", "127.0.0.1:0", "--records", str(tmp_path))
        try:
            client = Client(view.url)
            until_seen(publisher, client)
            for frame_id in decisions:
                publisher.publish_decision(decision(frame_id, "ok"), np.zeros((8, 8), np.float32))
            wait_for(lambda: client.get(f"/api/records?frame={decisions[-1]}"), "the last decision")
            return client.get("/api/state")["recorder"]
        finally:
            assert view.stop() == 0

    first = run_view(range(0, 5))
    for frame_id in range(5, 12):  # the view is stopped: nobody records these 7
        publisher.publish_decision(decision(frame_id, "ok"), np.zeros((8, 8), np.float32))
    second = run_view(range(12, 15))
    assert first["gaps_lost"] == 0 and second["gaps_lost"] == 7
    conn = open_reader(tmp_path)
    gaps = conn.execute("SELECT lost, detail FROM events WHERE kind = 'gap'").fetchall()
    stored = [r["frame_id"] for r in query(conn)]
    counters = saved_counters(conn)
    conn.close()
    assert [(g[0], g[1]) for g in gaps] == [(7, "7 decision message(s) lost after seq 5")]
    assert stored == [0, 1, 2, 3, 4, 12, 13, 14] and counters["gaps_lost"] == 7


def test_each_camera_shows_and_exports_its_own_frames(tmp_path, elpv_images):
    folders = {"line1": tmp_path / "line1", "line2": tmp_path / "line2"}
    for offset, folder in enumerate(folders.values()):
        folder.mkdir()
        for index, path in enumerate(elpv_images["good"][offset * 6:offset * 6 + 6]):
            shutil.copy(path, folder / f"{index:03d}.png")
    publishers = {camera: new_publisher(camera) for camera in folders}
    records = tmp_path / "records"
    view = ViewProcess("--http", "127.0.0.1:0", "--records", str(records),
                       *[a for p in publishers.values() for a in ("--connect", p.config.endpoint)],
                       *[a for camera, folder in folders.items() for a in ("--frames", f"{camera}={folder}")])
    try:
        assert view.url
        client = Client(view.url)
        for pub in publishers.values():
            until_seen(pub, client)
        for frame_id in range(8):  # ids 6 and 7: a looped replay's second pass
            for camera, pub in publishers.items():
                pub.publish_decision(decision(frame_id, "reject", camera), np.zeros((8, 8), np.float32))
        rows = wait_for(lambda: (r := client.get("/api/records?limit=50")) and len(r) == 16 and r, "16 records")
        client.post("/api/login", {"name": "anna"})
        for row in rows:
            expected = sorted(folders[row["camera"]].iterdir())[row["frame_id"] % 6]
            assert row["frame_sha256"] == hashlib.sha256(expected.read_bytes()).hexdigest()
            served = cv2.imdecode(np.frombuffer(client.get(f"/api/records/{row['id']}/frame.png?overlay=0"), np.uint8),
                                  cv2.IMREAD_UNCHANGED)
            assert np.array_equal(served, cv2.cvtColor(cv2.imread(str(expected), cv2.IMREAD_UNCHANGED),
                                                       cv2.COLOR_GRAY2BGR)), (row["camera"], row["frame_id"])
            assert client.get(f"/api/records/{row['id']}/thumb.png")[:4] == b"\x89PNG"
            if row["frame_id"] == 3:
                client.post(f"/api/records/{row['id']}/review", {"review": "false_reject"})
    finally:
        assert view.stop() == 0
        for pub in publishers.values():
            pub.close()
    out = tmp_path / "export"
    frames = [a for camera, folder in folders.items() for a in ("--frames", f"{camera}={folder}")]
    subprocess.run([sys.executable, "-m", "edge.cli", "records", "export", "--records", str(records), "--reviews",
                    *frames, "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    exported = {p.name.split("_")[0]: p.read_bytes() for p in (out / "good").iterdir()}
    assert {camera: hashlib.sha256(data).hexdigest() for camera, data in exported.items()} == {
        camera: hashlib.sha256(sorted(folder.iterdir())[3].read_bytes()).hexdigest() for camera, folder in folders.items()}


def test_a_damaged_database_is_moved_aside_and_recording_goes_on(tmp_path, publisher):
    (tmp_path / "records.sqlite").write_bytes(b"not a database at all " * 200)
    view = ViewProcess("--connect", publisher.config.endpoint, "--http", "127.0.0.1:0", "--records", str(tmp_path))
    try:
        assert view.url, view.process.stderr.read()
        client = Client(view.url)
        until_seen(publisher, client)
        publisher.publish_decision(decision(1, "reject"), np.zeros((8, 8), np.float32))
        assert wait_for(lambda: client.get("/api/records"), "a record")[0]["frame_id"] == 1
        state = client.get("/api/state")
        moved = Path(state["recorder"]["replaced"])
        assert (moved / "records.sqlite").read_bytes().startswith(b"not a database")
        assert any("damaged records database was moved" in p for p in state["box"]["problems"])
    finally:
        assert view.stop() == 0
    assert "recording into a new one" in view.stderr
