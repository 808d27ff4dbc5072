"""Figures of the shipped mini base models (data/mini/) on held-out world renders.

    python tools/eval_mini_base.py [--pairs 256] [--per-class 64] [--steps 25] [--guidance 4]
                                   [--out outputs/mini/eval_base] [--update-manifest]

Held-out data comes from its own seed stream (EVAL_SEED), disjoint from the training pairs
(configs/mini/base_pairs.yaml) and the demo's pairs. Printed, and written to <out>/metrics.json:
1. VAE: latent size and reconstruction PSNR (mean over images, data range [0, 1]).
2. CLIP: image-to-caption retrieval top-1 over the caption classes (source + 8 directions, x 2 genders;
   both source captions count for a source image, see data/world_images.py).
3. Direction classifier: accuracy on held-out renders (source and the 8 exact targets).
4. Text-to-image: per prompted class, the share of samples the classifier puts in that class, and the
   9 x 9 confusion matrix (rows: prompted class; the source rows alternate the two source captions).
   DDIM, classifier-free guidance 4 by default: the mini UNet is tiny, and at Stable Diffusion's 7.5 it
   overshoots faces into caricatures (oversized dark mouths, pale smears under them) that the classifier
   reads as laughing (angry 0.75 and shocked 0.69 at 7.5, 32 samples each; 0.83 and 0.91 at 4, 64 each).
5. Pose ControlNet: median distance (px) between the head the probe reads off each generated image and
   the pose's head (nose) keypoint, with the ControlNet and, for the same prompts and seeds, without.
`--update-manifest` stores the figures in data/mini/manifest.json under "evaluation".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from portrait_edit.atomic import atomic_write_bytes, atomic_write_json
from portrait_edit.data.jobs import sample_seed
from portrait_edit.data.world_images import GENDERS, caption_classes, image_classes
from portrait_edit.evaluation.direction_classifier import DirectionClassifier
from portrait_edit.evaluation.held_out import BASE_EVAL_SEED as EVAL_SEED
from portrait_edit.evaluation.held_out import held_out_pair
from portrait_edit.evaluation.world_probe import WorldProbe
from portrait_edit.images import encode_png, to_tensor
from portrait_edit.loading.components import load_image_encoder, load_text_encoder, load_tokenizer, load_vae
from portrait_edit.metrics.psnr import psnr_per_image
from portrait_edit.metrics.retrieval import retrieval_top1
from portrait_edit.models.clip_pair import load_text_projection
from portrait_edit.paths import DATA_DIR
from portrait_edit.systems.sampling import SamplingSystem, contact_sheet
from portrait_edit.tasks import DIRECTIONS, LABELS, caption, task_for_direction


def held_out(pairs: int, size: int = 64) -> dict[str, torch.Tensor | list[str]]:
    """Sources and exact targets of `pairs` held-out world pairs (directions in turn): 2 * pairs images
    float (N, 3, H, W) in [-1, 1], their labels (0 source, 1 + direction index) and genders."""
    images, labels, genders = [], [], []
    for i in range(pairs):
        direction = DIRECTIONS[i % len(DIRECTIONS)]
        pair = held_out_pair(i, direction, size, EVAL_SEED)
        images += [pair.src, pair.gt]
        labels += [0, 1 + DIRECTIONS.index(direction)]
        genders += [pair.gender, pair.gender]
    x = to_tensor(np.stack(images))
    return {"image": x, "label": torch.tensor(labels), "gender": genders}


@torch.no_grad()
def eval_vae(data: dict, mini: Path) -> dict:
    vae = load_vae(str(mini), torch_dtype=torch.float32)
    latents = vae.encode(data["image"]).latent_dist.mode()
    recon = vae.decode(latents).sample
    psnr = psnr_per_image((recon.clamp(-1, 1) + 1) / 2, (data["image"] + 1) / 2)
    return {
        "latent_shape": list(latents.shape[1:]),
        "psnr_mean_db": psnr.mean().item(),
        "psnr_median_db": psnr.median().item(),
    }


@torch.no_grad()
def eval_clip(data: dict, mini: Path) -> dict:
    tokenizer, text_encoder = (
        load_tokenizer(str(mini)),
        load_text_encoder(str(mini), torch_dtype=torch.float32),
    )
    projection = load_text_projection(mini / "text_encoder")
    image_encoder = load_image_encoder(str(mini), torch_dtype=torch.float32)
    captions, classes = caption_classes()
    ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    text = torch.nn.functional.normalize(projection(text_encoder(input_ids=ids).pooler_output), dim=-1)
    image = torch.nn.functional.normalize(image_encoder(pixel_values=data["image"]).image_embeds, dim=-1)
    hits = retrieval_top1(image @ text.T, image_classes(data["gender"], data["label"]), torch.tensor(classes))
    return {"retrieval_top1": hits.mean().item(), "captions": len(captions), "classes": len(set(classes))}


def eval_classifier(data: dict, classifier: DirectionClassifier) -> dict:
    predicted = classifier.predict_directions(data["image"])
    return {"accuracy": (predicted == data["label"]).float().mean().item(), "images": len(predicted)}


def class_prompts(per_class: int) -> list[dict]:
    """Prompt jobs: `per_class` per label, genders alternating, source rows alternating the two tasks."""
    jobs = []
    for label, name in enumerate(LABELS):
        for k in range(per_class):
            gender = GENDERS[k % len(GENDERS)]
            if label == 0:
                prompt = caption(gender, None, ("costume", "expression")[(k // len(GENDERS)) % 2])
            else:
                prompt = caption(gender, name, task_for_direction(name))
            seed = sample_seed(EVAL_SEED + 1, label * per_class + k)
            jobs.append({"key": f"{label}-{k:04d}", "prompt": prompt, "seed": seed, "label": label})
    return jobs


def generate(system: SamplingSystem, jobs: list[dict], batch: int = 64) -> torch.Tensor:
    """Images float (N, 3, H, W) in [-1, 1] for the jobs, in order (each from its own seeded noise)."""
    out = []
    for start in range(0, len(jobs), batch):
        records_before = len(system.records)
        system.predict_step(jobs[start : start + batch], start // batch)
        images = np.stack([r["image"] for r in system.records[records_before:]])
        out.append(to_tensor(images))
    return torch.cat(out)


def write_sheet(system: SamplingSystem, path: Path) -> None:
    """The contact sheet (a row per prompt) of everything `system` generated so far."""
    atomic_write_bytes(path, encode_png(contact_sheet(system.records)))


def eval_text_to_image(jobs: list[dict], images: torch.Tensor, classifier: DirectionClassifier) -> dict:
    predicted = classifier.predict_directions(images)
    prompted = torch.tensor([job["label"] for job in jobs])
    confusion = torch.zeros(len(LABELS), len(LABELS), dtype=torch.long)
    confusion.index_put_((prompted, predicted), torch.ones_like(prompted), accumulate=True)
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
    return {"per_class": dict(zip(LABELS, per_class)), "min": min(per_class), "confusion": confusion.tolist()}


def head_distance(system: SamplingSystem, jobs: list[dict], images: torch.Tensor, probe: WorldProbe) -> dict:
    heads = probe.locate_head(images)
    noses = torch.tensor([system.pose_of(job["seed"])[0, :2] for job in jobs])
    distance = (heads - noses).norm(dim=-1)
    return {"median_px": distance.median().item(), "mean_px": distance.mean().item()}


def print_report(m: dict) -> None:
    v, c, k, t, p = m["vae"], m["clip"], m["classifier"], m["text_to_image"], m["controlnet"]
    print(
        f"VAE          latent {'x'.join(map(str, v['latent_shape']))}: PSNR {v['psnr_mean_db']:.2f} dB "
        f"(median {v['psnr_median_db']:.2f}) on {m['images']} held-out images   target >= 28"
    )
    print(
        f"CLIP         retrieval top-1 {c['retrieval_top1']:.3f} over {c['classes']} classes "
        f"({c['captions']} captions)   target >= 0.90"
    )
    print(f"classifier   accuracy {k['accuracy']:.3f} on {k['images']} held-out images   target >= 0.95")
    print(
        f"text->image  per class (classifier agrees with the prompt; target >= 0.80 each), "
        f"{m['per_class']} samples each (DDIM {m['steps']} steps, guidance {m['guidance_scale']}):"
    )
    print("             " + "  ".join(f"{name}={share:.2f}" for name, share in t["per_class"].items()))
    print("             confusion (rows prompted, columns classified as " + ", ".join(LABELS) + "):")
    for name, row in zip(LABELS, t["confusion"]):
        print(f"             {name:>9} " + " ".join(f"{n:3d}" for n in row))
    print(
        f"ControlNet   median head distance {p['with']['median_px']:.2f} px with the ControlNet "
        f"(target <= 3), {p['without']['median_px']:.2f} px without (target >= 8)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini", default=str(DATA_DIR / "mini"), help="folder of the mini base models")
    parser.add_argument("--pairs", type=int, default=256, help="held-out pairs (2 images each)")
    parser.add_argument("--per-class", type=int, default=64, help="text-to-image samples per class")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (DDIM)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=4.0,
        help="classifier-free guidance scale (the mini model's, see above)",
    )
    parser.add_argument("--size", type=int, default=64, help="image side the models work at")
    parser.add_argument("--out", default="outputs/mini/eval_base", help="sample images, sheets, metrics.json")
    parser.add_argument("--update-manifest", action="store_true", help="store the figures in the manifest")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start, mini, out = time.time(), Path(args.mini), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = held_out(args.pairs, args.size)
    classifier = DirectionClassifier.from_pretrained(mini / "classifier")
    metrics = {
        "images": len(data["label"]),
        "per_class": args.per_class,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "eval_seed": EVAL_SEED,
        "vae": eval_vae(data, mini),
        "clip": eval_clip(data, mini),
        "classifier": eval_classifier(data, classifier),
    }
    common = {
        "base": str(mini),
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "image_size": args.size,
    }
    text_only = SamplingSystem(**common, output_dir=str(out / "text_to_image"))
    jobs = class_prompts(args.per_class)
    images = generate(text_only, jobs)
    write_sheet(text_only, out / "text_to_image.png")
    metrics["text_to_image"] = eval_text_to_image(jobs, images, classifier)
    probe = WorldProbe.from_pretrained(mini / "probe")
    pose_jobs = [job for job in jobs if job["label"] == 0]  # the same prompts and seeds, with and without
    with_pose = SamplingSystem(**common, controlnet=str(mini), output_dir=str(out / "controlnet"))
    posed = generate(with_pose, pose_jobs)
    write_sheet(with_pose, out / "controlnet.png")
    metrics["controlnet"] = {
        "with": head_distance(with_pose, pose_jobs, posed, probe),
        "without": head_distance(text_only, pose_jobs, images[: len(pose_jobs)], probe),
        "samples": len(pose_jobs),
    }
    metrics["wall_time_s"] = round(time.time() - start, 1)
    atomic_write_json(out / "metrics.json", metrics)
    print_report(metrics)
    if args.update_manifest:
        manifest_path = mini / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        summary = {k: v for k, v in metrics.items() if k != "text_to_image"}
        manifest["evaluation"] = {
            **summary,
            "text_to_image": {"per_class": metrics["text_to_image"]["per_class"]},
            "command": "python tools/eval_mini_base.py --update-manifest",
        }
        atomic_write_json(manifest_path, manifest)
    print(f"figures in {out / 'metrics.json'}; samples in {out} (text_to_image.png, controlnet.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
