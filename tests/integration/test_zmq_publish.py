"""The ZeroMQ output over real sockets on random loopback ports.

No sleeps to wait for late subscribers: each test repeats heartbeats until the subscriber has seen
one (the slow-joiner handshake). Every receive has a timeout, and a module-wide pytest timeout turns
a leaked socket (a hanging context.term) into a failure.
"""

import json
import threading
import time

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.transport import wire
from edge.cli import main
from edge.transport.curve_keys import ClientCurve, generate
from edge.transport.publisher import PublishConfig
from edge.transport.publisher import Publisher, PublishError
from edge.transport.subscriber import Gap, ReliableClient, Restart, Subscriber
from tests.ports import free_endpoint

pytestmark = pytest.mark.timeout(30)



@pytest.fixture
def make_publisher():
    made = []

    def make(camera="cam1", **overrides):
        settings = dict(endpoint=free_endpoint(), map_size=(64, 64), linger_ms=100)
        settings.update(overrides)
        publisher = Publisher(camera, PublishConfig(**settings))
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close()


@pytest.fixture
def make_subscriber():
    made = []

    def make(*args, **kwargs):
        subscriber = Subscriber(*args, **kwargs)
        made.append(subscriber)
        return subscriber

    yield make
    for subscriber in made:
        subscriber.close()


