"""Add the MCDM's cached conditions to pair shards: `tgt.latent.npy` and `src.latent.npy` (scaled VAE
latents) and `src.clip.npy` (the CLIP tokens the image adapter reads), so that training never runs the VAE
or CLIP (DESIGN.md §4). Stored as float16 by default (ViT-L/14 tokens are 0.5 MB a sample then; the loss
matches online encoding to fp16 rounding); `--dtype float32` stores them exactly.

The encoders and how x_A is shown to CLIP come from an MCDM fit config (its model's `base` and
conditioning), so the cache matches the model that reads it; the settings are recorded next to the
shards in `conditions.json`, and a rerun with other settings is refused. Each shard is rewritten to a
temporary name and renamed over the original (all members kept, sorted as the writer sorts them), or,
with `--out`, written into another folder (the shipped data/mini/pairs stay as they are; the shards'
index and manifest files are copied beside them); a shard whose samples all carry the three fields is
skipped, so an interrupted run resumes. A sample whose images cannot be decoded is copied without the
fields and counted.

    python tools/cache_conditions.py --config configs/mini/mcdm.yaml data/mini/pairs --out outputs/mini/pairs_cached
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from portrait_edit.data.images import decode_image, to_tensor
from portrait_edit.data.shard_pipeline import read_shard_samples, resolve_shards
from portrait_edit.data.shard_writer import atomic_write_json
from portrait_edit.models.components import load_components
from portrait_edit.models.mcdm import MCDMConditioning

FIELDS = ("tgt.latent.npy", "src.latent.npy", "src.clip.npy")


def conditioning_from_config(config: str) -> tuple[MCDMConditioning, dict]:
    """The (bound) MCDM conditioning of a fit config and the settings that define its cache."""
    model = (yaml.safe_load(Path(config).read_text()) or {}).get("model") or {}
    args = model.get("init_args") or {}
    base = args.get("base", "mini")
    conditioning_args = (args.get("conditioning") or {}).get("init_args") or {}
    conditioning = MCDMConditioning(**conditioning_args)
    parts = ("vae", "unet", *conditioning.parts)
    conditioning.bind(load_components(base, parts=parts, torch_dtype=torch.float32))
    layer, size, mean, std = conditioning.clip_view
    settings = {
        "base": base, "image_encoder": conditioning.image_encoder_source or base, "clip_layer": layer,
        "image_size": size, "image_mean": mean, "image_std": std,
    }  # fmt: skip
    return conditioning.eval(), settings


def npy_bytes(array: torch.Tensor, dtype: torch.dtype) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.to(dtype).numpy(), allow_pickle=False)
    return buffer.getvalue()


@torch.no_grad()
def cache_shard(
    url: str,
    conditioning: MCDMConditioning,
    batch_size: int,
    dtype: torch.dtype = torch.float16,
    dest: str | None = None,
) -> tuple[int, int]:
    """Write shard `url` with the cached fields to `dest` (None: over `url`); returns (samples cached,
    samples skipped as corrupt)."""
    dest = dest or url
    exists = Path(dest).is_file()
    written = read_shard_samples(dest) if exists else {}
    if exists and all(all(f in fields for f in FIELDS) for fields in written.values()):
        return 0, 0
    samples = written if dest == url else read_shard_samples(url)
    keys, sources, targets, bad = [], [], [], 0
    for key, fields in samples.items():
        try:
            src = to_tensor(decode_image(fields["src.png"], f"{key}.src.png"))
            tgt = to_tensor(decode_image(fields["tgt.png"], f"{key}.tgt.png"))
        except (KeyError, ValueError, OSError) as exc:
            print(f"{url}: sample {key} not cached ({exc})", file=sys.stderr)
            bad += 1
            continue
        keys.append(key)
        sources.append(src)
        targets.append(tgt)
    for start in range(0, len(keys), batch_size):
        src = torch.stack(sources[start : start + batch_size])
        tgt = torch.stack(targets[start : start + batch_size])
        src_latent, tgt_latent = conditioning.source_latent(src), conditioning.source_latent(tgt)
        clip = conditioning.source_clip(src)
        for k, key in enumerate(keys[start : start + batch_size]):
            samples[key]["src.latent.npy"] = npy_bytes(src_latent[k], dtype)
            samples[key]["tgt.latent.npy"] = npy_bytes(tgt_latent[k], dtype)
            samples[key]["src.clip.npy"] = npy_bytes(clip[k], dtype)
    tmp = f"{dest}.cache.tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for key, fields in samples.items():
            for field in sorted(fields):
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(fields[field]), 0, 0o444
                tar.addfile(info, io.BytesIO(fields[field]))
    os.replace(tmp, dest)
    return len(keys), bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", help="pair shards: a directory, glob or brace pattern")
    parser.add_argument("--config", required=True, help="the MCDM fit config whose encoders to use")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--out", default=None, help="write the cached shards here (default: in place)")
    args = parser.parse_args(argv)
    urls = resolve_shards(args.shards)
    if not urls:
        raise SystemExit(f"no shards found at {args.shards!r}; write pairs there first")
    conditioning, settings = conditioning_from_config(args.config)
    settings["dtype"] = args.dtype
    source = Path(urls[0]).parent
    out = Path(args.out) if args.out else source
    if out.resolve() != source.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for sidecar in source.glob("*.json"):  # the shards' indexes and manifests
            if sidecar.name != "conditions.json":
                shutil.copyfile(sidecar, out / sidecar.name)
    record = out / "conditions.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise SystemExit(
            f"{record} says these shards were cached with {json.loads(record.read_text())}, not {settings}; "
            "cache a fresh copy of the pairs, or delete the *.npy members and that file"
        )
    atomic_write_json(record, settings)
    cached = bad = 0
    for url in tqdm(urls, desc="caching conditions", unit="shard"):
        dest = str(out / Path(url).name)
        n, b = cache_shard(url, conditioning, args.batch_size, getattr(torch, args.dtype), dest)
        cached, bad = cached + n, bad + b
    print(
        f"cached conditions of {cached} samples in {len(urls)} shards ({out}); "
        f"{bad} corrupt samples left uncached"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
