"""The records folder: one SQLite database (WAL) of every decision, and heat-map images beside it.

    DIR/records.sqlite        decisions, events (gaps, restarts, faults), counters
    DIR/images/<camera>/<YYYYMMDD>/<session>_<frame_id>.png

One process writes (`RecordStore`, the recorder's thread); any number read at the same time through
`open_reader` (WAL lets readers and the writer proceed together). A review is a small write from
another thread or process (`set_review`), which waits for the writer's lock instead of failing.

What is kept is bounded: rows and images older than `Retention.max_age_s`, and the oldest rows while the
folder holds more than `Retention.max_bytes`, are deleted by `maintain()`, which the recorder calls
continuously. A write the disk refuses (SQLite's "database or disk is full", ENOSPC on an image, or
free space under `Retention.min_free_bytes`) loses that record or image, counts it, raises the
`disk_alarm`, and prunes harder: recording never stops and never loses silently.

Frames are not on the wire (docs/PROTOCOL.md: only the heat map is published), so the images kept are
the maps; the view can show the frame itself when it is given the folder the daemon replays.
"""

from __future__ import annotations

import collections
import errno
import logging
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.transport import wire
from edge.core.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

DB_NAME = "records.sqlite"
IMAGES_DIR = "images"
SCHEMA_VERSION = 1
SQLITE_FULL = 13

# Review labels: what a person says a part really was. A rejected or faulted part is either good
# (a false reject) or a confirmed defect; a passed part pulled off the line is a missed defect.
FALSE_REJECT, DEFECT_CONFIRMED, MISSED_DEFECT = "false_reject", "defect_confirmed", "missed_defect"
REVIEWS = {FALSE_REJECT: ("reject", "fault"), DEFECT_CONFIRMED: ("reject", "fault"), MISSED_DEFECT: ("ok",)}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    wall_ns INTEGER NOT NULL,
    camera TEXT NOT NULL,
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    frame_id INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    score REAL,
    threshold REAL,
    region_px INTEGER NOT NULL,
    reason TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    thresholds_version TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    image TEXT,
    image_bytes INTEGER NOT NULL DEFAULT 0,
    map_lo REAL,
    map_hi REAL,
    review TEXT,
    review_label TEXT,
    reviewer TEXT,
    reviewed_ns INTEGER,
    UNIQUE (camera, session, seq)
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (wall_ns);
CREATE INDEX IF NOT EXISTS decisions_camera_time ON decisions (camera, wall_ns);
CREATE INDEX IF NOT EXISTS decisions_verdict_time ON decisions (verdict, wall_ns);
CREATE INDEX IF NOT EXISTS decisions_frame ON decisions (camera, frame_id);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    wall_ns INTEGER NOT NULL,
    camera TEXT NOT NULL,
    session TEXT NOT NULL,
    kind TEXT NOT NULL,
    lost INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (wall_ns);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

COLUMNS = ("id", "wall_ns", "camera", "session", "seq", "frame_id", "verdict", "score", "threshold", "region_px",
           "reason", "latency_ms", "thresholds_version", "model_hash", "image", "image_bytes", "map_lo", "map_hi",
           "review", "review_label", "reviewer", "reviewed_ns")


@dataclass(frozen=True)
class Retention:
    """How much the records folder keeps. `max_age_s`/`max_bytes` None: no limit of that kind.
    `pass_map_every`: keep the map of every Nth passed part of a camera (0: none); rejects' and
    faults' maps are always kept. Below `min_free_bytes` free on the folder's file system no image is
    written and the oldest records are pruned."""

    max_age_s: float | None = 30 * 86400.0
    max_bytes: int | None = 10 * 2**30
    min_free_bytes: int = 256 * 2**20
    pass_map_every: int = 100

    def __post_init__(self):
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ConfigError(f"retention max_age_s {self.max_age_s!r}: expected seconds > 0 or unset")
        if self.max_bytes is not None and self.max_bytes < 2**20:
            raise ConfigError(f"retention max_bytes {self.max_bytes!r}: expected at least 1 MiB or unset")
        if self.min_free_bytes < 0 or self.pass_map_every < 0:
            raise ConfigError("retention min_free_bytes and pass_map_every: expected ≥ 0")


