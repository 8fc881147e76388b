"""Train → eval through the CLI on a handful of real ELPV cells, and of magnetic tiles where ../shared has them."""

import json
import shutil

import pytest

pytest.importorskip("torch")

from edge.cli import main  # noqa: E402


def _copy(paths, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        shutil.copy(path, folder / path.name)


def _tile_set(root, magnetic_tile):
    """16 good tiles to train on; 4 good and 6 defective tiles (with masks) to test on."""
    goods = sorted((magnetic_tile / "train" / "good").iterdir())[:16]
    _copy(goods, root / "train" / "good")
    _copy(sorted((magnetic_tile / "test" / "good").iterdir())[:4], root / "test" / "good")
    for defect_class in ("break", "blowhole"):
        tiles = sorted((magnetic_tile / "test" / defect_class).iterdir())[:3]
        _copy(tiles, root / "test" / defect_class)
        _copy([magnetic_tile / "ground_truth" / defect_class / f"{p.stem}_mask.png" for p in tiles],
              root / "ground_truth" / defect_class)
    return goods, {"break", "blowhole"}, 256


def _cell_set(root, elpv_images):
    """The same shape of set from ELPV cells (in the dev extras, so it runs on a fresh clone); no masks."""
    goods = elpv_images["good"][:16]
    _copy(goods, root / "train" / "good")
    _copy(elpv_images["good"][16:20], root / "test" / "good")
    _copy(elpv_images["defect"][:6], root / "test" / "cracked")
    return goods, {"cracked"}, 128


@pytest.fixture(scope="module", params=["elpv", pytest.param("magnetic_tile", marks=pytest.mark.slow)])
def small_set(request, tmp_path_factory):
    """(root, the training images as a test set of their own, defect classes, image size)."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "elpv":
        goods, classes, size = _cell_set(root, request.getfixturevalue("elpv_images"))
    else:
        goods, classes, size = _tile_set(root, request.getfixturevalue("magnetic_tile"))
    # The training images again, as test "good", to compare defects with what the model was trained on.
    trained = tmp_path_factory.mktemp("trained_as_test")
    _copy(goods, trained / "test" / "good")
    return root, trained, classes, size


def test_train_then_eval_computes_metrics_and_ranks_defects_above_trained_goods(tmp_path, small_set, capsys):
    root, trained, defect_classes, image_size = small_set
    model = tmp_path / "model"
    assert main(["train", "--data", str(root), "--out", str(model), "--epochs", "3", "--image-size", str(image_size),
                 "--no-progress"]) == 0
    capsys.readouterr()
    metrics_path, scores_path, maps_dir = tmp_path / "m.json", tmp_path / "s.csv", tmp_path / "maps"
    assert main(["eval", "--model", str(model), "--data", str(root), "--out", str(metrics_path),
                 "--scores", str(scores_path), "--save-maps", str(maps_dir), "--no-progress"]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["n_images"] == 10 and metrics["n_defect"] == 6
    with_masks = defect_classes != {"cracked"}
    for key in ("image_auroc", "pixel_auroc", "pro") if with_masks else ("image_auroc",):
        assert 0.0 <= metrics[key] <= 1.0
    assert with_masks or metrics["pixel_auroc"] is None
    assert set(metrics["per_class"]) == defect_classes
    assert len(scores_path.read_text().strip().splitlines()) == 11
    assert len(list(maps_dir.glob("*.png"))) == 10
    defect_scores = [float(line.split(",")[-1]) for line in scores_path.read_text().splitlines()[1:]
                     if ",1," in line]

    trained_scores_path = tmp_path / "trained.csv"
    from calibrate.evaluate import evaluate
    evaluate(model, trained, scores_csv=trained_scores_path, progress=False)
    trained_scores = [float(line.split(",")[-1]) for line in trained_scores_path.read_text().splitlines()[1:]]
    # The defects the model never saw sit above the very images it was fitted to.
    assert sum(defect_scores) / len(defect_scores) > sum(trained_scores) / len(trained_scores)
    assert max(defect_scores) > sorted(trained_scores)[len(trained_scores) // 2]


def test_eval_of_a_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--data", str(tmp_path)]) == 66
    assert "does not exist" in capsys.readouterr().err
