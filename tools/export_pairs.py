"""Pair shards <-> a Hugging Face `datasets` dataset with diffusers' InstructPix2Pix columns
(portrait_edit/data/hf_pairs.py):

    python tools/export_pairs.py data/mini/pairs --out outputs/mini/pairs_hf          # ours -> datasets
    accelerate launch train_instruct_pix2pix.py --train_data_dir outputs/mini/pairs_hf ...   # (diffusers' example)
    python tools/export_pairs.py --from-dataset outputs/some_ip2p_dataset --out outputs/pairs_imported --size 512
"""

from __future__ import annotations

import argparse
import sys

from portrait_edit.data.hf_pairs import dataset_to_pairs, pairs_to_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="?", help="pair shards to export: a directory, glob or brace pattern")
    parser.add_argument(
        "--from-dataset", help="import instead: a save_to_disk folder or a load_dataset path / id"
    )
    parser.add_argument("--split", default="train", help="the split to import")
    parser.add_argument("--size", type=int, default=None, help="import: resize the images to SIZE x SIZE")
    parser.add_argument("--shard-size", type=int, default=1000, help="import: pairs per shard")
    parser.add_argument(
        "--out", required=True, help="the dataset folder (export) or the shard folder (import)"
    )
    args = parser.parse_args(argv)
    if (args.shards is None) == (args.from_dataset is None):
        parser.error("give either shards to export or --from-dataset to import")
    try:
        if args.from_dataset:
            count = dataset_to_pairs(args.from_dataset, args.out, args.split, args.shard_size, args.size)
            print(f"wrote {count} pairs as shards into {args.out}")
        else:
            print(f"wrote the dataset {pairs_to_dataset(args.shards, args.out)}")
    except ValueError as exc:
        raise SystemExit(f"export_pairs: error: {exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
