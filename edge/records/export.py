"""Getting records out: a traceability export (rows + their maps) and the reviewed parts as MVTec-layout
folders that `hlgfa calibrate --normals` and `hlgfa eval` take as they are."""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

from edge.core.errors import InputDataError
from edge.records.frames import Frames
from edge.records.store import COLUMNS, DEFECT_CONFIRMED, FALSE_REJECT, MISSED_DEFECT, query

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_YEAR_NS = 366 * 86400 * 10**9


def parse_when(text: str, now_ns: int | None = None) -> int:
    """A point in time as ns since the epoch: ISO 8601 (`2026-11-30T22:00`, local time unless it
    names a zone) or an age (`90s`, `30m`, `8h`, `2d` ago), between 1970 and now + a year."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    expected = "expected ISO 8601 (2026-11-30T22:00, local unless a zone is given) or an age like 30m, 8h, 2d"
    relative = _RELATIVE.match(text)
    try:
        if relative:
            when_ns = now_ns - int(float(relative.group(1)) * _UNIT_S[relative.group(2)] * 1e9)
        else:
            when_ns = int(datetime.fromisoformat(text).timestamp() * 1e9)
    except (ValueError, OverflowError, OSError):
        raise InputDataError(f"time {text!r}: {expected}") from None
    if not 0 <= when_ns <= now_ns + _YEAR_NS:
        raise InputDataError(f"time {text!r}: before 1970 or more than a year ahead; {expected}")
    return when_ns


def iso(wall_ns: int | None) -> str:
    return "" if wall_ns is None else datetime.fromtimestamp(wall_ns / 1e9).astimezone().isoformat(timespec="milliseconds")


def write_rows(rows: list[dict], out, fmt: str) -> None:
    """Rows as CSV (with an ISO time column) or as JSON lines."""
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(("time",) + COLUMNS)
        for row in rows:
            writer.writerow([iso(row["wall_ns"])] + ["" if row[c] is None else row[c] for c in COLUMNS])
    else:
        for row in rows:
            print(json.dumps({"time": iso(row["wall_ns"]), **row}, separators=(",", ":")), file=out)


def _export_name(row: dict) -> str:
    return f"{row['camera']}_{row['session']}_{row['frame_id']:010d}"


def export_records(conn, records: Path, out: Path, rows: list[dict]) -> dict:
    """`rows` as OUT/records.csv and OUT/records.jsonl, with their maps under OUT/maps/."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "records.csv", "w", newline="") as handle:
        write_rows(rows, handle, "csv")
    with open(out / "records.jsonl", "w") as handle:
        write_rows(rows, handle, "json")
    maps = 0
    for row in rows:
        if row["image"] and (records / row["image"]).is_file():
            (out / "maps").mkdir(exist_ok=True)
            shutil.copy(records / row["image"], out / "maps" / f"{_export_name(row)}.png")
            maps += 1
    return {"rows": len(rows), "maps": maps}


def review_folder(row: dict) -> Path:
    """Where a reviewed part goes in the MVTec layout: good/ or defect/<label>/."""
    if row["review"] == FALSE_REJECT:
        return Path("good")
    default = {DEFECT_CONFIRMED: "confirmed", MISSED_DEFECT: "missed"}[row["review"]]
    return Path("defect") / (row["review_label"] or default)


def export_reviews(conn, records: Path, out: Path, frames: Frames | None, **filters) -> dict:
    """Every reviewed part (its latest review) as OUT/good/* and OUT/defect/<label>/*: the frame itself
    when its camera's folder in `frames` still holds the file with the hash recorded at decision time,
    and its map under OUT/maps/ (never inside good/ or defect/, which calibration reads as frames).
    OUT/reviews.csv lists every part, and for one without a frame, why."""
    rows = query(conn, reviewed=True, **filters)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"reviewed": len(rows), "frames": 0, "missing_frames": 0, "maps": 0}
    with open(out / "reviews.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("folder", "file", "time", "camera", "session", "frame_id", "part_id", "verdict", "score",
                         "review", "review_label", "reviewer", "reviewed", "source_frame", "frame_sha256",
                         "no_frame_because"))
        for row in rows:
            folder = review_folder(row)
            source, why = (frames.find(row["camera"], row["frame_id"], row["frame_sha256"]) if frames is not None
                           else (None, "no --frames CAMERA=DIR given"))
            name = ""
            if source is not None:
                name = f"{_export_name(row)}{source.suffix.lower()}"
                (out / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, out / folder / name)
                summary["frames"] += 1
            else:
                summary["missing_frames"] += 1
            if row["image"] and (records / row["image"]).is_file():
                (out / "maps" / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy(records / row["image"], out / "maps" / folder / f"{_export_name(row)}.png")
                summary["maps"] += 1
            writer.writerow((str(folder), name, iso(row["wall_ns"]), row["camera"], row["session"], row["frame_id"],
                             row["part_id"] or "", row["verdict"], row["score"], row["review"],
                             row["review_label"] or "", row["reviewer"], iso(row["reviewed_ns"]),
                             "" if source is None else str(source), row["frame_sha256"] or "", why))
    return summary
