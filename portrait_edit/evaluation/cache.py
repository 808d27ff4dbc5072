"""Each method's evaluation results per item on disk, so an interrupted `validate` resumes where it stopped
and a table that gains a row (a new ablation) computes only that row.

A method's results live in `<root>/<key digest>/<item index>.npz`: the key holds everything its results
depend on (the method's settings, the judges' settings, a fingerprint of every local model file they
read: path, size and modification time, and the version of the scores' definitions), so a retrained
checkpoint, another judge or a corrected score never reuses stale figures. Each file also records its item (seed, direction, prompts and a digest of the input image) and
is used only for that same item. Files are written atomically (a half-written one never exists).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from portrait_edit.atomic import atomic_write_bytes
from portrait_edit.paths import DATA_DIR


def fingerprint(source: str | None) -> str | None:
    """A local file or folder (or a preset's shipped folder): digest of its files' relative paths, sizes
    and modification times, which changes when any file is rewritten; anything else (a hub id, None) is
    itself, so pin a hub model by a local folder where its revision may move."""
    if source is not None and not os.path.exists(source) and (DATA_DIR / source).is_dir():
        source = str(DATA_DIR / source)  # a preset such as "mini"
    if source is None or not os.path.exists(source):
        return source
    root = Path(source)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(root) if path != root else path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode()
        )
    return digest.hexdigest()[:16]


def item_check(seed: int, direction: str, p_a: str, p_b: str, source: np.ndarray) -> dict[str, Any]:
    """What identifies an evaluation item: its seed, direction, prompts and input image."""
    image = hashlib.sha256(np.ascontiguousarray(source, dtype=np.float32).tobytes()).hexdigest()[:16]
    return {"seed": int(seed), "direction": direction, "p_a": p_a, "p_b": p_b, "source": image}


class ItemCache:
    """One method's per-item records: {"scores": {name: float}, "features": {kind: array}, "image": uint8
    array or None, "mask": uint8 array or None}.

    Args:
        root: the folder of every method's caches.
        key: JSON-able description of what the records depend on (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike, key: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        self.key = key

    def path(self, index: int) -> Path:
        return self.folder / f"{index:08d}.npz"

    def load(self, index: int, check: dict[str, Any]) -> dict[str, Any] | None:
        """The record of item `index` when it was saved for the same item (`check`), else None."""
        path = self.path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta["check"] != check:
                    return None
                arrays = {k: data[k] for k in data.files if k != "meta"}
        except (OSError, ValueError, KeyError):  # unreadable: recompute it
            return None
        return {
            "scores": meta["scores"],
            "sweep": meta.get("sweep"),
            "features": {k: arrays[f"features.{k}"] for k in meta["features"]},
            "image": arrays.get("image"),
            "mask": arrays.get("mask"),
        }

    def save(self, index: int, check: dict[str, Any], record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / "key.json").is_file():
            atomic_write_bytes(self.folder / "key.json", json.dumps(self.key, indent=1, default=str).encode())
        arrays = {f"features.{k}": np.asarray(v) for k, v in record["features"].items()}
        arrays.update({k: record[k] for k in ("image", "mask") if record.get(k) is not None})
        meta = {"check": check, "scores": record["scores"], "sweep": record.get("sweep"),
                "features": list(record["features"])}  # fmt: skip
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        atomic_write_bytes(self.path(index), buffer.getvalue())