def handshake(publisher, subscriber, deadline_s: float = 10.0) -> wire.Heartbeat:
    """Send heartbeats until the subscriber receives one: from then on, nothing is lost to slow joining."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        publisher.heartbeat()
        message = subscriber.recv(timeout=0.02)
        while message is not None:
            if isinstance(message, wire.Heartbeat) and message.session == publisher.session:
                return message
            message = subscriber.recv(timeout=0.02)
    pytest.fail(f"no heartbeat from {publisher.endpoint} within {deadline_s} s")


def drain(subscriber, until, timeout_s: float = 10.0) -> list:
    """Receive until `until(message)` is true; fail if the stream goes quiet first."""
    received = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        message = subscriber.recv(timeout=0.5)
        if message is None:
            continue
        received.append(message)
        if until(message):
            return received
    pytest.fail(f"stream ended after {len(received)} messages without the expected one")


def received_until_joined(publisher, subscriber, deadline_s: float = 10.0) -> list:
    """Subscribe to the heartbeats and beat until one sent since then arrives; return everything received
    up to it. One connection keeps order, so a message the subscriber should never have had is in the
    list: no wait to guess how long it might take."""
    subscriber.socket.setsockopt(zmq.SUBSCRIBE, wire.topic(wire.HEARTBEAT, publisher.camera))
    joined_at = publisher.heartbeat().seq
    received = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        message = subscriber.recv(timeout=0.02)
        if message is None:
            publisher.heartbeat()
            continue
        received.append(message)
        if isinstance(message, wire.Heartbeat) and message.seq >= joined_at:
            return received
    pytest.fail(f"no heartbeat after subscribing within {deadline_s} s; received {received}")


HANDSHAKE_OUTCOMES = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                      | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


def handshakes_until(monitor, refusal: int, deadline_s: float = 10.0) -> list[int]:
    """The handshake outcomes `monitor` reports up to the first `refusal`, or up to a handshake that
    succeeded: the refusal is an event to wait for, where silence would be an absence in time."""
    outcomes = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if monitor.poll(100):
            outcomes.append(recv_monitor_message(monitor)["event"])
            if outcomes[-1] in (refusal, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                return outcomes
    pytest.fail(f"no handshake refused with event {refusal} within {deadline_s} s (outcomes: {outcomes})")


def decision(frame_id: int, verdict: str = "ok", camera: str = "cam1") -> wire.Decision:
    return wire.Decision(camera, frame_id, verdict, "" if verdict == "ok" else "score above threshold",
                         0.2 if verdict == "ok" else 0.9, 0.5, 0, 1_000, 2_000_000, 2.0, "f" * 64, "v1")


def test_decisions_maps_and_faults_arrive_in_order_with_sequence_numbers(make_publisher, make_subscriber):
    publisher = make_publisher()
    subscriber = make_subscriber(publisher.endpoint, cameras=["cam1"])
    handshake(publisher, subscriber)
    rng = np.random.default_rng(1)
    for frame_id in range(1, 6):
        publisher.publish_decision(decision(frame_id, "reject" if frame_id == 3 else "ok"),
                                   rng.random((128, 128), dtype=np.float32))
    publisher.publish_fault("camera_lost", "no frame for 2 s")
    beat = publisher.heartbeat(wire.Counters(frames=5, ok=4, reject=1))
    got = drain(subscriber, lambda m: isinstance(m, wire.Heartbeat) and m.seq == beat.seq)
    decisions = [m for m in got if isinstance(m, wire.Decision)]
    maps = [m for m in got if isinstance(m, wire.MapMessage)]
    assert [d.frame_id for d in decisions] == [1, 2, 3, 4, 5]
    assert [d.seq for d in decisions] == [1, 2, 3, 4, 5]
    assert [d.verdict for d in decisions] == ["ok", "ok", "reject", "ok", "ok"]
    assert all(d.session == publisher.session for d in got)
    assert [m.frame_id for m in maps] == [1, 2, 3, 4, 5] and maps[0].data.shape == (64, 64)
    assert [m.code for m in got if isinstance(m, wire.Fault)] == ["camera_lost"]
    assert got[-1].counters.reject == 1 and got[-1].seqs == {"decision": 5, "map": 5, "fault": 1}
    assert sum(subscriber.lost.values()) == 0 and subscriber.pop_events() == []


def test_threads_publishing_at_once_keep_each_topic_in_sequence_order(make_publisher, make_subscriber):
    """The pipeline's stages and the main loop publish from their own threads, each sending on the
    PUB socket itself: numbering and sending under one lock must keep wire order == seq order."""
    publisher = make_publisher(sndhwm=10_000)
    subscriber = make_subscriber(publisher.endpoint, cameras=["cam1"])
    handshake(publisher, subscriber)
    map_ = np.random.default_rng(2).random((32, 32), dtype=np.float32)

    def decisions(first: int):
        for frame_id in range(first, 400, 2):
            publisher.publish_decision(decision(frame_id), map_)

    def faults():
        for index in range(200):
            publisher.publish_fault("frame_error", f"corrupt frame {index}")

    threads = [threading.Thread(target=target, args=args)
               for target, args in ((decisions, (0,)), (decisions, (1,)), (faults, ()))]
    for thread in threads:
        thread.start()
    for _ in range(50):
        publisher.heartbeat()
    for thread in threads:
        thread.join(10)
    beat = publisher.heartbeat()
    got = drain(subscriber, lambda m: isinstance(m, wire.Heartbeat) and m.seq == beat.seq)
    for kind in (wire.Decision, wire.MapMessage, wire.Fault):
        seqs = [m.seq for m in got if isinstance(m, kind)]
        assert seqs == list(range(1, len(seqs) + 1)), f"{kind.__name__} seqs out of order or missing"
    assert sorted(m.frame_id for m in got if isinstance(m, wire.Decision)) == list(range(400))
    assert sum(isinstance(m, wire.Fault) for m in got) == 200
    assert sum(subscriber.lost.values()) == 0


def test_topic_filter_selects_kinds(make_publisher, make_subscriber):
    publisher = make_publisher()
    subscriber = make_subscriber(publisher.endpoint, cameras=["cam1"], topics=("decision", "heartbeat"))
    handshake(publisher, subscriber)
    publisher.publish_decision(decision(1), np.zeros((8, 8), np.float32))
    publisher.publish_fault("x", "y")
    beat = publisher.heartbeat()
    got = drain(subscriber, lambda m: isinstance(m, wire.Heartbeat) and m.seq == beat.seq)
    assert [type(m) for m in got] == [wire.Decision, wire.Heartbeat]
    # the heartbeat says one fault and one map were sent, but we never asked for them: not a loss
    assert sum(subscriber.lost.values()) == 0


def test_stalled_subscriber_never_blocks_the_publisher_and_its_losses_are_counted(make_publisher, make_subscriber):
    publisher = make_publisher(sndhwm=5, map_size=(256, 256))
    # maps too: PUB filters on the publisher's side, so only subscribed kinds fill the queue
    stalled = make_subscriber(publisher.endpoint, cameras=["cam1"], rcvhwm=5)
    handshake(publisher, stalled)
    sent = 400  # × (decision + 64 KiB map): far beyond both HWMs and the kernel's loopback buffers
    payload = np.random.default_rng(2).random((256, 256), dtype=np.float32)
    for frame_id in range(1, sent + 1):
        publisher.publish_decision(decision(frame_id), payload)
    # A fresh subscriber is served although the stalled one still holds a full queue.
    fresh = make_subscriber(publisher.endpoint, cameras=["cam1"], topics=("decision", "heartbeat"))
    handshake(publisher, fresh)
    publisher.publish_decision(decision(sent + 1))
    got = drain(fresh, lambda m: isinstance(m, wire.Decision))
    assert got[-1].frame_id == sent + 1 and got[-1].seq == sent + 1
    # The stalled subscriber wakes up: what it missed is counted exactly, not guessed.
    end = time.monotonic() + 10
    received = []
    while time.monotonic() < end:
        publisher.heartbeat()
        message = stalled.recv(timeout=0.05)
        while message is not None:
            received.append(message)
            message = stalled.recv(timeout=0.01)
        if stalled._last.get(("cam1", "decision")) == sent + 1:
            break
    decisions = [m for m in received if isinstance(m, wire.Decision)]
    lost = stalled.lost[("cam1", "decision")]
    assert lost > 0, "HWM never dropped anything: the test did not stall the subscriber"
    assert len(decisions) + lost == sent + 1
    gaps = [e for e in stalled.pop_events() if isinstance(e, Gap) and e.kind == "decision"]
    assert sum(g.lost for g in gaps) == lost


def test_close_with_a_stalled_subscriber_returns_and_refuses_further_sends(make_publisher, make_subscriber):
    publisher = make_publisher(sndhwm=5, map_size=(256, 256), linger_ms=100)
    stalled = make_subscriber(publisher.endpoint, rcvhwm=5)
    handshake(publisher, stalled)
    payload = np.ones((256, 256), np.float32)
    for frame_id in range(1, 201):
        publisher.publish_decision(decision(frame_id), payload)
    publisher.close()  # bounded by linger_ms; the module timeout fails it if it hangs
    assert not publisher._thread.is_alive()
    with pytest.raises(PublishError, match="closed"):
        publisher.publish_decision(decision(201))


def test_publisher_restart_is_reported_as_restart_not_loss(make_publisher, make_subscriber):
    first = make_publisher()
    endpoint = first.endpoint
    subscriber = make_subscriber(endpoint, cameras=["cam1"])
    handshake(first, subscriber)
    first.publish_decision(decision(1))
    drain(subscriber, lambda m: isinstance(m, wire.Decision))
    first.close()
    second = make_publisher(endpoint=endpoint)
    assert second.session != first.session
    handshake(second, subscriber)
    events = subscriber.pop_events()
    assert Restart("cam1", first.session, second.session) in events
    # the handshake's first heartbeats may have gone out before the reconnect: counted as heartbeat
    # gaps, never as lost decisions
    assert subscriber.lost[("cam1", "decision")] == 0


def test_curve_lets_authorised_subscribers_in_and_keeps_others_out(tmp_path, make_publisher, make_subscriber):
    generate(tmp_path / "server", "server")
    generate(tmp_path / "allowed", "line-plc")
    generate(tmp_path / "stranger", "stranger")
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "line-plc.key").write_bytes((tmp_path / "allowed" / "line-plc.key").read_bytes())
    publisher = make_publisher(curve_secret_key=tmp_path / "server" / "server.key_secret",
                               curve_allowed_clients=tmp_path / "clients")
    server_key = tmp_path / "server" / "server.key"

    stranger = make_subscriber(publisher.endpoint,
                               curve=ClientCurve(tmp_path / "stranger" / "stranger.key_secret", server_key))
    stranger_monitor = stranger.socket.get_monitor_socket(HANDSHAKE_OUTCOMES)
    plain = make_subscriber(publisher.endpoint)
    plain_monitor = plain.socket.get_monitor_socket(HANDSHAKE_OUTCOMES)
    allowed = make_subscriber(publisher.endpoint,
                              curve=ClientCurve(tmp_path / "allowed" / "line-plc.key_secret", server_key))
    handshake(publisher, allowed)
    for frame_id in range(1, 11):
        publisher.publish_decision(decision(frame_id))
    beat = publisher.heartbeat()
    got = drain(allowed, lambda m: isinstance(m, wire.Heartbeat) and m.seq == beat.seq)
    assert [m.frame_id for m in got if isinstance(m, wire.Decision)] == list(range(1, 11))
    # Kept out means a refused handshake, each time it tries: the ZAP authenticator says no to the
    # stranger's key, and a client without CURVE offers the wrong mechanism.
    assert handshakes_until(stranger_monitor, zmq.EVENT_HANDSHAKE_FAILED_AUTH)[-1] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    assert handshakes_until(plain_monitor, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)[-1] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    for subscriber, monitor in ((stranger, stranger_monitor), (plain, plain_monitor)):
        subscriber.socket.disable_monitor()
        monitor.close(linger=0)


def test_curve_without_allowed_keys_is_a_config_error(tmp_path):
    generate(tmp_path, "server")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="holds no \\*.key public key files"):
        Publisher("cam1", PublishConfig(endpoint=free_endpoint(), curve_secret_key=tmp_path / "server.key_secret",
                                        curve_allowed_clients=tmp_path / "empty"))


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o604])
def test_a_secret_key_others_may_read_is_refused_naming_the_chmod(tmp_path, mode):
    from edge.transport.curve_keys import load_keypair

    generate(tmp_path, "server")
    generate(tmp_path / "clients", "plc")
    secret = tmp_path / "server.key_secret"
    secret.chmod(mode)
    with pytest.raises(Exception, match=f"mode {mode:04o} lets group or others.*chmod 600 {secret}") as caught:
        Publisher("cam1", PublishConfig(endpoint=free_endpoint(), curve_secret_key=secret,
                                        curve_allowed_clients=tmp_path / "clients"))
    assert caught.value.exit_code == 78
    secret.chmod(0o600)
    assert load_keypair(secret)[1]


@pytest.mark.parametrize("target", ["folder", "key"])
def test_an_allowed_clients_folder_or_key_others_may_write_is_refused_naming_the_chmod(tmp_path, target):
    generate(tmp_path, "server")
    generate(tmp_path / "clients", "plc")
    writable = tmp_path / "clients" if target == "folder" else tmp_path / "clients" / "plc.key"
    writable.chmod(0o777 if target == "folder" else 0o666)
    with pytest.raises(Exception, match=f"lets group or others write it.*chmod go-w {writable}") as caught:
        Publisher("cam1", PublishConfig(endpoint=free_endpoint(), curve_secret_key=tmp_path / "server.key_secret",
                                        curve_allowed_clients=tmp_path / "clients"))
    assert caught.value.exit_code == 78


def test_binding_a_taken_endpoint_names_it(make_publisher):
    first = make_publisher()
    with pytest.raises(Exception, match=f"cannot bind ZeroMQ endpoint '{first.endpoint}'") as caught:
        make_publisher(endpoint=first.endpoint)
    assert caught.value.exit_code == 78


@pytest.mark.parametrize("client", [Subscriber, ReliableClient])
def test_a_malformed_endpoint_is_a_config_error_naming_it(client):
    with pytest.raises(Exception, match="cannot connect to 'tcp://127.0.0.1:port'") as caught:
        client("tcp://127.0.0.1:port")
    assert caught.value.exit_code == 78


# --------------------------------------------------------------------------------- reliable channel

def test_reliable_channel_buffers_until_the_bridge_connects_and_stops_after_ack(make_publisher):
    publisher = make_publisher(reliable_endpoint=free_endpoint(), ack_timeout_s=0.05)
    for frame_id in (1, 2, 3):  # no bridge yet: kept, not lost
        publisher.publish_decision(decision(frame_id))
    with ReliableClient(publisher.reliable_endpoint) as bridge:
        first = [bridge.recv(timeout=5) for _ in range(3)]
        assert [d.seq for d in first] == [1, 2, 3]
        bridge.ack(first[0])
        bridge.ack(first[2])
        # seq 2 is unacknowledged: it is sent again (and skipped by the client as already delivered)
        end = time.monotonic() + 5
        while bridge.duplicates == 0 and time.monotonic() < end:
            assert bridge.recv(timeout=0.1) is None
        assert bridge.duplicates >= 1
        bridge.ack(first[1])
        publisher.publish_decision(decision(4))
        fourth = bridge.recv(timeout=5)
        assert fourth.seq == 4
        bridge.ack(fourth)
        # The I/O thread refreshes the stats at the end of each round: "pending 0" alone can still be
        # the round before decision 4 was added, so wait for the ack of 4 to be counted too.
        end = time.monotonic() + 5
        stats = publisher.reliable_stats()
        while (stats["pending"], stats["acked"]) != (0, 4) and time.monotonic() < end:
            bridge.recv(timeout=0.05)
            stats = publisher.reliable_stats()
        assert stats["pending"] == 0 and stats["acked"] == 4 and stats["resent"] >= 1 and stats["evicted"] == 0


def test_full_reliable_buffer_is_a_published_fault(make_publisher, make_subscriber):
    publisher = make_publisher(reliable_endpoint=free_endpoint(), reliable_capacity=2)
    subscriber = make_subscriber(publisher.endpoint, topics=("fault", "heartbeat"))
    handshake(publisher, subscriber)
    for frame_id in (1, 2, 3):
        publisher.publish_decision(decision(frame_id))
    fault = drain(subscriber, lambda m: isinstance(m, wire.Fault))[-1]
    assert fault.code == "reliable_buffer_full" and fault.frame_id == 1 and "seq 1" in fault.message
    with ReliableClient(publisher.reliable_endpoint) as bridge:
        assert [bridge.recv(timeout=5).seq for _ in range(2)] == [2, 3]
    assert publisher.reliable_stats()["evicted"] == 1


def test_frame_ids_up_to_a_cameras_64_bit_counter_survive_the_hand_over_to_the_reliable_channel(make_publisher,
                                                                                                make_subscriber):
    publisher = make_publisher(reliable_endpoint=free_endpoint(), reliable_capacity=1)
    subscriber = make_subscriber(publisher.endpoint, topics=("fault", "heartbeat"))
    handshake(publisher, subscriber)
    for frame_id in (2**64 - 1, 0):
        publisher.publish_decision(decision(frame_id))
    fault = drain(subscriber, lambda m: isinstance(m, wire.Fault))[-1]
    assert fault.frame_id == 2**64 - 1 and f"(frame {2**64 - 1})" in fault.message


def test_evictions_and_decisions_unacknowledged_at_exit_are_logged(make_publisher, caplog):
    with caplog.at_level("WARNING", logger="edge.transport.publisher"):
        publisher = make_publisher(reliable_endpoint=free_endpoint(), reliable_capacity=2)
        for frame_id in (1, 2, 3):
            publisher.publish_decision(decision(frame_id))
        publisher.close()  # returns after the I/O thread has ended: its last log line is written
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("WARNING", "camera cam1: reliable buffer full (2 pending, bridge not connected): decision seq 1 "
                       "(frame 1) evicted unacknowledged; 1 evicted in all") in messages, messages
    assert ("ERROR", "camera cam1: 2 decisions never acknowledged by the reliable bridge at exit (seq 2..3, "
                     "frames 2, 3; bridge not connected)") in messages, messages


def test_bridge_restart_receives_unacknowledged_decisions(make_publisher):
    publisher = make_publisher(reliable_endpoint=free_endpoint(), ack_timeout_s=10)
    publisher.publish_decision(decision(1))
    with ReliableClient(publisher.reliable_endpoint) as bridge:
        assert bridge.recv(timeout=5).seq == 1  # dies before acknowledging
    with ReliableClient(publisher.reliable_endpoint) as bridge:
        again = bridge.recv(timeout=5)  # the new identity's HELLO triggers an immediate resend
        assert again.seq == 1
        bridge.ack(again)


class RefusingRouter:
    """The publisher's ROUTER socket, refusing its next `count` sends as a bridge whose queue is full does
    (zmq.Again), then sending as usual: backpressure on demand, without filling kernel buffers."""

    def __init__(self, router, count: int):
        self._router = router
        self._left = count
        self.refused = 0

    def send_multipart(self, frames, flags=0, **kwargs):
        if self._left > 0:
            self._left -= 1
            self.refused += 1
            raise zmq.Again()
        return self._router.send_multipart(frames, flags=flags, **kwargs)

    def __getattr__(self, name):
        return getattr(self._router, name)


def test_a_refused_decision_holds_back_the_newer_ones_so_the_bridge_sees_them_in_seq_order(make_publisher):
    """A full bridge queue refuses a send; the decisions after it must wait, not overtake it."""
    publisher = make_publisher(reliable_endpoint=free_endpoint(), reliable_capacity=1000, ack_timeout_s=60)
    context = zmq.Context.instance()
    bridge = context.socket(zmq.DEALER)
    bridge.linger = 0
    bridge.connect(publisher.reliable_endpoint)
    try:
        bridge.send_multipart([wire.RELIABLE_HELLO, str(wire.SCHEMA_VERSION).encode()])
        end = time.monotonic() + 10
        while not publisher.reliable_stats()["bridge_connected"] and time.monotonic() < end:
            time.sleep(0.01)
        assert publisher.reliable_stats()["bridge_connected"]
        refusing = RefusingRouter(publisher._router, count=3)
        publisher._router = refusing
        published = 200
        for frame_id in range(1, published + 1):
            publisher.publish_decision(decision(frame_id))
        first_seen, seen = [], set()
        while len(seen) < published:
            assert bridge.poll(10_000), f"{len(seen)} of {published} decisions received"
            seq = wire.decode(bridge.recv_multipart()[1:]).seq
            if seq not in seen:
                seen.add(seq)
                first_seen.append(seq)
        assert refusing.refused == 3
        assert first_seen == list(range(1, published + 1))
        assert publisher.reliable_stats()["deferred"] == 3
    finally:
        bridge.close()


# ------------------------------------------------------------------------------------------- CLI

def test_cli_subscribe_prints_json_lines_and_saves_maps(make_publisher, tmp_path, capsys):
    publisher = make_publisher()
    result = {}
    argv = ["subscribe", "--connect", publisher.endpoint, "--camera", "cam1", "--count", "3", "--json",
            "--save-maps", str(tmp_path / "maps"), "--timeout", "10"]
    thread = threading.Thread(target=lambda: result.setdefault("rc", main(argv)))
    thread.start()
    frame_id = 0
    end = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < end:  # keep publishing until the CLI has its count
        frame_id += 1
        publisher.publish_decision(decision(frame_id, "reject"), np.ones((32, 32), np.float32))
        thread.join(timeout=0.02)
    thread.join(timeout=5)
    assert result.get("rc") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    decisions = [line for line in lines if line["type"] == "decision"]
    assert len(decisions) == 3 and all(d["verdict"] == "reject" and d["camera"] == "cam1" for d in decisions)
    pngs = list((tmp_path / "maps").glob("cam1_*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_cli_subscribe_times_out_with_unavailable_exit_code(capsys):
    with zmq.Context() as context, context.socket(zmq.REP) as placeholder:  # a port nobody publishes on
        placeholder.linger = 0
        placeholder.bind("tcp://127.0.0.1:*")
        endpoint = placeholder.getsockopt_string(zmq.LAST_ENDPOINT)
        assert main(["subscribe", "--connect", endpoint, "--timeout", "0.2"]) == 69
    assert "no message from" in capsys.readouterr().err


def test_cli_keys_generate_refuses_to_overwrite(tmp_path, capsys):
    assert main(["keys", "generate", str(tmp_path), "--name", "cam1"]) == 0
    assert (tmp_path / "cam1.key").is_file() and (tmp_path / "cam1.key_secret").stat().st_mode & 0o777 == 0o600
    assert main(["keys", "generate", str(tmp_path), "--name", "cam1"]) == 78


# ----------------------------------------------------------------------------- hostile peers

FLOODER = """
import os, sys, zmq
context = zmq.Context()
sub = context.socket(zmq.SUB)
monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
sub.connect(sys.argv[1])
for _ in range(int(sys.argv[2])):
    sub.setsockopt(zmq.SUBSCRIBE, os.urandom(25_000).hex().encode())  # 50 KB each
