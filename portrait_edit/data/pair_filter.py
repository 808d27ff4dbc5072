"""Keep the generated pairs whose two halves agree most: per direction, the top fraction by identity
similarity and halves' SSIM, optionally of those a direction classifier reads as showing their edit.

The pair generator's halves differ by more than the edit: the layout and the person drift a little
between x_A and x_B, and the MCDM learns part of that drift. Each pair is scored by the generator's
identity similarity of its halves (`identity_similarity` in its JSON) and by the SSIM of its halves;
within each direction the pairs are ranked by the mean of their two ranks, and the top `--keep` fraction
is kept. Ranking per direction keeps every direction's share: a costume changes more of the picture
than an expression, so a global threshold would drop the costumes. Several sources are merged, so pairs
can be drawn beyond what training needs and the kept set keep its size (docs/results/pair_filter.md).

The ranking favours pairs whose halves barely differ, and a pair whose edit did not show at all (the
generator drew the direction's costume too faintly) differs least. `--classifier` drops such pairs first:
a direction classifier (the mini world's data/mini/classifier) must read the left half as the source and
the right half as the pair's direction; `--keep` then applies to the rest.

The output holds the sources' shards one for one, renumbered, with new keys from a global index; a
dropped pair counts in its shard's sidecar with the reason, as the generator's own filter does. Kept
samples are copied byte for byte (cached conditions included; `conditions.json` is copied when the
sources agree on it). `filter.json` records the settings, per-direction figures and each kept key's
origin. A rerun resumes: complete shards are skipped, and a folder filtered with other settings is
refused. A sample that cannot be read is dropped and counted.

`filter_pairs` does it; tools/filter_pairs.py is its command line.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from portrait_edit.atomic import atomic_write_json
from portrait_edit.data.shard_pipeline import read_shard_samples, resolve_shards
from portrait_edit.data.shard_writer import ShardWriter, completed_shards
from portrait_edit.evaluation.direction_classifier import DirectionClassifier
from portrait_edit.images import decode_image, to_tensor
from portrait_edit.metrics.image import ssim

CRITERIA = ("identity", "ssim")
FILTER_FILE = "filter.json"


def score_shard(
    samples: dict[str, dict[str, bytes]], classifier: DirectionClassifier | None = None
) -> dict[str, tuple[str, float | None, float, bool | None] | str]:
    """{key: (direction, identity similarity or None, halves' SSIM, shows the edit)} in the samples'
    order, with why it cannot be scored (a str) for an unreadable sample. "Shows the edit": `classifier`
    reads the left half as the source and the right half as the pair's direction (None without one)."""
    scores: dict[str, Any] = dict.fromkeys(samples)
    good, halves = [], []
    for key, members in samples.items():
        try:
            meta = json.loads(members["json"])
            pair = [to_tensor(decode_image(members[f], f"{key}.{f}")) for f in ("src.png", "tgt.png")]
            if pair[0].shape != pair[1].shape:
                raise ValueError(f"halves of sizes {tuple(pair[0].shape)} and {tuple(pair[1].shape)}")
            good.append((key, str(meta["direction"]), meta.get("identity_similarity")))
            halves.append(pair)
        except (KeyError, ValueError, OSError) as exc:
            scores[key] = f"unreadable: {type(exc).__name__}: {exc}"
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (src, _) in enumerate(halves):
        by_size[tuple(src.shape)].append(i)
    values = [0.0] * len(halves)
    for rows in by_size.values():
        batch = ssim(torch.stack([halves[i][0] for i in rows]), torch.stack([halves[i][1] for i in rows]))
        for i, v in zip(rows, batch.tolist(), strict=True):
            values[i] = v
    shows = [None] * len(halves)
    if classifier is not None and halves:
        labels = list(classifier.config.labels)
        unknown = sorted({d for _, d, _ in good} - set(labels[1:]))
        if unknown:
            raise ValueError(
                f"the direction classifier knows no direction {', '.join(unknown)} (it reads {labels})"
            )
        for rows in by_size.values():
            read = classifier.predict_directions(
                torch.stack([halves[i][0] for i in rows] + [halves[i][1] for i in rows])
            )
            for i, left, right in zip(
                rows, read[: len(rows)].tolist(), read[len(rows) :].tolist(), strict=True
            ):
                shows[i] = left == 0 and right == labels.index(good[i][1])
    for (key, direction, identity), value, edit in zip(good, values, shows, strict=True):
        scores[key] = (direction, identity, value, edit)
    return scores


def select(
    scores: dict[Any, tuple[str, float, float, bool | None]], keep: float, by: tuple[str, ...]
) -> set[Any]:
    """Per direction, of the items that do not fail the edit check (shows the edit: True or None), the
    keep * n (rounded half up) with the lowest mean rank over the criteria `by` (rank 0 = highest value;
    ties go to the earlier item)."""
    groups: dict[str, list[Any]] = defaultdict(list)
    for item, (direction, _, _, shows) in scores.items():
        if shows is not False:
            groups[direction].append(item)
    kept: set[Any] = set()
    for items in groups.values():
        rank = np.zeros(len(items))
        for criterion in by:
            column = 1 if criterion == "identity" else 2
            values = np.array([scores[item][column] for item in items], dtype=np.float64)
            rank += np.argsort(np.argsort(-values, kind="stable"), kind="stable")
        order = np.argsort(rank, kind="stable")
        kept.update(items[i] for i in order[: int(keep * len(items) + 0.5)])
    return kept


def _conditions(sources: list[str]) -> dict | None:
    found = {}
    for source in sources:
        path = os.path.join(source, "conditions.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                found[path] = json.load(f)
    if found and (len(found) != len(sources) or any(c != next(iter(found.values())) for c in found.values())):
        raise ValueError(
            f"the sources' cached conditions differ or are missing in some ({', '.join(found) or 'none'}); "
            "cache them all with the same config (tools/cache_conditions.py), or filter the uncached shards"
        )
    return next(iter(found.values()), None)


def filter_pairs(
    sources: list[str],
    out: str,
    keep: float = 0.5,
    by: tuple[str, ...] = CRITERIA,
    classifier: str | None = None,
) -> dict:
    """Write the kept pairs of `sources` (shard folders, globs or brace patterns) to `out`; returns the
    record written to `out/filter.json`. With `classifier` (a direction classifier folder), pairs that do
    not show their edit are dropped before the ranking."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"--keep must be in (0, 1], got {keep}")
    if not by or any(c not in CRITERIA for c in by):
        raise ValueError(f"--by takes one or both of {CRITERIA}, got {by}")
    settings = {"sources": [os.path.abspath(s) for s in sources], "keep": keep, "by": list(by)}
    reader = None
    if classifier is not None:
        if not os.path.isfile(os.path.join(classifier, "config.json")):
            raise ValueError(
                f"{classifier} holds no direction classifier (config.json); the mini world's is data/mini/classifier"
            )
        reader = DirectionClassifier.from_pretrained(classifier).eval()
        settings["classifier"] = os.path.abspath(classifier)
    record_path = os.path.join(out, FILTER_FILE)
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as f:
            if json.load(f)["settings"] != settings:
                raise ValueError(
                    f"{out} was filtered with other settings ({record_path}); write to a new folder"
                )
    conditions = _conditions(sources)
    os.makedirs(out, exist_ok=True)
    if not os.path.isfile(record_path):  # before any shard: a rerun with other settings is refused
        atomic_write_json(record_path, {"settings": settings})
    urls = [url for source in sources for url in resolve_shards(source)]

    scores: dict[tuple[int, str], Any] = {}
    keys: list[list[str]] = []  # each shard's keys in member order
    for n, url in enumerate(tqdm(urls, desc="scoring pairs", unit="shard")):
        try:
            shard_scores = score_shard(read_shard_samples(url), reader)
        except (OSError, tarfile.TarError) as exc:
            raise ValueError(f"cannot read shard {url} ({exc}); regenerate it or leave it out") from exc
        keys.append(list(shard_scores))
        scores.update(((n, key), value) for key, value in shard_scores.items())
    unreadable = {item: why for item, why in scores.items() if isinstance(why, str)}
    scored = {item: value for item, value in scores.items() if not isinstance(value, str)}
    if "identity" in by and any(value[1] is None for value in scored.values()):
        raise ValueError(
            "some pairs carry no identity similarity (generated with use_identity: false); pass --by ssim"
        )
    kept = select(scored, keep, by)

    writer = ShardWriter(out, prefix="pairs")
    done = completed_shards(out, "pairs")
    origin, index = {}, 0
    for n, url in enumerate(tqdm(urls, desc="writing", unit="shard")):
        samples = read_shard_samples(url) if n not in done else {}
        for key in keys[n]:
            new_key = f"{index:09d}"
            if (n, key) in kept:
                origin[new_key] = f"{url}:{key}"
            if n not in done:
                sample = {
                    "__key__": new_key,
                    "__index__": index,
                    "__shard__": n,
                    "__shard_len__": len(keys[n]),
                }
                sample.update(samples[key])  # a dropped sample's members are not written
                if (n, key) not in kept:
                    sample["__filtered__"] = unreadable.get((n, key)) or (
                        "the direction classifier does not read it as its edit"
                        if scored[(n, key)][3] is False
                        else f"not in the top {keep:g} of its direction"
                    )
                writer.write_sample(sample, rank=0)
            index += 1
    writer.write_manifest(0)
    if conditions is not None:
        atomic_write_json(os.path.join(out, "conditions.json"), conditions)

    def mean(items: list[Any], column: int) -> float | None:
        values = [scored[item][column] for item in items]
        return None if not values or None in values else round(float(np.mean(values)), 4)

    directions: dict[str, dict[str, Any]] = {}
    for direction in sorted({value[0] for value in scored.values()}):
        items = [item for item, value in scored.items() if value[0] == direction]
        mine = [item for item in items if item in kept]
        directions[direction] = {
            "pairs": len(items), "kept": len(mine),
            "shows_edit": None if reader is None else sum(scored[item][3] for item in items),
            "identity": [mean(items, 1), mean(mine, 1)], "ssim": [mean(items, 2), mean(mine, 2)],
        }  # fmt: skip
    record = {
        "settings": settings, "pairs": len(scores), "kept": len(kept), "unreadable": len(unreadable),
        "directions": directions, "origin": origin,
    }  # fmt: skip
    atomic_write_json(record_path, record)
    return record
