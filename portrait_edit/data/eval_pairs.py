"""Evaluation pairs (paper §4): an input x_A, the target x_B it should be edited to, and the prompts.

Two sources, one item layout:
- "world": held-out mini-world portraits (a seed stream no training stage uses), each edited in every
  direction of `directions`; the target is the EXACT edited render and the true edit region is known, so
  the mini world adds SSIM / PSNR to the perfect target, preservation outside the true region and mask IoU.
- shards: generated validation pairs (`generate_val.yaml`): x_A = `src.png`, x_B = `tgt.png`, prompts and
  direction from the json; no true region.

An item: {"index": int, "seed": int (the edit's seed, the same for every method), "source", "target":
float (3, S, S) in [-1, 1], "region": float (S, S) in {0, 1} (all -1 when unknown), "p_a", "p_b",
"direction"}. Batches are dicts of stacked tensors and lists; a corrupt shard sample is skipped and
counted (the batch then simply holds fewer items).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from portrait_edit.data.error_handler import CountingErrorHandler
from portrait_edit.data.shard_pipeline import PairShardsMapDataset, resolve_shards
from portrait_edit.evaluation.held_out import EVAL_SEED, edit_seed, held_out_pair
from portrait_edit.images import to_tensor, to_uint8
from portrait_edit.tasks import DIRECTIONS, prompts_for

WORLD = "world"
FIELDS = ("src.png", "tgt.png", "json")


class WorldEvalDataset(Dataset):
    """Item i: held-out portrait i // D edited in direction i % D (D = len(directions))."""

    def __init__(self, inputs: int, directions: list[str], size: int = 64, seed: int = EVAL_SEED) -> None:
        self.inputs, self.directions, self.size, self.seed = inputs, list(directions), size, seed

    def __len__(self) -> int:
        return self.inputs * len(self.directions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, d = divmod(i, len(self.directions))
        direction = self.directions[d]
        pair = held_out_pair(k, direction, self.size, self.seed)
        prompts = prompts_for(direction, pair.gender)
        return {
            "index": i, "seed": edit_seed(i, self.seed), "source": to_tensor(pair.src),
            "target": to_tensor(pair.gt), "region": torch.from_numpy(pair.edit_mask).float(),
            "p_a": prompts["p_a"], "p_b": prompts["p_b"], "direction": direction,
        }  # fmt: skip


class ShardEvalDataset(Dataset):
    """Item i: validation pair i of the shards (in shard order), None when it cannot be read."""

    def __init__(self, shards: str, seed: int = EVAL_SEED) -> None:
        self.handler = CountingErrorHandler()
        self.pairs = PairShardsMapDataset(resolve_shards(shards), self.handler, required=FIELDS)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        sample = self.pairs[i]
        if sample is None:
            return None
        meta = sample["json"]
        source, target = to_uint8(sample["src.png"]), to_uint8(sample["tgt.png"])
        return {
            "index": i, "seed": edit_seed(i, self.seed), "source": to_tensor(source), "target": to_tensor(target),
            "region": torch.full(source.shape[:2], -1.0), "p_a": meta["p_a"], "p_b": meta["p_b"],
            "direction": meta["direction"],
        }  # fmt: skip


def collate_eval(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    good = [x for x in items if x is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(good)}
    for key in ("index", "seed", "source", "target", "region", "p_a", "p_b", "direction"):
        values = [x[key] for x in good]
        if key in ("index", "seed"):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif key in ("source", "target", "region"):
            batch[key] = torch.stack(values) if values else torch.zeros(0)
        else:
            batch[key] = values
    return batch


class EvalPairsDataModule(LightningDataModule):
    """Evaluation pairs for `validate` (module docstring).

    Args:
        source: "world" (held-out mini-world portraits) or validation pair shards (directory, glob, braces).
        inputs: world only: held-out portraits, each edited in every direction.
        directions: world only: the edit directions (default: all 8).
        image_size: world only: render size.
        batch_size: pairs per validation step (each method edits them all).
        num_workers: DataLoader workers.
        seed: the evaluation stream (world portraits and the edits' seeds).
    """

    def __init__(
        self,
        source: str = WORLD,
        inputs: int = 100,
        directions: list[str] | None = None,
        image_size: int = 64,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = EVAL_SEED,
    ) -> None:
        super().__init__()
        directions = list(directions or DIRECTIONS)
        unknown = [d for d in directions if d not in DIRECTIONS]
        if unknown or inputs < 1 or batch_size < 1:
            raise ValueError(
                f"need known directions ({list(DIRECTIONS)}), inputs >= 1, batch_size >= 1; got {unknown}, "
                f"{inputs}, {batch_size}"
            )
        self.source, self.inputs, self.directions = source, inputs, directions
        self.image_size, self.batch_size, self.num_workers, self.seed = (
            image_size,
            batch_size,
            num_workers,
            seed,
        )
        self.dataset: Dataset | None = None

    def setup(self, stage: str) -> None:
        if self.dataset is None:
            if self.source == WORLD:
                self.dataset = WorldEvalDataset(self.inputs, self.directions, self.image_size, self.seed)
            else:
                self.dataset = ShardEvalDataset(self.source, self.seed)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
            collate_fn=collate_eval,
        )  # fmt: skip