def db_path(folder: Path) -> Path:
    return Path(folder) / DB_NAME


def _is_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) == SQLITE_FULL or "full" in str(error).lower()


class RecordStore:
    """The single writer of a records folder. Not thread-safe: one thread calls every method."""

    def __init__(self, folder: str | Path, retention: Retention = Retention(), commit_interval_s: float = 0.25,
                 maintain_interval_s: float = 2.0, max_page_count: int | None = None):
        self.folder = Path(folder)
        self.retention = retention
        self.commit_interval_s = commit_interval_s
        self.maintain_interval_s = maintain_interval_s
        try:
            (self.folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(db_path(self.folder), isolation_level=None, check_same_thread=False)
            # auto_vacuum must be chosen before the first table exists; incremental lets maintain()
            # hand pages freed by retention back to the file system.
            self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL: a power cut may lose the last commits, never corrupt the file.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA busy_timeout = 5000")
            if max_page_count is not None:  # a hard size cap; the tests use it to fill the "disk"
                self.conn.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ConfigError(f"records {db_path(self.folder)}: schema {version}, this program writes "
                                  f"schema {SCHEMA_VERSION}; use a new records folder")
            self.conn.executescript(_SCHEMA)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as error:
            raise InputDataError(f"records {db_path(self.folder)}: not a usable SQLite database ({error})") from None
        except OSError as error:
            raise ConfigError(f"records folder {self.folder}: {error.strerror or error}") from None
        self.page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        saved = dict(self.conn.execute("SELECT name, value FROM counters"))
        self.counters = collections.Counter({k: saved.get(k, 0) for k in (
            "records", "images", "dropped_records", "dropped_images", "pruned_records", "gaps_lost", "restarts")})
        self.image_bytes = self.conn.execute("SELECT COALESCE(SUM(image_bytes), 0) FROM decisions").fetchone()[0]
        self.disk_alarm: str | None = None
        self._used_bytes = self.used_bytes()
        self._pending_rows = 0
        self._last_commit = time.monotonic()
        self._last_maintain = 0.0
        self._low_space = False
        # Decisions whose map may still come: (camera, session, frame_id) → (row id, keep its map).
        self._awaiting_map: collections.OrderedDict = collections.OrderedDict()
        self._passes_seen: collections.Counter = collections.Counter()

    # ------------------------------------------------------------------------------------ writing

    def _begin(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")

    def _full(self, what: str, error: BaseException) -> None:
        """A write the disk refused: count what was lost (with the rows of the open transaction, which
        SQLite may have rolled back), raise the alarm, and make room for the next ones."""
        lost = 1
        if self.conn.in_transaction:
            self.conn.rollback()
            lost += self._pending_rows
            self.counters["records"] -= self._pending_rows
        self._pending_rows = 0
        self._awaiting_map.clear()  # their rows may be among those rolled back
        self.counters["dropped_records"] += lost
        self._alarm(f"{what}: {error}; {lost} record(s) dropped")
        self._prune_fraction(0.05)

    def _alarm(self, text: str) -> None:
        if self.disk_alarm != text:
            log.error("records %s: %s", self.folder, text)
        self.disk_alarm = text

    def record_decision(self, decision: wire.Decision) -> int | None:
        """Store one decision; its row id, or None when it was a duplicate or the disk refused it."""
        row = (decision.wall_ns, decision.camera, decision.session, decision.seq, decision.frame_id,
               decision.verdict, decision.score, decision.threshold, decision.region_px, decision.reason,
               decision.latency_ms, decision.thresholds_version, decision.model_hash)
        try:
            self._begin()
            cursor = self.conn.execute(
                "INSERT OR IGNORE INTO decisions (wall_ns, camera, session, seq, frame_id, verdict, score, threshold, "
                "region_px, reason, latency_ms, thresholds_version, model_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        except sqlite3.OperationalError as error:
            if not _is_full(error):
                raise
            self._full("the database is full", error)
            return None
        if cursor.rowcount == 0:
            return None
        self._pending_rows += 1
        self.counters["records"] += 1
        row_id = cursor.lastrowid
        keep = decision.verdict != "ok"
        if not keep and self.retention.pass_map_every:
            self._passes_seen[decision.camera] += 1
            keep = self._passes_seen[decision.camera] % self.retention.pass_map_every == 1 % self.retention.pass_map_every
        self._awaiting_map[(decision.camera, decision.session, decision.frame_id)] = (row_id, keep)
        while len(self._awaiting_map) > 4096:
            self._awaiting_map.popitem(last=False)
        self.maybe_commit()
        return row_id

    def record_map(self, message: wire.MapMessage) -> Path | None:
        """Keep the map of a decision that asked for it (reject, fault, or a sampled pass)."""
        entry = self._awaiting_map.pop((message.camera, message.session, message.frame_id), None)
        if entry is None or not entry[1]:
            return None
        row_id = entry[0]
        if self._low_space:
            self.counters["dropped_images"] += 1
            return None
        image, lo, hi = map_image(message)
        stamp = time.strftime("%Y%m%d", time.gmtime(message.wall_ns / 1e9))
        relative = Path(IMAGES_DIR) / message.camera / stamp / f"{message.session}_{message.frame_id:010d}.png"
        path = self.folder / relative
        try:
            import cv2

            ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            if not ok:
                raise InputDataError(f"map of {message.camera} frame {message.frame_id}: PNG encoding failed")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded.tobytes())
        except OSError as error:
            path.unlink(missing_ok=True)
            self.counters["dropped_images"] += 1
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                self._alarm(f"no space for images ({error.strerror}); images dropped")
                self._prune_fraction(0.05)
                return None
            raise
        size = len(encoded)
        try:
            self._begin()
            self.conn.execute("UPDATE decisions SET image = ?, image_bytes = ?, map_lo = ?, map_hi = ? WHERE id = ?",
                              (str(relative), size, lo, hi, row_id))
        except sqlite3.OperationalError as error:
            path.unlink(missing_ok=True)
            if not _is_full(error):
                raise
            self._full("the database is full", error)
            return None
        self.image_bytes += size
        self.counters["images"] += 1
        self.maybe_commit()
        return path

    def record_event(self, wall_ns: int, camera: str, session: str, kind: str, detail: str, lost: int = 0) -> None:
        """A gap in the sequence numbers, a publisher restart, or a message from the fault topic."""
        if kind == "gap":
            self.counters["gaps_lost"] += lost
        elif kind == "restart":
            self.counters["restarts"] += 1
        try:
            self._begin()
            self.conn.execute("INSERT INTO events (wall_ns, camera, session, kind, lost, detail) VALUES (?,?,?,?,?,?)",
                              (wall_ns, camera, session, kind, lost, detail))
        except sqlite3.OperationalError as error:
            if not _is_full(error):
                raise
            self._full("the database is full", error)

    def maybe_commit(self, now: float | None = None) -> None:
        """Commit when the open transaction is older than `commit_interval_s`: one fsync-free WAL commit
        per interval instead of per row."""
        now = time.monotonic() if now is None else now
        if self.conn.in_transaction and now - self._last_commit >= self.commit_interval_s:
            self.commit()

    def commit(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.commit()
            except sqlite3.OperationalError as error:
                if not _is_full(error):
                    raise
                self._full("the database is full at commit", error)
                return
        self._pending_rows = 0
        self._last_commit = time.monotonic()

    # ---------------------------------------------------------------------------------- retention

    def used_bytes(self) -> int:
        pages, free = (self.conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count"))
        return self.image_bytes + (pages - free) * self.page_size

    def maintain(self, now_ns: int | None = None, force: bool = False) -> None:
        """Enforce retention (age, then size, then free space) at most every `maintain_interval_s`."""
        if not force and time.monotonic() - self._last_maintain < self.maintain_interval_s:
            return
        self._last_maintain = time.monotonic()
        try:
            self._enforce_retention(time.time_ns() if now_ns is None else now_ns)
        except sqlite3.OperationalError as error:
            if not _is_full(error):
                raise
            if self.conn.in_transaction:
                self.conn.rollback()
            self._alarm(f"retention could not run: {error}; it is tried again in {self.maintain_interval_s:g} s")

    def _enforce_retention(self, now_ns: int) -> None:
        self.commit()
        if self.retention.max_age_s is not None:
            cutoff = now_ns - int(self.retention.max_age_s * 1e9)
            while self._prune("wall_ns < ?", (cutoff,)):
                pass
            self.conn.execute("DELETE FROM events WHERE wall_ns < ?", (cutoff,))
        if self.retention.max_bytes is not None:
            while self.used_bytes() > self.retention.max_bytes and self._prune_fraction(0.02):
                pass
        self._check_free_space()
        self.conn.execute("PRAGMA incremental_vacuum")
        self._save_counters()
        self._used_bytes = self.used_bytes()

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self.folder).free
        low = free < self.retention.min_free_bytes
        if low:
            self._alarm(f"{free / 2**20:.0f} MiB free, under min_free_bytes {self.retention.min_free_bytes / 2**20:.0f} "
                        "MiB: images are not written and the oldest records are pruned")
            self._prune_fraction(0.02)
        elif self._low_space:
            log.warning("records %s: free space back above min_free_bytes; writing images again", self.folder)
            self.disk_alarm = None
        self._low_space = low

    def _prune_fraction(self, fraction: float) -> int:
        """Delete the oldest `fraction` of the rows (at least 50)."""
        count = self.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        if not count:
            return 0
        boundary = self.conn.execute("SELECT id FROM decisions ORDER BY id LIMIT 1 OFFSET ?",
                                     (min(count - 1, max(50, int(count * fraction)) - 1),)).fetchone()[0]
        return self._prune("id <= ?", (boundary,))

    def _prune(self, where: str, args: tuple, batch: int = 2000) -> int:
        """Delete up to `batch` of the oldest rows matching `where`, with their images; how many."""
        rows = self.conn.execute(f"SELECT id, image, image_bytes FROM decisions WHERE {where} ORDER BY id LIMIT ?",
                                 (*args, batch)).fetchall()
        if not rows:
            return 0
        if self.conn.in_transaction:
            self.conn.commit()
        self.conn.execute("DELETE FROM decisions WHERE id <= ? AND " + where, (rows[-1][0], *args))
        for _, image, size in rows:
            if image:
                (self.folder / image).unlink(missing_ok=True)
                self.image_bytes -= size
        self.counters["pruned_records"] += len(rows)
        return len(rows)

    def _save_counters(self) -> None:
        try:
            self.conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?) "
                                  "ON CONFLICT (name) DO UPDATE SET value = excluded.value", self.counters.items())
        except sqlite3.OperationalError as error:
            if not _is_full(error):
                raise
            self._alarm(f"cannot save counters: {error}")

    def stats(self) -> dict:
        """Counters for other threads (the view): no database access, the size as of the last maintain()."""
        return {**self.counters, "bytes": self._used_bytes, "disk_alarm": self.disk_alarm}

    def close(self) -> None:
        try:
            self.commit()
            self._save_counters()
        finally:
            self.conn.close()


def map_image(message: wire.MapMessage) -> tuple[np.ndarray, float | None, float | None]:
    """A map as an 8-bit image and the model values its 0 and 255 stand for."""
    if message.data.dtype == np.uint8:
        lo, hi = message.value_range if message.value_range is not None else (None, None)
        return np.ascontiguousarray(message.data), lo, hi
    values = message.values()
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    return np.clip((values - lo) * scale, 0, 255).astype(np.uint8), lo, hi


# -------------------------------------------------------------------------------------- reading

def open_reader(folder: str | Path) -> sqlite3.Connection:
    """A read-only connection to a records folder's database; rows as sqlite3.Row."""
    path = db_path(folder)
    if not path.is_file():
        raise InputDataError(f"records {folder}: no {DB_NAME} (not a records folder, or nothing recorded yet)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.row_factory = sqlite3.Row
    return conn


def query(conn: sqlite3.Connection, since_ns: int | None = None, until_ns: int | None = None,
          cameras: list[str] | None = None, verdicts: list[str] | None = None, session: str | None = None,
          frame_id: int | None = None, reason: str | None = None, reviewed: bool | None = None,
          with_image: bool | None = None, limit: int | None = None, newest_first: bool = False) -> list[dict]:
    """Decisions matching every filter given, oldest first (or newest first), as dicts of COLUMNS."""
    where, args = [], []
    for column, op, value in (("wall_ns", ">=", since_ns), ("wall_ns", "<", until_ns), ("session", "=", session),
                              ("frame_id", "=", frame_id)):
        if value is not None:
            where.append(f"{column} {op} ?")
            args.append(value)
    for column, values in (("camera", cameras), ("verdict", verdicts)):
        if values:
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            args.extend(values)
    if reason:
        where.append("reason LIKE ?")
        args.append(f"%{reason}%")
    if reviewed is not None:
        where.append("review IS NOT NULL" if reviewed else "review IS NULL")
    if with_image is not None:
        where.append("image IS NOT NULL" if with_image else "image IS NULL")
    sql = f"SELECT {', '.join(COLUMNS)} FROM decisions"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'}"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(int(limit))
    return [dict(zip(COLUMNS, row)) for row in conn.execute(sql, args)]


def get(conn: sqlite3.Connection, row_id: int) -> dict | None:
    row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM decisions WHERE id = ?", (row_id,)).fetchone()
    return None if row is None else dict(zip(COLUMNS, row))


def counts_per_hour(conn: sqlite3.Connection, since_ns: int, cameras: list[str] | None = None) -> list[dict]:
    """Decisions per verdict per UTC hour since `since_ns`, with the reviews' false rejects."""
    where, args = "wall_ns >= ?", [since_ns]
    if cameras:
        where += f" AND camera IN ({','.join('?' * len(cameras))})"
        args.extend(cameras)
    hour_ns = 3600 * 10**9
    rows = conn.execute(
        f"SELECT (wall_ns / {hour_ns}) * {hour_ns} AS hour, SUM(verdict = 'ok'), SUM(verdict = 'reject'), "
        f"SUM(verdict = 'fault'), SUM(review = '{FALSE_REJECT}'), SUM(review = '{DEFECT_CONFIRMED}'), "
        f"SUM(review = '{MISSED_DEFECT}') FROM decisions WHERE {where} GROUP BY hour ORDER BY hour", args)
    names = ("hour_ns", "ok", "reject", "fault", FALSE_REJECT, DEFECT_CONFIRMED, MISSED_DEFECT)
    return [dict(zip(names, row)) for row in rows]


def saved_counters(conn: sqlite3.Connection) -> dict:
    return dict(conn.execute("SELECT name, value FROM counters").fetchall())


def set_review(folder: str | Path, row_id: int, review: str, reviewer: str, label: str | None = None,
               now_ns: int | None = None) -> dict:
    """Record what a person says part `row_id` really was; the updated row. A review that does not fit
    the verdict (a passed part marked a false reject) is refused, naming both."""
    if review not in REVIEWS:
        raise InputDataError(f"review {review!r}: expected one of {', '.join(REVIEWS)}")
    reviewer = (reviewer or "").strip()
    if not reviewer or len(reviewer) > 64:
        raise InputDataError("review: a reviewer's name (1-64 characters) is required")
    label = (label or "").strip() or None
    if label is not None and not all(c.isalnum() or c in "_-" for c in label):
        raise InputDataError(f"defect label {label!r}: expected letters, digits, '_' or '-' (it names a folder)")
    conn = sqlite3.connect(db_path(folder), isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        row = conn.execute("SELECT verdict FROM decisions WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise InputDataError(f"record {row_id}: not in {db_path(folder)} (pruned by retention, or never recorded)")
        if row[0] not in REVIEWS[review]:
            raise InputDataError(f"record {row_id} is a {row[0]!r} decision; {review!r} applies to "
                                 f"{' or '.join(REVIEWS[review])} decisions")
        conn.execute("UPDATE decisions SET review = ?, review_label = ?, reviewer = ?, reviewed_ns = ? WHERE id = ?",
                     (review, label, reviewer, time.time_ns() if now_ns is None else now_ns, row_id))
    finally:
        conn.close()
    reader = open_reader(folder)
    try:
        return get(reader, row_id)
    finally:
        reader.close()
