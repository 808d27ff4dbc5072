"""Figures of generated mini-world pairs (stage 2) and the paper's Figure 3 analog (pose / identity ablations).

    python tools/eval_pairs.py [--variant full=data/mini/pairs] [--variant no_pose=DIR] ...
        [--out docs/results]

For every pair in each variant's shards (left half x_A, right half x_B):
- fidelity: the direction classifier reads the left half as the source, the right half as the pair's
  direction (target: both in >= 80% of the full set's pairs);
- identity across the halves: cosine of the halves' c_id (the shipped identity encoder) and the distance
  between the skin and hair colours the attribute reader (data/mini/probe) reads off each half, the
  second being independent of the encoder that made the pairs;
- identity kept from the source: the attribute distance between the left half and the identity source's
  face (world people: their neutral front view);
- how alike the halves are: their SSIM (the world's exact pairs: about 0.97 for expressions, whose edit
  region is small);
- against the world's truth, for pairs drawn beside a world portrait (`world_sources`: x_A is the
  portrait of the pair's seed, so the world knows the exact edit of it): the SSIM of the right half to the
  exact target, and of the left half (no edit at all) for scale; other pairs have no exact target (n/a).
Ablations are compared on the pairs all variants share (pairs come from the global job index, so pair i
of every variant has the same prompts, pose and seed). Writes <out>/mini_pairs.json, <out>/mini_pairs.md,
<out>/mini_pairs.jpg (two pairs per direction) and <out>/mini_pairs_ablation.jpg (per row: one job in
every variant, left to right in the order given).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from portrait_edit.atomic import atomic_write_bytes, atomic_write_json
from portrait_edit.data.pair_jobs import WORLD
from portrait_edit.data.shard_pipeline import iter_samples, resolve_shards
from portrait_edit.evaluation.direction_classifier import DirectionClassifier
from portrait_edit.evaluation.world_probe import WorldProbe
from portrait_edit.images import encode_jpeg, to_tensor, to_uint8
from portrait_edit.loading.components import load_image_encoder
from portrait_edit.metrics.image import ssim
from portrait_edit.models.identity_encoder import IdentityEncoder, encode_identity
from portrait_edit.paths import DATA_DIR
from portrait_edit.tasks import LABELS
from portrait_edit.world import make_pair
from portrait_edit.world.faces import make_face

DEFAULT_VARIANTS = (
    "full=data/mini/pairs",
    "no_pose=outputs/mini/pairs_no_pose",
    "no_identity=outputs/mini/pairs_no_identity",
)
FIELDS = ("src.png", "tgt.png", "json")
METRICS = {
    "left_source": "left read as source",
    "right_target": "right read as the direction",
    "both": "both",
    "cid_cosine": "c_id cosine of the halves",
    "attr_distance": "attribute distance of the halves",
    "source_distance": "attribute distance, left vs source face",
    "halves_ssim": "SSIM of the halves",
    "right_exact_ssim": "SSIM of the right half to the exact target",
    "left_exact_ssim": "SSIM of the left half to the exact target",
}


def read_pairs(folder: str) -> dict:
    """The pairs of a generation run, by key: left / right uint8 (N, H, W, 3) and their meta."""
    rows = []
    for sample in iter_samples(resolve_shards(folder), decode=True, required=FIELDS):
        rows.append(
            (sample["__key__"], to_uint8(sample["src.png"]), to_uint8(sample["tgt.png"]), sample["json"])
        )
    if not rows:
        raise ValueError(
            f"no pairs in {folder}; generate them with portrait-edit predict (configs/mini/generate.yaml)"
        )
    rows.sort(key=lambda row: row[0])
    keys, left, right, meta = zip(*rows)
    return {"keys": list(keys), "left": np.stack(left), "right": np.stack(right), "meta": list(meta)}


def to_float(images: np.ndarray) -> torch.Tensor:
    return to_tensor(images)


class Judges:
    """The shipped readers: direction classifier, identity encoder (+ its CLIP), attribute reader."""

    def __init__(self, mini: Path) -> None:
        self.classifier = DirectionClassifier.from_pretrained(mini / "classifier").eval()
        self.identity = IdentityEncoder.from_pretrained(mini / "identity_encoder").eval()
        self.clip = load_image_encoder(str(mini), torch_dtype=torch.float32).eval()
        self.probe = WorldProbe.from_pretrained(mini / "probe").eval()

    @torch.no_grad()
    def attributes(self, images: torch.Tensor) -> torch.Tensor:
        out = self.probe(images)
        return torch.cat([out["skin_rgb"], out["hair_rgb"]], dim=1)

    @torch.no_grad()
    def c_id(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([encode_identity(self.clip, self.identity, x).flatten(1) for x in images.split(100)])


def source_face(source: str, size: int) -> np.ndarray:
    if not source.startswith(f"{WORLD}:"):
        raise ValueError(
            f"identity source {source!r} is not a world person; this evaluation reads world pairs"
        )
    return make_face(int(source.split(":", 1)[1]), 0, size=size).image


def pair_figures(
    read_left: torch.Tensor,
    read_right: torch.Tensor,
    labels: torch.Tensor,
    cid_left: torch.Tensor,
    cid_right: torch.Tensor,
    attr_left: torch.Tensor,
    attr_right: torch.Tensor,
    attr_face: torch.Tensor,
    halves_ssim: torch.Tensor,
    exact_ssim: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, np.ndarray]:
    """Each metric of METRICS per pair, float (N,), from the readings: the classifier's labels of the left
    and right halves (N,) and the pairs' direction labels (N,); c_id of the halves (N, K * d); attributes
    (N, 6) of the halves and of the identity source's face; the SSIM of the halves (N,); the SSIM of the
    right and of the left half to the exact target (N,) each, NaN where there is none."""
    out = {
        "left_source": read_left == 0,
        "right_target": read_right == labels,
        "both": (read_left == 0) & (read_right == labels),
        "cid_cosine": torch.nn.functional.cosine_similarity(cid_left, cid_right, dim=1),
        "attr_distance": (attr_left - attr_right).norm(dim=1),
        "source_distance": (attr_left - attr_face).norm(dim=1),
        "halves_ssim": halves_ssim,
        "right_exact_ssim": exact_ssim[0],
        "left_exact_ssim": exact_ssim[1],
    }
    return {k: v.float().numpy() for k, v in out.items()}


def exact_ssim(
    left: torch.Tensor, right: torch.Tensor, meta: list[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM (N,) of the right and of the left halves (N, 3, S, S) to the world's exact target of each pair
    drawn beside a world portrait (its json's scales.world_sources: x_A is the world pair of its seed and
    direction); NaN for the other pairs."""
    right_ssim, left_ssim = torch.full((len(meta),), float("nan")), torch.full((len(meta),), float("nan"))
    sourced = [i for i, m in enumerate(meta) if m.get("scales", {}).get("world_sources")]
    if sourced:
        exact = to_float(
            np.stack(
                [make_pair(meta[i]["seed"], meta[i]["direction"], size=left.shape[-1]).gt for i in sourced]
            )
        )
        right_ssim[sourced], left_ssim[sourced] = ssim(right[sourced], exact), ssim(left[sourced], exact)
    return right_ssim, left_ssim


