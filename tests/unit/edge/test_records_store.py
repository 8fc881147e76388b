"""The records store on real SQLite files in a temporary folder: what is kept, retention, a full
database, a damaged one, a read-only archive, reviews and their history, queries and exports."""

import hashlib
import json
import shutil
import sqlite3
import subprocess

import cv2
import numpy as np
import pytest

from edge.transport import wire
from edge.cli import main
from edge.core.errors import InputDataError
from edge.records.export import export_reviews, parse_when
from edge.records.frames import Frames
from edge.records.store import (FALSE_REJECT, MISSED_DEFECT, DEFECT_CONFIRMED, RecordStore, Retention, history,
                                hourly, open_reader, query, reviews_hourly, set_mark, set_review)

SESSION = "0123456789abcdef"
T0 = 1_780_000_000 * 10**9  # ns since the epoch


def decision(seq, verdict="ok", camera="cam1", wall_ns=None, score=0.2, frame_id=None, part_id=None):
    return wire.Decision(camera=camera, frame_id=seq if frame_id is None else frame_id, verdict=verdict,
                         reason="" if verdict == "ok" else f"{verdict} reason", score=None if verdict == "fault" else score,
                         threshold=None if verdict == "fault" else 0.5, device_timestamp_ns=0, receive_ns=0,
                         decision_ns=0, latency_ms=4.0, model_hash="ab" * 32, thresholds_version="v1", region_px=3,
                         session=SESSION, seq=seq, wall_ns=T0 + seq * 10**6 if wall_ns is None else wall_ns,
                         part_id=part_id)


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
    assert [r["seq"] for r in rows(tmp_path, before_id=4)] == [1, 2, 3]
    assert [r["seq"] for r in rows(tmp_path, reason="reject reason", cameras=["cam1"])] == [5, 15]


def test_the_plcs_part_id_is_stored_and_found(tmp_path, rng):
    store = RecordStore(tmp_path)
    for seq, part in ((1, "A-0001"), (2, None), (3, "A-0003")):
        store.record_decision(decision(seq, "reject" if seq == 3 else "ok", part_id=part))
    store.close()
    assert [r["part_id"] for r in rows(tmp_path)] == ["A-0001", None, "A-0003"]
    assert [r["seq"] for r in rows(tmp_path, part_id="A-0003")] == [3]


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
                        commit_interval_s=0, maintain_interval_s=0, max_page_count=40)
    stored = []
    for seq in range(1, 2001):
        stored.append(store.record_decision(decision(seq)))
        store.maintain()
    store.commit()
    stats = store.stats()
    assert stats["dropped_records"] > 0
    kept = rows(tmp_path)
    # every decision is a row now, was pruned to make room, or was counted as dropped: exactly
    assert stats["records"] == len(kept) + stats["pruned_records"]
    assert stats["records"] + stats["dropped_records"] == 2000
    assert kept[-1]["seq"] == 2000 and stored[-1] is not None  # the newest still got in
    store.close()
    conn = open_reader(tmp_path)
    saved = dict(conn.execute("SELECT name, value FROM counters"))
    conn.close()
    assert (saved["records"], saved["dropped_records"]) == (stats["records"], stats["dropped_records"])


def test_counters_on_disk_always_add_up_with_the_rows(tmp_path, rng):
    """The counters are committed with the rows: a reader sees records = rows + pruned at any commit."""
    store = RecordStore(tmp_path, Retention(max_age_s=None, max_bytes=None, min_free_bytes=0), commit_interval_s=0)
    for seq in range(1, 31):
        record(store, rng, seq, "reject" if seq % 3 == 0 else "ok")
        conn = open_reader(tmp_path)
        saved = dict(conn.execute("SELECT name, value FROM counters"))
        count = conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        position = conn.execute("SELECT session, seq FROM positions WHERE camera = 'cam1'").fetchone()
        conn.close()
        assert saved.get("records", 0) == count and tuple(position) == (SESSION, seq)
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
    assert "min_free_mb" in store.disk_alarm


