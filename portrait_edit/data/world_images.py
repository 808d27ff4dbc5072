"""Mini-world images with captions, labels and poses: the training data of the mini base models.

Each pair shard sample (written by `configs/mini/base_pairs.yaml`) gives two items:
- its source x_A (`src.png`) with caption p_a and label 0,
- its exact target (`gt.png`) with caption p_b and label 1 + DIRECTIONS.index(direction),
both with the pair's pose image and keypoints (the edit never moves the pose).

A batch (the contract shared by the VAE, CLIP, classifier and diffusion systems):
    image      float (B, 3, H, W) in [-1, 1]
    caption    list[str] of B prompts
    label      long (B,): 0 source, 1..8 the DIRECTIONS in order
    gender     list[str] of B words ("man" / "woman")
    pose       float (B, 3, H, W) in [-1, 1], the OpenPose drawing
    keypoints  float (B, 18, 3): x, y in pixels of the H x W image and visibility (world.pose_keypoints)
    skin       float (B, 3): the person's skin colour, RGB in [0, 1] (world identity)
    hair       float (B, 3): the person's hair colour, RGB in [0, 1] (world identity)
    index      long (B,): the item's index in its dataset (the key of DiffusionSystem's latent cache)

With `describe_p` > 0 a share of the items carry the person's description after the gender word
("a man with light skin and short black hair, angry": `world.describe`, as the validation pairs' prompts
do), so a text-to-image model trained on them knows the words for what a person looks like, as Stable
Diffusion does. Which items are described is fixed by the seed.

The shards are read once into memory as uint8 (12,000 pairs are about 300 MB) and served by map-style
datasets, so Lightning's DistributedSampler splits them across ranks. Horizontal flips are never applied:
they would swap the left and right keypoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from portrait_edit.data.error_handler import CountingErrorHandler
from portrait_edit.data.jobs import sample_key
from portrait_edit.data.sample_codec import decode_sample
from portrait_edit.data.shard_pipeline import iter_samples, resolve_shards
from portrait_edit.images import to_tensor, to_uint8
from portrait_edit.tasks import DIRECTIONS, LABELS, TASKS, caption, prompts_for, task_for_direction
from portrait_edit.world import Pose, WorldPair, draw_pose, pose_keypoints
from portrait_edit.world.describe import describe_identity
from portrait_edit.world.identity import GENDERS, Identity

log = logging.getLogger(__name__)

NEEDED_FIELDS = ("src.png", "gt.png", "json")
MAKE_SHARDS = "portrait-edit predict --config configs/mini/base_pairs.yaml"


def caption_classes(genders: tuple[str, ...] = GENDERS) -> tuple[list[str], list[int]]:
    """Every caption of the world and its class, the answer key of caption retrieval.

    A class is (gender, label): class = gender index * 9 + label. The source label has TWO captions per
    gender ("a man, normal costume" from costume pairs, "a man, neutral expression" from expression
    pairs) that describe the same kind of image, so both belong to the source class of that gender.

    Returns:
        captions: 2 genders x (2 source + 8 direction) = 20 strings.
        classes: their class ids, in [0, 9 * len(genders)).
    """
    captions, classes = [], []
    for g, gender in enumerate(genders):
        for task in TASKS:
            captions.append(caption(gender, None, task))
            classes.append(g * len(LABELS))
        for d, direction in enumerate(DIRECTIONS):
            captions.append(caption(gender, direction, task_for_direction(direction)))
            classes.append(g * len(LABELS) + 1 + d)
    return captions, classes


def image_classes(genders: list[str], labels: torch.Tensor) -> torch.Tensor:
    """Class id gender index * 9 + label of each image (as in `caption_classes`), long (B,)."""
    unknown = sorted(set(genders) - set(GENDERS))
    if unknown:
        raise ValueError(f"unknown gender word(s) {unknown}; the world's genders are {GENDERS}")
    index = torch.tensor([GENDERS.index(g) for g in genders], device=labels.device)
    return index * len(LABELS) + labels


@dataclass
class PairArrays:
    """Pairs held in memory, sorted by key. Images uint8 (N, H, W, 3); keypoints float32 (N, 18, 3)."""

    keys: list[str]
    src: np.ndarray
    gt: np.ndarray
    pose: np.ndarray
    keypoints: np.ndarray
    p_a: list[str]
    p_b: list[str]
    labels: np.ndarray  # int64 (N,): label of gt (1..8)
    genders: list[str]
    skin: np.ndarray  # uint8 (N, 3): the identity's skin colour
    hair: np.ndarray  # uint8 (N, 3): the identity's hair colour
    descriptions: list[str]  # the identity in words (`describe_identity`), following the gender word

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_pairs(cls, pairs: list[WorldPair]) -> PairArrays:
        """The arrays of rendered world pairs held in memory (no shards), keyed by position, e.g. for a
        quick experiment or a test; the same fields `read_pairs` fills from shards."""
        size = pairs[0].src.shape[0]
        return cls(
            keys=[sample_key(i) for i in range(len(pairs))],
            src=np.stack([p.src for p in pairs]),
            gt=np.stack([p.gt for p in pairs]),
            pose=np.stack([draw_pose(p.keypoints, size, size) for p in pairs]),
            keypoints=np.stack([p.keypoints for p in pairs]).astype(np.float32),
            p_a=[p.prompts["p_a"] for p in pairs],
            p_b=[p.prompts["p_b"] for p in pairs],
            labels=np.asarray([1 + DIRECTIONS.index(p.direction) for p in pairs], np.int64),
            genders=[p.gender for p in pairs],
            skin=np.asarray([p.meta["identity"]["skin"] for p in pairs], np.uint8),
            hair=np.asarray([p.meta["identity"]["hair_colour"] for p in pairs], np.uint8),
            descriptions=[describe_identity(Identity.from_dict(p.meta["identity"])) for p in pairs],
        )

    def subset(self, index: np.ndarray) -> PairArrays:
        pick = [int(i) for i in index]
        return PairArrays(
            keys=[self.keys[i] for i in pick],
            src=self.src[index],
            gt=self.gt[index],
            pose=self.pose[index],
            keypoints=self.keypoints[index],
            p_a=[self.p_a[i] for i in pick],
            p_b=[self.p_b[i] for i in pick],
            labels=self.labels[index],
            genders=[self.genders[i] for i in pick],
            skin=self.skin[index],
            hair=self.hair[index],
            descriptions=[self.descriptions[i] for i in pick],
        )


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS))


def read_pairs(shards: str, image_size: int = 64, max_error_rate: float = 0.05) -> PairArrays:
    """Read every pair of a shard set into memory, sorted by key; corrupt samples are skipped and counted.

    Keypoints are recomputed from the world meta (`json["world"]["pose"]`) at `image_size`; the pose image
    is the shard's `pose.png` when its size matches, else redrawn from those keypoints.

    Raises:
        ValueError: no shards at `shards` (the message says how to write them).
    """
    try:
        urls = resolve_shards(shards)
    except ValueError:
        raise ValueError(
            f"no pair shards found at {shards!r}; write them first with `{MAKE_SHARDS}`"
        ) from None
    handler = CountingErrorHandler(max_error_rate=max_error_rate)
    rows: list[tuple] = []
    for raw in iter_samples(urls, handler=handler):
        handler.count(raw)
        try:
            # Decode only what is used (not tgt.png or edit_mask.png).
            wanted = {k: v for k, v in raw.items() if k.startswith("__") or k in (*NEEDED_FIELDS, "pose.png")}
            sample = decode_sample(wanted, required=NEEDED_FIELDS)
            meta = sample["json"]
            direction = meta["direction"]
            label = 1 + DIRECTIONS.index(direction)
            keypoints = pose_keypoints(Pose.from_dict(meta["world"]["pose"]), image_size)
            pose = to_uint8(sample["pose.png"]) if "pose.png" in sample else None
            if pose is None or pose.shape[0] != image_size:
                pose = draw_pose(keypoints, image_size, image_size)
            src = _resized(to_uint8(sample["src.png"]), image_size)
            gt = _resized(to_uint8(sample["gt.png"]), image_size)
            person = meta["world"]["identity"]
            rows.append(
                (sample["__key__"], src, gt, pose, keypoints, meta["p_a"], meta["p_b"], label, meta["gender"],
                 person["skin"], person["hair_colour"], describe_identity(Identity.from_dict(person)))
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            # A sample without world meta or prompts is as unusable as a corrupt one.
            handler(
                exc if isinstance(exc, ValueError) else ValueError(f"sample {raw.get('__key__')}: {exc!r}")
            )
    if not rows:
        raise ValueError(f"the shards at {shards!r} hold no usable pairs; rewrite them with `{MAKE_SHARDS}`")
    log.info(
        "read %d pairs from %d shard(s) at %s (%d skipped)", len(rows), len(urls), shards, handler.skipped
    )
    rows.sort(key=lambda row: row[0])
    keys, src, gt, pose, kps, p_a, p_b, labels, genders, skin, hair, descriptions = zip(*rows)
    return PairArrays(
        keys=list(keys),
        src=np.stack(src),
        gt=np.stack(gt),
        pose=np.stack(pose),
        keypoints=np.stack(kps).astype(np.float32),
        p_a=list(p_a),
        p_b=list(p_b),
        labels=np.asarray(labels, np.int64),
        genders=list(genders),
        skin=np.asarray(skin, np.uint8),
        hair=np.asarray(hair, np.uint8),
        descriptions=list(descriptions),
    )


def _to_float(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return to_tensor(image)


class WorldImagesDataset(Dataset):
    """Item 2k is pair k's source (label 0, p_a), item 2k + 1 its exact target (label 1..8, p_b).

    With `describe_p` > 0, that share of the items (drawn once from `seed`) has its caption rebuilt with
    the person's description after the gender word.
    """

    def __init__(self, pairs: PairArrays, describe_p: float = 0.0, seed: int = 0) -> None:
        if not 0 <= describe_p <= 1:
            raise ValueError(f"describe_p must be in [0, 1], got {describe_p}")
        self.pairs = pairs
        self.described = np.random.default_rng(seed).random(2 * len(pairs)) < describe_p

    def caption(self, i: int) -> str:
        k, is_target = divmod(i, 2)
        p = self.pairs
        if not self.described[i]:
            return p.p_b[k] if is_target else p.p_a[k]
        prompts = prompts_for(LABELS[int(p.labels[k])], p.genders[k], description=p.descriptions[k])
        return prompts["p_b"] if is_target else prompts["p_a"]

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, is_target = divmod(i, 2)
        p = self.pairs
        return {
            "image": _to_float(p.gt[k] if is_target else p.src[k]),
            "caption": self.caption(i),
            "label": int(p.labels[k]) if is_target else 0,
            "gender": p.genders[k],
            "pose": _to_float(p.pose[k]),
            "keypoints": torch.from_numpy(p.keypoints[k]),
            "skin": torch.from_numpy(p.skin[k]).float() / 255.0,
            "hair": torch.from_numpy(p.hair[k]).float() / 255.0,
            "index": i,
        }


class WorldImagesDataModule(LightningDataModule):
    """Mini-world images from pair shards (batch contract in the module docstring).

    The last `val_samples` pairs by key are held out for validation and never trained on; pair seeds
    differ per key, so validation identities and poses are unseen in training.
    """

    def __init__(
        self,
        shards: str,
        batch_size: int = 64,
        num_workers: int = 1,
        image_size: int = 64,
        val_samples: int = 512,
        seed: int = 0,
        describe_p: float = 0.0,
    ) -> None:
        """
        Args:
            shards: pair shards: a directory, glob or brace pattern (see `resolve_shards`).
            batch_size: images per batch on each rank (each pair gives two images).
            num_workers: DataLoader workers per rank (0 serves batches from the main process).
            image_size: image side; stored images of another size are resized (keypoints follow).
            val_samples: pairs (the last by key) held out for validation; 0 disables validation.
            seed: seeds the training shuffle and the choice of described items.
            describe_p: share of the training items whose caption describes the person (validation items
                keep the plain captions).
        """
        super().__init__()
        if batch_size < 1 or num_workers < 0 or val_samples < 0 or image_size < 8:
            raise ValueError(
                f"need batch_size >= 1, num_workers >= 0, val_samples >= 0, image_size >= 8; got "
                f"{batch_size}, {num_workers}, {val_samples}, {image_size}"
            )
        self.shards = shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.val_samples = val_samples
        self.seed = seed
        self.describe_p = describe_p
        self.train_set: WorldImagesDataset | None = None
        self.val_set: WorldImagesDataset | None = None

    def setup(self, stage: str) -> None:
        if self.train_set is not None:  # read once, whatever the stage
            return
        pairs = read_pairs(self.shards, self.image_size)
        if self.val_samples >= len(pairs):
            raise ValueError(
                f"val_samples={self.val_samples} leaves no training pairs: the shards at {self.shards!r} hold "
                f"{len(pairs)}; lower val_samples or write more pairs"
            )
        split = len(pairs) - self.val_samples
        self.train_set = WorldImagesDataset(pairs.subset(np.arange(split)), self.describe_p, self.seed)
        self.val_set = WorldImagesDataset(pairs.subset(np.arange(split, len(pairs))))

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            generator=generator,
            drop_last=train,  # equal batch sizes: the contrastive loss sees the same number of negatives
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            self.setup("validate")
        if self.val_samples == 0:
            return []
        assert self.val_set is not None
        return self._loader(self.val_set, train=False)
