"""Reads MVTec AD layout (MVTec AD itself, the magnetic tile set, a user's own folders).

    ROOT/train/good/*.png|jpg|...
    ROOT/test/<class>/*            ("good" is the normal class)
    ROOT/ground_truth/<class>/<stem>_mask.png   (optional per class: without it, image metrics only)

A plain folder of good images is also accepted wherever training data is asked for.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.core.errors import InputDataError
from edge.imaging.files import IMAGE_SUFFIXES, image_files, read_image  # noqa: F401 - read_image re-exported for the dataset's users

log = logging.getLogger(__name__)

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 normal, 1 defect
    defect_class: str
    mask_path: Path | None = None


def list_images(folder: str | Path) -> list[Path]:
    """Image files in `folder`, sorted. Other files are skipped with a warning naming them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputDataError(f"image folder {folder}: does not exist or is not a folder")
    images = image_files(folder)
    skipped = [p.name for p in sorted(folder.iterdir())
               if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in IMAGE_SUFFIXES]
    if skipped:
        log.warning("image folder %s: skipped %d non-image files (%s%s); expected %s",
                    folder, len(skipped), ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "",
                    "/".join(IMAGE_SUFFIXES))
    if not images:
        raise InputDataError(f"image folder {folder}: no images (expected files ending in "
                             f"{', '.join(IMAGE_SUFFIXES)})")
    return images


def read_mask(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """A ground-truth mask → bool H×W, refused if its size differs from its image's."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InputDataError(f"mask {path}: not a readable image")
    if mask.shape != tuple(image_shape[:2]):
        raise InputDataError(f"mask {path}: size {mask.shape[1]}×{mask.shape[0]} does not match its image's "
                             f"{image_shape[1]}×{image_shape[0]}")
    return mask > 127


def training_folder(data: str | Path) -> Path:
    """`data` may be an MVTec category root (uses train/good) or a plain folder of good images."""
    data = Path(data)
    candidate = data / "train" / GOOD
    return candidate if candidate.is_dir() else data


def evaluation_samples(root: str | Path) -> list[Sample]:
    """Every image under ROOT/test, labelled by its class folder, with its mask when one exists."""
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise InputDataError(f"dataset {root}: no test/ folder (expected MVTec AD layout: test/<class>/*)")
    samples = []
    class_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir())
    if not class_dirs:
        raise InputDataError(f"dataset {root}: test/ has no class folders (expected test/good and test/<defect>)")
    for class_dir in class_dirs:
        defect_class = class_dir.name
        label = 0 if defect_class == GOOD else 1
        truth_dir = root / "ground_truth" / defect_class
        if label and not truth_dir.is_dir():
            log.warning("dataset %s: class %s has no ground_truth/%s; image metrics only for it",
                        root, defect_class, defect_class)
        for path in list_images(class_dir):
            mask_path = None
            if label and truth_dir.is_dir():
                mask_path = truth_dir / f"{path.stem}_mask.png"
                if not mask_path.is_file():
                    raise InputDataError(f"dataset {root}: {path} has no mask {mask_path}")
            samples.append(Sample(path, label, defect_class, mask_path))
    return samples
