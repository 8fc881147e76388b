"""The records folder: one SQLite database (WAL) of every decision, and heat-map images beside it.

    DIR/records.sqlite        decisions, events (gaps, restarts, faults, links, drift, counter resets),
                              the review history, counters, and the last sequence number received
    DIR/images/<camera>/<YYYYMMDD>/<session>_<frame_id>.png
    DIR/.reserve              space held back so that a full disk can still be pruned

One process writes (`RecordStore`, the recorder's thread); any number read at the same time through
`open_reader` (WAL lets readers and the writer proceed together). A review, a mark or a counter reset
is a small write from another thread or process, which waits for the writer's lock instead of failing.

**Never stops, never lies.** Every commit carries the counters (records, dropped, pruned, lost on
the wire) and the last sequence number received per camera in the same transaction as the rows, so
what is on disk always adds up. A write the disk refuses (SQLite's "database or disk is full" or
"disk I/O error", ENOSPC on an image, a file-size limit) loses that record or image and every one of
the open transaction, counts them, raises `disk_alarm`, and asks for room: the reserve file is given
up (so that deleting rows, which itself writes, can proceed), the WAL is checkpointed and truncated,
the oldest rows are pruned in small steps only while free space stays short, and the reserve is put
back. A damaged database is moved aside with its maps (`damaged-<time>/`) and recording goes on in a
new one.

What is kept is bounded: rows and images older than `Retention.max_age_s`, and the oldest rows while the
folder holds more than `Retention.max_bytes`, are deleted by `maintain()`, which the recorder calls
continuously.

Frames are not on the wire (docs/PROTOCOL.md: only the heat map is published); the view records the
SHA-256 of the replayed file a frame id names when the decision arrives (`frame_sha256`), so an export
copies that picture or says it changed.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.core.errors import ConfigError, InputDataError
from edge.transport import wire

log = logging.getLogger(__name__)

DB_NAME = "records.sqlite"
IMAGES_DIR = "images"
RESERVE_NAME = ".reserve"
SCHEMA_VERSION = 2
# The WAL is checkpointed every WAL_PAGES pages and truncated to that size; pruning keeps WAL_HEADROOM
# free beyond `min_free_bytes`, so that the WAL's cycle never runs into a full disk.
WAL_PAGES = 64
WAL_HEADROOM = 512 * 2**10
MAX_INT64 = 2**63 - 1

# Review labels: what an engineer says a part really was. A rejected or faulted part is either good
# (a false reject) or a confirmed defect; a passed part pulled off the line is a missed defect.
FALSE_REJECT, DEFECT_CONFIRMED, MISSED_DEFECT = "false_reject", "defect_confirmed", "missed_defect"
REVIEWS = {FALSE_REJECT: ("reject", "fault"), DEFECT_CONFIRMED: ("reject", "fault"), MISSED_DEFECT: ("ok",)}
# What an operator may do to a part: mark it for an engineer's look, with a note.
REVIEW, MARK = "review", "mark"
COUNTERS_RESET = "counters_reset"

COUNTER_NAMES = ("records", "images", "dropped_records", "dropped_images", "dropped_events", "pruned_records",
                 "gaps_lost", "restarts")

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
    marked_by TEXT,
    marked_ns INTEGER,
    mark_note TEXT,
    part_id TEXT,
    frame_sha256 TEXT,
    UNIQUE (camera, session, seq)
);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (wall_ns);
CREATE INDEX IF NOT EXISTS decisions_camera_time ON decisions (camera, wall_ns);
CREATE INDEX IF NOT EXISTS decisions_verdict_time ON decisions (verdict, wall_ns);
CREATE INDEX IF NOT EXISTS decisions_frame ON decisions (frame_id);
CREATE INDEX IF NOT EXISTS decisions_part ON decisions (part_id) WHERE part_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS decisions_reviewed ON decisions (wall_ns) WHERE review IS NOT NULL;
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
CREATE INDEX IF NOT EXISTS events_kind_time ON events (kind, wall_ns);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY,
    record_id INTEGER NOT NULL,
    wall_ns INTEGER NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    old TEXT,
    new TEXT,
    label TEXT,
    note TEXT
);
CREATE INDEX IF NOT EXISTS reviews_record ON reviews (record_id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS positions (camera TEXT PRIMARY KEY, session TEXT NOT NULL, seq INTEGER NOT NULL);
"""

COLUMNS = ("id", "wall_ns", "camera", "session", "seq", "frame_id", "verdict", "score", "threshold", "region_px",
           "reason", "latency_ms", "thresholds_version", "model_hash", "image", "image_bytes", "map_lo", "map_hi",
           "review", "review_label", "reviewer", "reviewed_ns", "marked_by", "marked_ns", "mark_note", "part_id",
           "frame_sha256")


