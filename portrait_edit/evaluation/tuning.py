"""Picking an MCDM export's guidance scales (image, spatial, text) on the tuning stream, by `validate`.

Every setting of the grid is a row of one evaluation (an MCDM row without the mask, `scales` set: the
MCDM's own 3-way edit) over the tuning stream's portraits (TUNE_SEED, evaluation/held_out.py: no training
stage and no evaluation draws from it) in every direction, with the evaluation's per-edit seeds, scored by
the SSIM to the world's exact target and read by the direction classifier (fidelity). The pick is the
setting of the highest SSIM whose fidelity is at least `min_fidelity` (an edit must happen: not editing
scores well on SSIM). Picking on the evaluation's own portraits would be tuning on the test set;
configs/mini/eval_edit.yaml then measures the pick on the evaluation's stream. The per-item results are
cached in `<out>/cache`, so an interrupted or extended sweep computes only what it lacks.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Trainer

from portrait_edit.atomic import atomic_write_bytes
from portrait_edit.data.eval_pairs import WORLD, EvalPairsDataModule
from portrait_edit.evaluation.held_out import TUNE_SEED
from portrait_edit.evaluation.methods import MethodSpec
from portrait_edit.models.mcdm_export import MCDMExportSettings
from portrait_edit.systems.evaluation import EvaluationSystem

Setting = tuple[float, float, float]  # (image, spatial, text)
FRACTION_ROUNDING = 1e-6  # far below one edit's share of a fidelity (1 / inputs / directions)


def key(setting: Setting) -> str:
    return "/".join(f"{s:g}" for s in setting)


def scales_of(setting: Setting) -> dict[str, float]:
    return dict(zip(("image", "spatial", "text"), map(float, setting)))


def pick(rows: dict[str, dict], min_fidelity: float) -> str | None:
    """The key of the highest-SSIM row whose fidelity reaches min_fidelity. The fidelity is a mean of
    fractions of edits (steps of 1 / edits): one that misses the bound only by rounding (0.79999999 for
    0.8) reaches it."""
    fits = {k: r for k, r in rows.items() if r["fidelity"] >= min_fidelity - FRACTION_ROUNDING}
    return max(fits, key=lambda k: fits[k]["ssim"]) if fits else None


def sweep(
    mcdm: str | Path,
    classifier: str | Path,
    grid: list[Setting],
    inputs: int,
    out: str | Path,
    batch_size: int = 16,
) -> dict:
    """Evaluate every setting of `grid` (module docstring); returns the table (table.json: rows over all
    items and per task, by the settings' keys)."""
    specs = [MethodSpec(key(s), "mcdm", str(mcdm), use_mask=False, scales=scales_of(s)) for s in grid]
    system = EvaluationSystem(
        specs, output_dir=str(out), title=f"Guidance scales of {mcdm} on the tuning stream", classifier=str(classifier),
        grid_samples=0,
    )  # fmt: skip
    data = EvalPairsDataModule(WORLD, inputs=inputs, batch_size=batch_size, seed=TUNE_SEED)
    Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False, enable_model_summary=False,
            default_root_dir=str(out)).validate(system, datamodule=data)  # fmt: skip
    return json.loads((Path(out) / "table.json").read_text())


def tuning_page(table: dict, chosen: str | None, inputs: int, min_fidelity: float) -> str:
    """The sweep as markdown: each setting's SSIM and fidelity over all directions and per task."""
    rows = {r["method"]: r for r in table["rows"]}
    tasks = {t: {r["method"]: r for r in p["rows"]} for t, p in table.get("by_task", {}).items()}
    lines = [
        f"Tuning stream {TUNE_SEED}, {inputs} portraits x every direction, no mask; pick: highest SSIM at "
        f"fidelity >= {min_fidelity}.",
        "",
        "| image / spatial / text | SSIM | fidelity | "
        + " | ".join(f"{t} SSIM | {t} fidelity" for t in tasks)
        + " |",
        "|---" * (3 + 2 * len(tasks)) + "|",
    ]
    for name, row in rows.items():
        cells = [f"{tasks[t][name][m]:.3f}" for t in tasks for m in ("ssim", "fidelity")]
        mark = " **(pick)**" if name == chosen else ""
        lines.append(
            f"| {name}{mark} | {row['ssim']:.3f} | {row['fidelity']:.3f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def tune_scales(
    mcdm: str | Path, classifier: str | Path, grid: list[Setting], inputs: int = 25, min_fidelity: float = 0.8,
    out: str | Path | None = None, write: bool = False,
) -> tuple[str | None, str]:  # fmt: skip
    """Sweep, pick and (with `write`) record the pick in the export's mcdm.json, dropping the mask range
    measured at the old scales. Returns (the pick's key or None, the page); the page is <out>/tune_scales.md."""
    if inputs < 1 or not 0 <= min_fidelity <= 1 or not grid:
        raise ValueError(
            f"need inputs >= 1, min_fidelity in [0, 1] and a grid; got {inputs}, {min_fidelity}, {grid}"
        )
    out = Path(out) if out else Path(mcdm) / "tuning"
    table = sweep(mcdm, classifier, grid, inputs, out)
    chosen = pick({r["method"]: r for r in table["rows"]}, min_fidelity)
    page = tuning_page(table, chosen, inputs, min_fidelity)
    atomic_write_bytes(out / "tune_scales.md", page.encode())
    if write and chosen is not None:
        tuned = {
            "tune_seed": TUNE_SEED,
            "inputs": inputs,
            "min_fidelity": min_fidelity,
            "grid": [key(s) for s in grid],
        }
        settings = MCDMExportSettings.load(mcdm)
        settings.replace(scales=scales_of(tuple(map(float, chosen.split("/")))), scales_tuned=tuned, mask_range=None,
                         mask_range_measured=None).save(mcdm)  # fmt: skip
    return chosen, page
