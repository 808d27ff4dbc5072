"""Mask-guided editing as `predict` (paper §3.4): every input portrait edited in every direction.

`EditSystem.predict_step` edits a batch of inputs in all directions at once (B x D rows through
`MCDMEditor`) and returns one record per input; `EditWriter` writes, per input, into `<output_dir>/<name>/`:
`<direction>.png` (the edit), `<direction>_mask.png` (the model-made mask), `sticker.png` (the input and
every direction in one row: the paper's sticker-pack application) and, last, `edit.json` (prompts, scales,
seed, lambda, model). Files are written atomically; an input with `edit.json` is finished and a rerun
skips it. Inputs that could not be read are listed with the reason in `report-r<rank>.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter

from portrait_edit import __version__
from portrait_edit.atomic import atomic_write_bytes, atomic_write_json
from portrait_edit.data.edit_inputs import DONE_FILE
from portrait_edit.diffusion.conditions import check_scales
from portrait_edit.diffusion.masks import check_threshold
from portrait_edit.images import encode_png, to_uint8
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.tasks import mask_lambda, prompts_for, task_for_direction

log = logging.getLogger(__name__)


class EditSystem(LightningModule):
    """Edits portraits with an exported MCDM.

    Args:
        model: the MCDM export folder (systems/mcdm.py writes it: data/mini/mcdm, outputs/costume/mcdm).
        directions: edit directions (e.g. santa, royal); each input is edited in every one.
        threshold: lambda of the mask; None: per task (costume 0.2, expression 0.35).
        use_mask: Eq. 3 with the model-made mask (False: the "w/o mask" ablation).
        keep_source: past the paper: also set the latents outside the mask back to x_A's (noised to each
            step's level) after every step, so the edit keeps x_A's VAE round trip there (needs use_mask).
        steps: UniPC steps (20).
        seed: sampling seed of every edit (the same for all inputs and directions: comparable rows; each
            input draws its own noise from it, so its edit does not depend on its batch or rank).
        mask_seeds: noises averaged by the mask (10).
        scales: guidance scales {image, spatial, text}, any of them; None: the export's.
        mask_at: the share of the sampling timesteps E(x_A) is noised to for the mask; None: the export's.
        max_rows: most rows per UNet call (the mask's 10 x 5 x B x D are chunked above it); None: no limit.
        dtype: float32, float16 or bfloat16 weights.
    """

    def __init__(
        self,
        model: str,
        directions: list[str],
        threshold: float | None = None,
        use_mask: bool = True,
        keep_source: bool = False,
        steps: int = 20,
        seed: int = 0,
        mask_seeds: int = 10,
        max_rows: int | None = None,
        dtype: str = "float32",
        scales: dict[str, float] | None = None,
        mask_at: float | None = None,
    ) -> None:
        super().__init__()
        if not directions:
            raise ValueError("give at least one direction to edit in")
        for direction in directions:
            task_for_direction(direction)  # raises, naming the known directions, for an unknown one
        if keep_source and not use_mask:
            raise ValueError("keep_source keeps x_A outside the mask: it needs use_mask: true")
        if steps < 1 or mask_seeds < 1:
            raise ValueError(
                f"steps and mask_seeds must be >= 1 (the paper: 20 and 10); got {steps}, {mask_seeds}"
            )
        if mask_at is not None and not 0.0 < mask_at <= 1.0:
            raise ValueError(f"mask_at must be in (0, 1] (a share of the sampling timesteps), got {mask_at}")
        self.scales = check_scales(scales or {})
        self.save_hyperparameters()
        self.editor = MCDMEditor.from_pretrained(model, dtype=getattr(torch, dtype))
        self.editor.max_rows = max_rows
        if use_mask:  # a lambda that cuts an empty (or full) mask would silently not edit (or redraw all)
            for value in sorted({mask_lambda(d, threshold) for d in directions}):
                check_threshold(value, self.editor.mask_range, str(model))

    def on_predict_start(self) -> None:
        # The editor's modules are not registered with Lightning: move them with the system.
        for module in (self.editor.unet, self.editor.conditioning, self.editor.vae):
            module.to(self.device)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        directions = list(self.hparams.directions)
        records = [{"name": n, "gender": g, "edits": {}} for n, g in zip(batch["name"], batch["gender"])]
        if records:
            count = len(records)
            sources = batch["image"].repeat(len(directions), 1, 1, 1)  # direction-major rows
            prompts = [prompts_for(d, g) for d in directions for g in batch["gender"]]
            lambdas = [mask_lambda(d, self.hparams.threshold) for d in directions for _ in range(count)]
            result = self.editor.edit(
                sources, [p["p_a"] for p in prompts], [p["p_b"] for p in prompts], threshold=lambdas,
                use_mask=self.hparams.use_mask, keep_source=self.hparams.keep_source, steps=self.hparams.steps,
                seed=self.hparams.seed, mask_seeds=self.hparams.mask_seeds, mask_at=self.hparams.mask_at,
                scales=self.scales,
            )  # fmt: skip
            for r, (value, image) in enumerate(zip(lambdas, result.images)):
                direction, record = directions[r // count], records[r % count]
                share = None if result.masks is None else float(result.masks[r].float().mean())
                if share in (0.0, 1.0):
                    log.warning(
                        "%s, %s: the mask at lambda %g is %s; pick a lambda in the export's range",
                        record["name"], direction, value, "empty (no edit)" if share == 0 else "every pixel",
                    )  # fmt: skip
                mask = (
                    None if result.masks is None else to_uint8(result.masks[r][None].repeat(3, 1, 1) * 2 - 1)
                )
                record["edits"][direction] = {
                    "image": to_uint8(image), "mask": mask, "prompts": prompts[r], "threshold": value, "mask_share": share,
                }  # fmt: skip
            for record, image in zip(records, batch["image"]):
                record["input"] = to_uint8(image)
        return {"records": records, "failed": batch.get("failed", [])}


def sticker_sheet(record: dict[str, Any], directions: list[str]) -> np.ndarray:
    """The input followed by its edit in each direction, in one row (uint8 (S, (1 + D) S, 3))."""
    return np.concatenate([record["input"]] + [record["edits"][d]["image"] for d in directions], axis=1)


class EditWriter(BasePredictionWriter):
    """Writes EditSystem's records (module docstring) into `output_dir`."""

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.done = 0
        self.failed: list[dict[str, str]] = []

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.done, self.failed = 0, []

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ):
        directions = list(pl_module.hparams.directions)
        for name, reason in prediction["failed"]:
            log.warning("input %s skipped: %s", name, reason)
            self.failed.append({"name": name, "reason": reason})
        for record in prediction["records"]:
            folder = self.output_dir / record["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for direction, edit in record["edits"].items():
                atomic_write_bytes(folder / f"{direction}.png", encode_png(edit["image"]))
                if edit["mask"] is not None:
                    atomic_write_bytes(folder / f"{direction}_mask.png", encode_png(edit["mask"]))
            atomic_write_bytes(folder / "sticker.png", encode_png(sticker_sheet(record, directions)))
            hp = pl_module.hparams
            atomic_write_json(  # last: its presence marks the input finished
                folder / DONE_FILE,
                {
                    "name": record["name"], "gender": record["gender"], "model": str(hp.model),
                    "directions": {d: {"prompts": e["prompts"], "threshold": e["threshold"], "mask_share": e["mask_share"]} for d, e in record["edits"].items()},
                    "scales": {**pl_module.editor.scales, **pl_module.scales}, "mask_at": hp.mask_at or pl_module.editor.mask_at, "seed": hp.seed, "steps": hp.steps, "use_mask": hp.use_mask,
                    "keep_source": hp.keep_source, "mask_seeds": hp.mask_seeds, "version": __version__,
                },
            )  # fmt: skip
            self.done += 1

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        report = {"edited": self.done, "failed": self.failed, "output_dir": str(self.output_dir)}
        atomic_write_json(self.output_dir / f"report-r{trainer.global_rank}.json", report)
        message = f"edited {self.done} inputs into {self.output_dir}"
        if self.failed:
            message += (
                f"; {len(self.failed)} could not be read (listed in report-r{trainer.global_rank}.json)"
            )
        log.info(message)
        print(message)