# The publisher must drop the connection rather than store what it sent: exit 0 once it did.
sys.exit(0 if monitor.poll(20_000) else 3)
"""


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


def test_a_flood_of_50_kb_subscriptions_from_one_peer_is_dropped_not_stored(make_publisher, make_subscriber):
    """300 subscriptions of 50 KB took ZeroMQ's own PUB socket from 135 MB to 850 MB."""
    import subprocess
    import sys

    publisher = make_publisher()
    subscriber = make_subscriber(publisher.endpoint, cameras=["cam1"])
    handshake(publisher, subscriber)
    before = _rss_mib()
    flooder = subprocess.run([sys.executable, "-c", FLOODER, publisher.endpoint, "300"], timeout=60)
    publisher.heartbeat()  # the socket takes in what arrived when it is next used
    grown = _rss_mib() - before
    assert flooder.returncode == 0, "the publisher never dropped the flooding peer"
    assert grown < 50, f"the publisher grew by {grown:.0f} MiB"
    publisher.publish_decision(decision(7))
    assert drain(subscriber, lambda m: isinstance(m, wire.Decision))[-1].frame_id == 7


def test_only_subscriptions_to_this_cameras_topics_are_stored_and_junk_is_logged_once(
        make_publisher, make_subscriber, caplog):
    publisher = make_publisher()
    junk = [make_subscriber(publisher.endpoint, topics=()) for _ in range(2)]
    for subscriber in junk:
        for prefix in (b"zz-not-a-topic", b"decision.cam1/and-more", b"decision.cam2/"):
            subscriber.socket.setsockopt(zmq.SUBSCRIBE, prefix)
    everything = make_subscriber(publisher.endpoint, topics=())
    everything.socket.setsockopt(zmq.SUBSCRIBE, b"")
    with caplog.at_level("WARNING", logger="edge.transport.publisher"):
        handshake(publisher, everything)
        publisher.publish_decision(decision(1))
        assert drain(everything, lambda m: isinstance(m, wire.Decision))[-1].frame_id == 1
    for subscriber in junk:
        received = received_until_joined(publisher, subscriber)
        assert len(received) == 1, f"a subscriber to no topic of this camera's received {received[:-1]}"
    warnings = [r.getMessage() for r in caplog.records if "no topic prefix" in r.getMessage()]
    # one line per peer address and cause, whatever the number of connections and subscriptions
    assert len(warnings) == 1 and "from 127.0.0.1" in warnings[0], warnings