def test_reviews_keep_their_history_and_must_fit_the_verdict(tmp_path, rng):
    store = RecordStore(tmp_path)
    ids = [record(store, rng, seq, verdict) for seq, verdict in enumerate(["reject", "ok", "fault"], start=1)]
    store.close()
    set_review(tmp_path, ids[0], FALSE_REJECT, "anna", now_ns=T0)
    set_review(tmp_path, ids[0], DEFECT_CONFIRMED, "bo", label="crack", now_ns=T0 + 1)
    set_mark(tmp_path, ids[0], "cy", "operator", note="edge chipped?", now_ns=T0 + 2)
    set_review(tmp_path, ids[1], MISSED_DEFECT, "bo", label="crack")
    with pytest.raises(InputDataError, match="'ok' decision"):
        set_review(tmp_path, ids[1], FALSE_REJECT, "anna")
    with pytest.raises(InputDataError, match="reviewer"):
        set_review(tmp_path, ids[2], DEFECT_CONFIRMED, "  ")
    with pytest.raises(InputDataError, match="names a folder"):
        set_review(tmp_path, ids[2], DEFECT_CONFIRMED, "anna", label="../etc")
    with pytest.raises(InputDataError, match="not in"):
        set_review(tmp_path, 999, DEFECT_CONFIRMED, "anna")
    conn = open_reader(tmp_path)
    first = query(conn, reviewed=True)[0]
    trail = history(conn, ids[0])
    hours = hourly(conn, since_ns=0)
    reviews = reviews_hourly(conn, since_ns=0)
    conn.close()
    # the record holds the latest review (what the export uses); the history every one, old → new
    assert (first["review"], first["review_label"], first["reviewer"], first["marked_by"]) == (
        DEFECT_CONFIRMED, "crack", "bo", "cy")
    assert [(h["who"], h["action"], h["old"], h["new"]) for h in trail] == [
        ("anna", "review", None, FALSE_REJECT), ("bo", "review", FALSE_REJECT, DEFECT_CONFIRMED),
        ("cy", "mark", None, "edge chipped?")]
    assert sum(h["ok"] for h in hours) == 1 and sum(r[DEFECT_CONFIRMED] for r in reviews.values()) == 1
    assert sum(r[MISSED_DEFECT] for r in reviews.values()) == 1 and sum(r[FALSE_REJECT] for r in reviews.values()) == 0
    # the score histogram: score / threshold in eighths, 0.2 / 0.5 = 0.4 → bin 3; the fault has no score
    assert [h["scores"][3] for h in hours] == [2] and sum(sum(h["scores"]) for h in hours) == 2


def test_reviewed_parts_export_as_mvtec_folders_with_their_frames(tmp_path, rng):
    frames = tmp_path / "replay"
    frames.mkdir()
    for index in range(4):
        cv2.imwrite(str(frames / f"{index:03d}.png"), np.full((32, 32), index * 40, np.uint8))
    records = tmp_path / "records"
    store = RecordStore(records)
    replay = Frames({"cam1": frames})
    ids = []
    for seq, verdict in enumerate(["reject", "ok", "reject", "reject"], start=1):
        d = decision(seq, verdict, frame_id=seq - 1)
        ids.append(store.record_decision(d, replay.sha256("cam1", d.frame_id)))
        store.record_map(map_for(d, rng))
    store.close()
    set_review(records, ids[0], FALSE_REJECT, "anna")
    set_review(records, ids[1], MISSED_DEFECT, "anna", label="crack")
    set_review(records, ids[2], DEFECT_CONFIRMED, "anna")
    conn = open_reader(records)
    summary = export_reviews(conn, records, tmp_path / "out", Frames({"cam1": frames}))
    conn.close()
    assert summary == {"reviewed": 3, "frames": 3, "missing_frames": 0, "maps": 3}
    out = tmp_path / "out"
    good = sorted((out / "good").iterdir())
    assert len(good) == 1 and cv2.imread(str(good[0]), cv2.IMREAD_UNCHANGED).max() == 0  # frame 0
    assert len(list((out / "defect" / "crack").iterdir())) == 1
    assert len(list((out / "defect" / "confirmed").iterdir())) == 1
    assert (out / "maps" / "good").is_dir() and "anna" in (out / "reviews.csv").read_text()

    # a replay folder rewritten after the decision: the export refuses the changed frame and says why
    cv2.imwrite(str(frames / "000.png"), np.full((32, 32), 255, np.uint8))
    conn = open_reader(records)
    summary = export_reviews(conn, records, tmp_path / "again", Frames({"cam1": frames}))
    conn.close()
    assert summary["missing_frames"] == 1 and not (tmp_path / "again" / "good").exists()
    assert "changed since the decision" in (tmp_path / "again" / "reviews.csv").read_text()


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
    for when in ("0001-01-01", "99999999999999999999d", "9999-01-01"):
        assert main(["records", "query", "--records", str(tmp_path / "rec"), "--since", when]) == 65
        assert f"time {when!r}" in capsys.readouterr().err
    for flag, value in (("--frame", "12a"), ("--frame", "-1"), ("--limit", "-1"), ("--limit", "0")):
        with pytest.raises(SystemExit) as exited:
            main(["records", "query", "--records", str(tmp_path / "rec"), flag, value])
        assert exited.value.code == 2 and f"{value!r} is not" in capsys.readouterr().err


