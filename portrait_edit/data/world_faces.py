"""The mini world's face view: the FFHQ stand-in of the identity encoder (stage 1).

`WorldFacesDataModule`: `make_face` renders of `identities` identities x `views` views (pose and
expression differ per view), rendered once in setup; validation shows `val_identities` unseen identities
twice each, with different expressions, so val/identity_top1 measures retrieval across views.

A batch holds what data/faces.py's do (image, gender, identity), plus:
    expression  list[str] of B phrases: what the face does in the words of the expression task's captions
                ("neutral expression", "angry", ...), for templates such as "a {gender}, {expression}"
    pose        float (B, 3, S, S) in [-1, 1] (with `poses`): the face's OpenPose drawing, for an identity
                conditioning that shows the pose to a frozen ControlNet
    reference   float (B, 3, S, S) in [-1, 1] (training faces with `cross_view`): another view of the same
                person, drawn at random; c_id is taken from it and conditions the denoising of `image`
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from portrait_edit.data.faces import face_loader
from portrait_edit.data.jobs import sample_seed
from portrait_edit.images import to_tensor
from portrait_edit.tasks import load_templates
from portrait_edit.world import Pose, draw_pose, make_face, pose_keypoints


class WorldFacesDataset(Dataset):
    """Rendered faces held in memory: images uint8 (N, S, S, 3), genders, identity ids, expression phrases."""

    def __init__(
        self,
        images: np.ndarray,
        genders: list[str],
        identities: np.ndarray,
        expressions: list[str],
        poses: np.ndarray | None = None,
        cross_view: bool = False,
    ) -> None:
        """poses: uint8 (N, S, S, 3) OpenPose drawings of the faces, or None. cross_view: each item also
        carries a "reference", another face of the same identity drawn at random (torch's RNG)."""
        self.images, self.genders, self.identities, self.expressions = (
            images,
            genders,
            identities,
            expressions,
        )
        self.poses = poses
        self.cross_view = cross_view
        self.others: dict[int, list[int]] = {}  # face index -> the indices of its identity's other faces
        if cross_view:
            by_identity: dict[int, list[int]] = {}
            for i, identity in enumerate(identities.tolist()):
                by_identity.setdefault(identity, []).append(i)
            lonely = [k for k, faces in by_identity.items() if len(faces) < 2]
            if lonely:
                raise ValueError(
                    f"cross_view needs >= 2 faces per identity; identities {lonely[:5]} have one"
                )
            self.others = {i: [j for j in faces if j != i] for faces in by_identity.values() for i in faces}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {
            "image": to_tensor(self.images[i]),
            "gender": self.genders[i],
            "identity": int(self.identities[i]),
            "expression": self.expressions[i],
        }
        if self.poses is not None:
            item["pose"] = to_tensor(self.poses[i])
        if self.cross_view:
            others = self.others[i]
            j = others[int(torch.randint(len(others), ()))]
            item["reference"] = to_tensor(self.images[j])
        return item


def expression_phrase(expression: str | None) -> str:
    """A world face's expression (None: neutral) in the words of the expression task's captions."""
    templates = load_templates("expression")
    return templates.source_description if expression is None else templates.description(expression)


def render_faces(
    identity_seeds: list[int],
    views: int,
    size: int,
    distinct_expressions: bool = False,
    poses: bool = False,
    cross_view: bool = False,
) -> WorldFacesDataset:
    """`views` renders of each identity (view seeds 0, 1, ...; with `distinct_expressions`, later views
    are skipped until their expression differs from every earlier view's); with `poses`, each face's
    OpenPose drawing too; with `cross_view`, items carry a reference view (WorldFacesDataset)."""
    images, genders, ids, expressions, drawings = [], [], [], [], []
    for n, seed in enumerate(
        tqdm(identity_seeds, desc="rendering world faces", unit="identity", leave=False)
    ):
        seen: set = set()
        view = 0
        while len(seen) < views:
            face = make_face(seed, view, size=size)
            view += 1
            if distinct_expressions and face.meta["expression"] in seen:
                continue
            seen.add(face.meta["expression"] if distinct_expressions else view)
            images.append(face.image)
            genders.append(face.gender)
            ids.append(n)
            expressions.append(expression_phrase(face.meta["expression"]))
            if poses:
                keypoints = pose_keypoints(Pose.from_dict(face.meta["pose"]), size)
                drawings.append(draw_pose(keypoints, size, size))
    return WorldFacesDataset(
        np.stack(images),
        genders,
        np.asarray(ids),
        expressions,
        np.stack(drawings) if poses else None,
        cross_view=cross_view,
    )


class WorldFacesDataModule(LightningDataModule):
    """The mini world's face view (module docstring).

    Args:
        identities: training identities (identity seeds from the stream `seed`).
        views: renders per training identity.
        val_identities: unseen identities (stream `seed + 1`) shown twice each; 0 disables validation.
        image_size: render side.
        batch_size: faces per batch on each rank.
        num_workers: DataLoader workers per rank.
        seed: identity stream and training shuffle.
        poses: give each face's OpenPose drawing ("pose"), for a conditioning with a pose ControlNet.
        cross_view: training faces carry a "reference", another view of the same person (views >= 2): c_id
            is read from it and must help denoise this view, so only what the views share (the identity)
            pays, not this view's pose or expression. Validation faces carry none.
    """

    def __init__(
        self,
        identities: int = 2000,
        views: int = 4,
        val_identities: int = 100,
        image_size: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        poses: bool = False,
        cross_view: bool = False,
    ) -> None:
        super().__init__()
        if min(identities, views, batch_size) < 1 or val_identities < 0 or num_workers < 0:
            raise ValueError(
                f"need identities, views, batch_size >= 1 and val_identities, num_workers >= 0; got {identities}, "
                f"{views}, {batch_size}, {val_identities}, {num_workers}"
            )
        self.save_hyperparameters()
        self.train_set: WorldFacesDataset | None = None
        self.val_set: WorldFacesDataset | None = None

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        train_seeds = [sample_seed(hp.seed, i) for i in range(hp.identities)]
        val_seeds = [sample_seed(hp.seed + 1, i) for i in range(hp.val_identities)]
        self.train_set = render_faces(
            train_seeds, hp.views, hp.image_size, poses=hp.poses, cross_view=hp.cross_view
        )
        self.val_set = (
            render_faces(val_seeds, 2, hp.image_size, distinct_expressions=True, poses=hp.poses)
            if val_seeds
            else None
        )

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        hp = self.hparams
        return face_loader(dataset, hp.batch_size, hp.num_workers, hp.seed, train)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup("validate")
        return self._loader(self.val_set, train=False) if self.val_set is not None else []
