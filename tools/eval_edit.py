"""Mask-guided editing in the mini world, against the world's truth: held-out portraits edited by the
shipped mini MCDM in several directions, each edit's mask compared with the exact edit region the world
knows, and with a DiffEdit-style mask from the mini base model.

    python tools/eval_edit.py [--inputs 100] [--directions santa royal angry laughing] [--out docs/results]
        [--mcdm outputs/mini/mcdm_world_pairs]

Per (input, direction), from the held-out seed stream (disjoint from every training stream):
- mask IoU against the true edit region: ours (the MCDM's own mask, lambda per task) and DiffEdit-style
  (the base text-to-image model's guided predictions under p_a / p_b, threshold 0.5), and the ceiling of
  any mask made at the latent grid (the best set of whole latent cells: the expressions' true regions
  cover 2-3% of the image, a few cells of the mini model's 16 x 16 grid); and ours at the lambda (0.05 to
  0.95 by 0.05) that suits each direction best on these inputs themselves: a bound on what tuning lambda
  can buy;
- preservation: SSIM to x_A outside the true region, with our mask, with our mask and x_A's latents kept
  outside it (`keep_source`, past the paper) and without a mask (same seed); two references: x_A's VAE
  round trip (what any editor on the mini VAE's latents can keep at best) and the exact target (what a
  perfect edit keeps: SSIM's 11 x 11 window reaches across the region's border);
- fidelity: the share of edits the direction classifier reads as the direction; SSIM to the exact target
  (both with and without the mask: the no-mask figures are the MCDM's own, 3-way guidance alone), and that
  of x_A itself (no edit at all: the SSIM an edit must add to).
Writes <out>/mini_edit.json, <out>/mini_edit.md and <out>/mini_edit.jpg (rows: input, true region, our
mask, DiffEdit mask, edit with mask, edit without, edit with mask and kept source).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from portrait_edit.atomic import atomic_write_bytes, atomic_write_json
from portrait_edit.data.eval_pairs import EVAL_SEED  # the evaluation's held-out stream
from portrait_edit.data.jobs import sample_seed
from portrait_edit.images import encode_jpeg, to_tensor, to_uint8
from portrait_edit.loading.components import load_components, vae_roundtrip, vae_scale_factor
from portrait_edit.metrics.image import grid_iou_ceiling, mask_iou, masked_ssim, ssim
from portrait_edit.models.baselines import DiffEditMask
from portrait_edit.models.conditioning import TextConditioning
from portrait_edit.models.direction_classifier import DirectionClassifier
from portrait_edit.models.editor import MCDMEditor
from portrait_edit.paths import DATA_DIR
from portrait_edit.systems.mcdm import SCHEDULER
from portrait_edit.tasks import LABELS, MASK_LAMBDAS, prompts_for, task_for_direction
from portrait_edit.world import make_pair

LAMBDAS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # the oracle-lambda IoU's grid


def tensor(images: list[np.ndarray]) -> torch.Tensor:
    return to_tensor(np.stack(images))


def evaluate(args: argparse.Namespace) -> dict:
    mini = Path(args.mini)
    editor = MCDMEditor.from_pretrained(args.mcdm or mini / "mcdm")
    base = load_components(
        str(mini), parts=("vae", "unet", "text_encoder", "tokenizer"), torch_dtype=torch.float32
    )
    text = TextConditioning()
    text.bind(base)
    diffedit = DiffEditMask(base.unet, base.vae, text, SCHEDULER)
    classifier = DirectionClassifier.from_pretrained(mini / "classifier")
    cell = vae_scale_factor(editor.vae)
    rows: dict[str, list] = {
        k: []
        for k in (
            "direction",
            "iou",
            "iou_diffedit",
            "iou_grid",
            "iou_by_lambda",
            "keep",
            "keep_nomask",
            "keep_kept",
            "keep_vae",
            "keep_exact",
            "hit",
            "hit_nomask",
            "hit_kept",
            "ssim_gt",
            "ssim_gt_nomask",
            "ssim_gt_kept",
            "ssim_gt_source",
        )
    }
    sheet = []
    for direction in args.directions:
        threshold = MASK_LAMBDAS[task_for_direction(direction)]
        for start in tqdm(range(0, args.inputs, args.batch), desc=f"editing: {direction}", unit="batch"):
            pairs = [
                make_pair(sample_seed(EVAL_SEED, i), direction, size=64)
                for i in range(start, min(args.inputs, start + args.batch))
            ]
            src, gt = tensor([p.src for p in pairs]), tensor([p.gt for p in pairs])
            region = torch.from_numpy(np.stack([p.edit_mask for p in pairs])).float()
            prompts = [prompts_for(direction, p.gender) for p in pairs]
            p_a, p_b = [q["p_a"] for q in prompts], [q["p_b"] for q in prompts]
            with_mask = editor.edit(src, p_a, p_b, threshold=threshold, seed=args.seed)
            without = editor.edit(src, p_a, p_b, use_mask=False, seed=args.seed)
            latent_mask = with_mask.masks[:, ::cell, ::cell]  # the same mask: not made twice
            kept = editor.edit(src, p_a, p_b, keep_source=True, seed=args.seed, mask=latent_mask)
            base_mask, _ = diffedit(src, p_a, p_b, seed=args.seed + 1)
            base_mask = torch.nn.functional.interpolate(base_mask[:, None], size=(64, 64), mode="nearest")[
                :, 0
            ]
            outside = 1 - region
            rows["iou"] += mask_iou(with_mask.masks, region).tolist()
            rows["iou_diffedit"] += mask_iou(base_mask, region).tolist()
            rows["iou_grid"] += grid_iou_ceiling(region, cell).tolist()
            soft = with_mask.soft_masks  # M = soft > lambda, as the editor cuts it
            rows["iou_by_lambda"] += torch.stack(
                [mask_iou((soft > lam).float(), region) for lam in LAMBDAS], dim=1
            ).tolist()
            rows["keep_vae"] += masked_ssim(vae_roundtrip(editor.vae, src), src, outside).tolist()
            rows["keep_exact"] += masked_ssim(gt, src, outside).tolist()
            rows["ssim_gt_source"] += ssim(src, gt).tolist()
            for suffix, edits in (
                ("", with_mask.images),
                ("_nomask", without.images),
                ("_kept", kept.images),
            ):
                rows["keep" + suffix] += masked_ssim(edits, src, outside).tolist()
                predicted = classifier.predict_directions(edits)
                rows["hit" + suffix] += (predicted == LABELS.index(direction)).float().tolist()
                rows["ssim_gt" + suffix] += ssim(edits, gt).tolist()
            rows["direction"] += [direction] * len(pairs)
            if start == 0:
                for k in range(min(2, len(pairs))):
                    grey = lambda m: m[None].repeat(3, 1, 1) * 2 - 1  # noqa: E731
                    sheet.append(np.concatenate([to_uint8(x) for x in (
                        src[k], grey(region[k]), grey(with_mask.masks[k]), grey(base_mask[k]), with_mask.images[k],
                        without.images[k], kept.images[k],
                    )], axis=1))  # fmt: skip
    by_lambda = np.array(rows.pop("iou_by_lambda"))  # (inputs, lambdas)
    per_direction = {}
    for direction in args.directions:
        pick = [i for i, d in enumerate(rows["direction"]) if d == direction]
        per_direction[direction] = {
            k: float(np.mean([rows[k][i] for i in pick])) for k in rows if k != "direction"
        }
        ious = by_lambda[pick].mean(axis=0)
        per_direction[direction].update(iou_best=float(ious.max()), lambda_best=LAMBDAS[int(ious.argmax())])
    overall = {k: float(np.mean(rows[k])) for k in rows if k != "direction"}
    overall["iou_best"] = float(np.mean([m["iou_best"] for m in per_direction.values()]))
    return {"per_direction": per_direction, "overall": overall, "scales": editor.scales,
            "sheet": np.concatenate(sheet, axis=0)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini", default=str(DATA_DIR / "mini"), help="the shipped mini models")
    parser.add_argument("--mcdm", help="an exported MCDM to evaluate instead of <mini>/mcdm (an ablation's)")
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--directions", nargs="+", default=["santa", "royal", "angry", "laughing"])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results")
    args = parser.parse_args(argv)
    start = time.time()
    result = evaluate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "mini_edit.jpg", encode_jpeg(result.pop("sheet")))
    result.update(
        command="python tools/eval_edit.py " + " ".join(argv or sys.argv[1:]),
        seconds=round(time.time() - start),
    )
    atomic_write_json(out / "mini_edit.json", result)
    names = {"iou": "mask IoU (ours)", "iou_diffedit": "mask IoU (DiffEdit-style)",
             "iou_grid": "mask IoU ceiling (latent grid)", "iou_best": "mask IoU (ours), best lambda",
             "lambda_best": "best lambda", "keep": "SSIM outside, mask",
             "keep_nomask": "SSIM outside, no mask", "keep_kept": "SSIM outside, mask + kept source",
             "keep_vae": "SSIM outside, VAE round trip of x_A", "keep_exact": "SSIM outside, exact target",
             "hit": "fidelity, mask", "hit_nomask": "fidelity, no mask", "hit_kept": "fidelity, mask + kept source",
             "ssim_gt": "SSIM to exact target, mask", "ssim_gt_nomask": "SSIM to exact target, no mask",
             "ssim_gt_kept": "SSIM to exact target, mask + kept source",
             "ssim_gt_source": "SSIM to exact target, x_A"}  # fmt: skip
    lines = ["| direction | " + " | ".join(names.values()) + " |", "|---" * (len(names) + 1) + "|"]
    for direction, m in {**result["per_direction"], "all": result["overall"]}.items():
        lines.append(f"| {direction} | " + " | ".join(f"{m[k]:.3f}" if k in m else "" for k in names) + " |")
    table = "\n".join(lines)
    scales = " / ".join(f"{result['scales'][k]:g}" for k in ("image", "spatial", "text"))
    header = f"`{result['command']}`\n\nguidance scales (image / spatial / text, the export's): {scales}"
    atomic_write_bytes(out / "mini_edit.md", f"{header}\n\n{table}\n".encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
