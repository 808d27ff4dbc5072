"""Figures of the mini identity encoder (data/mini/identity_encoder/) on held-out world identities.

    python tools/eval_identity.py [--identities 100] [--trials 200] [--steps 25] [--update-manifest]

1. Identity retrieval: `--identities` unseen identities rendered twice (different pose and expression);
   each render's nearest other render by cosine of the flattened c_id (K x D) should be the same
   identity. Printed beside the same figure for raw CLIP features: the image embedding, and the tokens the
   encoder reads (its CLIP layer), mean-pooled.
2. Identity in generation: for `--trials` (A, B) pairs of different held-out identities, the mini
   text-to-image model draws "`--template`" for A's gender with A's c_id spliced before the gender word,
   and, with the same seed, without it. The attribute reader (data/mini/probe: skin and hair colour)
   reads the drawing, A's render and B's render; a trial is a hit when the drawing is closer to A than
   to B. With tokens the target is >= 80%; without them about 50% (chance). For reference, the same with
   A's description written out instead of c_id ("a man with tan skin and a grey buzz cut, ..."): what
   the model draws from words alone.
Written to <out>/metrics.json and <out>/identity.png (per row: A, with c_id, without, described, B); with
`--update-manifest`, the figures go into data/mini/manifest.json under "identity_evaluation".
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
from portrait_edit.data.world_faces import render_faces
from portrait_edit.evaluation.world_probe import WorldProbe
from portrait_edit.images import encode_png, to_tensor, to_uint8
from portrait_edit.loading.components import load_image_encoder
from portrait_edit.metrics.identity import identity_retrieval_top1
from portrait_edit.models.clip_image import clip_pixels
from portrait_edit.models.identity_encoder import IdentityEncoder, clip_tokens, encode_identity
from portrait_edit.models.token_splice import encode_prompts_with_identity
from portrait_edit.paths import DATA_DIR
from portrait_edit.systems.sampling import SamplingSystem
from portrait_edit.world.describe import describe_identity
from portrait_edit.world.identity import identity_from_seed

EVAL_SEED = (
    20_26_11_4  # held-out identity stream: training identities come from seed 0 (configs/mini/identity.yaml)
)
ATTRIBUTES = ("skin_rgb", "hair_rgb")


def to_float(images: np.ndarray) -> torch.Tensor:
    return to_tensor(images)


@torch.no_grad()
def retrieval(faces: torch.Tensor, ids: torch.Tensor, image_encoder, encoder: IdentityEncoder) -> dict:
    c_id = encode_identity(image_encoder, encoder, faces).flatten(1)
    c = encoder.config
    clip = image_encoder(
        pixel_values=clip_pixels(faces, c.image_size, c.image_mean, c.image_std)
    ).image_embeds
    tokens = clip_tokens(image_encoder, faces, c).mean(dim=1)  # what the encoder reads, mean-pooled
    return {
        "c_id_top1": identity_retrieval_top1(c_id, ids).float().mean().item(),
        "clip_top1": identity_retrieval_top1(clip, ids).float().mean().item(),
        "clip_tokens_top1": identity_retrieval_top1(tokens, ids).float().mean().item(),
        "clip_layer": c.clip_layer,
        "identities": int(ids.max()) + 1,
    }


@torch.no_grad()
def attributes(probe: WorldProbe, images: torch.Tensor) -> torch.Tensor:
    """Skin and hair colour read off images: float (B, 6) in [0, 1]."""
    out = probe.eval()(images)
    return torch.cat([out[name] for name in ATTRIBUTES], dim=1)


@torch.no_grad()
def generation(
    system: SamplingSystem,
    faces: torch.Tensor,
    genders: list[str],
    c_id: torch.Tensor,
    trials: int,
    template: str,
    steps: int,
    descriptions: list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Drawings with and without identity words (and, given `descriptions`, with A's description after the
    gender word): float (T, 3, H, W) each, plus the (A, B) indices."""
    rng = np.random.default_rng(EVAL_SEED)
    n = len(faces)
    a = torch.arange(trials) % n
    b = torch.tensor([(int(i) + 1 + int(rng.integers(n - 1))) % n for i in a])  # any other identity
    pipe = system.pipeline
    prompts = [template.format(gender=genders[int(i)]) for i in a]
    null = pipe.encode_prompt([""], "cpu", 1, False)[0]
    out: dict[str, list] = {"with": [], "without": []} | ({"described": []} if descriptions else {})
    for start in range(0, trials, 50):
        rows = slice(start, min(trials, start + 50))
        batch_prompts = prompts[rows]
        seeds = [sample_seed(EVAL_SEED, t) for t in range(rows.start, rows.stop)]
        common = dict(height=64, width=64, num_inference_steps=steps, guidance_scale=7.5, output_type="pt")
        embeds = encode_prompts_with_identity(
            system.text_encoder, pipe.tokenizer, batch_prompts, c_id[a[rows]]
        )
        out["with"].append(
            pipe(
                prompt_embeds=embeds,
                negative_prompt_embeds=null.expand(len(embeds), -1, -1),
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                **common,
            ).images
        )
        out["without"].append(
            pipe(
                prompt=batch_prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], **common
            ).images
        )
        if descriptions:
            described = [template.format(gender=f"{genders[int(i)]} {descriptions[int(i)]}") for i in a[rows]]
            out["described"].append(
                pipe(
                    prompt=described, generator=[torch.Generator().manual_seed(s) for s in seeds], **common
                ).images
            )
    return {k: torch.cat(v) * 2 - 1 for k, v in out.items()} | {"a": a, "b": b}


