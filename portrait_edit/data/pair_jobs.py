"""Jobs of paired data generation: direction x identity source x pose, one per global sample index.

Every field of a job comes from the global index (house rule 10), so 1 or N ranks generate the same
pairs: the direction cycles through `directions`; the pose id and the identity are drawn from the stream
[seed, index, 11]. Identities are mini-world people (`faces: world`, identity seeds from the stream
[seed + 1, i] for i < `identities`, so the same people recur across pairs) or face images in a folder
(FFHQ: `faces: /path`, genders from a JSON {file stem: man/woman}, e.g. the identity stage's zero-shot
cache). Prompts p / p_a / p_b come from the task's templates (data/prompts/<task>.json).

Validation-set mode (paper §4): with `identity_samples` = 100 the first 100 pairs carry identity words and
the rest none, but a detailed person description after the gender word instead (world people: their
own description, `world.describe`; face folders: one of data/prompts/descriptions/people.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from portrait_edit.data.jobs import Job, JobsDataModule, sample_seed
from portrait_edit.data.pose_bank import PoseBank
from portrait_edit.images import IMAGE_SUFFIXES, image_files
from portrait_edit.tasks import DIRECTIONS, TASKS, person_descriptions, prompts_for, task_for_direction
from portrait_edit.world.describe import describe_identity
from portrait_edit.world.identity import identity_from_seed

WORLD = "world"


class PairJobsDataModule(JobsDataModule):
    """Args:
    num_samples: pairs to generate over all ranks.
    pose_bank: the pose bank JSON (tools/make_pose_bank.py; the mini one is data/mini/pose_bank.json).
    task: `costume`, `expression`, or None for both (the directions of `directions` must belong to it).
    directions: the edit directions to cycle through (None: every direction of the task).
    faces: `world` for mini-world identities, or a folder of face images.
    identities: how many distinct world identities to draw from (faces: world).
    genders: JSON {image name (the file stem, `images.image_files`): man/woman} for a face folder.
    identity_samples: validation-set mode: pairs [0, identity_samples) use identity words, the others a
        person description instead; None: every pair uses identity words.
    shard_size, batch_size, seed: as in JobsDataModule.
    """

    def __init__(
        self,
        num_samples: int,
        pose_bank: str,
        task: str | None = None,
        directions: list[str] | None = None,
        faces: str = WORLD,
        identities: int = 1000,
        genders: str | None = None,
        identity_samples: int | None = None,
        shard_size: int = 100,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__(num_samples=num_samples, shard_size=shard_size, batch_size=batch_size, seed=seed)
        allowed = TASKS[task] if task is not None else DIRECTIONS
        self.directions = list(directions or allowed)
        bad = [d for d in self.directions if d not in allowed]
        if bad or not self.directions:
            raise ValueError(
                f"directions {bad or self.directions} are not directions of task {task!r}: {list(allowed)}"
            )
        self.bank = PoseBank.load(pose_bank)
        self.pose_bank_path = pose_bank
        self.faces = faces
        self.identity_samples = identity_samples
        self.descriptions = person_descriptions() if identity_samples is not None else []
        self.identities = identities
        self.files: list[tuple[str, Path]] = []  # (name, path): the genders file's key and the image
        self.genders: dict[str, str] = {}
        if faces != WORLD:
            self.files = list(image_files(faces).items())
            if not self.files:
                raise ValueError(f"no face images ({', '.join(IMAGE_SUFFIXES)}) under {faces!r}")
            if genders is None:
                raise ValueError(
                    f"face folder {faces!r} needs `genders` (JSON file stem -> man/woman), e.g. the identity "
                    "stage's gender_cache"
                )
            self.genders = json.loads(Path(genders).read_text())
        elif identities < 1:
            raise ValueError(f"identities must be >= 1, got {identities}")

    def make_job(self, index: int) -> Job:
        job = super().make_job(index)
        rng = np.random.default_rng([self.seed, index, 11])
        direction = self.directions[index % len(self.directions)]
        pose_id = int(rng.integers(len(self.bank)))
        with_identity = self.identity_samples is None or index < self.identity_samples
        description_draw = int(rng.integers(max(1, len(self.descriptions))))
        if self.faces == WORLD:
            identity_seed = sample_seed(self.seed + 1, int(rng.integers(self.identities)))
            person = identity_from_seed(identity_seed)
            gender, source, description = person.gender, f"{WORLD}:{identity_seed}", describe_identity(person)
        else:
            name, path = self.files[int(rng.integers(len(self.files)))]
            if name not in self.genders:
                raise ValueError(
                    f"no gender for face {path} ({name!r}) in the genders file; add it or drop the image"
                )
            gender, source = self.genders[name], str(path)
            description = self.descriptions[description_draw] if self.descriptions else None
        description = None if with_identity else description
        return {
            **job,
            "direction": direction,
            "task": task_for_direction(direction),
            "gender": gender,
            "identity_source": source,
            "pose_id": pose_id,
            "with_identity": with_identity,
            "description": description,
            **prompts_for(direction, gender, description=description),
        }