def _raw_bridge(endpoint: str, hello=(wire.RELIABLE_HELLO, str(wire.SCHEMA_VERSION).encode())):
    bridge = zmq.Context.instance().socket(zmq.DEALER)
    bridge.linger = 0
    bridge.connect(endpoint)
    bridge.send_multipart(list(hello))
    return bridge


def _refusal(bridge) -> bytes:
    assert bridge.poll(10_000), "no answer from the publisher"
    verb, *rest = bridge.recv_multipart()
    assert verb == wire.RELIABLE_REFUSED, verb
    return rest[0]


def test_a_second_bridge_is_refused_while_the_first_owns_the_channel_then_takes_it_over(make_publisher, caplog):
    publisher = make_publisher(reliable_endpoint=free_endpoint())
    with caplog.at_level("WARNING", logger="edge.transport.publisher"), \
            ReliableClient(publisher.reliable_endpoint) as first:
        publisher.publish_decision(decision(1))
        got = first.recv(timeout=10)
        assert got.frame_id == 1
        second = ReliableClient(publisher.reliable_endpoint, hello_interval_s=0.05)
        try:
            end = time.monotonic() + 10
            while second.refused is None and time.monotonic() < end:
                assert second.recv(timeout=0.05) is None
            assert "belongs to the bridge at 127.0.0.1" in second.refused
            for frame_id in (2, 3):
                publisher.publish_decision(decision(frame_id))
            assert [first.recv(timeout=10).frame_id for _ in range(2)] == [2, 3]  # no split
            first.ack(got)
            first.close()  # the owner goes: the second takes over with the two unacknowledged decisions
            taken = [second.recv(timeout=10) for _ in range(2)]
            assert [d.frame_id for d in taken] == [2, 3] and second.refused is None
        finally:
            second.close()
    refusals = [r.getMessage() for r in caplog.records if "refused 127.0.0.1" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].startswith("camera cam1: reliable channel: refused 127.0.0.1:")