@torch.no_grad()
def per_pair(pairs: dict, judges: Judges) -> dict[str, np.ndarray]:
    """`pair_figures` of every pair, read by the shipped judges."""
    left, right = to_float(pairs["left"]), to_float(pairs["right"])
    faces = to_float(np.stack([source_face(m["identity_source"], left.shape[-1]) for m in pairs["meta"]]))
    return pair_figures(
        judges.classifier.predict_directions(left),
        judges.classifier.predict_directions(right),
        torch.tensor([LABELS.index(m["direction"]) for m in pairs["meta"]]),
        judges.c_id(left),
        judges.c_id(right),
        *(judges.attributes(x) for x in (left, right, faces)),
        ssim(left, right),
        exact_ssim(left, right, pairs["meta"]),
    )


def summary(values: dict[str, np.ndarray], pick: np.ndarray | None = None) -> dict[str, float | None]:
    """Mean of each metric over the pairs (`pick`: a selection), over the pairs that have it (None: none)."""
    out = {}
    for k, v in values.items():
        v = v[pick] if pick is not None else v
        out[k] = None if np.isnan(v).all() else round(float(np.nanmean(v)), 4)
    return out


def tile_row(pairs: dict, index: list[int]) -> np.ndarray:
    return np.concatenate(
        [np.concatenate([pairs["left"][i], pairs["right"][i]], axis=1) for i in index], axis=1
    )


