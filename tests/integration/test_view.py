"""`hlgfa view` as a process, fed by a real Publisher on a random loopback port, read over real HTTP:
the record it keeps, the live state, server-sent events, sign-in and reviews, access rules; and the
recorder's gap counting against a raw PUB socket that skips sequence numbers."""

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge.transport import wire
from edge.transport.publisher import PublishConfig
from edge.transport.publisher import Publisher
from edge.records.recorder import TOPICS, Recorder
from edge.records.store import RecordStore, open_reader, query
from edge.transport.subscriber import Subscriber
from edge.view.auth import hash_password
from tests.ports import free_endpoint

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0


class ViewProcess:
    """`hlgfa view` in a subprocess; `url` once it printed where it serves."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", "edge.cli", "view", *args], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        finally:
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


@pytest.fixture
def publisher():
    pub = Publisher("cam1", PublishConfig(endpoint=free_endpoint(), heartbeat_period_s=5.0, linger_ms=0))
    yield pub
    pub.close()


def decision(frame_id: int, verdict: str) -> wire.Decision:
    return wire.Decision(camera="cam1", frame_id=frame_id, verdict=verdict,
                         reason="" if verdict == "ok" else "score 0.9 > threshold 0.5",
                         score=0.9 if verdict == "reject" else 0.1, threshold=0.5, device_timestamp_ns=0,
                         receive_ns=0, decision_ns=0, latency_ms=3.0, model_hash="ab" * 32,
                         thresholds_version="v1", region_px=12 if verdict == "reject" else 0)


def until_seen(publisher, client: Client):
    """Heartbeats until the view lists the camera: the subscription is live, nothing sent is lost."""
    def seen():
        publisher.heartbeat(wire.Counters(), source=wire.SourceStatus("delivering", 0.0))
        return "cam1" in client.get("/api/state")["cameras"]
    wait_for(seen, "the view to receive a heartbeat")


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


def test_a_network_bind_without_a_password_is_refused(tmp_path):
    view = ViewProcess("--connect", "tcp://127.0.0.1:1", "--http", "0.0.0.0:0", "--records", str(tmp_path))
    code = view.process.wait(timeout=60)
    error = view.process.stderr.read()
    view.stop()
    assert code == 78
    assert "password_hash" in error


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
        assert client.post("/api/login", {"name": "bo", "password": "line-3-secret"}) == {"user": "bo"}
        assert client.get("/api/state")["user"] == "bo"
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
        received = 0
        while received < 4:
            received += recorder.step(5.0)
        store.commit()
        conn = open_reader(tmp_path)
        events = conn.execute("SELECT kind, lost, detail FROM events WHERE kind = 'gap' ORDER BY id").fetchall()
        conn.close()
        assert [(e[0], e[1]) for e in events][-2:] == [("gap", 2), ("gap", 1)]
        assert store.counters["gaps_lost"] >= 3
    finally:
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
