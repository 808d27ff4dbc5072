"""Keep the generated pairs whose two halves agree most: per direction, the top fraction by identity
similarity and halves' SSIM, optionally of those a direction classifier reads as showing their edit
(data/pair_filter.py).

    python tools/filter_pairs.py outputs/mini/pairs_cached outputs/mini/pairs_extra_cached \\
        --keep 0.5 --out outputs/mini/pairs_filtered
    python tools/filter_pairs.py outputs/mini/pairs_cached --keep 1 --classifier data/mini/classifier \\
        --out outputs/mini/pairs_shown
"""

from __future__ import annotations

import argparse
import sys

from portrait_edit.data.pair_filter import CRITERIA, filter_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sources", nargs="+", help="pair shard folders, globs or brace patterns")
    parser.add_argument("--out", required=True, help="folder of the kept pairs (a new one)")
    parser.add_argument("--keep", type=float, default=0.5, help="fraction kept per direction (default 0.5)")
    parser.add_argument("--by", nargs="+", default=list(CRITERIA), choices=CRITERIA, help="ranking criteria")
    parser.add_argument(
        "--classifier",
        help="a direction classifier folder (mini world: data/mini/classifier): drop the pairs whose left half "
        "it does not read as the source or whose right half not as the pair's direction, then rank the rest",
    )
    args = parser.parse_args(argv)
    try:
        record = filter_pairs(args.sources, args.out, args.keep, tuple(args.by), args.classifier)
    except ValueError as exc:
        print(f"filter_pairs: {exc}", file=sys.stderr)
        return 2
    print("| direction | pairs | show the edit | kept | identity, all -> kept | halves' SSIM, all -> kept |")
    print("|---|---|---|---|---|---|")
    for direction, row in record["directions"].items():
        identity = (
            "n/a" if row["identity"][0] is None else f"{row['identity'][0]:.3f} -> {row['identity'][1]:.3f}"
        )
        shows = "n/a" if row["shows_edit"] is None else row["shows_edit"]
        print(f"| {direction} | {row['pairs']} | {shows} | {row['kept']} | {identity} | "
              f"{row['ssim'][0]:.3f} -> {row['ssim'][1]:.3f} |")  # fmt: skip
    print(
        f"kept {record['kept']} of {record['pairs']} pairs ({record['unreadable']} unreadable) in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
