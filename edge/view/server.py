"""The view's HTTP server: the page, a JSON API over the records, and server-sent events.

The standard library's threading HTTP server is enough for a handful of screens at the line, and
keeps the view free of a web framework. Each request that reads the records opens its own read-only
SQLite connection (WAL: readers never block the recorder). Connections are bounded (`MAX_CONNECTIONS`,
an idle one closes after `REQUEST_TIMEOUT_S`), and so are the live pages (`max_pages`).

Access (docs/VIEW.md): every request must name this view by a configured name in its Host header, and
a browser's Origin must be this view, or it gets 403 (a page of another site that resolves its own
name to this box reads and writes nothing). Reads are open on a loopback bind without a password;
with `password_hash` everything but the page and the login needs a session. An operator may mark
parts; an engineer reviews, exports and resets the shift counters (edge/view/auth.py). Writes must be
JSON (`Content-Type: application/json`), which a cross-site form cannot send; the session cookie is
SameSite=Strict, and Secure under HTTPS; wrong passwords back off.

Every parameter is checked: a value that is not what the parameter takes is a 400 naming it.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import socket
import sqlite3
import ssl
import threading
import time
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edge.core.errors import HlgfaError
from edge.core.http import ConnectionCap
from edge.records.export import parse_when, write_rows
from edge.records.frames import Frames
from edge.records.store import (MAX_INT64, REVIEWS, RecordsRefused, get, history, map_image, open_reader, query,
                                drift_changes, record_reset, reviews_hourly, saved_counters, set_mark,
                                set_review)
from edge.transport.wire import VERDICTS
from edge.view import images
from edge.view.auth import ENGINEER, LoginThrottle, Sessions, role_for
from edge.view.config import ViewConfig
from edge.view.live import Hub, LiveState

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
COOKIE = "hlgfa_view"
SSE_KEEPALIVE_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 64
GALLERY_LIMIT = 500
EXPORT_LIMIT = 100_000
MAX_HOURS = 24 * 366
_DIGITS = re.compile(r"[0-9]{1,19}")


class ViewServer(ConnectionCap, ThreadingHTTPServer):
    max_connections = MAX_CONNECTIONS
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: ViewConfig, live: LiveState, hub: Hub, recorder_stats, frames: Frames | None):
        self.config = config
        self.live = live
        self.hub = hub
        self.recorder_stats = recorder_stats
        self.frames = frames
        self.sessions = Sessions()
        self.throttle = LoginThrottle()
        self.records = Path(config.records)
        self.names = config.host_names()
        super().__init__((config.host, config.port), Handler)
        if config.tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(config.tls_cert, config.tls_key)
            # the handshake runs in the request's own thread (Handler.setup), never in the accept loop,
            # where one silent client would hold up every other
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def refuse(self, request) -> None:
        try:
            request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass

    def handle_error(self, request, client_address):
        log.debug("request from %s failed", client_address, exc_info=True)

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls_cert is not None else "http"

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{self.scheme}://{host if ':' not in host else f'[{host}]'}:{port}/"


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


def _one(params: dict, name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}: given {len(values)} times, expected once")
    return values[0]


def _whole(params: dict, name: str, what: str, low: int, high: int = MAX_INT64, default: int | None = None) -> int | None:
    """A whole-number parameter in [low, high]; absent → `default`; anything else (empty too) a 400 naming it."""
    text = _one(params, name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}={text!r}: not {what} (expected a whole number from {low} "
                                                f"to {high})")
    return int(text)


def _text(params: dict, name: str, longest: int = 128) -> str | None:
    text = _one(params, name)
    if text is None or not text.strip():
        return None
    if len(text) > longest:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}: longer than {longest} characters")
    return text.strip()


def _filters(params: dict) -> dict:
    """The record filters every list and export takes, checked."""
    for verdict in params.get("verdict", []):
        if verdict not in VERDICTS:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"verdict={verdict!r}: expected one of {', '.join(VERDICTS)}")
    session = _text(params, "session")
    if session is not None and not re.fullmatch(r"[0-9a-f]{16}", session):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"session={session!r}: expected the 16 hex digits of a publisher "
                                                "session")
    since, until = _text(params, "since"), _text(params, "until")
    return dict(since_ns=parse_when(since) if since else None, until_ns=parse_when(until) if until else None,
                cameras=[c for c in params.get("camera", []) if c] or None, verdicts=params.get("verdict") or None,
                reason=_text(params, "reason"), session=session,
                frame_id=_whole(params, "frame", "a frame id", 0),
                part_id=_text(params, "part"), reviewed=True if _one(params, "reviewed") == "1" else None,
                marked=True if _one(params, "marked") == "1" else None)


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(HANDSHAKE_TIMEOUT_S)
            self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):  # the access log goes to DEBUG, not stderr
        log.debug("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------------------------- plumbing

    def _token(self) -> str | None:
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # a malformed Cookie header is no session, not a failed request
            return None
        return cookie[COOKIE].value if COOKIE in cookie else None

    def _user(self) -> tuple[str, str] | None:
        return self.server.sessions.user(self._token())

    def _require_reader(self) -> None:
        if self.server.config.password_hash is not None and self._user() is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "sign in first")

    def _require(self, role: str | None, doing: str) -> tuple[str, str]:
        user = self._user()
        if user is None:
            raise HttpError(HTTPStatus.UNAUTHORIZED, f"sign in to {doing}")
        if role is not None and user[1] != role:
            raise HttpError(HTTPStatus.FORBIDDEN, f"{doing}: an {role}'s task; {user[0]} is signed in as {user[1]}")
        return user

    def _check_origin(self) -> None:
        """Host must be a name of this view; a browser's Origin (and Sec-Fetch-Site) must be this view."""
        host = self.headers.get("Host", "")
        name = urlsplit(f"//{host}").hostname if host else None
        if name is None or name.lower() not in self.server.names:
            raise HttpError(HTTPStatus.FORBIDDEN, f"Host {host!r} is not a name of this view; add it to server_names "
                                                  "in the view's config if operators use it")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"{self.server.scheme}://{host}":
            raise HttpError(HTTPStatus.FORBIDDEN, f"Origin {origin!r}: requests from other sites are refused")
        if self.headers.get("Sec-Fetch-Site") == "cross-site":
            raise HttpError(HTTPStatus.FORBIDDEN, "requests from other sites are refused")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
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
        text = self.headers.get("Content-Length", "0").strip() or "0"
        if not _DIGITS.fullmatch(text):
            self.close_connection = True  # the body's end is unknown: nothing after it can be read
            raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length {text!r}: expected the body's size in bytes")
        if int(text) > 65536:
            self.close_connection = True
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body over 64 KiB")
        try:
            data = json.loads(self.rfile.read(int(text)) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HttpError(HTTPStatus.BAD_REQUEST, "request body is not JSON") from None
        if not isinstance(data, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "expected a JSON object")
        return data

    def _dispatch(self, routes: dict) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            self._check_origin()
            params = parse_qs(url.query, keep_blank_values=True, max_num_fields=64)
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
            self._json({"error": str(error)}, error.status, error.headers)
        except RecordsRefused as error:
            self._json({"error": str(error)}, HTTPStatus.INSUFFICIENT_STORAGE)
        except HlgfaError as error:
            self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
        except ValueError as error:  # parse_qs: too many fields
            self._json({"error": f"bad request {url.path}: {error}"}, HTTPStatus.BAD_REQUEST)
        except sqlite3.DatabaseError as error:
            self._json({"error": f"the records cannot be read now ({error})"}, HTTPStatus.SERVICE_UNAVAILABLE)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception:  # a bug: said to the page and logged, never an empty reply
            log.exception("view: %s %s failed", self.command, url.path)
            self._json({"error": f"{url.path}: internal error (the view's log has the details)"},
                       HTTPStatus.INTERNAL_SERVER_ERROR)

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
        user = self._user()
        recorder = self.server.recorder_stats()
        frames = sorted(self.server.frames.folders) if self.server.frames is not None else []
        self._json({"cameras": self.server.live.snapshot(), "recorder": recorder,
                    "box": self.server.live.box(recorder), "shift": self.server.live.shift(),
                    "user": None if user is None else user[0], "role": None if user is None else user[1],
                    "password": self.server.config.password_hash is not None,
                    "engineer_password": self.server.config.engineer_password_hash is not None,
                    "frames": frames, "reviews": sorted(REVIEWS), "scale": images.scale(),
                    "links": dict(self.server.live.links)})

    def events(self, params) -> None:
        self._require_reader()
        client = self.server.hub.subscribe()
        if client is None:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE,
                            f"{self.server.hub.max_clients} live pages are open already (max_pages); close one",
                            {"Retry-After": "10"})
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
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
        except (ssl.SSLError, OSError):
            pass
        finally:
            self.server.hub.unsubscribe(client)

    def _reader(self):
        try:
            return open_reader(self.server.records)
        except HlgfaError as error:
            raise HttpError(HTTPStatus.SERVICE_UNAVAILABLE, str(error)) from None

    def records(self, params) -> None:
        self._require_reader()
        filters = _filters(params)
        limit = _whole(params, "limit", "a limit", 1, GALLERY_LIMIT, default=100)
        before = _whole(params, "before", "a record id", 1)
        conn = self._reader()
        try:
            self._json(query(conn, **filters, before_id=before, limit=limit, newest_first=True))
        finally:
            conn.close()

    def export_csv(self, params) -> None:
        self._require(ENGINEER, "export")
        filters = _filters(params)
        conn = self._reader()
        try:
            rows = query(conn, **filters, limit=EXPORT_LIMIT + 1)
        finally:
            conn.close()
        if len(rows) > EXPORT_LIMIT:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"more than {EXPORT_LIMIT} records match: narrow the filter, or "
                                                    "use `hlgfa records export` on the box")
        import io

        out = io.StringIO()
        write_rows(rows, out, "csv")
        self._send(HTTPStatus.OK, out.getvalue().encode(), "text/csv; charset=utf-8",
                   {"Content-Disposition": 'attachment; filename="records.csv"'})

    def _row(self, row_id: str) -> dict:
        if not row_id.isascii() or not row_id.isdigit():
            raise HttpError(HTTPStatus.NOT_FOUND, f"record {row_id!r}: no such record (expected a number)")
        if not _DIGITS.fullmatch(row_id) or int(row_id) > MAX_INT64:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"record {row_id}: not a record id (expected a whole number up "
                                                    f"to {MAX_INT64})")
        conn = self._reader()
        try:
            row = get(conn, int(row_id))
            if row is not None:
                row["history"] = history(conn, int(row_id))
        finally:
            conn.close()
        if row is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"record {row_id}: not recorded, or pruned by retention")
        return row

    def _frame_of(self, row: dict) -> tuple[Path | None, str]:
        if self.server.frames is None:
            return None, "the frame is not on the wire; start the view with --frames CAMERA=DIR (the folder that " \
                         "camera's daemon reads) to see it"
        return self.server.frames.find(row["camera"], row["frame_id"], row["frame_sha256"])

    def record(self, params, row_id: str) -> None:
        self._require_reader()
        row = self._row(row_id)
        path, why = self._frame_of(row)
        row["has_frame"], row["no_frame_because"] = path is not None, why
        self._json(row)

    def _relative(self, row: dict):
        if not row["image"]:
            return None, None
        map_u8 = images.read_map(self.server.records / row["image"])
        return images.relative(map_u8, row["map_lo"], row["map_hi"], row["threshold"]), map_u8

    def record_map(self, params, row_id: str) -> None:
        self._require_reader()
        row = self._row(row_id)
        if not row["image"]:
            raise HttpError(HTTPStatus.NOT_FOUND, f"record {row_id}: no map kept (a pass outside the sample, or a "
                                                  "fault before scoring)")
        rel, map_u8 = self._relative(row)
        self._send(HTTPStatus.OK, images.map_png(rel, map_u8), "image/png", {"Cache-Control": "max-age=86400"})

    def record_frame(self, params, row_id: str) -> None:
        self._require_reader()
        row = self._row(row_id)
        path, why = self._frame_of(row)
        if path is None:
            raise HttpError(HTTPStatus.NOT_FOUND, why)
        rel, _ = self._relative(row)
        self._send(HTTPStatus.OK, images.frame_png(path, rel, with_overlay=_one(params, "overlay") != "0"),
                   "image/png")

    def record_thumb(self, params, row_id: str) -> None:
        self._require_reader()
        row = self._row(row_id)
        path, why = self._frame_of(row)
        if path is None and not row["image"]:
            raise HttpError(HTTPStatus.NOT_FOUND, f"record {row_id}: no map and no frame ({why})")
        rel, map_u8 = self._relative(row)
        self._send(HTTPStatus.OK, images.thumb_png(path, rel, map_u8), "image/png", {"Cache-Control": "max-age=3600"})

    def live_image(self, params, camera: str, what: str) -> None:
        """The camera's latest part: its map, or its frame with the region outlined (a fault: the frame)."""
        self._require_reader()
        last, message = self.server.live.latest(camera)
        if last is None:
            raise HttpError(HTTPStatus.NOT_FOUND, f"camera {camera!r}: no decision received yet")
        rel = map_u8 = None
        if message is not None:
            map_u8, lo, hi = map_image(message)
            rel = images.relative(map_u8, lo, hi, last["threshold"])
        if what == "map.png":
            if map_u8 is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"camera {camera!r}: its latest decision has no map (yet)")
            body = images.map_png(rel, map_u8)
        elif what == "frame.png":
            path = self.server.frames.file(camera, last["frame_id"]) if self.server.frames is not None else None
            if path is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no frames folder for camera {camera!r}: start the view with "
                                                      f"--frames {camera}=DIR")
            body = images.frame_png(path, rel, with_overlay=_one(params, "overlay") != "0")
        else:
            raise HttpError(HTTPStatus.NOT_FOUND, f"no such image: {what}")
        self._send(HTTPStatus.OK, body, "image/png", {"X-Frame-Id": str(last["frame_id"])})

    def trends(self, params) -> None:
        self._require_reader()
        text = _one(params, "hours") or "24"
        try:
            hours = float(text)
        except ValueError:
            hours = math.nan
        if not (math.isfinite(hours) and 0 < hours <= MAX_HOURS):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"hours={text!r}: expected a number of hours > 0 and ≤ {MAX_HOURS}")
        cameras = [c for c in params.get("camera", []) if c] or None
        since_ns = time.time_ns() - int(hours * 3600e9)
        rows = self.server.live.hours.since(since_ns, cameras)  # counted as they came: no scan of the record
        conn = self._reader()
        try:
            reviews = reviews_hourly(conn, since_ns, cameras)
            drift = drift_changes(conn, since_ns, cameras)
            counters = saved_counters(conn)
        finally:
            conn.close()
        for row in rows:
            row.update(reviews.get(row["hour_ns"], dict.fromkeys(REVIEWS, 0)))
        false = sum(r["false_reject"] for r in rows)
        confirmed = sum(r["defect_confirmed"] for r in rows)
        self._json({"hours": rows, "drift": drift, "rejected": sum(r["reject"] + r["fault"] for r in rows),
                    "false_rejects": false, "confirmed": confirmed,
                    "false_reject_share": false / (false + confirmed) if false + confirmed else None,
                    "saved_counters": counters})

    # --------------------------------------------------------------------------------- writing

    def login(self, params) -> None:
        address = self.client_address[0]
        wait = self.server.throttle.wait_s(address)
        if wait > 0:
            raise HttpError(HTTPStatus.TOO_MANY_REQUESTS, f"too many wrong passwords: try again in {math.ceil(wait)} s",
                            {"Retry-After": str(math.ceil(wait))})
        data = self._body()
        name = str(data.get("name", "")).strip()
        if not 1 <= len(name) <= 64:
            raise HttpError(HTTPStatus.BAD_REQUEST, "a name of 1-64 characters is required")
        role = role_for(str(data.get("password", "") or ""), self.server.config.password_hash,
                        self.server.config.engineer_password_hash)
        if role is None:
            self.server.throttle.failed(address)
            raise HttpError(HTTPStatus.UNAUTHORIZED, "wrong password")
        self.server.throttle.succeeded(address)
        token = self.server.sessions.create(name, role)
        secure = "; Secure" if self.server.config.tls_cert is not None else ""
        self._json({"user": name, "role": role}, headers={
            "Set-Cookie": f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}"})

    def logout(self, params) -> None:
        self._body()
        self.server.sessions.end(self._token())
        self._json({"user": None, "role": None}, headers={"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/"})

    def review(self, params, row_id: str) -> None:
        data = self._body()
        user, role = self._require(ENGINEER, "review")
        label = data.get("label")
        self._row(row_id)
        set_review(self.server.records, int(row_id), str(data.get("review", "")), user, role,
                   label=None if label is None else str(label))
        row = self._row(row_id)
        self.server.hub.publish("review", {"id": row["id"], "review": row["review"], "reviewer": user})
        self._json(row)

    def mark(self, params, row_id: str) -> None:
        data = self._body()
        user, role = self._require(None, "mark a part")
        self._row(row_id)
        note = data.get("note")
        set_mark(self.server.records, int(row_id), user, role, None if note is None else str(note))
        row = self._row(row_id)
        self.server.hub.publish("mark", {"id": row["id"], "by": user})
        self._json(row)

    def reset_counters(self, params) -> None:
        self._body()
        user, role = self._require(ENGINEER, "reset the shift counters")
        wall_ns = record_reset(self.server.records, user, role)
        self.server.live.reset_shift(wall_ns, f"{user} ({role})")
        self._json(self.server.live.shift())


GET_ROUTES = {
    "/": Handler.page,
    "/static/<name>": Handler.page,
    "/api/state": Handler.state,
    "/events": Handler.events,
    "/api/records": Handler.records,
    "/api/export.csv": Handler.export_csv,
    "/api/records/<id>": Handler.record,
    "/api/records/<id>/map.png": Handler.record_map,
    "/api/records/<id>/frame.png": Handler.record_frame,
    "/api/records/<id>/thumb.png": Handler.record_thumb,
    "/api/live/<camera>/<what>": Handler.live_image,
    "/api/trends": Handler.trends,
}
POST_ROUTES = {
    "/api/login": Handler.login,
    "/api/logout": Handler.logout,
    "/api/records/<id>/review": Handler.review,
    "/api/records/<id>/mark": Handler.mark,
    "/api/counters/reset": Handler.reset_counters,
}


def start_ticker(server: ViewServer, stop: threading.Event, period_s: float = 1.0) -> threading.Thread:
    """Push health (heartbeat age, frames/s), the box's state, the shift counters and the recorder's
    counters once a second, so a silent camera turns red on the page without any message arriving."""

    def tick():
        while not stop.wait(period_s):
            recorder = server.recorder_stats()
            server.hub.publish("tick", {"health": server.live.health(), "recorder": recorder,
                                        "box": server.live.box(recorder), "shift": server.live.shift()})

    thread = threading.Thread(target=tick, name="view-ticker", daemon=True)
    thread.start()
    return thread
