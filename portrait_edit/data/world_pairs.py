"""Jobs for mini-world pairs: which direction and seed each global sample index gets."""

from __future__ import annotations

from portrait_edit.data.jobs import Job, JobsDataModule
from portrait_edit.tasks import DIRECTIONS


class WorldPairsDataModule(JobsDataModule):
    """Sample i gets direction `directions[i % len(directions)]` and seed `sample_seed(seed, i)` (which also
    picks the identity and pose), so every direction is equally represented in every shard.

    Args:
        num_samples: total number of pairs over all ranks.
        shard_size: pairs per shard; fixed for the lifetime of an output directory.
        batch_size: pairs rendered per predict_step.
        seed: base seed of the run.
        directions: edit directions to cycle through (default: all 8).
    """

    def __init__(
        self,
        num_samples: int,
        shard_size: int = 100,
        batch_size: int = 8,
        seed: int = 0,
        directions: list[str] | None = None,
    ) -> None:
        super().__init__(num_samples=num_samples, shard_size=shard_size, batch_size=batch_size, seed=seed)
        self.directions = list(directions or DIRECTIONS)
        unknown = sorted(set(self.directions) - set(DIRECTIONS))
        if unknown or not self.directions:
            raise ValueError(f"directions must be a non-empty subset of {list(DIRECTIONS)}; got {unknown}")

    def make_job(self, index: int) -> Job:
        return {**super().make_job(index), "direction": self.directions[index % len(self.directions)]}
