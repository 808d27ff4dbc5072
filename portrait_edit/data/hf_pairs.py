"""Our pair shards as a Hugging Face `datasets` dataset, and back, so the pairs train other editing models
and other pair datasets train ours.

`pairs_to_dataset` writes the columns diffusers' InstructPix2Pix training example reads (`input_image`,
`edit_prompt`, `edited_image`: `--original_image_column`, `--edit_prompt_column`, `--edited_image_column`),
so that example or any Kontext-style trainer trains on our pairs, plus the pair's metadata: `source_prompt`
(p_a), `direction`, `seed`, `identity_similarity` (null where the pair has none) and `key`. `edit_prompt` is
p_b, the target's description (what the MCDM is conditioned on), not an instruction.

`dataset_to_pairs` does the inverse for any dataset with those three columns (an IP2P-style dataset on
disk, or one `datasets.load_dataset` reads): x_A, x_B and p_b, with p_a from `source_prompt` where the
dataset has it ("" otherwise: the MCDM's text null), written as pair shards (`src.png`, `tgt.png`, `json`)
with sidecars, which PairShardsDataModule reads like generated ones.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from portrait_edit.atomic import atomic_write_json
from portrait_edit.data.shard_pipeline import read_shard_samples, resolve_shards, write_shard_samples
from portrait_edit.images import decode_image, encode_png

COLUMNS = ("input_image", "edit_prompt", "edited_image")  # diffusers' InstructPix2Pix example
METADATA = ("source_prompt", "direction", "seed", "identity_similarity", "key")


def _rows(spec: str) -> Iterator[dict[str, Any]]:
    for url in resolve_shards(spec):
        for key, fields in read_shard_samples(url).items():
            meta = json.loads(fields["json"]) if "json" in fields else {}
            similarity = meta.get("identity_similarity")
            yield {
                "input_image": Image.open(io.BytesIO(fields["src.png"])),
                "edit_prompt": meta.get("p_b", ""),
                "edited_image": Image.open(io.BytesIO(fields["tgt.png"])),
                "source_prompt": meta.get("p_a", ""),
                "direction": meta.get("direction", ""),
                "seed": int(meta.get("seed", -1)),
                "identity_similarity": None if similarity is None else float(similarity),
                "key": key,
            }


def pairs_to_dataset(spec: str, out: str | os.PathLike) -> Path:
    """Write the pairs of shards `spec` as a `datasets` dataset (`save_to_disk`) at `out`; returns `out`."""
    import datasets  # the [datasets] extra

    features = datasets.Features({
        "input_image": datasets.Image(), "edit_prompt": datasets.Value("string"), "edited_image": datasets.Image(),
        "source_prompt": datasets.Value("string"), "direction": datasets.Value("string"),
        "seed": datasets.Value("int64"), "identity_similarity": datasets.Value("float32"), "key": datasets.Value("string"),
    })  # fmt: skip
    dataset = datasets.Dataset.from_generator(_rows, gen_kwargs={"spec": spec}, features=features)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _load(source: str, split: str) -> Any:
    import datasets

    if Path(source, "dataset_info.json").is_file() or Path(source, "state.json").is_file():
        dataset = datasets.load_from_disk(source)
    else:
        dataset = datasets.load_dataset(source, split=split)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = dataset[split]
    missing = [c for c in COLUMNS if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source} has no column(s) {missing} (it has {dataset.column_names}); an InstructPix2Pix-style "
            f"dataset needs {list(COLUMNS)}"
        )
    return dataset


def _png(image: Any, name: str, size: int | None) -> bytes:
    if not isinstance(image, Image.Image):
        image = Image.open(io.BytesIO(image["bytes"])) if isinstance(image, dict) else image
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), name)  # RGB, EXIF-rotated, alpha composited: as our reader
    if size is not None and decoded.size != (size, size):
        decoded = decoded.resize((size, size), Image.Resampling.BICUBIC)
    return encode_png(np.asarray(decoded))


def dataset_to_pairs(
    source: str, out: str | os.PathLike, split: str = "train", shard_size: int = 1000, size: int | None = None,
    prefix: str = "pairs",
) -> int:  # fmt: skip
    """Write an IP2P-style dataset (a `save_to_disk` folder or a `load_dataset` path / hub id) as pair
    shards in `out`; images resized to `size` x `size` when given. Returns the number of pairs written."""
    dataset = _load(source, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count, shard, samples = 0, 0, {}
    for index, row in enumerate(dataset):
        key = f"{index:09d}"
        meta = {"p_b": row["edit_prompt"], "p_a": row.get("source_prompt") or "", "imported_from": source}
        meta |= {k: row[k] for k in ("direction", "seed") if row.get(k) is not None}
        samples[key] = {
            "src.png": _png(row["input_image"], f"{source}[{index}].input_image", size),
            "tgt.png": _png(row["edited_image"], f"{source}[{index}].edited_image", size),
            "json": json.dumps(meta, sort_keys=True).encode(),
        }
        if len(samples) == shard_size or index == len(dataset) - 1:
            name = f"{prefix}-000-{shard:06d}"
            write_shard_samples(str(out / f"{name}.tar"), samples)
            atomic_write_json(
                out / f"{name}.json", {"name": f"{name}.tar", "count": len(samples), "keys": list(samples)}
            )
            count, shard, samples = count + len(samples), shard + 1, {}
    return count