def test_parse_when_reads_ages_and_iso_times_and_refuses_what_no_record_holds():
    now = T0
    assert parse_when("30m", now) == now - 1800 * 10**9
    assert parse_when("2d", now) == now - 2 * 86400 * 10**9
    assert parse_when("2026-05-28T00:00:00+00:00") == 1_779_926_400 * 10**9
    for text in ("0001-01-01", "99999999999999999999d", "1e300d", "inf", "3000-01-01", "12a"):
        with pytest.raises(InputDataError, match="expected ISO 8601"):
            parse_when(text, now)


def damage(path):
    """Overwrite the pages after the first with noise, as a failing card or a cut copy would."""
    data = bytearray(path.read_bytes())
    data[4096:] = np.random.default_rng(1).integers(0, 256, len(data) - 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["not a database", "damaged pages"])
def test_a_damaged_database_is_an_error_naming_the_fix_and_the_writer_moves_it_aside(tmp_path, rng, capsys, how):
    records = tmp_path / "rec"
    store = RecordStore(records)
    for seq in range(1, 400):
        record(store, rng, seq, "reject" if seq % 7 == 0 else "ok")
    store.close()
    if how == "not a database":
        (records / "records.sqlite").write_bytes(b"this is not a database" * 100)
    else:
        damage(records / "records.sqlite")
    assert main(["records", "query", "--records", str(records)]) == 65
    error = capsys.readouterr().err
    assert "damaged" in error and ".recover" in error and "Traceback" not in error

    # the writer (the view's) moves it aside with its maps, says where, and records on
    store = RecordStore(records)
    assert store.replaced is not None and (store.replaced / "records.sqlite").is_file()
    assert (store.replaced / "images").is_dir() and "recording into a new one" in store.disk_alarm
    record(store, rng, 1000, "reject")
    store.close()
    assert [r["seq"] for r in rows(records)] == [1000]


def test_a_read_only_archive_is_read(tmp_path, rng, capsys):
    """A records folder copied to read-only media: SQLite cannot make its -shm there, and a plain
    read-only open of a WAL database fails; the reader opens it as immutable."""
    archive = tmp_path / "archive"
    archive.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(archive)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here (needs root); read-only media cannot be made otherwise")
    try:
        store = RecordStore(tmp_path / "rec")
        for seq in range(1, 11):
            record(store, rng, seq, "reject" if seq == 5 else "ok")
        store.close()
        shutil.copytree(tmp_path / "rec", archive / "rec")
        subprocess.run(["mount", "-o", "remount,ro", str(archive)], check=True)
        with pytest.raises(sqlite3.OperationalError):  # what a plain read-only open does there
            sqlite3.connect(f"file:{archive / 'rec' / 'records.sqlite'}?mode=ro", uri=True).execute(
                "SELECT COUNT(*) FROM decisions").fetchone()
        assert main(["records", "query", "--records", str(archive / "rec"), "--verdict", "reject", "--json"]) == 0
        assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [5]
    finally:
        subprocess.run(["umount", str(archive)], check=True)


def test_frames_are_found_per_camera_and_named_by_their_hash(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, level in ((one, 10), (two, 200)):
        folder.mkdir()
        for index in range(3):
            cv2.imwrite(str(folder / f"{index:03d}.png"), np.full((8, 8), level + index, np.uint8))
    frames = Frames(Frames.parse([f"line1={one}", f"line2={two}"]))
    for camera, folder in (("line1", one), ("line2", two)):
        path, why = frames.find(camera, 4, frames.sha256(camera, 4))  # a looped replay: id 4 is file 1
        assert path == folder / "001.png" and why == ""
        assert frames.sha256(camera, 4) == hashlib.sha256((folder / "001.png").read_bytes()).hexdigest()
    assert frames.find("line3", 0, None)[1].startswith("no frames folder for camera 'line3'")
    with pytest.raises(Exception, match="CAMERA=DIR"):
        Frames.parse([str(one)])