@dataclass(frozen=True)
class Retention:
    """How much the records folder keeps. `max_age_s`/`max_bytes` None: no limit of that kind.
    `pass_map_every`: keep the map of every Nth passed part of a camera (0: none); rejects' and
    faults' maps are always kept. Below `min_free_bytes` free on the folder's file system no image is
    written and the oldest records are pruned. `reserve_bytes` are held in DIR/.reserve and given up
    when the disk is full, so that pruning (which writes) can run."""

    max_age_s: float | None = 30 * 86400.0
    max_bytes: int | None = 10 * 2**30
    min_free_bytes: int = 256 * 2**20
    pass_map_every: int = 100
    reserve_bytes: int = 2**20

    def __post_init__(self):
        if self.max_age_s is not None and not self.max_age_s > 0:
            raise ConfigError(f"retention max_age_s {self.max_age_s!r}: expected seconds > 0 or unset")
        if self.max_bytes is not None and self.max_bytes < 2**20:
            raise ConfigError(f"retention max_bytes {self.max_bytes!r}: expected at least 1 MiB or unset")
        if self.min_free_bytes < 0 or self.pass_map_every < 0 or self.reserve_bytes < 0:
            raise ConfigError("retention min_free_bytes, pass_map_every and reserve_bytes: expected ≥ 0")


def db_path(folder: str | Path) -> Path:
    return Path(folder) / DB_NAME


# ------------------------------------------------------------------------ what SQLite said

def _message(error: BaseException) -> str:
    return str(error).lower()


