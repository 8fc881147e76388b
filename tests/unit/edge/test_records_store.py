"""The records store on real SQLite files in a temporary folder: what is kept, retention, a full
database, reviews, queries and exports."""

import json
import sqlite3

import cv2
import numpy as np
import pytest

from edge.transport import wire
from edge.cli import main
from edge.core.errors import InputDataError
from edge.records.export import FrameFolder, export_reviews, parse_when
from edge.records.store import (FALSE_REJECT, MISSED_DEFECT, DEFECT_CONFIRMED, RecordStore, Retention,
                                counts_per_hour, open_reader, query, set_review)

SESSION = "0123456789abcdef"
T0 = 1_780_000_000 * 10**9  # ns since the epoch


def decision(seq, verdict="ok", camera="cam1", wall_ns=None, score=0.2, frame_id=None):
    return wire.Decision(camera=camera, frame_id=seq if frame_id is None else frame_id, verdict=verdict,
                         reason="" if verdict == "ok" else f"{verdict} reason", score=None if verdict == "fault" else score,
                         threshold=None if verdict == "fault" else 0.5, device_timestamp_ns=0, receive_ns=0,
                         decision_ns=0, latency_ms=4.0, model_hash="ab" * 32, thresholds_version="v1", region_px=3,
                         session=SESSION, seq=seq, wall_ns=T0 + seq * 10**6 if wall_ns is None else wall_ns)


def map_for(d, rng, size=64):
    return wire.MapMessage(d.camera, d.frame_id, rng.integers(0, 256, (size, size), dtype=np.uint8), (0.0, 2.0),
                           session=d.session, seq=d.seq, wall_ns=d.wall_ns)


def record(store, rng, seq, verdict="ok", **kw):
    d = decision(seq, verdict, **kw)
    row = store.record_decision(d)
    store.record_map(map_for(d, rng))
    return row


def rows(folder, **filters):
    conn = open_reader(folder)
    try:
        return query(conn, **filters)
    finally:
        conn.close()


def image_files(folder):
    return sorted(p for p in (folder / "images").rglob("*.png"))


