"""A report of pair shards (`inspect_shards`): counts, keys, member sizes, directions, leftovers, and a
contact sheet of pairs; tools/inspect_shards.py prints it.

Corrupt samples are counted (never fatal) so the report can be made of a damaged set to see the damage.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from portrait_edit.atomic import atomic_write_bytes
from portrait_edit.data.error_handler import CountingErrorHandler
from portrait_edit.data.shard_reader import iter_samples, resolve_shards
from portrait_edit.images import decode_image, encode_png

SHEET_COLUMNS = ("src.png", "tgt.png", "gt.png", "edit_mask.png", "pose.png")
TILE = 96  # contact-sheet tile height in pixels
LABEL = 14  # label strip height


def inspect_shards(path: str, sheet: str | None = None, n: int = 8) -> dict[str, Any]:
    """Summarise a shard set and optionally write a contact sheet of its first `n` pairs.

    Args:
        path: a shard directory, glob or brace pattern (complete `*.tar` only are read).
        sheet: where to write the contact-sheet PNG (atomically); None skips it.
        n: number of pairs on the contact sheet.

    Returns:
        dict with shards, samples, skipped, first_key, last_key, duplicate_keys, temporary_files,
        field_bytes ({field: {mean, min, max}}), directions ({direction: count}) and sheet (path or None).
    """
    urls = resolve_shards(path)
    handler = CountingErrorHandler(max_error_rate=1.0)  # count everything, never abort an inspection
    keys: list[str] = []
    sizes: dict[str, list[int]] = defaultdict(list)
    directions: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    for sample in iter_samples(urls, handler=handler):
        handler.count(sample)
        keys.append(sample["__key__"])
        for field, value in sample.items():
            if not field.startswith("__"):
                sizes[field].append(len(value))
        meta = _json_or_empty(sample.get("json"))
        if "direction" in meta:
            directions[str(meta["direction"])] += 1
        if len(rows) < n:
            rows.append(
                {
                    "key": sample["__key__"],
                    "meta": meta,
                    **{f: sample[f] for f in SHEET_COLUMNS if f in sample},
                }
            )
    duplicates = sorted(k for k, c in Counter(keys).items() if c > 1)
    report: dict[str, Any] = {
        "shards": len(urls),
        "samples": len(keys),
        "skipped": handler.skipped,
        "first_key": keys[0] if keys else None,
        "last_key": keys[-1] if keys else None,
        "duplicate_keys": duplicates,
        "temporary_files": _temporary_files(urls),
        "field_bytes": {
            f: {"mean": sum(v) / len(v), "min": min(v), "max": max(v)} for f, v in sorted(sizes.items())
        },
        "directions": dict(sorted(directions.items())),
        "sheet": None,
    }
    if sheet is not None and rows:
        atomic_write_bytes(sheet, _contact_sheet(rows))
        report["sheet"] = sheet
    return report


def _json_or_empty(data: bytes | None) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8")) if data else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _temporary_files(urls: list[str]) -> list[str]:
    """Leftovers of interrupted writes (`*.tmp*`) next to the shards: an unfinished generation run."""
    dirs = {os.path.dirname(os.path.abspath(u)) for u in urls}
    return sorted(p for d in dirs for p in glob.glob(os.path.join(d, "*.tmp*")))


def _contact_sheet(rows: list[dict[str, Any]]) -> bytes:
    """One row per pair: the present columns of SHEET_COLUMNS, labelled with key and direction."""
    columns = [c for c in SHEET_COLUMNS if any(c in r for r in rows)]
    tiles = [[_tile(row.get(c), f"{row['key']}.{c}") for c in columns] for row in rows]
    width = max(sum(t.width for t in row) for row in tiles)
    canvas = Image.new("RGB", (width, len(rows) * (TILE + LABEL)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (row, row_tiles) in enumerate(zip(rows, tiles)):
        y = r * (TILE + LABEL)
        label = f"{row['key']}  {row['meta'].get('direction', '')}  [{' | '.join(c.split('.')[0] for c in columns)}]"
        draw.text((2, y + 1), label, fill=(0, 0, 0))
        x = 0
        for tile in row_tiles:
            canvas.paste(tile, (x, y + LABEL))
            x += tile.width
    return encode_png(np.asarray(canvas))


def _tile(data: bytes | None, name: str) -> Image.Image:
    """A TILE-high thumbnail of one member; grey placeholder when missing, red when undecodable."""
    if data is None:
        return Image.new("RGB", (TILE, TILE), (200, 200, 200))
    try:
        img = decode_image(data, name, min_size=1)
    except ValueError:
        return Image.new("RGB", (TILE, TILE), (255, 0, 0))
    width = max(1, round(img.width * TILE / img.height))
    return img.resize((width, TILE), Image.Resampling.NEAREST)
