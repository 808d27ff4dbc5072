"""Held-out mini-world portraits as a folder of images, ready for `portrait-edit predict` (EditSystem).

    python tools/held_out_portraits.py --out outputs/demo/inputs --count 8

Portrait k is the input x_A of the evaluation stream's k-th item (evaluation/held_out.py, EVAL_SEED: no
training stage draws from it), written as <out>/heldout-<k>.png, with <out>/genders.json
({name: "man" / "woman"}, the world's own gender, for the prompts) beside them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from portrait_edit.atomic import atomic_write_bytes, atomic_write_json
from portrait_edit.evaluation.held_out import held_out_pair
from portrait_edit.images import encode_png
from portrait_edit.tasks import DIRECTIONS


def write_portraits(out: str | Path, count: int, size: int = 64) -> Path:
    """Write `count` held-out portraits and genders.json into `out`; returns the genders file's path."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    genders = {}
    for k in range(count):
        # The source does not depend on the direction: any direction's pair carries the same x_A.
        pair = held_out_pair(k, DIRECTIONS[0], size)
        name = f"heldout-{k:03d}"
        atomic_write_bytes(out / f"{name}.png", encode_png(pair.src))
        genders[name] = pair.gender
    atomic_write_json(out / "genders.json", genders)
    return out / "genders.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the portraits into")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    path = write_portraits(args.out, args.count, args.size)
    print(f"{args.count} held-out portraits in {args.out} (genders: {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
