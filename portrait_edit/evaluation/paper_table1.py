"""A table beside the paper's Table 1: which of the paper's orderings hold.

`page(table, ...)` is the markdown of an evaluation's table (systems/evaluation.py's table.json: rows over
all items and per task) with the command that made it, the revision, the tables and, per task (costume,
expression) and per metric the paper has (SSIM; FID, compared with the mini world's FID on its CLIP
features, the nearest figure it can compute): the rows in the table's order, where Ours ranks, and the
pairs of rows ordered as the paper's Table 1 orders them (k of n), with the pairs ordered the other way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import combinations

from portrait_edit.evaluation.report import markdown_table

# The paper's Table 1 (costume / expression validation sets): SSIM (higher is better), FID (lower).
PAPER = {
    "costume": {
        "SDEdit 0.5": (0.713, 68.85), "SDEdit 0.8": (0.681, 93.17), "DiffEdit": (0.722, 93.52),
        "Ours w/o Prt": (0.734, 84.58), "Ours w/o Spt": (0.767, 78.38), "Ours w/o Iemb": (0.785, 65.74),
        "Ours w/o Mask": (0.788, 63.52), "Ours": (0.791, 52.56),
    },
    "expression": {
        "SDEdit 0.5": (0.925, 38.99), "SDEdit 0.8": (0.914, 38.59), "DiffEdit": (0.922, 32.20),
        "Ours w/o Prt": (0.940, 28.82), "Ours w/o Spt": (0.735, 24.56), "Ours w/o Iemb": (0.941, 23.07),
        "Ours w/o Mask": (0.940, 26.61), "Ours": (0.943, 22.09),
    },
}  # fmt: skip
# metric: (index in PAPER's tuples, our column, higher is better)
METRICS = {"SSIM": (0, "ssim", True), "FID": (1, "fid_clip", False)}


def rows_of(part: list[dict]) -> dict[str, dict]:
    return {row["method"]: {k: v for k, v in row.items() if k != "method"} for row in part}


def orderings(ours: dict[str, dict], paper: dict[str, tuple], metric: str) -> dict:
    """For one task and metric: our order of the rows both tables have, Ours' rank, and the row pairs
    ordered as in the paper (ties in either table are not counted)."""
    index, column, higher = METRICS[metric]
    names = [n for n in paper if ours.get(n, {}).get(column) is not None]
    sign = 1 if higher else -1
    order = sorted(names, key=lambda n: -sign * ours[n][column])
    agree, flip = [], []
    for a, b in combinations(names, 2):
        ours_diff, paper_diff = ours[a][column] - ours[b][column], paper[a][index] - paper[b][index]
        if ours_diff == 0 or paper_diff == 0:
            continue
        (agree if (ours_diff > 0) == (paper_diff > 0) else flip).append(
            (a, b) if sign * paper_diff > 0 else (b, a)
        )
    rank = order.index("Ours") + 1 if "Ours" in order else None
    return {"order": order, "rank": rank, "agree": agree, "flip": flip, "column": column}


def page(
    table: dict, commands: list[str], note: str | None, revision: str, summary: str | None = None
) -> str:
    lines = [f"# {table['title']}", ""]
    lines += ["Made by (in this order):", "", "```bash", *commands, "```", ""]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines += [f"Evaluated at revision {revision}; page written {stamp}; {table['items']} edits a row.", ""]
    if note:
        lines += [note, ""]
    lines += ["## All directions", "", markdown_table(rows_of(table["rows"]), table["unavailable"])]
    by_task = table.get("by_task", {})
    for task, part in by_task.items():
        lines += [
            f"## {task} ({', '.join(part['directions'])})",
            "",
            markdown_table(rows_of(part["rows"]), table["unavailable"], False),
        ]
    lines += ["## The paper's orderings in the mini world", ""]
    lines += [
        "Per task and metric: the rows best first; where Ours ranks; the pairs of rows ordered as in the "
        "paper's Table 1. FID here is the mini world's Frechet distance of its CLIP features (the paper's is "
        "Inception's), so only its order is compared.",
        "",
    ]
    for task, part in by_task.items():
        if task not in PAPER:
            continue
        ours = rows_of(part["rows"])
        for metric in METRICS:
            o = orderings(ours, PAPER[task], metric)
            total = len(o["agree"]) + len(o["flip"])
            if not total:
                continue
            lines += [
                f"- **{task}, {metric}** ({o['column']}): {' > '.join(o['order'])}. Ours ranks {o['rank']} of "
                f"{len(o['order'])}; {len(o['agree'])} of {total} pairs as in the paper."
                + (
                    f" Reversed here (the paper's better row first): {'; '.join(f'{a} / {b}' for a, b in o['flip'])}."
                    if o["flip"]
                    else ""
                )
            ]
    if summary:
        lines += ["", "## Summary", "", summary]
    return "\n".join(lines) + "\n"
