"""`hlgfa calibrate` end to end on the session's tiny model and real EL images."""

import json
import shutil

import cv2
import pytest

from edge.cli import main
from edge.thresholds import load_thresholds


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
    from edge.model_dir import load_model_info

    out, report = tmp_path / "thresholds.json", tmp_path / "report"
    code = run("--model", tiny_model_dir, "--normals", normals_dir, "--defects", defects_dir, "--target-frr",
               "0.05", "--policy", "f1", "--out", out, "--report", report)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    info = load_model_info(tiny_model_dir)
    thresholds = load_thresholds(out, expected_model_hash=info.model_hash)
    assert thresholds.policy == "f1"
    assert thresholds.version.endswith(thresholds.version.split("-")[-1]) and len(thresholds.version) > 20
    details = thresholds.details
    assert details["n_normals"] == 30 and details["n_defects"] == 10
    assert details["image"]["method"] == "gpd-tail"  # 30 normals are too few for 5 %: warned
    assert "WARNING" in captured.err and "needs at least 200 normals" in captured.err
    assert set(details["policy"]["escape_by_class"]) == {"cracked"}
    assert thresholds.region is not None and thresholds.region.min_area_px >= 1
    page = (report / "index.html").read_text()
    assert "data:image/png;base64," in page and thresholds.version in page
    assert {"hist.png", "roc.png", "top_normals.png"} <= {p.name for p in report.iterdir()}
    # The frame-quality gate: a range per statistic, holding every normal, shown in the report.
    from edge.quality import STATISTICS

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

    broken = tmp_path / "broken"
    shutil.copytree(normals_dir, broken)
    (broken / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = tmp_path / "report"
    assert run("--model", tiny_model_dir, "--normals", broken, "--out", out, "--report", report) == 65
    assert "zz_truncated.png" in capsys.readouterr().err
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
    from edge.errors import ConfigError
    from edge.model_dir import load_model_info

    with pytest.raises(ConfigError, match="recalibrate"):
        load_thresholds(out, expected_model_hash=load_model_info(tiny_model_dir).model_hash)


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
