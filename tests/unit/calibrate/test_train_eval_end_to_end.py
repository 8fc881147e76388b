"""Train → eval on a handful of real magnetic tiles through the CLI."""

import json
import shutil

import pytest

pytest.importorskip("torch")

from edge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def small_tile_set(tmp_path_factory, magnetic_tile):
    """16 good tiles to train on; 4 good and 6 defective tiles (with masks) to test on."""
    root = tmp_path_factory.mktemp("tiles")
    goods = sorted((magnetic_tile / "train" / "good").iterdir())[:16]
    for path in goods:
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "train" / "good" / path.name)
    for path in sorted((magnetic_tile / "test" / "good").iterdir())[:4]:
        (root / "test" / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "test" / "good" / path.name)
    for defect_class in ("break", "blowhole"):
        for path in sorted((magnetic_tile / "test" / defect_class).iterdir())[:3]:
            for sub, name in (("test", path.name), ("ground_truth", f"{path.stem}_mask.png")):
                (root / sub / defect_class).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / "test" / defect_class / path.name)
            mask = magnetic_tile / "ground_truth" / defect_class / f"{path.stem}_mask.png"
            shutil.copy(mask, root / "ground_truth" / defect_class / mask.name)
    # The training images again, as test "good", to compare defects with what the model was trained on.
    trained = tmp_path_factory.mktemp("trained_as_test")
    (trained / "test" / "good").mkdir(parents=True)
    for path in goods:
        shutil.copy(path, trained / "test" / "good" / path.name)
    return root, trained


def test_train_then_eval_computes_metrics_and_ranks_defects_above_trained_goods(tmp_path, small_tile_set, capsys):
    root, trained = small_tile_set
    model = tmp_path / "model"
    assert main(["train", "--data", str(root), "--out", str(model), "--epochs", "3", "--image-size", "256",
                 "--no-progress"]) == 0
    capsys.readouterr()
    metrics_path, scores_path, maps_dir = tmp_path / "m.json", tmp_path / "s.csv", tmp_path / "maps"
    assert main(["eval", "--model", str(model), "--data", str(root), "--out", str(metrics_path),
                 "--scores", str(scores_path), "--save-maps", str(maps_dir), "--no-progress"]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["n_images"] == 10 and metrics["n_defect"] == 6
    for key in ("image_auroc", "pixel_auroc", "pro"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["per_class"]) == {"break", "blowhole"}
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
