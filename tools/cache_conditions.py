"""Add the MCDM's cached conditions to pair shards (portrait_edit/data/cached_conditions.py), made with the
encoders of an MCDM fit config exactly as `portrait-edit fit` resolves it: stacked `--config` files and
`--model.init_args...` overrides are passed through, so the cache matches the model that reads it (and a
fit whose conditioning differs is refused). Stored as float16 by default; `--dtype float32` stores them
exactly. In place, or with `--out` into another folder (the shards' index and manifest files are copied
beside them); complete shards are skipped, so an interrupted run resumes.

    python tools/cache_conditions.py data/mini/pairs --out outputs/mini/pairs_cached --config configs/mini/mcdm.yaml
    python tools/cache_conditions.py outputs/costume/pairs --config configs/costume/mcdm.yaml \
        --config configs/bases/realistic_vision.yaml
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from portrait_edit.cli import resolve_config
from portrait_edit.data.cached_conditions import (
    CONDITIONS_FILE,
    cache_shard,
    conditioning_from_model,
    record_settings,
)
from portrait_edit.data.shard_pipeline import resolve_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other arguments (--model.init_args.KEY=VALUE) go to `fit`.",
    )
    parser.add_argument("shards", help="pair shards: a directory, glob or brace pattern")
    parser.add_argument("--config", action="append", required=True, help="an MCDM fit config (repeatable)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--out", default=None, help="write the cached shards here (default: in place)")
    args, overrides = parser.parse_known_args(argv)
    fit_args = [arg for config in args.config for arg in ("--config", config)] + overrides
    try:
        urls = resolve_shards(args.shards)
        conditioning, settings = conditioning_from_model(resolve_config(["fit", *fit_args])["model"])
        out = Path(args.out) if args.out else Path(urls[0]).parent
        if out.resolve() != Path(urls[0]).parent.resolve():
            out.mkdir(parents=True, exist_ok=True)
            for sidecar in Path(urls[0]).parent.glob("*.json"):  # the shards' indexes and manifests
                if sidecar.name != CONDITIONS_FILE:
                    shutil.copyfile(sidecar, out / sidecar.name)
        record_settings(out, {**settings, "dtype": args.dtype})
    except ValueError as exc:
        raise SystemExit(f"cache_conditions: error: {exc}") from None
    cached = bad = 0
    for url in tqdm(urls, desc="caching conditions", unit="shard"):
        n, b = cache_shard(
            url, conditioning, args.batch_size, getattr(torch, args.dtype), str(out / Path(url).name)
        )
        cached, bad = cached + n, bad + b
    print(
        f"cached conditions of {cached} samples in {len(urls)} shards ({out}); {bad} corrupt samples left uncached"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
