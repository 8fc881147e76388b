"""`hlgfa records query|export`: traceability from a records folder, without the view running."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
from pathlib import Path

from edge.records.export import export_records, export_reviews, parse_when, write_rows
from edge.records.frames import Frames
from edge.records.store import MAX_INT64, damaged_error, open_reader, query, saved_counters
from edge.transport.wire import VERDICTS


def _count(name: str, low: int):
    """An argparse type: a whole number from `low` up to 2^63 - 1, else a message naming the flag."""
    def parse(text: str) -> int:
        if not text.strip().isdigit() or not low <= int(text) <= MAX_INT64:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name} (expected a whole number ≥ {low})")
        return int(text)
    return parse


@contextlib.contextmanager
def _reading(records: Path):
    """A read-only connection; a database found damaged while reading is an error naming the fix."""
    conn = open_reader(records)
    try:
        yield conn
    except sqlite3.DatabaseError as error:
        raise damaged_error(records, error) from None
    finally:
        conn.close()


def _filters(args: argparse.Namespace) -> dict:
    return {"since_ns": parse_when(args.since) if args.since else None,
            "until_ns": parse_when(args.until) if args.until else None,
            "cameras": args.camera, "verdicts": args.verdict, "session": args.session,
            "frame_id": args.frame, "reason": args.reason, "part_id": args.part}


def _query(args: argparse.Namespace) -> int:
    with _reading(args.records) as conn:
        if args.counters:
            print(json.dumps(saved_counters(conn), indent=2))
            return 0
        rows = query(conn, limit=args.limit, newest_first=args.newest_first, **_filters(args),
                     reviewed=True if args.reviewed else None)
    if args.csv or args.json:
        write_rows(rows, sys.stdout, "csv" if args.csv else "json")
        return 0
    from edge.records.export import iso

    for row in rows:
        score = "-" if row["score"] is None else f"{row['score']:.4g}"
        review = f" review {row['review']} by {row['reviewer']}" if row["review"] else ""
        print(f"#{row['id']} {iso(row['wall_ns'])} {row['camera']} frame {row['frame_id']} {row['verdict'].upper()} "
              f"score {score} {row['reason']}{review}")
    print(f"{len(rows)} record(s)", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from edge.core.paths import writable_dir

    writable_dir(args.out, f"--out {args.out}")
    frames = Frames(Frames.parse(args.frames)) if args.frames else None
    with _reading(args.records) as conn:
        if args.reviews:
            summary = export_reviews(conn, Path(args.records), Path(args.out), frames, **_filters(args))
            if summary["missing_frames"]:
                print(f"records export: {summary['missing_frames']} reviewed part(s) without their frame (not "
                      "given with --frames CAMERA=DIR, not found, or changed since the decision); reviews.csv says "
                      "why for each", file=sys.stderr)
        else:
            rows = query(conn, reviewed=True if args.reviewed else None, **_filters(args))
            summary = export_records(conn, Path(args.records), Path(args.out), rows)
    print(json.dumps(summary))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", required=True, type=Path, metavar="DIR", help="the records folder")
    parser.add_argument("--since", metavar="WHEN", help="ISO 8601 (local time unless zoned) or an age: 30m, 8h, 2d")
    parser.add_argument("--until", metavar="WHEN", help="as --since; exclusive")
    parser.add_argument("--camera", action="append", metavar="CAM", help="repeatable")
    parser.add_argument("--verdict", action="append", choices=VERDICTS, help="repeatable")
    parser.add_argument("--session", metavar="HEX", help="one publisher session")
    parser.add_argument("--frame", type=_count("a frame id", 0), metavar="ID", help="one frame id")
    parser.add_argument("--part", metavar="ID", help="the PLC's part id")
    parser.add_argument("--reason", metavar="TEXT", help="reason contains TEXT")
    parser.add_argument("--reviewed", action="store_true", help="only reviewed parts")


def configure(records) -> None:
    """The arguments and handler of `hlgfa records` (edge/cli.py names the command and its one-line help)."""
    actions = records.add_subparsers(dest="records_command", required=True, metavar="ACTION")
    q = actions.add_parser("query", help="print matching decisions (text, --csv or --json lines)")
    _common(q)
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    q.add_argument("--limit", type=_count("a limit", 1), metavar="N")
    q.add_argument("--newest-first", action="store_true")
    q.add_argument("--counters", action="store_true", help="print the recorder's counters (drops, gaps, pruned)")
    q.set_defaults(handler=_query)
    e = actions.add_parser("export", help="matching decisions (CSV, JSON lines, maps) or, with --reviews, the "
                                          "reviewed parts as good/ and defect/<label>/ folders")
    _common(e)
    e.add_argument("--out", required=True, type=Path, metavar="DIR")
    e.add_argument("--reviews", action="store_true",
                   help="MVTec layout for hlgfa calibrate --normals OUT/good and hlgfa eval")
    e.add_argument("--frames", action="append", metavar="CAMERA=DIR",
                   help="with --reviews: the folder or recording CAMERA's daemon read (repeatable, one per camera)")
    e.set_defaults(handler=_export)
