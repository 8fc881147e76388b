"""`hlgfa view`: the operator's page and the inspection record, in one process of their own that
subscribes to the daemons like any other subscriber."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from edge.core.errors import ConfigError

log = logging.getLogger(__name__)


def _hash_password() -> int:
    from edge.view.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    print(hash_password(password))
    return 0


def _handler(args: argparse.Namespace) -> int:
    if args.hash_password:
        return _hash_password()
    from edge.core.paths import writable_dir
    from edge.records.frames import Frames
    from edge.records.recorder import TOPICS, Recorder
    from edge.records.store import HOUR_NS, RecordStore, hourly, last_reset, open_reader, shift_counts
    from edge.transport.subscriber import Subscriber
    from edge.view.config import build_view_config
    from edge.view.live import HOURS_KEPT, Hub, LiveState
    from edge.view.server import ViewServer, start_ticker

    config = build_view_config(args.config, {
        "connect": args.connect, "cameras": args.camera, "http": args.http, "records": args.records,
        "frames": Frames.parse(args.frames) if args.frames else None, "tls_cert": args.tls_cert,
        "tls_key": args.tls_key})
    writable_dir(config.records, f"--records {config.records}")
    frames = Frames(config.frames) if config.frames else None
    curve = None
    if config.curve_secret is not None:
        from edge.transport.curve_keys import ClientCurve

        curve = ClientCurve(config.curve_secret, config.curve_server_key)

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    store = RecordStore(config.records, config.retention.retention())
    if store.replaced is not None:
        print(f"view: {store.disk_alarm}", file=sys.stderr, flush=True)
    hub = Hub(max_clients=config.max_pages)
    live = LiveState(hub, config.connect)
    reader = open_reader(config.records)
    try:
        through_id = reader.execute("SELECT MAX(id) FROM decisions").fetchone()[0] or 0
    finally:
        reader.close()

    def seed():  # the shift and the hours before this start, once, beside recording (a long record takes a while)
        seeding = open_reader(config.records)
        try:
            since = last_reset(seeding)
            live.seed_shift(since, shift_counts(seeding, since["wall_ns"] if since else 0, through_id))
            live.hours.merge(hourly(seeding, time.time_ns() - HOURS_KEPT * HOUR_NS, through_id))
        finally:
            seeding.close()

    threading.Thread(target=seed, name="view-seed", daemon=True).start()
    import zmq

    context = zmq.Context()
    subscribers = [Subscriber(endpoint, cameras=config.cameras, topics=TOPICS, curve=curve, context=context)
                   for endpoint in config.connect]
    recorder = Recorder(store, subscribers, listener=live.on_message, stored=live.on_stored, frames=frames)

    def recorder_stats() -> dict:
        return {**store.stats(), "lost": sum(sum(s.lost.values()) for s in subscribers),
                "restarts": sum(s.restarts for s in subscribers), "malformed": recorder.malformed,
                "alive": recorder.alive, "errors": recorder.errors, "error": recorder.error,
                "backlog": recorder.backlog,
                "sse_cut_off": hub.cut_off, "pages_refused": hub.refused}

    try:
        server = ViewServer(config, live, hub, recorder_stats, frames)
    except OSError as error:
        for subscriber in subscribers:
            subscriber.close()
        context.destroy(linger=0)
        store.close()
        raise ConfigError(f"--http {config.http}: cannot listen ({error.strerror or error})") from None
    recorder.start()
    start_ticker(server, stop)
    serving = threading.Thread(target=server.serve_forever, name="view-http", daemon=True)
    serving.start()
    print(f"view: {server.url} (records {config.records}, subscribed to {', '.join(config.connect)})", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        hub.close()
        server.server_close()
        recorder.stop()
        for subscriber in subscribers:
            subscriber.close()
        context.destroy(linger=0)
        store.close()
    return 0


def configure(parser) -> None:
    """The arguments and handler of `hlgfa view` (edge/cli.py names the command and its one-line help)."""
    parser.description = (
        "Subscribe to one or more daemons, record every decision into --records DIR (SQLite, maps "
        "of rejects and faults), and serve the live page, the rejects gallery, trends and reviews. "
        "docs/VIEW.md.")
    parser.add_argument("--config", type=Path, metavar="FILE", help="view TOML config (docs/VIEW.md)")
    parser.add_argument("--connect", action="append", metavar="ENDPOINT", help="a daemon's PUB endpoint (repeatable)")
    parser.add_argument("--camera", action="append", metavar="CAM", help="only this camera (repeatable)")
    parser.add_argument("--http", metavar="ADDRESS:PORT", help="where the page is served (default 127.0.0.1:8080)")
    parser.add_argument("--records", type=Path, metavar="DIR", help="the records folder")
    parser.add_argument("--frames", action="append", metavar="CAMERA=DIR",
                        help="the folder or recording CAMERA's daemon reads (repeatable, one per camera): shows "
                             "each part's frame with the region outlined, and review exports carry it")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE")
    parser.add_argument("--tls-key", type=Path, metavar="FILE")
    parser.add_argument("--hash-password", action="store_true",
                        help="read a password (stdin or prompt), print its hash for password_hash, exit")
    parser.set_defaults(handler=_handler)
