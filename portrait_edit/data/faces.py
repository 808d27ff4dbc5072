"""Face datasets of the identity encoder (stage 1): FFHQ-style images (the mini world's face view is in
data/world_faces.py).

A batch (what IdentityConditioning reads):
    image     float (B, 3, S, S) in [-1, 1], the face (denoising target and CLIP input)
    gender    list[str] of B words ("man" / "woman")
    identity  long (B,) identity id (FFHQ: the image index, every image its own identity)

`FaceImagesDataModule`: a folder of images (FFHQ layout: any depth of .png / .jpg / .jpeg / .webp) or
WebDataset shards of `png` / `jpg` (+ optional `json` with "gender"). Gender comes from metadata where known
(`genders`: a JSON {image name (`images.image_files`: the file stem) or shard key: "man" / "woman"}, or the shard's json), else from CLIP
zero-shot with the CLIP named by `gender_clip`, computed once in setup (cached to `gender_cache`).
Corrupt images are skipped and counted (`collate_faces`), never a crash.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from portrait_edit.atomic import atomic_write_json
from portrait_edit.data.error_handler import COUNTS_FIELD, CountingErrorHandler
from portrait_edit.data.shard_pipeline import PairShardsMapDataset, resolve_shards
from portrait_edit.images import IMAGE_SUFFIXES, decode_image, image_files, load_image, square_face
from portrait_edit.models.token_splice import GENDER_WORDS
from portrait_edit.models.zero_shot import ZeroShotGender

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp", "src.png")  # src.png: the x_A of pair shards


class FaceImagesDataset(Dataset):
    """Faces from a folder of image files or from shards; item i -> {"image", "gender", "identity",
    "name"} or None when the image is corrupt (counted by `handler`)."""

    def __init__(self, root: str, image_size: int, handler: CountingErrorHandler | None = None) -> None:
        self.image_size = image_size
        self.handler = handler or CountingErrorHandler()
        path = Path(root)
        named = image_files(path) if path.is_dir() else {}
        self.files = list(named.values())
        self.shards = None
        if not self.files:
            if path.is_dir() and not any(path.glob("*.tar")):
                raise ValueError(
                    f"no face images under {root!r}: expected {', '.join(IMAGE_SUFFIXES)} files (any depth, the "
                    "FFHQ layout) or WebDataset shards (*.tar)"
                )
            urls = resolve_shards(
                root
            )  # a glob or brace pattern: raises, naming `root`, when nothing matches
            self.shards = PairShardsMapDataset(urls, self.handler, required=())
        self.names = list(named) if self.files else [k for _, k, _ in self.shards.index]
        if not self.names:
            raise ValueError(
                f"no face images in the shards {root!r}; regenerate or point at a folder of images"
            )
        self.genders = [""] * len(self.names)  # "" = unknown until metadata or zero-shot fills it in

    def __len__(self) -> int:
        return len(self.names)

    def _read(self, i: int) -> tuple[Image.Image, dict]:
        if self.shards is None:
            return load_image(self.files[i]), {}
        sample = self.shards[i]
        if sample is None:
            raise ValueError(f"sample {self.names[i]} cannot be read (see the warning above)")
        field = next((f for f in IMAGE_FIELDS if f in sample), None)
        if field is None:
            raise ValueError(f"sample {self.names[i]} has no image field {IMAGE_FIELDS}")
        return decode_image(sample[field], f"{self.names[i]}.{field}"), sample.get("json") or {}

    def metadata_gender(self, i: int) -> str:
        """The gender stored with sample i (shards' json), or ""."""
        if self.shards is None:
            return ""
        try:
            return str(self._read(i)[1].get("gender", ""))
        except ValueError:
            return ""

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        try:
            img, _ = self._read(i)
        except ValueError as exc:
            self.handler(exc)
            return None
        if self.shards is None:
            self.handler.count(None)
        return {
            "image": square_face(img, self.image_size),
            "gender": self.genders[i],
            "identity": i,
            "name": self.names[i],
        }


def collate_faces(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack face items, dropping corrupt (None) ones; the dropped count rides along like the shards'."""
    good = [x for x in items if x is not None]
    if not good:
        return None
    return {
        "image": torch.stack([x["image"] for x in good]),
        "gender": [x["gender"] for x in good],
        "identity": torch.tensor([x["identity"] for x in good]),
        COUNTS_FIELD: {"worker": 0, "seen": len(items), "skipped": len(items) - len(good)},
    }


class _Indexed(Dataset):
    """The images of some items of a face dataset (or a subclass, such as the edit inputs) with their
    indices: (index, image), or None for an unreadable item."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor] | None:
        item = self.dataset[self.indices[k]]
        return None if item is None or "image" not in item else (self.indices[k], item["image"])


def _collate_indexed(
    items: list[tuple[int, torch.Tensor] | None],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    good = [x for x in items if x is not None]
    return (torch.tensor([i for i, _ in good]), torch.stack([x for _, x in good])) if good else None


def face_loader(
    dataset: Dataset, batch_size: int, num_workers: int, seed: int, train: bool, collate_fn=None
) -> DataLoader:
    """The loader of a face datamodule: training shuffles (seeded by `seed`) and drops the last partial
    batch; validation keeps the order and every face."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        generator=torch.Generator().manual_seed(seed) if train else None,
        drop_last=train,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )


class FaceImagesDataModule(LightningDataModule):
    """FFHQ-style faces for the identity encoder (module docstring).

    Args:
        root: folder of images, or shards (a directory of tars, glob or brace pattern).
        image_size: side the faces are cropped and resized to (the SD resolution: 512 at SD 1.5).
        batch_size: faces per batch on each rank.
        num_workers: DataLoader workers per rank.
        genders: optional JSON file {file stem or shard key: "man" / "woman"}.
        gender_clip: CLIP source for zero-shot gender of faces without metadata (e.g.
            openai/clip-vit-large-patch14 or `mini`); None: every face needs metadata.
        clip_image_size, clip_image_mean, clip_image_std: how faces are shown to that CLIP (None: OpenAI's).
        gender_cache: JSON file the zero-shot genders are written to and read back from on later runs.
        val_samples: faces (the last by name) held out for validation, at most a tenth of the folder (a
            small folder keeps most of its faces to train on; the number used is logged); 0 disables it.
        seed: seeds the training shuffle.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 512,
        batch_size: int = 8,
        num_workers: int = 4,
        genders: str | None = None,
        gender_clip: str | None = None,
        clip_image_size: int = 224,
        clip_image_mean: list[float] | None = None,
        clip_image_std: list[float] | None = None,
        gender_cache: str | None = None,
        val_samples: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or val_samples < 0 or image_size < 8:
            raise ValueError(
                f"need batch_size >= 1, num_workers >= 0, val_samples >= 0, image_size >= 8; got "
                f"{batch_size}, {num_workers}, {val_samples}, {image_size}"
            )
        self.save_hyperparameters()
        self.dataset: FaceImagesDataset | None = None

    def setup(self, stage: str) -> None:
        if self.dataset is not None:
            return
        hp = self.hparams
        self.dataset = self.make_dataset()
        known = json.loads(Path(hp.genders).read_text()) if hp.genders else {}
        if hp.gender_cache and Path(hp.gender_cache).is_file():
            known = {**json.loads(Path(hp.gender_cache).read_text()), **known}
        ds = self.dataset
        ds.genders = [known.get(name) or ds.metadata_gender(i) for i, name in enumerate(ds.names)]
        bad = sorted({g for g in ds.genders if g and g not in GENDER_WORDS})
        if bad:
            raise ValueError(f"gender metadata of {hp.root!r} has words {bad}; use {list(GENDER_WORDS)}")
        missing = [i for i, g in enumerate(ds.genders) if not g]
        if missing:
            self._zero_shot(missing)

    def make_dataset(self) -> FaceImagesDataset:
        return FaceImagesDataset(self.hparams.root, self.hparams.image_size)

    def _zero_shot(self, missing: list[int]) -> None:
        hp, ds = self.hparams, self.dataset
        if hp.gender_clip is None:
            raise ValueError(
                f"{len(missing)} faces under {hp.root!r} have no gender (first: {ds.names[missing[0]]}); give "
                "`genders` (JSON name -> man/woman) or `gender_clip` for CLIP zero-shot"
            )
        classify = ZeroShotGender.load(
            hp.gender_clip,
            image_size=hp.clip_image_size,
            image_mean=hp.clip_image_mean,
            image_std=hp.clip_image_std,
        )
        loader = DataLoader(
            _Indexed(ds, missing), batch_size=64, num_workers=hp.num_workers, collate_fn=_collate_indexed
        )
        found: dict[str, str] = {}
        for batch in tqdm(loader, desc=f"zero-shot gender ({hp.gender_clip})", unit="batch"):
            if batch is None:
                continue
            indices, images = batch
            for i, word in zip(indices.tolist(), classify(images)):
                ds.genders[i] = found[ds.names[i]] = word
        counts = {w: ds.genders.count(w) for w in GENDER_WORDS}
        log.info("zero-shot gender of %d faces with %s: %s", len(found), hp.gender_clip, counts)
        if hp.gender_cache:
            atomic_write_json(hp.gender_cache, found)

    def _loader(self, indices: np.ndarray, train: bool) -> DataLoader:
        hp = self.hparams
        subset = torch.utils.data.Subset(self.dataset, indices.tolist())
        return face_loader(subset, hp.batch_size, hp.num_workers, hp.seed, train, collate_faces)

    def _split(self) -> int:
        if self.dataset is None:
            self.setup("fit")
        total, asked = len(self.dataset), self.hparams.val_samples
        held_out = min(asked, total // 10)
        if held_out < asked:
            log.info(
                "val_samples=%d of %d faces under %s: holding out %d (a tenth)",
                asked,
                total,
                self.hparams.root,
                held_out,
            )
        if total - held_out < self.hparams.batch_size:
            raise ValueError(
                f"{self.hparams.root!r} has {total} faces, {total - held_out} to train on: fewer than one batch "
                f"(batch_size={self.hparams.batch_size}); add faces or lower data.init_args.batch_size"
            )
        return total - held_out

    def train_dataloader(self) -> DataLoader:
        return self._loader(np.arange(self._split()), train=True)

    def val_dataloader(self) -> DataLoader | list:
        split = self._split()
        return (
            self._loader(np.arange(split, len(self.dataset)), train=False)
            if split < len(self.dataset)
            else []
        )