def is_damaged(error: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file is not (any more) a database we can use."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+; the message on 3.10
    return (code is not None and code & 0xFF in (11, 26)) or "malformed" in _message(error) \
        or "not a database" in _message(error)


def is_refusal(error: BaseException) -> bool:
    """The disk refused a write: full, an I/O error (a file-size limit reads so), or read-only."""
    code = getattr(error, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (8, 10, 13, 14)) or any(
        text in _message(error) for text in ("full", "disk i/o", "readonly", "unable to open"))


def damaged_error(folder: str | Path, error: BaseException) -> InputDataError:
    path = db_path(folder)
    return InputDataError(
        f"records {path}: the database is damaged ({error}); save what is left with "
        f"`sqlite3 {path} .recover | sqlite3 recovered.sqlite`, then move {path} aside "
        "(`hlgfa view` moves a damaged database aside by itself and records into a new one)")


class RecordsRefused(InputDataError):
    """A review, mark or reset the disk would not take; nothing was changed."""


# ------------------------------------------------------------------------------------ writing

class RecordStore:
    """The single writer of a records folder. Not thread-safe: one thread calls every method
    (`stats()` excepted, which reads plain attributes)."""

    def __init__(self, folder: str | Path, retention: Retention = Retention(), commit_interval_s: float = 0.25,
                 maintain_interval_s: float = 2.0, max_page_count: int | None = None):
        self.folder = Path(folder)
        self.retention = retention
        self.commit_interval_s = commit_interval_s
        self.maintain_interval_s = maintain_interval_s
        self.max_page_count = max_page_count
        self.counters: collections.Counter = collections.Counter({name: 0 for name in COUNTER_NAMES})
        # camera → (session, last decision seq received), stored or dropped: where a restart resumes counting
        self.positions: dict[str, tuple[str, int]] = {}
        self.disk_alarm: str | None = None
        self.replaced: Path | None = None  # where a damaged database was moved
        self.reserve_held = False
        self._pending_rows = 0
        self._pending_events = 0
        self._pending_images: list[tuple[Path, int]] = []
        self._pending_keys: list[tuple] = []
        self._last_commit = time.monotonic()
        self._last_maintain = 0.0
        self._low_space = False
        self._needs_room = False
        self._growth = 0
        self._free_after: int | None = None
        self._records_at_round = 0
        # Decisions whose map may still come: (camera, session, frame_id) → (row id, keep its map).
        self._awaiting_map: collections.OrderedDict = collections.OrderedDict()
        self._passes_seen: collections.Counter = collections.Counter()
        try:
            (self.folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"records folder {self.folder}: {error.strerror or error}") from None
        try:
            self._connect()
        except sqlite3.DatabaseError as error:
            if not is_damaged(error):
                raise InputDataError(f"records {db_path(self.folder)}: cannot open ({error})") from None
            self._move_aside(error)
            self._connect()
        self._restore_reserve()
        self._used_bytes = self.used_bytes()

    def _connect(self) -> None:
        self.conn = sqlite3.connect(db_path(self.folder), isolation_level=None, check_same_thread=False)
        try:
            # auto_vacuum must be chosen before the first table exists; incremental lets pruning hand
            # pages back to the file system.
            self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL: a power cut may lose the last commits, never corrupt the file.
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("PRAGMA busy_timeout = 5000")
            # A small WAL, truncated after each checkpoint: on a nearly full disk it must never hold the
            # space pruning needs (SQLite's default lets it grow to 4 MiB and keeps the file that size).
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
            self.conn.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * 4096}")
            self.conn.execute("PRAGMA temp_store = MEMORY")
            if self.max_page_count is not None:  # a hard size cap; the tests use it to fill the "disk"
                self.conn.execute(f"PRAGMA max_page_count = {int(self.max_page_count)}")
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise ConfigError(f"records {db_path(self.folder)}: schema {version}, this program writes "
                                  f"schema {SCHEMA_VERSION}; use a new records folder")
            self.conn.executescript(_SCHEMA)
            if version == 0:
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            saved = dict(self.conn.execute("SELECT name, value FROM counters"))
            positions = {camera: (session, seq) for camera, session, seq in
                         self.conn.execute("SELECT camera, session, seq FROM positions")}
            self.image_bytes = self.conn.execute("SELECT COALESCE(SUM(image_bytes), 0) FROM decisions").fetchone()[0]
            self.page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        except BaseException:
            self.conn.close()
            raise
        for name in COUNTER_NAMES:  # a replacement database carries this run's counters on
            self.counters[name] = max(self.counters[name], saved.get(name, 0))
        for camera, position in positions.items():
            self.positions.setdefault(camera, position)

    def _move_aside(self, error: BaseException) -> Path:
        """A damaged database and the maps its rows name go to DIR/damaged-<time>/; say so."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.folder / f"damaged-{stamp}"
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.folder / f"damaged-{stamp}-{suffix}"
        target.mkdir()
        for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", IMAGES_DIR):
            if (self.folder / name).exists():
                os.replace(self.folder / name, target / name)
        (self.folder / IMAGES_DIR).mkdir(exist_ok=True)
        self.image_bytes = 0
        self.replaced = target
        self._alarm(f"the records database was damaged ({error}); moved with its maps to {target}, recording "
                    f"into a new one; `sqlite3 {target / DB_NAME} .recover` saves what is left")
        return target

    def _replace_damaged(self, error: BaseException, **lost) -> None:
        self._drop_pending("the database is damaged", error, **lost)
        try:
            self.conn.close()
        except sqlite3.Error:
            pass
        self._awaiting_map.clear()
        self._move_aside(error)
        self._connect()

    # -------------------------------------------------------------------------- the reserve

    def _reserve_size(self) -> int:
        """`reserve_bytes`, but never more than 1/32 of the file system (a small card stays usable)."""
        return min(self.retention.reserve_bytes, shutil.disk_usage(self.folder).total // 32)

    @property
    def _reserve_ok(self) -> bool:
        return self.reserve_held or not self._reserve_size()

    def _restore_reserve(self) -> None:
        size = self._reserve_size()
        if self.reserve_held or not size:
            return
        path = self.folder / RESERVE_NAME
        try:
            with open(path, "wb") as handle:
                chunk = bytes(min(size, 2**16))
                left = size
                while left > 0:
                    left -= handle.write(chunk[:left])
                handle.flush()
                os.fsync(handle.fileno())
            self.reserve_held = True
        except OSError:
            path.unlink(missing_ok=True)

    def _release_reserve(self) -> None:
        (self.folder / RESERVE_NAME).unlink(missing_ok=True)
        self.reserve_held = False

    # ------------------------------------------------------------------------------ refusals

    def _alarm(self, text: str) -> None:
        if self.disk_alarm != text:
            log.error("records %s: %s", self.folder, text)
        self.disk_alarm = text

    def _drop_pending(self, what: str, error: BaseException, records: int = 0, images: int = 0,
                      events: int = 0) -> None:
        """Roll the open transaction back and count everything it held, and what failed with it, as dropped."""
        records += self._pending_rows
        events += self._pending_events
        images += len(self._pending_images)
        if self.conn.in_transaction:
            try:
                self.conn.rollback()
            except sqlite3.Error:
                pass
        for path, _ in self._pending_images:
            path.unlink(missing_ok=True)
        for key in self._pending_keys:  # their rows are gone: their maps have nowhere to go
            self._awaiting_map.pop(key, None)
        self._pending_rows = self._pending_events = 0
        self._pending_images, self._pending_keys = [], []
        self.counters["dropped_records"] += records
        self.counters["dropped_images"] += images
        self.counters["dropped_events"] += events
        lost = ", ".join(f"{n} {name}" for n, name in ((records, "record(s)"), (images, "map(s)"),
                                                        (events, "event(s)")) if n)
        self._alarm(f"{what}: {error}" + (f"; {lost} dropped" if lost else ""))

    def _refused(self, what: str, error: sqlite3.Error, **lost) -> None:
        if is_damaged(error):
            self._replace_damaged(error, **lost)
            return
        if not is_refusal(error):
            raise error
        self._drop_pending(what, error, **lost)
        self._ask_for_room()

    def _ask_for_room(self) -> None:
        if not self._needs_room:
            self._last_maintain = 0.0  # the first refusal makes room at once; later ones wait their turn
        self._needs_room = True

    def _execute(self, what: str, sql: str, args: tuple, **lost) -> sqlite3.Cursor | None:
        """Run one write inside the open transaction; None when the disk refused it (counted)."""
        try:
            if not self.conn.in_transaction:
                self.conn.execute("BEGIN")
            return self.conn.execute(sql, args)
        except sqlite3.DatabaseError as error:
            self._refused(what, error, **lost)
            return None

    # ------------------------------------------------------------------------------- writing

    def record_decision(self, decision: wire.Decision, frame_sha256: str | None = None) -> int | None:
        """Store one decision; its row id, or None when it was a duplicate or the disk refused it."""
        self.positions[decision.camera] = (decision.session, decision.seq)
        row = (decision.wall_ns, decision.camera, decision.session, decision.seq, decision.frame_id,
               decision.verdict, decision.score, decision.threshold, decision.region_px, decision.reason,
               decision.latency_ms, decision.thresholds_version, decision.model_hash, decision.part_id, frame_sha256)
        cursor = self._execute(
            f"{decision.camera} frame {decision.frame_id}",
            "INSERT OR IGNORE INTO decisions (wall_ns, camera, session, seq, frame_id, verdict, score, threshold, "
            "region_px, reason, latency_ms, thresholds_version, model_hash, part_id, frame_sha256) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row, records=1)
        if cursor is None or cursor.rowcount == 0:
            return None
        self._pending_rows += 1
        row_id = cursor.lastrowid
        keep = decision.verdict != "ok"
        if not keep and self.retention.pass_map_every:
            self._passes_seen[decision.camera] += 1
            keep = self._passes_seen[decision.camera] % self.retention.pass_map_every == 1 % self.retention.pass_map_every
        key = (decision.camera, decision.session, decision.frame_id)
        self._awaiting_map[key] = (row_id, keep)
        self._pending_keys.append(key)
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
        import cv2

        ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise InputDataError(f"map of {message.camera} frame {message.frame_id}: PNG encoding failed")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded.tobytes())
        except OSError as error:
            path.unlink(missing_ok=True)
            self.counters["dropped_images"] += 1
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
                raise
            self._alarm(f"no space for maps ({error.strerror}); maps dropped")
            self._ask_for_room()
            return None
        if self._execute(f"the map of {message.camera} frame {message.frame_id}",
                         "UPDATE decisions SET image = ?, image_bytes = ?, map_lo = ?, map_hi = ? WHERE id = ?",
                         (str(relative), len(encoded), lo, hi, row_id), images=1) is None:
            path.unlink(missing_ok=True)
            return None
        self._pending_images.append((path, len(encoded)))
        self.maybe_commit()
        return path

    def record_event(self, wall_ns: int, camera: str, session: str, kind: str, detail: str, lost: int = 0) -> None:
        """A gap in the sequence numbers, a publisher restart, a fault-topic message, a link or drift change."""
        if kind == "gap":
            self.counters["gaps_lost"] += lost
        elif kind == "restart":
            self.counters["restarts"] += 1
        if self._execute(f"a {kind} event", "INSERT INTO events (wall_ns, camera, session, kind, lost, detail) "
                         "VALUES (?,?,?,?,?,?)", (wall_ns, camera, session, kind, lost, detail), events=1) is not None:
            self._pending_events += 1

    def dropped(self, count: int, why: str, positions: dict[str, tuple[str, int]]) -> None:
        """`count` decisions lost before they reached the store, counted with the disk's own refusals;
        `positions` the latest of them per camera (where a restart resumes counting)."""
        self.counters["dropped_records"] += count
        for camera, (session, seq) in positions.items():
            known = self.positions.get(camera)
            if known is None or known[0] != session or known[1] < seq:
                self.positions[camera] = (session, seq)
        self._alarm(f"{why}: {count} decision(s) dropped")

    def maybe_commit(self, now: float | None = None) -> None:
        """Commit when the open transaction is older than `commit_interval_s`: one fsync-free WAL commit
        per interval instead of per row."""
        now = time.monotonic() if now is None else now
        if self.conn.in_transaction and now - self._last_commit >= self.commit_interval_s:
            self.commit()

    def _save_state(self, counters: collections.Counter) -> None:
        self.conn.executemany("INSERT INTO counters (name, value) VALUES (?, ?) "
                              "ON CONFLICT (name) DO UPDATE SET value = excluded.value", counters.items())
        self.conn.executemany("INSERT INTO positions (camera, session, seq) VALUES (?, ?, ?) ON CONFLICT (camera) "
                              "DO UPDATE SET session = excluded.session, seq = excluded.seq",
                              [(camera, session, seq) for camera, (session, seq) in self.positions.items()])

    def commit(self) -> bool:
        """Commit the open transaction with the counters and positions it changes; False when refused."""
        self._last_commit = time.monotonic()
        if not self.conn.in_transaction:
            return True
        counters = self.counters.copy()
        counters["records"] += self._pending_rows
        counters["images"] += len(self._pending_images)
        try:
            self._save_state(counters)
            self.conn.commit()
        except sqlite3.DatabaseError as error:
            self._refused("commit", error)
            return False
        self.counters["records"] = counters["records"]
        self.counters["images"] = counters["images"]
        self.image_bytes += sum(size for _, size in self._pending_images)
        self._pending_rows = self._pending_events = 0
        self._pending_images, self._pending_keys = [], []
        return True

    def save(self) -> bool:
        """Store the counters and positions now (a commit of their own)."""
        if not self.conn.in_transaction:
            try:
                self.conn.execute("BEGIN")
            except sqlite3.DatabaseError as error:
                self._refused("saving the counters", error)
                return False
        return self.commit()

    # ---------------------------------------------------------------------------------- retention

    def used_bytes(self) -> int:
        pages, free = (self.conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count"))
        return self.image_bytes + (pages - free) * self.page_size

    def _db_bytes(self) -> int:
        pages, free = (self.conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "freelist_count"))
        return (pages - free) * self.page_size

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.folder).free

    def maintain(self, now_ns: int | None = None, force: bool = False) -> None:
        """Enforce retention (age, then size, then free space) at most every `maintain_interval_s`;
        sooner when a write was refused and room must be made."""
        if not force and time.monotonic() - self._last_maintain < self.maintain_interval_s:
            return
        self._last_maintain = time.monotonic()
        try:
            self._enforce_retention(time.time_ns() if now_ns is None else now_ns)
        except sqlite3.DatabaseError as error:
            self._refused("retention", error)

    def _enforce_retention(self, now_ns: int) -> None:
        if not self.commit():
            self._make_room()
            return
        pruned = 0
        if self.retention.max_age_s is not None:
            cutoff = now_ns - int(self.retention.max_age_s * 1e9)
            while (step := self._prune("wall_ns < ?", (cutoff,))) > 0:
                pruned += step
            self.conn.execute("BEGIN")
            self.conn.execute("DELETE FROM events WHERE wall_ns < ?", (cutoff,))
            self.conn.execute("DELETE FROM reviews WHERE wall_ns < ? AND record_id NOT IN (SELECT id FROM decisions)",
                              (cutoff,))
            self.commit()
        if self.retention.max_bytes is not None:
            while self.used_bytes() > self.retention.max_bytes and (step := self._prune_fraction(0.02)) > 0:
                pruned += step
        file_limit = _file_size_limit()
        if file_limit is not None:  # `ulimit -f`: the database file itself must stay under it
            while self._db_bytes() > file_limit * 3 // 4 and (step := self._prune_fraction(0.02)) > 0:
                pruned += step
                self._compact()
        free = self.free_bytes()
        low = free < self.retention.min_free_bytes
        if low:
            self._alarm(f"{free / 2**20:.0f} MiB free, under min_free_mb {self.retention.min_free_bytes / 2**20:.0f}: "
                        "maps are not written and the oldest records are pruned")
        elif self._low_space:
            log.warning("records %s: free space back above min_free_mb; writing maps again", self.folder)
        self._low_space = low
        # what the disk filled by since the last round (blocks, not bytes): the room to keep until the next
        self._growth = max(0, self._free_after - free) if self._free_after is not None else 0
        if self._needs_room or not self._reserve_ok or free < self._room_wanted() - self._reserve_size():
            self._make_room()
        elif pruned:
            self._compact()
        if not (self._needs_room or self._low_space) and self.disk_alarm and self._reserve_ok:
            log.warning("records %s: the disk takes records again (%s before)", self.folder, self.disk_alarm)
            self.disk_alarm = None
        self._free_after = self.free_bytes()
        self._used_bytes = self.used_bytes()

    def _compact(self) -> None:
        """Hand the pages pruning freed back to the file system and truncate the WAL."""
        try:
            self.conn.execute("PRAGMA incremental_vacuum")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.DatabaseError as error:
            if is_damaged(error) or not is_refusal(error):
                raise
            if self.conn.in_transaction:
                self.conn.rollback()

    def _room_wanted(self) -> int:
        """Free space wanted with the reserve given up: the reserve, `min_free_bytes`, the WAL's cycle,
        and twice what the folder grew by in the last round."""
        return self._reserve_size() + self.retention.min_free_bytes + WAL_HEADROOM + 2 * self._growth

    def _make_room(self) -> None:
        """Free space is short, or the disk refused a write: give up the reserve, truncate the WAL, and
        prune the oldest rows in small steps (a bounded number each round) only while free space
        stays short of the reserve + `min_free_bytes` + the WAL's headroom; then hold the reserve again."""
        self._release_reserve()
        self._compact()
        target = self._room_wanted()
        total = self.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        # a tenth of the record, or twice what came in since the last round when the line fills it faster:
        # a disk filled by something else never costs the whole record in one go
        budget = max(50, total // 10, 2 * (self.counters["records"] - self._records_at_round))
        self._records_at_round = self.counters["records"]
        # a refused write with free space left (a file-size limit, a quota) prunes one step all the same
        must = self._needs_room
        while (must or self.free_bytes() < target) and budget > 0:
            must = False
            step = self._prune_fraction(0.02, most=budget)
            if not step:
                break
            budget -= step
            self._compact()
        self._restore_reserve()
        self._needs_room = not self._reserve_ok
        if self._needs_room:
            self._alarm(f"the disk is full ({self.free_bytes() / 2**10:.0f} KiB free after pruning "
                        f"{self.counters['pruned_records']} records in all): records and maps are dropped and counted "
                        "until there is room")

    def _prune_fraction(self, fraction: float, most: int | None = None) -> int:
        """Delete the oldest `fraction` of the rows (at least 50, at most `most`)."""
        count = self.conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        if not count:
            return 0
        n = max(50, int(count * fraction))
        if most is not None:
            n = min(n, most)
        boundary = self.conn.execute("SELECT id FROM decisions ORDER BY id LIMIT 1 OFFSET ?",
                                     (min(count, n) - 1,)).fetchone()[0]
        return self._prune("id <= ?", (boundary,))

    def _prune(self, where: str, args: tuple, batch: int = 2000) -> int:
        """Delete up to `batch` of the oldest rows matching `where`, with their images; how many (0 when
        the disk refused even that)."""
        if not self.commit():
            return 0
        rows = self.conn.execute(f"SELECT id, image, image_bytes FROM decisions WHERE {where} ORDER BY id LIMIT ?",
                                 (*args, batch)).fetchall()
        if not rows:
            return 0
        counters = self.counters.copy()
        counters["pruned_records"] += len(rows)
        try:
            self.conn.execute("BEGIN")
            self.conn.execute("DELETE FROM decisions WHERE id <= ? AND " + where, (rows[-1][0], *args))
            self._save_state(counters)
            self.conn.commit()
        except sqlite3.DatabaseError as error:
            self._refused("pruning", error)
            return 0
        self.counters["pruned_records"] = counters["pruned_records"]
        for _, image, size in rows:
            if image:
                (self.folder / image).unlink(missing_ok=True)
                self.image_bytes -= size
        return len(rows)

    def stats(self) -> dict:
        """Counters for other threads (the view): no database access, the size as of the last maintain()."""
        return {**self.counters, "bytes": self._used_bytes, "disk_alarm": self.disk_alarm,
                "refusing": self._needs_room, "low_space": self._low_space,
                "replaced": None if self.replaced is None else str(self.replaced)}

    def close(self) -> None:
        try:
            if not self.save():
                self._release_reserve()  # its space lets the last counters in
                self.save()
            self._compact()
        except sqlite3.DatabaseError as error:
            log.error("records %s: closing: %s", self.folder, error)
        finally:
            self.conn.close()


def _file_size_limit() -> int | None:
    """The process's file-size limit (`ulimit -f`), None when unlimited."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


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
    """A read-only connection to a records folder's database; rows as sqlite3.Row. An archive on
    read-only media (no -shm can be made) is opened as immutable when no unmerged WAL lies beside it."""
    path = db_path(folder)
    if not path.is_file():
        raise InputDataError(f"records {folder}: no {DB_NAME} (not a records folder, or nothing recorded yet)")
    uri = path.resolve().as_uri()
    try:
        try:
            conn = _reader(uri + "?mode=ro")
        except sqlite3.OperationalError as error:
            if "unable to open" not in _message(error):
                raise
            wal = path.with_name(f"{DB_NAME}-wal")
            if wal.is_file() and wal.stat().st_size > 0:
                raise InputDataError(f"records {path}: on read-only media with unmerged changes in {wal.name} "
                                     "(copied while recording?); copy the folder to writable storage and read the "
                                     "copy") from None
            conn = _reader(uri + "?immutable=1")
    except sqlite3.DatabaseError as error:
        raise damaged_error(folder, error) from None
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        conn.close()
        raise InputDataError(f"records {path}: schema {version}, this program reads schema {SCHEMA_VERSION}")
    return conn


def _reader(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except BaseException:
        conn.close()
        raise
    conn.row_factory = sqlite3.Row
    return conn


def query(conn: sqlite3.Connection, since_ns: int | None = None, until_ns: int | None = None,
          cameras: list[str] | None = None, verdicts: list[str] | None = None, session: str | None = None,
          frame_id: int | None = None, reason: str | None = None, reviewed: bool | None = None,
          with_image: bool | None = None, limit: int | None = None, newest_first: bool = False,
          part_id: str | None = None, marked: bool | None = None, before_id: int | None = None) -> list[dict]:
    """Decisions matching every filter given, oldest first (or newest first), as dicts of COLUMNS.
    `before_id` pages back: only rows older than that record.

    Rows are walked in id order: a time window becomes an id range first (the time index finds its
    ends), and camera, verdict and time are checked on the way (a unary + keeps SQLite from using their
    indexes, which would collect and sort every match before the first page); frame, part id and
    session are looked up by their indexes."""
    where, args = [], []
    if since_ns is not None or until_ns is not None:
        low, high = conn.execute("SELECT MIN(id), MAX(id) FROM decisions WHERE wall_ns >= ? AND wall_ns < ?",
                                 (since_ns if since_ns is not None else -1,
                                  until_ns if until_ns is not None else MAX_INT64)).fetchone()
        if low is None:
            return []
        where += ["id BETWEEN ? AND ?", "+wall_ns >= ?", "+wall_ns < ?"]
        args += [low, high, since_ns if since_ns is not None else -1, until_ns if until_ns is not None else MAX_INT64]
    for column, op, value in (("session", "=", session), ("frame_id", "=", frame_id), ("part_id", "=", part_id),
                              ("id", "<", before_id)):
        if value is not None:
            where.append(f"{column} {op} ?")
            args.append(value)
    for column, values in (("camera", cameras), ("verdict", verdicts)):
        if values:
            where.append(f"+{column} IN ({','.join('?' * len(values))})")
            args.extend(values)
    if reason:
        where.append("reason LIKE ?")
        args.append(f"%{reason}%")
    for column, wanted in (("review", reviewed), ("image", with_image), ("marked_ns", marked)):
        if wanted is not None:
            where.append(f"{column} IS {'NOT ' if wanted else ''}NULL")
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


def history(conn: sqlite3.Connection, row_id: int) -> list[dict]:
    """Every review and mark of one record, oldest first: who, their role, when, old → new."""
    names = ("wall_ns", "who", "role", "action", "old", "new", "label", "note")
    return [dict(zip(names, row)) for row in conn.execute(
        f"SELECT {', '.join(names)} FROM reviews WHERE record_id = ? ORDER BY id", (row_id,))]


HOUR_NS = 3600 * 10**9
SCORE_BINS = 16  # the score histogram: score / threshold in steps of 1/8 from 0 to 2, and a last bin above


def score_bin(score: float | None, threshold: float | None) -> int | None:
    """Which bin of the histogram a score falls in (the threshold at the start of bin 8); None without a
    score or a positive threshold. `_SCORE_BIN_SQL` is the same in SQL."""
    if score is None or threshold is None or not threshold > 0:
        return None
    return min(max(int(score / threshold * 8), 0), SCORE_BINS)


_SCORE_BIN_SQL = f"MIN(MAX(CAST(score / threshold * 8 AS INTEGER), 0), {SCORE_BINS})"


def hourly(conn: sqlite3.Connection, since_ns: int, through_id: int | None = None) -> list[dict]:
    """Per UTC hour and camera since `since_ns` (and up to record `through_id`): decisions per verdict
    and the score histogram (`score_bin`)."""
    where, args = "wall_ns >= ?", [since_ns]
    if through_id is not None:
        where += " AND id <= ?"
        args.append(through_id)
    out: dict = {}
    for hour, camera, verdict, bin_, count in conn.execute(
            f"SELECT (wall_ns / {HOUR_NS}) * {HOUR_NS} AS hour, camera, verdict, "
            f"CASE WHEN score IS NOT NULL AND threshold > 0 THEN {_SCORE_BIN_SQL} END AS bin, COUNT(*) "
            f"FROM decisions WHERE {where} GROUP BY hour, camera, verdict, bin", args):
        entry = out.setdefault((hour, camera), {"hour_ns": hour, "camera": camera, "ok": 0, "reject": 0, "fault": 0,
                                                "scores": [0] * (SCORE_BINS + 1)})
        entry[verdict] += count
        if bin_ is not None:
            entry["scores"][bin_] += count
    return [out[key] for key in sorted(out)]


def reviews_hourly(conn: sqlite3.Connection, since_ns: int, cameras: list[str] | None = None) -> dict:
    """Per UTC hour (of the part) since `since_ns`: how many parts carry each review now."""
    where, args = "review IS NOT NULL AND wall_ns >= ?", [since_ns]
    if cameras:
        where += f" AND camera IN ({','.join('?' * len(cameras))})"
        args.extend(cameras)
    out: dict = {}
    for hour, review, count in conn.execute(
            f"SELECT (wall_ns / {HOUR_NS}) * {HOUR_NS} AS hour, review, COUNT(*) FROM decisions WHERE {where} "
            "GROUP BY hour, review", args):
        out.setdefault(hour, dict.fromkeys(REVIEWS, 0))[review] = count
    return out


def drift_changes(conn: sqlite3.Connection, since_ns: int, cameras: list[str] | None = None) -> list[dict]:
    drift = [dict(zip(("wall_ns", "camera", "state"), row)) for row in conn.execute(
        "SELECT wall_ns, camera, detail FROM events WHERE kind = 'drift' AND wall_ns >= ? ORDER BY id", (since_ns,))]
    return [d for d in drift if not cameras or d["camera"] in cameras]


def last_reset(conn: sqlite3.Connection) -> dict | None:
    """The latest reset of the shift counters: when and by whom."""
    row = conn.execute("SELECT wall_ns, detail FROM events WHERE kind = ? ORDER BY id DESC LIMIT 1",
                       (COUNTERS_RESET,)).fetchone()
    return None if row is None else {"wall_ns": row[0], "by": row[1]}


def shift_counts(conn: sqlite3.Connection, since_ns: int, through_id: int = MAX_INT64) -> dict:
    """Per camera since `since_ns` (up to record `through_id`): decisions per verdict, the worst latency,
    the first and last time."""
    out: dict = {}
    for camera, verdict, count, worst, first, last in conn.execute(
            "SELECT camera, verdict, COUNT(*), MAX(latency_ms), MIN(wall_ns), MAX(wall_ns) FROM decisions "
            "WHERE wall_ns >= ? AND id <= ? GROUP BY camera, verdict", (since_ns, through_id)):
        entry = out.setdefault(camera, {"ok": 0, "reject": 0, "fault": 0, "worst_latency_ms": 0.0,
                                        "first_ns": first, "last_ns": last})
        entry[verdict] = count
        entry["worst_latency_ms"] = max(entry["worst_latency_ms"], worst or 0.0)
        entry["first_ns"], entry["last_ns"] = min(entry["first_ns"], first), max(entry["last_ns"], last)
    return out


def saved_counters(conn: sqlite3.Connection) -> dict:
    return dict(conn.execute("SELECT name, value FROM counters").fetchall())


# ------------------------------------------------------------------ writes from other threads

def _write(folder: str | Path, work) -> None:
    """One transaction on a connection of its own (the recorder keeps writing); the disk refusing it
    changes nothing and says so."""
    conn = sqlite3.connect(db_path(folder), isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as error:
        if is_damaged(error):
            raise damaged_error(folder, error) from None
        raise RecordsRefused(f"records {db_path(folder)}: not saved ({error}); the disk alarm on the page says "
                             "why") from None
    finally:
        conn.close()


def _check_name(who: str) -> str:
    who = (who or "").strip()
    if not who or len(who) > 64:
        raise InputDataError("a reviewer's name (1-64 characters) is required")
    return who


def set_review(folder: str | Path, row_id: int, review: str, reviewer: str, role: str = "engineer",
               label: str | None = None, now_ns: int | None = None) -> None:
    """Record what a person says part `row_id` really was: the record holds the latest review, the
    history every one (who, when, old → new). A review that does not fit the verdict (a passed part
    marked a false reject) is refused, naming both."""
    if review not in REVIEWS:
        raise InputDataError(f"review {review!r}: expected one of {', '.join(REVIEWS)}")
    reviewer = _check_name(reviewer)
    label = (label or "").strip() or None
    if label is not None and (len(label) > 64 or not all(c.isalnum() or c in "_-" for c in label)):
        raise InputDataError(f"defect label {label!r}: expected up to 64 letters, digits, '_' or '-' (it names a "
                             "folder)")
    now_ns = time.time_ns() if now_ns is None else now_ns

    def work(conn):
        row = conn.execute("SELECT verdict, review, review_label FROM decisions WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise InputDataError(f"record {row_id}: not in {db_path(folder)} (pruned by retention, or never recorded)")
        if row[0] not in REVIEWS[review]:
            raise InputDataError(f"record {row_id} is a {row[0]!r} decision; {review!r} applies to "
                                 f"{' or '.join(REVIEWS[review])} decisions")
        old = row[1] if row[2] is None else f"{row[1]}:{row[2]}"
        conn.execute("INSERT INTO reviews (record_id, wall_ns, who, role, action, old, new, label) "
                     "VALUES (?,?,?,?,?,?,?,?)", (row_id, now_ns, reviewer, role, REVIEW, old, review, label))
        conn.execute("UPDATE decisions SET review = ?, review_label = ?, reviewer = ?, reviewed_ns = ? WHERE id = ?",
                     (review, label, reviewer, now_ns, row_id))

    _write(folder, work)


def set_mark(folder: str | Path, row_id: int, who: str, role: str, note: str | None = None,
             now_ns: int | None = None) -> None:
    """An operator marks part `row_id` for an engineer's look, with an optional note; kept in the history."""
    who = _check_name(who)
    note = (note or "").strip() or None
    if note is not None and len(note) > 200:
        raise InputDataError("a mark's note: expected at most 200 characters")
    now_ns = time.time_ns() if now_ns is None else now_ns

    def work(conn):
        row = conn.execute("SELECT mark_note, marked_ns FROM decisions WHERE id = ?", (row_id,)).fetchone()
        if row is None:
            raise InputDataError(f"record {row_id}: not in {db_path(folder)} (pruned by retention, or never recorded)")
        conn.execute("INSERT INTO reviews (record_id, wall_ns, who, role, action, old, new, note) "
                     "VALUES (?,?,?,?,?,?,?,?)", (row_id, now_ns, who, role, MARK,
                                                  None if row[1] is None else (row[0] or ""), note or "", note))
        conn.execute("UPDATE decisions SET marked_by = ?, marked_ns = ?, mark_note = ? WHERE id = ?",
                     (who, now_ns, note, row_id))

    _write(folder, work)


def record_reset(folder: str | Path, who: str, role: str, now_ns: int | None = None) -> int:
    """A reset of the shift counters, itself a row of the record; its time."""
    who = _check_name(who)
    now_ns = time.time_ns() if now_ns is None else now_ns
    _write(folder, lambda conn: conn.execute(
        "INSERT INTO events (wall_ns, camera, session, kind, lost, detail) VALUES (?, '*', '', ?, 0, ?)",
        (now_ns, COUNTERS_RESET, f"{who} ({role})")))
    return now_ns
