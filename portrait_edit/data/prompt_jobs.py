"""Prompt jobs for sampling previews (`predict` with SamplingSystem): each prompt x `samples_per_prompt`.

Job i gets seed `sample_seed(seed, i)`: its initial noise and, for SamplingSystem, the pose of the
mini-world pair with that seed. So a rerun, or a run on any number of ranks, draws the same images; the pose is used by
a ControlNet and recorded either way, so runs with and without ControlNet can be compared on it.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from portrait_edit.data.jobs import Job, sample_key, sample_seed
from portrait_edit.data.world_images import caption_classes


def world_captions() -> list[str]:
    """The mini world's 20 training captions: per gender the two source captions ("a man, normal
    costume", "a man, neutral expression") and the 8 directions' ones ("a man, santa claus costume", ...)."""
    return caption_classes()[0]


class PromptJobsDataModule(LightningDataModule):
    """Batches (lists) of job dicts {index, key, prompt, seed} for `trainer.predict`.

    Args:
        prompts: prompts to draw; None: the mini world's 20 captions (`world_captions`).
        samples_per_prompt: images per prompt (the contact sheet's columns).
        seed: base seed; job i draws its noise from sample_seed(seed, i).
        batch_size: jobs per predict_step.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        samples_per_prompt: int = 4,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        if samples_per_prompt < 1 or batch_size < 1 or seed < 0:
            raise ValueError(
                f"need samples_per_prompt >= 1, batch_size >= 1 and seed >= 0, got "
                f"{samples_per_prompt}, {batch_size}, {seed}"
            )
        self.prompts = list(prompts) if prompts is not None else world_captions()
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise ValueError("prompts must be a non-empty list of strings (or null for the world's captions)")
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.batch_size = batch_size

    def jobs(self) -> list[Job]:
        """All jobs, prompt-major: index = prompt_index * samples_per_prompt + sample."""
        out = []
        for p, prompt in enumerate(self.prompts):
            for s in range(self.samples_per_prompt):
                index = p * self.samples_per_prompt + s
                seed = sample_seed(self.seed, index)
                out.append({"index": index, "key": sample_key(index), "prompt": prompt, "seed": seed})
        return out

    def predict_dataloader(self) -> DataLoader:
        # collate_fn=list keeps jobs as dicts; under DDP Lightning splits them without repeats.
        return DataLoader(self.jobs(), batch_size=self.batch_size, shuffle=False, collate_fn=list)
