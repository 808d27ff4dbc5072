"""Inputs of mask-guided editing (`EditSystem`): portraits from a folder of images or from shards (a
pair shard's x_A, `src.png`), each with a gender word for the prompts ([X] in "a woman, santa claus
costume") from the shards' json, a genders JSON file, or CLIP zero-shot (as `FaceImagesDataModule`).

A predict batch: {"image": float (B, 3, S, S) in [-1, 1], "gender": [...], "name": [...]} plus
"failed": [(name, reason), ...] for the inputs that could not be read (the job goes on without them).
Inputs whose outputs are complete in `output_dir` (their `edit.json` exists) are skipped, so a rerun only
does what is left.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Subset

from portrait_edit.data.faces import FaceImagesDataModule, FaceImagesDataset
from portrait_edit.images import square_face

log = logging.getLogger(__name__)

DONE_FILE = "edit.json"  # written last for each input: its presence means the input is finished


class EditInputsDataset(FaceImagesDataset):
    """Item i -> {"image", "gender", "name"}, or {"name", "error"} when the image cannot be read."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            img, _ = self._read(i)
            image = square_face(img, self.image_size)
        except (ValueError, OSError) as exc:  # warned about once, by the writer, and listed in its report
            return {"name": self.names[i], "error": str(exc)}
        return {"image": image, "gender": self.genders[i], "name": self.names[i]}


def collate_inputs(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [x for x in items if "error" not in x]
    return {
        "image": torch.stack([x["image"] for x in good]) if good else torch.zeros(0, 3, 1, 1),
        "gender": [x["gender"] for x in good],
        "name": [x["name"] for x in good],
        "failed": [(x["name"], x["error"]) for x in items if "error" in x],
    }


class EditInputsDataModule(FaceImagesDataModule):
    """Portraits to edit (module docstring).

    Args:
        root: folder of images, or shards (directory of tars, glob or brace pattern).
        output_dir: where the edits go: finished inputs there are skipped. None: the folder of the run's
            prediction writer (the edit configs' EditWriter), so a config names it once.
        image_size: side the portraits are cropped and resized to (the model's resolution).
        batch_size: portraits per predict_step (each is edited in every direction in one batch).
        limit: edit only the first `limit` inputs (by name); None: all.
        other arguments: as FaceImagesDataModule (genders, zero-shot CLIP and its cache).
    """

    def __init__(
        self,
        root: str,
        output_dir: str | None = None,
        image_size: int = 512,
        batch_size: int = 4,
        num_workers: int = 2,
        limit: int | None = None,
        genders: str | None = None,
        gender_clip: str | None = None,
        clip_image_size: int = 224,
        clip_image_mean: list[float] | None = None,
        clip_image_std: list[float] | None = None,
        gender_cache: str | None = None,
    ) -> None:
        super().__init__(
            root=root, image_size=image_size, batch_size=batch_size, num_workers=num_workers, genders=genders,
            gender_clip=gender_clip, clip_image_size=clip_image_size, clip_image_mean=clip_image_mean,
            clip_image_std=clip_image_std, gender_cache=gender_cache, val_samples=0,
        )  # fmt: skip
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.output_dir = output_dir
        self.limit = limit

    def writer_folder(self) -> str:
        """The output_dir of the run's one prediction writer."""
        trainer = getattr(self, "trainer", None)
        writers = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, BasePredictionWriter)]
        folders = {str(getattr(c, "output_dir", "")) for c in writers} - {""}
        if len(folders) != 1:
            raise ValueError(
                "EditInputsDataModule needs the edits' folder to skip finished inputs: set "
                f"data.init_args.output_dir, or give the run one prediction writer (found {sorted(folders)})"
            )
        return folders.pop()

    def make_dataset(self) -> EditInputsDataset:
        return EditInputsDataset(self.hparams.root, self.hparams.image_size)

    def predict_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("predict")
        names = self.dataset.names
        order = sorted(range(len(names)), key=lambda i: names[i])[: self.limit]
        out = self.output_dir or self.writer_folder()
        todo = [i for i in order if not (Path(out) / names[i] / DONE_FILE).is_file()]
        if len(todo) < len(order):
            log.info("%d of %d inputs already edited in %s: skipped", len(order) - len(todo), len(order), out)
        return DataLoader(
            Subset(self.dataset, todo), batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers,
            collate_fn=collate_inputs,
        )  # fmt: skip
