"""Evaluation as `validate` (paper §4, Table 1): every method edits the same pairs with the same seeds.

`EvaluationSystem.validation_step` runs each method (evaluation/methods.py: MCDM exports with or without the
mask, SDEdit, DiffEdit) on a batch of evaluation pairs (data/eval_pairs.py) and keeps each item's scores
(evaluation/judges.py) by its index, the edits' CLIP features, and the first `grid_samples` items'
pictures. At the epoch's end the ranks' items are gathered (each item counted once, whatever rank or
padding it came from), so 1 and N processes give the same table; rank 0 writes `table.md`, `table.csv`,
`table.json` and `index.html` into `output_dir` (evaluation/report.py) and, under a W&B logger, a table of
the figures and one of the pictures. Every item's edit depends on its own seed only, never its batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import WandbLogger

from portrait_edit.atomic import atomic_write_bytes
from portrait_edit.evaluation.cache import ItemCache, fingerprint, item_check
from portrait_edit.evaluation.judges import SCORES, SCORES_VERSION, EditJudges, best_lambda
from portrait_edit.evaluation.methods import MethodSpec, build_method
from portrait_edit.evaluation.paper_table1 import page as table1_page
from portrait_edit.evaluation.report import (
    COLUMNS,
    check_columns,
    frechet_caveats,
    summarise,
    write_direction_page,
    write_report,
)
from portrait_edit.images import to_uint8
from portrait_edit.revision import git_revision, run_command
from portrait_edit.tasks import LABELS, task_for_direction

log = logging.getLogger(__name__)


def gather(items: list) -> list:
    """The concatenation of every rank's `items` (all_gather_object; the list itself on one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def default_model(spec: MethodSpec, base: str | None, mcdm: str | None) -> str | None:
    """The model of a row that names none: the table's MCDM export for mcdm rows, its base for the
    baselines, the export's (else the base's) VAE for the vae and grid references."""
    if spec.kind == "mcdm":
        return mcdm
    if spec.kind in ("vae", "grid"):
        return mcdm or base
    return base