def contact_sheet(pairs: dict, per_direction: int = 2) -> np.ndarray:
    """Per direction, `per_direction` pairs side by side: one row per direction."""
    rows = []
    for direction in LABELS[1:]:
        index = [i for i, m in enumerate(pairs["meta"]) if m["direction"] == direction][:per_direction]
        if len(index) == per_direction:
            rows.append(tile_row(pairs, index))
    return np.concatenate(rows, axis=0)


def ablation_sheet(variants: dict[str, dict], keys: list[str], rows: int = 8) -> np.ndarray:
    """Per row one job, in every variant (left to right), with a white gap between variants."""
    lines = []
    for key in keys[:rows]:
        tiles = []
        for pairs in variants.values():
            i = pairs["keys"].index(key)
            tiles += [tile_row(pairs, [i]), np.full((pairs["left"].shape[1], 4, 3), 255, np.uint8)]
        lines.append(np.concatenate(tiles[:-1], axis=1))
    return np.concatenate(lines, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mini", default=str(DATA_DIR / "mini"), help="the shipped mini models")
    parser.add_argument(
        "--variant", action="append", default=None, help="name=shard folder; the first is the full method"
    )
    parser.add_argument("--out", default="docs/results", help="where mini_pairs.{json,md,png} go")
    args = parser.parse_args(argv)
    start = time.time()
    judges = Judges(Path(args.mini))
    variants, values = {}, {}
    for spec in args.variant or DEFAULT_VARIANTS:
        name, _, folder = spec.partition("=")
        try:
            variants[name] = read_pairs(folder)
        except ValueError as exc:
            if name == (args.variant or DEFAULT_VARIANTS)[0].partition("=")[0]:
                raise SystemExit(str(exc)) from None
            print(f"{name}: skipped ({exc})")
            continue
        values[name] = per_pair(variants[name], judges)
        print(f"{name}: {len(variants[name]['keys'])} pairs from {folder}")
    full = next(iter(variants))
    directions = [m["direction"] for m in variants[full]["meta"]]
    result: dict = {
        "pairs": len(directions),
        "full": summary(values[full]),
        "per_direction": {
            d: summary(values[full], np.array([x == d for x in directions]))
            for d in LABELS[1:]
            if d in directions
        },
    }
    shared = sorted(set.intersection(*(set(p["keys"]) for p in variants.values())))
    result["ablation"] = {"pairs": len(shared), "variants": {}}
    for name, pairs in variants.items():
        pick = np.array([pairs["keys"].index(k) for k in shared])
        result["ablation"]["variants"][name] = summary(values[name], pick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "mini_pairs.jpg", encode_jpeg(contact_sheet(variants[full])))
    atomic_write_bytes(out / "mini_pairs_ablation.jpg", encode_jpeg(ablation_sheet(variants, shared)))
    result.update(
        command="python tools/eval_pairs.py " + " ".join(argv or sys.argv[1:]),
        seconds=round(time.time() - start),
    )
    atomic_write_json(out / "mini_pairs.json", result)
    header = "| | " + " | ".join(METRICS.values()) + " |\n" + "|---" * (len(METRICS) + 1) + "|\n"

    def line(name: str, m: dict) -> str:
        return f"| {name} | " + " | ".join("n/a" if m[k] is None else f"{m[k]:.3f}" for k in METRICS) + " |\n"

    table = header + "".join(
        line(d, m) for d, m in {**result["per_direction"], "all": result["full"]}.items()
    )
    ablation = header + "".join(line(n, m) for n, m in result["ablation"]["variants"].items())
    text = (
        f"`{result['command']}`\n\n{result['pairs']} pairs ({full}):\n\n{table}\n"
        f"Ablations on the {len(shared)} pairs every variant has (Figure 3 analog, mini_pairs_ablation.jpg):\n\n"
        f"{ablation}"
    )
    atomic_write_bytes(out / "mini_pairs.md", text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
