"""The demo's report: one HTML page (images inlined) of what `make demo` did and how well.

    python tools/demo_report.py --demo outputs/demo --out report/index.html

Reads, under --demo:
- `inputs/` (the held-out portraits) and `edits/<model>/<input>/` (EditWriter's <direction>.png,
  <direction>_mask.png and edit.json) for each edited model;
- `eval/table.json` (the evaluation table of those models);
- `mcdm_run/curve/version_0/metrics.csv` (the short fine-tune's loss, CSVLogger);
- `times.txt` (lines "<stage> <unix seconds at its start>", the last line "end <seconds>").
Writes --out atomically: per stage its wall time; the metrics; the training curve (inline SVG); per input:
the input, then per model a row of edits (one per direction) with their masks.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import sys
from pathlib import Path

from portrait_edit.atomic import atomic_write_bytes
from portrait_edit.evaluation.report import COLUMNS, format_cell, inline_png, shown_columns

STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#222}"
    "td,th{padding:3px 6px;text-align:center}"
    "table.m td,table.m th{border-bottom:1px solid #ddd}"
    "img{image-rendering:pixelated;display:block;margin:auto}"
    ".small{font-size:11px;color:#666}"
)


def stage_times(path: Path) -> list[tuple[str, float]]:
    """[(stage, seconds)] from times.txt: each stage lasts until the next line's stamp."""
    if not path.is_file():
        return []
    stamps = [
        (name, float(t)) for name, t in (line.split() for line in path.read_text().splitlines() if line)
    ]
    return [(name, t1 - t0) for (name, t0), (_, t1) in zip(stamps, stamps[1:])]


def loss_curve(path: Path, key: str = "train/loss", width: int = 480, height: int = 200) -> str:
    """An inline SVG of `key` against the step (raw points and a running mean over 10 logs)."""
    if not path.is_file():
        return f"<p>no training log at {html.escape(str(path))}</p>"
    with path.open() as f:
        points = [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]
    if len(points) < 2:
        return "<p>fewer than 2 logged losses: no curve</p>"
    steps, losses = [s for s, _ in points], [v for _, v in points]
    smooth = [
        sum(losses[max(0, i - 9) : i + 1]) / len(losses[max(0, i - 9) : i + 1]) for i in range(len(losses))
    ]
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1e-8
    pad = 40

    def xy(s: int, v: float) -> str:
        x = pad + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (width - 2 * pad)
        y = height - pad + (lo - v) / (hi - lo) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    raw = " ".join(xy(s, v) for s, v in points)
    mean = " ".join(xy(s, v) for s, v in zip(steps, smooth))
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect width="{width}" height="{height}" fill="#fff" stroke="#ccc"/>'
        f'<polyline points="{raw}" fill="none" stroke="#9bc" stroke-width="1"/>'
        f'<polyline points="{mean}" fill="none" stroke="#137" stroke-width="2"/>'
        f'<text x="{pad}" y="{pad - 8}" font-size="11">{html.escape(key)}: {hi:.4f}</text>'
        f'<text x="{pad}" y="{height - pad + 14}" font-size="11">{lo:.4f}</text>'
        f'<text x="{width - pad}" y="{height - 8}" font-size="11" text-anchor="end">step {steps[-1]}</text>'
        f'<text x="{pad}" y="{height - 8}" font-size="11">step {steps[0]}</text></svg>'
    )


def metrics_table(path: Path) -> str:
    """The evaluation's table (columns and number format as its table.md), as HTML."""
    if not path.is_file():
        return f"<p>no evaluation table at {html.escape(str(path))}</p>"
    table = json.loads(path.read_text())
    rows = {r["method"]: r for r in table["rows"]}
    columns = shown_columns(rows, table["unavailable"])
    head = "".join(f"<th>{html.escape(COLUMNS[c][0])}<br><span class='small'>{COLUMNS[c][1]} is better</span></th>"
                   for c in columns)  # fmt: skip
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{format_cell(r.get(c))}</td>" for c in columns)
        + "</tr>"
        for name, r in rows.items()
    )
    notes = "".join(
        f"<li>{html.escape(COLUMNS[k][0])}: unavailable: {html.escape(why)}</li>"
        for k, why in table["unavailable"].items()
    )
    return (
        f"<p>{html.escape(table['title'])} ({table.get('items', '?')} edits per row)</p>"
        f"<table class='m'><tr><th>method</th>{head}</tr>{body}</table><ul class='small'>{notes}</ul>"
    )


def edit_grid(inputs: Path, edits: Path, models: list[str]) -> str:
    """Per input: the input, then one row per model of its edits (direction columns) over their masks."""
    names = sorted(p.name for p in (edits / models[0]).iterdir() if (p / "edit.json").is_file())
    if not names:
        return f"<p>no finished edits in {html.escape(str(edits / models[0]))}</p>"
    directions = list(json.loads((edits / models[0] / names[0] / "edit.json").read_text())["directions"])
    head = "<th>input</th><th>model</th>" + "".join(f"<th>{html.escape(d)}</th>" for d in directions)
    rows = []
    for name in names:
        gender = json.loads((edits / models[0] / name / "edit.json").read_text())["gender"]
        source = inputs / f"{name}.png"
        first = (
            f"<td rowspan='{len(models)}'>{inline_png(source.read_bytes(), 96) if source.is_file() else ''}"
            f"<span class='small'>{html.escape(name)} ({html.escape(gender)})</span></td>"
        )
        for m, model in enumerate(models):
            folder = edits / model / name
            cells = []
            for d in directions:
                image, mask = folder / f"{d}.png", folder / f"{d}_mask.png"
                cells.append(
                    "<td>"
                    + (inline_png(image.read_bytes(), 96) if image.is_file() else "missing")
                    + (inline_png(mask.read_bytes(), 48) if mask.is_file() else "")
                    + "</td>"
                )
            rows.append(f"<tr>{first if m == 0 else ''}<th>{html.escape(model)}</th>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def build(demo: Path, models: list[str]) -> str:
    times = stage_times(demo / "times.txt")
    timing = "".join(f"<tr><td>{html.escape(n)}</td><td>{s:.0f} s</td></tr>" for n, s in times)
    total = sum(s for _, s in times)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>portrait_edit demo</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>portrait_edit demo: the mini world, end to end</h1>"
        "<p>Pairs generated with the shipped mini base model and identity encoder, an MCDM fine-tuned from "
        "the mini base on them for a short budget, and mask-guided edits of held-out world portraits by that "
        "model and by the shipped, fully trained mini MCDM, scored against the world's exact targets.</p>"
        f"<h2>Stages</h2><table class='m'>{timing}<tr><th>total</th><th>{total:.0f} s</th></tr></table>"
        f"<h2>Metrics</h2>{metrics_table(demo / 'eval' / 'table.json')}"
        "<h2>Training curve of the demo fine-tune</h2>"
        f"{loss_curve(demo / 'mcdm_run' / 'curve' / 'version_0' / 'metrics.csv')}"
        "<p class='small'>light: every logged step; dark: running mean of 10.</p>"
        "<h2>Edits</h2><p class='small'>Per input and model: the edit in each direction, its mask below it "
        "(white = edited).</p>"
        f"{edit_grid(demo / 'inputs', demo / 'edits', models)}"
        "</body></html>"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="outputs/demo", help="the demo's output folder")
    parser.add_argument("--models", nargs="+", default=["shipped", "finetuned"],
                        help="sub-folders of <demo>/edits, one row each")  # fmt: skip
    parser.add_argument("--out", default="report/index.html")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, build(Path(args.demo), args.models).encode())
    print(f"report: {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
