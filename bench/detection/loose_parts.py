"""The "loose parts" protocol: a dev set whose parts do not sit in the same place in every frame.

    .venv/bin/python -m bench.detection.loose_parts --data ../shared/datasets/magnetic_tile --out runs/loose/magnetic_tile \
        [--seed 0] [--shift 0.1] [--rotate 15] [--scale 0.1]

Writes a copy of an MVTec AD layout in which every image, training and test alike, is moved by its
own seeded random similarity transform: a translation of up to ±10 % of each side, a rotation of up
to ±15° and a scaling of up to ±10 % about the centre. Masks move with their images (nearest
neighbour, so they stay binary). Borders are filled by reflection, masks alike, so no frame carries
a straight black edge that would tell the transform apart. Images are written as PNG (lossless); the frame
size is kept. Per-position statistics assume a fixtured part: this is where they should suffer.
"""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from calibrate.dataset import list_images, read_image, read_mask


def random_similarity(shape: tuple[int, int], rng: np.random.Generator, shift: float, rotate: float,
                      scale: float) -> np.ndarray:
    """A 2×3 affine matrix: rotation and scaling about the centre, then a translation."""
    height, width = shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-rotate, rotate),
                                     1 + rng.uniform(-scale, scale))
    matrix[:, 2] += (rng.uniform(-shift, shift) * width, rng.uniform(-shift, shift) * height)
    return matrix


def move(image: np.ndarray, matrix: np.ndarray, mask: bool = False) -> np.ndarray:
    """The same reflection at the borders for a mask as for its image: a defect reflected into
    the frame is masked too."""
    height, width = image.shape[:2]
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_NEAREST if mask else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def make_loose(data: Path, out: Path, seed: int, shift: float, rotate: float, scale: float) -> dict:
    rng = np.random.default_rng(seed)
    counts = {}
    for folder in sorted(p for p in (data / "train").iterdir() if p.is_dir()) + \
            sorted(p for p in (data / "test").iterdir() if p.is_dir()):
        split, name = folder.parent.name, folder.name
        target = out / split / name
        target.mkdir(parents=True, exist_ok=True)
        truth = data / "ground_truth" / name
        for path in list_images(folder):
            image = read_image(path)
            matrix = random_similarity(image.shape[:2], rng, shift, rotate, scale)
            moved = move(image, matrix)
            cv2.imwrite(str(target / f"{path.stem}.png"),
                        moved if moved.ndim == 2 else cv2.cvtColor(moved, cv2.COLOR_RGB2BGR))
            mask_path = truth / f"{path.stem}_mask.png"
            if split == "test" and mask_path.is_file():
                mask = read_mask(mask_path, image.shape).astype(np.uint8) * 255
                (out / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out / "ground_truth" / name / f"{path.stem}_mask.png"), move(mask, matrix, mask=True))
        counts[f"{split}/{name}"] = len(list_images(folder))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift", type=float, default=0.1, help="largest translation, a fraction of each side")
    parser.add_argument("--rotate", type=float, default=15.0, help="largest rotation, degrees")
    parser.add_argument("--scale", type=float, default=0.1, help="largest change of scale, a fraction")
    args = parser.parse_args()
    print(json.dumps(make_loose(args.data, args.out, args.seed, args.shift, args.rotate, args.scale)))


if __name__ == "__main__":
    main()