class EvaluationSystem(LightningModule):
    """The evaluation table over validation pairs (module docstring).

    Args:
        methods: the table's rows, in order (MethodSpec: name, kind, model, ...).
        base: the base model of the baseline rows (SDEdit, DiffEdit) that name no `model` of their own: the
            SD 1.5-family model the pairs were generated with, named once for the table.
        mcdm: the MCDM export of the rows of kind mcdm (and the VAE of vae / grid rows) that name no
            `model`: a page evaluates another export with one argument.
        vae, single_file_config: the base's VAE source and single-file architecture (as DiffusionSystem).
        output_dir: where table.md / table.csv / table.json / index.html go.
        title: the table's title.
        classifier: direction-classifier folder (fidelity); None: unavailable.
        image_encoder: CLIP image encoder source (FID (CLIP features), identity); None: unavailable.
        identity_encoder: identity-encoder folder (identity similarity); None: unavailable.
        lpips_backbone: AlexNet weights file for LPIPS; None: TORCH_HOME's copy, else unavailable.
        inception: folder of clean-fid's Inception weights (inception-2015-12-05.pt) for FID; None:
            unavailable (the Frechet distance of CLIP features is reported beside it either way).
        clip_image_size, image_mean, image_std: how images are shown to the CLIP image encoder (224 and OpenAI's
            mean / std for ViT-L/14; 64 and 0.5 / 0.5 for the mini CLIP).
        grid_samples: items (the lowest indices) pictured in index.html and the W&B table.
        cache: keep each method's per-item results in `cache_dir` (evaluation/cache.py): a rerun after an
            interruption, or with a row added, computes only what is missing.
        cache_dir: where (None: `output_dir`/cache); tables of the same items and seeds may share one.
        table1_page: also write the table beside the paper's Table 1 there (evaluation/paper_table1.py).
        direction_page: also write a page of one table per direction there (a markdown file; its .json
            and a .jpg of the first items beside it), with `direction_columns`: [{label, method, score}],
            a column each (score: a column of the table, e.g. ssim, mask_iou, mask_iou_best, lambda_best),
            and `direction_figure`: the picture's columns after the input and the true region, each a
            method's edit ("Ours") or mask ("Ours:mask").
        page_note: a paragraph under the pages' header.
    """

    def __init__(
        self,
        methods: list[MethodSpec],
        base: str | None = None,
        mcdm: str | None = None,
        vae: str | None = None,
        single_file_config: str | None = None,
        output_dir: str = "outputs/eval",
        title: str = "Editing evaluation",
        classifier: str | None = None,
        image_encoder: str | None = None,
        identity_encoder: str | None = None,
        lpips_backbone: str | None = None,
        inception: str | None = None,
        clip_image_size: int = 224,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        grid_samples: int = 16,
        cache: bool = True,
        cache_dir: str | None = None,
        table1_page: str | None = None,
        direction_page: str | None = None,
        direction_columns: list[dict[str, str]] | None = None,
        direction_figure: list[str] | None = None,
        page_note: str | None = None,
    ) -> None:
        super().__init__()
        names = [m.name for m in methods]
        if not methods or len(set(names)) != len(names):
            raise ValueError(f"give at least one method, each with its own name; got {names}")
        if direction_page is not None:
            check_columns(direction_columns, names)
        self.save_hyperparameters()
        self.specs = [spec if spec.model else dataclasses.replace(spec, model=default_model(spec, base, mcdm))
                      for spec in methods]  # fmt: skip
        self.methods = [
            build_method(spec, vae=vae, single_file_config=single_file_config) for spec in self.specs
        ]
        self.judges = EditJudges(
            classifier,
            image_encoder,
            identity_encoder,
            lpips_backbone,
            inception,
            clip_image_size,
            image_mean,
            image_std,
        )
        judged_by = {
            "classifier": fingerprint(classifier), "image_encoder": fingerprint(image_encoder),
            "identity_encoder": fingerprint(identity_encoder), "lpips_backbone": fingerprint(lpips_backbone),
            "inception": fingerprint(inception), "view": [clip_image_size, image_mean, image_std],
        }  # fmt: skip
        self.caches = {
            spec.name: ItemCache(
                cache_dir or f"{output_dir}/cache",
                {
                    "method": {**vars(spec), "name": None}, "model": fingerprint(spec.model),
                    "vae": None if spec.kind == "mcdm" else fingerprint(vae), "judges": judged_by,
                    "scores": SCORES_VERSION,
                },
            )
            for spec in self.specs
        } if cache else {}  # fmt: skip
        self._items: list[dict[str, Any]] = []

    def on_validation_epoch_start(self) -> None:
        self.judges.to(self.device)
        for method in self.methods:
            for module in method.modules():
                module.to(self.device)
        self._items = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if not batch["direction"]:
            return
        labels = torch.tensor([LABELS.index(d) for d in batch["direction"]])
        seeds = batch["seed"].tolist()
        target_features = self.judges.features(batch["target"])
        indices = batch["index"].tolist()
        checks = [
            item_check(seeds[i], batch["direction"][i], batch["p_a"][i], batch["p_b"][i], batch["source"][i].cpu().numpy())
            for i in range(len(indices))
        ]  # fmt: skip
        records = {spec.name: self._records(spec, method, batch, labels, indices, checks)
                   for spec, method in zip(self.specs, self.methods)}  # fmt: skip
        for i, index in enumerate(indices):
            item: dict[str, Any] = {
                "index": index,
                "direction": batch["direction"][i],
                "p_b": batch["p_b"][i],
            }
            item["target_features"] = {k: v[i].cpu().numpy() for k, v in target_features.items()}
            item["methods"] = {
                name: {"scores": r[i]["scores"], "features": r[i]["features"], "sweep": r[i].get("sweep")}
                for name, r in records.items()
            }
            if index < self.hparams.grid_samples:
                item["pictures"] = {
                    "source": to_uint8(batch["source"][i]), "target": to_uint8(batch["target"][i]),
                    "region": to_uint8(batch["region"][i][None].repeat(3, 1, 1) * 2 - 1)
                    if batch["region"][i].min() >= 0 else None,
                    "edits": {name: {"image": r[i]["image"], "mask": r[i]["mask"]} for name, r in records.items()},
                }  # fmt: skip
            self._items.append(item)

    def _records(self, spec, method, batch, labels, indices, checks) -> list[dict[str, Any]]:
        """One method's per-item records (scores, features, picture and mask for the grid's items) of a
        batch: from its cache when every item is there, else edited, judged and cached."""
        cache = self.caches.get(spec.name)
        pictured = [index < self.hparams.grid_samples for index in indices]
        if cache is not None:
            cached = [cache.load(index, check) for index, check in zip(indices, checks)]
            if all(r is not None and (r["image"] is not None or not p) for r, p in zip(cached, pictured)):
                return cached
        out = method(batch)
        scores = self.judges.scores(out.images, out.mask, batch, labels)
        sweep = self.judges.lambda_sweep(out.soft_mask, batch["region"])
        features = self.judges.features(out.images)
        records = []
        for i, (index, check) in enumerate(zip(indices, checks)):
            record = {
                "scores": {k: float(v[i]) for k, v in scores.items()},
                "sweep": None if sweep is None else sweep[i].tolist(),
                "features": {k: v[i].cpu().numpy() for k, v in features.items()},
                "image": to_uint8(out.images[i]) if pictured[i] else None,
                "mask": to_uint8(out.mask[i][None].repeat(3, 1, 1) * 2 - 1)
                if pictured[i] and out.mask is not None
                else None,
            }
            if cache is not None:
                cache.save(index, check, record)
            records.append(record)
        return records

    def on_validation_epoch_end(self) -> None:
        items = {item["index"]: item for item in gather(self._items)}  # padding duplicates count once
        ordered = [items[k] for k in sorted(items)]
        self._items = []
        if not ordered:
            return
        rows = self._rows(ordered)
        for spec in self.specs:
            for name, value in rows[spec.name].items():
                if value is not None:
                    self.log(f"eval/{spec.name}/{name}", value, rank_zero_only=True)
        by_task = self._rows_by_task(ordered)
        for task, part in by_task.items():
            for method, row in part["rows"].items():
                for name, value in row.items():
                    if value is not None:
                        self.log(f"eval/{task}/{method}/{name}", value, rank_zero_only=True)
        if self.trainer.is_global_zero:
            grid = [
                {**it["pictures"], "direction": it["direction"], "p_b": it["p_b"]}
                for it in ordered
                if "pictures" in it
            ]
            dims = {k: len(v) for k, v in ordered[0]["target_features"].items()}
            caveats = frechet_caveats(len(ordered), dims)
            path = write_report(self.hparams.output_dir, self.hparams.title, rows, self.judges.unavailable, grid,
                                {"items": len(ordered), "methods": [vars(s) for s in self.specs]}, by_task,
                                caveats)  # fmt: skip
            self._log_wandb(rows, by_task, grid)
            log.info("evaluation table (%d items): %s", len(ordered), path)
            self._write_pages(ordered, rows, by_task, grid)

    def _write_pages(self, items: list[dict], rows: dict, by_task: dict, grid: list[dict]) -> None:
        hp, command, revision = self.hparams, run_command(), git_revision()
        if hp.table1_page:
            table = json.loads((Path(hp.output_dir) / "table.json").read_text())
            text = table1_page(table, [command], hp.page_note, revision)
            atomic_write_bytes(hp.table1_page, text.encode())
            log.info("Table 1 page: %s", hp.table1_page)
        if hp.direction_page:
            by_direction = self._rows_by_direction(items)
            write_direction_page(hp.direction_page, hp.title, hp.direction_columns, by_direction, rows,
                                 command, revision, hp.page_note, grid, hp.direction_figure)  # fmt: skip
            log.info("per-direction page: %s", hp.direction_page)

    def _rows(self, items: list[dict[str, Any]]) -> dict[str, dict]:
        """Each method's row (evaluation/report.py `summarise`) over `items`."""
        kinds = list(items[0]["target_features"])
        targets = {k: np.stack([it["target_features"][k] for it in items]) for k in kinds}
        rows = {}
        for spec in self.specs:
            scores = {s: np.array([it["methods"][spec.name]["scores"].get(s, np.nan) for it in items])
                      for s in SCORES if s not in self.judges.unavailable}  # fmt: skip
            edits = {k: np.stack([it["methods"][spec.name]["features"][k] for it in items]) for k in kinds}
            rows[spec.name] = summarise(scores, {k: (edits[k], targets[k]) for k in kinds})
            rows[spec.name].update(best_lambda(items, spec.name))
        return rows

    def _rows_by_direction(self, items: list[dict[str, Any]]) -> dict[str, dict]:
        """Each direction's rows, in the classifier's label order."""
        directions = sorted({it["direction"] for it in items}, key=LABELS.index)
        return {d: self._rows([it for it in items if it["direction"] == d]) for d in directions}

    def _rows_by_task(self, items: list[dict[str, Any]]) -> dict[str, dict]:
        """With items of several tasks (costume, expression): per task, its directions and its rows, as
        the paper's Table 1 reports each task apart; {} with one task."""
        tasks: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            tasks.setdefault(task_for_direction(item["direction"]), []).append(item)
        if len(tasks) < 2:
            return {}
        return {
            task: {
                "directions": sorted({it["direction"] for it in part}, key=LABELS.index),
                "rows": self._rows(part),
            }
            for task, part in tasks.items()
        }

    def _log_wandb(self, rows: dict[str, dict], by_task: dict[str, dict], grid: list[dict]) -> None:
        loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        columns = ["subset", "method", *COLUMNS]
        subsets = {"all": rows, **{task: part["rows"] for task, part in by_task.items()}}
        data = [
            [subset, name, *(r.get(c) for c in COLUMNS)]
            for subset, part in subsets.items()
            for name, r in part.items()
        ]
        pictures = [[it["direction"], wandb.Image(it["source"]), wandb.Image(it["target"]),
                     *(wandb.Image(it["edits"][name]["image"]) for name in rows)] for it in grid]  # fmt: skip
        for lg in loggers:
            lg.log_table("eval/table", columns=columns, data=data)
            lg.log_table("eval/edits", columns=["direction", "input", "target", *rows], data=pictures)