def hits(
    drawn: torch.Tensor, faces: torch.Tensor, a: torch.Tensor, b: torch.Tensor, probe: WorldProbe
) -> torch.Tensor:
    """bool (T,): the drawing's attributes are closer (L2) to identity A's render than to B's."""
    read, real = attributes(probe, drawn), attributes(probe, faces)
    return (read - real[a]).norm(dim=1) < (read - real[b]).norm(dim=1)


def sheet(faces: torch.Tensor, drawn: dict, rows: int = 16) -> np.ndarray:
    """Per row: A's render, drawn with c_id, drawn without, [drawn from A's description,] B's render."""
    arms = [k for k in ("with", "without", "described") if k in drawn]
    tiles = [
        torch.cat([faces[drawn["a"][i]], *(drawn[k][i] for k in arms), faces[drawn["b"][i]]], dim=2)
        for i in range(min(rows, len(drawn["a"])))
    ]
    grid = torch.cat(tiles, dim=1)
    return to_uint8(grid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini", default=str(DATA_DIR / "mini"), help="folder of the mini base and encoder")
    parser.add_argument("--identities", type=int, default=100, help="held-out identities (two renders each)")
    parser.add_argument("--trials", type=int, default=200, help="(A, B) generation trials")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (DDIM, guidance 7.5)")
    parser.add_argument(
        "--template",
        default="a {gender}, neutral expression",
        help="the drawing's prompt: the encoder's training prompt (configs/mini/identity.yaml) for a neutral face",
    )
    parser.add_argument("--out", default="outputs/mini/eval_identity", help="metrics.json and identity.png")
    parser.add_argument("--update-manifest", action="store_true", help="store the figures in the manifest")
    args = parser.parse_args(argv)
    start, mini, out = time.time(), Path(args.mini), Path(args.out)
    seeds = [sample_seed(EVAL_SEED, i) for i in range(args.identities)]
    rendered = render_faces(seeds, 2, 64, distinct_expressions=True)
    faces, ids = to_float(rendered.images), torch.from_numpy(rendered.identities)
    image_encoder = load_image_encoder(str(mini))
    encoder = IdentityEncoder.from_pretrained(mini / "identity_encoder")
    probe = WorldProbe.from_pretrained(mini / "probe")
    metrics: dict = {"retrieval": retrieval(faces, ids, image_encoder, encoder)}
    first = faces[0::2]  # view 0 of each identity: the face c_id is taken from
    genders = rendered.genders[0::2]
    c_id = encode_identity(image_encoder, encoder, first)
    system = SamplingSystem(base=str(mini), num_inference_steps=args.steps, output_dir=str(out))
    descriptions = [describe_identity(identity_from_seed(seed)) for seed in seeds]
    drawn = generation(system, first, genders, c_id, args.trials, args.template, args.steps, descriptions)
    metrics["generation"] = {
        "with_tokens": hits(drawn["with"], first, drawn["a"], drawn["b"], probe).float().mean().item(),
        "without_tokens": hits(drawn["without"], first, drawn["a"], drawn["b"], probe).float().mean().item(),
        "described": hits(drawn["described"], first, drawn["a"], drawn["b"], probe).float().mean().item(),
        "trials": args.trials,
        "template": args.template,
    }
    metrics["wall_time_s"] = round(time.time() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_bytes(out / "identity.png", encode_png(sheet(first, drawn)))
    r, g = metrics["retrieval"], metrics["generation"]
    print(
        f"retrieval    top-1 {r['c_id_top1']:.3f} with c_id; raw CLIP: {r['clip_top1']:.3f} by image embedding, "
        f"{r['clip_tokens_top1']:.3f} by layer {r['clip_layer']} tokens mean-pooled ({r['identities']} identities x 2 renders; target >= 0.60, chance {1 / (2 * r['identities'] - 1):.3f})"
    )
    print(
        f"generation   closer to A than to B: {g['with_tokens']:.3f} with c_id (target >= 0.80), "
        f"{g['without_tokens']:.3f} without (about 0.5), {g['described']:.3f} with A's description written out, "
        f"over {g['trials']} trials"
    )
    if args.update_manifest:
        path = mini / "manifest.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        manifest["identity_evaluation"] = {
            **metrics,
            "command": "python tools/eval_identity.py --update-manifest",
        }
        atomic_write_json(path, manifest)
    print(f"figures in {out / 'metrics.json'}; sheet {out / 'identity.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
