"""`hlgfa calibrate` end to end on the session's tiny model and real EL images."""

import json
import shutil

import cv2
import pytest

from edge.cli import main
from edge.artifacts.thresholds import load_thresholds


@pytest.fixture(scope="module")
def normals_dir(tmp_path_factory, elpv_images):
    # Good cells the tiny model was not trained on (it used the first 24), some saved as colour
    # BMP to exercise the colour path.
    folder = tmp_path_factory.mktemp("normals")
    for index, path in enumerate(elpv_images["good"][24:54]):
        if index % 5 == 0:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(folder / f"{path.stem}.bmp"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
        else:
            shutil.copy(path, folder / path.name)
    (folder / "frames.jsonl").write_text("{}\n")  # a `camera grab` recording carries this beside the PNGs
    return folder


@pytest.fixture(scope="module")
def defects_dir(tmp_path_factory, elpv_images):
    folder = tmp_path_factory.mktemp("defects")
    (folder / "cracked").mkdir()
    for path in elpv_images["defect"][:10]:
        shutil.copy(path, folder / "cracked" / path.name)
    return folder


def run(*args):
    return main(["calibrate", "--backend", "torch", *map(str, args)])


def test_calibrate_writes_a_bound_versioned_file_and_report(tiny_model_dir, normals_dir, defects_dir, tmp_path,
                                                            capsys):
    from edge.artifacts.model_dir import load_model_info

    out, report = tmp_path / "thresholds.json", tmp_path / "report"
    code = run("--model", tiny_model_dir, "--normals", normals_dir, "--defects", defects_dir, "--target-frr",
               "0.05", "--policy", "f1", "--out", out, "--report", report)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = load_model_info(tiny_model_dir)
    thresholds = load_thresholds(out, expected_model_hash=info.model_hash)
    assert thresholds.policy == "f1"
    assert thresholds.version == json.loads(out.read_text())["version"] and len(thresholds.version) > 20
    details = thresholds.details
    assert details["n_normals"] == 30 and details["n_defects"] == 10
    assert details["image"]["method"] == "gpd-tail"  # 30 normals are too few for 5 %: warned
    assert "WARNING" in captured.err and "needs at least 200 normals" in captured.err
    floor = "the frame-quality gate's ranges were fitted on 30 normals, fewer than 100: with 30, ranges faulted"
    assert floor in captured.err and any(note.startswith(floor) for note in details["warnings"])
    assert set(details["policy"]["escape_by_class"]) == {"cracked"}
    assert thresholds.region is not None and thresholds.region.min_area_px >= 1
    page = (report / "index.html").read_text()
    assert "data:image/png;base64," in page and thresholds.version in page
    assert {"hist.png", "roc.png", "top_normals.png"} <= {p.name for p in report.iterdir()}
    # The frame-quality gate: a range per statistic, holding every normal, shown in the report.
    from edge.imaging.quality import STATISTICS

    assert set(thresholds.quality) == set(STATISTICS)
    assert details["quality"]["calibration_faults"] == 0 and details["quality"]["defects"]["n"] == 10
    low, high = thresholds.quality["mean"]
    assert f"frame quality: mean</th><td>range [{low:.6g}, {high:.6g}]" in page
    assert "frame-quality gate: defect images faulted" in page

    # Never overwritten without --force; with it, a new version.
    before = out.read_text()
    assert run("--model", tiny_model_dir, "--normals", normals_dir, "--out", out) == 78
    assert "already exists" in capsys.readouterr().err and out.read_text() == before
    assert run("--model", tiny_model_dir, "--normals", normals_dir, "--out", out, "--force",
               "--no-region-rule") == 0
    assert json.loads(out.read_text())["version"] != json.loads(before)["version"]
    assert load_thresholds(out).region is None


def test_errors_leave_nothing_written(tiny_model_dir, normals_dir, tmp_path, capsys):
    out = tmp_path / "t.json"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("--model", tiny_model_dir, "--normals", empty, "--out", out) == 65
    assert "no images" in capsys.readouterr().err

    # 20 files, one unreadable: it is skipped, and the 19 left are too few, found after scoring.
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in sorted(normals_dir.glob("*.png"))[:19]:
        shutil.copy(path, broken / path.name)
    (broken / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = tmp_path / "report"
    assert run("--model", tiny_model_dir, "--normals", broken, "--out", out, "--report", report) == 65
    err = capsys.readouterr().err
    assert "zz_truncated.png" in err and "19 readable images after skipping 1 unreadable (zz_truncated.png)" in err
    assert not out.exists() and not report.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers

    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(normals_dir.glob("*.png"))[:5]:
        shutil.copy(path, few / path.name)
    assert run("--model", tiny_model_dir, "--normals", few, "--out", out) == 65
    assert "need at least 20" in capsys.readouterr().err

    assert run("--model", tiny_model_dir, "--normals", normals_dir, "--out", out, "--target-frr", "0.5") == 78
    assert "(0, 0.5)" in capsys.readouterr().err
    assert run("--model", tiny_model_dir, "--normals", normals_dir, "--out", out, "--policy", "f1") == 78
    assert "needs defect images" in capsys.readouterr().err
    assert not out.exists()


def test_a_file_for_another_model_is_named(tiny_model_dir, normals_dir, tmp_path, capsys):
    out = tmp_path / "t.json"
    out.write_text(json.dumps({"format": "hlgfa-thresholds/1", "model_hash": "0" * 64, "version": "v",
                               "image_threshold": 1.0}))
    assert run("--model", tiny_model_dir, "--normals", normals_dir, "--out", out) == 78
    assert "bound to another model, 000000000000" in capsys.readouterr().err
    from edge.core.errors import ConfigError
    from edge.artifacts.model_dir import load_model_info

    with pytest.raises(ConfigError, match="recalibrate"):
        load_thresholds(out, expected_model_hash=load_model_info(tiny_model_dir).model_hash)


def test_unreadable_normals_are_skipped_with_a_warning_and_the_rest_calibrate(tiny_model_dir, normals_dir, tmp_path,
                                                                              capsys):
    import struct
    import zlib

    folder = tmp_path / "normals"
    shutil.copytree(normals_dir, folder)
    pngs = sorted(folder.glob("*.png"))
    pngs[0].write_bytes(b"")
    png = pngs[1].read_bytes()
    ihdr = png[12:16] + struct.pack(">II", 60000, 60000) + png[24:29]
    pngs[1].write_bytes(png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:])
    out = tmp_path / "t.json"
    assert run("--model", tiny_model_dir, "--normals", folder, "--target-frr", "0.05", "--out", out) == 0
    err = capsys.readouterr().err
    assert f"skipped unreadable image {pngs[0]}" in err and f"skipped unreadable image {pngs[1]}" in err
    details = load_thresholds(out).details
    assert details["n_normals"] == 28
    assert {entry["file"] for entry in details["skipped_images"]} == {str(pngs[0]), str(pngs[1])}


def test_the_models_own_training_images_are_refused_as_normals_even_copied(tiny_model_dir, elpv_good_dir, tmp_path,
                                                                           capsys):
    # The images the model's statistics were fitted on (training less its validation images).
    trained = json.loads((tiny_model_dir / "model.json").read_text())["training"]["train_files"]
    copied = tmp_path / "copied"
    copied.mkdir()
    for name in trained:
        shutil.copy(elpv_good_dir / name, copied / name)
    for folder, count in ((elpv_good_dir, 24), (copied, len(trained))):
        assert run("--model", tiny_model_dir, "--normals", folder, "--target-frr", "0.05",
                   "--out", tmp_path / "t.json") == 65
        err = capsys.readouterr().err
        assert f"{count} of {count} images are images model" in err and "--allow-training-normals" in err
        assert not (tmp_path / "t.json").exists()
    assert run("--model", tiny_model_dir, "--normals", copied, "--target-frr", "0.05", "--out", tmp_path / "t.json",
               "--allow-training-normals") == 0


def test_normals_from_model_are_the_held_out_images_model_json_lists(tiny_model_dir, elpv_images, tmp_path, capsys):
    from edge.artifacts.model_dir import load_model_info

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    data = tmp_path / "data"
    data.mkdir()
    held_out = elpv_images["good"][60:81]
    for path in held_out:
        shutil.copy(path, data / path.name)
    description = json.loads((model / "model.json").read_text())
    description["training"].update({"data": str(data), "held_out_files": [p.name for p in held_out]})
    (model / "model.json").write_text(json.dumps(description))  # training metadata is not hashed
    out = tmp_path / "t.json"
    assert run("--model", model, "--normals-from-model", "--target-frr", "0.05", "--out", out) == 0
    thresholds = load_thresholds(out, load_model_info(model).model_hash)
    assert thresholds.details["n_normals"] == 21 and thresholds.details["normals_held_out_by"] == str(model)

    description["training"]["held_out_files"] = []
    (model / "model.json").write_text(json.dumps(description))
    assert run("--model", model, "--normals-from-model", "--out", tmp_path / "u.json") == 65
    assert "lists no held-out images" in capsys.readouterr().err


def test_eval_with_thresholds_measures_the_gate_on_good_and_defect_images(tiny_model_dir, normals_dir, defects_dir,
                                                                          tmp_path, capsys):
    """`hlgfa eval --thresholds`: the gate's false faults on good test images, and the defect-class
    images it faults (two blank frames among them, which must be faulted)."""
    import numpy as np

    thresholds = tmp_path / "thresholds.json"
    assert run("--model", tiny_model_dir, "--normals", normals_dir, "--out", thresholds) == 0
    root = tmp_path / "data"
    (root / "test" / "good").mkdir(parents=True)
    for path in sorted(p for p in normals_dir.iterdir() if p.suffix == ".png")[:6]:
        shutil.copy(path, root / "test" / "good" / path.name)
    shutil.copytree(defects_dir / "cracked", root / "test" / "cracked")
    (root / "test" / "blank").mkdir()
    for level in (0, 128):
        cv2.imwrite(str(root / "test" / "blank" / f"grey{level}.png"), np.full((300, 300), level, np.uint8))
    metrics_path = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(root), "--backend", "torch",
                 "--thresholds", str(thresholds), "--out", str(metrics_path), "--no-progress"]) == 0
    gate = json.loads(metrics_path.read_text())["quality_gate"]
    assert gate["good"]["n"] == 6 and gate["good"]["faulted"] == 0  # normals from the same folder: all inside
    assert gate["good"]["rate"] == 0.0 and gate["good"]["false_fault_rate_ci95"][0] == 0.0
    assert gate["defect"]["n"] == 12 and gate["defect"]["faulted"] >= 2
    assert set(gate["ranges"]) == set(load_thresholds(thresholds).quality)
