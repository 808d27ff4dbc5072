"""The MCDM's cached conditions in pair shards (DESIGN.md section 4): `tgt.latent.npy` and `src.latent.npy`
(scaled VAE latents) and `src.clip.npy` (the CLIP tokens the image adapter reads), so training never runs
the VAE or CLIP.

How they were made (the base, its VAE, the image encoder and how x_A is shown to it) is recorded beside
the shards in `conditions.json`; an MCDM fit whose conditioning would compute them otherwise is refused
(`check_cached_conditions`), and so is caching the same shards a second way. A cached shard is rewritten
whole (temporary name, then renamed) and its sidecar and manifest entry get the new checksums.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait_edit.atomic import atomic_write_json, file_sha256
from portrait_edit.data.shard_pipeline import read_shard_samples, resolve_shards, write_shard_samples
from portrait_edit.images import decode_image, to_tensor
from portrait_edit.loading.components import load_components
from portrait_edit.models.mcdm_conditioning import MCDMConditioning

FIELDS = ("tgt.latent.npy", "src.latent.npy", "src.clip.npy")
CONDITIONS_FILE = "conditions.json"
# Settings that change what is cached (the storage dtype does not: either one trains the same model).
_DEFINING = ("base", "vae", "image_encoder", "clip_layer", "image_size", "image_mean", "image_std")


def cache_settings(conditioning: MCDMConditioning, base: str, vae: str | None) -> dict[str, Any]:
    """What defines the cached conditions of a (bound) MCDM conditioning over `base` (and its `vae`)."""
    layer, size, mean, std = conditioning.clip_view
    return {
        "base": base, "vae": vae, "image_encoder": conditioning.image_encoder_source or base,
        "clip_layer": layer, "image_size": size, "image_mean": list(mean), "image_std": list(std),
    }  # fmt: skip


def conditioning_from_model(model: dict[str, Any]) -> tuple[MCDMConditioning, dict[str, Any]]:
    """The bound MCDM conditioning of a resolved MCDMSystem config (`model` of a fit config, with
    class_path and init_args) and its `cache_settings`."""
    args = model.get("init_args") or {}
    base, vae = args.get("base", "mini"), args.get("vae")
    conditioning = MCDMConditioning(**((args.get("conditioning") or {}).get("init_args") or {}))
    conditioning.bind(
        load_components(
            base, vae=vae, parts=("vae", "unet", *conditioning.parts), torch_dtype=torch.float32,
            single_file_config=args.get("single_file_config"), local_files_only=args.get("local_files_only"),
        )
    )  # fmt: skip
    return conditioning.eval(), cache_settings(conditioning, base, vae)


def check_cached_conditions(spec: str, settings: dict[str, Any]) -> None:
    """Raise a ValueError when shards `spec` hold conditions cached another way than `settings` say (another
    base, VAE, image encoder, CLIP layer or view): training would read them as this model's."""
    records = {Path(url).parent / CONDITIONS_FILE for url in resolve_shards(spec)}  # one per shard folder
    for record in sorted(p for p in records if p.is_file()):
        cached = json.loads(record.read_text())
        differ = {k: (cached.get(k), settings.get(k)) for k in _DEFINING if cached.get(k) != settings.get(k)}
        if differ:
            detail = ", ".join(f"{k} {a!r} (cached) vs {b!r} (this config)" for k, (a, b) in differ.items())
            raise ValueError(
                f"{record}: these shards' cached conditions were made for another model: {detail}. Cache a "
                "copy of the pairs for this config (tools/cache_conditions.py ... --out <folder>) or train with "
                "the config they were cached for"
            )


def npy_bytes(array: torch.Tensor, dtype: torch.dtype) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.to(dtype).numpy(), allow_pickle=False)
    return buffer.getvalue()


def _update_checksums(dest: str, samples: dict[str, dict[str, bytes]]) -> None:
    """Give the shard's sidecar (`<name>.json`) and its manifest entry the rewritten tar's checksums."""
    folder, name = os.path.dirname(dest) or ".", os.path.basename(dest)
    sidecar_path = os.path.join(folder, name[: -len(".tar")] + ".json")
    if not os.path.isfile(sidecar_path):
        return
    digest = file_sha256(dest)
    sidecar = json.loads(Path(sidecar_path).read_text())
    sidecar["tar_sha256"] = digest
    for key, fields in samples.items():
        members = sidecar.setdefault("samples", {}).setdefault(key, {})
        for field, data in fields.items():
            members[field] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    atomic_write_json(sidecar_path, sidecar)
    for manifest_path in Path(folder).glob("manifest-r*.json"):
        manifest = json.loads(manifest_path.read_text())
        if name in manifest.get("shards", {}):
            manifest["shards"][name]["tar_sha256"] = digest
            atomic_write_json(manifest_path, manifest)


@torch.no_grad()
def cache_shard(
    url: str, conditioning: MCDMConditioning, batch_size: int, dtype: torch.dtype = torch.float16,
    dest: str | None = None,
) -> tuple[int, int]:  # fmt: skip
    """Write shard `url` with the cached fields to `dest` (None: over `url`); returns (samples cached,
    samples skipped as corrupt). A shard whose samples all carry the fields already is left as it is."""
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
        except (KeyError, ValueError, OSError):
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
    write_shard_samples(dest, samples)
    _update_checksums(dest, samples)
    return len(keys), bad


def record_settings(folder: Path, settings: dict[str, Any]) -> None:
    """Write `settings` as the folder's conditions.json, refusing a folder cached with other settings."""
    record = folder / CONDITIONS_FILE
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise ValueError(
            f"{record} says these shards were cached with {json.loads(record.read_text())}, not {settings}; "
            "cache a fresh copy of the pairs (--out), or delete the *.npy members and that file"
        )
    atomic_write_json(record, settings)
