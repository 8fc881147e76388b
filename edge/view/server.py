"""The view's HTTP server: the page, a JSON API over the records, and server-sent events.

The standard library's threading HTTP server is enough for a handful of screens at the line, and
keeps the view free of a web framework. Each request that reads the records opens its own read-only
SQLite connection (WAL: readers never block the recorder).

Access: reads are open on a loopback bind without a password; a review needs a signed-in name. With
`password_hash` set (required for any other bind) everything but the page and the login needs a
session. Writes must be JSON (`Content-Type: application/json`), which a cross-site form cannot send,
and the session cookie is SameSite=Strict.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edge.core.errors import HlgfaError
from edge.records.export import FrameFolder, parse_when
from edge.records.store import REVIEWS, counts_per_hour, get, open_reader, query, saved_counters, set_review
from edge.view import images
from edge.view.auth import Sessions, verify_password
from edge.view.config import ViewConfig
from edge.view.live import Hub, LiveState

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "hlgfa_view"
SSE_KEEPALIVE_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
GALLERY_LIMIT = 500


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: ViewConfig, live: LiveState, hub: Hub, recorder_stats, frames: FrameFolder | None):
        self.config = config
        self.live = live
        self.hub = hub
        self.recorder_stats = recorder_stats
        self.frames = frames
        self.sessions = Sessions()
        self.records = Path(config.records)
        super().__init__((config.host, config.port), Handler)
        if config.tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(config.tls_cert, config.tls_key)
            # the handshake runs in the request's own thread (Handler.setup), never in the accept loop,
            # where one silent client would hold up every other
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request, client_address):
        log.debug("request from %s failed", client_address, exc_info=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        scheme = "https" if self.config.tls_cert is not None else "http"
        return f"{scheme}://{host if ':' not in host else f'[{host}]'}:{port}/"


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HANDSHAKE_TIMEOUT_S)
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    def log_message(self, fmt, *args):  # the access log goes to DEBUG, not stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------------------------- plumbing

    def _token(self) -> str | None:
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        return cookie[COOKIE].value if COOKIE in cookie else None

    def _user(self) -> str | None:
        return self.server.sessions.user(self._token())

    def _require_reader(self) -> None:
        if self.server.config.password_hash is not None and self._user() is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "sign in first")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data, status: HTTPStatus = HTTPStatus.OK, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data, separators=(",", ":")).encode(), "application/json", headers)

    def _body(self) -> dict:
        if self.headers.get_content_type() != "application/json":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json")
        length = int(self.headers.get("Content-Length") or 0)
        if length > 65536:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body over 64 KiB")
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "request body is not JSON") from None
        if not isinstance(data, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "expected a JSON object")
        return data

    def _dispatch(self, routes: dict) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        params = parse_qs(url.query)
        try:
            for pattern, handler in routes.items():
                names = pattern.split("/")[1:] if pattern != "/" else []
                if len(names) != len(parts):
                    continue
                args = []
                for name, part in zip(names, parts):
                    if name.startswith("<"):
                        args.append(part)
                    elif name != part:
                        break
                else:
                    handler(self, params, *args)
                    return
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
        except HttpError as error:
            self._json({"error": str(error)}, error.status)
        except HlgfaError as error:
            self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
        except ValueError as error:  # a query parameter that is not a number
            self._json({"error": f"bad request {url.path}?{url.query}: {error}"}, HTTPStatus.BAD_REQUEST)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self._dispatch(GET_ROUTES)

    def do_HEAD(self):
        self._dispatch(GET_ROUTES)

    def do_POST(self):
        self._dispatch(POST_ROUTES)

    # --------------------------------------------------------------------------------- reading

    def page(self, params, name: str = "index.html") -> None:
        files = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                 "style.css": "text/css; charset=utf-8"}
        if name not in files:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such file: {name}")
        self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), files[name])

    def state(self, params) -> None:
        self._require_reader()
        self._json({"cameras": self.server.live.snapshot(), "recorder": self.server.recorder_stats(),
                    "user": self._user(), "password": self.server.config.password_hash is not None,
                    "frames": self.server.frames is not None, "reviews": sorted(REVIEWS)})

    def events(self, params) -> None:
        self._require_reader()
        client = self.server.hub.subscribe()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self.wfile.write(b"retry: 1000\n\n")
            self.wfile.flush()
            while True:
                try:
                    item = client.get(timeout=SSE_KEEPALIVE_S)
                except queue.Empty:
                    item = b": keepalive\n\n"
                if item is None:
                    return
                self.wfile.write(item)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        finally:
            self.server.hub.unsubscribe(client)

    def _reader(self):
        try:
            return open_reader(self.server.records)
        except HlgfaError:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "nothing recorded yet") from None

    def records(self, params) -> None:
        self._require_reader()
        one = lambda key: params[key][0] if params.get(key) and params[key][0] else None  # noqa: E731
        frame = one("frame")
        filters = dict(since_ns=parse_when(one("since")) if one("since") else None,
                       until_ns=parse_when(one("until")) if one("until") else None,
                       cameras=params.get("camera"), verdicts=params.get("verdict"), reason=one("reason"),
                       frame_id=int(frame) if frame and frame.isdigit() else None,
                       reviewed=True if one("reviewed") else None,
                       limit=min(int(one("limit") or 100), GALLERY_LIMIT), newest_first=True)
        conn = self._reader()
        try:
            self._json(query(conn, **filters))
        finally:
            conn.close()

    def _row(self, row_id: str) -> dict:
        if not row_id.isdigit():
            raise HttpError(HTTPStatus.NOT_FOUND, f"record {row_id!r}: expected a number")
        conn = self._reader()
        try:
            row = get(conn, int(row_id))
        finally:
            conn.close()
        if row is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"record {row_id}: not recorded, or pruned by retention")
        return row

    def record(self, params, row_id: str) -> None:
        self._require_reader()
        row = self._row(row_id)
        row["has_frame"] = self.server.frames is not None and self.server.frames.find(row["frame_id"]) is not None
        self._json(row)

    def record_map(self, params, row_id: str) -> None:
        self._require_reader()
        row = self._row(row_id)
        if not row["image"]:
            raise HttpError(HTTPStatus.NOT_FOUND, f"record {row_id}: no map kept (a pass outside the sample)")
        self._send(HTTPStatus.OK, images.map_png(images.read_map(self.server.records / row["image"])), "image/png",
                   {"Cache-Control": "max-age=86400"})

    def record_frame(self, params, row_id: str) -> None:
        self._require_reader()
        row = self._row(row_id)
        path = self.server.frames.find(row["frame_id"]) if self.server.frames is not None else None
        if path is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "the frame is not on the wire; start the view with --frames "
                                                  "DIR (the folder the daemon reads) to see it")
        map_u8 = images.read_map(self.server.records / row["image"]) if row["image"] else None
        self._send(HTTPStatus.OK, images.frame_png(path, map_u8, overlay=params.get("overlay") == ["1"]), "image/png")

    def live_image(self, params, camera: str, what: str) -> None:
        self._require_reader()
        message = self.server.live.latest_map(camera)
        if message is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"camera {camera!r}: no map received yet")
        from edge.records.store import map_image

        map_u8 = map_image(message)[0]
        if what == "map.png":
            body = images.map_png(map_u8)
        elif what == "frame.png":
            path = self.server.frames.find(message.frame_id) if self.server.frames is not None else None
            if path is None:
                raise HttpError(HTTPStatus.NOT_FOUND, "the frame is not on the wire; start the view with --frames DIR")
            body = images.frame_png(path, map_u8, overlay=params.get("overlay") == ["1"])
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such image: {what}")
        self._send(HTTPStatus.OK, body, "image/png", {"X-Frame-Id": str(message.frame_id)})

    def trends(self, params) -> None:
        self._require_reader()
        hours = float(params.get("hours", ["24"])[0])
        conn = self._reader()
        try:
            rows = counts_per_hour(conn, time.time_ns() - int(hours * 3600e9), params.get("camera"))
            counters = saved_counters(conn)
        finally:
            conn.close()
        rejected = sum(r["reject"] + r["fault"] for r in rows)
        false = sum(r["false_reject"] for r in rows)
        confirmed = sum(r["defect_confirmed"] for r in rows)
        self._json({"hours": rows, "rejected": rejected, "false_rejects": false, "confirmed": confirmed,
                    "false_reject_share": false / (false + confirmed) if false + confirmed else None,
                    "saved_counters": counters})

    # --------------------------------------------------------------------------------- writing

    def login(self, params) -> None:
        data = self._body()
        name = str(data.get("name", "")).strip()
        if not 1 <= len(name) <= 64:
            raise HttpError(HTTPStatus.BAD_REQUEST, "a name of 1-64 characters is required")
        stored = self.server.config.password_hash
        if stored is not None and not verify_password(str(data.get("password", "")), stored):
            time.sleep(0.5)
            raise HttpError(HTTPStatus.UNAUTHORIZED, "wrong password")
        token = self.server.sessions.create(name)
        secure = "; Secure" if self.server.config.tls_cert is not None else ""
        self._json({"user": name}, headers={
            "Set-Cookie": f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}"})

    def logout(self, params) -> None:
        self._body()
        self.server.sessions.end(self._token())
        self._json({"user": None}, headers={"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/"})

    def review(self, params, row_id: str) -> None:
        data = self._body()
        user = self._user()
        if user is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "sign in with your name to review")
        self._row(row_id)
        row = set_review(self.server.records, int(row_id), str(data.get("review", "")), user,
                         label=data.get("label") or None)
        self.server.hub.publish("review", {"id": row["id"], "review": row["review"], "reviewer": user})
        self._json(row)


GET_ROUTES = {
    "/": Handler.page,
    "/static/<name>": Handler.page,
    "/api/state": Handler.state,
    "/events": Handler.events,
    "/api/records": Handler.records,
    "/api/records/<id>": Handler.record,
    "/api/records/<id>/map.png": Handler.record_map,
    "/api/records/<id>/frame.png": Handler.record_frame,
    "/api/live/<camera>/<what>": Handler.live_image,
    "/api/trends": Handler.trends,
}
POST_ROUTES = {
    "/api/login": Handler.login,
    "/api/logout": Handler.logout,
    "/api/records/<id>/review": Handler.review,
}


def start_ticker(server: ViewServer, stop: threading.Event, period_s: float = 1.0) -> threading.Thread:
    """Push health (heartbeat age, frames/s) and the recorder's counters once a second, so a silent
    camera turns red on the page without any message arriving."""

    def tick():
        while not stop.wait(period_s):
            server.hub.publish("tick", {"health": server.live.health(), "recorder": server.recorder_stats()})

    thread = threading.Thread(target=tick, name="view-ticker", daemon=True)
    thread.start()
    return thread
