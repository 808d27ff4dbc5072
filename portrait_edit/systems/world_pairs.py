"""Mini-world pairs written straight into pair shards, with no model in the loop.

The procedural world knows the exact target and edit region of every pair, so these shards are the
perfect-data reference for tests, the demo and the mini world's evaluation. They use the same writer,
sample layout and job scheduling as model-generated pairs (`predict` + `ShardWriter`).
"""

from __future__ import annotations

import hashlib
import json

from lightning.pytorch import LightningModule

from portrait_edit import __version__
from portrait_edit.world import make_pair


class WorldPairsSystem(LightningModule):
    """Renders one mini-world pair per job.

    Args:
        size: image side in pixels (a multiple of 8).
        jitter: the world's imperfection knob for x_B (0 = perfect pairs; see `portrait_edit.world`).
        reconstruction: write each portrait as its own target instead (x_B = x_A, p_b = p_a, an empty edit
            region): reconstruction samples of the world's portraits, the kind of image edits start from,
            to mix with generated pairs in MCDM training.
    """

    def __init__(self, size: int = 64, jitter: float = 0.0, reconstruction: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.size = size
        self.jitter = jitter
        self.reconstruction = reconstruction
        settings = {"generator": "world", "size": size, "jitter": jitter, "version": __version__}
        if reconstruction:
            settings["reconstruction"] = True
        self.config_hash = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def predict_step(self, batch: list[dict], batch_idx: int) -> list[dict]:
        return [self._sample(job) for job in batch]

    def _sample(self, job: dict) -> dict:
        pair = make_pair(job["seed"], job["direction"], size=self.size, jitter=self.jitter)
        prompts, tgt, gt, region = pair.prompts, pair.tgt, pair.gt, pair.edit_mask
        if self.reconstruction:
            prompts, tgt, gt, region = {**prompts, "p_b": prompts["p_a"]}, pair.src, pair.src, region * 0
        meta = {
            **prompts,
            "direction": pair.direction,
            "task": pair.task,
            "gender": pair.gender,
            "identity_source": f"world:{pair.meta['identity_seed']}",
            "pose_id": pair.meta["pose_seed"],
            "seed": job["seed"],
            "index": job["index"],
            "scales": {},
            "world": pair.meta,
            "config_hash": self.config_hash,
            "version": __version__,
        }
        return {
            "__key__": job["key"],
            "__index__": job["index"],
            "__shard__": job["shard"],
            "__shard_len__": job["shard_len"],
            "src.png": pair.src,
            "tgt.png": tgt,
            "gt.png": gt,
            "edit_mask.png": region.astype("uint8") * 255,
            "pose.png": pair.pose_image,
            "json": meta,
        }
