"""Session-wide real data and one tiny trained model, shared by every test that needs a model.

Data: solar-cell electroluminescence images from the `elpv-dataset` package (always installed
with the dev extras) and, where present, the magnetic tile set in ../shared/datasets.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

# Two threads oversubscribe a loaded 2-core machine badly (measured 10× slower steps).
os.environ.setdefault("OMP_NUM_THREADS", "1")

MAGNETIC_TILE = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "magnetic_tile"
TINY_IMAGE_SIZE = 128


def elpv_dataset_dir() -> Path:
    import elpv_dataset

    return Path(elpv_dataset.__file__).parent / "data"


def elpv_labels() -> list[tuple[Path, float]]:
    data = elpv_dataset_dir()
    rows = []
    for line in (data / "labels.csv").read_text().split("\n"):
        parts = line.split()
        if len(parts) >= 2:
            rows.append((data / parts[0], float(parts[1])))
    return rows


@pytest.fixture(scope="session")
def elpv_images() -> dict[str, list[Path]]:
    """Real EL images: 'good' (defect probability 0) and 'defect' (probability 1), sorted."""
    rows = elpv_labels()
    return {"good": sorted(p for p, prob in rows if prob == 0.0),
            "defect": sorted(p for p, prob in rows if prob == 1.0)}


@pytest.fixture(scope="session")
def elpv_good_dir(tmp_path_factory, elpv_images) -> Path:
    """A folder of 24 real good cells: the tiny model's training set."""
    folder = tmp_path_factory.mktemp("elpv_good")
    for path in elpv_images["good"][:24]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, elpv_good_dir) -> Path:
    """One tiny HLGFA model trained once per session on real good cells (seconds on 2 cores)."""
    pytest.importorskip("torch")
    from calibrate.train import train

    out = tmp_path_factory.mktemp("tiny_model") / "model"
    train(elpv_good_dir, out, epochs=2, image_size=TINY_IMAGE_SIZE, seed=0, batch_size=8, progress=False)
    return out


@pytest.fixture(scope="session")
def magnetic_tile() -> Path:
    if not (MAGNETIC_TILE / "train" / "good").is_dir():
        pytest.skip(f"the magnetic tile dataset is not at {MAGNETIC_TILE} (../shared/datasets)")
    return MAGNETIC_TILE


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
