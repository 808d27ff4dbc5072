"""Picks an MCDM export's guidance scales (image, spatial, text) on the tuning stream of held-out world
portraits, apart from the evaluation's, by `validate` (evaluation/tuning.py), and optionally writes the
pick into the export's mcdm.json.

    python tools/tune_scales.py --mcdm outputs/mini/mcdm_x [--inputs 25] [--image 1.5 3] [--spatial 2 3]
        [--text 2.5 3.5 5] [--min-fidelity 0.8] [--write] [--out outputs/mini/tune_x]
"""

from __future__ import annotations

import argparse
import itertools
import sys

from portrait_edit.evaluation.tuning import tune_scales
from portrait_edit.paths import DATA_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mcdm", required=True, help="an MCDM export folder (with mcdm.json)")
    parser.add_argument(
        "--classifier", default=str(DATA_DIR / "mini" / "classifier"), help="direction classifier"
    )
    parser.add_argument("--inputs", type=int, default=25, help="portraits per direction")
    parser.add_argument("--image", type=float, nargs="+", default=[1.5, 3.0])
    parser.add_argument("--spatial", type=float, nargs="+", default=[2.0, 3.0])
    parser.add_argument("--text", type=float, nargs="+", default=[2.5, 3.5, 5.0])
    parser.add_argument("--min-fidelity", type=float, default=0.8)
    parser.add_argument("--write", action="store_true", help="write the pick into <mcdm>/mcdm.json")
    parser.add_argument("--out", help="the sweep's table, page and cache (default: <mcdm>/tuning)")
    args = parser.parse_args(argv)
    grid = list(itertools.product(args.image, args.spatial, args.text))
    chosen, page = tune_scales(
        args.mcdm, args.classifier, grid, args.inputs, args.min_fidelity, args.out, args.write
    )
    print(page)
    if chosen is None:
        print(f"no setting reaches fidelity {args.min_fidelity}: nothing picked", file=sys.stderr)
        return 1
    if args.write:
        print(f"wrote scales {chosen} into {args.mcdm}/mcdm.json; measure its mask range again: "
              f"python tools/calibrate_mask.py --mcdm {args.mcdm} --write")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
