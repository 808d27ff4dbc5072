"""Sample sheet of the procedural world: per identity, the source and its 8 edits, then the pose image
and each edit's exact edit region (tinted red on the target).

    python tools/world_sheet.py --out docs/world_sheet.png --identities 4 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from portrait_edit.tasks import DIRECTIONS
from portrait_edit.world import make_pair

LABEL_W, HEADER_H, GAP = 78, 14, 2


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3): the region tinted red, everything else darkened, so its extent reads at a glance."""
    out = image.astype(np.float32) * 0.35
    out[mask] = image[mask] * 0.45 + np.array([255.0, 30.0, 30.0]) * 0.55
    return out.round().astype(np.uint8)


def world_sheet(out: str, identities: int = 4, seed: int = 0, size: int = 64, scale: int = 2) -> Path:
    """Write the sample sheet PNG of identities seed .. seed + identities - 1 to `out`; returns its path."""
    if identities < 1 or scale < 1:
        raise ValueError(f"identities and scale must be >= 1, got {identities} and {scale}")
    cell = size * scale
    columns = ("source", *DIRECTIONS)
    width = LABEL_W + len(columns) * (cell + GAP)
    height = HEADER_H + identities * (2 * cell + 3 * GAP)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for col, name in enumerate(columns):
        draw.text((LABEL_W + col * (cell + GAP) + 2, 1), name, fill=(0, 0, 0))

    def paste(array: np.ndarray, row_y: int, col: int) -> None:
        tile = Image.fromarray(array).resize((cell, cell), Image.NEAREST)
        sheet.paste(tile, (LABEL_W + col * (cell + GAP), row_y))

    for i in range(identities):
        y = HEADER_H + i * (2 * cell + 3 * GAP)
        pairs = [make_pair(seed + i, direction, size) for direction in DIRECTIONS]
        paste(pairs[0].src, y, 0)
        paste(pairs[0].pose_image, y + cell + GAP, 0)
        for col, pair in enumerate(pairs, start=1):
            paste(pair.gt, y, col)
            paste(mask_overlay(pair.gt, pair.edit_mask), y + cell + GAP, col)
        text = f"seed {seed + i}\n{pairs[0].gender}\n\nrow 2:\npose image,\nedit regions"
        draw.multiline_text((3, y + 2), text, fill=(0, 0, 0))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="docs/world_sheet.png", help="PNG to write")
    parser.add_argument("--identities", type=int, default=4, help="rows (identities)")
    parser.add_argument("--seed", type=int, default=0, help="first pair seed")
    parser.add_argument("--size", type=int, default=64, help="image side (multiple of 8)")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour magnification")
    args = parser.parse_args(argv)
    print(world_sheet(args.out, args.identities, args.seed, args.size, args.scale))


if __name__ == "__main__":
    main()