def test_a_rogue_that_says_hello_and_acks_takes_nothing_from_the_real_bridge(make_publisher):
    publisher = make_publisher(reliable_endpoint=free_endpoint(), ack_timeout_s=0.05)
    with ReliableClient(publisher.reliable_endpoint) as real:
        publisher.publish_decision(decision(1))
        first = real.recv(timeout=10)
        rogue = _raw_bridge(publisher.reliable_endpoint)
        try:
            assert b"belongs to the bridge" in _refusal(rogue)
            rogue.send_multipart([wire.RELIABLE_ACK, wire.ack_body(publisher.session, first.seq)])
            assert b"ACKs count only from the bridge that owns the channel" in _refusal(rogue)
            # unacknowledged by its owner, the decision is still resent to it
            end = time.monotonic() + 10
            while real.duplicates == 0 and time.monotonic() < end:
                real.recv(timeout=0.1)
            assert real.duplicates > 0 and publisher.reliable_stats()["acked"] == 0
        finally:
            rogue.close()
        real.ack(first)


@pytest.mark.parametrize("hello", [(wire.RELIABLE_HELLO, b"99"), (wire.RELIABLE_HELLO,),
                                   (wire.RELIABLE_HELLO, b"1", b"extra")])
def test_a_hello_of_another_schema_is_refused_naming_the_schema(make_publisher, hello):
    publisher = make_publisher(reliable_endpoint=free_endpoint())
    bridge = _raw_bridge(publisher.reliable_endpoint, hello)
    try:
        assert f"this daemon speaks schema {wire.SCHEMA_VERSION}".encode() in _refusal(bridge)
        assert not publisher.reliable_stats()["bridge_connected"]
    finally:
        bridge.close()


def test_a_bridge_whose_publisher_is_gone_never_blocks_on_acks_hellos_or_part_ids():
    """With no publisher at the other end, ZeroMQ queues a DEALER's messages up to its high-water mark
    (1000) and then blocks the sender: the bridge's camera thread would hang on an ACK for ever. Past
    the mark every send returns at once and is counted."""
    from tests.ports import free_endpoint

    with ReliableClient(free_endpoint(), hello_interval_s=0.0) as bridge:
        decision = wire.Decision("cam1", 1, "ok", "", 0.1, 0.5, 0, 0, 0, 0.0, "m", "t", session="0" * 16, seq=1)
        for _ in range(3000):
            bridge.ack(decision)
        bridge.send_part(wire.PartRequest("P1", 1, "a" * 16, "0" * 16))
        assert bridge.recv(timeout=0.05) is None  # says HELLO, queues nothing more, returns
        assert bridge.unsent >= 3000 - 1000