def test_every_decision_is_a_row_and_maps_of_rejects_faults_and_sampled_passes_are_kept(tmp_path, rng):
    store = RecordStore(tmp_path, Retention(pass_map_every=3))
    verdicts = ["ok", "reject", "ok", "ok", "fault", "ok", "ok", "reject"]
    for seq, verdict in enumerate(verdicts, start=1):
        record(store, rng, seq, verdict)
    store.close()
    conn = sqlite3.connect(tmp_path / "records.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    stored = rows(tmp_path)
    assert [r["verdict"] for r in stored] == verdicts
    kept = {r["seq"] for r in stored if r["image"]}
    # rejects and faults always; the 1st and 4th pass of the camera (every 3rd, from the first)
    assert kept == {1, 2, 5, 8, 6}
    assert len(image_files(tmp_path)) == 5
    row = next(r for r in stored if r["seq"] == 2)
    assert (row["map_lo"], row["map_hi"], row["thresholds_version"], row["region_px"]) == (0.0, 2.0, "v1", 3)
    saved = cv2.imread(str(tmp_path / row["image"]), cv2.IMREAD_UNCHANGED)
    assert saved.shape == (64, 64)


def test_a_resent_decision_is_stored_once(tmp_path, rng):
    store = RecordStore(tmp_path)
    assert store.record_decision(decision(1)) is not None
    assert store.record_decision(decision(1)) is None
    store.close()
    assert len(rows(tmp_path)) == 1


def test_queries_filter_by_time_camera_verdict_frame_and_reason(tmp_path, rng):
    store = RecordStore(tmp_path)
    for seq in range(1, 21):
        record(store, rng, seq, "reject" if seq % 5 == 0 else "ok", camera="cam1" if seq % 2 else "cam2")
    store.close()
    assert [r["seq"] for r in rows(tmp_path, verdicts=["reject"])] == [5, 10, 15, 20]
    assert [r["seq"] for r in rows(tmp_path, verdicts=["reject"], cameras=["cam2"])] == [10, 20]
    assert [r["seq"] for r in rows(tmp_path, since_ns=T0 + 15 * 10**6, until_ns=T0 + 18 * 10**6)] == [15, 16, 17]
    assert [r["seq"] for r in rows(tmp_path, frame_id=7)] == [7]
    assert [r["seq"] for r in rows(tmp_path, reason="reject reason", cameras=["cam1"])] == [5, 15]


def test_retention_by_age_deletes_old_rows_and_their_images(tmp_path, rng):
    store = RecordStore(tmp_path, Retention(max_age_s=3600, max_bytes=None, min_free_bytes=0))
    for seq in range(1, 11):
        record(store, rng, seq, "reject", wall_ns=T0 + seq * 600 * 10**9)  # one every 10 minutes
    store.maintain(now_ns=T0 + 10 * 600 * 10**9 + 1, force=True)
    remaining = [r["seq"] for r in rows(tmp_path)]
    assert remaining == [5, 6, 7, 8, 9, 10]  # newer than an hour before the last
    assert len(image_files(tmp_path)) == 6
    assert store.stats()["pruned_records"] == 4
    store.close()


def test_retention_by_size_keeps_the_folder_under_the_limit_and_the_newest_records(tmp_path, rng):
    limit = 2 * 2**20
    store = RecordStore(tmp_path, Retention(max_age_s=None, max_bytes=limit, min_free_bytes=0), maintain_interval_s=0)
    for seq in range(1, 301):  # 128x128 noise maps barely compress: ~16 KiB each, ~5 MiB in all
        d = decision(seq, "reject")
        store.record_decision(d)
        store.record_map(map_for(d, rng, size=128))
        store.maintain()
    store.maintain(force=True)
    stored = rows(tmp_path)
    on_disk = sum(p.stat().st_size for p in image_files(tmp_path))
    assert store.used_bytes() <= limit
    assert on_disk == store.image_bytes
    assert stored[-1]["seq"] == 300 and stored[0]["seq"] > 1
    assert len(image_files(tmp_path)) == len(stored)
    store.close()


def test_a_full_database_drops_and_counts_records_and_recording_goes_on(tmp_path, rng):
    # SQLite's own size cap gives the real "database or disk is full" error a full disk gives
    store = RecordStore(tmp_path, Retention(max_age_s=None, max_bytes=None, min_free_bytes=0, pass_map_every=0),
                        commit_interval_s=0, max_page_count=40)
    stored = [store.record_decision(decision(seq)) for seq in range(1, 2001)]
    store.commit()
    stats = store.stats()
    assert stats["dropped_records"] > 0
    assert "full" in stats["disk_alarm"]
    kept = rows(tmp_path)
    # every decision is either a row now, pruned to make room, or counted as dropped
    assert len(kept) + stats["pruned_records"] + stats["dropped_records"] == 2000
    assert kept[-1]["seq"] == 2000 and stored[-1] is not None  # the newest still got in
    store.close()


def test_low_free_space_stops_images_not_records_and_raises_the_alarm(tmp_path, rng):
    store = RecordStore(tmp_path, Retention(min_free_bytes=2**62), maintain_interval_s=0)
    store.maintain(force=True)
    for seq in range(1, 6):
        record(store, rng, seq, "reject")
    store.close()
    assert len(rows(tmp_path)) == 5
    assert image_files(tmp_path) == []
    assert store.counters["dropped_images"] == 5
    assert "min_free_bytes" in store.disk_alarm


def test_reviews_are_stored_with_who_and_when_and_must_fit_the_verdict(tmp_path, rng):
    store = RecordStore(tmp_path)
    ids = [record(store, rng, seq, verdict) for seq, verdict in enumerate(["reject", "ok", "fault"], start=1)]
    store.close()
    row = set_review(tmp_path, ids[0], FALSE_REJECT, "anna", now_ns=T0)
    assert (row["review"], row["reviewer"], row["reviewed_ns"]) == (FALSE_REJECT, "anna", T0)
    assert set_review(tmp_path, ids[1], MISSED_DEFECT, "bo", label="crack")["review_label"] == "crack"
    with pytest.raises(InputDataError, match="'ok' decision"):
        set_review(tmp_path, ids[1], FALSE_REJECT, "anna")
    with pytest.raises(InputDataError, match="reviewer"):
        set_review(tmp_path, ids[2], DEFECT_CONFIRMED, "  ")
    with pytest.raises(InputDataError, match="names a folder"):
        set_review(tmp_path, ids[2], DEFECT_CONFIRMED, "anna", label="../etc")
    with pytest.raises(InputDataError, match="not in"):
        set_review(tmp_path, 999, DEFECT_CONFIRMED, "anna")
    conn = open_reader(tmp_path)
    hours = counts_per_hour(conn, since_ns=0)
    conn.close()
    assert sum(h["ok"] for h in hours) == 1 and sum(h[FALSE_REJECT] for h in hours) == 1


def test_reviewed_parts_export_as_mvtec_folders_with_their_frames(tmp_path, rng):
    frames = tmp_path / "replay"
    frames.mkdir()
    for index in range(4):
        cv2.imwrite(str(frames / f"{index:03d}.png"), np.full((32, 32), index * 40, np.uint8))
    records = tmp_path / "records"
    store = RecordStore(records)
    ids = [record(store, rng, seq, verdict, frame_id=seq - 1)
           for seq, verdict in enumerate(["reject", "ok", "reject", "reject"], start=1)]
    store.close()
    set_review(records, ids[0], FALSE_REJECT, "anna")
    set_review(records, ids[1], MISSED_DEFECT, "anna", label="crack")
    set_review(records, ids[2], DEFECT_CONFIRMED, "anna")
    conn = open_reader(records)
    summary = export_reviews(conn, records, tmp_path / "out", FrameFolder(frames))
    conn.close()
    assert summary == {"reviewed": 3, "frames": 3, "missing_frames": 0, "maps": 3}
    out = tmp_path / "out"
    good = sorted((out / "good").iterdir())
    assert len(good) == 1 and cv2.imread(str(good[0]), cv2.IMREAD_UNCHANGED).max() == 0  # frame 0
    assert len(list((out / "defect" / "crack").iterdir())) == 1
    assert len(list((out / "defect" / "confirmed").iterdir())) == 1
    assert (out / "maps" / "good").is_dir() and "anna" in (out / "reviews.csv").read_text()


def test_records_cli_query_and_export(tmp_path, rng, capsys):
    store = RecordStore(tmp_path / "rec")
    for seq in range(1, 6):
        record(store, rng, seq, "reject" if seq == 3 else "ok")
    store.close()
    assert main(["records", "query", "--records", str(tmp_path / "rec"), "--verdict", "reject", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["seq"], r["verdict"]) for r in lines] == [(3, "reject")]
    assert main(["records", "query", "--records", str(tmp_path / "rec"), "--csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6  # header + 5
    assert main(["records", "export", "--records", str(tmp_path / "rec"), "--out", str(tmp_path / "x"),
                 "--verdict", "reject"]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"rows": 1, "maps": 1}
    assert main(["records", "query", "--records", str(tmp_path / "nothing")]) == 65
    assert main(["records", "query", "--records", str(tmp_path / "rec"), "--since", "yesterday"]) == 65
    assert "expected ISO 8601" in capsys.readouterr().err


def test_parse_when_reads_ages_and_iso_times():
    now = T0
    assert parse_when("30m", now) == now - 1800 * 10**9
    assert parse_when("2d", now) == now - 2 * 86400 * 10**9
    assert parse_when("2026-05-28T00:00:00+00:00") == 1_779_926_400 * 10**9
