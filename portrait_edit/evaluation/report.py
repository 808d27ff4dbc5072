"""The evaluation table and its picture page: markdown, CSV, JSON and an HTML grid.

`summarise(values, frechet)` turns per-item scores into one row per method (means over the items a score
applies to; the Frechet distances of the edits' features to the targets'); `write_report`
writes `table.md`, `table.csv`, `table.json` and `index.html` (per sample: input, target, then each
method's edit and mask) into a folder, each file atomically.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path

import numpy as np

from portrait_edit.atomic import atomic_write_bytes, atomic_write_json
from portrait_edit.images import encode_jpeg, encode_png
from portrait_edit.metrics.image import fid_from_features

# Column -> (heading, better): the paper's Table 1 figures, then the mini world's extras.
COLUMNS = {
    "ssim": ("SSIM", "higher"),
    "lpips": ("LPIPS", "lower"),
    "fid": ("FID", "lower"),
    "fid_clip": ("FID (CLIP features)", "lower"),
    "psnr": ("PSNR", "higher"),
    "preservation": ("SSIM outside the edit", "higher"),
    "mask_iou": ("mask IoU", "higher"),
    "fidelity": ("fidelity", "higher"),
    "identity": ("identity", "higher"),
    "mask_iou_best": ("mask IoU at the best lambda", "higher"),
    "lambda_best": ("best lambda", "none"),
}


def summarise(
    values: dict[str, np.ndarray], frechet: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, float | None]:
    """One method's row: the mean of each score over the items it applies to (None where it applies to
    none), and each Frechet distance of `frechet` (name -> (edit features, target features); None with
    fewer than 2 items)."""
    row: dict[str, float | None] = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        v = v[~np.isnan(v)]
        row[name] = float(v.mean()) if len(v) else None
    for name, (edits, targets) in frechet.items():
        row[name] = fid_from_features(edits, targets) if min(len(edits), len(targets)) > 1 else None
    return row


def frechet_caveats(items: int, dims: dict[str, int]) -> dict[str, str]:
    """A note for each Frechet column computed from fewer items than its features have dimensions (name ->
    dimension): its covariance is then singular and the distance biased upward by the sample size, so it
    compares only tables of the same size (the paper's FID used thousands of pairs)."""
    return {
        name: f"from {items} items, fewer than its {dim} feature dimensions: biased by the sample size; compare "
        "it only between tables of the same items"
        for name, dim in dims.items()
        if items < dim
    }


def format_cell(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def heading(column: str) -> str:
    name, better = COLUMNS[column]
    return name if better == "none" else f"{name} ({better} is better)"


def shown_columns(rows: dict[str, dict], unavailable: dict[str, str]) -> list[str]:
    """The COLUMNS a table shows: those some row has a value for, and those named unavailable."""
    return [c for c in COLUMNS if any(r.get(c) is not None for r in rows.values()) or c in unavailable]


def markdown_table(
    rows: dict[str, dict],
    unavailable: dict[str, str],
    notes: bool = True,
    caveats: dict[str, str] | None = None,
) -> str:
    """The rows as a markdown table; with `notes`, a line after it per unavailable metric and why, and per
    metric shown with a caveat (`frechet_caveats`)."""
    columns = shown_columns(rows, unavailable)
    head = "| method | " + " | ".join(heading(c) for c in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(format_cell(r.get(c)) for c in columns) + " |" for name, r in rows.items()
    ]
    why = (
        [f"- {COLUMNS.get(k, (k,))[0]}: unavailable: {text}" for k, text in unavailable.items()]
        + [
            f"- {COLUMNS.get(k, (k,))[0]}: caveat: {text}"
            for k, text in (caveats or {}).items()
            if k in columns
        ]
        if notes
        else []
    )
    return "\n".join(lines + ([""] + why if why else [])) + "\n"


def inline_png(png: bytes, size: int = 128) -> str:
    """An <img> tag holding the PNG bytes themselves (the page needs no other file)."""
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" width="{size}" height="{size}">'


def _img(image: np.ndarray) -> str:
    return inline_png(encode_png(image))


def html_grid(title: str, grid: list[dict], methods: list[str], table: str) -> str:
    """Per sample: input, target, then each method's edit (and its mask below it when it has one)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["input", "target", *methods])
    rows = []
    for item in grid:
        cells = [_img(item["source"]), _img(item["target"])]
        for m in methods:
            edit = item["edits"][m]
            cells.append(
                _img(edit["image"]) + ("<br>" + _img(edit["mask"]) if edit.get("mask") is not None else "")
            )
        caption = html.escape(f"{item['direction']}: {item['p_b']}")
        rows.append(
            f"<tr><td colspan='{len(cells)}'>{caption}</td></tr><tr>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif} td,th{padding:4px;text-align:center}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(table)}</pre><table><tr>{head}</tr>{''.join(rows)}</table>"
        "</body></html>"
    )


def write_report(
    folder: str | Path,
    title: str,
    rows: dict[str, dict],
    unavailable: dict[str, str],
    grid: list[dict],
    extra: dict,
    by_task: dict[str, dict] | None = None,
    caveats: dict[str, str] | None = None,
) -> Path:
    """table.md, table.csv, table.json and index.html in `folder`; returns the markdown's path. `by_task`
    (task -> {"directions": [...], "rows": rows}) adds a table per task after the one over all items;
    `caveats` (column -> note) are noted under the tables and kept in table.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by_task = by_task or {}
    table = markdown_table(rows, unavailable, notes=not by_task, caveats=caveats)
    for task, part in by_task.items():
        last = task == list(by_task)[-1]
        table += f"\n## {task} ({', '.join(part['directions'])})\n\n" + markdown_table(
            part["rows"], unavailable, last, caveats
        )
    atomic_write_bytes(folder / "table.md", f"# {title}\n\n{table}".encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["subset", "method", *COLUMNS])
    for subset, part in {"all": rows, **{t: p["rows"] for t, p in by_task.items()}}.items():
        writer.writerows(
            [subset, name, *("" if r.get(c) is None else r[c] for c in COLUMNS)] for name, r in part.items()
        )
    atomic_write_bytes(folder / "table.csv", buffer.getvalue().encode())
    atomic_write_json(
        folder / "table.json",
        {
            "title": title,
            "rows": [{"method": n, **r} for n, r in rows.items()],
            "by_task": {
                t: {"directions": p["directions"], "rows": [{"method": n, **r} for n, r in p["rows"].items()]}
                for t, p in by_task.items()
            },
            "unavailable": unavailable,
            **({"caveats": caveats} if caveats else {}),
            **extra,
        },
    )
    atomic_write_bytes(folder / "index.html", html_grid(title, grid, list(rows), table).encode())
    return folder / "table.md"


def check_columns(columns: list[dict[str, str]] | None, methods: list[str]) -> None:
    """ValueError unless every column of a direction page names a label, one of `methods` and a score."""
    if not columns:
        raise ValueError("a direction_page needs direction_columns: [{label, method, score}, ...]")
    for column in columns:
        if set(column) != {"label", "method", "score"} or column["method"] not in methods:
            raise ValueError(
                f"each of direction_columns needs label, method (one of {methods}) and score; got {column}"
            )
        if column["score"] not in COLUMNS:
            raise ValueError(f"direction column {column['label']!r}: score must be one of {list(COLUMNS)}")


def direction_sheet(grid: list[dict], figure: list[str], per_direction: int = 2) -> np.ndarray:
    """The first `per_direction` pictured items of each direction, a row each: the input, the true edit
    region (where known), then per entry of `figure` a method's edit ("name") or mask ("name:mask")."""
    rows, shown = [], {}
    for item in grid:
        if shown.get(item["direction"], 0) >= per_direction:
            continue
        shown[item["direction"]] = shown.get(item["direction"], 0) + 1
        cells = [item["source"]] + ([item["region"]] if item.get("region") is not None else [])
        for entry in figure:
            name, _, part = entry.partition(":")
            cells.append(item["edits"][name]["mask" if part == "mask" else "image"])
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def write_direction_page(
    path: str | Path,
    title: str,
    columns: list[dict[str, str]],
    by_direction: dict[str, dict],
    overall: dict[str, dict],
    command: str,
    revision: str,
    note: str | None,
    grid: list[dict],
    figure: list[str] | None = None,
) -> Path:
    """A markdown page with one row per direction (and "all") and one column per `columns` entry (a
    method's score), its figures as `<path>.json`, and, with `figure`, the first items pictured as
    `<path>.jpg` (`direction_sheet`)."""
    path = Path(path)
    table = {
        d: {c["label"]: rows[c["method"]].get(c["score"]) for c in columns}
        for d, rows in by_direction.items()
    }
    table["all"] = {c["label"]: overall[c["method"]].get(c["score"]) for c in columns}
    head = "| direction | " + " | ".join(c["label"] for c in columns) + " |"
    lines = [f"# {title}", "", f"`{command}` (revision {revision})", ""] + ([note, ""] if note else [])
    lines += [head, "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {d} | " + " | ".join(format_cell(v) for v in r.values()) + " |" for d, r in table.items()]
    if figure:
        atomic_write_bytes(path.with_suffix(".jpg"), encode_jpeg(direction_sheet(grid, figure)))
        lines += ["", f"![the first inputs of each direction]({path.with_suffix('.jpg').name})", "",
                  "Columns of the picture: input, true edit region, " + ", ".join(figure) + "."]  # fmt: skip
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    atomic_write_json(path.with_suffix(".json"), {"command": command, "revision": revision, "table": table})
    return path
