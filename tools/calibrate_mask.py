"""Measures the lambdas an MCDM export's mask can use and records them in its mcdm.json ("mask_range").

    python tools/calibrate_mask.py --mcdm data/mini/mcdm [--pairs world] [--inputs 10] [--write]

The mask is the blurred, per-image normalised prediction difference cut at lambda (paper §3.4): below
the highest minimum of those maps some portrait gets a mask over every pixel, at or above the lowest
peak some portrait gets none (no edit at all). Both are measured on calibration portraits with the
export's scales and mask_at: the world's tuning stream (TUNE_SEED, apart from the evaluation's) in every
direction, or validation pair shards. With --write, the edit stage then refuses a lambda outside the
range with a message naming it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from portrait_edit.data.eval_pairs import WORLD, EvalPairsDataModule
from portrait_edit.evaluation.held_out import TUNE_SEED
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.models.mcdm_export import MCDMExportSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mcdm", required=True, help="an MCDM export folder (with mcdm.json)")
    parser.add_argument("--pairs", default=WORLD, help="'world' or validation pair shards")
    parser.add_argument("--inputs", type=int, default=10, help="world portraits (each in all 8 directions)")
    parser.add_argument("--write", action="store_true", help="record the range in <mcdm>/mcdm.json")
    args = parser.parse_args()
    editor = MCDMEditor.from_pretrained(args.mcdm)
    data = EvalPairsDataModule(args.pairs, inputs=args.inputs, batch_size=16, seed=TUNE_SEED)
    data.setup("validate")
    low, high = 0.0, 1.0
    for batch in tqdm(data.val_dataloader(), desc="calibrating the mask", unit="batch"):
        if len(batch["source"]):
            a, b = editor.measure_mask_range(
                batch["source"], batch["p_a"], batch["p_b"], batch["seed"].tolist()
            )
            low, high = max(low, a), min(high, b)
    print(f"usable lambda range of {args.mcdm}: [{low:.3f}, {high:.3f})")
    if args.write:
        measured = {"pairs": args.pairs, "inputs": args.inputs, "seed": TUNE_SEED}
        settings = MCDMExportSettings.load(args.mcdm)
        settings.replace(mask_range=[round(low, 4), round(high, 4)], mask_range_measured=measured).save(
            args.mcdm
        )
        print(f"wrote mask_range into {Path(args.mcdm) / 'mcdm.json'}")


if __name__ == "__main__":
    main()
